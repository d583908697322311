//! What can be measured: implementations, patterns and their topologies,
//! and the plan (the interleaved list of runs).
//!
//! Adding a pattern (the Black Box subscriber is the next one) takes four
//! steps, all marked `EXTENSION` below and in the role modules:
//!
//! 1. a variant in [`Pattern`] (clap derives its `--patterns` name);
//! 2. its answers in [`Pattern::topology`], [`Pattern::family`] and
//!    [`Pattern::impls`] (which implementations have it);
//! 3. the receiver in `zrs::recv` (and, if there is a libzmq twin, in
//!    `lz::recv`); senders are chosen by [`Pattern::family`], so a new
//!    pub-sub receiver reuses the publishers as they are;
//! 4. nothing in the orchestrator or the report: rows, ratios, JSON and the
//!    chart are generic.

use clap::ValueEnum;

/// Which stack a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Impl {
    /// The pure-Rust `zeromq` crate 0.7 and this crate's proxies.
    Zeromq,
    /// libzmq 4.3 through the `zmq` crate (blocking API, 1 I/O thread).
    Libzmq,
}

impl Impl {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Impl::Zeromq => "zeromq",
            Impl::Libzmq => "libzmq",
        }
    }
}

/// A measured path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Pattern {
    /// PUB -> SUB directly, `[topic][payload]`: the ceiling of the proxy
    /// rows with the same peers (delivered % shows any drop).
    Pubsub,
    /// PUSH -> PULL, one frame, lossless (backpressure).
    Pushpull,
    /// DEALER -> ROUTER, one way, one frame, lossless.
    DealerRouter,
    /// REQ <-> REP ping-pong: round trips/s and latency percentiles.
    ReqrepLatency,
    /// PUB -> proxy (XSUB/XPUB) -> SUB: `zpatterns::pubsub` vs `zmq_proxy`.
    Proxy,
    /// PUB -> tracing proxy -> SUB, capture drained by a listener:
    /// `zpatterns::espresso` vs `zmq_proxy` with a capture socket.
    Espresso,
    /// PUB -> Last Value Cache -> SUB: `zpatterns::lvc` vs the Guide's
    /// lvcache (SUB + verbose XPUB + HashMap + poll loop) on libzmq.
    Lvc,
    /// PUB -> sharded subscriber (one SUB, two workers): `zpatterns::blackbox`
    /// (key-hashed, bounded tokio channels, worker threads) vs the Guide's
    /// design on libzmq (SUB -> `inproc` PUSH -> two PULL worker threads).
    Blackbox,
}

/// Which processes a run has and who binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// Receiver binds, sender connects.
    Direct,
    /// A proxy process binds both sides; sender and receiver connect.
    Proxied,
}

/// How senders behave (which sockets, which message shape, end markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// PUB, `[topic][payload]`, end marker repeated until STOP (PUB drops).
    PubSub,
    /// PUSH, one frame, one end marker.
    Push,
    /// DEALER, one frame, one end marker.
    Dealer,
    /// REQ ping-pong.
    ReqRep,
}

impl Pattern {
    /// Every pattern, in table order.
    pub(crate) const ALL: [Pattern; 8] = [
        Pattern::Pubsub,
        Pattern::Pushpull,
        Pattern::DealerRouter,
        Pattern::ReqrepLatency,
        Pattern::Proxy,
        Pattern::Espresso,
        Pattern::Lvc,
        Pattern::Blackbox,
    ];

    /// The `--patterns` / JSON name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Pattern::Pubsub => "pubsub",
            Pattern::Pushpull => "pushpull",
            Pattern::DealerRouter => "dealer-router",
            Pattern::ReqrepLatency => "reqrep-latency",
            Pattern::Proxy => "proxy",
            Pattern::Espresso => "espresso",
            Pattern::Lvc => "lvc",
            Pattern::Blackbox => "blackbox",
        }
    }

    pub(crate) fn topology(self) -> Topology {
        match self {
            Pattern::Proxy | Pattern::Espresso | Pattern::Lvc => Topology::Proxied,
            _ => Topology::Direct,
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Pattern::Pushpull => Family::Push,
            Pattern::DealerRouter => Family::Dealer,
            Pattern::ReqrepLatency => Family::ReqRep,
            Pattern::Pubsub
            | Pattern::Proxy
            | Pattern::Espresso
            | Pattern::Lvc
            | Pattern::Blackbox => Family::PubSub,
        }
    }

    /// The implementations this pattern is measured on.
    pub(crate) fn impls(self) -> &'static [Impl] {
        &[Impl::Zeromq, Impl::Libzmq]
    }

    /// True if the sender's RESULT carries the headline numbers (latency).
    pub(crate) fn sender_measures(self) -> bool {
        self.family() == Family::ReqRep
    }
}

