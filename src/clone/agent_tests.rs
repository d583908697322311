//! Deterministic tests of the client state machine, in virtual time.

use super::*;
use crate::clone::inflight::InFlight;

const TTL5: Duration = Duration::from_secs(5);

struct H {
    a: Agent,
    now: Instant,
}

impl H {
    fn new(subtree: &str, servers: usize) -> Self {
        let now = Instant::now();
        let mut a = Agent::new(AgentConfig::default(), Bytes::from(subtree.to_owned()), now);
        for _ in 0..servers {
            a.handle_server_added(now);
        }
        Self { a, now }
    }
    fn actions(&mut self) -> Vec<AgentAction> {
        std::iter::from_fn(|| self.a.poll_action()).collect()
    }
    fn changes(&mut self) -> Vec<Change> {
        std::iter::from_fn(|| self.a.poll_change()).collect()
    }
    fn opened(&mut self) -> Vec<(usize, u64)> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                AgentAction::Open { server, attempt } => Some((server, attempt)),
                AgentAction::Publish(_) => None,
            })
            .collect()
    }
    fn kvsync(&mut self, key: &str, value: &str, seq: u64) {
        let att = self.a.attempt();
        self.a
            .handle_snapshot(att, SnapshotReply::Kvsync(kv(key, value, seq)), self.now);
    }
    fn kthxbai(&mut self, seq: u64) {
        let att = self.a.attempt();
        let end = SnapshotReply::Kthxbai {
            seq,
            subtree: Bytes::new(),
            instance: None,
            epoch: None,
        };
        self.a.handle_snapshot(att, end, self.now);
    }
    fn kvpub(&mut self, key: &str, value: &str, seq: u64) {
        let att = self.a.attempt();
        self.a
            .handle_update(att, Update::Kvpub(kv(key, value, seq)), self.now);
    }
    fn hugz(&mut self, seq: u64) {
        let att = self.a.attempt();
        self.a.handle_update(
            att,
            Update::Hugz {
                seq,
                instance: None,
                epoch: None,
            },
            self.now,
        );
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.a.poll_timeout().is_some_and(|t| t <= self.now) {
            self.a.handle_timeout(self.now);
        }
    }
    fn sync(&mut self, entries: &[(&str, &str, u64)], seq: u64) {
        for (k, v, s) in entries {
            self.kvsync(k, v, *s);
        }
        self.kthxbai(seq);
    }
    fn map(&self) -> Vec<(String, String)> {
        self.a
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect()
    }
}

