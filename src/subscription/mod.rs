//! The subscription model of ZeroMQ pub-sub, below both the wire
//! ([`zmtp`](crate::zmtp)) and the proxies ([`pubsub`](crate::pubsub)):
//! subscription frames ([`SubEvent`]), topic-prefix matching, and the
//! reference-counted [`Registry`] that says which frames a proxy forwards
//! upstream. Pure: no sockets, no clock.

mod frame;
mod registry;

pub use frame::{prefix_matches, SubEvent, SubscriptionError};
pub use registry::{matches_any, Registry, Upstream};
