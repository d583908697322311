//! Roles on libzmq 4.3 (the `zmq` crate's blocking API, one I/O thread per
//! process): the same senders, receivers, pinger and echo as `zrs.rs`, for
//! the side-by-side rows.
//!
//! Lossless mode (the default) sets SNDHWM = RCVHWM = 0 (unlimited) on
//! every socket of the pub-sub path, so libzmq never drops: its PUB queues
//! what the path cannot take yet in memory instead of blocking (the `zmq`
//! crate has no `ZMQ_XPUB_NODROP` setter and this crate forbids the unsafe
//! code `zmq-sys` would take). `--lossy` keeps libzmq's defaults (HWM 1000:
//! PUB and XPUB drop when a pipe is full).
//!
//! `send(&[u8])` copies the payload into a fresh `zmq_msg_t` per send, as
//! the `zeromq` roles copy into a fresh `Bytes`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cases::{Family, Pattern};
use crate::proto::{
    emit, finish_after_stop_blocking, finish_now_blocking, timed_report, Budget, Control, Meter,
    RoundTrips, SharedMeter, Stopwatch, Topics,
};
use crate::{lzproxy, Role, RoleArgs};

/// Runs one role to completion; never returns on success (the process exits).
pub(crate) fn run(role: Role, a: &RoleArgs, ctl: Arc<Control>) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    match role {
        Role::Send => send(&ctx, a, &ctl)?,
        Role::Recv => recv(&ctx, a, &ctl)?,
        Role::Proxy => lzproxy::run(&ctx, a, &ctl)?,
    }
    // Only a sender started by hand gets here: dropping the context waits
    // until its queued messages are on the wire.
    drop(ctx);
    Ok(())
}

/// The resolved endpoint of a socket bound to `ep` (e.g. `tcp://127.0.0.1:*`).
pub(crate) fn bind_at(sock: &zmq::Socket, ep: &str) -> anyhow::Result<String> {
    sock.bind(ep).with_context(|| format!("bind {ep}"))?;
    sock.get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint is not UTF-8"))
}

/// Attaches `sock` to `[@|>]ep` (bare: bind), or binds loopback if `None`;
/// returns the endpoint (the resolved one when bound).
pub(crate) fn attach_spec(sock: &zmq::Socket, spec: Option<&str>) -> anyhow::Result<String> {
    match spec.map(str::trim) {
        None => bind_at(sock, "tcp://127.0.0.1:*"),
        Some(s) => match s.strip_prefix('>') {
            Some(ep) => {
                sock.connect(ep).with_context(|| format!("connect {ep}"))?;
                Ok(ep.to_owned())
            }
            None => bind_at(sock, s.strip_prefix('@').unwrap_or(s)),
        },
    }
}

/// Sets HWM 0 (unlimited: never drop) on a pub-sub path socket in
/// lossless mode; leaves libzmq's default 1000 otherwise. Before
/// bind/connect, so that every pipe gets it.
pub(crate) fn lossless_hwm(sock: &zmq::Socket, a: &RoleArgs) -> zmq::Result<()> {
    if a.lossless() {
        sock.set_sndhwm(0)?;
        sock.set_rcvhwm(0)?;
    }
    Ok(())
}

/// Connects to `--connect`, or binds `--bind`, or binds loopback; prints
/// `READY <ep>`.
fn attach(sock: &zmq::Socket, a: &RoleArgs) -> anyhow::Result<()> {
    let spec = match (&a.connect, &a.bind) {
        (Some(ep), _) => Some(format!(">{ep}")),
        (None, Some(ep)) => Some(format!("@{ep}")),
        (None, None) => None,
    };
    let ep = attach_spec(sock, spec.as_deref())?;
    emit(&format!("READY {ep}"));
    Ok(())
}

fn send(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.connect.is_some() || a.bind.is_some(),
        "a sender needs --connect or --bind"
    );
    let family = a.pattern.family();
    let kind = match family {
        Family::PubSub => zmq::PUB,
        Family::Push => zmq::PUSH,
        Family::Dealer => zmq::DEALER,
        Family::ReqRep => zmq::REQ,
    };
    let sock = ctx.socket(kind)?;
    if family == Family::PubSub {
        lossless_hwm(&sock, a)?;
    }
    attach(&sock, a)?;
    if family == Family::ReqRep {
        ping(&sock, a, ctl)
    } else {
        stream(&sock, a, ctl)
    }
}

/// Sends message `n` whose last frame is `last` (pub-sub: `[topic][last]`).
fn send_msg(
    sock: &zmq::Socket,
    family: Family,
    topics: &Topics,
    n: u64,
    last: &[u8],
) -> zmq::Result<()> {
    if family == Family::PubSub {
        sock.send(topics.get(n), zmq::SNDMORE)?;
    }
    sock.send(last, 0)
}

/// How long a sender started by hand flushes its queue after its end
/// markers before it exits.
const MANUAL_LINGER_MS: i32 = 5000;

