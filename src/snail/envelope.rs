//! The stamp a publisher adds to each message so that subscribers can tell
//! how late it is and whether any were lost: encode, decode, and the Guide's
//! C format.
//!
//! Suicidal Snail (Guide ch. 5): the publisher stamps, the subscriber checks.
//! This file is a pure codec: it contains no networking code and reads no
//! clock (the caller passes the send time).
//!
//! # Wire format (toolkit envelope)
//!
//! The stamp is one extra frame appended **after** the user's frames, so the
//! user's frame 0 (the topic, which SUB sockets filter on) is untouched and
//! every user frame keeps its index:
//!
//! ```text
//! frame 0 .. n-1   the user's frames, unchanged (n >= 1)
//! frame n          the stamp, 25 + L bytes:
//!   0..3    magic   "SNL"                 (0x53 0x4E 0x4C)
//!   3       version 0x01
//!   4..8    epoch   u32, big-endian       (random per publisher instance)
//!   8..16   seq     u64, big-endian       (0 for the first message, +1 per message)
//!   16..24  sent_at u64, big-endian       (microseconds since the Unix epoch, publisher clock)
//!   24      L       u8                    (length of the publisher id, 0..=255)
//!   25..    id      L bytes               (publisher id, opaque)
//! ```
//!
//! A stamp is recognised only if the last frame has the magic, version 1 and
//! exactly `25 + L` bytes; anything else is a typed [`EnvelopeError`].
//!
//! # Guide C format (compatibility)
//!
//! The Guide's `suisnail.c` publisher sends one frame holding the decimal
//! ASCII of `zclock_time()`: milliseconds since the Unix epoch, no sign, no
//! padding, no terminator (e.g. `1732240000123`). It has no publisher id and
//! no sequence number, so only lag can be checked, not loss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// The first three bytes of a stamp frame.
pub const MAGIC: [u8; 3] = *b"SNL";
/// The envelope version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Stamp frame length without the publisher id.
pub const STAMP_FIXED_LEN: usize = 25;
/// The longest publisher id a stamp can carry.
pub const MAX_ID_LEN: usize = 255;
/// The publisher id reported for Guide-format messages (which carry none).
pub const GUIDE_PUBLISHER: &[u8] = b"guide-c";
/// The longest decimal string accepted as a Guide timestamp (u64::MAX has 20 digits).
const MAX_GUIDE_DIGITS: usize = 20;

/// Which message formats a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WireFormat {
    /// Only the toolkit envelope (a stamp frame after the user's frames).
    #[default]
    Toolkit,
    /// Only the Guide's C publisher: one frame of decimal ASCII milliseconds.
    GuideC,
    /// The toolkit envelope if the last frame is a stamp, else the Guide's
    /// format if the message is one decimal frame.
    Auto,
}

/// Why a message carries no usable stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The message had no frames at all.
    #[error("empty message")]
    Empty,
    /// The message is a single frame: there is no user frame before a stamp.
    #[error("a stamped message needs at least one user frame before the stamp")]
    NoUserFrame,
    /// The last frame does not start with the `SNL` magic.
    #[error("last frame is not a snail stamp (no SNL magic)")]
    NoStamp,
    /// The magic is right but the version is not one this crate reads.
    #[error("unsupported snail stamp version {0}")]
    UnsupportedVersion(u8),
    /// The stamp frame's length does not match its publisher-id length.
    #[error("snail stamp has {got} bytes, expected {expected}")]
    BadLength {
        /// The length the header implies.
        expected: usize,
        /// The frame's actual length.
        got: usize,
    },
    /// A Guide-format message that is not one frame of decimal digits.
    #[error("not a Guide timestamp: expected one frame of decimal ASCII milliseconds")]
    NotDecimal,
    /// A publisher id longer than 255 bytes (encoding only).
    #[error("publisher id is {0} bytes; at most 255 fit in a stamp")]
    IdTooLong(usize),
}

/// Where a stamp came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StampKind {
    /// The toolkit envelope: publisher id, epoch and sequence number present.
    Toolkit,
    /// The Guide's C format: a millisecond timestamp only.
    GuideC,
}

/// What a subscriber learns from one message's stamp.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp {
    publisher: Bytes,
    epoch: u32,
    seq: Option<u64>,
    sent_at_us: u64,
    kind: StampKind,
}

impl Stamp {
    /// A toolkit stamp (used by tests and by [`Stamper`]).
    pub fn new(publisher: Bytes, epoch: u32, seq: u64, sent_at: SystemTime) -> Self {
        Self {
            publisher,
            epoch,
            seq: Some(seq),
            sent_at_us: unix_micros(sent_at),
            kind: StampKind::Toolkit,
        }
    }

