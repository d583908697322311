//! CHP frames built and read by hand for the Clone interop tests (not with
//! this crate's codec, so the wire format is checked independently), and
//! waiting on a libzmq socket for a matching message.

use super::{ms, secs, text, within, Lz};

/// A multipart message as libzmq hands it over.
pub type Frames = Vec<Vec<u8>>;

/// A 5-frame kvmsg: key, 8-byte big-endian sequence, uuid, properties, body.
pub fn kvmsg(key: &str, seq: u64, uuid: &[u8], props: &str, body: &str) -> Frames {
    vec![
        key.into(),
        seq.to_be_bytes().to_vec(),
        uuid.to_vec(),
        props.into(),
        body.into(),
    ]
}

/// The sequence frame of a kvmsg (asserted to be 8 bytes).
pub fn seq_of(m: &[Vec<u8>]) -> u64 {
    assert_eq!(m[1].len(), 8, "8-byte sequence: {:?}", text(m));
    u64::from_be_bytes(m[1].as_slice().try_into().unwrap())
}

/// Receives from a libzmq socket until `pred` matches (skipping others).
pub async fn recv_until(sock: &Lz, what: &str, mut pred: impl FnMut(&Frames) -> bool) -> Frames {
    within(secs(20), what, async {
        loop {
            if let Some(m) = sock.recv(ms(200)).await {
                if pred(&m) {
                    return m;
                }
            }
        }
    })
    .await
}
