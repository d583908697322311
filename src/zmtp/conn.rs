//! One ZMTP connection of the XPUB or XSUB server, or of the message
//! transport's ROUTER or DEALER: the NULL handshake, then a reader
//! (messages in batches, PING) and a writer (batched frames).
//!
//! The handshake answers with the socket type the server plays for this
//! peer: XPUB to SUB/XSUB peers, XSUB to PUB/XPUB peers and, when the XSUB
//! server also accepts pushers (the Clone collector), PULL to PUSH peers.
//! That server reads the peer's READY before sending its own (libzmq and
//! the `zeromq` crate both send READY without waiting for the other side's),
//! so it can choose; a peer of any other type is refused before any READY.
//! A ROUTER takes DEALER, REQ and ROUTER peers and reports the `Identity`
//! of their READY; a DEALER announces its own.
//!
//! The reader decodes everything one `read` brought in and hands it to its
//! server as one batch, so a busy publisher costs one channel send per read
//! rather than one per message. A frame or message over the size or frame
//! limit is seen from its header, before its body is buffered: it either
//! ends the connection or (when the server asks for it) is skipped unread
//! and counted, the connection staying up. The writer drains a bounded
//! queue, encodes everything that is waiting into one buffer and writes it
//! with one syscall.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
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
    /// The peer's socket type cannot talk to this server (e.g. a DEALER at
    /// an XSUB): refused during the handshake.
    SocketType,
    /// The server is shutting down.
    Shutdown,
    /// The server disconnected a subscriber whose queue stayed full for
    /// longer than its slow-subscriber policy allows
    /// ([`SlowPolicy::Disconnect`](super::SlowPolicy::Disconnect)).
    Slow,
}

/// The socket type a peer announced in its READY, among those a server
/// accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerSocketType {
    /// A PUB: sends data, filtered by the subscriptions it is sent.
    Pub,
    /// An XPUB: like PUB.
    XPub,
    /// A SUB: sends subscriptions.
    Sub,
    /// An XSUB: sends subscriptions.
    XSub,
    /// A PUSH: sends data, needs no subscription (Guide ch. 5, the clients
    /// of Clone models 3-5).
    Push,
    /// A DEALER: a client of a ROUTER (the message transport's peers).
    Dealer,
    /// A ROUTER: the server a DEALER connects to.
    Router,
    /// A REQ: a ROUTER's client with envelopes.
    Req,
    /// A REP: a DEALER's server with envelopes.
    Rep,
}

impl PeerSocketType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "PUB" => Self::Pub,
            "XPUB" => Self::XPub,
            "SUB" => Self::Sub,
            "XSUB" => Self::XSub,
            "PUSH" => Self::Push,
            "DEALER" => Self::Dealer,
            "ROUTER" => Self::Router,
            "REQ" => Self::Req,
            "REP" => Self::Rep,
            _ => return None,
        })
    }

    /// The name in ZMTP's `Socket-Type` property (`"PUB"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pub => "PUB",
            Self::XPub => "XPUB",
            Self::Sub => "SUB",
            Self::XSub => "XSUB",
            Self::Push => "PUSH",
            Self::Dealer => "DEALER",
            Self::Router => "ROUTER",
            Self::Req => "REQ",
            Self::Rep => "REP",
        }
    }

    /// True for PUB and XPUB: peers that send only what they are
    /// subscribed to.
    pub fn needs_subscriptions(self) -> bool {
        matches!(self, Self::Pub | Self::XPub)
    }
}

impl std::fmt::Display for PeerSocketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Messages a connection skipped unread for breaking a limit (only when
/// its limits say to skip rather than disconnect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Over the size limit.
    pub(crate) oversized: u64,
    /// Over the frame-count limit.
    pub(crate) too_many_frames: u64,
}

impl Skipped {
    fn any(self) -> bool {
        self.oversized + self.too_many_frames > 0
    }
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
        kind: PeerSocketType,
        /// The `Identity` property of the peer's READY (empty if none).
        identity: Bytes,
        tx: mpsc::Sender<Out>,
        /// Cancelling it ends this connection at once (queued messages
        /// are discarded), reported as [`CloseCause::Slow`].
        kill: CancellationToken,
    },
    /// Complete messages, in arrival order, and the messages skipped since
    /// the last batch.
    Batch {
        peer: u64,
        msgs: Vec<Shared>,
        skipped: Skipped,
    },
    Closed {
        peer: u64,
        reason: String,
        cause: CloseCause,
    },
    /// A connection over the listener's limit was accepted and closed.
    Refused { remote: SocketAddr },
    /// A connection failed its handshake (never announced): wrong socket
    /// type ([`CloseCause::SocketType`]) or anything else ([`CloseCause::Error`]).
    Rejected {
        remote: SocketAddr,
        reason: String,
        cause: CloseCause,
    },
}

