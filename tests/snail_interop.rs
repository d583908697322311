//! Suicidal Snail against libzmq 4.3: the `suisnail` example's subscriber
//! watching a libzmq publisher of Guide-format timestamps (as `suisnail.c`
//! sends them), the toolkit envelope carried by libzmq both ways, and what
//! a dropped handle closes (the limits: `snail_limits.rs`).

mod common;
use common::*;

#[allow(dead_code)]
#[path = "../examples/suisnail/subscriber.rs"]
mod suisnail_subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use suisnail_subscriber::{run_subscriber, SubOptions};
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::snail::envelope::{decode, Stamper, WireFormat};
use zpatterns::snail::*;

/// A libzmq PUB sending what `suisnail.c` sends: every 1 ms, one frame of
/// decimal ASCII milliseconds since the epoch. Stops when dropped.
struct GuidePublisher {
    endpoint: String,
    stop: Arc<AtomicBool>,
}

impl GuidePublisher {
    fn start() -> Self {
        let publisher = Lz::new(zmq::PUB);
        let endpoint = publisher.bind_loopback();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                publisher.with(|p| p.send(ms.to_string().as_bytes(), 0).unwrap());
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { endpoint, stop }
    }
}

impl Drop for GuidePublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn options(ep: &str, max_delay_ms: u64, work_ms: u64) -> SubOptions {
    SubOptions {
        endpoint: EndpointSpec::connect(ep).unwrap(),
        max_delay: Duration::from_millis(max_delay_ms),
        work_ms,
        clock: ClockSync::Estimated,
        verbose: false,
        limit: None,
    }
}

fn connect(ep: &str) -> EndpointSpec {
    EndpointSpec::connect(ep).unwrap()
}

#[tokio::test]
async fn example_subscriber_croaks_on_a_libzmq_guide_publisher() {
    trace_init();
    let publisher = GuidePublisher::start();
    // 2-4 ms of work per 1 ms message, 150 ms allowed: croaks in well under a second.
    let opts = options(&publisher.endpoint, 150, 4);
    let report = within(
        secs(30),
        "croak",
        run_subscriber(&opts, CancellationToken::new()),
    )
    .await
    .expect("no socket error");
    let received = report.received;
    let croak = report.croak.expect("croaked");
    let alarm = croak.alarm().unwrap();
    assert_eq!(
        (alarm.cause(), alarm.publisher().as_ref()),
        (AlarmCause::Lag, b"guide-c".as_ref())
    );
    assert!(alarm.lag() > Duration::from_millis(150));
    assert_ne!(croak.exit_code(), std::process::ExitCode::SUCCESS);
    assert!(received > 10, "{received}");
}