/// The one-way sender: warm-ups until GO, data for the budget, end markers.
fn stream(sock: &zmq::Socket, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let family = a.pattern.family();
    let topics = Topics::new();
    while !ctl.go() {
        anyhow::ensure!(!ctl.stopped(), "stopped before GO");
        send_msg(sock, family, &topics, 0, b"w")?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let payload = vec![b'x'; a.size];
    let budget = Budget::of(a);
    let clock = Stopwatch::start();
    let start = Instant::now();
    let mut sent = 0u64;
    while !budget.done(start, sent) {
        for _ in 0..256u64.min(budget.max_msgs - sent) {
            send_msg(sock, family, &topics, sent, &payload)?;
            sent += 1;
        }
    }
    let report = timed_report(sent, a.size, &clock);
    if family == Family::PubSub {
        // PUB drops at its HWM: repeat the marker every millisecond until told.
        let until = Instant::now() + ctl.marker_time();
        while !ctl.stopped() && Instant::now() < until {
            send_msg(sock, family, &topics, 0, b"")?;
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        send_msg(sock, family, &topics, 0, b"")?;
    }
    if ctl.is_manual() {
        // Nobody tells us when the receiver has everything: report, then
        // let the context's linger flush what is still queued, for a few
        // seconds at most (a receiver that stopped at --count is gone).
        ctl.report(&report);
        sock.set_linger(MANUAL_LINGER_MS)?;
        return Ok(());
    }
    finish_after_stop_blocking(ctl, || report)
}

/// The REQ side of the latency run.
fn ping(req: &zmq::Socket, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let mut reply = zmq::Message::new();
    while !ctl.go() {
        anyhow::ensure!(!ctl.stopped(), "stopped before GO");
        req.send(&b"w"[..], 0)?;
        req.recv(&mut reply, 0)?;
    }
    let mut trips = RoundTrips::start(a.size, Budget::of(a));
    while trips.more() {
        let t = Instant::now();
        req.send(&trips.payload[..], 0)?;
        req.recv(&mut reply, 0)?;
        trips.record(t, reply.len())?;
    }
    let report = trips.finish();
    req.send(&b""[..], 0)?;
    finish_after_stop_blocking(ctl, || report)
}

fn recv(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let kind = match a.pattern {
        Pattern::Pubsub | Pattern::Proxy | Pattern::Espresso | Pattern::Lvc => zmq::SUB,
        Pattern::Pushpull => zmq::PULL,
        Pattern::DealerRouter => zmq::ROUTER,
        Pattern::ReqrepLatency => zmq::REP,
        Pattern::Blackbox => return blackbox(ctx, a, ctl),
    };
    let sock = ctx.socket(kind)?;
    if kind == zmq::SUB {
        lossless_hwm(&sock, a)?;
        sock.set_subscribe(b"")?;
    }
    attach(&sock, a)?;
    if kind == zmq::REP {
        echo(&sock, ctl)
    } else {
        meter(&sock, a, ctl)
    }
}

/// The Guide's Black Box on libzmq: a SUB thread hands every message over
/// `inproc://` PUSH -> PULL to worker threads, round-robin as the Guide
/// draws it (per-key order is not kept). One PUSH per worker, so that at
/// the end marker each worker can be told to stop.
fn blackbox(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let sub = ctx.socket(zmq::SUB)?;
    lossless_hwm(&sub, a)?;
    sub.set_subscribe(b"")?;
    attach(&sub, a)?;
    let meter = Arc::new(SharedMeter::default());
    let mut pushes = Vec::new();
    let mut workers = Vec::new();
    for i in 0..crate::zrs::BLACKBOX_WORKERS {
        let ep = format!("inproc://blackbox-{i}");
        let push = ctx.socket(zmq::PUSH)?;
        push.bind(&ep)?;
        let pull = ctx.socket(zmq::PULL)?;
        pull.connect(&ep)?;
        let (meter, mine) = (meter.clone(), meter.worker());
        workers.push(std::thread::spawn(move || -> zmq::Result<()> {
            let mut msg = zmq::Message::new();
            while !meter.observe(&mine, recv_last(&pull, &mut msg)?) {}
            Ok(())
        }));
        pushes.push(push);
    }
    let mut msg = zmq::Message::new();
    let mut next = 0;
    loop {
        sub.recv(&mut msg, 0)?;
        let more = msg.get_more();
        let end = !more && msg.is_empty();
        let frame = std::mem::replace(&mut msg, zmq::Message::new());
        pushes[next].send(frame, if more { zmq::SNDMORE } else { 0 })?;
        if !more {
            if end {
                break;
            }
            next = (next + 1) % pushes.len();
        }
    }
    for (i, push) in pushes.iter().enumerate() {
        if i != next {
            push.send(&b"E"[..], zmq::SNDMORE)?;
            push.send(&b""[..], 0)?;
        }
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    finish_now_blocking(ctl, &meter.report())
}

/// Receives one whole message into `msg`; returns its last frame's length.
pub(crate) fn recv_last(sock: &zmq::Socket, msg: &mut zmq::Message) -> zmq::Result<usize> {
    loop {
        sock.recv(msg, 0)?;
        if !msg.get_more() {
            return Ok(msg.len());
        }
    }
}

fn meter(sock: &zmq::Socket, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let mut m = Meter::new(a.count);
    let mut msg = zmq::Message::new();
    loop {
        if m.observe(recv_last(sock, &mut msg)?) {
            break;
        }
    }
    finish_now_blocking(ctl, &m.report())
}

/// The REP side: echoes every request (single frame) without copying.
fn echo(rep: &zmq::Socket, ctl: &Control) -> anyhow::Result<()> {
    let mut m = Meter::default();
    loop {
        let mut msg = zmq::Message::new();
        rep.recv(&mut msg, 0)?;
        let done = m.observe(msg.len());
        rep.send(msg, 0)?;
        if done {
            break;
        }
    }
    finish_now_blocking(ctl, &m.report())
}
