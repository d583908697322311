//! Clone: a key-value state shared by many clients through one server,
//! speaking the Clustered Hashmap Protocol (CHP, ZeroMQ RFC 12) so that
//! libzmq programs written from the Guide interoperate.
//!
//! Guide chapter 5, models 1-5 (model 6, Binary Star, comes later).
//! Socket topology (server port `P`):
//!
//! ```text
//!  client DEALER ──ICANHAZ?──▶ ROUTER :P    (snapshots: KVSYNC…, KTHXBAI)
//!  client SUB    ◀──KVPUB/HUGZ── PUB  :P+1  (sequenced updates, heartbeats)
//!  client PUB    ──KVSET──────▶ SUB   :P+2  (collector)
//! ```
//!
//! Layout:
//! - [`kvmsg`] and [`proto`]: the pure codec (5-frame kvmsg, CHP commands);
//! - [`store`] and [`snapshot`]: the pure server state and snapshot cursor;
//! - [`server`]: the server task ([`CloneServer`]);
//! - [`agent`]: the pure client state machine;
//! - [`link`] and [`client`]: the client's sockets and its handle
//!   ([`CloneClient`]).
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::clone::{ClientConfig, CloneClient, CloneServer, ServerAddr, ServerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let token = CancellationToken::new();
//! let _server = CloneServer::start(ServerConfig::on_port("*", 5556)?, &token).await?;
//! let client = CloneClient::new(ClientConfig::default(), &token);
//! client.subtree("/client/").await?;
//! client.connect("tcp://localhost:5556".parse::<ServerAddr>()?).await?;
//! client.wait_active().await?;
//! client.set("/client/answer", "42", None).await?;
//! let mut changes = client.changes();
//! while let Ok(change) = changes.recv().await {
//!     println!("{:?} = {:?}", change.key(), change.value());
//! }
//! # Ok(()) }
//! ```
//!
//! See `patterns/clone.md` for the wire contract and guarantees.

pub mod agent;
pub mod client;
pub mod error;
pub mod kvmsg;
pub mod link;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod store;

pub use agent::{Cause, Change, Phase};
pub use client::{ClientConfig, ClientStats, CloneClient};
pub use error::{CloneError, DecodeError, PropertyError};
pub use kvmsg::{KvMsg, Properties};
pub use link::ServerAddr;
pub use server::{CloneServer, ServerConfig, ServerEndpoints, ServerStats};
