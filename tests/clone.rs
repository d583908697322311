//! Clone server and client together over loopback: convergence, subtrees,
//! ephemeral values, the handle shape (shutdown stops only its own
//! pattern, drop stops it), and bugs of the Guide's reference programs
//! (`clonesrv5`, `clonecli5`, the `clone` class) that must not happen here.

mod common;
use common::*;

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::clone::{
    AgentConfig, CloneClient, CloneClientConfig, CloneServer, CloneServerConfig,
    CloneServerEndpoints, KvMsg, Phase, ServerAddr,
};

fn fast_client() -> CloneClientConfig {
    CloneClientConfig::new().agent(agent_config(Duration::from_millis(1500)))
}

fn agent_config(server_ttl: Duration) -> AgentConfig {
    AgentConfig::new()
        .server_ttl(server_ttl)
        .min_backoff(ms(100))
        .max_backoff(ms(400))
}

async fn server(token: &CancellationToken) -> (CloneServer, ServerAddr) {
    let s = CloneServer::start(CloneServerConfig::loopback(), token)
        .await
        .unwrap();
    let addr = ServerAddr::from_endpoints(s.endpoints()).unwrap();
    (s, addr)
}

/// Starts a server on the endpoints a stopped one used (retrying while the
/// old listeners close).
async fn restart_on(endpoints: &CloneServerEndpoints, token: &CancellationToken) -> CloneServer {
    let spec = |e: &str| zpatterns::endpoint::EndpointSpec::bind(e).unwrap();
    within(secs(10), "rebind the same ports", async {
        loop {
            let config = CloneServerConfig::new(
                spec(&endpoints.snapshot),
                spec(&endpoints.publisher),
                spec(&endpoints.collector),
            );
            match CloneServer::start(config, token).await {
                Ok(s) => return s,
                Err(e) => eprintln!("rebind: {e}"),
            }
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await
}

async fn client(subtree: &str, servers: &[&ServerAddr], token: &CancellationToken) -> CloneClient {
    let c = CloneClient::start(fast_client(), token).await.unwrap();
    c.subtree(subtree).await.unwrap();
    for s in servers {
        c.connect((*s).clone()).await.unwrap();
    }
    c
}

async fn wait_value(c: &CloneClient, key: &str, want: Option<&str>) {
    within(secs(20), &format!("{key} == {want:?}"), async {
        loop {
            let got = c.get(key.to_owned()).await.unwrap();
            if got.as_deref() == want.map(str::as_bytes) {
                return;
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_and_ephemeral_values_expire_everywhere() {
    trace_init();
    let token = CancellationToken::new();
    let (srv, addr) = server(&token).await;
    let a = client("", &[&addr], &token).await;
    let b = client("", &[&addr], &token).await;
    within(secs(20), "both active", async {
        a.wait_active().await.unwrap();
        b.wait_active().await.unwrap();
    })
    .await;
    for i in 0..50 {
        a.set(format!("/k/{i}"), format!("a{i}"), None)
            .await
            .unwrap();
    }
    b.set("/eph", "soon gone", Some(secs(1))).await.unwrap();
    wait_value(&b, "/k/49", Some("a49")).await;
    wait_value(&a, "/eph", Some("soon gone")).await;
    a.set("/k/0", "", None).await.unwrap();
    wait_value(&b, "/k/0", None).await;
    wait_value(&a, "/eph", None).await;
    wait_value(&b, "/eph", None).await;
    assert_eq!(a.entries().await.unwrap(), b.entries().await.unwrap());
    assert_eq!(a.entries().await.unwrap().len(), 49);
    let stats = srv.stats();
    assert_eq!(stats.store.expired, 1);
    assert_eq!(stats.keys, 49);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtree_client_sees_only_its_subtree() {
    trace_init();
    let token = CancellationToken::new();
    let (_srv, addr) = server(&token).await;
    let writer = client("", &[&addr], &token).await;
    writer.wait_active().await.unwrap();
    writer.set("/a/before", "1", None).await.unwrap();
    writer.set("/b/before", "1", None).await.unwrap();
    wait_value(&writer, "/b/before", Some("1")).await;
    let sub = client("/a/", &[&addr], &token).await;
    within(secs(20), "active", sub.wait_active()).await.unwrap();
    writer.set("/a/after", "2", None).await.unwrap();
    writer.set("/b/after", "2", None).await.unwrap();
    wait_value(&sub, "/a/after", Some("2")).await;
    wait_value(&writer, "/b/after", Some("2")).await;
    let keys: Vec<Bytes> = sub
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, [Bytes::from("/a/after"), Bytes::from("/a/before")]);
    token.cancel();
}

/// Reference bug 8: the Guide's agent stops asking a server after two
/// unanswered requests. Here a client whose only server is down for several
/// silence periods syncs as soon as the server appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_retrying_a_server_that_comes_back() {
    trace_init();
    let token = CancellationToken::new();
    // Reserve three ports, then free them.
    let (srv, addr) = server(&token).await;
    let endpoints = srv.endpoints().clone();
    srv.shutdown().await.unwrap();
    let config = fast_client().agent(agent_config(ms(300)));
    let c = CloneClient::start(config, &token).await.unwrap();
    c.connect(addr.clone()).await.unwrap();
    // Several silence periods pass (and are counted) while it is down.
    eventually(secs(20), "three failed attempts", || {
        c.stats().agent.failovers >= 3
    })
    .await;
    assert_eq!(c.stats().agent.syncs, 0, "nothing to sync from yet");
    let _srv = restart_on(&endpoints, &token).await;
    within(secs(20), "sync after the server came back", c.wait_active())
        .await
        .unwrap();
    token.cancel();
}

/// Reference bug 9: on failover the Guide's agent keeps its old map and
/// stores the new snapshot on top, so keys deleted meanwhile survive. Here
/// the new snapshot replaces the map and the deletion is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_resync_drops_keys_the_new_server_does_not_have() {
    trace_init();
    let token = CancellationToken::new();
    let t1 = token.child_token();
    let (_s1, a1) = server(&t1).await;
    let (_s2, a2) = server(&token).await;
    // Seed each server directly: s1 has {keep, stale}; s2 has {keep}.
    let seed = |a: ServerAddr, keys: &'static [&'static str]| {
        let token = token.clone();
        async move {
            let w = client("/nothing/", &[&a], &token).await;
            w.wait_active().await.unwrap();
            for k in keys {
                w.set(*k, "v", None).await.unwrap();
            }
            w
        }
    };
    let _w1 = seed(a1.clone(), &["keep", "stale"]).await;
    let _w2 = seed(a2.clone(), &["keep"]).await;
    let c = client("", &[&a1, &a2], &token).await;
    wait_value(&c, "stale", Some("v")).await;
    let mut changes = c.changes();
    t1.cancel(); // server 1 dies
    within(secs(20), "failover to server 2", async {
        while c.phase() != (Phase::Active { server: 1, seq: 1 }) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    assert_eq!(
        c.entries().await.unwrap(),
        [(Bytes::from("keep"), Bytes::from("v"))]
    );
    let change = within(secs(5), "deletion reported", changes.recv())
        .await
        .unwrap();
    assert_eq!(change.key(), "stale");
    assert_eq!(change.value(), None);
    token.cancel();
}

/// A server that restarts (and so loses its state and its sequence) is
/// noticed through its heartbeats, and the client resyncs instead of
/// discarding every update as "old".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_detected_and_resynced() {
    trace_init();
    let token = CancellationToken::new();
    let t1 = token.child_token();
    let (s1, addr) = server(&t1).await;
    let endpoints = s1.endpoints().clone();
    let c = client("", &[&addr], &token).await;
    c.wait_active().await.unwrap();
    for i in 0..20 {
        c.set(format!("k{i}"), "old", None).await.unwrap();
    }
    eventually(secs(20), "server 1 has every key", || s1.stats().keys == 20).await;
    s1.shutdown().await.unwrap();
    let _s2 = restart_on(&endpoints, &token).await;
    // Another writer gives the new server a few updates.
    let w = client("/w/", &[&addr], &token).await;
    w.wait_active().await.unwrap();
    w.set("fresh", "new", None).await.unwrap();
    wait_value(&c, "fresh", Some("new")).await;
    wait_value(&c, "k0", None).await;
    let stats = c.stats();
    assert!(stats.agent.restarts >= 1, "{stats:?}");
    token.cancel();
}

/// Reference bug 5: the Guide's client leaves live updates in its SUB queue
/// while a snapshot streams, where they can overflow and vanish. Here a
/// client syncing a 1,000,000-key map while another client keeps writing
/// ends with every key, without a gap or a second sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_during_a_million_key_snapshot_are_not_lost() {
    trace_init();
    let n = 1_000_000;
    let token = CancellationToken::new();
    let entries = (0..n).map(|i| KvMsg::new(format!("/k/{i:07}"), "v").unwrap());
    let srv = CloneServer::start_preloaded(CloneServerConfig::loopback(), entries, &token)
        .await
        .unwrap();
    let addr = ServerAddr::from_endpoints(srv.endpoints()).unwrap();
    let writer = client("/w/", &[&addr], &token).await;
    writer.wait_active().await.unwrap();
    let reader = client("", &[&addr], &token).await;
    let mut written = 0;
    within(secs(120), "reader synced while writes go on", async {
        while !matches!(reader.phase(), Phase::Active { .. }) {
            writer
                .set(format!("/w/{written}"), "x", None)
                .await
                .unwrap();
            written += 1;
            tokio::time::sleep(ms(2)).await;
        }
    })
    .await;
    eprintln!("{written} writes while the reader synced");
    writer.set("/w/last", "x", None).await.unwrap();
    wait_value(&reader, "/w/last", Some("x")).await;
    let stats = reader.stats();
    assert_eq!(stats.keys, n + written + 1, "{stats:?}");
    assert_eq!(stats.agent.syncs, 1, "{stats:?}");
    assert_eq!(
        stats.agent.gaps + stats.agent.buffer_overflows,
        0,
        "{stats:?}"
    );
    assert!(written > 0);
    token.cancel();
}

/// The handle shape: shutting down one server and one client (under the
/// same parent token as another pair) returns their final stats and leaves
/// the other server and client running; the parent is never cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_one_server_or_client_leaves_the_others_running() {
    trace_init();
    let token = CancellationToken::new();
    let (s1, a1) = server(&token).await;
    let (s2, a2) = server(&token).await;
    let c1 = client("", &[&a1], &token).await;
    let c2 = client("", &[&a2], &token).await;
    let c3 = client("", &[&a2], &token).await;
    for c in [&c1, &c2, &c3] {
        within(secs(20), "active", c.wait_active()).await.unwrap();
    }
    c1.set("/one", "1", None).await.unwrap();
    wait_value(&c1, "/one", Some("1")).await;
    eventually(secs(20), "server 1 stored /one", || s1.stats().keys == 1).await;
    let final1 = s1.shutdown().await.unwrap();
    assert_eq!((final1.keys, final1.store.updates), (1, 1));
    let client_final = c3.shutdown().await.unwrap();
    assert!(client_final.agent.syncs >= 1, "{client_final:?}");
    assert!(!token.is_cancelled());
    // Server 2 and client 2 still work: an update goes round trip.
    c2.set("/two", "2", None).await.unwrap();
    wait_value(&c2, "/two", Some("2")).await;
    eventually(secs(20), "server 2 sequenced /two", || {
        s2.stats().store.updates == 1
    })
    .await;
    assert!(matches!(c2.phase(), Phase::Active { server: 0, .. }));
    let c2_final = c2.shutdown().await.unwrap();
    assert_eq!(c2_final.keys, 1);
    s2.shutdown().await.unwrap();
    drop(c1);
}

/// Dropping a server stops it (its ports are released, so a new server
/// binds them), and dropping a client stops its task (its change stream
/// closes); neither cancels the parent token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_handle_stops_its_pattern_only() {
    trace_init();
    let token = CancellationToken::new();
    let (srv, addr) = server(&token).await;
    let endpoints = srv.endpoints().clone();
    let c = client("", &[&addr], &token).await;
    within(secs(20), "active", c.wait_active()).await.unwrap();
    let mut changes = c.changes();
    drop(c);
    let closed = within(secs(10), "change stream closed", async {
        loop {
            match changes.recv().await {
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return true,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) | Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed);
    drop(srv);
    assert!(!token.is_cancelled());
    // The old server's listeners close in the background; the same ports
    // can then be bound again, and the new server serves a client.
    let again = restart_on(&endpoints, &token).await;
    let c = client("", &[&addr], &token).await;
    within(
        secs(20),
        "a client syncs from the new server",
        c.wait_active(),
    )
    .await
    .unwrap();
    eventually(secs(10), "the new server counted its snapshot", || {
        again.stats().snapshots_completed == 1
    })
    .await;
}

/// `in_flight()` counts every update set before it (no server yet: none can
/// be acknowledged), and falls to 0 once a server has republished them all,
/// when a fresh client sees every value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_every_earlier_set_until_the_server_republished_it() {
    let token = CancellationToken::new();
    let (_server, addr) = server(&token).await;
    let writer = client("/f/", &[], &token).await;
    for i in 0..50usize {
        writer
            .set(format!("/f/{}", i % 20), i.to_string(), None)
            .await
            .unwrap();
        assert_eq!(writer.in_flight().await.unwrap(), i + 1);
    }
    writer.connect(addr.clone()).await.unwrap();
    within(secs(20), "every set acknowledged", async {
        while writer.in_flight().await.unwrap() > 0 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let reader = client("/f/", &[&addr], &token).await;
    within(secs(20), "reader synced", reader.wait_active())
        .await
        .unwrap();
    let got = reader.entries().await.unwrap();
    let want: Vec<(Bytes, Bytes)> = (30..50)
        .map(|i| (format!("/f/{}", i % 20), i.to_string()))
        .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(got, want);
    token.cancel();
}
