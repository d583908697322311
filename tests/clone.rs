//! Clone server and client together over loopback: convergence, subtrees,
//! ephemeral values, and the reference implementation's bugs (peers.md §5)
//! that must not happen here.

mod common;
use common::*;

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::clone::agent::AgentConfig;
use zpatterns::clone::kvmsg::KvMsg;
use zpatterns::clone::store::{Store, StoreConfig};
use zpatterns::clone::{
    ClientConfig, CloneClient, CloneServer, Phase, ServerAddr, ServerConfig, ServerEndpoints,
};

fn fast_client() -> ClientConfig {
    let mut c = ClientConfig::default();
    c.agent = agent_config(Duration::from_millis(1500));
    c
}

fn agent_config(server_ttl: Duration) -> AgentConfig {
    let mut a = AgentConfig::default();
    a.server_ttl = server_ttl;
    a.min_backoff = ms(100);
    a.max_backoff = ms(400);
    a
}

async fn server(token: &CancellationToken) -> (CloneServer, ServerAddr) {
    let s = CloneServer::start(ServerConfig::loopback(), token)
        .await
        .unwrap();
    let addr = ServerAddr::from_endpoints(s.endpoints()).unwrap();
    (s, addr)
}

/// Starts a server on the endpoints a stopped one used (retrying while the
/// old listeners close).
async fn restart_on(endpoints: &ServerEndpoints, token: &CancellationToken) -> CloneServer {
    let spec = |e: &str| zpatterns::endpoint::EndpointSpec::bind(e).unwrap();
    within(secs(10), "rebind the same ports", async {
        loop {
            let config = ServerConfig::new(
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
    let c = CloneClient::new(fast_client(), token);
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
    srv.stop().await.unwrap();
    let mut config = fast_client();
    config.agent = agent_config(ms(300));
    let c = CloneClient::new(config, &token);
    c.connect(addr.clone()).await.unwrap();
    tokio::time::sleep(secs(3)).await;
    let failed = c.stats().await.unwrap().agent.failovers;
    assert!(
        failed >= 3,
        "only {failed} attempts while the server was down"
    );
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
    s1.stop().await.unwrap();
    let _s2 = restart_on(&endpoints, &token).await;
    // Another writer gives the new server a few updates.
    let w = client("/w/", &[&addr], &token).await;
    w.wait_active().await.unwrap();
    w.set("fresh", "new", None).await.unwrap();
    wait_value(&c, "fresh", Some("new")).await;
    wait_value(&c, "k0", None).await;
    let stats = c.stats().await.unwrap();
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
    let now = std::time::Instant::now();
    let mut store = Store::new(StoreConfig::default(), now);
    for i in 0..n {
        store.handle_kvset(KvMsg::new(format!("/k/{i:07}"), "v").unwrap(), now);
    }
    let srv = CloneServer::start_with_store(ServerConfig::loopback(), store, &token)
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
    let stats = reader.stats().await.unwrap();
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
