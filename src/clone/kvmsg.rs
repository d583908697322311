//! The kvmsg: the Clone pattern's key-value message, five frames on the wire
//! (key, sequence, UUID, properties, body), plus the 3-frame kvsimple form
//! of models 1 and 2.
//!
//! ```text
//! frame 0: key         UTF-8-ish string, 1..=255 bytes
//! frame 1: sequence    8 bytes, big-endian
//! frame 2: uuid        16 bytes, or empty
//! frame 3: properties  "name=value\n" lines, or empty
//! frame 4: body        blob; empty means "delete this key"
//! ```
//!
//! Decoding is pure and never panics: anything malformed is a
//! [`KvMsgError`]. The codec's own bounds are fixed by the protocol:
//! [`KEY_MAX`] for keys and subtrees, [`PROPS_MAX`] for the properties
//! frame; the value is bounded by the server's and client's message-size
//! limits.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::error::{KvMsgError, PropertyError};

/// Longest key (and subtree) accepted, in bytes, as in the C kvmsg class.
pub const KEY_MAX: usize = 255;
/// Largest properties frame accepted, in bytes.
pub const PROPS_MAX: usize = 64 * 1024;
/// The property that makes a value ephemeral: a time-to-live in seconds.
pub const TTL: &str = "ttl";

/// A 16-byte binary UUID, as the C kvmsg class sends it.
pub type Uuid = [u8; 16];

/// Ordered `name=value` properties, as the C kvmsg class keeps them:
/// setting an existing name replaces it and moves it to the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Properties(Vec<(String, String)>);

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, replacing (and moving to the end) any
    /// previous value.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropertyError> {
        if name.is_empty() || name.contains(['=', '\n']) {
            return Err(PropertyError::BadName(name.to_owned()));
        }
        if value.contains('\n') {
            return Err(PropertyError::BadValue(name.to_owned()));
        }
        self.remove(name);
        self.0.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Removes `name`; returns its value if it was present.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(at).1)
    }

    /// The properties in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// `true` if there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The length of [`encode`](Self::encode)'s frame.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len() + 2).sum()
    }

    /// The wire form: each property as `name=value\n`.
    pub fn encode(&self) -> Bytes {
        if self.0.is_empty() {
            return Bytes::new();
        }
        let mut out = String::new();
        for (n, v) in &self.0 {
            out.push_str(n);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        }
        Bytes::from(out)
    }

    /// Parses the wire form. Lines split at the first `=` (C semantics);
    /// a final line without `\n` is accepted too (the C class drops it, but
    /// hand-written peers send `ttl=5` unterminated and mean it).
    pub fn decode(frame: &[u8]) -> Result<Self, PropertyError> {
        if frame.len() > PROPS_MAX {
            return Err(PropertyError::TooLarge(frame.len()));
        }
        let text = std::str::from_utf8(frame).map_err(|_| PropertyError::NotUtf8)?;
        let mut props = Self::new();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| PropertyError::MissingEquals(line.to_owned()))?;
            props.set(name, value)?;
        }
        Ok(props)
    }
}

/// One key-value message (KVSYNC, KVPUB or KVSET on the wire).
#[derive(Clone, PartialEq, Eq)]
pub struct KvMsg {
    key: Bytes,
    seq: u64,
    uuid: Option<Uuid>,
    props: Properties,
    body: Bytes,
}

