//! Clone: a key-value state shared by many clients through one server,
//! speaking the Clustered Hashmap Protocol (CHP, ZeroMQ RFC 12) so that
//! libzmq programs written from the Guide interoperate.
//!
//! Guide ch. 5, "Reliable Pub-Sub (Clone Pattern)": the server of models
//! 3-5 (`clonesrv3` to `clonesrv5`) with a collector that takes both CHP's
//! PUB clients and the PUSH clients of models 3-5; the highly available
//! pair of model 6 (`clonesrv6`, [`CloneServer::start_pair`] with a
//! [`ClonePairConfig`]): two servers joined by Binary Star
//! ([`crate::bstar`]), the passive one following the active with a pending
//! list and taking over on a client's vote, with epoch fencing and UUID
//! de-duplication; and the client agent of the `clone` class
//! (`clonecli6`'s, with failover to the second server, acknowledgements
//! and re-sending of unacknowledged updates). Socket topology (server port
//! `P`):
//!
//! ```text
//!  client DEALER ──ICANHAZ?──▶ ROUTER :P    (snapshots: KVSYNC…, KTHXBAI)
//!  client SUB    ◀──KVPUB/HUGZ── PUB  :P+1  (sequenced updates, heartbeats)
//!  client PUB    ──KVSET──────▶ XSUB :P+2  (collector; a PUSH client
//!      or PUSH   ──KVSET──────▶ PULL :P+2   is answered as PULL)
//! ```
//!
//! Every public type is reachable from this module:
//! - the codec: [`KvMsg`], [`Properties`], the CHP commands ([`Icanhaz`],
//!   [`SnapshotReply`], [`Update`]) and their errors ([`KvMsgError`],
//!   [`PropertyError`]);
//! - the server: the pure [`Store`] and [`SnapshotCursor`], and the
//!   handle [`CloneServer`] ([`CloneServerConfig`], [`CloneServerStats`],
//!   [`CollectorLimits`]; for a pair [`ClonePairConfig`] and
//!   [`ClonePairStats`]);
//! - the client: the pure [`Agent`], and the handle [`CloneClient`]
//!   ([`CloneClientConfig`], [`CollectorSocket`], [`CloneClientStats`],
//!   [`Change`], [`Phase`]).
//!
//! Both handles follow the crate's one shape (crate docs, "Using a
//! pattern"): `start(config, &parent).await`, `stats()`,
//! `shutdown(self).await` returning the final stats, and drop = stop.
//! What a peer can make them hold is bounded: see [`StoreConfig`],
//! [`CollectorLimits`], [`AgentConfig`], [`CloneClientConfig`] and
//! `patterns/clone.md`.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::clone::{
//!     CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, ServerAddr,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let token = CancellationToken::new();
//! let server = CloneServer::start(CloneServerConfig::on_port("*", 5556)?, &token).await?;
//! let client = CloneClient::start(CloneClientConfig::new(), &token).await?;
//! client.subtree("/client/").await?;
//! client.connect("tcp://localhost:5556".parse::<ServerAddr>()?).await?;
//! client.wait_active().await?;
//! client.set("/client/answer", "42", None).await?;
//! let mut changes = client.changes();
//! if let Ok(change) = changes.recv().await {
//!     println!("{:?} = {:?}", change.key(), change.value());
//! }
//! let client_stats = client.shutdown().await?;
//! let server_stats = server.shutdown().await?;
//! println!("{} keys here, {} updates there", client_stats.keys, server_stats.store.updates);
//! # Ok(()) }
//! ```
//!
//! See `patterns/clone.md` for the wire contract, guarantees and limits.

mod agent;
mod client;
mod collector;
mod error;
mod inflight;
mod kvmsg;
mod link;
mod pair;
mod pending;
mod proto;
mod server;
mod snapshot;
mod store;

pub use agent::{kvset, Agent, AgentAction, AgentConfig, AgentStats, Change, ChangeCause, Phase};
pub use client::{CloneClient, CloneClientConfig, CloneClientStats, SERVER_MAX};
pub use collector::{CollectorLimits, COLLECTOR_MAX_MESSAGE};
pub use error::{CloneError, KvMsgError, PropertyError};
pub use kvmsg::{KvMsg, Properties, Uuid, KEY_MAX, PROPS_MAX, TTL};
pub use link::{CollectorSocket, ServerAddr};
pub use pair::{ClonePairConfig, ClonePairStats};
pub use proto::{Icanhaz, SnapshotReply, Update, EPOCH, HUGZ, ICANHAZ, INSTANCE, KTHXBAI};
pub use server::{CloneServer, CloneServerConfig, CloneServerEndpoints, CloneServerStats};
pub use snapshot::SnapshotCursor;
pub use store::{
    Role, Store, StoreAction, StoreConfig, StoreEntry, StoreMap, StoreStats, ENTRY_OVERHEAD,
};
