//! One ZMTP connection of the XPUB server: the NULL handshake, then a
//! reader (subscriptions, PING) and a writer (batched message frames).
//!
//! The writer drains a bounded queue, encodes everything that is waiting
//! into one buffer and writes it with one syscall, so a busy subscriber costs
//! one `write` per batch rather than one flush per message.

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

/// What a connection's writer sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// One message.
    One(Shared),
    /// Several messages in order, bypassing the queue limit (replays).
    Bulk(Vec<Shared>),
    /// A PONG answering a ZMTP 3.1 PING.
    Pong(Bytes),
}

/// What a connection reports to its server.
#[derive(Debug)]
pub(crate) enum Up {
    Connected {
        peer: u64,
        remote: SocketAddr,
        tx: mpsc::Sender<Out>,
    },
    Message {
        peer: u64,
        frames: Vec<Bytes>,
    },
    Closed {
        peer: u64,
        reason: String,
    },
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) hwm: usize,
    pub(crate) max_frame: usize,
    pub(crate) max_frames: usize,
    pub(crate) handshake_timeout: Duration,
}

const PEER_TYPES: [&str; 2] = ["SUB", "XSUB"];

/// Runs one connection to completion; always ends with `Up::Closed`.
pub(crate) async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    peer: u64,
    limits: Limits,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let reason = tokio::select! {
        r = run(stream, remote, peer, limits, &up) => match r {
            Ok(()) => "peer closed the connection".to_owned(),
            Err(e) => e,
        },
        _ = cancel.cancelled() => "server shutting down".to_owned(),
    };
    let _ = up.send(Up::Closed { peer, reason }).await;
}

async fn run(
    stream: TcpStream,
    remote: SocketAddr,
    peer: u64,
    limits: Limits,
    up: &mpsc::Sender<Up>,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    tokio::time::timeout(
        limits.handshake_timeout,
        handshake(&mut rd, &mut wr, &mut buf, limits.max_frame),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake failed: {e}"))?;
    let (tx, rx) = mpsc::channel(limits.hwm.max(1));
    let pong_tx = tx.clone();
    if up.send(Up::Connected { peer, remote, tx }).await.is_err() {
        return Ok(());
    }
    let writer = tokio::spawn(write_loop(wr, rx));
    let r = read_loop(&mut rd, &mut buf, peer, limits, up, &pong_tx).await;
    writer.abort();
    r
}

async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    max_frame: usize,
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
    codec::encode_ready(&[("Socket-Type", b"XPUB")], &mut ready);
    wr.write_all(&ready).await.map_err(io)?;
    let frame = loop {
        if let Some(f) = codec::decode_frame(buf, max_frame)? {
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
    if !PEER_TYPES.contains(&kind.as_str()) {
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

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    peer: u64,
    limits: Limits,
    up: &mpsc::Sender<Up>,
    pong: &mpsc::Sender<Out>,
) -> Result<(), String> {
    let mut frames = Vec::new();
    let mut size = 0;
    loop {
        while let Some(f) = codec::decode_frame(buf, limits.max_frame).map_err(|e| e.to_string())? {
            if f.command {
                handle_command(&f.body, peer, up, pong).await?;
                continue;
            }
            size += f.body.len();
            frames.push(f.body);
            // Subscribers only send subscriptions: bound what one message may hold.
            if frames.len() > limits.max_frames || size > limits.max_frame {
                return Err(format!(
                    "message over the limits ({} frames / {} bytes)",
                    limits.max_frames, limits.max_frame
                ));
            }
            if !f.more {
                size = 0;
                let msg = std::mem::take(&mut frames);
                if up.send(Up::Message { peer, frames: msg }).await.is_err() {
                    return Ok(());
                }
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
    }
}

async fn handle_command(
    body: &Bytes,
    peer: u64,
    up: &mpsc::Sender<Up>,
    pong: &mpsc::Sender<Out>,
) -> Result<(), String> {
    let (name, data) = codec::parse_command(body).map_err(|e| e.to_string())?;
    match name.as_str() {
        // ZMTP 3.1 heartbeat: PING = ttl(2) context; answer with the context.
        "PING" => {
            let context = if data.len() >= 2 {
                data.slice(2..)
            } else {
                Bytes::new()
            };
            let _ = pong.try_send(Out::Pong(context));
        }
        // ZMTP 3.1 subscription commands, mapped to the message form.
        "SUBSCRIBE" | "CANCEL" => {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(u8::from(name == "SUBSCRIBE"));
            v.extend_from_slice(&data);
            let frames = vec![Bytes::from(v)];
            if up.send(Up::Message { peer, frames }).await.is_err() {
                return Ok(());
            }
        }
        "ERROR" => return Err("peer sent ERROR".to_owned()),
        other => debug!(peer, command = other, "ignoring ZMTP command"),
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Out>) {
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
                            return;
                        }
                    }
                }
                Out::Pong(ctx) => codec::encode_command("PONG", &ctx, &mut buf),
            }
            if flush_if_full(&mut wr, &mut buf).await.is_err() {
                return;
            }
        }
        if !buf.is_empty() && wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * FLUSH_AT {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
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
