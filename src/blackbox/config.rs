//! Configuration of the Black Box: subscriber sockets, number of workers,
//! queue depth, the largest message accepted, what to do when a worker
//! falls behind, the sharding key and where workers run.

use std::fmt;
use std::sync::Arc;

use zeromq::ZmqMessage;

use super::shard::ShardKey;
use crate::endpoint::EndpointSpec;

/// What an I/O task does when the chosen worker's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait for room (backpressure). The I/O task stops reading, the kernel
    /// buffers fill, and the *publisher* holds the backlog: a libzmq PUB
    /// drops at its HWM, a `zeromq` PUB queues it without bound (see the
    /// README's limits). Nothing is lost inside the subscriber, but one
    /// slow shard slows all shards fed by that socket.
    #[default]
    Block,
    /// Drop the new messages and count them per worker
    /// ([`BlackBoxStats::dropped`](super::BlackBoxStats::dropped)): a slow
    /// shard loses its own messages and never slows the others. Messages
    /// are handed over in batches (up to 64), so a full queue drops the
    /// batch being handed over.
    DropNewest,
}

/// Where the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WorkerThreads {
    /// One OS thread per worker (named `blackbox-w<i>`), the default: the
    /// handler may burn CPU without blocking the runtime that runs the I/O
    /// tasks. The I/O tasks run on the runtime `start` is called from.
    #[default]
    Dedicated,
    /// Tasks on the runtime `start` is called from (use a multi-thread
    /// runtime): no extra threads, but a slow handler blocks a runtime
    /// worker thread, and with it any I/O task scheduled there.
    Runtime,
}

/// Called with (worker index, message) for every message dropped at a full
/// queue, e.g. to log or to count per key.
pub type DropHook = Arc<dyn Fn(usize, &ZmqMessage) + Send + Sync>;

/// One subscriber socket: where it connects (or binds) and what it
/// subscribes to.
#[derive(Debug, Clone)]
pub struct SocketSpec {
    pub(crate) endpoints: Vec<EndpointSpec>,
    pub(crate) topics: Vec<String>,
}

impl SocketSpec {
    /// A SUB socket on `endpoints`, subscribed to `topics` (`[""]` for all).
    pub fn new(endpoints: Vec<EndpointSpec>, topics: Vec<String>) -> Self {
        Self { endpoints, topics }
    }
}

/// The default largest message a Black Box accepts, all frames: 64 KiB.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;

/// Configuration of a Black Box sharded subscriber.
#[derive(Clone)]
pub struct BlackBoxConfig {
    pub(crate) sockets: Vec<SocketSpec>,
    pub(crate) workers: usize,
    pub(crate) queue_depth: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) overflow: Overflow,
    pub(crate) key: ShardKey,
    pub(crate) threads: WorkerThreads,
    pub(crate) on_drop: Option<DropHook>,
}

impl fmt::Debug for BlackBoxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlackBoxConfig")
            .field("sockets", &self.sockets)
            .field("workers", &self.workers)
            .field("queue_depth", &self.queue_depth)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("overflow", &self.overflow)
            .field("key", &self.key)
            .field("threads", &self.threads)
            .field("on_drop", &self.on_drop.is_some())
            .finish()
    }
}

impl BlackBoxConfig {
    /// A Black Box whose first subscriber socket is on `endpoints` (at
    /// least one; usually connects to the feed), subscribed to `topics`
    /// (`&[""]` for all); add more sockets with [`socket`](Self::socket).
    /// Defaults: one worker per CPU, queues of 4096 messages, messages up
    /// to 64 KiB, backpressure, shard by topic (frame 0), dedicated worker
    /// threads.
    pub fn new(endpoints: Vec<EndpointSpec>, topics: &[&str]) -> Self {
        Self {
            sockets: Vec::new(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_depth: 4096,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            overflow: Overflow::Block,
            key: ShardKey::Topic,
            threads: WorkerThreads::Dedicated,
            on_drop: None,
        }
        .socket(endpoints, topics)
    }

    /// Adds another subscriber socket (one I/O task each). Give several
    /// sockets disjoint topics (or different publishers): sockets with the
    /// same subscription to the same publisher each receive every message.
    pub fn socket(mut self, endpoints: Vec<EndpointSpec>, topics: &[&str]) -> Self {
        let topics = topics.iter().map(|t| (*t).to_owned()).collect();
        self.sockets.push(SocketSpec::new(endpoints, topics));
        self
    }

    /// The number of workers (shards); default one per CPU.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Messages each worker's queue holds (at most; they travel in
    /// batches of up to `min(64, n)`, so the queue holds `n / 64` batches).
    /// Default 4096.
    pub fn queue_depth(mut self, n: usize) -> Self {
        self.queue_depth = n;
        self
    }

    /// The largest message accepted, all frames together (default 64 KiB).
    /// A larger one is dropped as it is
    /// read, counted per socket in
    /// [`BlackBoxStats::oversized`](super::BlackBoxStats::oversized) and
    /// logged (at most once a second per socket); every other message is
    /// still delivered. With it, what the workers' queues can hold is
    /// bounded by `workers × queue_depth × max_message_bytes` (256 MiB per
    /// worker at the defaults). The `zeromq` crate reads a whole frame
    /// before this crate sees it, so the memory of one frame in flight per
    /// socket is not bounded here.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// What happens when a worker's queue is full (default
    /// [`Overflow::Block`]).
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }

    /// Which part of a message is the sharding key (default
    /// [`ShardKey::Topic`]).
    pub fn key(mut self, k: ShardKey) -> Self {
        self.key = k;
        self
    }

    /// Where the workers run (default [`WorkerThreads::Dedicated`]).
    pub fn worker_threads(mut self, t: WorkerThreads) -> Self {
        self.threads = t;
        self
    }

    /// Called for every message dropped at a full queue (default none).
    pub fn on_drop(mut self, hook: impl Fn(usize, &ZmqMessage) + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Arc::new(hook));
        self
    }
}
