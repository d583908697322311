//! Shard selection: which worker gets a message, by a stable hash of its
//! key, so that every message of one key goes to the same worker and keeps
//! its order.
//!
//! Black Box (Guide ch. 5): the high-speed subscriber's "split the work
//! into parallel, independent streams" step. This module is pure: it
//! contains no networking code and reads no clock.
//!
//! The hash is part of the contract: [`shard_hash`] is specified below and
//! will not change within a major version, so a key maps to the same shard
//! in every process, run and platform (unlike `std`'s randomly seeded
//! SipHash). It is not a cryptographic hash: a peer that chooses keys can
//! load one shard on purpose.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use zeromq::ZmqMessage;

/// A user key function: equal results go to the same worker.
pub type KeyFn = Arc<dyn Fn(&ZmqMessage) -> u64 + Send + Sync>;

/// What part of a message is its sharding key.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ShardKey {
    /// All of frame 0 (the topic), the default.
    #[default]
    Topic,
    /// The first `n` bytes of frame 0 (all of it if shorter): for
    /// single-frame messages that start with a fixed-width key, as market
    /// data often does.
    Prefix(usize),
    /// All of frame `i` (an empty key if the message has fewer frames).
    Frame(usize),
    /// A user function returning a 64-bit key (hashed again, so any
    /// distribution of keys spreads over the workers).
    Custom(KeyFn),
}

impl fmt::Debug for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Topic => f.write_str("Topic"),
            ShardKey::Prefix(n) => write!(f, "Prefix({n})"),
            ShardKey::Frame(i) => write!(f, "Frame({i})"),
            ShardKey::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Maps messages to one of `n` workers.
#[derive(Debug, Clone)]
pub struct Sharder {
    key: ShardKey,
    workers: usize,
}

impl Sharder {
    /// A sharder over `workers` workers.
    pub fn new(key: ShardKey, workers: NonZeroUsize) -> Self {
        Self {
            key,
            workers: workers.get(),
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The worker (0..n) for a message.
    #[inline]
    pub fn worker_for(&self, msg: &ZmqMessage) -> usize {
        let h = match &self.key {
            ShardKey::Topic => shard_hash(frame(msg, 0)),
            ShardKey::Prefix(n) => {
                let f = frame(msg, 0);
                shard_hash(&f[..f.len().min(*n)])
            }
            ShardKey::Frame(i) => shard_hash(frame(msg, *i)),
            ShardKey::Custom(k) => shard_hash(&k(msg).to_le_bytes()),
        };
        reduce(h, self.workers)
    }

    /// The worker (0..n) for a key given directly.
    #[inline]
    pub fn worker_for_key(&self, key: &[u8]) -> usize {
        reduce(shard_hash(key), self.workers)
    }
}

fn frame(msg: &ZmqMessage, i: usize) -> &[u8] {
    msg.get(i).map_or(&[][..], |b| b.as_ref())
}

/// Maps a 64-bit hash onto `0..n` without a division (Lemire's
/// multiply-shift): `(hash * n) >> 64`.
#[inline]
fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

const K1: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio
const K2: u64 = 0xFF51_AFD7_ED55_8CCD; // MurmurHash3 fmix64 constants
const K3: u64 = 0xC4CE_B9FE_1A85_EC53;

/// The stable shard hash of a key.
///
/// Specification: start with `h = len * K1`; for each full 8-byte
/// little-endian word `w`: `h = (h ^ w) * K1` rotated left by 29; the last
/// 1-7 bytes are zero-extended into one more word the same way; finish with
/// MurmurHash3's `fmix64` (`h ^= h >> 33; h *= K2; h ^= h >> 33; h *= K3;
/// h ^= h >> 33`). Multiplications wrap. `K1 = 0x9E3779B97F4A7C15`.
///
/// It reads the key a word at a time, so an 8-byte key costs one multiply
/// plus the finaliser; the benchmark in `benches/blackbox.rs` compares it
/// with byte-at-a-time FNV-1a.
#[inline]
pub fn shard_hash(key: &[u8]) -> u64 {
    let mut h = (key.len() as u64).wrapping_mul(K1);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K1).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(buf))
            .wrapping_mul(K1)
            .rotate_left(29);
    }
    fmix64(h)
}

#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(K2);
    h ^= h >> 33;
    h = h.wrapping_mul(K3);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(frames: &[&str]) -> ZmqMessage {
        let v: Vec<Bytes> = frames.iter().map(|f| Bytes::from(f.to_string())).collect();
        ZmqMessage::try_from(v).unwrap()
    }

    fn n(k: usize) -> NonZeroUsize {
        NonZeroUsize::new(k).unwrap()
    }

    #[test]
    fn the_hash_is_stable_across_versions() {
        // Pinned values: changing them breaks shard placement for users.
        assert_eq!(shard_hash(b""), 0);
        assert_eq!(shard_hash(b"K0000042"), shard_hash(b"K0000042"));
        let pinned = [
            shard_hash(b"a"),
            shard_hash(b"K0000042"),
            shard_hash(b"AAPL.NASDAQ.quote"),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 3] = [
        13101380471022581979,
        17649479046335454818,
        9047426387914775537,
    ];

    #[test]
    fn same_key_same_worker_and_keys_spread_evenly() {
        let s = Sharder::new(ShardKey::Prefix(8), n(4));
        assert_eq!(
            s.worker_for(&msg(&["K0000001 first"])),
            s.worker_for(&msg(&["K0000001 second"]))
        );
        let mut counts = [0usize; 4];
        for k in 0..10_000 {
            counts[s.worker_for_key(format!("K{k:07}").as_bytes())] += 1;
        }
        for c in counts {
            assert!((2_300..2_700).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn key_choices() {
        let m = msg(&["topic", "key-b", "body"]);
        let s = |k| Sharder::new(k, n(1000));
        assert_eq!(
            s(ShardKey::Topic).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(b"topic")
        );
        assert_eq!(
            s(ShardKey::Frame(1)).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(b"key-b")
        );
        assert_eq!(
            s(ShardKey::Frame(9)).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(b"")
        );
        assert_eq!(
            s(ShardKey::Prefix(3)).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(b"top")
        );
        assert_eq!(
            s(ShardKey::Prefix(99)).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(b"topic")
        );
        let custom = ShardKey::Custom(Arc::new(|m: &ZmqMessage| m.len() as u64));
        assert_eq!(
            s(custom).worker_for(&m),
            s(ShardKey::Topic).worker_for_key(&3u64.to_le_bytes())
        );
        let one = Sharder::new(ShardKey::Topic, n(1));
        assert!((0..100).all(|k| one.worker_for_key(&[k]) == 0));
    }
}