impl KvMsg {
    /// A message for `key` with `body` (empty body: delete), sequence 0, no
    /// UUID and no properties. Fails on an empty or over-long key.
    pub fn new(key: impl Into<Bytes>, body: impl Into<Bytes>) -> Result<Self, KvMsgError> {
        let key = key.into();
        check_key(&key)?;
        Ok(Self {
            key,
            seq: 0,
            uuid: None,
            props: Properties::new(),
            body: body.into(),
        })
    }

    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
    /// The sequence number (0 in KVSETs).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Sets the sequence number.
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
    /// The UUID, if the frame was 16 bytes.
    pub fn uuid(&self) -> Option<&Uuid> {
        self.uuid.as_ref()
    }
    /// Sets or clears the UUID.
    pub fn set_uuid(&mut self, uuid: Option<Uuid>) {
        self.uuid = uuid;
    }
    /// The properties.
    pub fn props(&self) -> &Properties {
        &self.props
    }
    /// The properties, mutably.
    pub fn props_mut(&mut self) -> &mut Properties {
        &mut self.props
    }
    /// The body (value); empty means delete.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Replaces the body.
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        self.body = body.into();
    }
    /// `true` if this message deletes its key (empty body).
    pub fn is_delete(&self) -> bool {
        self.body.is_empty()
    }

    /// The `ttl` property as a duration. Absent, zero or unparsable means
    /// `None` (not ephemeral); fractional seconds are accepted.
    pub fn ttl(&self) -> Option<Duration> {
        parse_ttl(self.props.get(TTL)?)
    }

    /// The `epoch` property (a Clone server pair's epoch, see
    /// [`EPOCH`](super::proto::EPOCH)), if present and a decimal number.
    pub fn epoch(&self) -> Option<u64> {
        super::proto::epoch_of(&self.props)
    }

    /// The five frames.
    pub fn encode(&self) -> [Bytes; 5] {
        [
            self.key.clone(),
            Bytes::copy_from_slice(&self.seq.to_be_bytes()),
            self.uuid
                .map_or_else(Bytes::new, |u| Bytes::copy_from_slice(&u)),
            self.props.encode(),
            self.body.clone(),
        ]
    }

    /// Parses exactly five frames.
    pub fn decode(frames: &[Bytes]) -> Result<Self, KvMsgError> {
        let [key, seq, uuid, props, body] = frames else {
            return Err(KvMsgError::FrameCount {
                expected: "5",
                got: frames.len(),
            });
        };
        check_key(key)?;
        Ok(Self {
            key: key.clone(),
            seq: decode_seq(seq)?,
            uuid: decode_uuid(uuid)?,
            props: Properties::decode(props).map_err(KvMsgError::BadProperties)?,
            body: body.clone(),
        })
    }

    /// The 3-frame kvsimple form of models 1 and 2: key, sequence, body.
    pub fn encode_kvsimple(&self) -> [Bytes; 3] {
        [
            self.key.clone(),
            Bytes::copy_from_slice(&self.seq.to_be_bytes()),
            self.body.clone(),
        ]
    }

    /// Parses the 3-frame kvsimple form (the 8-byte sequence is required:
    /// Python kvsimple's 4-byte sequence is a reference bug).
    pub fn decode_kvsimple(frames: &[Bytes]) -> Result<Self, KvMsgError> {
        let [key, seq, body] = frames else {
            return Err(KvMsgError::FrameCount {
                expected: "3",
                got: frames.len(),
            });
        };
        let mut msg = Self::new(key.clone(), body.clone())?;
        msg.seq = decode_seq(seq)?;
        Ok(msg)
    }
}

/// Renders like the C class's `kvmsg_dump`: `[seq:N][key:K][size:S] [props]BODY`.
impl fmt::Debug for KvMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[seq:{}][key:{}][size:{}] ",
            self.seq,
            String::from_utf8_lossy(&self.key),
            self.body.len()
        )?;
        if !self.props.is_empty() {
            f.write_str("[")?;
            for (n, v) in self.props.iter() {
                write!(f, "{n}={v};")?;
            }
            f.write_str("]")?;
        }
        let shown = &self.body[..self.body.len().min(32)];
        if shown.iter().all(|b| (0x20..0x7f).contains(b)) {
            write!(f, "{}", String::from_utf8_lossy(shown))
        } else {
            shown.iter().try_for_each(|b| write!(f, "{b:02X}"))
        }
    }
}

/// Parses a `ttl` value in seconds (integer or fractional); zero, negative
/// or unparsable values mean "not ephemeral".
pub(crate) fn parse_ttl(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs < 1e12).then(|| Duration::from_secs_f64(secs))
}

/// Checks a key: non-empty, at most [`KEY_MAX`] bytes.
pub(crate) fn check_key(key: &[u8]) -> Result<(), KvMsgError> {
    match key.len() {
        0 => Err(KvMsgError::EmptyKey),
        n if n > KEY_MAX => Err(KvMsgError::KeyTooLong(n)),
        _ => Ok(()),
    }
}

