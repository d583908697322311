//! The linearizability checker used by the consensus battery, tested on
//! known linearizable and known non-linearizable histories.

#[path = "support/linearizability.rs"]
mod linearizability;

use bytes::Bytes;
use linearizability::{check, Call, HistOp, Ret};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn op(client: u64, call: Call, invoked: u64, ret: Option<(u64, Ret)>) -> HistOp {
    HistOp {
        client,
        key: b("x"),
        call,
        invoked,
        ret,
    }
}

fn put(v: &str) -> Call {
    Call::Put(b(v))
}

fn read(v: Option<&str>) -> Ret {
    Ret::Read(v.map(b))
}

#[test]
fn sequential_history_is_linearizable() {
    let h = [
        op(1, Call::Get, 0, Some((1, read(None)))),
        op(1, put("a"), 2, Some((3, Ret::Written))),
        op(1, Call::Get, 4, Some((5, read(Some("a"))))),
        op(
            1,
            Call::Cas {
                expect: Some(b("a")),
                new: b("b"),
            },
            6,
            Some((7, Ret::Swapped)),
        ),
        op(
            1,
            Call::Cas {
                expect: Some(b("a")),
                new: b("c"),
            },
            8,
            Some((9, Ret::Mismatch(Some(b("b"))))),
        ),
        op(1, Call::Get, 10, Some((11, read(Some("b"))))),
    ];
    check(&h).unwrap();
}

#[test]
fn concurrent_ops_may_take_effect_in_either_order() {
    // A read overlapping a write may see the old or the new value.
    for seen in [None, Some("a")] {
        let h = [
            op(1, put("a"), 0, Some((10, Ret::Written))),
            op(2, Call::Get, 5, Some((6, read(seen)))),
        ];
        check(&h).unwrap();
    }
}

#[test]
fn a_stale_read_after_a_completed_write_is_caught() {
    let h = [
        op(1, put("a"), 0, Some((1, Ret::Written))),
        op(2, Call::Get, 2, Some((3, read(None)))),
    ];
    let v = check(&h).unwrap_err();
    assert!(v.to_string().contains("not linearizable"), "{v}");
}

#[test]
fn reads_that_go_back_in_time_are_caught() {
    // Two writes, then a read of the second, then a later read of the first.
    let h = [
        op(1, put("a"), 0, Some((1, Ret::Written))),
        op(1, put("b"), 2, Some((3, Ret::Written))),
        op(2, Call::Get, 4, Some((5, read(Some("b"))))),
        op(3, Call::Get, 6, Some((7, read(Some("a"))))),
    ];
    assert!(check(&h).is_err());
}

#[test]
fn a_value_never_written_is_caught() {
    let h = [op(2, Call::Get, 0, Some((1, read(Some("ghost")))))];
    assert!(check(&h).is_err());
}

#[test]
fn two_successful_cas_from_one_value_are_caught() {
    // Both cas(a -> _) succeed: only one could have seen "a".
    let cas = |new: &str| Call::Cas {
        expect: Some(b("a")),
        new: b(new),
    };
    let h = [
        op(1, put("a"), 0, Some((1, Ret::Written))),
        op(2, cas("b"), 2, Some((5, Ret::Swapped))),
        op(3, cas("c"), 3, Some((6, Ret::Swapped))),
    ];
    assert!(check(&h).is_err());
    // With the second one failing and seeing "b", it is fine.
    let h = [
        op(1, put("a"), 0, Some((1, Ret::Written))),
        op(2, cas("b"), 2, Some((5, Ret::Swapped))),
        op(3, cas("c"), 3, Some((6, Ret::Mismatch(Some(b("b")))))),
    ];
    check(&h).unwrap();
}

#[test]
fn indeterminate_ops_may_apply_late_or_never() {
    // A timed-out write explains a later read of its value...
    let h = [
        op(1, put("a"), 0, None),
        op(2, Call::Get, 10, Some((11, read(Some("a"))))),
        op(2, Call::Get, 12, Some((13, read(Some("a"))))),
    ];
    check(&h).unwrap();
    // ...or never happens.
    let h = [
        op(1, put("a"), 0, None),
        op(2, Call::Get, 10, Some((11, read(None)))),
    ];
    check(&h).unwrap();
    // But it cannot take effect before it was invoked.
    let h = [
        op(2, Call::Get, 0, Some((1, read(Some("a"))))),
        op(1, put("a"), 5, None),
    ];
    assert!(check(&h).is_err());
    // And it takes effect at most once: a, then b, then a again is impossible
    // with a single put("a").
    let h = [
        op(1, put("a"), 0, None),
        op(2, Call::Get, 10, Some((11, read(Some("a"))))),
        op(3, put("b"), 12, Some((13, Ret::Written))),
        op(2, Call::Get, 14, Some((15, read(Some("a"))))),
    ];
    assert!(check(&h).is_err());
}

#[test]
fn keys_are_independent() {
    let mut h = vec![op(1, put("a"), 0, Some((1, Ret::Written)))];
    let mut other = op(2, Call::Get, 2, Some((3, read(None))));
    other.key = b("y");
    h.push(other);
    check(&h).unwrap();
}

#[test]
fn many_concurrent_writers_and_readers_stay_fast() {
    // 8 clients, 400 ops, heavily overlapping, generated from a real
    // register so the history is linearizable by construction.
    let mut h = Vec::new();
    let mut state: Option<Bytes> = None;
    for i in 0..400u64 {
        let t = i;
        let client = i % 8;
        // Each op spans 8 time units and takes effect at its midpoint,
        // in index order.
        let (call, ret) = match i % 3 {
            0 => {
                let v = b(&format!("v{i}"));
                state = Some(v.clone());
                (Call::Put(v), Ret::Written)
            }
            1 => (Call::Get, Ret::Read(state.clone())),
            _ => {
                let expect = state.clone();
                let new = b(&format!("w{i}"));
                state = Some(new.clone());
                (Call::Cas { expect, new }, Ret::Swapped)
            }
        };
        h.push(op(client, call, t, Some((t + 8, ret))));
    }
    check(&h).unwrap();
    // Flip one read to a stale value: caught.
    let i = h.iter().rposition(|o| o.call == Call::Get).unwrap();
    h[i].ret = Some((h[i].ret.as_ref().unwrap().0, read(Some("v0"))));
    assert!(check(&h).is_err());
}
