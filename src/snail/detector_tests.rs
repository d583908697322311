//! Deterministic tests of the detector: virtual clocks, no sockets, no sleeps.

use super::*;
use std::time::UNIX_EPOCH;

const T0_US: u64 = 1_700_000_000_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Subscriber wall time `us` microseconds after T0.
fn local(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(T0_US + us)
}

/// A stamp sent at subscriber-time `us` by a publisher whose clock reads
/// `skew_us` more than the subscriber's.
fn stamp(id: &str, epoch: u32, seq: u64, us: u64, skew_us: i64) -> Stamp {
    let sent = (T0_US + us) as i64 + skew_us;
    Stamp::new(
        Bytes::from(id.to_owned()),
        epoch,
        seq,
        UNIX_EPOCH + Duration::from_micros(sent as u64),
    )
}

/// One publisher sending every `period_us`; the subscriber takes `work_us`
/// per message (0 = instant) and sees `jitter` µs of random transit.
/// Returns the index and verdict of the first croak, if any.
fn run(
    det: &mut Detector,
    n: u64,
    period_us: u64,
    work_us: u64,
    skew_us: i64,
    seed: u64,
) -> Option<(u64, Alarm)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut free_at = 0u64; // when the subscriber can take the next message
    for seq in 0..n {
        let sent = seq * period_us;
        let arrives = sent + 50 + rng.u64(0..2_000);
        let now = arrives.max(free_at);
        free_at = now + work_us;
        let v = det.handle_message(&stamp("p", 1, seq, sent, skew_us), local(now));
        if let Verdict::Croak(a) = v {
            return Some((seq, *a));
        }
    }
    None
}

#[test]
fn trusted_clock_croaks_like_the_guide() {
    let mut d = Detector::new(DetectorConfig::default().clock(ClockSync::Trusted));
    let ok = d.handle_message(&stamp("p", 1, 0, 0, 0), local(999_000));
    assert_eq!(ok, Verdict::Healthy { lag: ms(999) });
    let v = d.handle_message(&stamp("p", 1, 1, 0, 0), local(1_000_001));
    let Verdict::Croak(a) = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        (a.cause(), a.lag(), a.max_lag()),
        (AlarmCause::Lag, Duration::from_micros(1_000_001), ms(1000))
    );
    assert_eq!(a.publisher().as_ref(), b"p");
    assert!(a.to_string().contains("lag 1.000001s > max 1s"), "{a}");
}

#[test]
fn constant_skew_of_two_seconds_is_no_false_alarm() {
    for skew in [2_000_000i64, -2_000_000, 0] {
        let mut d = Detector::new(DetectorConfig::default());
        // 20 s of 1 ms messages, a subscriber that keeps up, 0-2 ms jitter.
        assert_eq!(run(&mut d, 20_000, 1_000, 0, skew, 7), None, "skew {skew}");
        let st = d.status(b"p").unwrap();
        assert!(st.max_lag < ms(3), "skew {skew}: {st:?}");
        // The estimate is the skew plus the minimal transit (≥ 50 µs).
        let off = st.clock_offset_micros + skew;
        assert!((50..200).contains(&off), "skew {skew}: offset error {off}");
    }
    // The Guide's trusted clock takes the same skew for lag:
    let mut d = Detector::new(DetectorConfig::default().clock(ClockSync::Trusted));
    let (at, a) = run(&mut d, 20_000, 1_000, 0, -2_000_000, 7).expect("trusted croaks");
    assert_eq!((at, a.cause()), (0, AlarmCause::Lag));
}

#[test]
fn growing_backlog_croaks_whatever_the_skew() {
    // Publish every 1 ms, work 1.5 ms per message: lag grows 0.5 ms/msg and
    // passes 1 s after about 2000 messages.
    let mut firsts = Vec::new();
    for skew in [2_000_000i64, -2_000_000, 0] {
        let mut d = Detector::new(DetectorConfig::default());
        let (at, a) = run(&mut d, 10_000, 1_000, 1_500, skew, 3).expect("croaks");
        assert_eq!(a.cause(), AlarmCause::Lag);
        assert!(a.lag() > ms(1000) && a.lag() < ms(1010), "{a}");
        firsts.push(at);
    }
    for at in &firsts {
        assert!(
            (1990..2010).contains(at),
            "croaked at message {at}: {firsts:?}"
        );
    }
}

