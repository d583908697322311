//! The multi-process cluster's JSON configuration (the Raft diary's plan:
//! the domain at top level, then the list of machines), used by the `raft`
//! example's `config`, `serve`, `put`, `get`, `delete` and `status`
//! subcommands (example-private code, not library API).
//!
//! ```json
//! {
//!   "host": "127.0.0.1",
//!   "dir": "/tmp/zpatterns-raft",
//!   "nodes": [ { "id": 1, "port": 7101 }, { "id": 2, "port": 7102 } ]
//! }
//! ```
//!
//! `host` (alias `domain`) is where every node listens and is reached;
//! `dir` holds one WAL directory per node (`dir/node-<id>`); optional
//! `heartbeat_ms`, `election_timeout_ms` (`[min, max]`) and
//! `snapshot_every` tune the nodes and must be the same for all of them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zpatterns::transport::NodeId;

/// Node ids must stay below this, so a client can pick an id above every
/// replica's.
pub(crate) const MAX_NODE_ID: u64 = (1 << 31) - 1;

/// The file as written (ports and ids still unchecked).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    /// Where every node listens and is reached (an IP address or a DNS
    /// name), at top level for all machines.
    #[serde(alias = "domain")]
    pub(crate) host: String,
    /// Directory of the nodes' WALs (`dir/node-<id>`).
    pub(crate) dir: PathBuf,
    /// The machines.
    pub(crate) nodes: Vec<NodeEntry>,
    /// Leader heartbeat period (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) heartbeat_ms: Option<u64>,
    /// Randomized election timeout `[min, max]` (default `[300, 600]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) election_timeout_ms: Option<[u64; 2]>,
    /// Snapshot the state machine every this many entries (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot_every: Option<u64>,
}

/// One machine of the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeEntry {
    /// Its node id.
    pub(crate) id: u64,
    /// Its ROUTER's TCP port.
    pub(crate) port: u64,
}

/// A checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cluster {
    /// Where the nodes listen.
    pub(crate) host: String,
    /// WAL directory.
    pub(crate) dir: PathBuf,
    /// `(id, port)`, in file order.
    pub(crate) nodes: Vec<(NodeId, u16)>,
    /// Heartbeat period.
    pub(crate) heartbeat: Duration,
    /// Election timeout range.
    pub(crate) election: (Duration, Duration),
    /// Snapshot period in entries.
    pub(crate) snapshot_every: u64,
}

/// What is wrong with a configuration file.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// Not JSON, or not the expected shape (serde's message: a missing or
    /// unknown field, a wrong type, with line and column).
    Syntax(String),
    /// `nodes` is empty.
    NoNodes,
    /// The host is empty, a wildcard or contains a `:` or `/`.
    BadHost(String),
    /// Two entries share an id.
    DuplicateId(u64),
    /// Two entries share a port.
    DuplicatePort(u64),
    /// A port outside 1..=65535.
    BadPort { id: u64, port: u64 },
    /// An id above [`MAX_NODE_ID`].
    BadId(u64),
    /// The timing settings are unusable.
    BadTiming(String),
    /// `--node` names no entry.
    UnknownNode(u64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax(e) => write!(f, "malformed configuration: {e}"),
            ConfigError::NoNodes => write!(f, "the node list is empty: \"nodes\" needs at least one {{\"id\", \"port\"}} entry"),
            ConfigError::BadHost(h) => write!(
                f,
                "host {h:?} is not usable: give the address every node listens on and is reached at (e.g. \"127.0.0.1\"), without port or wildcard"
            ),
            ConfigError::DuplicateId(id) => write!(f, "duplicate node id {id}: every node needs its own id"),
            ConfigError::DuplicatePort(p) => write!(f, "duplicate port {p}: two nodes on one host cannot share a port"),
            ConfigError::BadPort { id, port } => {
                write!(f, "node {id}: port {port} is out of range (1-65535)")
            }
            ConfigError::BadId(id) => write!(f, "node id {id} is too large (at most {MAX_NODE_ID})"),
            ConfigError::BadTiming(why) => write!(f, "bad timing settings: {why}"),
            ConfigError::UnknownNode(id) => write!(f, "unknown node {id}: it is not in the configuration's node list"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ClusterFile {
    /// `n` nodes with ids 1..=n on ports `base..base+n` of `host`.
    pub(crate) fn generate(n: u16, base: u16, host: &str, dir: &Path) -> ClusterFile {
        ClusterFile {
            host: host.to_owned(),
            dir: dir.to_owned(),
            nodes: (0..n)
                .map(|i| NodeEntry {
                    id: u64::from(i) + 1,
                    port: u64::from(base) + u64::from(i),
                })
                .collect(),
            heartbeat_ms: None,
            election_timeout_ms: None,
            snapshot_every: None,
        }
    }
}

impl Cluster {
    /// Parses and checks a configuration.
    pub(crate) fn parse(text: &str) -> Result<Cluster, ConfigError> {
        let file: ClusterFile =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Cluster::check(file)
    }

    /// Checks a parsed file.
    pub(crate) fn check(file: ClusterFile) -> Result<Cluster, ConfigError> {
        let host = file.host.trim();
        if host.is_empty() || host == "*" || host.contains(['/', ':', ' ']) {
            return Err(ConfigError::BadHost(file.host.clone()));
        }
        if file.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        let (mut ids, mut ports) = (BTreeSet::new(), BTreeSet::new());
        let mut nodes = Vec::new();
        for n in &file.nodes {
            if n.id > MAX_NODE_ID {
                return Err(ConfigError::BadId(n.id));
            }
            let port =
                u16::try_from(n.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or(ConfigError::BadPort {
                        id: n.id,
                        port: n.port,
                    })?;
            if !ids.insert(n.id) {
                return Err(ConfigError::DuplicateId(n.id));
            }
            if !ports.insert(n.port) {
                return Err(ConfigError::DuplicatePort(n.port));
            }
            nodes.push((NodeId(n.id as u32), port));
        }
        let heartbeat = Duration::from_millis(file.heartbeat_ms.unwrap_or(50));
        let [lo, hi] = file.election_timeout_ms.unwrap_or([300, 600]);
        let election = (Duration::from_millis(lo), Duration::from_millis(hi));
        if heartbeat.is_zero() {
            return Err(ConfigError::BadTiming(
                "heartbeat_ms must be at least 1".into(),
            ));
        }
        if lo > hi || election.0 <= heartbeat {
            return Err(ConfigError::BadTiming(format!(
                "election_timeout_ms [{lo}, {hi}] must be a range [min, max] with min above heartbeat_ms ({})",
                heartbeat.as_millis()
            )));
        }
        Ok(Cluster {
            host: host.to_owned(),
            dir: file.dir,
            nodes,
            heartbeat,
            election,
            snapshot_every: file.snapshot_every.unwrap_or(1000),
        })
    }

    /// Reads and checks the file at `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Cluster> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Cluster::parse(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    /// The node ids.
    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|(id, _)| *id).collect()
    }

    /// The entry of node `id`.
    pub(crate) fn node(&self, id: u64) -> Result<(NodeId, u16), ConfigError> {
        self.nodes
            .iter()
            .copied()
            .find(|(n, _)| u64::from(n.0) == id)
            .ok_or(ConfigError::UnknownNode(id))
    }

    /// The ZeroMQ endpoint of a port on the host.
    pub(crate) fn endpoint(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.host)
    }

    /// Node `id`'s WAL file (`dir/node-<id>/raft.wal`).
    pub(crate) fn wal_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{}", id.0)).join("raft.wal")
    }
}