    /// A Guide-format stamp: a send time in milliseconds, nothing else.
    pub fn guide(sent_at_ms: u64) -> Self {
        Self {
            publisher: Bytes::from_static(GUIDE_PUBLISHER),
            epoch: 0,
            seq: None,
            sent_at_us: sent_at_ms.saturating_mul(1000),
            kind: StampKind::GuideC,
        }
    }

    /// The publisher id ([`GUIDE_PUBLISHER`] for the Guide's format).
    pub fn publisher(&self) -> &Bytes {
        &self.publisher
    }

    /// The publisher instance; changes when the publisher restarts.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The sequence number (none in the Guide's format).
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The send time on the publisher's clock, in microseconds since the epoch.
    pub fn sent_at_micros(&self) -> u64 {
        self.sent_at_us
    }

    /// The send time on the publisher's clock.
    pub fn sent_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.sent_at_us)
    }

    /// Which format the stamp was decoded from.
    pub fn kind(&self) -> StampKind {
        self.kind
    }
}

/// Microseconds since the Unix epoch (0 for times before it, saturating).
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Encodes a stamp frame (the toolkit envelope's last frame).
pub fn encode_stamp(stamp: &Stamp) -> Result<Bytes, EnvelopeError> {
    let id = stamp.publisher.as_ref();
    if id.len() > MAX_ID_LEN {
        return Err(EnvelopeError::IdTooLong(id.len()));
    }
    let mut buf = BytesMut::with_capacity(STAMP_FIXED_LEN + id.len());
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u32(stamp.epoch);
    buf.put_u64(stamp.seq.unwrap_or(0));
    buf.put_u64(stamp.sent_at_us);
    buf.put_u8(id.len() as u8);
    buf.put_slice(id);
    Ok(buf.freeze())
}

/// Decodes a stamp frame. The publisher id is a zero-copy slice of `frame`.
pub fn decode_stamp(frame: &Bytes) -> Result<Stamp, EnvelopeError> {
    let mut stamp = parse_stamp(frame)?;
    stamp.publisher = frame.slice(STAMP_FIXED_LEN..);
    Ok(stamp)
}

/// Checks and parses a stamp frame, leaving the publisher id empty.
fn parse_stamp(b: &[u8]) -> Result<Stamp, EnvelopeError> {
    if b.len() < 4 || b[..3] != MAGIC {
        return Err(EnvelopeError::NoStamp);
    }
    if b[3] != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(b[3]));
    }
    if b.len() < STAMP_FIXED_LEN {
        return Err(EnvelopeError::BadLength {
            expected: STAMP_FIXED_LEN,
            got: b.len(),
        });
    }
    let expected = STAMP_FIXED_LEN + usize::from(b[24]);
    if b.len() != expected {
        return Err(EnvelopeError::BadLength {
            expected,
            got: b.len(),
        });
    }
    let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Ok(Stamp {
        publisher: Bytes::new(),
        epoch: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        seq: Some(be64(8)),
        sent_at_us: be64(16),
        kind: StampKind::Toolkit,
    })
}

/// Encodes the Guide's C format: decimal ASCII milliseconds since the epoch.
pub fn encode_guide(sent_at: SystemTime) -> Bytes {
    Bytes::from((unix_micros(sent_at) / 1000).to_string())
}

/// Parses one Guide-format frame: 1 to 20 ASCII digits, a `u64` of ms.
pub fn decode_guide(frame: &[u8]) -> Result<Stamp, EnvelopeError> {
    if frame.is_empty() || frame.len() > MAX_GUIDE_DIGITS {
        return Err(EnvelopeError::NotDecimal);
    }
    let mut ms: u64 = 0;
    for &c in frame {
        if !c.is_ascii_digit() {
            return Err(EnvelopeError::NotDecimal);
        }
        ms = ms
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or(EnvelopeError::NotDecimal)?;
    }
    Ok(Stamp::guide(ms))
}

/// Decodes the stamp of a received message (its frames) in `format`.
///
/// For the toolkit envelope the user's frames are `frames[..len - 1]`; for
/// the Guide's format there are no user frames besides the timestamp.
pub fn decode(frames: &[Bytes], format: WireFormat) -> Result<Stamp, EnvelopeError> {
    let last = frames.last().ok_or(EnvelopeError::Empty)?;
    match format {
        WireFormat::Toolkit => decode_toolkit(frames, last),
        WireFormat::GuideC => decode_single_guide(frames),
        WireFormat::Auto => decode_toolkit(frames, last)
            .or_else(|toolkit_err| decode_single_guide(frames).map_err(|_| toolkit_err)),
    }
}