fn kv(key: &str, value: &str, seq: u64) -> KvMsg {
    let mut m = KvMsg::new(key.to_owned(), value.to_owned()).unwrap();
    m.set_seq(seq);
    m
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn first_sync_reports_every_key_then_goes_live() {
    let mut h = H::new("", 1);
    assert_eq!(h.opened(), [(0, 1)]);
    assert_eq!(h.a.phase(), Phase::Syncing { server: 0 });
    h.sync(&[("a", "1", 1), ("b", "2", 2)], 2);
    assert_eq!(h.a.phase(), Phase::Active { server: 0, seq: 2 });
    let ch = h.changes();
    assert_eq!(ch.len(), 2);
    assert!(ch.iter().all(|c| c.cause() == ChangeCause::Sync));
    h.kvpub("a", "9", 3);
    h.kvpub("b", "", 4);
    assert_eq!(h.map(), pairs(&[("a", "9")]));
    let ch = h.changes();
    assert_eq!(ch[0].value().unwrap(), "9");
    assert_eq!(ch[1].value(), None);
    assert_eq!(ch[1].seq(), Some(4));
}

#[test]
fn updates_during_the_snapshot_are_buffered_and_those_covered_are_dropped() {
    let mut h = H::new("", 1);
    h.opened();
    h.kvsync("a", "1", 1);
    h.kvpub("a", "2", 2); // also in the snapshot (seq <= 3)
    h.kvsync("b", "x", 3);
    h.kvpub("b", "x", 3);
    h.kvpub("c", "new", 4); // after the snapshot
    assert!(h.a.get(b"c").is_none(), "nothing applied while syncing");
    h.kthxbai(3);
    assert_eq!(h.map(), pairs(&[("a", "1"), ("b", "x"), ("c", "new")]));
    assert_eq!(h.a.stats().stale, 2);
    assert_eq!(h.a.phase(), Phase::Active { server: 0, seq: 4 });
    h.kvpub("c", "new", 4);
    assert_eq!(h.a.stats().stale, 3, "duplicates are discarded");
}

#[test]
fn a_gap_without_subtree_triggers_a_resync_that_replaces_the_map() {
    let mut h = H::new("", 1);
    h.opened();
    h.sync(&[("keep", "1", 1), ("gone", "1", 2)], 2);
    h.changes();
    h.kvpub("x", "1", 5); // 3 and 4 were lost
    assert_eq!(h.a.stats().gaps, 1);
    assert_eq!(h.opened(), [(0, 2)], "resync on the same server");
    // Old state stays readable until the new snapshot completes.
    assert_eq!(h.a.get(b"gone").unwrap(), "1");
    h.sync(&[("keep", "1", 1), ("x", "1", 5)], 5);
    assert_eq!(h.map(), pairs(&[("keep", "1"), ("x", "1")]));
    let ch = h.changes();
    assert_eq!(ch.len(), 2, "only the differences: {ch:?}");
    assert!(ch.iter().any(|c| c.key() == "gone" && c.value().is_none()));
    assert!(ch.iter().any(|c| c.key() == "x" && c.value().is_some()));
}

#[test]
fn with_a_subtree_sequence_jumps_are_normal() {
    let mut h = H::new("/a/", 1);
    h.opened();
    h.sync(&[("/a/1", "1", 1)], 10);
    h.kvpub("/a/2", "2", 17);
    h.hugz(30);
    assert_eq!(h.a.stats().gaps, 0);
    assert_eq!(h.map(), pairs(&[("/a/1", "1"), ("/a/2", "2")]));
}

#[test]
fn heartbeats_expose_missed_updates_and_server_restarts() {
    let mut h = H::new("", 1);
    h.opened();
    h.sync(&[], 4);
    h.hugz(4);
    assert!(h.opened().is_empty());
    h.hugz(6);
    assert_eq!(h.a.stats().gaps, 1);
    assert_eq!(h.opened().len(), 1);

    let mut h = H::new("/s/", 1);
    h.opened();
    h.sync(&[("/s/k", "v", 40)], 50);
    h.hugz(50);
    h.hugz(3); // the server restarted and lost its state
    assert_eq!(h.a.stats().restarts, 1);
    assert_eq!(h.opened().len(), 1);
}

#[test]
fn a_chp_strict_server_sending_hugz_zero_is_not_a_restart() {
    let mut h = H::new("/s/", 1);
    h.opened();
    h.sync(&[], 50);
    h.hugz(0);
    h.hugz(0);
    assert_eq!(h.a.stats().restarts, 0);
    assert!(h.opened().is_empty());
}

#[test]
fn silence_fails_over_and_servers_are_retried_forever_with_backoff() {
    let mut h = H::new("", 2);
    assert_eq!(h.opened(), [(0, 1)]);
    // Neither server ever answers: the client keeps asking both, forever.
    let mut asked = vec![0usize; 2];
    for _ in 0..200 {
        h.advance(Duration::from_millis(500));
        for (server, _) in h.opened() {
            asked[server] += 1;
        }
    }
    assert!(asked[0] >= 5 && asked[1] >= 5, "asked {asked:?}");
    assert!(h.a.stats().failovers >= 10);
    // Server 1 finally answers: synced, failures reset.
    while h.a.phase() != (Phase::Syncing { server: 1 }) {
        h.advance(Duration::from_millis(500));
        h.opened();
    }
    h.sync(&[("k", "v", 1)], 1);
    assert_eq!(h.a.phase(), Phase::Active { server: 1, seq: 1 });
    h.advance(TTL5 - Duration::from_millis(1));
    h.hugz(1);
    h.advance(TTL5 - Duration::from_millis(1));
    assert_eq!(
        h.a.phase(),
        Phase::Active { server: 1, seq: 1 },
        "hugz keep it alive"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.opened(),
        [(0, h.a.attempt())],
        "first failover is immediate"
    );
}

#[test]
fn messages_from_a_stale_link_are_ignored() {
    let mut h = H::new("", 2);
    h.opened();
    h.advance(TTL5);
    assert_eq!(h.opened(), [(1, 2)]);
    h.a.handle_snapshot(1, SnapshotReply::Kvsync(kv("old", "x", 1)), h.now);
    h.a.handle_snapshot(
        1,
        SnapshotReply::Kthxbai {
            seq: 1,
            subtree: Bytes::new(),
            instance: None,
            epoch: None,
        },
        h.now,
    );
    assert_eq!(h.a.phase(), Phase::Syncing { server: 1 });
    h.sync(&[], 0);
    assert!(h.a.is_empty());
}

#[test]
fn too_many_buffered_updates_restart_the_sync() {
    let now = Instant::now();
    let config = AgentConfig::new().max_buffered(3);
    let mut a = Agent::new(config, Bytes::new(), now);
    a.handle_server_added(now);
    for seq in 1..=4 {
        a.handle_update(1, Update::Kvpub(kv("k", "v", seq)), now);
    }
    assert_eq!(a.stats().buffer_overflows, 1);
    assert_eq!(a.attempt(), 2);
}

#[test]
fn too_many_buffered_bytes_restart_the_sync() {
    let now = Instant::now();
    // Each update is 1 + 10 bytes: two fit, the third does not.
    let config = AgentConfig::new().max_buffered_bytes(25);
    let mut a = Agent::new(config, Bytes::new(), now);
    a.handle_server_added(now);
    for seq in 1..=2 {
        a.handle_update(1, Update::Kvpub(kv("k", "0123456789", seq)), now);
    }
    assert_eq!(a.stats().buffer_overflows, 0);
    a.handle_update(1, Update::Kvpub(kv("k", "0123456789", 3)), now);
    assert_eq!(a.stats().buffer_overflows, 1);
    assert_eq!(a.attempt(), 2);
}

#[test]
fn oversized_and_malformed_messages_are_counted_for_the_current_attempt_only() {
    let mut h = H::new("", 1);
    h.opened();
    let att = h.a.attempt();
    h.a.handle_oversized(att, 1 << 30, h.now);
    h.a.handle_oversized(att + 7, 1 << 30, h.now);
    h.a.handle_malformed(att, &KvMsgError::EmptyKey, h.now);
    assert_eq!((h.a.stats().oversized, h.a.stats().malformed), (1, 1));
}

#[test]
fn set_publishes_a_kvset_with_uuid_and_ttl_and_applies_in_subtree_only() {
    let mut h = H::new("/a/", 1);
    h.opened();
    h.sync(&[], 0);
    let ttl = Some(Duration::from_millis(1500));
    let set = |k: &str, v: &str, ttl, u| {
        kvset(Bytes::from(k.to_owned()), Bytes::from(v.to_owned()), ttl, u)
    };
    h.a.handle_set(set("/a/k", "v", ttl, [3; 16]).unwrap(), h.now);
    h.a.handle_set(set("/b/k", "w", None, [4; 16]).unwrap(), h.now);
    let sent: Vec<KvMsg> = h
        .actions()
        .into_iter()
        .filter_map(|a| match a {
            AgentAction::Publish(m) => Some(m),
            AgentAction::Open { .. } => None,
        })
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].uuid(), Some(&[3; 16]));
    assert_eq!(sent[0].props().get(TTL), Some("2"));
    assert_eq!(sent[1].props().get(TTL), None);
    assert_eq!(h.map(), pairs(&[("/a/k", "v")]));
    assert_eq!(h.changes()[0].cause(), ChangeCause::Local);
    // The server's echo of the same value is not a second change.
    h.kvpub("/a/k", "v", 1);
    assert!(h.changes().is_empty());
    assert!(matches!(
        set("HUGZ", "x", None, [0; 16]),
        Err(KvMsgError::ReservedKey(_))
    ));
    assert!(set("", "x", None, [0; 16]).is_err());
}

