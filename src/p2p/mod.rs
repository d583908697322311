//! P2P: a peer-to-peer file-sharing node (the "file sharing with XML-RPC"
//! exercise rebuilt on this crate's message transport), the third demo that
//! consumes [`transport`](crate::transport).
//!
//! Every node is client and server at once. It has a URL (its ROUTER's
//! ZeroMQ endpoint), a shared directory (a [`Share`]: [`DirShare`] on disk,
//! [`MemShare`] in memory), a secret, and a set of known peers. Topology
//! and transport are the consensus demos': one ROUTER per node, one
//! DEALER per known peer ([`ZmqTransport`](crate::transport::zmq::ZmqTransport)),
//! one opaque frame per message ([`msg`] is the codec, documented frame by
//! frame). A node's [`NodeId`] is derived from
//! its URL ([`node_id_for_url`]), so a peer that learns a URL can address
//! it and a libzmq program can compute its own routing identity.
//!
//! - **Search**: a query has a random 64-bit id and a history of the URLs
//!   it went through. A node answers with its own hits and forwards the
//!   query to every known peer not in the history while the history is
//!   shorter than [`P2pConfig::history_limit`] (6). Each query id is
//!   handled once per node (a repeat is answered at once with no hits),
//!   so cycles end. A node never waits for an answer: the query is state,
//!   and a timer answers upstream with what arrived when the time budget
//!   runs out. Hits (name, size, hash, provider URL) are all collected
//!   and travel back along the query's path.
//! - **Fetch**: [`P2pNode::fetch`] compares the secret in constant time
//!   (wrong: [`P2pError::AccessDenied`], code 200), searches, then
//!   downloads in chunks from every provider of the chosen hash with a
//!   credit window (the Guide's chapter 7 file-transfer model: the
//!   receiver asks for at most [`P2pConfig::credit`] chunks at a time).
//!   Each chunk is checked against the provider's manifest of per-chunk
//!   SHA-256 hashes, written to a `.part` file, and the file is renamed
//!   only once the SHA-256 of the whole content equals the hash searched
//!   for. A `.part` left by an interrupted download is verified chunk by
//!   chunk and the download resumes after its last good chunk. A corrupt
//!   chunk is asked again from another provider and the provider counted;
//!   a download that fails against one provider's manifest starts over
//!   from another's ([`P2pStats::bad_manifests`]).
//! - **Peers** are dropped after [`P2pConfig::peer_failures`] consecutive
//!   failures (timeouts, corrupt chunks), never for a refusal; the driver
//!   then closes the connection ([`P2pNode::take_disconnects`]).
//!
//! # Limits
//!
//! | Limit | Default | What a peer gets beyond it |
//! |---|---|---|
//! | [`P2pConfig::max_file`]: largest file served and accepted | 1 GiB | [`code::TOO_LARGE`] |
//! | [`P2pConfig::max_transfers_per_peer`]: files one peer downloads from this node at once | 4 | [`code::BUSY`] |
//! | [`P2pConfig::max_queries_per_peer`]: queries of one peer this node is working on | 16 | [`code::BUSY`] |
//! | [`P2pConfig::query_rate`]: queries per second from one peer (burst of the same size) | 50 | [`code::RATE`] |
//! | [`P2pConfig::max_message`]: largest message | 16 MiB | dropped, counted in `garbage` |
//! | [`P2pConfig::max_peers`]: peers known (a HELLO adds its sender) | 1024 | a HELLO from a new peer is ignored, counted in `peers_refused` |
//! | [`P2pConfig::chunk_size`]: bytes per chunk asked for | 256 KiB | a provider serves at most a quarter of `max_message` per chunk |
//!
//! Every refusal is counted in [`P2pStats`] and answered with an ERROR
//! frame; every other peer is still served.
//!
//! Layout: [`msg`] (wire codec), `share` (the [`Share`] trait, the path
//! guard, [`DirShare`], [`MemShare`]), `config`, `node` (the sans-IO
//! [`P2pNode`]), `transfer` (one download), `handle` ([`P2p`]).

mod config;
mod handle;
pub mod msg;
mod node;
mod share;
mod transfer;

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub use config::P2pConfig;
pub use handle::{FetchDone, P2p};
pub use node::{FetchId, P2pEvent, P2pNode, P2pStats};
pub use share::{check_name, DirShare, MemShare, Share};

use crate::transport::NodeId;