/// Which socket this end of the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// We are XPUB; peers are SUB/XSUB and send subscriptions.
    XPub,
    /// We are XSUB; peers are PUB/XPUB and send data.
    XSub,
    /// We are ROUTER; peers are DEALER/REQ/ROUTER and name themselves with
    /// their READY's `Identity`.
    Router,
    /// We are DEALER (announcing [`Limits::identity`]); peers are
    /// ROUTER/REP/DEALER.
    Dealer,
}

impl Role {
    fn ours(self) -> &'static [u8] {
        match self {
            Role::XPub => b"XPUB",
            Role::XSub => b"XSUB",
            Role::Router => b"ROUTER",
            Role::Dealer => b"DEALER",
        }
    }

    fn accepts(self, peer: PeerSocketType) -> bool {
        match self {
            Role::XPub => matches!(peer, PeerSocketType::Sub | PeerSocketType::XSub),
            Role::XSub => peer.needs_subscriptions(),
            Role::Router => matches!(
                peer,
                PeerSocketType::Dealer | PeerSocketType::Req | PeerSocketType::Router
            ),
            Role::Dealer => matches!(
                peer,
                PeerSocketType::Router | PeerSocketType::Rep | PeerSocketType::Dealer
            ),
        }
    }
}

/// Takes a connection's complete messages from its reader task itself,
/// without a hop through the server's task (the message transport, whose
/// hand-off never waits). `identity` is the peer's READY `Identity`.
pub(crate) trait Deliver: Send + Sync {
    fn deliver(&self, identity: &Bytes, msgs: Vec<Shared>, skipped: Skipped);
}

/// A [`Deliver`] in [`Limits`].
#[derive(Clone)]
pub(crate) struct Direct(pub(crate) Arc<dyn Deliver>);

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

/// Connection limits (and the routing id a DEALER announces).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Where complete messages go: the reader's own call of this, or (when
    /// `None`) [`Up::Batch`] to the server.
    pub(crate) direct: Option<Direct>,
    pub(crate) role: Role,
    /// The `Identity` property sent in our READY, when not empty.
    pub(crate) identity: Bytes,
    /// Capacity of the writer's queue.
    pub(crate) hwm: usize,
    /// Largest frame, and largest message (all frames), accepted.
    pub(crate) max_message: usize,
    /// Most frames in one message.
    pub(crate) max_frames: usize,
    pub(crate) handshake_timeout: Duration,
    /// Free space ensured in the read buffer before each read.
    pub(crate) read_chunk: usize,
    /// An XSUB that also takes PUSH peers (answering them as PULL).
    pub(crate) accept_push: bool,
    /// Skip a message over `max_message` / `max_frames` unread (and count
    /// it) instead of disconnecting the peer.
    pub(crate) skip_oversized: bool,
}

impl Limits {
    /// The socket type we answer `peer` with, if we talk to it at all.
    fn answer(&self, peer: PeerSocketType) -> Option<&'static [u8]> {
        if self.role.accepts(peer) {
            Some(self.role.ours())
        } else if self.accept_push && self.role == Role::XSub && peer == PeerSocketType::Push {
            Some(b"PULL")
        } else {
            None
        }
    }
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
    let kill = cancel.child_token();
    let Closing(cause, reason) = tokio::select! {
        r = run(stream, remote, peer, limits, &up, &mut announced, &kill) => match r {
            Ok(()) => Closing(CloseCause::PeerClosed, "peer closed the connection".to_owned()),
            Err(e) => e,
        },
        _ = kill.cancelled() => if cancel.is_cancelled() {
            Closing(CloseCause::Shutdown, "server shutting down".to_owned())
        } else {
            Closing(CloseCause::Slow, "disconnected by the server: its queue stayed full".to_owned())
        },
    };
    let report = if announced {
        Up::Closed {
            peer,
            reason,
            cause,
        }
    } else if cause == CloseCause::Shutdown {
        return false;
    } else {
        Up::Rejected {
            remote,
            reason,
            cause,
        }
    };
    let _ = up.send(report).await;
    announced
}

