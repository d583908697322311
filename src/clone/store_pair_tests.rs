//! Deterministic tests of the store's server-pair rules (Guide ch. 5,
//! `clonesrv6`, with its bugs fixed): the passive role, the pending list,
//! UUID de-duplication, the epoch and promotion.

use super::*;
use crate::clone::SnapshotReply;

const U: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A client KVSET for `key` with UUID `[u; 16]` (`None`: no UUID).
fn kvset(key: &str, value: &str, u: Option<u8>) -> KvMsg {
    let mut m = KvMsg::new(key.to_owned(), value.to_owned()).unwrap();
    m.set_uuid(u.map(|u| [u; 16]));
    m
}

fn with_ttl(mut m: KvMsg, ttl: u64) -> KvMsg {
    m.props_mut().set(TTL, &ttl.to_string()).unwrap();
    m
}

fn with_epoch(mut m: KvMsg, epoch: u64) -> KvMsg {
    m.props_mut().set(EPOCH, &epoch.to_string()).unwrap();
    m
}

/// The active's KVPUB of `m` at `seq`, as frames.
fn kvpub(mut m: KvMsg, seq: u64) -> [Bytes; 5] {
    m.set_seq(seq);
    m.encode()
}

fn hugz(seq: u64, epoch: Option<u64>) -> [Bytes; 5] {
    Update::encode_hugz(seq, None, epoch)
}

fn published(actions: &[StoreAction]) -> Vec<KvMsg> {
    actions
        .iter()
        .filter_map(|a| match a {
            StoreAction::Publish(f) if f[0] != "HUGZ" => Some(KvMsg::decode(f).unwrap()),
            _ => None,
        })
        .collect()
}

fn fetches(actions: &[StoreAction]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, StoreAction::FetchSnapshot))
        .count()
}

fn value(s: &Store, key: &str) -> Option<String> {
    s.get(key.as_bytes())
        .map(|e| String::from_utf8_lossy(e.value()).into_owned())
}

/// A passive store synced from a snapshot of `entries` at `seq`.
fn synced(config: StoreConfig, entries: Vec<KvMsg>, seq: u64, now: Instant) -> Store {
    let mut s = Store::new_passive(config, now);
    assert_eq!(fetches(&s.handle_peer_update(&hugz(seq, None), now)), 1);
    assert!(s.handle_peer_snapshot(entries, seq, None, now).is_empty());
    assert!(s.is_synced());
    s
}

fn quiet() -> StoreConfig {
    StoreConfig::new().hugz_interval(secs(3600))
}

#[test]
fn a_passive_fetches_the_snapshot_on_the_first_peer_message_and_buffers_live_updates() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet(), t0);
    assert_eq!(s.role(), Role::Passive);
    assert!(!s.is_synced());
    let first = s.handle_peer_update(&kvpub(kvset("/b", "2", Some(2)), 5), t0);
    assert_eq!(fetches(&first), 1);
    // No second request while one is under way; live updates are buffered.
    assert!(s
        .handle_peer_update(&kvpub(kvset("/c", "3", Some(3)), 6), t0)
        .is_empty());
    assert!(s.handle_peer_update(&hugz(6, None), t0).is_empty());
    assert!(s.is_empty());
    let mut a = kvset("/a", "1", Some(1));
    a.set_seq(4);
    let mut b = kvset("/b", "2", Some(2));
    b.set_seq(5);
    assert!(s.handle_peer_snapshot(vec![a, b], 5, None, t0).is_empty());
    assert_eq!(s.sequence(), 6, "the buffered update after the snapshot");
    assert_eq!(value(&s, "/c").as_deref(), Some("3"));
    assert_eq!(s.get(b"/a").unwrap().seq(), 4);
    let st = s.stats();
    assert_eq!(
        (st.peer_snapshots, st.peer_stale, st.peer_updates),
        (1, 1, 2)
    );
    // Synced now: the next update applies directly.
    assert!(s
        .handle_peer_update(&kvpub(kvset("/d", "4", None), 7), t0)
        .is_empty());
    assert_eq!(s.sequence(), 7);
    assert_eq!(s.role(), Role::Passive);
}

#[test]
fn a_failed_fetch_is_retried_by_the_timer_and_a_stray_snapshot_ignored() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet().snapshot_retry(secs(2)), t0);
    assert!(s.handle_peer_snapshot(Vec::new(), 9, None, t0).is_empty());
    assert!(!s.is_synced(), "not asked for");
    assert_eq!(fetches(&s.handle_peer_update(&hugz(3, None), t0)), 1);
    assert!(s.handle_peer_snapshot_failed(t0).is_empty());
    assert_eq!(s.poll_timeout(), t0 + secs(2));
    assert!(
        s.handle_peer_update(&hugz(3, None), t0 + U).is_empty(),
        "waits"
    );
    assert_eq!(fetches(&s.handle_timeout(t0 + U)), 0);
    assert_eq!(fetches(&s.handle_timeout(t0 + secs(2))), 1);
    assert_eq!(
        s.poll_timeout(),
        t0 + secs(3600),
        "no retry while in flight"
    );
    s.handle_peer_snapshot(Vec::new(), 3, None, t0 + secs(2));
    assert!(s.is_synced());
    assert_eq!(s.stats().peer_snapshot_failures, 1);
}

