//! The Binary Star driver's I/O pieces: the state link between the two
//! servers ([`StateLink`]: state PUB bound locally, state SUB connected to
//! the peer) and the durable promotion epoch ([`EpochFile`]).
//!
//! Guide ch. 4, `bstar`'s `statepub`/`statesub`. The `zeromq` crate's
//! `connect` blocks until the peer is up, so the SUB connects in its own
//! task and feeds a channel; once connected it reconnects by itself while
//! it is being read.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, Instrument};
use zeromq::prelude::*;
use zeromq::{PubSocket, SocketOptions, SubSocket};

use super::error::BstarError;
use crate::endpoint::{Attach, EndpointSpec};

/// How long one connect attempt of the state SUB may take before it is
/// retried (the `zeromq` crate backs off exponentially inside an attempt;
/// restarting it bounds the delay after the peer comes up).
const CONNECT_ATTEMPT: Duration = Duration::from_millis(500);

/// Peer state messages queued between the SUB task and the FSM.
const LINK_QUEUE: usize = 64;

/// The state link: PUB bound at `local`, SUB connected to `remote` and
/// subscribed to everything.
pub(crate) struct StateLink {
    publisher: PubSocket,
    rx: mpsc::Receiver<Vec<Bytes>>,
    _stop: DropGuard,
}

impl std::fmt::Debug for StateLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLink").finish_non_exhaustive()
    }
}

impl StateLink {
    /// Binds the state PUB (returned: the bound endpoint, with the real
    /// port) and starts connecting the state SUB in the background under a
    /// child of `token`. Never waits for the peer.
    pub(crate) async fn start(
        local: &EndpointSpec,
        remote: &EndpointSpec,
        token: &CancellationToken,
    ) -> Result<(Self, String), BstarError> {
        if local.attach() != Attach::Bind {
            return Err(BstarError::Config(format!(
                "the state PUB binds: give its endpoint as @{} (got {local})",
                local.endpoint()
            )));
        }
        if remote.attach() != Attach::Connect {
            return Err(BstarError::Config(format!(
                "the state SUB connects to the peer: give its endpoint as >{} (got {remote})",
                remote.endpoint()
            )));
        }
        let mut publisher = PubSocket::new();
        let bound = local.attach_to(&mut publisher).await?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let stop = token.child_token();
        let span = tracing::info_span!("bstar_state_sub", remote = %remote.endpoint());
        let endpoint = remote.endpoint().to_owned();
        let task_token = stop.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    () = task_token.cancelled() => {}
                    () = run_sub(&endpoint, &tx) => {}
                }
            }
            .instrument(span),
        );
        Ok((
            Self {
                publisher,
                rx,
                _stop: stop.drop_guard(),
            },
            bound,
        ))
    }

    /// Publishes one state frame (dropped silently if the peer is not
    /// subscribed yet, as PUB does).
    pub(crate) async fn publish(&mut self, frame: Bytes) -> Result<(), BstarError> {
        self.publisher.send(frame.into()).await?;
        Ok(())
    }

    /// The next message from the peer's state PUB, as frames. An empty
    /// list (sent once, on the first connection) means the SUB has just
    /// connected: pass it to
    /// [`Fsm::handle_peer_state`](super::Fsm::handle_peer_state) like any
    /// other message (it restarts the silence window while the role is
    /// undecided). Cancel-safe. `None` once the link has stopped.
    pub(crate) async fn recv(&mut self) -> Option<Vec<Bytes>> {
        self.rx.recv().await
    }

    /// A message already received, if any, without waiting (to apply
    /// queued peer states before a vote).
    pub(crate) fn try_recv(&mut self) -> Option<Vec<Bytes>> {
        self.rx.try_recv().ok()
    }

    /// Closes the PUB now (so a restart can bind the port again at once).
    pub(crate) async fn close(self) {
        let Self { publisher, .. } = self;
        publisher.close().await;
    }
}

async fn run_sub(endpoint: &str, tx: &mpsc::Sender<Vec<Bytes>>) {
    let mut sub = loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_ATTEMPT);
        let mut sub = SubSocket::with_options(options);
        if sub.subscribe("").await.is_err() {
            continue;
        }
        match sub.connect(endpoint).await {
            Ok(()) => break sub,
            Err(e) => debug!(cause = %e, "peer not up yet, retrying"),
        }
    };
    info!("state link connected to peer");
    if tx.send(Vec::new()).await.is_err() {
        return;
    }
    loop {
        match sub.recv().await {
            Ok(msg) => {
                if tx.send(msg.into_vec()).await.is_err() {
                    return;
                }
            }
            // The SUB drops the failed connection and reconnects itself.
            Err(e) => debug!(cause = %e, "state link receive failed"),
        }
    }
}

/// A promotion epoch kept durably in a file: one decimal number and a
/// newline, replaced atomically (write a temporary file, fsync, rename,
/// fsync the directory).
///
/// Its calls block on the file system: from async code, run
/// [`store`](Self::store) with `tokio::task::spawn_blocking`.
#[derive(Debug, Clone)]
pub struct EpochFile {
    path: PathBuf,
}

impl EpochFile {
    /// Opens `path` and reads the epoch in it: 0 if the file does not
    /// exist; [`BstarError::EpochCorrupt`] if it holds anything but one
    /// decimal number (surrounding whitespace allowed).
    pub fn open(path: impl Into<PathBuf>) -> Result<(Self, u64), BstarError> {
        let path = path.into();
        let epoch = match fs::read(&path) {
            Ok(bytes) => parse_epoch(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(BstarError::EpochIo { path, source }),
        };
        Ok((Self { path }, epoch))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the stored epoch durably (it survives a crash or power
    /// loss once this returns `Ok`).
    pub fn store(&self, epoch: u64) -> Result<(), BstarError> {
        let io = |source| BstarError::EpochIo {
            path: self.path.clone(),
            source,
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        {
            let mut f = fs::File::create(&tmp).map_err(io)?;
            f.write_all(format!("{epoch}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

fn parse_epoch(path: &Path, bytes: &[u8]) -> Result<u64, BstarError> {
    let corrupt = || BstarError::EpochCorrupt {
        path: path.to_owned(),
        found: String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt())?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt());
    }
    text.parse().map_err(|_| corrupt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("zpatterns-bstar-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn epoch_file_round_trips_and_a_missing_file_is_zero() {
        let dir = scratch("roundtrip");
        let path = dir.join("epoch");
        let (file, epoch) = EpochFile::open(&path).unwrap();
        assert_eq!(epoch, 0);
        file.store(7).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "7\n");
        file.store(8).unwrap();
        let (_, epoch) = EpochFile::open(&path).unwrap();
        assert_eq!(epoch, 8);
        assert!(!dir.join("epoch.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_in_the_epoch_file_is_a_clear_error() {
        let dir = scratch("garbage");
        for bad in [
            &b"x1\n"[..],
            b"",
            b"-3",
            b"\xff\xfe",
            b"99999999999999999999999",
            b"1 2",
        ] {
            let path = dir.join("epoch");
            fs::write(&path, bad).unwrap();
            let err = EpochFile::open(&path).unwrap_err();
            assert!(
                matches!(err, BstarError::EpochCorrupt { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("corrupt"), "{err}");
        }
        fs::write(dir.join("epoch"), " 42 \n").unwrap();
        assert_eq!(EpochFile::open(dir.join("epoch")).unwrap().1, 42);
        let _ = fs::remove_dir_all(&dir);
    }
}
