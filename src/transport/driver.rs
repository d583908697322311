//! The tokio driver: connects a sans-IO [`Process`] to a [`Transport`].
//!
//! One task per node: it waits for a message or the process's next timer,
//! hands it to the process (draining up to [`BATCH`] already-queued
//! messages first, so one fsync covers the whole batch: group commit),
//! calls [`Process::persist`], and only then sends what the process wrote.
//! The clock is tokio's, so tests may pause it.

use std::future::pending;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{recv, Outbox, Process, Time, Transport};

/// Most messages handled between two persists.
pub const BATCH: usize = 256;

/// Runs `process` over `transport` until `shutdown` is cancelled or the
/// transport closes, calling `observe` after every batch (e.g. to publish
/// state on a `watch` channel). Returns both when done.
#[must_use = "the driver does nothing unless awaited"]
pub async fn run<P, T>(
    mut process: P,
    mut transport: T,
    shutdown: CancellationToken,
    mut observe: impl FnMut(&P),
) -> (P, T)
where
    P: Process,
    T: Transport,
{
    let origin = Instant::now();
    let now =
        move || Time::from_micros(u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX));
    let mut out = Outbox::new();
    observe(&process);
    loop {
        let wake = process.poll_timeout().map(|t| origin + t.since_origin());
        let timer = async {
            match wake {
                Some(at) => sleep_until(at).await,
                None => pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            msg = recv(&mut transport) => {
                let Some((from, bytes)) = msg else { break };
                process.handle_message(now(), from, bytes, &mut out);
                for _ in 1..BATCH {
                    match futures::FutureExt::now_or_never(recv(&mut transport)) {
                        Some(Some((from, bytes))) => process.handle_message(now(), from, bytes, &mut out),
                        _ => break,
                    }
                }
            }
            () = timer => {}
        }
        let t = now();
        if process.poll_timeout().is_some_and(|w| w <= t) {
            process.handle_timeout(t, &mut out);
        }
        match process.persist() {
            Ok(()) => {
                for (to, msg) in out.drain() {
                    transport.send(to, msg);
                }
            }
            Err(e) => {
                warn!(node = %transport.id(), cause = %e, dropped = out.len(), "persist failed; outgoing messages discarded");
                out.clear();
            }
        }
        observe(&process);
    }
    (process, transport)
}