/// Like [`decode`], but on success removes a toolkit stamp frame from
/// `frames` (leaving the user's frames) without copying or reference
/// counting: the cheapest path for a subscriber. On error `frames` is
/// untouched.
pub fn take_stamp(frames: &mut Vec<Bytes>, format: WireFormat) -> Result<Stamp, EnvelopeError> {
    let last = frames.last().ok_or(EnvelopeError::Empty)?;
    let toolkit = match format {
        WireFormat::GuideC => return decode_single_guide(frames),
        WireFormat::Toolkit | WireFormat::Auto => parse_stamp(last).and_then(|s| {
            if frames.len() < 2 {
                Err(EnvelopeError::NoUserFrame)
            } else {
                Ok(s)
            }
        }),
    };
    match toolkit {
        Ok(mut stamp) => {
            let mut frame = frames.pop().expect("checked non-empty");
            bytes::Buf::advance(&mut frame, STAMP_FIXED_LEN);
            stamp.publisher = frame;
            Ok(stamp)
        }
        Err(e) if format == WireFormat::Auto => decode_single_guide(frames).map_err(|_| e),
        Err(e) => Err(e),
    }
}

fn decode_toolkit(frames: &[Bytes], last: &Bytes) -> Result<Stamp, EnvelopeError> {
    let stamp = decode_stamp(last)?;
    if frames.len() < 2 {
        return Err(EnvelopeError::NoUserFrame);
    }
    Ok(stamp)
}

fn decode_single_guide(frames: &[Bytes]) -> Result<Stamp, EnvelopeError> {
    match frames {
        [only] => decode_guide(only),
        _ => Err(EnvelopeError::NotDecimal),
    }
}

/// Stamps outgoing messages for one publisher: keeps the sequence number
/// and the instance epoch, and appends the stamp frame.
#[derive(Debug, Clone)]
pub struct Stamper {
    publisher: Bytes,
    epoch: u32,
    next_seq: u64,
    /// The fixed part of the stamp after the magic/version/epoch, re-used.
    template: BytesMut,
}

impl Stamper {
    /// A stamper for publisher `id` with a random epoch (so subscribers can
    /// tell a restarted publisher from a gap).
    pub fn new(id: impl Into<Bytes>) -> Result<Self, EnvelopeError> {
        Self::with_epoch(id, random_epoch())
    }

    /// A stamper with a chosen epoch (deterministic tests).
    pub fn with_epoch(id: impl Into<Bytes>, epoch: u32) -> Result<Self, EnvelopeError> {
        let publisher = id.into();
        let template = BytesMut::from(
            encode_stamp(&Stamp::new(publisher.clone(), epoch, 0, UNIX_EPOCH))?.as_ref(),
        );
        Ok(Self {
            publisher,
            epoch,
            next_seq: 0,
            template,
        })
    }

    /// The publisher id.
    pub fn publisher(&self) -> &Bytes {
        &self.publisher
    }

    /// The instance epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The sequence number the next stamp will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next stamp frame, sent at `now`; advances the sequence number.
    pub fn next_stamp(&mut self, now: SystemTime) -> Bytes {
        let mut buf = self.template.clone();
        buf[8..16].copy_from_slice(&self.next_seq.to_be_bytes());
        buf[16..24].copy_from_slice(&unix_micros(now).to_be_bytes());
        self.next_seq = self.next_seq.wrapping_add(1);
        buf.freeze()
    }

    /// Appends the next stamp to `frames` (the user's frames, at least one).
    pub fn stamp(&mut self, frames: &mut Vec<Bytes>, now: SystemTime) {
        let stamp = self.next_stamp(now);
        frames.push(stamp);
    }
}