#[test]
fn a_new_server_instance_in_the_heartbeat_means_a_restart() {
    let mut h = H::new("/s/", 1);
    h.opened();
    let att = h.a.attempt();
    let end = SnapshotReply::Kthxbai {
        seq: 6,
        subtree: Bytes::new(),
        instance: Some(1),
        epoch: None,
    };
    h.a.handle_snapshot(att, end, h.now);
    let same = Update::Hugz {
        seq: 9,
        instance: Some(1),
        epoch: None,
    };
    h.a.handle_update(att, same, h.now);
    assert!(h.opened().is_empty());
    // Same sequence region, different instance: it restarted and was fed
    // exactly as many updates as before, which the sequence cannot show.
    let other = Update::Hugz {
        seq: 9,
        instance: Some(2),
        epoch: None,
    };
    h.a.handle_update(att, other, h.now);
    assert_eq!(h.a.stats().restarts, 1);
    assert_eq!(h.opened().len(), 1);
}

// --- acknowledgements, re-sending and epoch fencing ---

fn set_msg(key: &str, value: &str, u: u8) -> KvMsg {
    kvset(
        Bytes::from(key.to_owned()),
        Bytes::from(value.to_owned()),
        None,
        [u; 16],
    )
    .unwrap()
}

fn echo(key: &str, value: &str, seq: u64, u: Option<u8>, epoch: Option<u64>) -> KvMsg {
    let mut m = kv(key, value, seq);
    m.set_uuid(u.map(|u| [u; 16]));
    if let Some(e) = epoch {
        m.props_mut()
            .set(crate::clone::EPOCH, &e.to_string())
            .unwrap();
    }
    m
}

