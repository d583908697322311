//! The Clone pair's failover run, shared by the tour's `pair` section and
//! the `clone_failover` measurement: a Binary Star pair on free loopback
//! ports, writer clients at a steady rate, the primary killed mid-stream,
//! and what came of it (times, acknowledged updates lost, re-sent updates,
//! digests).
//!
//! The two servers must know each other's ports before they start, so a
//! run picks free loopback ports first (bound, read and released).
#![allow(dead_code)] // each including example uses part of it

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{BstarState, FsmConfig, Side};
use zpatterns::clone::{
    AgentConfig, CloneClient, CloneClientConfig, ClonePairConfig, CloneServer, CloneServerConfig,
    Phase, ServerAddr, StoreConfig,
};
use zpatterns::endpoint::EndpointSpec;

/// The timers of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// Binary Star heartbeat (the peer is dead after two) and HUGZ period.
    pub(crate) heartbeat: Duration,
    /// The clients' server ttl (silence before failing over).
    pub(crate) server_ttl: Duration,
}

impl Timers {
    /// The Guide's: heartbeat 1 s (peer dead after 2 s), HUGZ 1 s, client
    /// server ttl 5 s.
    pub(crate) fn guide() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            server_ttl: Duration::from_secs(5),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Updates acknowledged before the kill.
    pub(crate) acked_before: usize,
    /// Kill to the backup's promotion.
    pub(crate) promoted: Duration,
    /// Kill to the first update the backup sequenced.
    pub(crate) first_update: Duration,
    /// Kill to every writer active on the backup.
    pub(crate) all_moved: Duration,
    /// Updates sent in all.
    pub(crate) sent: usize,
    /// Acknowledged updates missing from the new active's map (keys whose
    /// last acknowledged value is not there).
    pub(crate) lost: usize,
    /// Updates the clients re-sent after failing over.
    pub(crate) resent: u64,
    /// Re-sent updates the backup had already applied (dropped by UUID).
    pub(crate) duplicates: u64,
    /// Per writer: its map's digest and the digest of the active's subtree.
    pub(crate) digests: Vec<(u64, u64)>,
}

