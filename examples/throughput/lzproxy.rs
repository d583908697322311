//! The proxy process on libzmq, as the Guide writes each one:
//!
//! - `proxy`: `zmq_proxy(XSUB, XPUB)`;
//! - `espresso`: `zmq_proxy(XSUB, XPUB, capture)` with the capture socket a
//!   PAIR over `inproc://`, drained by a listener thread (Guide: espresso.c);
//! - `lvc`: the Guide's lvcache.c: a SUB frontend subscribed to everything,
//!   an XPUB backend with `XPUB_VERBOSE`, a `HashMap` of topic to last value
//!   and a `zmq_poll` loop that forwards and caches one message per wake-up
//!   and answers a subscription with that exact topic's cached value.
//!
//! Lossless mode (the default): SNDHWM = RCVHWM = 0 on every socket, the
//! capture pair included, so nothing on the path drops.
//!
//! The proxy runs on its own thread; the main thread waits for STOP,
//! reports, and exits the process (no context termination to hang on).
//! Started by hand, it prints its counters every second instead, until it
//! is killed or its `--deadline` passes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cases::Pattern;
use crate::lz::{attach_spec, lossless_hwm, recv_last};
use crate::proto::{emit, finish_after_stop_blocking, Control, Report};
use crate::RoleArgs;

pub(crate) fn run(ctx: &zmq::Context, a: &RoleArgs, ctl: &Control) -> anyhow::Result<()> {
    let (front, back) = match a.pattern {
        Pattern::Lvc => (ctx.socket(zmq::SUB)?, ctx.socket(zmq::XPUB)?),
        _ => (ctx.socket(zmq::XSUB)?, ctx.socket(zmq::XPUB)?),
    };
    lossless_hwm(&front, a)?;
    lossless_hwm(&back, a)?;
    let frontend = attach_spec(&front, a.frontend.as_deref())?;
    let backend = attach_spec(&back, a.backend.as_deref())?;
    let counted = Arc::new(AtomicU64::new(0));
    match a.pattern {
        Pattern::Proxy => {
            std::thread::spawn(move || zmq::proxy(&front, &back));
        }
        Pattern::Espresso => espresso(ctx, a, front, back, counted.clone())?,
        Pattern::Lvc => {
            front.set_subscribe(b"")?;
            back.set_xpub_verbose(true)?;
            let n = counted.clone();
            std::thread::spawn(move || lvcache(&front, &back, &n));
        }
        other => anyhow::bail!("{} is not a proxy pattern", other.name()),
    }
    emit(&format!("READY {frontend} {backend}"));
    let pattern = a.pattern;
    if ctl.is_manual() {
        // zmq_proxy counts nothing; the LVC loop and the capture listener do.
        let counts = (pattern != Pattern::Proxy).then_some(&*counted);
        crate::proto::print_every_second(|| counts.map(|n| n.load(Ordering::Relaxed)));
    }
    finish_after_stop_blocking(ctl, || {
        let n = counted.load(Ordering::Relaxed);
        Report {
            count: if pattern == Pattern::Lvc { n } else { 0 },
            captured: (pattern == Pattern::Espresso).then_some(n),
            ..Report::default()
        }
    })
}

/// `zmq_proxy` with a capture PAIR, and the listener thread draining it.
fn espresso(
    ctx: &zmq::Context,
    a: &RoleArgs,
    mut front: zmq::Socket,
    mut back: zmq::Socket,
    captured: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut capture = ctx.socket(zmq::PAIR)?;
    lossless_hwm(&capture, a)?;
    capture.bind("inproc://capture")?;
    let listener = ctx.socket(zmq::PAIR)?;
    lossless_hwm(&listener, a)?;
    listener.connect("inproc://capture")?;
    std::thread::spawn(move || {
        let mut msg = zmq::Message::new();
        while recv_last(&listener, &mut msg).is_ok() {
            captured.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::spawn(move || zmq::proxy_with_capture(&mut front, &mut back, &mut capture));
    Ok(())
}

/// The Guide's lvcache loop.
fn lvcache(front: &zmq::Socket, back: &zmq::Socket, forwarded: &AtomicU64) -> zmq::Result<()> {
    let mut cache: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    loop {
        let mut items = [
            front.as_poll_item(zmq::POLLIN),
            back.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, 1000)?;
        if items[0].is_readable() {
            let topic = front.recv_bytes(0)?;
            let value = if front.get_rcvmore()? {
                front.recv_bytes(0)?
            } else {
                Vec::new()
            };
            back.send(&topic[..], zmq::SNDMORE)?;
            back.send(&value[..], 0)?;
            cache.insert(topic, value);
            forwarded.fetch_add(1, Ordering::Relaxed);
        }
        if items[1].is_readable() {
            let event = back.recv_bytes(0)?;
            if event.first() == Some(&1) {
                if let Some(value) = cache.get(&event[1..]) {
                    back.send(&event[1..], zmq::SNDMORE)?;
                    back.send(&value[..], 0)?;
                }
            }
        }
    }
}
