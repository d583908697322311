//! A TCP relay that a test can cut and heal: it listens on an ephemeral
//! loopback port (kept for the whole test, so nothing else can take it),
//! forwards each connection to a target set later, and on [`Relay::cut`]
//! closes every forwarded connection and refuses new ones until
//! [`Relay::heal`].
//!
//! It lets a test give a server its peer's address before the peer has
//! bound (the target is set once it has), and cut only the link between two
//! servers while their clients still reach both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A cuttable TCP forwarder.
#[derive(Debug)]
pub struct Relay {
    addr: String,
    target: watch::Sender<Option<String>>,
    state: Arc<Mutex<RelayState>>,
    accepted: Arc<AtomicU64>,
    /// Forwarded connections still open.
    open: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct RelayState {
    cut: bool,
    /// Cancelled on a cut: every connection forwarded before it closes.
    generation: CancellationToken,
}

impl Relay {
    /// Listens on `127.0.0.1:0`; forwards nothing until
    /// [`set_target`](Self::set_target).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = format!("tcp://{}", listener.local_addr().unwrap());
        let (target, rx) = watch::channel(None);
        let state = Arc::new(Mutex::new(RelayState {
            cut: false,
            generation: CancellationToken::new(),
        }));
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            rx,
            state.clone(),
            (accepted.clone(), open.clone()),
            stop.clone(),
        ));
        Self {
            addr,
            target,
            state,
            accepted,
            open,
            stop,
        }
    }

    /// `tcp://127.0.0.1:PORT`, to give to whoever should connect through.
    pub fn endpoint(&self) -> &str {
        &self.addr
    }

    /// Where connections go (`tcp://HOST:PORT`; `0.0.0.0` means loopback).
    pub fn set_target(&self, endpoint: &str) {
        let hostport = endpoint
            .trim_start_matches("tcp://")
            .replace("0.0.0.0", "127.0.0.1");
        self.target.send_replace(Some(hostport));
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = true;
        s.generation.cancel();
        s.generation = CancellationToken::new();
    }

    /// [`cut`](Self::cut), then waits until every forwarded connection has
    /// closed, so nothing sent after this returns gets through (a cut
    /// connection's task may forward one last read before it sees the cut).
    pub async fn cut_and_wait(&self) {
        self.cut();
        let started = std::time::Instant::now();
        while self.open.load(Ordering::Acquire) > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "relay connections did not close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.state.lock().unwrap().cut = false;
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().generation.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<Option<String>>,
    state: Arc<Mutex<RelayState>>,
    (accepted, open): (Arc<AtomicU64>, Arc<AtomicU64>),
    stop: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let (cut, generation) = {
            let s = state.lock().unwrap();
            (s.cut, s.generation.clone())
        };
        let Some(to) = target.borrow().clone() else {
            continue; // no target yet: refused (closed), the peer retries
        };
        if cut {
            continue;
        }
        accepted.fetch_add(1, Ordering::Relaxed);
        open.fetch_add(1, Ordering::AcqRel);
        let open = Open(open.clone());
        tokio::spawn(async move {
            let _open = open;
            forward(inbound, to, generation).await;
        });
    }
}

/// Counts a forwarded connection as open until dropped.
struct Open(Arc<AtomicU64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn forward(mut inbound: TcpStream, to: String, generation: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(&to).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        () = generation.cancelled() => {}
        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
