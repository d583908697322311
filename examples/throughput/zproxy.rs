//! The proxy process on this crate: `zpatterns::pubsub` (plain XSUB/XPUB
//! proxy), `zpatterns::espresso` (capture on, every event drained by a
//! listener task) or `zpatterns::lvc`, with both sides bound on
//! `127.0.0.1:0` (or `--frontend` / `--backend`), default settings
//! (subscriber HWM 10,000) and the slow-subscriber policy of the mode:
//! `SlowPolicy::Block` (lossless: a full subscriber queue pauses reading
//! the publishers) or, with `--lossy`, `SlowPolicy::Drop`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::{Attach, EndpointSpec};
use zpatterns::espresso::{Espresso, EspressoConfig};
use zpatterns::lvc::{Lvc, LvcConfig};
use zpatterns::pubsub::{Proxy, ProxyConfig, ProxyStats, SlowPolicy};

use crate::cases::Pattern;
use crate::proto::{emit, Control, Report, Stopwatch};
use crate::zrs::finish_after_stop;
use crate::RoleArgs;

/// Capture channel capacity (the `espresso` example's default).
const CAPTURE_CAPACITY: usize = 10_000;

pub(crate) async fn run(a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let spec = |s: &Option<String>, side: &str| match s {
        None => Ok(EndpointSpec::loopback()),
        Some(s) => EndpointSpec::parse(s, Attach::Bind).with_context(|| format!("--{side} {s}")),
    };
    let config = ProxyConfig::new(spec(&a.frontend, "frontend")?, spec(&a.backend, "backend")?);
    let config = policy(config, a.lossless());
    let captured = Arc::new(AtomicU64::new(0));
    let stats: Box<dyn Fn() -> ProxyStats> = match a.pattern {
        Pattern::Proxy => {
            let p = Proxy::start(config, (), &cancel).await?;
            ready(p.frontend_endpoint(), p.backend_endpoint());
            Box::new(move || p.stats())
        }
        Pattern::Espresso => {
            let config = EspressoConfig::new(config).capacity(CAPTURE_CAPACITY);
            let mut p = Espresso::start(config, &cancel).await?;
            let mut events = p.take_events();
            let count = captured.clone();
            // The listener: takes every event off the channel, as a
            // logging or recording listener would, and counts it.
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    std::hint::black_box(&ev);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
            ready(p.frontend_endpoint(), p.backend_endpoint());
            Box::new(move || p.stats().proxy)
        }
        Pattern::Lvc => {
            let c = Lvc::start(LvcConfig::new(config), &cancel).await?;
            ready(c.frontend_endpoint(), c.backend_endpoint());
            Box::new(move || c.stats().proxy)
        }
        other => anyhow::bail!("{} is not a proxy pattern", other.name()),
    };
    let is_espresso = a.pattern == Pattern::Espresso;
    if ctl.is_manual() {
        print_every_second(|| stats().messages_in).await;
    }
    finish_after_stop(ctl, || {
        let s = stats();
        Report {
            count: s.messages_in,
            bytes: s.bytes_in,
            captured: is_espresso.then(|| captured.load(Ordering::Relaxed)),
            capture_drops: is_espresso.then_some(s.capture_drops),
            proxy_drops: Some(s.slow_drops),
            proxy_blocks: Some(blocks(&s)),
            ..Report::default()
        }
    })
    .await
}

/// The mode's slow-subscriber policy: `Block` (lossless) or `Drop`.
fn policy(config: ProxyConfig, lossless: bool) -> ProxyConfig {
    config.slow_subscribers(if lossless {
        SlowPolicy::Block
    } else {
        SlowPolicy::Drop
    })
}

/// How often the proxy paused reading publishers (`SlowPolicy::Block`).
fn blocks(s: &ProxyStats) -> u64 {
    s.slow_blocks
}

/// A proxy started by hand: its counters every second, until killed.
async fn print_every_second(count: impl Fn() -> u64) -> ! {
    let mut clock = Stopwatch::start();
    let mut last = count();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (secs, cpu, n) = (clock.secs(), clock.cpu_secs(), count());
        let d = n.saturating_sub(last);
        let mut line = format!(
            "proxy: CPU {:.0} % of a core, {} msgs/s, {n} msgs in all",
            100.0 * cpu / secs,
            crate::report::fmt_rate(d as f64 / secs)
        );
        if d > 0 {
            line.push_str(&format!(", CPU {:.2} us/msg", cpu / d as f64 * 1e6));
        }
        emit(&line);
        (clock, last) = (Stopwatch::start(), n);
    }
}

fn ready(frontend: &str, backend: &str) {
    emit(&format!("READY {frontend} {backend}"));
}
