//! Roles on the pure-Rust `zeromq` crate: PUB/PUSH/DEALER senders, the REQ
//! pinger, SUB/PULL/ROUTER receivers and the REP echo, each in its own
//! process on a tokio runtime (current-thread by default: measured fastest
//! on this 2-vCPU box, `--rt mt` to compare).
//!
//! Messages are built fresh per send by copying a payload buffer
//! (`Bytes::copy_from_slice`), as libzmq's `send(&[u8])` copies too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use zeromq::prelude::*;
use zeromq::ZmqMessage;

use crate::cases::{Family, Pattern};
use crate::proto::{
    emit, timed_report, Budget, Control, Meter, Report, RoundTrips, SharedMeter, Stopwatch, Topics,
};
use crate::{zproxy, Role, RoleArgs, Runtime};

/// Runs one role to completion; never returns on success (the process exits).
pub(crate) fn run(role: Role, a: &RoleArgs, ctl: Arc<Control>) -> anyhow::Result<()> {
    let rt = match a.rt {
        Runtime::Ct => tokio::runtime::Builder::new_current_thread(),
        Runtime::Mt => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    rt.block_on(async {
        match role {
            Role::Send => send(a, &ctl).await,
            Role::Recv => recv(a, &ctl).await,
            Role::Proxy => zproxy::run(a, &ctl).await,
        }
    })
}

/// Waits for STOP, reports, exits. Senders and proxies end here.
pub(crate) async fn finish_after_stop(ctl: &Control, report: impl FnOnce() -> Report) -> ! {
    ctl.wait_stop(Duration::from_secs(30)).await;
    ctl.report(&report());
    std::process::exit(0)
}

/// Reports, waits for STOP, exits. Receivers end here.
async fn finish_now(ctl: &Control, report: &Report) -> ! {
    ctl.report(report);
    ctl.wait_stop(Duration::from_secs(30)).await;
    std::process::exit(0)
}

/// Connects to `--connect`, or binds `--bind` (libzmq's `*` wildcards
/// rewritten), or binds `127.0.0.1:0`; prints `READY <ep>`.
async fn attach<S: Socket>(sock: &mut S, a: &RoleArgs) -> anyhow::Result<()> {
    let ep = match (&a.connect, &a.bind) {
        (Some(ep), _) => {
            sock.connect(ep)
                .await
                .with_context(|| format!("connect {ep}"))?;
            ep.clone()
        }
        (None, Some(ep)) => {
            let spec = zpatterns::endpoint::EndpointSpec::bind(ep)
                .with_context(|| format!("--bind {ep}"))?;
            sock.bind(spec.endpoint())
                .await
                .with_context(|| format!("bind {ep}"))?
                .to_string()
        }
        (None, None) => sock.bind("tcp://127.0.0.1:0").await?.to_string(),
    };
    emit(&format!("READY {ep}"));
    Ok(())
}

/// A sender's socket, attached as `--connect` / `--bind` say.
async fn connect<S: Socket>(mut sock: S, a: &RoleArgs) -> anyhow::Result<S> {
    anyhow::ensure!(
        a.connect.is_some() || a.bind.is_some(),
        "a sender needs --connect or --bind"
    );
    attach(&mut sock, a).await?;
    Ok(sock)
}

async fn send(a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    match a.pattern.family() {
        Family::PubSub => stream(connect(zeromq::PubSocket::new(), a).await?, a, ctl).await,
        Family::Push => stream(connect(zeromq::PushSocket::new(), a).await?, a, ctl).await,
        Family::Dealer => stream(connect(zeromq::DealerSocket::new(), a).await?, a, ctl).await,
        Family::ReqRep => ping(connect(zeromq::ReqSocket::new(), a).await?, a, ctl).await,
    }
}

/// Builds message `n` whose last frame is `last` (pub-sub: `[topic][last]`).
fn message(family: Family, topics: &Topics, n: u64, last: &[u8]) -> ZmqMessage {
    let payload = Bytes::copy_from_slice(last);
    if family == Family::PubSub {
        let t = Bytes::copy_from_slice(topics.get(n));
        ZmqMessage::try_from(vec![t, payload]).expect("two frames")
    } else {
        ZmqMessage::from(payload)
    }
}

/// The one-way sender: warm-ups until GO, data for the budget, end markers.
async fn stream<S: SocketSend>(mut sock: S, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let family = a.pattern.family();
    let topics = Topics::new();
    while !ctl.go() {
        anyhow::ensure!(!ctl.stopped(), "stopped before GO");
        sock.send(message(family, &topics, 0, b"w")).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let payload = vec![b'x'; a.size];
    let budget = Budget::of(a);
    let batch = if a.yield_every == 0 {
        256
    } else {
        a.yield_every
    };
    let clock = Stopwatch::start();
    let start = Instant::now();
    let mut sent = 0u64;
    while !budget.done(start, sent) {
        for _ in 0..batch.min(budget.max_msgs - sent) {
            sock.send(message(family, &topics, sent, &payload)).await?;
            sent += 1;
        }
        if a.yield_every > 0 {
            // A PUB's fan-out task and a PUSH's writer task share this thread.
            tokio::task::yield_now().await;
        }
    }
    let report = timed_report(sent, a.size, &clock);
    if family == Family::PubSub {
        // PUB may drop any one marker: repeat every millisecond until told
        // (by hand: for a second, while the queues drain).
        let until = Instant::now() + ctl.marker_time();
        while !ctl.stopped() && Instant::now() < until {
            sock.send(message(family, &topics, 0, b"")).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        sock.send(message(family, &topics, 0, b"")).await?;
    }
    finish_after_stop(ctl, || report).await
}

/// The REQ side of the latency run: round trips until GO (warm-up), then
/// measured ones for the budget.
async fn ping(mut req: zeromq::ReqSocket, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let topics = Topics::new();
    while !ctl.go() {
        anyhow::ensure!(!ctl.stopped(), "stopped before GO");
        req.send(message(Family::ReqRep, &topics, 0, b"w")).await?;
        req.recv().await?;
    }
    let mut trips = RoundTrips::start(a.size, Budget::of(a));
    while trips.more() {
        let t = Instant::now();
        let msg = message(Family::ReqRep, &topics, trips.n, &trips.payload);
        req.send(msg).await?;
        let reply = req.recv().await?;
        trips.record(t, last_len(&reply))?;
    }
    let report = trips.finish();
    req.send(message(Family::ReqRep, &topics, 0, b"")).await?;
    finish_after_stop(ctl, || report).await
}

fn last_len(msg: &ZmqMessage) -> usize {
    msg.len()
        .checked_sub(1)
        .and_then(|i| msg.get(i))
        .map_or(0, Bytes::len)
}

async fn recv(a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    match a.pattern {
        Pattern::Pubsub | Pattern::Proxy | Pattern::Espresso | Pattern::Lvc => {
            let mut sub = zeromq::SubSocket::new();
            sub.subscribe("").await?;
            attach(&mut sub, a).await?;
            meter(sub, a, ctl).await
        }
        Pattern::Pushpull => {
            let mut pull = zeromq::PullSocket::new();
            attach(&mut pull, a).await?;
            meter(pull, a, ctl).await
        }
        Pattern::DealerRouter => {
            let mut router = zeromq::RouterSocket::new();
            attach(&mut router, a).await?;
            meter(router, a, ctl).await
        }
        Pattern::ReqrepLatency => {
            let mut rep = zeromq::RepSocket::new();
            attach(&mut rep, a).await?;
            echo(rep, ctl).await
        }
        Pattern::Blackbox => blackbox(a, ctl).await,
    }
}

/// Workers of the sharded subscriber in the Black Box rows.
pub(crate) const BLACKBOX_WORKERS: usize = 2;

/// The Black Box receiver: one SUB, key-hashed hand-off over bounded
/// channels (`Overflow::Block`: lossless) to worker threads that count.
async fn blackbox(a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    use zpatterns::blackbox::{BlackBox, BlackBoxConfig};
    use zpatterns::endpoint::EndpointSpec;
    let spec = match (&a.connect, &a.bind) {
        (Some(ep), _) => EndpointSpec::connect(ep)?,
        (None, Some(ep)) => EndpointSpec::bind(ep)?,
        (None, None) => EndpointSpec::loopback(),
    };
    let meter = Arc::new(SharedMeter::default());
    // The benchmark's largest payload is 64 KiB plus a header frame: above
    // the Black Box's 64 KiB default limit.
    let config = BlackBoxConfig::new(vec![spec], &[""])
        .workers(BLACKBOX_WORKERS)
        .max_message_bytes(1 << 20);
    let bb = BlackBox::start(
        config,
        |_| {
            let (meter, mine) = (meter.clone(), meter.worker());
            move |msg: ZmqMessage| {
                meter.observe(&mine, last_len(&msg));
            }
        },
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    emit(&format!("READY {}", bb.endpoints()[0][0]));
    while !meter.done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bb.shutdown().await?; // drains every worker's queue
    finish_now(ctl, &meter.report()).await
}

/// Receives and counts until the end marker.
async fn meter<S: SocketRecv>(mut sock: S, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let mut m = Meter::new(a.count);
    loop {
        let msg = sock.recv().await?;
        if m.observe(last_len(&msg)) {
            break;
        }
    }
    finish_now(ctl, &m.report()).await
}

/// The REP side of the latency run: echoes every request.
async fn echo(mut rep: zeromq::RepSocket, ctl: &Control) -> anyhow::Result<()> {
    let mut m = Meter::default();
    loop {
        let msg = rep.recv().await?;
        let done = m.observe(last_len(&msg));
        rep.send(msg).await?;
        if done {
            break;
        }
    }
    finish_now(ctl, &m.report()).await
}
