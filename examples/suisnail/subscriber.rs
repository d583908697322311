//! The subscriber half of `suisnail`: a `SnailSubscriber` doing 1..=N ms of
//! simulated work per message, croaking once it is too far behind.
//!
//! Kept in its own file so that `tests/snail_interop.rs` runs exactly this
//! code against a libzmq publisher.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::snail::{
    ClockSync, DetectorConfig, SnailConfig, SnailError, SnailSubscriber, WireFormat,
};

/// What the subscriber half needs to know.
#[derive(Debug, Clone)]
pub(crate) struct SubOptions {
    /// Where the publisher is.
    pub(crate) endpoint: EndpointSpec,
    /// The Guide's `MAX_ALLOWED_DELAY`.
    pub(crate) max_delay: Duration,
    /// Work per message: a random 1..=work_ms ms (0: no work).
    pub(crate) work_ms: u64,
    /// How the publisher's clock relates to ours.
    pub(crate) clock: ClockSync,
    /// Print every message, as the Guide's subscriber does.
    pub(crate) verbose: bool,
    /// Stop after this many messages (`None`: until stopped or croaked).
    pub(crate) limit: Option<u64>,
}

/// How the subscriber ended.
#[derive(Debug)]
pub(crate) struct SubReport {
    /// Messages received before the end.
    pub(crate) received: u64,
    /// From the first message to the end.
    pub(crate) elapsed: Duration,
    /// The croak, if it croaked; `None` if it was stopped.
    pub(crate) croak: Option<SnailError>,
}

/// Runs until the subscriber croaks (or fails), `stop` is cancelled, or it
/// has received `opts.limit` messages.
pub(crate) async fn run_subscriber(
    opts: &SubOptions,
    stop: CancellationToken,
) -> Result<SubReport, SnailError> {
    let detector = DetectorConfig::default()
        .max_lag(opts.max_delay)
        .clock(opts.clock)
        // The Guide's publisher has no sequence numbers, and a toolkit one
        // loses nothing on loopback: keep loss detection on.
        .max_lost(Some(0));
    let config = SnailConfig::new([opts.endpoint.clone()])
        .detector(detector)
        .format(WireFormat::Auto);
    // Under `stop`: cancelling it makes `recv` return `Stopped`.
    let mut sub = SnailSubscriber::start(config, &stop).await?;
    let mut first: Option<Instant> = None;
    let mut last_status = Instant::now();
    let mut rng = fastrand::Rng::new();
    loop {
        let next = sub.recv().await;
        if let Err(SnailError::Stopped) = next {
            break;
        }
        let started = *first.get_or_insert_with(Instant::now);
        let msg = match next {
            Ok(msg) => msg,
            Err(e @ SnailError::CannotKeepUp(_)) => {
                return Ok(SubReport {
                    received: sub.stats().received,
                    elapsed: started.elapsed(),
                    croak: Some(e),
                });
            }
            Err(e) => return Err(e),
        };
        if opts.verbose {
            let f = msg
                .frames()
                .first()
                .map(|f| String::from_utf8_lossy(f).into_owned());
            println!(
                "{} (lag {:?})",
                f.unwrap_or_default(),
                msg.lag().unwrap_or_default()
            );
        } else if last_status.elapsed() >= Duration::from_millis(250) {
            last_status = Instant::now();
            println!(
                "  t={:>5.2}s received={:>6} lag={:>7.1} ms",
                started.elapsed().as_secs_f64(),
                sub.stats().received,
                msg.lag().unwrap_or_default().as_secs_f64() * 1e3
            );
        }
        if opts.work_ms > 0 {
            let ms = rng.u64(1..=opts.work_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if opts.limit.is_some_and(|n| sub.stats().received >= n) {
            break;
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    Ok(SubReport {
        received: sub.stats().received,
        elapsed,
        croak: None,
    })
}
