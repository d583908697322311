//! The replayed market-data feed of the `blackbox` example (also used by
//! the tour): a publisher thread sending 100-byte messages over many keys
//! as fast as it can, and a worker that checks each key's sequence.
//!
//! Message layout (one frame): bytes 0..8 the key `K<d>-<nnnnn>`, bytes
//! 8..16 the key's own sequence number (u64 big-endian), then padding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zeromq::{PubSocket, ZmqMessage};
use zpatterns::endpoint::EndpointSpec;

/// Bytes per message.
pub(crate) const MSG_LEN: usize = 100;

/// Starts the publisher on its own OS thread and `current_thread` runtime
/// (where the `zeromq` PUB is fastest), yielding every 256 sends; `sent`
/// follows the count. Returns the thread and the resolved endpoint.
pub(crate) fn start_publisher(
    bind: EndpointSpec,
    keys: u64,
    stop: CancellationToken,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut socket = PubSocket::new();
                let resolved = bind.attach_to(&mut socket).await;
                let failed = resolved.is_err();
                let _ = tx.send(resolved);
                if failed {
                    return Ok(());
                }
                let mut seqs = vec![0u64; keys as usize];
                let mut rng = fastrand::Rng::with_seed(7);
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let k = rng.u64(0..keys);
                    let seq = &mut seqs[k as usize];
                    socket.send(ZmqMessage::from(market_data(k, *seq))).await?;
                    *seq += 1;
                    n += 1;
                    if n.is_multiple_of(256) {
                        sent.store(n, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
                sent.store(n, Ordering::Relaxed);
                Ok(())
            })
        })?;
    let resolved = rx.recv().context("publisher thread died")??;
    Ok((thread, resolved))
}

/// One 100-byte message: key, the key's sequence number, padding.
fn market_data(k: u64, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(MSG_LEN);
    b.put_slice(format!("K{}-{:05}", k % 10, k / 10).as_bytes());
    b.put_u64(seq);
    b.put_bytes(b'.', MSG_LEN - 16);
    b.freeze()
}

/// The key index and sequence number of a message, if it has the layout.
fn parse(frame: &[u8]) -> Option<(usize, u64)> {
    if frame.len() < 16 || frame[0] != b'K' || frame[2] != b'-' {
        return None;
    }
    let d = usize::from(frame[1].wrapping_sub(b'0'));
    let n = std::str::from_utf8(&frame[3..8])
        .ok()?
        .parse::<usize>()
        .ok()?;
    Some((
        n * 10 + d,
        u64::from_be_bytes(frame[8..16].try_into().ok()?),
    ))
}

/// Per-key sequence gaps seen by each worker: messages lost upstream
/// (dropped by the publisher) plus those dropped at the worker's own
/// queue (subtract [`BlackBoxStats::dropped`] for the upstream part).
///
/// [`BlackBoxStats::dropped`]: zpatterns::blackbox::BlackBoxStats::dropped
#[derive(Debug, Clone)]
pub(crate) struct LossCounters(Arc<Vec<AtomicU64>>);

impl LossCounters {
    pub(crate) fn new(workers: usize) -> Self {
        Self(Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect()))
    }

    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|l| l.load(Ordering::Relaxed)).collect()
    }
}

/// Worker `w`'s handler: checks each key's sequence (counting gaps into
/// `lost`), then busy-works for `work`.
pub(crate) fn checking_worker(
    w: usize,
    keys: usize,
    work: Duration,
    lost: LossCounters,
) -> impl FnMut(ZmqMessage) + Send + 'static {
    let mut next = vec![u64::MAX; keys];
    move |msg: ZmqMessage| {
        if let Some((k, seq)) = msg.get(0).and_then(|f| parse(f)) {
            if let Some(expected) = next.get_mut(k) {
                if *expected != u64::MAX && seq > *expected {
                    lost.0[w].fetch_add(seq - *expected, Ordering::Relaxed);
                }
                *expected = seq + 1;
            }
        }
        if !work.is_zero() {
            let t = Instant::now();
            while t.elapsed() < work {
                std::hint::spin_loop();
            }
        }
    }
}
