//! Subscription frames as they travel upstream through XPUB/XSUB: decoding,
//! encoding and topic-prefix matching. Pure: no sockets, no clock.
//!
//! On the wire (ZMTP 3.0, which is what both libzmq and the `zeromq` crate
//! use between each other) a subscription is a one-frame message whose first
//! byte is `0x01` (subscribe) or `0x00` (unsubscribe), followed by the topic
//! prefix. Anything else arriving on an XPUB from a subscriber is not a
//! subscription and is reported as a [`SubscriptionError`].

use bytes::Bytes;

/// A decoded subscription event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubEvent {
    /// `\x01` + prefix: start receiving messages whose first frame starts
    /// with the prefix (the empty prefix means everything).
    Subscribe(Bytes),
    /// `\x00` + prefix: cancel one earlier subscribe of the same prefix.
    Unsubscribe(Bytes),
}

/// Why an upstream message is not a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// A subscription is exactly one frame; this message had more (or none).
    #[error("subscription messages have one frame, got {0}")]
    FrameCount(usize),
    /// The frame was empty, so it has no command byte.
    #[error("empty subscription frame")]
    Empty,
    /// The first byte was neither `0x01` (subscribe) nor `0x00` (unsubscribe).
    #[error("subscription frame starts with {0:#04x}, expected 0x01 or 0x00")]
    BadCommand(u8),
}

impl SubEvent {
    /// Decodes an upstream message given as its frames.
    pub fn decode(frames: &[Bytes]) -> Result<Self, SubscriptionError> {
        match frames {
            [frame] => Self::decode_frame(frame),
            other => Err(SubscriptionError::FrameCount(other.len())),
        }
    }

    /// Decodes a single frame.
    pub fn decode_frame(frame: &Bytes) -> Result<Self, SubscriptionError> {
        match frame.first() {
            None => Err(SubscriptionError::Empty),
            Some(1) => Ok(SubEvent::Subscribe(frame.slice(1..))),
            Some(0) => Ok(SubEvent::Unsubscribe(frame.slice(1..))),
            Some(&b) => Err(SubscriptionError::BadCommand(b)),
        }
    }

    /// The one-frame wire form (`\x01topic` or `\x00topic`).
    pub fn encode(&self) -> Bytes {
        let (cmd, topic) = match self {
            SubEvent::Subscribe(t) => (1u8, t),
            SubEvent::Unsubscribe(t) => (0u8, t),
        };
        let mut v = Vec::with_capacity(1 + topic.len());
        v.push(cmd);
        v.extend_from_slice(topic);
        Bytes::from(v)
    }

    /// The topic prefix.
    pub fn topic(&self) -> &Bytes {
        match self {
            SubEvent::Subscribe(t) | SubEvent::Unsubscribe(t) => t,
        }
    }

    /// True for a subscribe.
    pub fn is_subscribe(&self) -> bool {
        matches!(self, SubEvent::Subscribe(_))
    }
}

/// ZeroMQ topic matching: `prefix` matches `topic` if `topic` starts with it.
pub fn prefix_matches(prefix: &[u8], topic: &[u8]) -> bool {
    topic.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn decodes_both_forms_and_round_trips() {
        let sub = SubEvent::decode(&[b(b"\x01042")]).unwrap();
        assert_eq!(sub, SubEvent::Subscribe(b(b"042")));
        assert_eq!(sub.encode(), b(b"\x01042"));
        let unsub = SubEvent::decode(&[b(b"\x00")]).unwrap();
        assert_eq!(unsub, SubEvent::Unsubscribe(b(b"")));
        assert_eq!(unsub.encode(), b(b"\x00"));
        // Binary topics survive.
        let bin = SubEvent::Subscribe(b(&[0xff, 0x00, 0x01]));
        assert_eq!(SubEvent::decode(&[bin.encode()]).unwrap(), bin);
    }

    #[test]
    fn rejects_everything_that_is_not_a_subscription() {
        assert_eq!(
            SubEvent::decode(&[b(b"\x01A"), b(b"x")]),
            Err(SubscriptionError::FrameCount(2))
        );
        assert_eq!(SubEvent::decode(&[]), Err(SubscriptionError::FrameCount(0)));
        assert_eq!(SubEvent::decode(&[b(b"")]), Err(SubscriptionError::Empty));
        assert_eq!(
            SubEvent::decode(&[b(b"\x02A")]),
            Err(SubscriptionError::BadCommand(2))
        );
        assert_eq!(
            SubEvent::decode(&[b(b"hello")]),
            Err(SubscriptionError::BadCommand(b'h'))
        );
    }

    #[test]
    fn prefix_matching_is_zeromqs() {
        assert!(prefix_matches(b"", b"anything"));
        assert!(prefix_matches(b"04", b"042"));
        assert!(prefix_matches(b"042", b"042"));
        assert!(!prefix_matches(b"042", b"04"));
        assert!(!prefix_matches(b"B", b"A-1"));
    }
}
