//! Errors of the Clone pattern: malformed CHP input ([`KvMsgError`],
//! [`PropertyError`]) and failures of the server and client tasks and
//! handles ([`CloneError`]).

use crate::bstar::{BstarError, FatalCause};
use crate::endpoint::EndpointError;

/// Why a multipart message is not a valid kvmsg or CHP command.
///
/// Every variant is the peer's fault; servers and clients count and log
/// these and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvMsgError {
    /// The message does not have the number of frames the command needs.
    #[error("expected {expected} frames, got {got}")]
    FrameCount {
        /// What the command needs, e.g. `"5"` or `"1 or 2"`.
        expected: &'static str,
        /// What arrived.
        got: usize,
    },
    /// The sequence frame is not exactly 8 bytes.
    #[error("sequence frame must be 8 bytes, got {0}")]
    BadSequence(usize),
    /// The UUID frame is neither empty nor 16 bytes.
    #[error("uuid frame must be empty or 16 bytes, got {0}")]
    BadUuid(usize),
    /// The key frame is empty.
    #[error("empty key")]
    EmptyKey,
    /// The key (or subtree) is longer than [`KEY_MAX`](super::KEY_MAX).
    #[error("key of {0} bytes exceeds the 255-byte limit")]
    KeyTooLong(usize),
    /// The properties frame is not `name=value\n` lines of UTF-8 text.
    #[error("bad properties frame: {0}")]
    BadProperties(PropertyError),
    /// The first frame names no command this socket accepts.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A client tried to set a key that is a CHP command name.
    #[error("key {0:?} is reserved by CHP")]
    ReservedKey(String),
}

/// Why a property name, value or frame is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PropertyError {
    /// The frame is not valid UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A line has no `=`.
    #[error("line {0:?} has no '='")]
    MissingEquals(String),
    /// The name is empty or contains `=` or a newline.
    #[error("invalid property name {0:?}")]
    BadName(String),
    /// The value contains a newline.
    #[error("property value for {0:?} contains a newline")]
    BadValue(String),
    /// The encoded frame would exceed [`PROPS_MAX`](super::PROPS_MAX).
    #[error("properties frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// Failures of the Clone server and client tasks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloneError {
    /// An endpoint could not be parsed, bound or connected.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The `zeromq` crate reported an error.
    #[error(transparent)]
    Zmq(#[from] zeromq::ZmqError),
    /// The key or a property is not valid CHP.
    #[error(transparent)]
    KvMsg(#[from] KvMsgError),
    /// A client may talk to at most [`SERVER_MAX`](super::SERVER_MAX)
    /// servers (a primary and a backup).
    #[error("too many servers (max. {0})")]
    TooManyServers(usize),
    /// The subtree must be set before the first `connect`.
    #[error("the subtree must be set before connecting")]
    SubtreeAfterConnect,
    /// The client's background task has stopped (cancelled or failed), so
    /// a command to it cannot be carried out.
    #[error("the clone client has stopped")]
    Stopped,
    /// A Binary Star piece of a pair server failed (its state link, its
    /// epoch file).
    #[error(transparent)]
    BinaryStar(#[from] BstarError),
    /// A pair server stopped on a fatal Binary Star condition (both
    /// servers active or both passive, or fenced by a newer epoch): "the
    /// only way out of ACTIVE is death". Restart it to rejoin as passive.
    #[error("fatal Binary Star error: {0:?}")]
    Fatal(FatalCause),
    /// The server's or client's task panicked; its final state is lost.
    #[error("the clone task panicked")]
    Panicked,
}
