//! Errors of the Black Box sharded subscriber.

use crate::endpoint::EndpointError;

/// What can stop a Black Box from starting or finishing cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlackBoxError {
    /// A subscriber socket has no endpoint.
    #[error("subscriber socket {0} has no endpoint")]
    NoEndpoint(usize),
    /// Zero workers.
    #[error("the number of workers must be at least 1")]
    ZeroWorkers,
    /// A zero queue depth.
    #[error("the worker queue depth must be at least 1")]
    ZeroQueueDepth,
    /// An endpoint could not be bound or connected.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A subscription could not be sent.
    #[error("socket error: {0}")]
    Socket(#[from] zeromq::ZmqError),
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// A worker's handler panicked; its queued messages were lost (they
    /// are not counted as delivered).
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    /// An I/O task (or the task supervising them) panicked: the messages
    /// it had read but not handed over were lost.
    #[error("a black box I/O task panicked")]
    Panicked,
}
