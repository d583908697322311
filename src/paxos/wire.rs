//! Byte-level reader and writer for the Paxos codec: LEB128 varints and
//! length-prefixed byte strings, with typed errors and no panics on
//! malformed input.

use bytes::{BufMut, Bytes, BytesMut};

use super::MsgDecodeError;

/// Appends values to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer {
            buf: BytesMut::with_capacity(64),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.put_slice(b);
    }

    pub(crate) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads values from a message, failing with [`MsgDecodeError`].
#[derive(Debug)]
pub(crate) struct Reader {
    data: Bytes,
    at: usize,
}

impl Reader {
    pub(crate) fn new(data: Bytes) -> Self {
        Reader { data, at: 0 }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MsgDecodeError> {
        let b = *self.data.get(self.at).ok_or(MsgDecodeError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, MsgDecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(MsgDecodeError::BadVarint);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MsgDecodeError::BadVarint)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MsgDecodeError> {
        u32::try_from(self.varint()?).map_err(|_| MsgDecodeError::OutOfRange)
    }

    /// A count of items that each take at least `min_item` bytes: refused
    /// if the message cannot possibly hold that many (no huge allocations
    /// from a forged count).
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, MsgDecodeError> {
        let n = self.varint()?;
        let left = (self.data.len() - self.at) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(MsgDecodeError::Truncated);
        }
        Ok(n as usize)
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, MsgDecodeError> {
        let n = self.count(1)?;
        let b = self.data.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }

    pub(crate) fn finish(self) -> Result<(), MsgDecodeError> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(MsgDecodeError::Trailing(self.data.len() - self.at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_overlong_ones_fail() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut w = Writer::new();
            w.varint(v);
            let mut r = Reader::new(w.finish());
            assert_eq!(r.varint().unwrap(), v);
            r.finish().unwrap();
        }
        let mut r = Reader::new(Bytes::from_static(&[0xff; 11]));
        assert_eq!(r.varint(), Err(MsgDecodeError::BadVarint));
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert_eq!(r.varint(), Err(MsgDecodeError::Truncated));
    }

    #[test]
    fn forged_lengths_are_refused_without_allocating() {
        let mut w = Writer::new();
        w.varint(u64::MAX / 2);
        let mut r = Reader::new(w.finish());
        assert_eq!(r.bytes(), Err(MsgDecodeError::Truncated));
    }
}
