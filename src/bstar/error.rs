//! The Binary Star module's one error type.

use std::path::PathBuf;

use super::fsm::FatalCause;
use crate::endpoint::EndpointError;

/// Failures of the Binary Star driver, its epoch file and its handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BstarError {
    /// An endpoint could not be parsed or bound.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The `zeromq` crate reported an error on a socket.
    #[error(transparent)]
    Zmq(#[from] zeromq::ZmqError),
    /// The configuration is unusable (the message says why).
    #[error("invalid Binary Star configuration: {0}")]
    Config(String),
    /// Reading or writing the epoch file failed.
    #[error("epoch file {path}: {source}")]
    EpochIo {
        /// The epoch file.
        path: PathBuf,
        /// What the file system reported.
        source: std::io::Error,
    },
    /// The epoch file does not hold one decimal number.
    #[error("epoch file {path} is corrupt: expected one decimal number, found {found:?}")]
    EpochCorrupt {
        /// The epoch file.
        path: PathBuf,
        /// Its first bytes, lossily as text.
        found: String,
    },
    /// The state machine stopped the server ("the only way out of ACTIVE
    /// is death").
    #[error("binary star stopped: fatal error - {0}")]
    Fatal(FatalCause),
    /// The server's task has stopped, so the request cannot be answered.
    #[error("the binary star server has stopped")]
    Stopped,
    /// The server's task panicked; its final state is lost.
    #[error("the binary star task panicked")]
    Panicked,
}
