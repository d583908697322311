//! One ZMTP connection of the XPUB or XSUB server: the NULL handshake, then
//! a reader (messages in batches, PING) and a writer (batched frames).
//!
//! The reader decodes everything one `read` brought in and hands it to its
//! server as one batch, so a busy publisher costs one channel send per read
//! rather than one per message; a frame or message over the size limit ends
//! the connection as soon as its header announces it, before its body is
//! buffered. The writer drains a bounded queue, encodes everything that is
//! waiting into one buffer and writes it with one syscall.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::codec::{self, ZmtpError, GREETING_LEN};

/// A message shared by every subscriber it goes to.
pub type Shared = Arc<[Bytes]>;

/// Why a connection ended, as reported in a server's disconnect event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The peer closed its end.
    PeerClosed,
    /// The peer sent a frame or message over the configured size limit (or
    /// frame count): it was disconnected before the body was buffered.
    TooLarge,
    /// The peer did not read what it was sent and its queue overflowed
    /// (publishers, whose subscription queue must not lose frames): it was
    /// disconnected and gets the full subscription set when it reconnects.
    Overflow,
    /// A protocol violation or an I/O error.
    Error,
    /// The server is shutting down.
    Shutdown,
}

/// What a connection's writer sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// One message.
    One(Shared),
    /// Several messages in order as one queue entry. Used only for the
    /// subscription set replayed to a new publisher, which is bounded by
    /// the subscription limits.
    Bulk(Vec<Shared>),
    /// A PONG answering a ZMTP 3.1 PING.
    Pong(Bytes),
}

/// What a connection (or a listener) reports to its server.
#[derive(Debug)]
pub(crate) enum Up {
    Connected {
        peer: u64,
        remote: SocketAddr,
        tx: mpsc::Sender<Out>,
    },
    /// Complete messages, in arrival order.
    Batch { peer: u64, msgs: Vec<Shared> },
    Closed {
        peer: u64,
        reason: String,
        cause: CloseCause,
    },
    /// A connection over the listener's limit was accepted and closed.
    Refused { remote: SocketAddr },
}

/// Which socket this end of the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// We are XPUB; peers are SUB/XSUB and send subscriptions.
    XPub,
    /// We are XSUB; peers are PUB/XPUB and send data.
    XSub,
}

impl Role {
    fn ours(self) -> &'static [u8] {
        match self {
            Role::XPub => b"XPUB",
            Role::XSub => b"XSUB",
        }
    }

    fn peers(self) -> &'static [&'static str] {
        match self {
            Role::XPub => &["SUB", "XSUB"],
            Role::XSub => &["PUB", "XPUB"],
        }
    }
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) role: Role,
    /// Capacity of the writer's queue.
    pub(crate) hwm: usize,
    /// Largest frame, and largest message (all frames), accepted.
    pub(crate) max_message: usize,
    /// Most frames in one message.
    pub(crate) max_frames: usize,
    pub(crate) handshake_timeout: Duration,
    /// Free space ensured in the read buffer before each read.
    pub(crate) read_chunk: usize,
}

/// A batch is handed over once it holds this many payload bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// ... or this many messages.
const BATCH_MSGS: usize = 1024;

struct Closing(CloseCause, String);

impl Closing {
    fn error(e: impl std::fmt::Display) -> Self {
        Closing(CloseCause::Error, e.to_string())
    }

    fn from_zmtp(e: ZmtpError) -> Self {
        match e {
            ZmtpError::TooLarge { .. } => Closing(CloseCause::TooLarge, e.to_string()),
            e => Closing::error(e),
        }
    }
}

/// Runs one connection to completion; always ends with `Up::Closed`.
/// Returns true if the handshake completed (the peer was announced).
pub(crate) async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    peer: u64,
    limits: Limits,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) -> bool {
    let _ = stream.set_nodelay(true);
    let mut announced = false;
    let Closing(cause, reason) = tokio::select! {
        r = run(stream, remote, peer, limits, &up, &mut announced) => match r {
            Ok(()) => Closing(CloseCause::PeerClosed, "peer closed the connection".to_owned()),
            Err(e) => e,
        },
        _ = cancel.cancelled() => Closing(CloseCause::Shutdown, "server shutting down".to_owned()),
    };
    let _ = up
        .send(Up::Closed {
            peer,
            reason,
            cause,
        })
        .await;
    announced
}

async fn run(
    stream: TcpStream,
    remote: SocketAddr,
    peer: u64,
    limits: Limits,
    up: &mpsc::Sender<Up>,
    announced: &mut bool,
) -> Result<(), Closing> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(limits.read_chunk);
    tokio::time::timeout(
        limits.handshake_timeout,
        handshake(&mut rd, &mut wr, &mut buf, limits),
    )
    .await
    .map_err(|_| Closing::error("handshake timed out"))?
    .map_err(|e| Closing::error(format!("handshake failed: {e}")))?;
    let (tx, rx) = mpsc::channel(limits.hwm.max(1));
    // The reader holds only a weak sender (for PONGs): when the server drops
    // its sender the writer ends, and with it the connection.
    let pong_tx = tx.downgrade();
    if up.send(Up::Connected { peer, remote, tx }).await.is_err() {
        return Ok(());
    }
    *announced = true;
    let mut writer = tokio::spawn(write_loop(wr, rx));
    let r = tokio::select! {
        r = read_loop(&mut rd, &mut buf, peer, limits, up, &pong_tx) => r,
        w = &mut writer => Err(match w {
            Ok(true) => Closing(CloseCause::Overflow, "dropped by the server (its queue overflowed)".to_owned()),
            _ => Closing::error("write error"),
        }),
    };
    writer.abort();
    r
}

