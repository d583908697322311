//! `P2p`: the handle that runs a [`P2pNode`] over a
//! [`ZmqTransport`] (a ROUTER bound at the node's URL, one DEALER per
//! peer), the crate's one handle shape.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

use super::node::{FetchId, P2pEvent, P2pNode, P2pStats};
use super::{node_id_for_url, FileInfo, P2pConfig, P2pError, Share};
use crate::transport::zmq::{ZmqConfig, ZmqTransport};
use crate::transport::{recv, NodeId, Outbox, Process, Time, Transport, TransportStats};

/// A fetch that succeeded: the file is stored and its hash verified.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FetchDone {
    /// The stored file.
    pub info: FileInfo,
    /// Where it was found (the first provider's URL, or this node's own).
    pub from: String,
    /// The providers that delivered chunks.
    pub providers: Vec<String>,
    /// Bytes transferred (not counting a resumed part).
    pub bytes: u64,
    /// Bytes kept from an earlier interrupted download.
    pub resumed: u64,
    /// Seconds the fetch took.
    pub secs: f64,
}

type Reply<T> = oneshot::Sender<T>;

enum Cmd {
    Fetch(String, Vec<u8>, Reply<Result<FetchDone, P2pError>>),
    Hello(String, Reply<()>),
    Peers(Reply<Vec<(NodeId, String)>>),
    List(Reply<Vec<FileInfo>>),
    Progress(Reply<Vec<(u64, u64)>>),
}

/// A running node. Dropping it stops the node.
#[derive(Debug)]
#[must_use = "dropping the handle stops the node"]
pub struct P2p {
    url: String,
    id: NodeId,
    cmds: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<(P2pStats, TransportStats)>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

fn free_port_url(url: &str) -> Result<String, P2pError> {
    let Some(host) = url
        .strip_prefix("tcp://")
        .and_then(|r| r.strip_suffix(":0"))
    else {
        return Ok(url.to_owned());
    };
    let l = std::net::TcpListener::bind((host, 0))?;
    Ok(format!("tcp://{host}:{}", l.local_addr()?.port()))
}

impl P2p {
    /// Binds the node's ROUTER at `config`'s URL (a URL ending in `:0`
    /// gets a free port first: [`P2p::url`] has the real one, since the
    /// node's id is derived from it), and runs the node under
    /// `parent.child_token()`. Must be called inside a tokio runtime.
    pub async fn start(
        config: P2pConfig,
        share: Box<dyn Share>,
        parent: &CancellationToken,
    ) -> Result<P2p, P2pError> {
        let mut config = config;
        let mut attempt = 0;
        let transport = loop {
            let url = free_port_url(&config.url)?;
            let id = node_id_for_url(&url);
            let zc = ZmqConfig::new(id)
                .bind(Some(&url))?
                .max_message(config.max_message + 64);
            match ZmqTransport::start(zc, parent).await {
                Ok(t) => {
                    config.url = url;
                    break t;
                }
                Err(e) if attempt < 5 && config.url.ends_with(":0") => {
                    attempt += 1;
                    warn!(cause = %e, "free port taken meanwhile; trying another");
                }
                Err(e) => return Err(e.into()),
            }
        };
        if config.seed.is_none() {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            config.seed = Some(t.as_nanos() as u64 ^ u64::from(transport.id().0));
        }
        let url = config.url.clone();
        let node = P2pNode::new(config, share, Time::ZERO);
        let id = node.id();
        let stats = Arc::new(Mutex::new((P2pStats::default(), TransportStats::default())));
        let cancel = parent.child_token();
        let (tx, rx) = mpsc::channel(64);
        let span = tracing::info_span!("p2p", node = %id, url = %url);
        let task = tokio::spawn(
            drive(node, transport, rx, stats.clone(), cancel.clone()).instrument(span),
        );
        Ok(P2p {
            url,
            id,
            cmds: tx,
            stats,
            cancel,
            task: Some(task),
        })
    }

    /// The node's URL (with the real port).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> P2pStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// A snapshot of the node's transport counters (messages sent and
    /// dropped, bytes not yet written to a peer: see
    /// [`ZmqConfig`]'s limits), as of the node's last step.
    pub fn transport_stats(&self) -> TransportStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    /// Fetches a file (by name, or by hash as 64 hex digits) into the
    /// share, with this node's secret.
    pub async fn fetch(&self, name: &str, secret: &[u8]) -> Result<FetchDone, P2pError> {
        self.ask(|r| Cmd::Fetch(name.to_owned(), secret.to_vec(), r))
            .await?
    }