#[test]
fn the_pending_list_is_cancelled_by_uuid_in_both_directions() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    // The client's copy first, then the active's: cancelled.
    assert!(s.handle_kvset(kvset("/k", "1", Some(1)), t0).is_empty());
    assert_eq!(s.pending_load().0, 1);
    s.handle_peer_update(&kvpub(kvset("/k", "1", Some(1)), 1), t0);
    assert_eq!(s.pending_load().0, 0);
    // The active's copy first, then the client's: dropped, never pending.
    s.handle_peer_update(&kvpub(kvset("/j", "2", Some(2)), 2), t0);
    assert!(s.handle_kvset(kvset("/j", "2", Some(2)), t0).is_empty());
    assert_eq!(s.pending_load().0, 0);
    let st = s.stats().clone();
    assert_eq!(
        (st.pending_added, st.pending_cancelled, st.duplicates),
        (1, 1, 1)
    );
    // Nothing is re-applied at promotion.
    assert!(published(&s.promote(1, t0)).is_empty());
    assert_eq!(s.sequence(), 2);
    assert_eq!(s.stats().pending_applied, 0);
}

#[test]
fn an_active_copy_whose_client_copy_never_arrives_is_not_reapplied_at_promotion() {
    // The Guide's "flip it around" puts the active's copy on the pending
    // list; when the client's copy is lost it is re-published at failover
    // with a new sequence and can overwrite a newer value.
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_peer_update(&kvpub(kvset("/k", "old", Some(7)), 1), t0);
    s.handle_peer_update(&kvpub(kvset("/k", "new", Some(8)), 2), t0);
    // The newer write's client copy arrives; the older's never does.
    s.handle_kvset(kvset("/k", "new", Some(8)), t0);
    let out = s.promote(1, t0);
    assert!(published(&out).is_empty(), "{out:?}");
    assert_eq!(value(&s, "/k").as_deref(), Some("new"));
    assert_eq!(s.sequence(), 2);
}

#[test]
fn an_older_pending_value_never_overwrites_a_newer_applied_one() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    // A client's update reaches the passive, never the active (dropped) ...
    s.handle_kvset(kvset("/k", "older", Some(1)), t0);
    s.handle_kvset(kvset("/gone", "v", Some(2)), t0);
    // ... then the same client's later writes of both keys, republished by
    // the active (their own client copies to the passive lost, or late).
    s.handle_peer_update(&kvpub(kvset("/k", "newer", Some(3)), 1), t0);
    s.handle_kvset(kvset("/gone", "", Some(4)), t0);
    s.handle_peer_update(&kvpub(kvset("/gone", "", Some(4)), 2), t0);
    // A pending update queued after the active's write (and its client
    // copy) is newer: kept.
    s.handle_kvset(kvset("/k", "newer", Some(3)), t0);
    s.handle_kvset(kvset("/k", "newest", Some(5)), t0);
    let out = published(&s.promote(1, t0));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].body().as_ref(), out[0].seq()), (&b"newest"[..], 3));
    assert_eq!(value(&s, "/gone"), None, "a delete is not undone");
    let st = s.stats();
    assert_eq!((st.superseded, st.pending_applied), (2, 1));
}

#[test]
fn a_pending_update_sent_after_a_republished_one_survives_the_actives_death() {
    // One client writes /k twice; both client copies reach the passive
    // before the active's KVPUB of the first. The active applies (and the
    // client sees acknowledged) the second, then dies before the passive
    // receives it: promotion must apply it.
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_kvset(kvset("/k", "1", Some(1)), t0);
    s.handle_kvset(kvset("/k", "2", Some(2)), t0);
    s.handle_peer_update(&kvpub(kvset("/k", "1", Some(1)), 1), t0);
    assert_eq!(s.pending_load().0, 1);
    // The active's own expiry of a key supersedes nothing: a pending write
    // of it was not applied before the expiry.
    s.handle_kvset(kvset("/e", "again", Some(3)), t0);
    s.handle_peer_update(&kvpub(kvset("/e", "", None), 2), t0);
    let out = published(&s.promote(1, t0));
    let got: Vec<_> = out.iter().map(|m| m.body().clone()).collect();
    assert_eq!(got, ["2", "again"]);
    assert_eq!(value(&s, "/k").as_deref(), Some("2"));
    assert_eq!(s.stats().superseded, 0);
}