impl H {
    fn set(&mut self, key: &str, value: &str, u: u8) {
        self.a.handle_set(set_msg(key, value, u), self.now);
    }
    fn echo(&mut self, key: &str, value: &str, seq: u64, u: Option<u8>, epoch: Option<u64>) {
        let att = self.a.attempt();
        let m = echo(key, value, seq, u, epoch);
        self.a.handle_update(att, Update::Kvpub(m), self.now);
    }
    fn snap(&mut self, entries: Vec<KvMsg>, seq: u64, epoch: Option<u64>) {
        let att = self.a.attempt();
        for m in entries {
            self.a
                .handle_snapshot(att, SnapshotReply::Kvsync(m), self.now);
        }
        let end = SnapshotReply::Kthxbai {
            seq,
            subtree: Bytes::new(),
            instance: None,
            epoch,
        };
        self.a.handle_snapshot(att, end, self.now);
    }
    fn hugz_epoch(&mut self, seq: u64, epoch: Option<u64>) {
        let att = self.a.attempt();
        let h = Update::Hugz {
            seq,
            instance: None,
            epoch,
        };
        self.a.handle_update(att, h, self.now);
    }
    fn acks(&mut self) -> Vec<Uuid> {
        std::iter::from_fn(|| self.a.poll_ack()).collect()
    }
    /// The UUIDs published since the last call (and drops other actions).
    fn published_uuids(&mut self) -> Vec<u8> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                AgentAction::Publish(m) => m.uuid().map(|u| u[0]),
                AgentAction::Open { .. } => None,
            })
            .collect()
    }
}

#[test]
fn an_update_is_acknowledged_when_its_uuid_comes_back_on_a_kvpub() {
    let mut h = H::new("/a/", 1);
    h.opened();
    h.sync(&[], 0);
    h.set("/a/k", "v", 1);
    h.set("/a/j", "v", 2);
    assert_eq!(h.a.stats().in_flight, 2);
    h.echo("/a/k", "v", 1, Some(1), None);
    assert_eq!(h.acks(), [[1; 16]]);
    h.echo("/a/k", "v", 2, Some(9), None); // someone else's: not ours
    assert!(h.acks().is_empty());
    assert_eq!((h.a.stats().acked, h.a.stats().in_flight), (1, 1));
    assert_eq!(h.a.in_flight().0, 1);
}