    /// Adds the peer at `url` (and tells it this node's URL).
    pub async fn hello(&self, url: &str) -> Result<(), P2pError> {
        self.ask(|r| Cmd::Hello(url.to_owned(), r)).await
    }

    /// The known peers.
    pub async fn peers(&self) -> Result<Vec<(NodeId, String)>, P2pError> {
        self.ask(Cmd::Peers).await
    }

    /// The files this node shares.
    pub async fn list(&self) -> Result<Vec<FileInfo>, P2pError> {
        self.ask(Cmd::List).await
    }

    /// Local downloads in progress: bytes stored and total.
    pub async fn progress(&self) -> Result<Vec<(u64, u64)>, P2pError> {
        self.ask(Cmd::Progress).await
    }

    /// Stops the node (only it) and waits for its task; returns the final
    /// counters.
    pub async fn shutdown(mut self) -> Result<P2pStats, P2pError> {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.map_err(|_| P2pError::TaskPanicked)?;
        }
        Ok(self.stats())
    }
}

impl Drop for P2p {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Driver {
    node: P2pNode,
    transport: ZmqTransport,
    waiting: std::collections::HashMap<FetchId, Reply<Result<FetchDone, P2pError>>>,
    origin: Instant,
}

impl Driver {
    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn on_cmd(&mut self, cmd: Cmd, out: &mut Outbox) {
        let now = self.now();
        match cmd {
            Cmd::Fetch(name, secret, reply) => match self.node.fetch(now, &name, &secret, out) {
                Ok(id) => {
                    self.waiting.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Hello(url, reply) => {
                self.node.hello(now, &url, out);
                let _ = reply.send(());
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(self.node.peers());
            }
            Cmd::List(reply) => {
                let _ = reply.send(self.node.list());
            }
            Cmd::Progress(reply) => {
                let p = self.node.progress().into_iter().map(|(_, d, n)| (d, n));
                let _ = reply.send(p.collect());
            }
        }
    }

    fn flush(&mut self, out: &mut Outbox) {
        for id in self.node.take_disconnects() {
            self.transport.remove_peer(id);
        }
        for (id, url) in self.node.take_connects() {
            if let Err(e) = self.transport.add_peer(id, &url) {
                warn!(peer = %id, url = %url, cause = %e, "cannot connect to peer");
            }
        }
        for (to, msg) in out.drain() {
            self.transport.send(to, msg);
        }
        for ev in self.node.poll_events() {
            match ev {
                P2pEvent::FetchDone {
                    id,
                    info,
                    from,
                    providers,
                    bytes,
                    resumed,
                    secs,
                } => {
                    if let Some(r) = self.waiting.remove(&id) {
                        let _ = r.send(Ok(FetchDone {
                            info,
                            from,
                            providers,
                            bytes,
                            resumed,
                            secs,
                        }));
                    }
                }
                P2pEvent::FetchFailed { id, code } => {
                    if let Some(r) = self.waiting.remove(&id) {
                        let _ = r.send(Err(P2pError::from_code(code)));
                    }
                }
            }
        }
    }
}

async fn drive(
    node: P2pNode,
    transport: ZmqTransport,
    mut cmds: mpsc::Receiver<Cmd>,
    stats: Arc<Mutex<(P2pStats, TransportStats)>>,
    cancel: CancellationToken,
) {
    let mut d = Driver {
        node,
        transport,
        waiting: Default::default(),
        origin: Instant::now(),
    };
    let mut out = Outbox::new();
    loop {
        let wake = d.node.poll_timeout().map(|t| d.origin + t.since_origin());
        let timer = async {
            match wake {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            cmd = cmds.recv() => match cmd {
                Some(c) => d.on_cmd(c, &mut out),
                None => break,
            },
            msg = recv(&mut d.transport) => {
                let Some((from, bytes)) = msg else { break };
                let now = d.now();
                d.node.handle_message(now, from, bytes, &mut out);
            }
            () = timer => {}
        }
        let now = d.now();
        if d.node.poll_timeout().is_some_and(|w| w <= now) {
            d.node.handle_timeout(now, &mut out);
        }
        d.flush(&mut out);
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = (d.node.stats(), d.transport.stats());
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), d.transport.shutdown()).await;
}
