//! A minimal ZMTP 3.0 implementation of the sockets the `zeromq` crate
//! cannot provide well: an XPUB that isolates slow subscribers, and an XSUB
//! that bounds what a publisher can make it buffer and can also act as a
//! PULL on the same endpoint.
//!
//! The `zeromq` crate's XPUB writes every message inline to every matching
//! subscriber, so one subscriber that stops reading blocks all of them; it
//! reports no disconnects (so subscriptions of vanished subscribers are never
//! cancelled upstream) and cannot send to one subscriber (so a Last Value
//! Cache replay reaches everyone). [`XPubServer`] fixes all three. The
//! `zeromq` crate's XSUB reads a whole frame into memory whatever its
//! announced size (a 1 GiB frame costs 1 GB); [`XSubServer`] refuses a frame
//! over its limit from the header, before the body is read, and either
//! disconnects the peer or skips the message unread
//! ([`XSubOptions::skip_oversized`]). A `zeromq` socket has one type and
//! refuses every peer that does not match it; [`XSubServer`] with
//! [`XSubOptions::accept_push`] answers each peer according to the
//! `Socket-Type` of its READY (PUB/XPUB as XSUB, sent the subscriptions;
//! PUSH as PULL; anything else refused), so publishers and pushers share
//! one endpoint.
//!
//! Both stay wire-compatible with libzmq. The [`pubsub`](crate::pubsub)
//! proxies use them for their backend and frontend, and the
//! [`clone`](crate::clone) server's collector is the XSUB with PUSH peers
//! accepted (Guide ch. 5: CHP's PUB clients and the PUSH clients of Clone
//! models 3-5 on one port). The message
//! [`transport`](crate::transport::zmq) runs its ROUTER and DEALERs on the
//! same connections (`conn` with the ROUTER and DEALER roles, `net`'s
//! accept and connect loops): the `zeromq` crate reserves the length a
//! frame header announces before reading the body, so one header
//! announcing 1 TiB aborts the process. The other patterns use the
//! `zeromq` crate's sockets.

pub mod codec;
pub(crate) mod conn;
pub(crate) mod net;
mod xpub;
mod xsub;

pub use conn::{CloseCause, PeerSocketType, Shared};
pub use xpub::{
    Delivery, PeerId, SlowPolicy, SubscriptionLimit, XPubEvent, XPubOptions, XPubServer,
    SUBSCRIPTION_OVERHEAD,
};
pub use xsub::{XSubEvent, XSubOptions, XSubServer};