#[test]
fn an_acknowledged_write_supersedes_the_clients_older_writes_of_the_key() {
    let mut h = H::new("", 2);
    h.opened();
    h.sync(&[], 0);
    h.set("k", "1", 1);
    h.set("j", "1", 2);
    h.set("k", "2", 3);
    h.published_uuids();
    h.echo("k", "2", 1, Some(3), None);
    assert_eq!(
        h.acks(),
        [[3; 16]],
        "the superseded one is not acknowledged"
    );
    assert_eq!(h.a.stats().in_flight_superseded, 1);
    // After a failover only j is re-sent: k=1 must never come back.
    h.advance(TTL5);
    h.opened();
    h.sync(&[], 1);
    assert_eq!(h.published_uuids(), [2]);
}

#[test]
fn keys_outside_the_subtree_are_published_but_not_tracked() {
    let mut h = H::new("/a/", 1);
    h.opened();
    h.sync(&[], 0);
    h.set("/b/k", "v", 1);
    assert_eq!(h.published_uuids(), [1]);
    assert_eq!((h.a.stats().untracked, h.a.stats().in_flight), (1, 0));
    let mut no_uuid = KvMsg::new("/a/x", "v").unwrap();
    no_uuid.set_uuid(None);
    h.a.handle_set(no_uuid, h.now);
    assert_eq!((h.a.stats().untracked, h.a.stats().in_flight), (2, 0));
}

#[test]
fn unacknowledged_updates_are_resent_after_a_failover_with_their_uuids() {
    let mut h = H::new("", 2);
    h.opened();
    h.sync(&[], 0);
    for u in 1..=3 {
        h.set(&format!("k{u}"), "v", u);
    }
    h.echo("k1", "v", 1, Some(1), None);
    assert_eq!(h.acks(), [[1; 16]]);
    assert_eq!(h.published_uuids(), [1, 2, 3]);
    // The active dies; the backup's snapshot already has update 2.
    h.advance(TTL5);
    assert_eq!(h.opened(), [(1, 2)]);
    h.snap(
        vec![
            echo("k1", "v", 1, Some(1), None),
            echo("k2", "v", 2, Some(2), None),
        ],
        2,
        None,
    );
    assert_eq!(h.acks(), [[2; 16]], "acknowledged by the snapshot");
    assert_eq!(h.published_uuids(), [3], "only the unacknowledged one");
    assert_eq!((h.a.stats().resent, h.a.stats().acked), (1, 2));
    // Still in flight until acknowledged: re-sent after every sync.
    h.kvpub("x", "1", 5); // a gap: resync
    h.opened();
    h.sync(&[], 5);
    assert_eq!(h.published_uuids(), [3]);
    h.echo("k3", "v", 6, Some(3), None);
    assert_eq!(h.a.stats().in_flight, 0);
}

#[test]
fn updates_set_before_the_first_sync_are_resent_after_it() {
    // A KVSET sent before the PUB-SUB subscription completes is lost
    // (slow joiner); re-sending after the sync repairs it.
    let now = Instant::now();
    let mut a = Agent::new(AgentConfig::default(), Bytes::new(), now);
    a.handle_set(set_msg("k", "v", 1), now);
    a.handle_server_added(now);
    let att = a.attempt();
    let end = SnapshotReply::Kthxbai {
        seq: 0,
        subtree: Bytes::new(),
        instance: None,
        epoch: None,
    };
    a.handle_snapshot(att, end, now);
    let publishes = std::iter::from_fn(|| a.poll_action())
        .filter(|x| matches!(x, AgentAction::Publish(_)))
        .count();
    assert_eq!(publishes, 2, "sent, then re-sent");
}

