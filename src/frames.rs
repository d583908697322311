//! Small conversions between `zeromq::ZmqMessage` and lists of frames.
//!
//! `ZmqMessage` is a `VecDeque<Bytes>` that cannot be empty; the pattern
//! codecs in this crate work on `&[Bytes]` and build messages with
//! [`message`], which refuses the zero-frame case instead of panicking.

use bytes::Bytes;
use zeromq::ZmqMessage;

/// Builds a message from frames; `None` for an empty list (ZeroMQ has no
/// zero-frame messages and the `zeromq` crate would reject one).
pub fn message<I>(frames: I) -> Option<ZmqMessage>
where
    I: IntoIterator,
    I::Item: Into<Bytes>,
{
    let frames: Vec<Bytes> = frames.into_iter().map(Into::into).collect();
    ZmqMessage::try_from(frames).ok()
}

/// The frames of a message, without copying payloads.
pub fn frames(msg: ZmqMessage) -> Vec<Bytes> {
    msg.into_vec()
}

/// Total payload bytes of a message (frame headers not counted).
pub fn payload_len(msg: &ZmqMessage) -> usize {
    msg.iter().map(Bytes::len).sum()
}

/// Renders a frame the way CZMQ's `zframe_print` does: text if printable,
/// otherwise hex, prefixed by the size (`[007] B-91164`, `[002] 0141`).
pub fn render(frame: &[u8]) -> String {
    let printable = frame.iter().all(|&b| (0x20..0x7f).contains(&b));
    if printable {
        format!("[{:03}] {}", frame.len(), String::from_utf8_lossy(frame))
    } else {
        let hex: String = frame.iter().map(|b| format!("{b:02X}")).collect();
        format!("[{:03}] {hex}", frame.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_are_not_messages() {
        assert!(message(Vec::<Bytes>::new()).is_none());
        let m = message([&b"a"[..], b"bc"]).unwrap();
        assert_eq!(payload_len(&m), 3);
        assert_eq!(frames(m), [Bytes::from("a"), Bytes::from("bc")]);
    }

    #[test]
    fn render_matches_czmq() {
        assert_eq!(render(b"B-91164"), "[007] B-91164");
        assert_eq!(render(b"\x01A"), "[002] 0141");
    }
}