#[tokio::test]
async fn example_subscriber_keeps_up_with_a_libzmq_guide_publisher() {
    trace_init();
    let publisher = GuidePublisher::start();
    // The Guide's 1 s limit: a subscriber doing no work never gets near it,
    // even on a loaded test machine.
    // Runs until 300 messages were received (a bounded wait, no fixed
    // sleep), then checks that none of them croaked.
    let opts = SubOptions {
        limit: Some(300),
        ..options(&publisher.endpoint, 1000, 0)
    };
    let report = within(
        secs(30),
        "300 messages",
        run_subscriber(&opts, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert!(report.croak.is_none(), "{report:?}");
    assert_eq!(report.received, 300, "{report:?}");
}

/// The example binary itself, as a separate process: exit status and the
/// Guide's message on stderr. Builds the example first (a no-op after a
/// full `cargo test`), so this file also runs on its own.
#[tokio::test]
async fn example_process_exits_non_zero_when_it_croaks() {
    trace_init();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--example", "suisnail", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the suisnail example failed");
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("suisnail");
    let publisher = GuidePublisher::start();
    let out = within(
        secs(60),
        "suisnail process",
        tokio::process::Command::new(&bin)
            .args(["--subscriber-only", "--connect", &publisher.endpoint])
            .args(["--max-delay-ms", "150", "--work-ms", "4"])
            .env("RUST_LOG", "error")
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(i32::from(CROAK_EXIT_CODE)),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("E: subscriber cannot keep up, aborting"),
        "{stderr}"
    );
    assert!(stdout.contains("croaked after"), "{stdout}");
}

#[tokio::test]
async fn toolkit_envelope_reaches_a_libzmq_subscriber_as_plain_frames() {
    trace_init();
    let config = SnailPublisherConfig::new(EndpointSpec::loopback(), "zrs-pub");
    let mut p = SnailPublisher::start(config, &CancellationToken::new())
        .await
        .unwrap();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"A");
    sub.connect(p.endpoint());
    let got = within(secs(10), "first message", async {
        loop {
            p.send(vec![Bytes::from("B"), Bytes::from("filtered")])
                .await
                .unwrap();
            p.send(vec![Bytes::from("A"), Bytes::from("body")])
                .await
                .unwrap();
            if let Some(m) = sub.recv(ms(50)).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(got.len(), 3, "topic, body, stamp");
    assert_eq!(text(&got[..2]), ["A", "body"]);
    let frames: Vec<Bytes> = got.into_iter().map(Bytes::from).collect();
    let stamp = decode(&frames, WireFormat::Toolkit).unwrap();
    assert_eq!(stamp.publisher().as_ref(), b"zrs-pub");
    assert_eq!(stamp.epoch(), p.stamper().epoch());
    assert_eq!(
        stamp.seq().unwrap() % 2,
        1,
        "the A messages have odd sequence numbers"
    );
}

#[tokio::test]
async fn libzmq_publisher_of_toolkit_stamps_is_checked_and_gaps_croak() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    let ep = publisher.bind_loopback();
    let config = SnailConfig::new([connect(&ep)]).topics(["A"]);
    let mut sub = SnailSubscriber::start(config, &CancellationToken::new())
        .await
        .unwrap();
    let mut stamper = Stamper::with_epoch("lz-pub", 42).unwrap();
    let mut stamped = |body: &str| {
        let mut f = vec![Bytes::from("A"), Bytes::from(body.to_owned())];
        stamper.stamp(&mut f, SystemTime::now());
        f.into_iter().map(|b| b.to_vec()).collect::<Vec<_>>()
    };
    let first = within(secs(10), "first message", async {
        loop {
            publisher.send_owned(stamped("warm-up")).await;
            if let Ok(Ok(d)) = tokio::time::timeout(ms(50), sub.recv()).await {
                break d;
            }
        }
    })
    .await;
    assert_eq!(text(first.frames()), ["A", "warm-up"]);
    assert_eq!(first.stamp().unwrap().publisher().as_ref(), b"lz-pub");
    while let Ok(Ok(_)) = tokio::time::timeout(ms(100), sub.recv()).await {}
    let _lost = stamped("never sent");
    publisher.send_owned(stamped("after gap")).await;
    let err = within(secs(5), "gap croak", sub.recv()).await.unwrap_err();
    let alarm = err.alarm().unwrap();
    assert_eq!((alarm.cause(), alarm.lost()), (AlarmCause::Loss, 1));
}

/// libzmq's PUB drops at its high-water mark, silently: a subscriber that
/// stalls behind one sees a sequence gap when it reads again, and croaks
/// with the gap's size.
#[tokio::test]
async fn a_libzmq_pub_dropping_at_its_hwm_is_caught_as_loss() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_sndhwm(100).unwrap());
    let monitor = publisher.monitor(zmq::SocketEvent::DISCONNECTED as i32);
    let ep = publisher.bind_loopback();
    let mut sub =
        SnailSubscriber::start(SnailConfig::new([connect(&ep)]), &CancellationToken::new())
            .await
            .unwrap();
    let stamper = Arc::new(std::sync::Mutex::new(
        Stamper::with_epoch("lz-hwm", 7).unwrap(),
    ));
    let stamped = move |body: Vec<u8>| {
        let mut f = vec![Bytes::from_static(b"T"), Bytes::from(body)];
        stamper.lock().unwrap().stamp(&mut f, SystemTime::now());
        f.into_iter().map(|b| b.to_vec()).collect::<Vec<_>>()
    };
    within(secs(10), "subscription", async {
        loop {
            publisher.send_owned(stamped(b"warm-up".to_vec())).await;
            if let Ok(Ok(_)) = tokio::time::timeout(ms(20), sub.recv()).await {
                break;
            }
        }
    })
    .await;
    while let Ok(Ok(_)) = tokio::time::timeout(ms(100), sub.recv()).await {}
    // 20,000 × 1 KiB while the subscriber does not read: far more than the
    // HWM plus both sockets' buffers.
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || {
        p.with(|s| {
            for _ in 0..20_000 {
                s.send_multipart(stamped(vec![b'x'; 1024]), 0).unwrap();
            }
        })
    })
    .await
    .unwrap();
    let err = within(secs(30), "loss croak", async {
        loop {
            if let Err(e) = sub.recv().await {
                break e;
            }
        }
    })
    .await;
    let alarm = err.alarm().expect("a croak");
    assert_eq!(alarm.cause(), AlarmCause::Loss, "{alarm}");
    let gap = alarm.gap().expect("the gap");
    assert!(gap.lost() > 0 && gap.got > gap.expected, "{alarm}");
    assert_eq!(alarm.publisher().as_ref(), b"lz-hwm");
    // Teardown order matters here. The PUB still holds a backlog, so its
    // I/O thread is usually part-way through a multipart message. If the
    // subscriber's connection drops while `zmq_close` is terminating that
    // pipe, libzmq 4.3.4 aborts the whole process (session_base.cpp:260,
    // "Resource temporarily unavailable", libzmq issue 3442). So the
    // subscriber goes first. The PUB is closed only after it has seen the
    // disconnect.
    sub.shutdown().await.unwrap();
    let disconnected = zmq::SocketEvent::DISCONNECTED as u16;
    within(secs(10), "the PUB sees the disconnect", async {
        while monitor.event(secs(10)).await != Some(disconnected) {}
    })
    .await;
}