#[test]
fn a_server_presenting_a_lower_epoch_is_abandoned() {
    let mut h = H::new("", 2);
    h.opened();
    h.snap(Vec::new(), 0, Some(3));
    assert_eq!(h.a.epoch(), Some(3));
    h.hugz_epoch(0, None);
    h.hugz_epoch(0, Some(3));
    assert!(h.opened().is_empty(), "same epoch, or none: fine");
    h.hugz_epoch(0, Some(2));
    assert_eq!(h.opened(), [(1, 2)], "fenced like a silent server");
    assert_eq!((h.a.stats().fenced, h.a.stats().failovers), (1, 1));
    // While syncing, heartbeats are not read (a passive sends its own,
    // older epoch until a vote promotes it).
    h.hugz_epoch(0, Some(1));
    assert!(h.opened().is_empty());
    // A snapshot from an older epoch is refused, with what it acknowledged.
    h.set("k", "v", 7);
    h.published_uuids();
    h.snap(vec![echo("k", "v", 1, Some(7), None)], 1, Some(2));
    assert_eq!(h.a.phase(), Phase::Backoff, "a whole round failed");
    h.advance(Duration::from_millis(250));
    assert_eq!(h.opened(), [(0, 3)]);
    assert!(h.acks().is_empty());
    assert_eq!(h.a.stats().fenced, 2);
    assert_eq!(h.a.stats().syncs, 1, "the refused snapshot is not a sync");
    // A newer epoch is accepted and becomes the bar.
    h.snap(vec![echo("k", "v", 1, Some(7), None)], 1, Some(4));
    assert_eq!(h.acks(), [[7; 16]]);
    assert_eq!(h.a.epoch(), Some(4));
    h.echo("j", "v", 2, Some(8), Some(3));
    assert_eq!(h.a.stats().fenced, 3, "a KVPUB presents it too");
    assert_eq!(h.opened().len(), 1);
}

#[test]
fn servers_without_an_epoch_are_never_fenced() {
    let mut h = H::new("", 1);
    h.opened();
    h.sync(&[], 0);
    h.hugz(0);
    h.kvpub("k", "v", 1);
    assert!(h.opened().is_empty());
    assert_eq!((h.a.stats().fenced, h.a.epoch()), (0, None));
}

#[test]
fn in_flight_bounds_evict_the_oldest_and_count() {
    let now = Instant::now();
    let config = AgentConfig::new().max_in_flight(2);
    let mut a = Agent::new(config, Bytes::new(), now);
    for u in 1..=3 {
        a.handle_set(set_msg("k", "v", u), now);
    }
    assert_eq!((a.stats().in_flight, a.stats().in_flight_evicted), (2, 1));
    let one = InFlight::cost(&set_msg("k", "v", 1));
    let config = AgentConfig::new().max_in_flight_bytes(one);
    let mut a = Agent::new(config, Bytes::new(), now);
    a.handle_set(set_msg("k", "v", 1), now);
    a.handle_set(set_msg("k", "v", 2), now);
    assert_eq!((a.stats().in_flight, a.stats().in_flight_evicted), (1, 1));
    assert_eq!(a.in_flight(), (1, one));
}

#[test]
fn acks_are_not_queued_while_nobody_listens_but_still_clear_the_in_flight_list() {
    let mut h = H::new("", 1);
    h.opened();
    h.sync(&[], 0);
    h.a.set_report_acks(false);
    h.set("k", "v", 1);
    h.echo("k", "v", 1, Some(1), None);
    assert!(h.acks().is_empty());
    assert_eq!((h.a.stats().acked, h.a.stats().in_flight), (1, 0));
}

#[test]
fn of_several_unacknowledged_writes_of_a_key_only_the_newest_is_resent() {
    let mut h = H::new("", 2);
    h.opened();
    h.sync(&[], 0);
    h.set("k", "1", 1);
    h.set("j", "1", 2);
    h.set("k", "2", 3);
    h.published_uuids();
    h.advance(TTL5);
    h.opened();
    h.sync(&[], 0);
    assert_eq!(h.published_uuids(), [2, 3], "k=1 could undo k=2");
    assert_eq!(
        (
            h.a.stats().resent,
            h.a.stats().in_flight_superseded,
            h.a.stats().in_flight
        ),
        (2, 1, 2)
    );
}

#[test]
fn a_snapshot_without_the_key_acknowledges_an_in_flight_delete() {
    // A delete leaves no entry to carry its UUID; a server that already
    // applied it drops the re-sent copy as a duplicate, so without this it
    // would stay in flight (and be re-sent) forever.
    let mut h = H::new("", 2);
    h.opened();
    h.sync(&[("k", "v", 1), ("j", "v", 2)], 2);
    h.set("k", "", 1);
    h.set("j", "", 2);
    h.published_uuids();
    h.advance(TTL5);
    h.opened();
    h.snap(vec![echo("j", "v", 2, None, None)], 3, None);
    assert_eq!(h.acks(), [[1; 16]]);
    assert_eq!(h.published_uuids(), [2], "j is still there: re-sent");
}
