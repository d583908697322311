//! A minimal ZMTP 3.0 implementation of the one socket the `zeromq` crate
//! cannot provide well for proxies: an XPUB that isolates slow subscribers.
//!
//! The `zeromq` crate's XPUB writes every message inline to every matching
//! subscriber, so one subscriber that stops reading blocks all of them; it
//! reports no disconnects (so subscriptions of vanished subscribers are never
//! cancelled upstream) and cannot send to one subscriber (so a Last Value
//! Cache replay reaches everyone). [`XPubServer`] fixes all three while
//! staying wire-compatible with libzmq: it is what the [`pubsub`](crate::pubsub)
//! proxies use for their backend. Everything else in this crate uses the
//! `zeromq` crate's sockets.

pub mod codec;
mod conn;
mod xpub;

pub use conn::Shared;
pub use xpub::{Delivery, PeerId, XPubEvent, XPubOptions, XPubServer};