async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    limits: Limits,
) -> Result<(), ZmtpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| ZmtpError::Command(io_kind(&e));
    wr.write_all(&codec::greeting()).await.map_err(io)?;
    let mut g = [0u8; GREETING_LEN];
    rd.read_exact(&mut g).await.map_err(io)?;
    codec::check_greeting(&g)?;
    let mut ready = BytesMut::new();
    codec::encode_ready(&[("Socket-Type", limits.role.ours())], &mut ready);
    wr.write_all(&ready).await.map_err(io)?;
    // READY metadata is small: a peer that announces a huge one is refused.
    let max = limits.max_message.min(64 * 1024);
    let frame = loop {
        if let Some(f) = codec::decode_frame(buf, max)? {
            break f;
        }
        if rd.read_buf(buf).await.map_err(io)? == 0 {
            return Err(ZmtpError::Command("closed during handshake"));
        }
    };
    let (name, data) = codec::parse_command(&frame.body)?;
    if !frame.command || name != "READY" {
        return Err(ZmtpError::ExpectedReady(name));
    }
    let props = codec::parse_properties(data)?;
    let kind = props
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Socket-Type"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    if !limits.role.peers().contains(&kind.as_str()) {
        return Err(ZmtpError::SocketType(kind));
    }
    Ok(())
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed during handshake",
        _ => "i/o error during handshake",
    }
}

/// Decodes messages and hands them over in batches; returns when the peer
/// closes or breaks a rule.
async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    peer: u64,
    limits: Limits,
    up: &mpsc::Sender<Up>,
    pong: &mpsc::WeakSender<Out>,
) -> Result<(), Closing> {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut batch: Vec<Shared> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        while let Some(f) =
            codec::decode_frame(buf, limits.max_message).map_err(Closing::from_zmtp)?
        {
            if f.command {
                if let Some(msg) = handle_command(&f.body, peer, limits.role, pong)? {
                    batch.push(msg);
                }
                continue;
            }
            size += f.body.len();
            frames.push(f.body);
            if frames.len() > limits.max_frames || size > limits.max_message {
                return Err(Closing(
                    CloseCause::TooLarge,
                    format!(
                        "message over the limits ({} frames / {} bytes)",
                        limits.max_frames, limits.max_message
                    ),
                ));
            }
            if !f.more {
                batch_bytes += size;
                size = 0;
                batch.push(std::mem::take(&mut frames).into());
                if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_MSGS {
                    batch_bytes = 0;
                    let msgs = std::mem::take(&mut batch);
                    if up.send(Up::Batch { peer, msgs }).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !batch.is_empty() {
            batch_bytes = 0;
            let msgs = std::mem::take(&mut batch);
            if up.send(Up::Batch { peer, msgs }).await.is_err() {
                return Ok(());
            }
        }
        // `read_buf` into a full BytesMut reads 64 bytes at a time: keep a
        // chunk free (a partial frame, if any, is moved to the new buffer).
        // A fresh buffer rather than `reserve`: reserving in a buffer whose
        // earlier frames are still referenced can grow it in place, without
        // bound, under a stream of small messages.
        if buf.capacity() - buf.len() < limits.read_chunk / 4 {
            let mut fresh = BytesMut::with_capacity(buf.len() + limits.read_chunk);
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(Closing::error(format!("read error: {e}"))),
        }
    }
}

/// Answers PINGs; maps a subscriber's ZMTP 3.1 SUBSCRIBE/CANCEL commands to
/// the message form.
fn handle_command(
    body: &Bytes,
    peer: u64,
    role: Role,
    pong: &mpsc::WeakSender<Out>,
) -> Result<Option<Shared>, Closing> {
    let (name, data) = codec::parse_command(body).map_err(Closing::error)?;
    match name.as_str() {
        // ZMTP 3.1 heartbeat: PING = ttl(2) context; answer with the context.
        "PING" => {
            let context = if data.len() >= 2 {
                data.slice(2..)
            } else {
                Bytes::new()
            };
            if let Some(tx) = pong.upgrade() {
                let _ = tx.try_send(Out::Pong(context));
            }
        }
        "SUBSCRIBE" | "CANCEL" if role == Role::XPub => {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(u8::from(name == "SUBSCRIBE"));
            v.extend_from_slice(&data);
            return Ok(Some(vec![Bytes::from(v)].into()));
        }
        "ERROR" => return Err(Closing::error("peer sent ERROR")),
        other => debug!(peer, command = other, "ignoring ZMTP command"),
    }
    Ok(None)
}

/// Returns true when the server dropped the queue's sender, false on a
/// write error.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Out>) -> bool {
    let mut batch = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for out in batch.drain(..) {
            match out {
                Out::One(m) => codec::encode_message(m.iter(), &mut buf),
                Out::Bulk(ms) => {
                    for m in ms {
                        codec::encode_message(m.iter(), &mut buf);
                        if flush_if_full(&mut wr, &mut buf).await.is_err() {
                            return false;
                        }
                    }
                }
                Out::Pong(ctx) => codec::encode_command("PONG", &ctx, &mut buf),
            }
            if flush_if_full(&mut wr, &mut buf).await.is_err() {
                return false;
            }
        }
        if !buf.is_empty() && wr.write_all(&buf).await.is_err() {
            return false;
        }
        buf.clear();
        if buf.capacity() > 4 * FLUSH_AT {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    true
}

/// Bytes buffered before a write is forced in the middle of a batch.
const FLUSH_AT: usize = 256 * 1024;

async fn flush_if_full<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    if buf.len() >= FLUSH_AT {
        wr.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}
