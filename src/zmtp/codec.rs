//! ZMTP 3.0 wire codec (RFC 23, NULL mechanism): the greeting, frames,
//! commands and READY metadata. Pure: no sockets, no clock.
//!
//! ```text
//! greeting  = %xFF 8OCTET %x7F  major minor  mechanism(20)  as-server  filler(31)   (64 bytes)
//! frame     = flags size body   flags: bit0 MORE, bit1 LONG (8-byte size), bit2 COMMAND
//! command   = name-size(1) name data
//! READY     = "READY" *(name-size(1) name value-size(4, big-endian) value)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// Protocol errors from a peer. Each one ends that peer's connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZmtpError {
    /// The first bytes were not a ZMTP signature.
    #[error("not a ZMTP peer (bad greeting signature)")]
    BadSignature,
    /// The peer speaks ZMTP 1.0/2.0 (libzmq < 4), which is not supported.
    #[error("unsupported ZMTP version {0}.{1} (3.0 or later required)")]
    Version(u8, u8),
    /// A security mechanism other than NULL.
    #[error("unsupported security mechanism {0:?} (only NULL)")]
    Mechanism(String),
    /// A frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced frame size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// Reserved flag bits were set.
    #[error("invalid frame flags {0:#04x}")]
    Flags(u8),
    /// A command frame that cannot be parsed.
    #[error("malformed command: {0}")]
    Command(&'static str),
    /// The peer's socket type cannot talk to ours.
    #[error("peer socket type {0:?} is not compatible")]
    SocketType(String),
    /// The handshake did not begin with READY.
    #[error("expected READY, got command {0:?}")]
    ExpectedReady(String),
}

/// Our greeting: ZMTP 3.0, NULL mechanism, `as-server` = 0.
///
/// We announce 3.0 (not 3.1) so libzmq peers send subscriptions as
/// `\x01`/`\x00` messages, the form every ZeroMQ version understands.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Checks a peer's greeting; returns its (major, minor) version.
pub fn check_greeting(g: &[u8; GREETING_LEN]) -> Result<(u8, u8), ZmtpError> {
    if g[0] != 0xFF || g[9] & 0x01 != 0x01 {
        return Err(ZmtpError::BadSignature);
    }
    let (major, minor) = (g[10], g[11]);
    if major < 3 {
        return Err(ZmtpError::Version(major, minor));
    }
    let mech = &g[12..32];
    let end = mech.iter().position(|&b| b == 0).unwrap_or(mech.len());
    if &mech[..end] != b"NULL" {
        return Err(ZmtpError::Mechanism(
            String::from_utf8_lossy(&mech[..end]).into_owned(),
        ));
    }
    Ok((major, minor))
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// More frames of the same message follow.
    pub more: bool,
    /// This is a command frame, not message data.
    pub command: bool,
    /// The frame body.
    pub body: Bytes,
}

/// A frame's header, read without consuming anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// More frames of the same message follow.
    pub more: bool,
    /// This is a command frame, not message data.
    pub command: bool,
    /// Bytes of the header itself (2 or 9).
    pub len: usize,
    /// The announced body size.
    pub size: u64,
}

/// Reads the header of the frame at the front of `buf`, or `Ok(None)` if
/// more bytes are needed. Lets a reader decide about a frame (e.g. skip an
/// oversized body) before the body arrives.
pub fn frame_header(buf: &[u8]) -> Result<Option<FrameHeader>, ZmtpError> {
    let Some(&flags) = buf.first() else {
        return Ok(None);
    };
    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
        return Err(ZmtpError::Flags(flags));
    }
    let (len, size) = if flags & FLAG_LONG != 0 {
        if buf.len() < 9 {
            return Ok(None);
        }
        (
            9,
            u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes")),
        )
    } else {
        if buf.len() < 2 {
            return Ok(None);
        }
        (2, u64::from(buf[1]))
    };
    Ok(Some(FrameHeader {
        more: flags & FLAG_MORE != 0,
        command: flags & FLAG_COMMAND != 0,
        len,
        size,
    }))
}

/// Decodes one frame from the front of `buf`, or `Ok(None)` if more bytes
/// are needed. Frames larger than `max` are an error (memory protection).
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ZmtpError> {
    let Some(h) = frame_header(buf)? else {
        return Ok(None);
    };
    if h.size > max as u64 {
        return Err(ZmtpError::TooLarge { size: h.size, max });
    }
    let size = h.size as usize;
    if buf.len() < h.len + size {
        buf.reserve(h.len + size - buf.len());
        return Ok(None);
    }
    buf.advance(h.len);
    let body = buf.split_to(size).freeze();
    Ok(Some(Frame {
        more: h.more,
        command: h.command,
        body,
    }))
}

fn put_header(out: &mut BytesMut, mut flags: u8, len: usize) {
    if len > 255 {
        flags |= FLAG_LONG;
        out.put_u8(flags);
        out.put_u64(len as u64);
    } else {
        out.put_u8(flags);
        out.put_u8(len as u8);
    }
}