#[test]
fn a_late_client_copy_of_an_older_write_is_dropped_within_the_reorder_window() {
    // The active never got write 1 of /k; it applied the same client's
    // write 2, which the passive learns from it before either client copy
    // arrives. The late copy of 1 is older than 2: dropped, before and
    // after promotion; the copy of 2 is a duplicate.
    let t0 = Instant::now();
    let mut s = synced(quiet().reorder_window(secs(5)), Vec::new(), 0, t0);
    s.handle_peer_update(&kvpub(kvset("/k", "2", Some(2)), 1), t0);
    s.handle_peer_update(&kvpub(kvset("/j", "2", Some(4)), 2), t0);
    assert!(s.handle_kvset(kvset("/k", "1", Some(1)), t0).is_empty());
    assert_eq!(s.pending_load().0, 0);
    assert!(published(&s.promote(1, t0)).is_empty());
    assert!(s.handle_kvset(kvset("/j", "1", Some(3)), t0 + U).is_empty());
    assert!(s.handle_kvset(kvset("/k", "2", Some(2)), t0 + U).is_empty());
    assert_eq!(
        (value(&s, "/k").as_deref(), value(&s, "/j").as_deref()),
        (Some("2"), Some("2"))
    );
    let st = s.stats();
    assert_eq!((st.superseded, st.duplicates), (2, 1));
    // Once the copy arrived, or after the window, writes pass again.
    assert_eq!(
        published(&s.handle_kvset(kvset("/k", "3", Some(5)), t0 + U)).len(),
        1
    );
    assert_eq!(
        published(&s.handle_kvset(kvset("/j", "3", Some(6)), t0 + secs(5))).len(),
        1
    );
}

#[test]
fn promotion_applies_the_pending_updates_fifo_with_new_sequences_and_the_epoch() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 10, t0);
    s.handle_kvset(kvset("/b", "1", Some(1)), t0);
    s.handle_kvset(kvset("/a", "2", Some(2)), t0);
    s.handle_kvset(kvset("/b", "", Some(3)), t0);
    let out = published(&s.promote(5, t0));
    let got: Vec<_> = out
        .iter()
        .map(|m| (m.key().clone(), m.body().clone(), m.seq(), m.epoch()))
        .collect();
    assert_eq!(
        got,
        [
            (Bytes::from("/b"), Bytes::from("1"), 11, Some(5)),
            (Bytes::from("/a"), Bytes::from("2"), 12, Some(5)),
            (Bytes::from("/b"), Bytes::new(), 13, Some(5)),
        ]
    );
    assert_eq!((s.role(), s.epoch(), s.sequence()), (Role::Active, 5, 13));
    assert_eq!(s.len(), 1);
    assert!(s.promote(6, t0).is_empty(), "already active");
    assert_eq!(s.epoch(), 5);
}

#[test]
fn ttl_is_absolute_on_the_passive_which_neither_expires_nor_advances_its_sequence() {
    let t0 = Instant::now();
    let mut s = synced(StoreConfig::new(), Vec::new(), 0, t0);
    let t1 = t0 + U;
    s.handle_peer_update(&kvpub(with_ttl(kvset("/e", "x", Some(1)), 5), 1), t1);
    assert_eq!(s.get(b"/e").unwrap().deadline(), Some(t1 + secs(5)));
    assert_eq!(
        s.get(b"/e")
            .unwrap()
            .to_kvsync(&Bytes::from("/e"), t1)
            .props()
            .get(TTL),
        Some("5")
    );
    // Long past the deadline: HUGZ only, carrying the unchanged sequence.
    let t9 = t0 + secs(60);
    assert_eq!(s.poll_timeout(), t0 + U, "the next HUGZ, not the deadline");
    let out = s.handle_timeout(t9);
    assert_eq!(out.len(), 1);
    let StoreAction::Publish(frames) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(matches!(
        Update::decode(frames).unwrap(),
        Update::Hugz { seq: 1, .. }
    ));
    assert_eq!((s.sequence(), s.len(), s.stats().expired), (1, 1, 0));
    // Once active, what fell due expires with a new sequence.
    s.promote(1, t9);
    assert_eq!(s.poll_timeout(), t1 + secs(5));
    let deletes = published(&s.handle_timeout(t9));
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].is_delete() && deletes[0].seq() == 2);
    assert_eq!(deletes[0].epoch(), Some(1));
}

#[test]
fn ephemeral_keys_from_the_snapshot_keep_their_remaining_lifetime() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet(), t0);
    s.handle_peer_update(&hugz(3, None), t0);
    let mut e = with_ttl(kvset("/e", "x", None), 3);
    e.set_seq(3);
    let t1 = t0 + U;
    s.handle_peer_snapshot(vec![e], 3, None, t1);
    assert_eq!(s.get(b"/e").unwrap().deadline(), Some(t1 + secs(3)));
    assert_eq!(s.get(b"/e").unwrap().seq(), 3);
    assert!(s.get(b"/e").unwrap().props.is_empty(), "ttl not kept");
}

#[test]
fn a_pending_updates_ttl_counts_from_its_arrival() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_kvset(with_ttl(kvset("/long", "x", Some(1)), 10), t0);
    s.handle_kvset(with_ttl(kvset("/short", "x", Some(2)), 2), t0);
    s.handle_kvset(with_ttl(kvset("/del", "", Some(3)), 2), t0);
    let t4 = t0 + secs(4);
    let out = published(&s.promote(1, t4));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].props().get(TTL), Some("6"), "remaining, not 10");
    assert!(out[1].is_delete(), "a delete does not expire");
    assert_eq!(s.get(b"/long").unwrap().deadline(), Some(t0 + secs(10)));
    assert_eq!(s.get(b"/short"), None);
    assert_eq!(s.stats().pending_expired, 1);
}

