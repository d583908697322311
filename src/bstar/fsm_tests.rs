//! Deterministic tests of the Binary Star FSM: one per row of the Guide's
//! table, one per ignored (state, event) pair, the fatal cases, timing,
//! the restart race and the epoch.

use super::*;

use BstarState as S;

const HB: Duration = Duration::from_millis(100);
const T: Duration = Duration::from_millis(200);

fn cfg() -> FsmConfig {
    FsmConfig::new().heartbeat(HB)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn st(s: BstarState) -> Vec<Bytes> {
    vec![s.as_frame()]
}

fn promoted(epoch: u64) -> Vec<BstarAction> {
    vec![
        BstarAction::Persist(epoch),
        BstarAction::BecameActive { epoch },
        BstarAction::Publish(Bytes::from_static(b"3")),
    ]
}

fn demoted() -> Vec<BstarAction> {
    vec![
        BstarAction::BecamePassive,
        BstarAction::Publish(Bytes::from_static(b"4")),
    ]
}

/// A server in `state` at `t0` (reached through the table itself).
fn in_state(state: BstarState, t0: Instant) -> Fsm {
    match state {
        S::Primary => Fsm::new(Side::Primary, cfg(), 0, t0),
        S::Backup => Fsm::new(Side::Backup, cfg(), 0, t0),
        S::Active => {
            let mut f = Fsm::new(Side::Primary, cfg(), 0, t0);
            f.handle_peer_state(&st(S::Backup), t0);
            assert_eq!(f.state(), S::Active);
            f
        }
        S::Passive => {
            let mut f = Fsm::new(Side::Backup, cfg(), 0, t0);
            f.handle_peer_state(&st(S::Active), t0);
            assert_eq!(f.state(), S::Passive);
            f
        }
    }
}

#[test]
fn frames_are_the_guides_decimal_states() {
    for (s, f) in [
        (S::Primary, "1"),
        (S::Backup, "2"),
        (S::Active, "3"),
        (S::Passive, "4"),
    ] {
        assert_eq!(s.as_frame(), f.as_bytes());
        assert_eq!(BstarState::from_frame(f.as_bytes()), Some(s));
        assert_eq!(s as u8, f.parse::<u8>().unwrap());
        assert_eq!(BstarEvent::from(s) as u8, s as u8);
    }
    assert_eq!(BstarEvent::ClientRequest as u8, 5);
    for bad in [&b"0"[..], b"5", b"", b"03", b" 3", b"3\n", b"\x03"] {
        assert_eq!(BstarState::from_frame(bad), None, "{bad:?}");
    }
}

#[test]
fn config_defaults_and_peer_timeout_floor() {
    let c = FsmConfig::new();
    assert_eq!(c.heartbeat_interval(), Duration::from_secs(1));
    assert_eq!(c.peer_timeout_interval(), Duration::from_secs(2));
    let c = FsmConfig::new().heartbeat(HB).peer_timeout(ms(350));
    assert_eq!(c.peer_timeout_interval(), ms(350));
    let c = FsmConfig::new().heartbeat(HB).peer_timeout(ms(100));
    assert_eq!(
        c.peer_timeout_interval(),
        ms(200),
        "one heartbeat is too short"
    );
}

// ---- PRIMARY ----

#[test]
fn primary_on_peer_backup_becomes_active() {
    let t0 = Instant::now();
    let mut f = in_state(S::Primary, t0);
    assert_eq!(
        f.handle_peer_state(&st(S::Backup), t0 + ms(10)),
        promoted(1)
    );
    assert_eq!(f.state(), S::Active);
    assert_eq!(f.active_epoch(), Some(1));
}

#[test]
fn primary_on_peer_active_becomes_passive() {
    let t0 = Instant::now();
    let mut f = in_state(S::Primary, t0);
    assert_eq!(f.handle_peer_state(&st(S::Active), t0 + ms(10)), demoted());
    assert_eq!(f.state(), S::Passive);
    assert_eq!(f.active_epoch(), None);
}

#[test]
fn primary_rejects_votes_until_a_full_timeout_from_start_then_promotes() {
    let t0 = Instant::now();
    let mut f = in_state(S::Primary, t0);
    for at in [0, 1, 100, 199] {
        assert_eq!(
            f.handle_vote(t0 + ms(at)),
            (Vote::Reject, vec![]),
            "at {at} ms"
        );
        assert_eq!(f.state(), S::Primary);
    }
    assert_eq!(f.handle_vote(t0 + T), (Vote::Accept, promoted(1)));
    assert_eq!(f.state(), S::Active);
    assert_eq!(f.stats().votes_rejected, 4);
    assert_eq!(f.stats().votes_accepted, 1);
}

// ---- BACKUP ----

#[test]
fn backup_on_peer_active_becomes_passive() {
    let t0 = Instant::now();
    let mut f = in_state(S::Backup, t0);
    assert_eq!(f.handle_peer_state(&st(S::Active), t0 + ms(10)), demoted());
    assert_eq!(f.state(), S::Passive);
}

#[test]
fn backup_rejects_every_vote_however_long_it_waits() {
    let t0 = Instant::now();
    let mut f = in_state(S::Backup, t0);
    for at in [0, 199, 200, 10_000, 3_600_000] {
        assert_eq!(f.handle_vote(t0 + ms(at)), (Vote::Reject, vec![]));
    }
    assert_eq!(f.state(), S::Backup);
    assert_eq!(f.stats().votes_rejected, 5);
}

// ---- ACTIVE ----

#[test]
fn active_on_peer_active_is_fatal_dual_actives() {
    let t0 = Instant::now();
    let mut f = in_state(S::Active, t0);
    let actions = f.handle_peer_state(&st(S::Active), t0 + ms(50));
    assert_eq!(actions, vec![BstarAction::Fatal(FatalCause::DualActive)]);
    assert_eq!(f.fatal(), Some(FatalCause::DualActive));
    // Dead: nothing more is accepted or published.
    assert_eq!(f.handle_vote(t0 + ms(60)), (Vote::Reject, vec![]));
    assert!(f.handle_peer_state(&st(S::Passive), t0 + ms(70)).is_empty());
    assert!(f.handle_timeout(t0 + ms(1000)).is_empty());
    assert!(f.observe_epoch(99, t0 + ms(80)).is_empty());
}

#[test]
fn active_accepts_votes_whatever_the_peer_expiry() {
    let t0 = Instant::now();
    let mut f = in_state(S::Active, t0);
    for at in [1, 50, 500, 5000] {
        assert_eq!(f.handle_vote(t0 + ms(at)), (Vote::Accept, vec![]));
    }
    assert_eq!(f.stats().promotions, 1);
}

// ---- PASSIVE ----

#[test]
fn passive_on_peer_primary_becomes_active() {
    let t0 = Instant::now();
    let mut f = in_state(S::Passive, t0);
    assert_eq!(
        f.handle_peer_state(&st(S::Primary), t0 + ms(10)),
        promoted(1)
    );
    assert_eq!(f.state(), S::Active);
}

#[test]
fn passive_on_peer_backup_becomes_active() {
    let t0 = Instant::now();
    // A primary that went passive behind an active backup.
    let mut f = in_state(S::Primary, t0);
    f.handle_peer_state(&st(S::Active), t0);
    assert_eq!(
        f.handle_peer_state(&st(S::Backup), t0 + ms(10)),
        promoted(1)
    );
    assert_eq!(f.state(), S::Active);
}

#[test]
fn passive_on_peer_passive_is_fatal_dual_passives() {
    let t0 = Instant::now();
    let mut f = in_state(S::Passive, t0);
    assert_eq!(
        f.handle_peer_state(&st(S::Passive), t0 + ms(10)),
        vec![BstarAction::Fatal(FatalCause::DualPassive)]
    );
    assert_eq!(f.fatal(), Some(FatalCause::DualPassive));
    assert_eq!(f.state(), S::Passive);
    assert_eq!(f.handle_vote(t0 + ms(10_000)), (Vote::Reject, vec![]));
}

#[test]
fn passive_fails_over_on_a_vote_only_after_the_peer_expired() {
    let t0 = Instant::now();
    let mut f = in_state(S::Passive, t0);
    let last = t0 + ms(500);
    f.handle_peer_state(&st(S::Active), last);
    assert_eq!(f.peer_expiry(), last + T);
    assert_eq!(f.handle_vote(last + T - ms(1)), (Vote::Reject, vec![]));
    assert_eq!(f.state(), S::Passive);
    assert_eq!(f.handle_vote(last + T), (Vote::Accept, promoted(1)));
    assert_eq!(f.state(), S::Active);
}

// ---- the pairs the Guide ignores ----

#[test]
fn every_ignored_pair_changes_nothing() {
    let ignored = [
        (S::Primary, S::Primary),
        (S::Primary, S::Passive),
        (S::Backup, S::Primary),
        (S::Backup, S::Backup),
        (S::Backup, S::Passive),
        (S::Active, S::Primary),
        (S::Active, S::Backup),
        (S::Active, S::Passive),
        (S::Passive, S::Active),
    ];
    for (state, peer) in ignored {
        let t0 = Instant::now();
        let mut f = in_state(state, t0);
        let before = f.stats().clone();
        let actions = f.handle_peer_state(&st(peer), t0 + ms(30));
        assert!(
            actions.is_empty(),
            "{state:?} on peer {peer:?}: {actions:?}"
        );
        assert_eq!(f.state(), state, "{state:?} on peer {peer:?}");
        assert_eq!(f.fatal(), None);
        // It still counts as a sign of life.
        assert_eq!(f.peer_expiry(), t0 + ms(30) + T);
        assert_eq!(f.stats().peer_states, before.peer_states + 1);
        assert_eq!(f.stats().promotions, before.promotions);
    }
}

#[test]
fn the_table_is_complete() {
    // 4 states x 4 peer states: 7 transitions/fatal rows + 9 ignored.
    let t0 = Instant::now();
    let mut changed = 0;
    for state in [S::Primary, S::Backup, S::Active, S::Passive] {
        for peer in [S::Primary, S::Backup, S::Active, S::Passive] {
            let mut f = in_state(state, t0);
            if !f.handle_peer_state(&st(peer), t0 + ms(1)).is_empty() {
                changed += 1;
            }
        }
    }
    assert_eq!(changed, 7);
}

// ---- timing ----

#[test]
fn heartbeats_publish_the_current_state_once_per_interval() {
    let t0 = Instant::now();
    let mut f = in_state(S::Primary, t0);
    assert_eq!(f.poll_timeout(), t0, "the first state goes out at start");
    assert_eq!(
        f.handle_timeout(t0),
        vec![BstarAction::Publish(S::Primary.as_frame())]
    );
    assert_eq!(f.poll_timeout(), t0 + HB);
    assert!(f.handle_timeout(t0 + HB - ms(1)).is_empty());
    assert_eq!(f.handle_timeout(t0 + HB).len(), 1);
    f.handle_peer_state(&st(S::Backup), t0 + HB);
    assert_eq!(
        f.handle_timeout(t0 + HB * 2),
        vec![BstarAction::Publish(S::Active.as_frame())]
    );
    // After a stall, the next heartbeat is one interval on, not a burst.
    assert_eq!(f.handle_timeout(t0 + HB * 10).len(), 1);
    assert_eq!(f.poll_timeout(), t0 + HB * 11);
    assert!(f.handle_timeout(t0 + HB * 10).is_empty());
}

#[test]
fn each_valid_peer_state_moves_the_expiry() {
    let t0 = Instant::now();
    let mut f = in_state(S::Passive, t0);
    for k in 1..5u32 {
        let at = t0 + HB * k;
        f.handle_peer_state(&st(S::Active), at);
        assert_eq!(f.peer_expiry(), at + T);
    }
}

// ---- bad frames ----

#[test]
fn bad_state_frames_are_counted_and_ignored_not_a_sign_of_life() {
    let t0 = Instant::now();
    let mut f = in_state(S::Passive, t0);
    let bad: Vec<Vec<Bytes>> = vec![
        vec![Bytes::from_static(b"5")],
        vec![Bytes::from_static(b"0")],
        vec![Bytes::from_static(b"")],
        vec![Bytes::from_static(b"33")],
        vec![Bytes::from_static(b"3\0")],
        vec![Bytes::from_static(b"\xff\xfe")],
        vec![Bytes::from_static(b"3"), Bytes::from_static(b"3")],
        vec![Bytes::from(vec![b'x'; 100_000])],
    ];
    for (i, frames) in bad.iter().enumerate() {
        assert!(f
            .handle_peer_state(frames, t0 + ms(10 + i as u64))
            .is_empty());
    }
    assert_eq!(f.stats().bad_state_frames, bad.len() as u64);
    assert_eq!(f.state(), S::Passive);
    assert_eq!(
        f.peer_expiry(),
        t0 + T,
        "garbage does not keep the peer alive"
    );
    assert_eq!(f.handle_vote(t0 + T), (Vote::Accept, promoted(1)));
}

// ---- the restart race (zguide #172 / #174) ----

/// The Guide's scenario: the primary died, the backup took over and is
/// active; the primary restarts while a stale client keeps voting to it
/// every 10 ms. The backup's "3" reaches it within the timeout: it must go
/// passive and never be active.
#[test]
fn restarted_primary_never_goes_active_behind_an_active_backup() {
    for phase in [0u64, 10, 50, 90, 140] {
        let t0 = Instant::now();
        let mut p = Fsm::new(Side::Primary, cfg(), 1, t0);
        let mut was_active = false;
        for tick in 0..100u64 {
            let at = t0 + ms(tick * 10);
            // The backup's heartbeat (every 100 ms): the first reaches the new
            // primary at `phase` + 50 ms (connect and subscribe), before
            // the 200 ms timeout.
            if tick * 10 >= phase + 50 && (tick * 10 - phase - 50) % 100 == 0 {
                p.handle_peer_state(&st(S::Active), at);
            }
            let (vote, _) = p.handle_vote(at);
            was_active |= p.state() == S::Active;
            assert!(p.fatal().is_none());
            if p.state() == S::Passive {
                assert_eq!(vote, Vote::Reject);
            }
        }
        assert!(!was_active, "phase {phase}");
        assert_eq!(p.state(), S::Passive);
    }
}

/// The case the Guide's rule misses: the state link takes longer than
/// `peer_timeout - heartbeat` to come up (a slow connect, a SUB backing
/// off). The Guide would accept the stale vote at `start + timeout` and go
/// active next to the active backup (then both abort on "dual actives").
/// Here silence counts from the link's connection.
#[test]
fn a_slow_state_link_does_not_count_as_peer_silence() {
    let t0 = Instant::now();
    let mut p = Fsm::new(Side::Primary, cfg(), 1, t0);
    let link_up = t0 + ms(180);
    let first_state = link_up + HB; // the first heartbeat was lost
    for tick in 0..60u64 {
        let at = t0 + ms(tick * 10);
        if at == link_up {
            assert!(p.handle_peer_state(&[], at).is_empty());
        }
        if at >= first_state && (at - first_state).as_millis().is_multiple_of(100) {
            p.handle_peer_state(&st(S::Active), at);
        }
        let guide_would_accept = at >= t0 + T && p.stats().peer_states == 0;
        let (vote, _) = p.handle_vote(at);
        if guide_would_accept {
            assert_eq!(vote, Vote::Reject, "at {} ms the Guide promotes", tick * 10);
        }
        assert_ne!(p.state(), S::Active, "at {} ms", tick * 10);
    }
    assert_eq!(p.state(), S::Passive);
    assert_eq!(p.stats().link_ups, 1);
}

#[test]
fn link_up_only_matters_before_the_role_is_decided() {
    let t0 = Instant::now();
    let mut p = in_state(S::Primary, t0);
    p.handle_link_up(t0 + ms(150));
    assert_eq!(p.peer_expiry(), t0 + ms(150) + T);
    // Never moves the expiry backwards.
    p.handle_link_up(t0 + ms(10));
    assert_eq!(p.peer_expiry(), t0 + ms(150) + T);
    let mut q = in_state(S::Passive, t0);
    q.handle_link_up(t0 + ms(150));
    assert_eq!(q.peer_expiry(), t0 + T);
    assert_eq!(q.stats().link_ups, 0);
    // The peer alone (link never up) still lets the primary serve.
    let mut alone = in_state(S::Primary, t0);
    assert_eq!(alone.handle_vote(t0 + T).0, Vote::Accept);
}

// ---- epoch and fencing ----

#[test]
fn every_promotion_path_persists_a_higher_epoch_before_becoming_active() {
    let t0 = Instant::now();
    type Path = Box<dyn Fn(&mut Fsm) -> Vec<BstarAction>>;
    let paths: Vec<(&str, Path)> = vec![
        (
            "primary+peer backup",
            Box::new(move |f| f.handle_peer_state(&st(S::Backup), t0)),
        ),
        ("primary+vote", Box::new(move |f| f.handle_vote(t0 + T).1)),
        (
            "passive+peer primary",
            Box::new(move |f| {
                f.handle_peer_state(&st(S::Active), t0);
                f.handle_peer_state(&st(S::Primary), t0)
            }),
        ),
        (
            "passive+peer backup",
            Box::new(move |f| {
                f.handle_peer_state(&st(S::Active), t0);
                f.handle_peer_state(&st(S::Backup), t0)
            }),
        ),
        (
            "passive+vote",
            Box::new(move |f| {
                f.handle_peer_state(&st(S::Active), t0);
                f.handle_vote(t0 + T).1
            }),
        ),
    ];
    for (name, run) in paths {
        let mut f = Fsm::new(Side::Primary, cfg(), 41, t0);
        f.observe_epoch(44, t0);
        let actions = run(&mut f);
        assert_eq!(actions, promoted(45), "{name}");
        assert_eq!(f.epoch(), 45);
        assert_eq!(f.active_epoch(), Some(45));
    }
}

#[test]
fn a_restart_continues_from_the_persisted_epoch() {
    let t0 = Instant::now();
    let mut f = Fsm::new(Side::Backup, cfg(), 7, t0);
    assert_eq!(f.epoch(), 7);
    f.observe_epoch(3, t0);
    assert_eq!(f.epoch(), 7, "an older epoch never lowers it");
    f.handle_peer_state(&st(S::Active), t0);
    assert_eq!(
        f.handle_peer_state(&st(S::Primary), t0 + ms(5)),
        promoted(8)
    );
}

#[test]
fn an_active_server_is_fenced_by_a_newer_epoch_only() {
    let t0 = Instant::now();
    let mut f = in_state(S::Active, t0);
    assert_eq!(f.active_epoch(), Some(1));
    assert!(f.observe_epoch(0, t0).is_empty());
    assert!(f.observe_epoch(1, t0).is_empty());
    assert_eq!(
        f.observe_epoch(2, t0),
        vec![
            BstarAction::Persist(2),
            BstarAction::Fatal(FatalCause::Fenced)
        ]
    );
    assert_eq!(f.fatal(), Some(FatalCause::Fenced));
    assert_eq!(f.epoch(), 2);
    // A passive one learns it and persists it (a restart starts above it).
    let mut p = in_state(S::Passive, t0);
    assert_eq!(p.observe_epoch(9, t0), vec![BstarAction::Persist(9)]);
    assert!(p.observe_epoch(9, t0).is_empty());
    assert!(p.observe_epoch(4, t0).is_empty());
    assert_eq!(p.epoch(), 9);
    assert_eq!(p.stats().epochs_observed, 3);
}