/// A peer's protocol garbage never ends the subscriber: a libzmq PUB with
/// ZMTP heartbeats (which the `zeromq` crate rejects, dropping the
/// connection) keeps being read across the reconnects, and the errors are
/// counted. (Tied to the heartbeat guard in `interop_basics.rs`: if the
/// crate learns heartbeats, this needs another source of garbage.)
#[tokio::test]
async fn receive_errors_are_counted_and_the_subscriber_carries_on() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_heartbeat_ivl(50).unwrap());
    let ep = publisher.bind_loopback();
    // Losses across reconnects are expected here: count, do not croak.
    let config =
        SnailConfig::new([connect(&ep)]).detector(DetectorConfig::default().max_lost(None));
    let mut sub = SnailSubscriber::start(config, &CancellationToken::new())
        .await
        .unwrap();
    let mut stamper = Stamper::with_epoch("lz-hb", 1).unwrap();
    let p = publisher.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let feeder = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let mut f = vec![Bytes::from_static(b"T")];
            stamper.stamp(&mut f, SystemTime::now());
            p.with(|z| z.send_multipart(f.iter().map(|b| b.to_vec()), 0).unwrap());
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    within(secs(30), "receive errors", async {
        while sub.stats().socket_errors < 2 {
            sub.recv().await.expect("never an error");
        }
    })
    .await;
    let before = sub.stats().delivered;
    within(secs(30), "deliveries after the errors", async {
        while sub.stats().delivered < before + 20 {
            sub.recv().await.expect("never an error");
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
}

/// Dropping a subscriber closes its socket at once: a libzmq XPUB sees the
/// subscription go (libzmq reports the unsubscribe of a closed pipe).
#[tokio::test]
async fn dropping_a_subscriber_closes_its_socket() {
    trace_init();
    let xpub = Lz::new(zmq::XPUB);
    let ep = xpub.bind_loopback();
    let parent = CancellationToken::new();
    let config = SnailConfig::new([connect(&ep)]).topics(["A"]);
    let sub = SnailSubscriber::start(config, &parent).await.unwrap();
    let got = xpub.recv(secs(10)).await.expect("the subscription");
    assert_eq!(got, [b"\x01A".to_vec()]);
    drop(sub);
    let got = xpub.recv(secs(10)).await.expect("the unsubscription");
    assert_eq!(got, [b"\x00A".to_vec()]);
    assert!(!parent.is_cancelled(), "a drop never cancels the parent");
}

/// Dropping a publisher closes its socket: a libzmq SUB's monitor sees
/// the connection go, and the parent token is untouched.
#[tokio::test]
async fn dropping_a_publisher_closes_its_socket() {
    trace_init();
    let parent = CancellationToken::new();
    let config = SnailPublisherConfig::new(EndpointSpec::loopback(), "p");
    let mut p = SnailPublisher::start(config, &parent).await.unwrap();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    let monitor =
        sub.monitor((zmq::SocketEvent::CONNECTED as i32) | (zmq::SocketEvent::DISCONNECTED as i32));
    sub.connect(p.endpoint());
    let first = monitor.event(secs(10)).await.expect("connected");
    assert_eq!(first, zmq::SocketEvent::CONNECTED as u16);
    // The publisher works...
    within(secs(10), "a message", async {
        loop {
            p.send(vec![Bytes::from("t")]).await.unwrap();
            if sub.recv(ms(50)).await.is_some() {
                break;
            }
        }
    })
    .await;
    // ...until dropped.
    drop(p);
    let next = monitor.event(secs(10)).await.expect("disconnected");
    assert_eq!(next, zmq::SocketEvent::DISCONNECTED as u16);
    assert!(!parent.is_cancelled());
}