/// Ports for one server: state, snapshot (P), updates (P+1), collector (P+2).
fn free_ports() -> anyhow::Result<[u16; 4]> {
    let listeners = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; 4];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn at(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn addr(ports: &[u16; 4]) -> anyhow::Result<ServerAddr> {
    Ok(ServerAddr::new(
        &at(ports[1]),
        &at(ports[2]),
        &at(ports[3]),
    )?)
}

async fn start(
    side: Side,
    (mine, theirs): (&[u16; 4], &[u16; 4]),
    timers: Timers,
    token: &CancellationToken,
) -> anyhow::Result<CloneServer> {
    let bind = |p: u16| EndpointSpec::bind(&at(p));
    let server = CloneServerConfig::new(bind(mine[1])?, bind(mine[2])?, bind(mine[3])?)
        .store(StoreConfig::new().hugz_interval(timers.heartbeat));
    let config = ClonePairConfig::new(
        side,
        server,
        bind(mine[0])?,
        EndpointSpec::connect(&at(theirs[0]))?,
        addr(theirs)?,
    )
    .fsm(FsmConfig::new().heartbeat(timers.heartbeat));
    Ok(CloneServer::start_pair(config, token).await?)
}

fn state(s: &CloneServer) -> Option<BstarState> {
    s.stats().pair.map(|p| p.state)
}

/// A pair that has settled: the primary active, the backup passive and
/// holding the primary's snapshot.
pub(crate) struct RunningPair {
    pub(crate) primary: Option<CloneServer>,
    pub(crate) backup: CloneServer,
    pub(crate) servers: [ServerAddr; 2],
}

pub(crate) async fn settled_pair(
    timers: Timers,
    token: &CancellationToken,
) -> anyhow::Result<RunningPair> {
    let (p, b) = (free_ports()?, free_ports()?);
    let primary = start(Side::Primary, (&p, &b), timers, token).await?;
    let backup = start(Side::Backup, (&b, &p), timers, token).await?;
    wait(10 * timers.server_ttl, || async {
        Ok(state(&primary) == Some(BstarState::Active) && backup.stats().store.peer_snapshots > 0)
    })
    .await?;
    Ok(RunningPair {
        primary: Some(primary),
        backup,
        servers: [addr(&p)?, addr(&b)?],
    })
}

pub(crate) fn client_config(timers: Timers) -> CloneClientConfig {
    CloneClientConfig::new().agent(
        AgentConfig::new()
            .server_ttl(timers.server_ttl)
            .min_backoff(Duration::from_millis(100)),
    )
}

/// One failover: `writers` clients each set a key of their own subtree
/// every `every`; once each has `before` updates acknowledged the primary
/// is killed; once each has `after` more acknowledged on the backup they
/// stop and wait for every update to be acknowledged, and the new active's
/// map is checked against what they sent.
pub(crate) async fn failover_once(
    timers: Timers,
    writers: usize,
    every: Duration,
    (before, after): (usize, usize),
) -> anyhow::Result<Outcome> {
    let token = CancellationToken::new();
    let mut pair = settled_pair(timers, &token).await?;
    let config = client_config(timers);
    let mut running = Vec::new();
    for n in 0..writers {
        let c = CloneClient::start(config.clone(), &token).await?;
        c.subtree(&format!("/run/{n}/")).await?;
        for s in &pair.servers {
            c.connect(s.clone()).await?;
        }
        c.wait_active().await?;
        running.push(Writer::start(Arc::new(c), n, every));
    }
    let patience = 10 * timers.server_ttl + Duration::from_secs(10);
    wait(patience, || async {
        Ok(running.iter().all(|w| w.acked() >= before))
    })
    .await?;
    let acked_before: usize = running.iter().map(Writer::acked).sum();
    let updates_before = pair.backup.stats().store.updates;
    let killed = Instant::now();
    drop(pair.primary.take());
    let backup = &pair.backup;
    wait(patience, || async {
        Ok(state(backup) == Some(BstarState::Active))
    })
    .await?;
    let promoted = killed.elapsed();
    wait(patience, || async {
        Ok(backup.stats().store.updates > updates_before)
    })
    .await?;
    let first_update = killed.elapsed();
    wait(patience, || async {
        Ok(running
            .iter()
            .all(|w| matches!(w.client.phase(), Phase::Active { server: 1, .. })))
    })
    .await?;
    let all_moved = killed.elapsed();
    let marks: Vec<usize> = running.iter().map(Writer::acked).collect();
    wait(patience, || async {
        Ok(running
            .iter()
            .zip(&marks)
            .all(|(w, m)| w.acked() >= m + after))
    })
    .await?;
    let mut finished = Vec::new();
    for w in running {
        finished.push(w.finish(patience).await?);
    }
    // The new active's map, as a fresh observer sees it.
    let observer = CloneClient::start(config, &token).await?;
    observer.connect(pair.servers[1].clone()).await?;
    observer.wait_active().await?;
    let map: HashMap<Bytes, Bytes> = observer.entries().await?.into_iter().collect();
    let mut outcome = Outcome {
        acked_before,
        promoted,
        first_update,
        all_moved,
        sent: 0,
        lost: 0,
        resent: 0,
        duplicates: backup.stats().store.duplicates,
        digests: Vec::new(),
    };
    for (n, (client, ledger)) in finished.iter().enumerate() {
        outcome.sent += ledger.sent;
        outcome.lost += ledger
            .last
            .iter()
            .filter(|(k, v)| map.get(k.as_bytes()).map(|b| &b[..]) != Some(v.as_bytes()))
            .count();
        outcome.resent += client.stats().agent.resent;
        let prefix = format!("/run/{n}/");
        let mut want: Vec<(Bytes, Bytes)> = map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        want.sort();
        // Converged, or the digests below show that it did not.
        let _ = wait(patience, || async { Ok(client.entries().await? == want) }).await;
        outcome
            .digests
            .push((digest(&client.entries().await?), digest(&want)));
    }
    token.cancel();
    Ok(outcome)
}

pub(crate) fn digest(entries: &[(Bytes, Bytes)]) -> u64 {
    let mut h = DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

/// What a writer sent: its last value per key, and the UUIDs acknowledged.
#[derive(Default)]
struct Ledger {
    last: HashMap<String, String>,
    sent: usize,
    acked: HashSet<[u8; 16]>,
}

struct Writer {
    client: Arc<CloneClient>,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    fn start(client: Arc<CloneClient>, n: usize, every: Duration) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = CancellationToken::new();
        let mut acks = client.acks();
        let task = {
            let (client, ledger, stop) = (client.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                let mut i = 0u64;
                let mut writing = true;
                loop {
                    tokio::select! {
                        () = stop.cancelled(), if writing => writing = false,
                        Ok(uuid) = acks.recv() => {
                            ledger.lock().unwrap().acked.insert(uuid);
                        }
                        _ = tick.tick() => {
                            if !writing {
                                // Stopped: done once nothing is in flight.
                                if client.in_flight().await? == 0 {
                                    return Ok(());
                                }
                                continue;
                            }
                            let key = format!("/run/{n}/{}", i % 25);
                            let value = i.to_string();
                            i += 1;
                            client.set(key.clone(), value.clone(), None).await?;
                            let mut l = ledger.lock().unwrap();
                            l.last.insert(key, value);
                            l.sent += 1;
                        }
                    }
                }
            })
        };
        Self {
            client,
            ledger,
            stop,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Stops writing and waits until nothing it sent is unacknowledged.
    async fn finish(self, patience: Duration) -> anyhow::Result<(Arc<CloneClient>, Ledger)> {
        self.stop.cancel();
        tokio::time::timeout(patience, self.task)
            .await
            .map_err(|_| anyhow::anyhow!("updates still unacknowledged after {patience:?}"))???;
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        Ok((self.client, ledger))
    }
}

/// Polls `cond` every 10 ms until it holds; an error after `limit`.
pub(crate) async fn wait<F, Fut>(limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !cond().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