#[test]
fn a_gap_is_repaired_by_a_snapshot_that_replaces_the_map() {
    let t0 = Instant::now();
    let mut keep = kvset("/keep", "1", Some(1));
    keep.set_seq(1);
    let mut old = kvset("/old", "1", Some(2));
    old.set_seq(2);
    let mut s = synced(quiet(), vec![keep.clone(), old], 2, t0);
    // Client updates reach the passive: /eph with a 2 s ttl, and /new
    // twice; the active applies them and expires /eph, but the passive
    // misses those KVPUBs (3 to 6) and the one deleting /old.
    s.handle_kvset(with_ttl(kvset("/eph", "x", Some(3)), 2), t0);
    s.handle_kvset(kvset("/new", "1", Some(4)), t0);
    s.handle_kvset(kvset("/new", "2", Some(5)), t0);
    let t3 = t0 + secs(3);
    let out = s.handle_peer_update(&kvpub(kvset("/live", "1", Some(6)), 8), t3);
    assert_eq!(fetches(&out), 1);
    assert_eq!(s.stats().peer_gaps, 1);
    s.handle_peer_update(&kvpub(kvset("/live", "2", Some(7)), 9), t3);
    assert_eq!(
        value(&s, "/old").as_deref(),
        Some("1"),
        "readable meanwhile"
    );
    let mut new = kvset("/new", "2", Some(5));
    new.set_seq(5);
    let mut live = kvset("/live", "1", Some(6));
    live.set_seq(8);
    s.handle_peer_snapshot(vec![keep, new, live], 8, None, t3);
    assert_eq!(value(&s, "/old"), None, "replaced, not merged");
    assert_eq!(value(&s, "/live").as_deref(), Some("2"), "buffered, newer");
    assert_eq!((s.sequence(), s.len()), (9, 3));
    // The snapshot acknowledged /new=2 and superseded the older /new=1;
    // the pending /eph ran out where it ran out on the active.
    assert_eq!(s.pending_load().0, 1);
    assert!(published(&s.promote(1, t3)).is_empty());
    assert_eq!(
        (value(&s, "/eph"), value(&s, "/new").as_deref()),
        (None, Some("2"))
    );
    let st = s.stats();
    assert_eq!(
        (st.superseded, st.pending_cancelled, st.pending_expired),
        (1, 1, 1)
    );
}

#[test]
fn a_pending_update_of_a_key_the_snapshot_lacks_is_kept() {
    // Not applied by the active when its snapshot was taken: the active
    // may apply (and acknowledge) it right after, and die.
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_kvset(kvset("/k", "v", Some(1)), t0);
    s.handle_peer_update(&hugz(3, None), t0);
    s.handle_peer_snapshot(Vec::new(), 3, None, t0);
    let out = published(&s.promote(1, t0));
    assert_eq!(out.len(), 1);
    assert_eq!(value(&s, "/k").as_deref(), Some("v"));
}

#[test]
fn a_heartbeat_ahead_of_the_passive_is_a_gap() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), Vec::new(), 4, t0);
    assert!(s.handle_peer_update(&hugz(4, None), t0).is_empty());
    assert!(s.handle_peer_update(&hugz(2, None), t0).is_empty());
    assert_eq!(fetches(&s.handle_peer_update(&hugz(5, None), t0)), 1);
    assert_eq!(s.stats().peer_gaps, 1);
}

#[test]
fn a_resent_update_is_applied_once_before_and_after_promotion() {
    let t0 = Instant::now();
    let mut active = Store::new(quiet(), t0);
    assert_eq!(
        published(&active.handle_kvset(kvset("/k", "1", Some(1)), t0)).len(),
        1
    );
    assert!(active
        .handle_kvset(kvset("/k", "1", Some(1)), t0)
        .is_empty());
    assert_eq!(active.stats().duplicates, 1);

    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_peer_update(&kvpub(kvset("/k", "1", Some(1)), 1), t0);
    s.handle_kvset(kvset("/p", "1", Some(2)), t0);
    assert_eq!(published(&s.promote(1, t0)).len(), 1);
    // After the failover the client re-sends both: applied already.
    assert!(s.handle_kvset(kvset("/k", "1", Some(1)), t0).is_empty());
    assert!(s.handle_kvset(kvset("/p", "1", Some(2)), t0).is_empty());
    assert_eq!(s.stats().duplicates, 2);
    assert_eq!(s.sequence(), 2);
    assert_eq!(
        published(&s.handle_kvset(kvset("/k", "2", Some(3)), t0)).len(),
        1
    );
}

