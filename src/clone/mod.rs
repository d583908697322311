//! Clone: a key-value state shared by many clients through one server,
//! speaking the Clustered Hashmap Protocol (CHP, ZeroMQ RFC 12) so that
//! libzmq programs written from the Guide interoperate.
//!
//! Socket topology (server port `P`):
//!
//! ```text
//!  client DEALER ──ICANHAZ?──▶ ROUTER :P    (snapshots: KVSYNC…, KTHXBAI)
//!  client SUB    ◀──KVPUB/HUGZ── PUB  :P+1  (sequenced updates, heartbeats)
//!  client PUB    ──KVSET──────▶ SUB   :P+2  (collector)
//! ```
//!
//! Layout: [`kvmsg`] and [`proto`] are the pure codec; [`store`] and
//! [`snapshot`] the pure server state; [`server`] the server task;
//! [`agent`] the pure client state machine; [`client`] the client handle
//! and task. See `patterns/clone.md` for the wire contract and guarantees.

pub mod agent;
pub mod error;
pub mod kvmsg;
pub mod proto;
pub mod snapshot;
pub mod store;

pub use error::{CloneError, DecodeError, PropertyError};
pub use kvmsg::{KvMsg, Properties};
pub mod server;
pub use server::{CloneServer, ServerConfig, ServerEndpoints, ServerStats};
pub mod client;
pub mod link;
pub use agent::{Cause, Change, Phase};
pub use client::{ClientConfig, ClientStats, CloneClient};
pub use link::ServerAddr;