/// Appends a multipart message (all frames, MORE set on all but the last).
pub fn encode_message<'a>(frames: impl ExactSizeIterator<Item = &'a Bytes>, out: &mut BytesMut) {
    let n = frames.len();
    for (i, f) in frames.enumerate() {
        put_header(out, if i + 1 < n { FLAG_MORE } else { 0 }, f.len());
        out.extend_from_slice(f);
    }
}

/// Appends a command frame.
pub fn encode_command(name: &str, data: &[u8], out: &mut BytesMut) {
    put_header(out, FLAG_COMMAND, 1 + name.len() + data.len());
    out.put_u8(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
}

/// Appends a READY command carrying `properties`.
pub fn encode_ready(properties: &[(&str, &[u8])], out: &mut BytesMut) {
    let mut data = BytesMut::new();
    for (name, value) in properties {
        data.put_u8(name.len() as u8);
        data.extend_from_slice(name.as_bytes());
        data.put_u32(value.len() as u32);
        data.extend_from_slice(value);
    }
    encode_command("READY", &data, out);
}

/// Splits a command body into its name and data.
pub fn parse_command(body: &Bytes) -> Result<(String, Bytes), ZmtpError> {
    let n = *body.first().ok_or(ZmtpError::Command("empty command"))? as usize;
    if body.len() < 1 + n {
        return Err(ZmtpError::Command("name longer than the frame"));
    }
    let name = String::from_utf8_lossy(&body[1..1 + n]).into_owned();
    Ok((name, body.slice(1 + n..)))
}

/// Parses READY metadata into (name, value) pairs.
pub fn parse_properties(mut data: Bytes) -> Result<Vec<(String, Bytes)>, ZmtpError> {
    let mut props = Vec::new();
    while !data.is_empty() {
        let n = data.get_u8() as usize;
        if data.len() < n + 4 {
            return Err(ZmtpError::Command("truncated property"));
        }
        let name = String::from_utf8_lossy(&data.split_to(n)).into_owned();
        let v = data.get_u32() as usize;
        if data.len() < v {
            return Err(ZmtpError::Command("truncated property value"));
        }
        props.push((name, data.split_to(v)));
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn our_greeting_passes_our_check() {
        assert_eq!(check_greeting(&greeting()), Ok((3, 0)));
        let mut g = greeting();
        g[10] = 2;
        assert_eq!(check_greeting(&g), Err(ZmtpError::Version(2, 0)));
        let mut g = greeting();
        g[12..17].copy_from_slice(b"CURVE");
        assert_eq!(
            check_greeting(&g),
            Err(ZmtpError::Mechanism("CURVE".into()))
        );
        let mut g = greeting();
        g[0] = b'G';
        assert_eq!(check_greeting(&g), Err(ZmtpError::BadSignature));
    }

    #[test]
    fn short_and_long_frames_round_trip() {
        let frames = [Bytes::from_static(b"A"), Bytes::from(vec![7u8; 300])];
        let mut buf = BytesMut::new();
        encode_message(frames.iter(), &mut buf);
        assert_eq!(&buf[..3], &[FLAG_MORE, 1, b'A']);
        assert_eq!(buf[3], FLAG_LONG);
        let a = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(a.more && !a.command);
        let b = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(!b.more);
        assert_eq!(b.body.len(), 300);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_input_waits_and_oversized_input_fails() {
        let mut buf = BytesMut::from(&[0u8, 5, b'a'][..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(None));
        let mut big = BytesMut::from(&[FLAG_LONG, 0, 0, 0, 0, 0, 1, 0, 0][..]);
        assert!(matches!(
            decode_frame(&mut big, 1000),
            Err(ZmtpError::TooLarge { size: 65536, .. })
        ));
        let mut bad = BytesMut::from(&[0x80u8, 0][..]);
        assert_eq!(decode_frame(&mut bad, 10), Err(ZmtpError::Flags(0x80)));
    }

    #[test]
    fn ready_round_trips() {
        let mut buf = BytesMut::new();
        encode_ready(&[("Socket-Type", b"XPUB"), ("Identity", b"")], &mut buf);
        let f = decode_frame(&mut buf, 1000).unwrap().unwrap();
        assert!(f.command);
        let (name, data) = parse_command(&f.body).unwrap();
        assert_eq!(name, "READY");
        let props = parse_properties(data).unwrap();
        assert_eq!(props[0].0, "Socket-Type");
        assert_eq!(&props[0].1[..], b"XPUB");
        assert_eq!(props[1].1.len(), 0);
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode_frame(&mut buf, 256) {}
            if let Ok(Some(f)) = decode_frame(&mut BytesMut::from(&data[..]), 256) {
                let _ = parse_command(&f.body).map(|(_, d)| parse_properties(d));
            }
        }

        /// Any message encodes and decodes to the same frames.
        #[test]
        fn messages_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..5)) {
            let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            let mut buf = BytesMut::new();
            encode_message(frames.iter(), &mut buf);
            let mut out = Vec::new();
            while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
                out.push(f.body);
            }
            prop_assert_eq!(out, frames);
        }
    }
}