/// Decodes an 8-byte big-endian sequence frame.
pub(crate) fn decode_seq(frame: &[u8]) -> Result<u64, KvMsgError> {
    let bytes: [u8; 8] = frame
        .try_into()
        .map_err(|_| KvMsgError::BadSequence(frame.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes a UUID frame: empty or exactly 16 bytes.
pub(crate) fn decode_uuid(frame: &[u8]) -> Result<Option<Uuid>, KvMsgError> {
    match frame.len() {
        0 => Ok(None),
        16 => Ok(Some(frame.try_into().expect("length checked"))),
        n => Err(KvMsgError::BadUuid(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn round_trip_with_properties_like_the_c_selftest() {
        let mut m = KvMsg::new("key", "body").unwrap();
        m.set_seq(2);
        m.set_uuid(Some([7; 16]));
        m.props_mut().set("prop1", "value1").unwrap();
        m.props_mut().set("prop2", "value1").unwrap();
        m.props_mut().set("prop2", "value2").unwrap();
        let frames = m.encode();
        assert_eq!(&frames[1][..], &[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&frames[3][..], b"prop1=value1\nprop2=value2\n");
        let back = KvMsg::decode(&frames).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.props().get("prop2"), Some("value2"));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let ok: &[&[u8]] = &[b"k", &[0; 8], b"", b"", b"v"];
        assert!(KvMsg::decode(&f(ok)).is_ok());
        assert_eq!(
            KvMsg::decode(&f(&ok[..4])),
            Err(KvMsgError::FrameCount {
                expected: "5",
                got: 4
            })
        );
        assert_eq!(
            KvMsg::decode(&f(&[b"k", &[0; 4], b"", b"", b"v"])),
            Err(KvMsgError::BadSequence(4))
        );
        assert_eq!(
            KvMsg::decode(&f(&[b"k", &[0; 8], &[1; 36], b"", b"v"])),
            Err(KvMsgError::BadUuid(36))
        );
        assert_eq!(
            KvMsg::decode(&f(&[b"", &[0; 8], b"", b"", b"v"])),
            Err(KvMsgError::EmptyKey)
        );
        let long = vec![b'k'; 256];
        assert_eq!(
            KvMsg::decode(&f(&[&long, &[0; 8], b"", b"", b"v"])),
            Err(KvMsgError::KeyTooLong(256))
        );
        assert!(matches!(
            KvMsg::decode(&f(&[b"k", &[0; 8], b"", b"novalue\n", b"v"])),
            Err(KvMsgError::BadProperties(PropertyError::MissingEquals(_)))
        ));
        assert!(matches!(
            KvMsg::decode(&f(&[b"k", &[0; 8], b"", b"a=\xff\n", b"v"])),
            Err(KvMsgError::BadProperties(PropertyError::NotUtf8))
        ));
    }

    #[test]
    fn properties_split_at_the_first_equals_and_accept_an_unterminated_line() {
        let p = Properties::decode(b"a=b=c\nttl=5").unwrap();
        assert_eq!(p.get("a"), Some("b=c"));
        assert_eq!(p.get("ttl"), Some("5"));
        assert_eq!(p.get("absent"), None);
        assert!(Properties::new().set("a=b", "x").is_err());
        assert!(Properties::new().set("a", "x\ny").is_err());
    }

    #[test]
    fn ttl_zero_absent_or_garbage_is_not_ephemeral() {
        let mut m = KvMsg::new("k", "v").unwrap();
        assert_eq!(m.ttl(), None);
        for (text, want) in [
            ("0", None),
            ("abc", None),
            ("-3", None),
            ("5", Some(Duration::from_secs(5))),
            ("1.5", Some(Duration::from_millis(1500))),
        ] {
            m.props_mut().set(TTL, text).unwrap();
            assert_eq!(m.ttl(), want, "{text}");
        }
    }

    #[test]
    fn kvsimple_is_three_frames() {
        let mut m = KvMsg::new("key", "body").unwrap();
        m.set_seq(1);
        let back = KvMsg::decode_kvsimple(&m.encode_kvsimple()).unwrap();
        assert_eq!(back, m);
        assert!(KvMsg::decode_kvsimple(&f(&[b"k", &[0; 4], b"v"])).is_err());
        assert_eq!(
            format!("{m:?}"),
            "[seq:1][key:key][size:4] body",
            "dump format"
        );
    }
}
