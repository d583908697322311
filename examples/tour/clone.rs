//! Tour section: Clone. Two clients converge on the same map through one
//! server, and an ephemeral key expires everywhere.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::clone::{
    CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, ServerAddr,
};

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(tour())?
}

async fn tour() -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token).await?;
    let ep = server.endpoints();
    println!(
        "   server: snapshots {}, updates {}, collector {}",
        ep.snapshot, ep.publisher, ep.collector
    );
    let addr = ServerAddr::from_endpoints(ep)?;
    let started = Instant::now();
    let (a, b) = (client(&addr, &token).await?, client(&addr, &token).await?);
    a.wait_active().await?;
    b.wait_active().await?;
    println!("   clients A and B synced in {:.2?}", started.elapsed());

    for i in 0..100 {
        a.set(format!("/tour/a/{i}"), format!("{}", i * i), None)
            .await?;
        b.set(format!("/tour/b/{i}"), format!("{}", i * 3), None)
            .await?;
    }
    let ttl = Duration::from_secs(1);
    let set_at = Instant::now();
    a.set("/tour/ephemeral", "here for a second", Some(ttl))
        .await?;
    println!("   A and B each set 100 keys; A set one ephemeral key (ttl 1 s)");
    let both = async |n: usize| -> anyhow::Result<()> {
        wait(|| async { Ok(a.entries().await?.len() == n && b.entries().await?.len() == n) }).await
    };
    both(201).await?;
    let (da, db) = (digest(&a).await?, digest(&b).await?);
    println!(
        "   A: 201 keys, digest {da:016x}   B: 201 keys, digest {db:016x}   {}",
        if da == db { "(equal)" } else { "(DIFFERENT)" }
    );
    anyhow::ensure!(da == db, "clients did not converge");
    both(200).await?;
    println!(
        "   ephemeral key gone from A and B {:.1?} after it was set",
        set_at.elapsed()
    );
    a.shutdown().await?;
    b.shutdown().await?;
    let s = server.shutdown().await?;
    println!(
        "   server: {} updates sequenced, {} expired, {} snapshots sent, {} bad messages",
        s.store.updates,
        s.store.expired,
        s.snapshots_completed,
        s.store.bad_kvsets + s.store.bad_requests
    );
    Ok(())
}

async fn client(addr: &ServerAddr, token: &CancellationToken) -> anyhow::Result<CloneClient> {
    let c = CloneClient::start(CloneClientConfig::new(), token).await?;
    c.connect(addr.clone()).await?;
    Ok(c)
}

async fn digest(c: &CloneClient) -> anyhow::Result<u64> {
    let mut h = DefaultHasher::new();
    c.entries().await?.hash(&mut h);
    Ok(h.finish())
}

async fn wait<F, Fut>(mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