#[test]
fn gaps_are_reported_per_publisher_with_their_size() {
    let mut d = Detector::new(DetectorConfig::default());
    for seq in 0..3 {
        assert!(matches!(
            d.handle_message(&stamp("a", 1, seq, 0, 0), local(100)),
            Verdict::Healthy { .. }
        ));
        d.handle_message(&stamp("b", 9, seq, 0, 0), local(100));
    }
    let v = d.handle_message(&stamp("a", 1, 5, 0, 0), local(100));
    let Verdict::Croak(a) = v else {
        panic!("{v:?}")
    };
    assert_eq!(a.cause(), AlarmCause::Loss);
    assert_eq!(
        a.gap(),
        Some(Gap {
            expected: 3,
            got: 5
        })
    );
    assert_eq!((a.lost(), a.publisher().as_ref()), (2, &b"a"[..]));
    // Publisher b is unaffected.
    assert!(matches!(
        d.handle_message(&stamp("b", 9, 3, 0, 0), local(100)),
        Verdict::Healthy { .. }
    ));
    let st = d.status(b"a").unwrap();
    assert_eq!((st.received, st.lost, st.gaps), (4, 2, 1));
}

#[test]
fn tolerated_loss_warns_then_croaks_past_the_limit() {
    let mut d = Detector::new(DetectorConfig::default().max_lost(Some(3)));
    d.handle_message(&stamp("a", 1, 0, 0, 0), local(0));
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 3, 0, 0), local(0)),
        Verdict::Warning(_)
    ));
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 5, 0, 0), local(0)),
        Verdict::Warning(_)
    ));
    let v = d.handle_message(&stamp("a", 1, 7, 0, 0), local(0));
    assert!(matches!(&v, Verdict::Croak(a) if a.lost() == 4), "{v:?}");
    // Filtered subscribers: count, never croak.
    let mut d = Detector::new(DetectorConfig::default().max_lost(None));
    d.handle_message(&stamp("a", 1, 0, 0, 0), local(0));
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 1000, 0, 0), local(0)),
        Verdict::Warning(_)
    ));
    assert_eq!(d.status(b"a").unwrap().lost, 999);
}

#[test]
fn duplicates_and_restarts_are_not_gaps() {
    let mut d = Detector::new(DetectorConfig::default());
    for seq in 0..10 {
        d.handle_message(&stamp("a", 1, seq, 0, 0), local(0));
    }
    // A duplicate of the last message.
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 9, 0, 0), local(0)),
        Verdict::Healthy { .. }
    ));
    // Same epoch, sequence back to 0: a restart reusing its epoch.
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 0, 0, 0), local(0)),
        Verdict::Healthy { .. }
    ));
    // A new epoch starting high (messages sent while we reconnected): restart.
    assert!(matches!(
        d.handle_message(&stamp("a", 2, 500, 0, 0), local(0)),
        Verdict::Healthy { .. }
    ));
    assert!(matches!(
        d.handle_message(&stamp("a", 2, 501, 0, 0), local(0)),
        Verdict::Healthy { .. }
    ));
    let st = d.status(b"a").unwrap();
    assert_eq!((st.duplicates, st.restarts, st.lost, st.gaps), (1, 2, 0, 0));
}

#[test]
fn reset_after_recovery_clears_the_alarm() {
    let mut d = Detector::new(DetectorConfig::default().clock(ClockSync::Trusted));
    d.handle_message(&stamp("a", 1, 0, 0, 0), local(0));
    assert!(d
        .handle_message(&stamp("a", 1, 4, 0, 0), local(0))
        .is_croak());
    assert!(d
        .handle_message(&stamp("a", 1, 5, 0, 0), local(2_000_000))
        .is_croak());
    d.reset(b"a");
    // Resynced: the next message (even after another gap) starts afresh.
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 9, 3_000_000, 0), local(3_000_100)),
        Verdict::Healthy { .. }
    ));
    assert!(matches!(
        d.handle_message(&stamp("a", 1, 10, 3_000_000, 0), local(3_000_200)),
        Verdict::Healthy { .. }
    ));
    let st = d.status(b"a").unwrap();
    assert_eq!((st.lost, st.received), (3, 5), "counters survive a reset");
}

