//! Roles on libzmq 4.3 (the `zmq` crate's blocking API, default options:
//! one I/O thread per process, HWM 1000): the same senders, receivers,
//! pinger and echo as `zrs.rs`, for the side-by-side rows.
//!
//! `send(&[u8])` copies the payload into a fresh `zmq_msg_t` per send, as
//! the `zeromq` roles copy into a fresh `Bytes`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cases::{Family, Pattern};
use crate::proto::{
    emit, finish_after_stop_blocking, finish_now_blocking, sender_report, Budget, Control, Meter,
    RoundTrips, SharedMeter, Topics,
};
use crate::{lzproxy, Role, RoleArgs};

/// Runs one role to completion; never returns on success (the process exits).
pub(crate) fn run(role: Role, a: &RoleArgs, ctl: Arc<Control>) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    match role {
        Role::Send => send(&ctx, a, &ctl),
        Role::Recv => recv(&ctx, a, &ctl),
        Role::Proxy => lzproxy::run(&ctx, a, &ctl),
    }
}

/// The resolved endpoint of a socket bound to `tcp://127.0.0.1:*`.
pub(crate) fn bind_loopback(sock: &zmq::Socket) -> anyhow::Result<String> {
    sock.bind("tcp://127.0.0.1:*")?;
    sock.get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("endpoint is not UTF-8"))
}

fn attach(sock: &zmq::Socket, a: &RoleArgs) -> anyhow::Result<()> {
    let ep = match &a.connect {
        Some(ep) => {
            sock.connect(ep).with_context(|| format!("connect {ep}"))?;
            ep.clone()
        }
        None => bind_loopback(sock)?,
    };
    emit(&format!("READY {ep}"));
    Ok(())
}

fn send(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let ep = a.connect.as_deref().context("a sender needs --connect")?;
    let family = a.pattern.family();
    let kind = match family {
        Family::PubSub => zmq::PUB,
        Family::Push => zmq::PUSH,
        Family::Dealer => zmq::DEALER,
        Family::ReqRep => zmq::REQ,
    };
    let sock = ctx.socket(kind)?;
    sock.connect(ep).with_context(|| format!("connect {ep}"))?;
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
    let budget = Budget::new(a.secs, a.size, a.max_bytes);
    let start = Instant::now();
    let mut sent = 0u64;
    while !budget.done(start, sent) {
        for _ in 0..256u64.min(budget.max_msgs - sent) {
            send_msg(sock, family, &topics, sent, &payload)?;
            sent += 1;
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    if family == Family::PubSub {
        // PUB drops at its HWM: repeat the marker every millisecond until told.
        let until = Instant::now() + Duration::from_secs(10);
        while !ctl.stopped() && Instant::now() < until {
            send_msg(sock, family, &topics, 0, b"")?;
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        send_msg(sock, family, &topics, 0, b"")?;
    }
    finish_after_stop_blocking(ctl, || sender_report(sent, a.size, elapsed_s))
}

/// The REQ side of the latency run.
fn ping(req: &zmq::Socket, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let mut reply = zmq::Message::new();
    while !ctl.go() {
        anyhow::ensure!(!ctl.stopped(), "stopped before GO");
        req.send(&b"w"[..], 0)?;
        req.recv(&mut reply, 0)?;
    }
    let mut trips = RoundTrips::start(a.size, a.secs, a.max_bytes);
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
        sock.set_subscribe(b"")?;
    }
    attach(&sock, a)?;
    if kind == zmq::REP {
        echo(&sock, ctl)
    } else {
        meter(&sock, ctl)
    }
}

/// The Guide's Black Box on libzmq: a SUB thread hands every message over
/// `inproc://` PUSH -> PULL to worker threads, round-robin as the Guide
/// draws it (per-key order is not kept). One PUSH per worker, so that at
/// the end marker each worker can be told to stop.
fn blackbox(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let sub = ctx.socket(zmq::SUB)?;
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

fn meter(sock: &zmq::Socket, ctl: &Control) -> anyhow::Result<()> {
    let mut m = Meter::default();
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