#[test]
fn messages_without_a_uuid_are_never_deduplicated_and_never_match_pending() {
    let t0 = Instant::now();
    let mut active = Store::new(quiet(), t0);
    active.handle_kvset(kvset("/k", "1", None), t0);
    active.handle_kvset(kvset("/k", "1", None), t0);
    assert_eq!((active.sequence(), active.stats().duplicates), (2, 0));

    let mut s = synced(quiet(), Vec::new(), 0, t0);
    s.handle_kvset(kvset("/a", "1", None), t0);
    s.handle_kvset(kvset("/a", "1", None), t0);
    s.handle_kvset(kvset("/b", "1", Some(1)), t0);
    // The active's copy without a UUID cancels and supersedes nothing.
    s.handle_peer_update(&kvpub(kvset("/a", "1", None), 1), t0);
    assert_eq!(s.pending_load().0, 3);
    assert_eq!(s.stats().pending_cancelled, 0);
    assert_eq!(published(&s.promote(1, t0)).len(), 3);
}

#[test]
fn pending_and_buffer_bounds_drop_the_oldest_and_count() {
    let t0 = Instant::now();
    let mut s = synced(quiet().max_pending(2), Vec::new(), 0, t0);
    for u in 1..=3 {
        s.handle_kvset(kvset(&format!("/{u}"), "v", Some(u)), t0);
    }
    assert_eq!(s.stats().pending_dropped, 1);
    let cost = PendingList::cost(&kvset("/x", "v", Some(9)));
    assert_eq!(s.pending_load(), (2, 2 * cost));
    let keys: Vec<_> = published(&s.promote(1, t0))
        .iter()
        .map(|m| m.key().clone())
        .collect();
    assert_eq!(keys, ["/2", "/3"]);

    let mut s = synced(quiet().max_pending_bytes(cost), Vec::new(), 0, t0);
    s.handle_kvset(kvset("/x", "v", Some(1)), t0);
    s.handle_kvset(kvset("/y", "v", Some(2)), t0);
    assert_eq!((s.pending_load().0, s.stats().pending_dropped), (1, 1));

    // Live updates buffered during a fetch share the bounds.
    let mut s = Store::new_passive(quiet().max_pending(2), t0);
    for seq in 1..=3 {
        s.handle_peer_update(&kvpub(kvset("/k", "v", None), seq), t0);
    }
    assert_eq!(s.stats().peer_buffer_overflows, 1);
    s.handle_peer_snapshot(Vec::new(), 0, None, t0);
    assert_eq!(s.sequence(), 0, "the buffer was dropped");
    // The gap it left is seen at the next message.
    let out = s.handle_peer_update(&kvpub(kvset("/k", "v", None), 4), t0);
    assert_eq!(fetches(&out), 1);
}

#[test]
fn the_recent_uuid_memory_is_bounded() {
    let t0 = Instant::now();
    let mut s = Store::new(quiet().recent_uuids(2), t0);
    for u in 1..=3 {
        s.handle_kvset(kvset("/k", "v", Some(u)), t0);
    }
    assert_eq!(s.recent_uuids(), 2);
    assert!(s.handle_kvset(kvset("/k", "v", Some(3)), t0).is_empty());
    assert_eq!(
        published(&s.handle_kvset(kvset("/k", "v", Some(1)), t0)).len(),
        1,
        "forgotten: applied again"
    );
    let mut off = Store::new(quiet().recent_uuids(0), t0);
    off.handle_kvset(kvset("/k", "v", Some(1)), t0);
    assert_eq!(
        published(&off.handle_kvset(kvset("/k", "v", Some(1)), t0)).len(),
        1
    );
}

#[test]
fn a_passive_refuses_peer_messages_from_a_lower_epoch() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet().snapshot_retry(U), t0);
    assert_eq!(s.observed_epoch(), None);
    assert_eq!(fetches(&s.handle_peer_update(&hugz(0, Some(3)), t0)), 1);
    assert_eq!(s.observed_epoch(), Some(3));
    // A snapshot from an older active is refused and asked again.
    assert!(s
        .handle_peer_snapshot(Vec::new(), 0, Some(2), t0)
        .is_empty());
    assert!(!s.is_synced());
    assert_eq!(fetches(&s.handle_timeout(t0 + U)), 1);
    s.handle_peer_snapshot(Vec::new(), 0, Some(4), t0 + U);
    assert_eq!(s.observed_epoch(), Some(4));
    let old = kvpub(with_epoch(kvset("/k", "stale", Some(1)), 3), 1);
    assert!(s.handle_peer_update(&old, t0).is_empty());
    assert!(
        s.handle_peer_update(&hugz(9, Some(3)), t0).is_empty(),
        "no gap"
    );
    assert_eq!((s.sequence(), s.len()), (0, 0));
    assert_eq!(s.stats().fenced, 3);
    // Without the property (the Guide's server) messages are never fenced.
    s.handle_peer_update(&kvpub(kvset("/k", "v", Some(2)), 1), t0);
    s.handle_peer_update(&kvpub(with_epoch(kvset("/j", "v", None), 4), 2), t0);
    assert_eq!((s.sequence(), s.len()), (2, 2));
    assert!(s.get(b"/j").unwrap().props.is_empty(), "epoch not stored");
}