#[test]
fn sustain_spares_a_pause_but_not_a_slow_subscriber() {
    let cfg = DetectorConfig::default()
        .clock(ClockSync::Trusted)
        .sustain(ms(500));
    let mut d = Detector::new(cfg);
    // A 1.2 s pause: the backlog drains in 300 ms (sent at 1 ms intervals, read fast).
    let mut warnings = 0;
    for seq in 0..2000u64 {
        let sent = seq * 1_000;
        let now = (sent + 100).max(1_200_000 + seq * 200);
        match d.handle_message(&stamp("a", 1, seq, sent, 0), local(now)) {
            Verdict::Croak(a) => panic!("croaked on a pause: {a}"),
            Verdict::Warning(a) => {
                assert_eq!(a.cause(), AlarmCause::Lag);
                warnings += 1;
            }
            Verdict::Healthy { .. } => {}
        }
    }
    assert!(warnings > 0);
    // A subscriber that stays 1.5 s behind croaks once 500 ms have passed.
    let mut croak = None;
    for seq in 2000..4000u64 {
        let sent = seq * 1_000;
        if let Verdict::Croak(a) =
            d.handle_message(&stamp("a", 1, seq, sent, 0), local(sent + 1_500_000))
        {
            croak = Some((seq, a));
            break;
        }
    }
    let (seq, a) = croak.expect("croaks");
    assert_eq!((seq, a.lagging_for()), (2500, ms(500)));
}

#[test]
fn already_late_at_the_first_message_needs_a_bounded_clock() {
    // The subscriber is 3 s behind from the first message on.
    let late = |cfg: DetectorConfig| {
        let mut d = Detector::new(cfg);
        (0..100).any(|seq| {
            d.handle_message(
                &stamp("a", 1, seq, seq * 1000, 0),
                local(seq * 1000 + 3_000_000),
            )
            .is_croak()
        })
    };
    assert!(
        !late(DetectorConfig::default()),
        "estimation takes it for clock offset"
    );
    assert!(late(
        DetectorConfig::default().clock(ClockSync::Bounded(ms(100)))
    ));
    assert!(late(DetectorConfig::default().clock(ClockSync::Trusted)));
}

#[test]
fn the_window_follows_clock_drift() {
    // The publisher's clock loses 100 ppm: over 2 h the apparent delay
    // grows by 720 ms. One message per 100 ms, limit 100 ms.
    let drifting = |window: Duration| {
        let mut d = Detector::new(
            DetectorConfig::default()
                .max_lag(ms(100))
                .base_window(window),
        );
        (0..72_000u64).find(|&seq| {
            let now = seq * 100_000;
            let drift = -((now / 10_000) as i64);
            d.handle_message(&stamp("a", 1, seq, now, drift), local(now + 200))
                .is_croak()
        })
    };
    assert_eq!(drifting(Duration::from_secs(600)), None);
    // A window that never forgets mistakes the drift for lag after ~1000 s.
    let at = drifting(Duration::from_secs(1_000_000)).expect("croaks");
    assert!((9_990..10_020).contains(&at), "{at}");
}

#[test]
fn publishers_beyond_the_limit_evict_the_least_recent() {
    let mut d = Detector::new(DetectorConfig::default().max_publishers(2));
    d.handle_message(&stamp("a", 1, 0, 0, 0), local(1));
    d.handle_message(&stamp("b", 1, 0, 0, 0), local(2));
    d.handle_message(&stamp("a", 1, 1, 0, 0), local(3));
    d.handle_message(&stamp("c", 1, 0, 0, 0), local(4));
    let mut ids: Vec<_> = d.publishers().map(|(k, _)| k.clone()).collect();
    ids.sort();
    assert_eq!(ids, [Bytes::from("a"), Bytes::from("c")]);
    assert_eq!((d.tracked(), d.evicted()), (2, 1));
}

#[test]
fn a_flood_of_publisher_ids_stays_within_the_limit_and_keeps_no_buffer() {
    use super::super::envelope::{take_stamp, Stamper, WireFormat};
    let mut d = Detector::new(DetectorConfig::default().max_publishers(16));
    let mut buffers = Vec::new();
    for i in 0..1_000u64 {
        // As the zeromq codec hands them out: every frame a slice of one
        // receive buffer (here with a 4 KiB body).
        let mut stamper = Stamper::with_epoch(format!("flood-{i}"), 1).unwrap();
        let mut frames = vec![Bytes::from(vec![b'x'; 4096])];
        stamper.stamp(&mut frames, local(i));
        let buf = Bytes::from(frames.concat());
        let mut rest = buf.clone();
        let mut wire: Vec<Bytes> = frames.iter().map(|f| rest.split_to(f.len())).collect();
        let s = take_stamp(&mut wire, WireFormat::Toolkit).unwrap();
        assert!(!d.handle_message(&s, local(i)).is_croak());
        buffers.push(buf);
    }
    assert_eq!((d.tracked(), d.evicted()), (16, 984));
    for (id, _) in d.publishers() {
        let at = id.as_ptr() as usize;
        assert!(
            buffers.iter().all(|b| {
                let start = b.as_ptr() as usize;
                !(start..start + b.len()).contains(&at)
            }),
            "the table keeps a slice of a receive buffer"
        );
    }
}