async fn run(
    stream: TcpStream,
    remote: SocketAddr,
    peer: u64,
    limits: Limits,
    up: &mpsc::Sender<Up>,
    announced: &mut bool,
    kill: &CancellationToken,
) -> Result<(), Closing> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(limits.read_chunk);
    let (kind, identity) = tokio::time::timeout(
        limits.handshake_timeout,
        handshake(&mut rd, &mut wr, &mut buf, &limits),
    )
    .await
    .map_err(|_| Closing::error("handshake timed out"))?
    .map_err(|e| {
        let cause = match e {
            ZmtpError::SocketType(_) => CloseCause::SocketType,
            _ => CloseCause::Error,
        };
        Closing(cause, format!("handshake failed: {e}"))
    })?;
    let (tx, rx) = mpsc::channel(limits.hwm.max(1));
    // The reader holds only a weak sender (for PONGs): when the server drops
    // its sender the writer ends, and with it the connection.
    let pong_tx = tx.downgrade();
    let connected = Up::Connected {
        peer,
        remote,
        kind,
        identity: identity.clone(),
        tx,
        kill: kill.clone(),
    };
    if up.send(connected).await.is_err() {
        return Ok(());
    }
    *announced = true;
    let mut writer = tokio::spawn(write_loop(wr, rx));
    let r = tokio::select! {
        r = read_loop(&mut rd, &mut buf, (peer, &identity), &limits, up, &pong_tx) => r,
        w = &mut writer => Err(match w {
            Ok(true) => Closing(CloseCause::Overflow, "dropped by the server (its queue overflowed)".to_owned()),
            _ => Closing::error("write error"),
        }),
    };
    writer.abort();
    r
}

/// The greeting and READY exchange; returns the peer's socket type and
/// the `Identity` it announced (empty if none).
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<(PeerSocketType, Bytes), ZmtpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| ZmtpError::Command(io_kind(&e));
    wr.write_all(&codec::greeting()).await.map_err(io)?;
    let mut g = [0u8; GREETING_LEN];
    rd.read_exact(&mut g).await.map_err(io)?;
    codec::check_greeting(&g)?;
    // A server with one socket type answers at once; one whose type depends
    // on the peer's reads the peer's READY first.
    let answer_first = !limits.accept_push;
    if answer_first {
        send_ready(wr, limits.role.ours(), &limits.identity)
            .await
            .map_err(io)?;
    }
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
    let name = props
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Socket-Type"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let kind = PeerSocketType::parse(&name);
    let (Some(kind), Some(ours)) = (kind, kind.and_then(|k| limits.answer(k))) else {
        return Err(ZmtpError::SocketType(name));
    };
    if !answer_first {
        send_ready(wr, ours, &limits.identity).await.map_err(io)?;
    }
    let identity = props
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Identity"))
        .map(|(_, v)| v)
        .unwrap_or_default();
    Ok((kind, identity))
}

async fn send_ready<W: AsyncWrite + Unpin>(
    wr: &mut W,
    ours: &[u8],
    identity: &[u8],
) -> std::io::Result<()> {
    let mut ready = BytesMut::new();
    if identity.is_empty() {
        codec::encode_ready(&[("Socket-Type", ours)], &mut ready);
    } else {
        codec::encode_ready(&[("Socket-Type", ours), ("Identity", identity)], &mut ready);
    }
    wr.write_all(&ready).await
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed during handshake",
        _ => "i/o error during handshake",
    }
}

/// The message being assembled by a reader, and the skipping of one that
/// broke a limit.
#[derive(Default)]
struct Assembly {
    frames: Vec<Bytes>,
    size: usize,
    /// Skipping the rest of the current message, for this reason.
    skipping: Option<Limit>,
    /// Body bytes of the current frame still to skip.
    skip: u64,
    /// The frame being skipped is the message's last.
    skip_ends: bool,
    skipped: Skipped,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Size,
    Frames,
}