#[test]
fn the_epoch_is_presented_only_above_zero_and_clients_cannot_forge_it() {
    let t0 = Instant::now();
    let mut single = Store::new(StoreConfig::new().instance(None), t0);
    let out = published(&single.handle_kvset(with_epoch(kvset("/k", "v", Some(1)), 99), t0));
    assert_eq!(out[0].epoch(), None, "a client's epoch is stripped");
    assert!(single.get(b"/k").unwrap().props.is_empty());
    let hb = single.handle_timeout(t0 + U);
    let StoreAction::Publish(f) = &hb[0] else {
        panic!()
    };
    assert!(f[3].is_empty(), "HUGZ as CHP says: no properties");

    let mut s = Store::new_passive(StoreConfig::new().instance(None).epoch(2), t0);
    assert_eq!(s.epoch(), 2);
    let hb = s.handle_timeout(t0 + U);
    let StoreAction::Publish(f) = &hb[0] else {
        panic!()
    };
    assert_eq!(Update::decode(f).unwrap().epoch(), Some(2), "every role");
    s.promote(3, t0 + U);
    let out = published(&s.handle_kvset(with_epoch(kvset("/k", "v", Some(1)), 99), t0 + U));
    assert_eq!(out[0].epoch(), Some(3));
    let cursor = match s
        .handle_request(
            vec![Bytes::from("p"), Bytes::from("ICANHAZ?"), Bytes::new()],
            t0 + U,
        )
        .pop()
    {
        Some(StoreAction::StartSnapshot(c)) => c,
        other => panic!("{other:?}"),
    };
    let mut c = cursor;
    let mut frames = Vec::new();
    while !c.next_chunk(t0, 10, &mut frames) {}
    let kv = KvMsg::decode(&frames[0]).unwrap();
    assert_eq!(kv.epoch(), None, "KVSYNC entries carry no epoch");
    match SnapshotReply::decode(frames.last().unwrap()).unwrap() {
        SnapshotReply::Kthxbai { epoch, .. } => assert_eq!(epoch, Some(3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_passive_refuses_snapshot_requests_and_drops_bad_peer_input() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet().max_kvset_size(64), t0);
    let req = vec![Bytes::from("p"), Bytes::from("ICANHAZ?"), Bytes::new()];
    assert!(s.handle_request(req, t0).is_empty());
    assert_eq!(s.stats().passive_requests, 1);
    assert!(s.handle_peer_update(&[Bytes::from("x")], t0).is_empty());
    let big = kvpub(kvset("/k", &"x".repeat(64), None), 1);
    assert!(s.handle_peer_update(&big, t0).is_empty());
    assert_eq!(s.stats().peer_malformed, 2);
    assert!(!s.is_synced());
}

#[test]
fn promotion_during_a_fetch_applies_the_buffered_updates_and_ignores_the_late_snapshot() {
    let t0 = Instant::now();
    let mut s = synced(quiet(), vec![], 1, t0);
    s.handle_peer_update(&kvpub(kvset("/a", "1", Some(1)), 3), t0);
    s.handle_peer_update(&kvpub(kvset("/b", "1", Some(2)), 4), t0);
    s.handle_kvset(kvset("/c", "1", Some(3)), t0);
    let out = published(&s.promote(2, t0));
    assert_eq!(value(&s, "/a").as_deref(), Some("1"));
    assert_eq!(value(&s, "/b").as_deref(), Some("1"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq(), 5);
    assert!(s.handle_peer_snapshot(Vec::new(), 9, None, t0).is_empty());
    assert_eq!((s.sequence(), s.len()), (5, 3));
    // An active store ignores its peer (but notes the epoch it presents).
    assert!(s.handle_peer_update(&hugz(40, Some(7)), t0).is_empty());
    assert_eq!((s.observed_epoch(), s.stats().fenced), (Some(7), 0));
}

#[test]
fn a_lone_passive_promoted_without_any_peer_starts_from_its_pending_list() {
    let t0 = Instant::now();
    let mut s = Store::new_passive(quiet(), t0);
    s.handle_kvset(kvset("/k", "v", Some(1)), t0);
    let out = published(&s.promote(1, t0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq(), 1);
    assert!(s.is_synced());
    assert_eq!(value(&s, "/k").as_deref(), Some("v"));
}

/// A pure simulation of a server pair and three clients (the real
/// [`Store`]s and [`Agent`](crate::clone::Agent)s; the network as FIFO
/// queues per path): clients write their own keys (the Guide's
/// assumption), copies reach each server in order or are lost on the way
/// to the active, the active dies at a random point with a random part of
/// its stream delivered to the passive, the passive is promoted, late
/// client copies arrive, the clients fail over, sync and re-send.
mod simulation {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::clone::{kvset, Agent, AgentAction, AgentConfig, SnapshotCursor, SnapshotReply};

    #[derive(Debug, Clone)]
    enum Op {
        Set {
            client: usize,
            key: u8,
            delete: bool,
        },
        ToActive(usize),
        LostToActive(usize),
        ToPassive(usize),
        Peer,
        LostPeer,
        Hugz,
        Ack(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 0..3u8, prop::bool::weighted(0.2))
                .prop_map(|(client, key, delete)| Op::Set { client, key, delete }),
            3 => (0..3usize).prop_map(Op::ToActive),
            1 => (0..3usize).prop_map(Op::LostToActive),
            3 => (0..3usize).prop_map(Op::ToPassive),
            3 => Just(Op::Peer),
            1 => Just(Op::LostPeer),
            1 => Just(Op::Hugz),
            3 => (0..3usize).prop_map(Op::Ack),
        ]
    }

    struct Client {
        agent: Agent,
        subtree: Bytes,
        to_active: VecDeque<KvMsg>,
        to_passive: VecDeque<KvMsg>,
        inbox: VecDeque<KvMsg>,
        writes: HashMap<Bytes, Vec<(Uuid, Option<Bytes>)>>,
        acked: HashSet<Uuid>,
        n: u32,
    }

    impl Client {
        fn drain_acks(&mut self) {
            while let Some(u) = self.agent.poll_ack() {
                self.acked.insert(u);
            }
        }
        fn deliver_inbox(&mut self, now: Instant) {
            let attempt = self.agent.attempt();
            while let Some(m) = self.inbox.pop_front() {
                self.agent.handle_update(attempt, Update::Kvpub(m), now);
            }
            self.drain_acks();
        }
    }

    fn fan_out(clients: &mut [Client], actions: Vec<StoreAction>, log: &mut Vec<Uuid>) {
        for a in actions {
            if let StoreAction::Publish(f) = a {
                if f[0] == "HUGZ" {
                    continue;
                }
                let m = KvMsg::decode(&f).unwrap();
                log.extend(m.uuid().copied());
                for c in clients.iter_mut() {
                    if m.key().starts_with(&c.subtree) {
                        c.inbox.push_back(m.clone());
                    }
                }
            }
        }
    }

    /// The passive's peer input; a snapshot it asks for is fetched at once
    /// from the active if alive, else fails.
    fn to_peer(passive: &mut Store, active: Option<&Store>, f: &[Bytes], now: Instant) {
        let out = passive.handle_peer_update(f, now);
        assert!(out.iter().all(|a| matches!(a, StoreAction::FetchSnapshot)));
        if out.is_empty() {
            return;
        }
        let Some(active) = active else {
            passive.handle_peer_snapshot_failed(now);
            return;
        };
        let mut c = SnapshotCursor::new(
            Bytes::new(),
            Bytes::new(),
            active.map(),
            active.sequence(),
            now,
        );
        let mut frames = Vec::new();
        while !c.next_chunk(now, 100, &mut frames) {}
        frames.pop();
        let entries = frames.iter().map(|f| KvMsg::decode(f).unwrap()).collect();
        let out =
            passive.handle_peer_snapshot(entries, active.sequence(), Some(active.epoch()), now);
        assert!(out.is_empty(), "{out:?}");
    }

    fn run(ops: Vec<Op>, delivered_percent: usize) -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let mut active = Store::new(quiet().epoch(1), t0);
        let mut passive = synced(quiet(), Vec::new(), 0, t0);
        let mut clients: Vec<Client> = (0..3)
            .map(|i| {
                let subtree = Bytes::from(format!("/c{i}/"));
                let mut agent = Agent::new(AgentConfig::default(), subtree.clone(), t0);
                agent.handle_server_added(t0);
                agent.handle_server_added(t0);
                let end = SnapshotReply::Kthxbai {
                    seq: 0,
                    subtree: subtree.clone(),
                    instance: None,
                    epoch: Some(1),
                };
                agent.handle_snapshot(agent.attempt(), end, t0);
                while agent.poll_action().is_some() {}
                Client {
                    agent,
                    subtree,
                    to_active: VecDeque::new(),
                    to_passive: VecDeque::new(),
                    inbox: VecDeque::new(),
                    writes: HashMap::new(),
                    acked: HashSet::new(),
                    n: 0,
                }
            })
            .collect();
        let mut stream: VecDeque<[Bytes; 5]> = VecDeque::new();
        let mut active_log = Vec::new();
        for op in ops {
            match op {
                Op::Set {
                    client,
                    key,
                    delete,
                } => {
                    let c = &mut clients[client];
                    c.n += 1;
                    let key = Bytes::from(format!("/c{client}/{key}"));
                    let value = (!delete).then(|| Bytes::from(format!("{client}-{}", c.n)));
                    let mut uuid = [client as u8; 16];
                    uuid[12..].copy_from_slice(&c.n.to_be_bytes());
                    let body = value.clone().unwrap_or_default();
                    let msg = kvset(key.clone(), body, None, uuid).unwrap();
                    c.agent.handle_set(msg, t0);
                    while let Some(a) = c.agent.poll_action() {
                        if let AgentAction::Publish(m) = a {
                            c.to_active.push_back(m.clone());
                            c.to_passive.push_back(m);
                        }
                    }
                    c.writes.entry(key).or_default().push((uuid, value));
                }
                Op::ToActive(i) => {
                    if let Some(m) = clients[i].to_active.pop_front() {
                        let out = active.handle_kvset(m, t0);
                        for a in &out {
                            if let StoreAction::Publish(f) = a {
                                stream.push_back(f.clone());
                            }
                        }
                        fan_out(&mut clients, out, &mut active_log);
                    }
                }
                Op::LostToActive(i) => {
                    clients[i].to_active.pop_front();
                }
                Op::ToPassive(i) => {
                    if let Some(m) = clients[i].to_passive.pop_front() {
                        prop_assert!(passive.handle_kvset(m, t0).is_empty());
                    }
                }
                Op::Peer => {
                    if let Some(f) = stream.pop_front() {
                        to_peer(&mut passive, Some(&active), &f, t0);
                    }
                }
                Op::LostPeer => {
                    stream.pop_front();
                }
                Op::Hugz => stream.push_back(Update::encode_hugz(active.sequence(), None, Some(1))),
                Op::Ack(i) => {
                    let c = &mut clients[i];
                    if let Some(m) = c.inbox.pop_front() {
                        let attempt = c.agent.attempt();
                        c.agent.handle_update(attempt, Update::Kvpub(m), t0);
                        c.drain_acks();
                    }
                }
            }
        }
        // The active dies: part of its stream reaches the passive.
        let keep = stream.len() * delivered_percent / 100;
        let mut peer_uuids = HashSet::new();
        for f in stream.drain(..).take(keep) {
            if f[0] != "HUGZ" {
                peer_uuids.extend(KvMsg::decode(&f).unwrap().uuid().copied());
            }
            to_peer(&mut passive, None, &f, t0);
        }
        peer_uuids.extend(passive.recent.set.iter().copied());
        for c in &mut clients {
            c.to_active.clear();
            c.inbox.clear();
        }
        // Promotion (a vote), then the client copies still on their way.
        let mut log = Vec::new();
        let out = passive.promote(2, t0);
        fan_out(&mut clients, out, &mut log);
        for i in 0..clients.len() {
            while let Some(m) = clients[i].to_passive.pop_front() {
                let out = passive.handle_kvset(m, t0);
                fan_out(&mut clients, out, &mut log);
            }
        }
        for c in &mut clients {
            c.inbox.clear(); // covered by the snapshots below
        }
        // Each client fails over, syncs and re-sends.
        let t1 = t0 + secs(6);
        for i in 0..clients.len() {
            let c = &mut clients[i];
            c.agent.handle_timeout(t1);
            let opened: Vec<_> = std::iter::from_fn(|| c.agent.poll_action()).collect();
            let failed_over = matches!(opened[..], [AgentAction::Open { server: 1, .. }]);
            prop_assert!(failed_over, "{:?}", opened);
            let attempt = c.agent.attempt();
            let mut cursor = SnapshotCursor::new(
                Bytes::new(),
                c.subtree.clone(),
                passive.map(),
                passive.sequence(),
                t1,
            )
            .with_epoch(Some(passive.epoch()));
            let mut frames = Vec::new();
            while !cursor.next_chunk(t1, 100, &mut frames) {}
            for f in frames {
                let reply = SnapshotReply::decode(&f).unwrap();
                c.agent.handle_snapshot(attempt, reply, t1);
            }
            c.drain_acks();
            let resent: Vec<_> = std::iter::from_fn(|| c.agent.poll_action()).collect();
            for a in resent {
                if let AgentAction::Publish(m) = a {
                    let out = passive.handle_kvset(m, t1);
                    fan_out(&mut clients, out, &mut log);
                }
            }
        }
        for c in &mut clients {
            c.deliver_inbox(t1);
        }
        // Exactly once: nothing the passive had from the active is applied
        // again, and nothing twice.
        let unique: HashSet<_> = log.iter().collect();
        prop_assert_eq!(unique.len(), log.len(), "applied twice: {:?}", log);
        prop_assert!(log.iter().all(|u| !peer_uuids.contains(u)));
        for c in &clients {
            for (key, writes) in &c.writes {
                let final_value = passive.get(key).map(|e| e.value().clone());
                // No acknowledged update lost unless a later one superseded it.
                if let Some(last_acked) = writes.iter().rposition(|(u, _)| c.acked.contains(u)) {
                    prop_assert!(
                        writes[last_acked..].iter().any(|(_, v)| *v == final_value),
                        "{key:?}: acked {:?} lost; final {final_value:?}; writes {writes:?}",
                        writes[last_acked]
                    );
                }
                // And the client's last write wins.
                prop_assert_eq!(&writes.last().unwrap().1, &final_value, "{:?}", key);
            }
            // Every client holds the new active's map of its subtree.
            let mine: Vec<_> = passive
                .map()
                .iter()
                .filter(|(k, _)| k.starts_with(&c.subtree))
                .map(|(k, e)| (k.clone(), e.value().clone()))
                .collect();
            prop_assert_eq!(c.agent.entries(), mine);
            prop_assert_eq!(
                c.agent.in_flight().0,
                0,
                "everything acknowledged in the end"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn no_acknowledged_update_is_lost_and_every_client_converges(
            ops in prop::collection::vec(op(), 0..120),
            delivered_percent in 0usize..=100,
        ) {
            run(ops, delivered_percent)?;
        }
    }
}