/// A random epoch from std's per-process hash keys (no extra dependency).
fn random_epoch() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn toolkit_stamp_round_trips_frame_by_frame() {
        let mut s = Stamper::with_epoch("pub-1", 7).unwrap();
        let mut frames = vec![Bytes::from("topic"), Bytes::from("body")];
        s.stamp(&mut frames, at(1_700_000_000_123));
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"topic", "topic frame untouched");
        let raw = &frames[2];
        assert_eq!(raw.len(), 25 + 5);
        assert_eq!(&raw[..4], b"SNL\x01");
        assert_eq!(&raw[4..8], &7u32.to_be_bytes());
        assert_eq!(&raw[8..16], &0u64.to_be_bytes());
        assert_eq!(&raw[16..24], &1_700_000_000_123_000u64.to_be_bytes());
        assert_eq!(raw[24], 5);
        assert_eq!(&raw[25..], b"pub-1");
        let st = decode(&frames, WireFormat::Toolkit).unwrap();
        assert_eq!(st.publisher().as_ref(), b"pub-1");
        assert_eq!((st.epoch(), st.seq()), (7, Some(0)));
        assert_eq!(st.sent_at(), at(1_700_000_000_123));
        s.stamp(&mut frames, at(1));
        assert_eq!(decode_stamp(&frames[3]).unwrap().seq(), Some(1));
    }

    #[test]
    fn take_stamp_pops_the_stamp_and_agrees_with_decode() {
        let mut s = Stamper::with_epoch("pub-9", 3).unwrap();
        for format in [WireFormat::Toolkit, WireFormat::Auto] {
            let mut frames = vec![Bytes::from("t"), Bytes::from("b")];
            s.stamp(&mut frames, at(42));
            let want = decode(&frames, format).unwrap();
            assert_eq!(take_stamp(&mut frames, format).unwrap(), want);
            assert_eq!(frames, [Bytes::from("t"), Bytes::from("b")]);
        }
        let mut bad = vec![Bytes::from("t"), Bytes::from("SNL\x01x")];
        assert!(take_stamp(&mut bad, WireFormat::Auto).is_err());
        assert_eq!(bad.len(), 2, "untouched on error");
        let mut guide = vec![Bytes::from("17")];
        assert_eq!(
            take_stamp(&mut guide, WireFormat::Auto).unwrap().kind(),
            StampKind::GuideC
        );
        assert_eq!(guide.len(), 1, "the Guide's frame stays: it is the message");
    }

    #[test]
    fn guide_format_is_decimal_milliseconds() {
        assert_eq!(&encode_guide(at(1_732_240_000_123))[..], b"1732240000123");
        let st = decode(&[Bytes::from("1732240000123")], WireFormat::GuideC).unwrap();
        assert_eq!(st.sent_at(), at(1_732_240_000_123));
        assert_eq!((st.seq(), st.kind()), (None, StampKind::GuideC));
        for bad in ["", "-5", "12a", "1.5", " 1", "99999999999999999999999"] {
            let e = decode(&[Bytes::from(bad)], WireFormat::GuideC).unwrap_err();
            assert_eq!(e, EnvelopeError::NotDecimal, "{bad:?}");
        }
        let two = [Bytes::from("1"), Bytes::from("2")];
        assert_eq!(
            decode(&two, WireFormat::GuideC),
            Err(EnvelopeError::NotDecimal)
        );
    }

    #[test]
    fn auto_prefers_the_toolkit_stamp_and_falls_back_to_guide() {
        let mut s = Stamper::with_epoch("p", 1).unwrap();
        let mut frames = vec![Bytes::from("12345")];
        s.stamp(&mut frames, at(5));
        assert_eq!(
            decode(&frames, WireFormat::Auto).unwrap().kind(),
            StampKind::Toolkit
        );
        let guide = [Bytes::from("12345")];
        assert_eq!(
            decode(&guide, WireFormat::Auto).unwrap().kind(),
            StampKind::GuideC
        );
        assert_eq!(
            decode(&guide, WireFormat::Toolkit),
            Err(EnvelopeError::NoStamp)
        );
        let text = [Bytes::from("hello")];
        assert_eq!(decode(&text, WireFormat::Auto), Err(EnvelopeError::NoStamp));
    }

    #[test]
    fn malformed_stamps_are_typed_errors() {
        let good = encode_stamp(&Stamp::new(Bytes::from("id"), 1, 2, at(3))).unwrap();
        let user = Bytes::from("t");
        let mut v2 = good.to_vec();
        v2[3] = 2;
        let cases = [
            (
                good.slice(..10),
                EnvelopeError::BadLength {
                    expected: 25,
                    got: 10,
                },
            ),
            (
                good.slice(..26),
                EnvelopeError::BadLength {
                    expected: 27,
                    got: 26,
                },
            ),
            (Bytes::from(v2), EnvelopeError::UnsupportedVersion(2)),
            (Bytes::from("SN"), EnvelopeError::NoStamp),
        ];
        for (frame, want) in cases {
            assert_eq!(
                decode(&[user.clone(), frame], WireFormat::Toolkit),
                Err(want)
            );
        }
        assert_eq!(decode(&[], WireFormat::Auto), Err(EnvelopeError::Empty));
        assert_eq!(
            decode(&[good], WireFormat::Toolkit),
            Err(EnvelopeError::NoUserFrame)
        );
        let long = Bytes::from(vec![b'x'; 256]);
        assert_eq!(
            Stamper::new(long).unwrap_err(),
            EnvelopeError::IdTooLong(256)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(frames in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..4)) {
            let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            for f in [WireFormat::Toolkit, WireFormat::GuideC, WireFormat::Auto] {
                let _ = decode(&frames, f);
            }
        }

        #[test]
        fn stamps_round_trip(id in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=255),
                             epoch: u32, seq: u64, us in 0u64..(1u64 << 60)) {
            let st = Stamp::new(Bytes::from(id), epoch, seq, UNIX_EPOCH + Duration::from_micros(us));
            let frame = encode_stamp(&st).unwrap();
            proptest::prop_assert_eq!(decode_stamp(&frame).unwrap(), st);
        }
    }
}