/// The error codes that travel in ERROR frames.
pub mod code {
    /// "Could not handle the query": not found anywhere (or refused by the
    /// path guard, which never says which).
    pub const UNHANDLED: u32 = 100;
    /// "Access denied": a wrong secret.
    pub const ACCESS_DENIED: u32 = 200;
    /// "File too large": over [`max_file`](super::P2pConfig::max_file).
    pub const TOO_LARGE: u32 = 300;
    /// "Busy": too many concurrent transfers or queries from this peer.
    pub const BUSY: u32 = 301;
    /// "Query rate exceeded".
    pub const RATE: u32 = 302;
    /// "Transfer failed": no provider could deliver verified content.
    pub const TRANSFER_FAILED: u32 = 400;

    /// The message that goes with a code.
    pub fn message(code: u32) -> &'static str {
        match code {
            UNHANDLED => "Could not handle the query",
            ACCESS_DENIED => "Access denied",
            TOO_LARGE => "File too large",
            BUSY => "Busy",
            RATE => "Query rate exceeded",
            TRANSFER_FAILED => "Transfer failed",
            _ => "Unknown error",
        }
    }
}

/// The SHA-256 of a file's content (or of a chunk). `Display` is lowercase
/// hex; `FromStr` parses 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(Sha256::digest(data).into())
    }
}

/// Incremental SHA-256, for whole files read in pieces.
#[derive(Clone, Debug, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The hash of everything fed.
    pub fn finish(self) -> Hash {
        Hash(self.0.finalize().into())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = P2pError;
    fn from_str(s: &str) -> Result<Self, P2pError> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(P2pError::BadHash);
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| P2pError::BadHash)?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| P2pError::BadHash)?;
        }
        Ok(Hash(out))
    }
}

/// A file a share offers: its name (relative to the share), size and hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// Path relative to the shared directory, `/`-separated.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub hash: Hash,
}

/// What a fetch or search asks for: a name or a content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A file name (relative path).
    Name(String),
    /// A content hash.
    Hash(Hash),
}

impl Key {
    /// A 64-hex-digit string is a hash; anything else a name.
    pub fn parse(s: &str) -> Key {
        s.parse()
            .map_or_else(|_| Key::Name(s.to_owned()), Key::Hash)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Name(n) => f.write_str(n),
            Key::Hash(h) => write!(f, "{h}"),
        }
    }
}

/// The routing identity rule: a node's id is the first four bytes of the
/// SHA-256 of its URL (exactly as given, e.g. `tcp://127.0.0.1:5601`),
/// read big-endian. On ZeroMQ it travels as `n<id>` in decimal.
pub fn node_id_for_url(url: &str) -> NodeId {
    let h = Hash::of(url.as_bytes());
    NodeId(u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]]))
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Errors of the P2P node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// The file was found nowhere (code 100), or the path guard refused
    /// its name (which looks the same on purpose).
    #[error("Could not handle the query")]
    Unhandled,
    /// A wrong secret (code 200).
    #[error("Access denied")]
    AccessDenied,
    /// A peer (or this node) refused with an ERROR code.
    #[error("{} (code {code})", code::message(*code))]
    Refused {
        /// The wire code (see [`code`]).
        code: u32,
    },
    /// Not 64 hex digits.
    #[error("not a SHA-256 hash in hex")]
    BadHash,
    /// The path guard refused a name on the writing side.
    #[error("refused path")]
    BadPath,
    /// Verification of a chunk, a `.part` file or a whole file failed.
    #[error("content does not match its hash")]
    Corrupt,
    /// A file-system operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// The node's task is gone (stopped or panicked).
    #[error("the node has stopped")]
    Stopped,
    /// The node's task panicked.
    #[error("the node's task panicked")]
    TaskPanicked,
}

impl P2pError {
    /// The wire code of this error.
    pub fn code(&self) -> u32 {
        match self {
            P2pError::Unhandled | P2pError::BadPath => code::UNHANDLED,
            P2pError::AccessDenied => code::ACCESS_DENIED,
            P2pError::Refused { code } => *code,
            _ => code::TRANSFER_FAILED,
        }
    }

    /// The error for a wire code.
    pub fn from_code(c: u32) -> Self {
        match c {
            code::UNHANDLED => P2pError::Unhandled,
            code::ACCESS_DENIED => P2pError::AccessDenied,
            c => P2pError::Refused { code: c },
        }
    }
}
