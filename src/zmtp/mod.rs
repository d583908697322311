//! A minimal ZMTP 3.0 implementation of the two sockets the `zeromq` crate
//! cannot provide well for proxies: an XPUB that isolates slow subscribers,
//! and an XSUB that bounds what a publisher can make it buffer.
//!
//! The `zeromq` crate's XPUB writes every message inline to every matching
//! subscriber, so one subscriber that stops reading blocks all of them; it
//! reports no disconnects (so subscriptions of vanished subscribers are never
//! cancelled upstream) and cannot send to one subscriber (so a Last Value
//! Cache replay reaches everyone). [`XPubServer`] fixes all three. The
//! `zeromq` crate's XSUB reads a whole frame into memory whatever its
//! announced size (a 1 GiB frame costs 1 GB); [`XSubServer`] refuses a frame
//! over its limit from the header, before the body is read. Both stay
//! wire-compatible with libzmq: they are what the [`pubsub`](crate::pubsub)
//! proxies use for their backend and frontend. Everything else in this
//! crate uses the `zeromq` crate's sockets.

pub mod codec;
mod conn;
mod net;
mod xpub;
mod xsub;

pub use conn::{CloseCause, PeerSocketType, Shared};
pub use xpub::{
    Delivery, PeerId, SubscriptionLimit, XPubEvent, XPubOptions, XPubServer, SUBSCRIPTION_OVERHEAD,
};
pub use xsub::{XSubEvent, XSubOptions, XSubServer};
