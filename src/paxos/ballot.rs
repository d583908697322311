//! Ballots: `(round, node)` pairs, totally ordered round-first, so two
//! proposers never share one.

use std::fmt;

use crate::transport::NodeId;

/// A log position.
pub type Slot = u64;

/// A ballot (proposal number). `Ballot::ZERO` is below every real ballot,
/// whose rounds start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Ballot {
    /// The round, compared first.
    pub round: u64,
    /// The proposer, breaking ties.
    pub node: NodeId,
}

impl Ballot {
    /// Below every real ballot: what an acceptor has promised at birth.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// A ballot of `node` in `round`.
    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }

    /// The smallest ballot of `node` above `self`.
    pub fn next_for(self, node: NodeId) -> Self {
        Ballot::new(self.round + 1, node)
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_dominate_then_nodes_break_ties() {
        let a = Ballot::new(1, NodeId(9));
        let b = Ballot::new(2, NodeId(0));
        assert!(Ballot::ZERO < a && a < b);
        assert!(Ballot::new(2, NodeId(1)) > b);
        assert_eq!(a.next_for(NodeId(3)), Ballot::new(2, NodeId(3)));
        assert_eq!(b.to_string(), "2.0");
    }
}
