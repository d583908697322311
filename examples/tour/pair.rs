//! Tour section: the Clone server pair (Guide ch. 5, model 6) over Binary
//! Star. Three clients write steadily through a primary and a backup; the
//! primary is killed mid-stream; the section prints how long the failover
//! took, how many acknowledged updates were lost (none), how many in-flight
//! updates the clients re-sent, and the clients' digests against the new
//! active's map.
//!
//! Timers are shortened so the section takes seconds: Binary Star heartbeat
//! and HUGZ 200 ms (peer dead after 400 ms), client server ttl 1 s (the
//! Guide's are 1 s, 2 s and 5 s; `clone_failover` measures with those).

use std::time::Duration;

use crate::failover::{failover_once, Timers};

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(tour())?
}

async fn tour() -> anyhow::Result<()> {
    let timers = Timers {
        heartbeat: Duration::from_millis(200),
        server_ttl: Duration::from_secs(1),
    };
    println!(
        "   primary + backup on loopback; heartbeat {:?}, client server ttl {:?}; 3 writers, one set per 10 ms each",
        timers.heartbeat, timers.server_ttl
    );
    let o = failover_once(timers, 3, Duration::from_millis(10), (50, 50)).await?;
    println!(
        "   primary killed after {} acknowledged updates",
        o.acked_before
    );
    println!(
        "   backup active after {:.2?}; first update accepted after {:.2?}; every client on it after {:.2?}",
        o.promoted, o.first_update, o.all_moved
    );
    println!(
        "   {} updates sent; acknowledged updates lost: {}; in-flight updates re-sent: {} ({} already applied, dropped by UUID)",
        o.sent, o.lost, o.resent, o.duplicates
    );
    for (n, (mine, active)) in o.digests.iter().enumerate() {
        println!(
            "   client {n}: digest {mine:016x}, new active's subtree {active:016x} {}",
            if mine == active {
                "(equal)"
            } else {
                "(DIFFERENT)"
            }
        );
    }
    anyhow::ensure!(o.lost == 0, "acknowledged updates were lost");
    anyhow::ensure!(
        o.digests.iter().all(|(a, b)| a == b),
        "clients did not converge"
    );
    Ok(())
}
