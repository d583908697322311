//! The proxy process on this crate: `zpatterns::pubsub` (plain XSUB/XPUB
//! proxy), `zpatterns::espresso` (capture on, every event drained by a
//! listener task) or `zpatterns::lvc`, with both sides bound on
//! `127.0.0.1:0`, default settings (subscriber HWM 10,000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{Espresso, EspressoConfig};
use zpatterns::lvc::{Lvc, LvcConfig};
use zpatterns::pubsub::{Proxy, ProxyConfig, ProxyStats};

use crate::cases::Pattern;
use crate::proto::{emit, Control, Report};
use crate::zrs::finish_after_stop;
use crate::RoleArgs;

/// Capture channel capacity (the `espresso` example's default).
const CAPTURE_CAPACITY: usize = 10_000;

pub(crate) async fn run(a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
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
    finish_after_stop(ctl, || {
        let s = stats();
        Report {
            count: s.messages_in,
            bytes: s.bytes_in,
            captured: is_espresso.then(|| captured.load(Ordering::Relaxed)),
            capture_drops: is_espresso.then_some(s.capture_drops),
            proxy_drops: Some(s.slow_drops),
            ..Report::default()
        }
    })
    .await
}

fn ready(frontend: &str, backend: &str) {
    emit(&format!("READY {frontend} {backend}"));
}