/// Whether the pub-sub path may drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Mode {
    /// Nothing on the pub-sub path drops: libzmq sockets at HWM 0
    /// (unlimited queues), this crate's proxies in `SlowPolicy::Block`.
    Lossless,
    /// Defaults: libzmq at HWM 1000 (PUB/XPUB drop when full), this crate's
    /// proxies in `SlowPolicy::Drop`.
    Lossy,
}

impl Mode {
    /// The JSON / table name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Lossless => "lossless",
            Mode::Lossy => "lossy",
        }
    }
}

/// One run to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Case {
    /// The stack of the sender and the receiver.
    pub(crate) peers: Impl,
    /// The middle (proxy) of proxied patterns; for the others the same as
    /// `peers` (the whole stack).
    pub(crate) imp: Impl,
    pub(crate) pattern: Pattern,
    pub(crate) size: usize,
    pub(crate) mode: Mode,
}

/// The cases of one pattern and size: direct patterns once per stack in
/// `peers`; proxied ones for every `peers` x middle (`impls`), the middles
/// of one set of peers back to back.
fn cases_of(
    pattern: Pattern,
    size: usize,
    peers: &[Impl],
    impls: &[Impl],
    mode: Mode,
) -> Vec<Case> {
    let mut out = Vec::new();
    for &p in peers {
        let middles: Vec<Impl> = match pattern.topology() {
            Topology::Direct => vec![p],
            Topology::Proxied => impls.to_vec(),
        };
        for imp in middles.into_iter().filter(|i| pattern.impls().contains(i)) {
            out.push(Case {
                peers: p,
                imp,
                pattern,
                size,
                mode,
            });
        }
    }
    out
}

/// The runs, interleaved: for each repetition, each pattern and size,
/// every implementation (and set of peers) back to back (A B C A B C ...),
/// the order reversed every other repetition, so slow drifts of a shared
/// machine hit every side alike.
pub(crate) fn plan(
    patterns: &[Pattern],
    sizes: &[usize],
    peers: &[Impl],
    impls: &[Impl],
    mode: Mode,
    runs: usize,
) -> Vec<Case> {
    let mut out = Vec::new();
    for rep in 0..runs {
        for &pattern in patterns {
            for &size in sizes {
                let mut these = cases_of(pattern, size, peers, impls, mode);
                if rep % 2 == 1 {
                    these.reverse();
                }
                out.extend(these);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_interleaves_and_alternates() {
        let both = [Impl::Zeromq, Impl::Libzmq];
        let p = plan(
            &[Pattern::Pubsub],
            &[16, 256],
            &both,
            &both,
            Mode::Lossless,
            2,
        );
        let order: Vec<_> = p.iter().map(|c| (c.imp, c.size)).collect();
        assert_eq!(
            order,
            [
                (Impl::Zeromq, 16),
                (Impl::Libzmq, 16),
                (Impl::Zeromq, 256),
                (Impl::Libzmq, 256),
                (Impl::Libzmq, 16),
                (Impl::Zeromq, 16),
                (Impl::Libzmq, 256),
                (Impl::Zeromq, 256),
            ]
        );
        assert!(p
            .iter()
            .all(|c| c.peers == c.imp && c.mode == Mode::Lossless));
    }

    #[test]
    fn proxied_patterns_swap_only_the_middle() {
        let p = plan(
            &[Pattern::Proxy],
            &[16],
            &[Impl::Libzmq, Impl::Zeromq],
            &[Impl::Libzmq, Impl::Zeromq],
            Mode::Lossy,
            1,
        );
        let order: Vec<_> = p.iter().map(|c| (c.peers, c.imp)).collect();
        assert_eq!(
            order,
            [
                (Impl::Libzmq, Impl::Libzmq),
                (Impl::Libzmq, Impl::Zeromq),
                (Impl::Zeromq, Impl::Libzmq),
                (Impl::Zeromq, Impl::Zeromq),
            ]
        );
        assert!(p.iter().all(|c| c.mode == Mode::Lossy));
    }

    #[test]
    fn names_match_clap_values() {
        for p in Pattern::ALL {
            let v = p.to_possible_value().unwrap();
            assert_eq!(v.get_name(), p.name());
        }
    }
}