impl Assembly {
    /// The limit a data frame with header `h` breaks, if any (once one
    /// frame of a message broke one, the rest of the message does too).
    fn breaks(&self, h: &codec::FrameHeader, limits: &Limits) -> Option<Limit> {
        if self.skipping.is_some() {
            self.skipping
        } else if self.frames.len() >= limits.max_frames {
            Some(Limit::Frames)
        } else if self.size as u64 + h.size > limits.max_message as u64 {
            Some(Limit::Size)
        } else {
            None
        }
    }

    /// Starts (or goes on) skipping the message whose next frame has
    /// header `h`.
    fn skip_frame(&mut self, h: codec::FrameHeader, why: Limit, buf: &mut BytesMut) {
        if self.skipping.is_none() {
            self.frames.clear();
            self.size = 0;
            self.skipping = Some(why);
        }
        buf.advance(h.len);
        self.skip = h.size;
        self.skip_ends = !h.more;
        self.skip_input(buf);
    }

    /// Drops what is buffered of the frame being skipped; ends the skip
    /// (counting the message) once its last frame is gone.
    fn skip_input(&mut self, buf: &mut BytesMut) {
        let n = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        buf.advance(n);
        self.skip -= n as u64;
        if self.skip == 0 && self.skip_ends {
            match self.skipping.take() {
                Some(Limit::Size) => self.skipped.oversized += 1,
                Some(Limit::Frames) => self.skipped.too_many_frames += 1,
                None => {}
            }
            self.skip_ends = false;
        }
    }
}

/// Decodes messages and hands them over in batches; returns when the peer
/// closes or breaks a rule.
async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    (peer, identity): (u64, &Bytes),
    limits: &Limits,
    up: &mpsc::Sender<Up>,
    pong: &mpsc::WeakSender<Out>,
) -> Result<(), Closing> {
    let to = Handover {
        up,
        peer,
        identity,
        direct: limits.direct.as_ref(),
    };
    let mut asm = Assembly::default();
    let mut batch: Vec<Shared> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        loop {
            if asm.skip > 0 {
                asm.skip_input(buf);
                if asm.skip > 0 {
                    break;
                }
                continue;
            }
            let Some(h) = codec::frame_header(buf).map_err(Closing::from_zmtp)? else {
                break;
            };
            if !h.command {
                if let Some(why) = asm.breaks(&h, limits) {
                    if !limits.skip_oversized {
                        return Err(Closing(
                            CloseCause::TooLarge,
                            format!(
                                "message over the limits ({} frames / {} bytes)",
                                limits.max_frames, limits.max_message
                            ),
                        ));
                    }
                    asm.skip_frame(h, why, buf);
                    continue;
                }
            }
            let Some(f) =
                codec::decode_frame(buf, limits.max_message).map_err(Closing::from_zmtp)?
            else {
                break;
            };
            if f.command {
                if let Some(msg) = handle_command(&f.body, peer, limits.role, pong)? {
                    batch.push(msg);
                }
                continue;
            }
            asm.size += f.body.len();
            asm.frames.push(f.body);
            if !f.more {
                batch_bytes += asm.size;
                asm.size = 0;
                // One allocation: the frames move into the shared slice and
                // `asm.frames` keeps its capacity for the next message.
                batch.push(asm.frames.drain(..).collect());
                if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_MSGS {
                    batch_bytes = 0;
                    if !to.hand_over(&mut batch, &mut asm.skipped).await {
                        return Ok(());
                    }
                }
            }
        }
        if !batch.is_empty() || asm.skipped.any() {
            batch_bytes = 0;
            if !to.hand_over(&mut batch, &mut asm.skipped).await {
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

/// Where a reader's batches go.
struct Handover<'a> {
    up: &'a mpsc::Sender<Up>,
    peer: u64,
    identity: &'a Bytes,
    direct: Option<&'a Direct>,
}

impl Handover<'_> {
    /// Hands the batch (and the skip counts) over; false once the server
    /// is gone.
    async fn hand_over(&self, batch: &mut Vec<Shared>, skipped: &mut Skipped) -> bool {
        // The next batch starts at this one's size: no regrowth from empty.
        let next = Vec::with_capacity(batch.len());
        let msgs = std::mem::replace(batch, next);
        let skipped = std::mem::take(skipped);
        if let Some(Direct(d)) = self.direct {
            d.deliver(self.identity, msgs, skipped);
            return !self.up.is_closed();
        }
        self.up
            .send(Up::Batch {
                peer: self.peer,
                msgs,
                skipped,
            })
            .await
            .is_ok()
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
