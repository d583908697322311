//! A linearizability checker for key-value histories (get, put, cas,
//! delete), in
//! the Wing-Gong-Lowe style: the history is split per key (a register per
//! key, P-compositionality), and each key's operations are searched
//! depth-first for an order that respects real time and the register's
//! semantics, memoising `(set of linearized ops, register value)`.
//!
//! Operations that never completed (timed out, client stopped) are
//! indeterminate: they may take effect at any point after their invocation,
//! or never. A failure reports the key and the operations that could not
//! be placed at the deepest point the search reached.
#![allow(unreachable_pub, dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Get,
    Put(Bytes),
    Cas { expect: Option<Bytes>, new: Bytes },
    Delete,
}

/// What it returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    Read(Option<Bytes>),
    Written,
    Swapped,
    /// The cas failed; the value it saw.
    Mismatch(Option<Bytes>),
    /// The delete ran; whether the key existed.
    Deleted(bool),
}

/// One operation of a history. `ret == None`: indeterminate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistOp {
    pub client: u64,
    pub key: Bytes,
    pub call: Call,
    pub invoked: u64,
    pub ret: Option<(u64, Ret)>,
}

/// Why a history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    pub key: Bytes,
    pub ops: usize,
    pub deepest: usize,
    pub stuck: Vec<HistOp>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: not linearizable ({} ops; at most {} placed). Ops that could not be placed next:",
            self.key, self.ops, self.deepest
        )?;
        for op in &self.stuck {
            writeln!(f, "  {op:?}")?;
        }
        Ok(())
    }
}

/// Checks a whole history.
pub fn check(history: &[HistOp]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&Bytes, Vec<&HistOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        check_key(key, &ops)?;
    }
    Ok(())
}

/// The register value, interned: 0 is "absent".
type Val = u32;

struct Prepared {
    call: PCall,
    invoked: u64,
    returned: u64,
    result: Option<PRet>,
}

#[derive(Clone, Copy)]
enum PCall {
    Get,
    Put(Val),
    Cas(Val, Val),
    Delete,
}

#[derive(Clone, Copy)]
enum PRet {
    Read(Val),
    Written,
    Swapped,
    Mismatch(Val),
    Deleted(bool),
}

fn check_key(key: &Bytes, ops: &[&HistOp]) -> Result<(), Violation> {
    let mut values: HashMap<Option<Bytes>, Val> = HashMap::new();
    values.insert(None, 0);
    let mut intern = |v: &Option<Bytes>| {
        let n = values.len() as Val;
        *values.entry(v.clone()).or_insert(n)
    };
    // Indeterminate reads have no effect: leave them out.
    let mut kept: Vec<&HistOp> = ops
        .iter()
        .copied()
        .filter(|o| o.ret.is_some() || o.call != Call::Get)
        .collect();
    kept.sort_by_key(|o| o.invoked);
    let prepared: Vec<Prepared> = kept
        .iter()
        .map(|o| Prepared {
            call: match &o.call {
                Call::Get => PCall::Get,
                Call::Put(v) => PCall::Put(intern(&Some(v.clone()))),
                Call::Cas { expect, new } => PCall::Cas(intern(expect), intern(&Some(new.clone()))),
                Call::Delete => PCall::Delete,
            },
            invoked: o.invoked,
            returned: o.ret.as_ref().map_or(u64::MAX, |(t, _)| *t),
            result: o.ret.as_ref().map(|(_, r)| match r {
                Ret::Read(v) => PRet::Read(intern(v)),
                Ret::Written => PRet::Written,
                Ret::Swapped => PRet::Swapped,
                Ret::Mismatch(v) => PRet::Mismatch(intern(v)),
                Ret::Deleted(existed) => PRet::Deleted(*existed),
            }),
        })
        .collect();
    let mut search = Search::new(&prepared);
    if search.run() {
        return Ok(());
    }
    let stuck = search
        .deepest_set
        .iter()
        .enumerate()
        .filter(|(_, done)| !**done)
        .map(|(i, _)| kept[i].clone())
        .take(12)
        .collect();
    Err(Violation {
        key: key.clone(),
        ops: kept.len(),
        deepest: search.deepest,
        stuck,
    })
}

struct Search<'a> {
    ops: &'a [Prepared],
    done: Vec<bool>,
    bits: Vec<u64>,
    completed_left: usize,
    seen: HashSet<(Vec<u64>, Val)>,
    deepest: usize,
    deepest_set: Vec<bool>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Prepared]) -> Self {
        Search {
            ops,
            done: vec![false; ops.len()],
            bits: vec![0; ops.len().div_ceil(64)],
            completed_left: ops.iter().filter(|o| o.result.is_some()).count(),
            seen: HashSet::new(),
            deepest: 0,
            deepest_set: vec![false; ops.len()],
        }
    }

    /// The state after applying op `i` to `state`, if its result allows it.
    fn step(&self, i: usize, state: Val) -> Vec<Val> {
        let op = &self.ops[i];
        match (op.call, op.result) {
            (PCall::Get, Some(PRet::Read(v))) => {
                (v == state).then_some(state).into_iter().collect()
            }
            (PCall::Put(v), Some(PRet::Written) | None) => vec![v],
            (PCall::Cas(e, n), Some(PRet::Swapped)) => {
                (state == e).then_some(n).into_iter().collect()
            }
            (PCall::Cas(e, _), Some(PRet::Mismatch(cur))) => (state != e && state == cur)
                .then_some(state)
                .into_iter()
                .collect(),
            // An indeterminate cas that runs: it swaps if it matches, else
            // it fails without effect.
            (PCall::Cas(e, n), None) => vec![if state == e { n } else { state }],
            // A delete empties the key; it reports whether there was one.
            (PCall::Delete, Some(PRet::Deleted(existed))) => {
                ((state != 0) == existed).then_some(0).into_iter().collect()
            }
            (PCall::Delete, None) => vec![0],
            _ => Vec::new(), // a result that does not fit the call
        }
    }

    fn run(&mut self) -> bool {
        self.dfs(0, 0)
    }

    fn dfs(&mut self, state: Val, depth: usize) -> bool {
        if self.completed_left == 0 {
            return true;
        }
        if depth > self.deepest {
            self.deepest = depth;
            self.deepest_set.clone_from(&self.done);
        }
        if !self.seen.insert((self.bits.clone(), state)) {
            return false;
        }
        // An op can go next only if no pending op returned before it began.
        // Ops are sorted by invocation, so the candidates are a prefix of
        // the pending ones: stop at the first that began after the earliest
        // return seen so far (anything later returns later still).
        let mut candidates = Vec::new();
        let mut min_ret = u64::MAX;
        for i in 0..self.ops.len() {
            if self.done[i] {
                continue;
            }
            if self.ops[i].invoked > min_ret {
                break;
            }
            min_ret = min_ret.min(self.ops[i].returned);
            candidates.push(i);
        }
        for i in candidates {
            if self.ops[i].invoked > min_ret {
                continue;
            }
            for next in self.step(i, state) {
                self.mark(i, true);
                let ok = self.dfs(next, depth + 1);
                self.mark(i, false);
                if ok {
                    return true;
                }
            }
        }
        false
    }

    fn mark(&mut self, i: usize, on: bool) {
        self.done[i] = on;
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
        if self.ops[i].result.is_some() {
            if on {
                self.completed_left -= 1;
            } else {
                self.completed_left += 1;
            }
        }
    }
}
