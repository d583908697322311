//! Errors of the Suicidal Snail subscriber and publisher.
//!
//! A croak is an error on purpose: [`SnailError::CannotKeepUp`] carries the
//! numbers, and [`SnailError::exit_code`] turns it into the process's exit
//! status, as the Guide's subscriber dies with a non-zero status.

use std::process::ExitCode;

use super::detector::Alarm;
use super::envelope::EnvelopeError;
use crate::endpoint::EndpointError;

/// Exit status of a process whose subscriber croaked (`EX_TEMPFAIL`-like
/// codes are avoided on purpose: a croak needs a human, not a retry).
pub const CROAK_EXIT_CODE: u8 = 3;

/// What can stop a snail subscriber or publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnailError {
    /// The detector fired and the policy (or the recovery hook) said abort.
    #[error("subscriber cannot keep up: {0}")]
    CannotKeepUp(Box<Alarm>),
    /// The socket could not be set up (subscribing, sending).
    #[error("socket error: {0}")]
    Socket(#[from] zeromq::ZmqError),
    /// An endpoint could not be bound or connected.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A stamp could not be built (publisher id too long).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The subscriber's config has no endpoint.
    #[error("no endpoint configured: give SnailConfig::new at least one")]
    NoEndpoint,
    /// The handle's child token was cancelled (the parent token was): a
    /// stopped subscriber or publisher receives and sends nothing more.
    #[error("stopped: the cancellation token was cancelled")]
    Stopped,
}

impl SnailError {
    /// The alarm behind a croak.
    pub fn alarm(&self) -> Option<&Alarm> {
        match self {
            SnailError::CannotKeepUp(a) => Some(a),
            _ => None,
        }
    }

    /// The process exit status for this error: [`CROAK_EXIT_CODE`] for a
    /// croak, 1 for anything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            SnailError::CannotKeepUp(_) => ExitCode::from(CROAK_EXIT_CODE),
            _ => ExitCode::FAILURE,
        }
    }
}
