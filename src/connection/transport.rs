//! The WebSocket transport: the one module that turns bytes into frames and frames into bytes.
//!
//! Inbound, [`InboundFrames`] decodes the peer's bytes with actix-http's codec, reassembles
//! fragmented messages (RFC 6455 §5.4), enforces the message size limit, checks UTF-8 and
//! classifies every failure as an [`InboundError`] whose close code is decided in one place
//! ([`InboundError::close_code`]). The bytes come from one of two places: the request payload
//! of actix-web's dispatcher (an app embedding [`crate::start`]), or, for a connection taken
//! out of the dispatcher ([`super::upgrade`], the binary's server), the socket itself through
//! [`SocketReader`]. Either way no read buffer is kept while the connection is idle.
//!
//! Outbound, [`OutboundQueue`] is the session's bounded queue of frames not yet written, and
//! [`OutboundBody`] drains it: as the response body the dispatcher polls, or through
//! [`write_out`] straight to the socket. The session actor runs as its own task (not inside
//! the response body, as actix-web-actors' `WebsocketContext` does): a client that stops
//! reading then only fills this queue, while its actor keeps running its heartbeat, timeouts
//! and slow-consumer check.
//!
//! This module knows nothing of close states or of the chat: it must not decide anything
//! beyond "these bytes are (not) a valid frame".

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Item, Message, OpCode, ProtocolError};
use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::task::AtomicWaker;
use futures::Stream;

use crate::close::CloseStatus;
use crate::connection::linger::LingeringStream;

/// One complete event from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A whole text message, reassembled and UTF-8 checked.
    Text(ByteString),
    /// A ping; its payload goes back in the pong.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with a valid payload.
    Close(Option<CloseStatus>),
}

/// Why the inbound stream failed. The stream ends after yielding one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Framing violation (masking, reserved bits, opcode, control frame length, fragmentation
    /// order) or an invalid close payload.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A text message that is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A message larger than the limit.
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    /// A binary message: the chat protocol has none.
    #[error("binary messages are not accepted")]
    Binary,
    /// The connection failed underneath (reset, I/O error).
    #[error("transport error: {0}")]
    Transport(String),
}

impl InboundError {
    /// The close code to fail the connection with (RFC 6455 §7.4.1); `None`: the transport is
    /// gone, so the session is aborted without a close frame.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            InboundError::Protocol(_) => Some(1002),
            InboundError::InvalidUtf8 => Some(1007),
            InboundError::TooBig(_) => Some(1009),
            InboundError::Binary => Some(1003),
            InboundError::Transport(_) => None,
        }
    }

    /// A short reason to put in the close frame.
    pub fn close_reason(&self) -> &'static str {
        match self {
            InboundError::Protocol(_) => "protocol error",
            InboundError::InvalidUtf8 => "invalid utf-8",
            InboundError::TooBig(_) => "message too big",
            InboundError::Binary => "binary messages not accepted",
            InboundError::Transport(_) => "",
        }
    }
}

/// Maps a codec error. Over-long frames are caught by [`check_header`] first.
fn classify(err: ProtocolError, limit: usize) -> InboundError {
    match err {
        ProtocolError::Overflow => InboundError::TooBig(limit),
        // The decoder's only I/O error is "non-zero reserved bits"; transport errors come
        // from the payload, not from here.
        ProtocolError::Io(e) => InboundError::Protocol(e.to_string()),
        other => InboundError::Protocol(other.to_string()),
    }
}

/// Judges the next frame by its header alone, before its payload arrives: actix-http's codec
/// checks the size limit only once the whole payload is buffered, which lets a peer that
/// announces a huge frame make the server buffer it.
fn check_header(buf: &[u8], limit: usize) -> Result<(), InboundError> {
    let [first, second, rest @ ..] = buf else {
        return Ok(());
    };
    // The codec answers these exactly; leave them to it, as they come first in the header.
    let reserved_bits = first & 0x70 != 0;
    let unmasked = second & 0x80 == 0;
    let opcode = first & 0x0f;
    let known_opcode = matches!(opcode, 0x0..=0x2 | 0x8..=0xA);
    if reserved_bits || unmasked || !known_opcode {
        return Ok(());
    }
    let length = match second & 0x7f {
        126 => match rest {
            [a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
            _ => return Ok(()),
        },
        127 => match rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => u64::from_be_bytes(bytes),
            None => return Ok(()),
        },
        n => u64::from(n),
    };
    let is_control = opcode >= 0x8;
    if length >> 63 != 0 {
        Err(InboundError::Protocol(
            "64-bit payload length with the top bit set".into(),
        ))
    } else if is_control && length > 125 {
        Err(InboundError::Protocol(format!(
            "control frame of {length} bytes (at most 125)"
        )))
    } else if length > limit as u64 {
        Err(InboundError::TooBig(limit))
    } else {
        Ok(())
    }
}

/// Decodes a request payload into [`Inbound`] events.
pub struct InboundFrames<S> {
    payload: S,
    codec: Codec,
    buf: BytesMut,
    /// The text message being reassembled from fragments.
    partial: Option<BytesMut>,
    /// No more is read while this many messages are on their way.
    in_flight: Option<InFlight>,
    max_message_bytes: usize,
    eof: bool,
    done: bool,
}

impl<S> InboundFrames<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    /// Reads `payload`, accepting messages of at most `max_message_bytes`; while `in_flight`
    /// is at its limit, reads nothing more (what was read is still decoded).
    pub fn new(payload: S, max_message_bytes: usize, in_flight: Option<InFlight>) -> Self {
        InboundFrames {
            payload,
            codec: Codec::new().max_size(max_message_bytes),
            buf: BytesMut::new(),
            partial: None,
            in_flight,
            max_message_bytes,
            eof: false,
            done: false,
        }
    }

    /// Turns one decoded frame into an event; `None` while a fragmented message is incomplete.
    fn assemble(&mut self, frame: Frame) -> Option<Result<Inbound, InboundError>> {
        match frame {
            Frame::Text(data) => Some(text(data.into())),
            Frame::Binary(_) | Frame::Continuation(Item::FirstBinary(_)) => {
                Some(Err(InboundError::Binary))
            }
            Frame::Ping(data) => Some(Ok(Inbound::Ping(data))),
            Frame::Pong(_) => Some(Ok(Inbound::Pong)),
            Frame::Close(reason) => Some(close(reason)),
            Frame::Continuation(Item::FirstText(data)) => {
                self.partial = Some(BytesMut::from(&data[..]));
                None
            }
            Frame::Continuation(Item::Continue(data)) => self.extend(&data).err().map(Err),
            Frame::Continuation(Item::Last(data)) => match self.extend(&data) {
                Err(e) => Some(Err(e)),
                Ok(()) => Some(text(self.partial.take().unwrap_or_default())),
            },
        }
    }

    fn extend(&mut self, data: &[u8]) -> Result<(), InboundError> {
        // The codec refuses a continuation without a start, so `partial` is set here; a
        // missing one is still answered as the protocol error it would be.
        let partial = self
            .partial
            .as_mut()
            .ok_or_else(|| InboundError::Protocol("continuation without a start".into()))?;
        if partial.len() + data.len() > self.max_message_bytes {
            return Err(InboundError::TooBig(self.max_message_bytes));
        }
        partial.extend_from_slice(data);
        Ok(())
    }
}

fn text(data: BytesMut) -> Result<Inbound, InboundError> {
    ByteString::try_from(data.freeze())
        .map(Inbound::Text)
        .map_err(|_| InboundError::InvalidUtf8)
}

fn close(reason: Option<actix_http::ws::CloseReason>) -> Result<Inbound, InboundError> {
    let Some(reason) = reason else {
        return Ok(Inbound::Close(None));
    };
    // The codec already refused codes that may not appear on the wire and invalid UTF-8.
    CloseStatus::new(reason.code.into(), reason.description.unwrap_or_default())
        .map(|status| Inbound::Close(Some(status)))
        .map_err(|e| InboundError::Protocol(e.to_string()))
}

impl<S> Stream for InboundFrames<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Inbound, InboundError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Err(err) = check_header(&this.buf, this.max_message_bytes) {
                this.done = true;
                return Poll::Ready(Some(Err(err)));
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    if let Some(event) = this.assemble(frame) {
                        this.done = event.is_err();
                        return Poll::Ready(Some(event));
                    }
                    continue;
                }
                Ok(None) => {
                    // An idle connection holds no read buffer: what was read is decoded, and
                    // the next read allocates what it needs.
                    if this.buf.is_empty() && this.buf.capacity() > 0 {
                        this.buf = BytesMut::new();
                    }
                }
                Err(err) => {
                    this.done = true;
                    let err = classify(err, this.max_message_bytes);
                    return Poll::Ready(Some(Err(err)));
                }
            }
            if this.eof {
                this.done = true;
                return Poll::Ready(None);
            }
            if let Some(in_flight) = &this.in_flight {
                if in_flight.poll_room(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                // Nothing pending: the chunk becomes the buffer (no copy when it is not
                // shared, as a socket read's is not).
                Poll::Ready(Some(Ok(chunk))) if this.buf.is_empty() => {
                    this.buf = BytesMut::from(chunk);
                }
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(InboundError::Transport(err.to_string()))));
                }
                Poll::Ready(None) => this.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The inbound bytes of an upgraded connection the session owns (the binary's server, not an
/// embedding app's actix-web handler): read straight from the socket, a read at a time, into a
/// buffer on the thread's stack, so that an idle connection holds no read buffer. Yields what
/// the HTTP parser had read past the upgrade request first.
pub struct SocketReader {
    socket: Rc<LingeringStream>,
    leftover: Option<Bytes>,
}

impl SocketReader {
    /// Reads `socket`, starting with `leftover`.
    pub fn new(socket: Rc<LingeringStream>, leftover: Bytes) -> Self {
        SocketReader {
            socket,
            leftover: Some(leftover).filter(|bytes| !bytes.is_empty()),
        }
    }
}

/// Most bytes taken from the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

impl Stream for SocketReader {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(leftover) = this.leftover.take() {
            return Poll::Ready(Some(Ok(leftover)));
        }
        let read = this.socket.poll_read_shared(cx, |stream| {
            let mut buf = [0u8; READ_CHUNK_BYTES];
            let n = stream.try_read(&mut buf)?;
            Ok(Bytes::copy_from_slice(&buf[..n]))
        });
        match read {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(bytes)) if bytes.is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(PayloadError::Io(err)))),
        }
    }
}

/// Writes what the session queues to its upgraded connection until the session ends it: then
/// half-closes (the connection lingers, see [`super::linger`]) or, when it is not to linger
/// (an abort, an acknowledged close), just drops it.
/// A failed write ends both directions, so that the session's [`SocketReader`] sees the end and
/// the session is aborted.
pub async fn write_out(socket: Rc<LingeringStream>, mut body: OutboundBody) {
    use futures::StreamExt;
    while let Some(chunk) = body.next().await {
        let written = match chunk {
            Ok(chunk) => write_all(&socket, &chunk).await,
            Err(err) => Err(std::io::Error::other(err.to_string())),
        };
        if let Err(err) = written {
            log::debug!("writing to a websocket failed: {err}");
            socket.shutdown_both();
            return;
        }
    }
    if body.aborted() || !socket.lingers() {
        // Dropping the last owner closes the socket: the FIN follows what was written.
        return;
    }
    if let Err(err) = socket.shutdown_write() {
        log::debug!("half-closing a websocket failed: {err}");
        socket.shutdown_both();
    }
}

async fn write_all(socket: &LingeringStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = std::future::poll_fn(|cx| socket.poll_write_shared(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// A session's messages on their way through the application (a chat message on its way to
/// the supervisor and the broker, say): past `limit` of them, the session reads no more from
/// its peer until some are done, and TCP's flow control slows the peer down. A client that
/// floods without a rate limit then fills no unbounded queue; nothing it sent is dropped.
/// Cloning shares the count; tokens may be dropped on any thread.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<InFlightShared>);

#[derive(Debug)]
struct InFlightShared {
    count: AtomicUsize,
    limit: usize,
    /// The reader waiting for room.
    reader: AtomicWaker,
}

/// One message on its way; dropping it says the message is done.
#[derive(Debug)]
pub struct InFlightToken(Arc<InFlightShared>);

/// How many messages of one session may be on their way at once ([`InFlight`]).
pub const MAX_MESSAGES_IN_FLIGHT: usize = 64;

impl InFlight {
    /// A count that stops the reader at `limit` messages.
    pub fn new(limit: usize) -> Self {
        InFlight(Arc::new(InFlightShared {
            count: AtomicUsize::new(0),
            limit,
            reader: AtomicWaker::new(),
        }))
    }

    /// Counts one more message on its way until the token is dropped.
    pub fn hold(&self) -> InFlightToken {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        InFlightToken(self.0.clone())
    }

    /// Messages on their way now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Whether the reader is held back now.
    pub fn is_full(&self) -> bool {
        self.count() >= self.0.limit
    }

    /// Ready while fewer than the limit are on their way; otherwise the reader is woken when
    /// one is done.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_full() {
            return Poll::Ready(());
        }
        self.0.reader.register(cx.waker());
        // A token dropped between the check and the registration woke nobody: look again.
        if !self.is_full() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for InFlightToken {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) >= self.0.limit {
            self.0.reader.wake();
        }
    }
}

/// How far the outbound side has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboundEnd {
    Running,
    /// Flush what is queued, then end the response (the dispatcher closes the connection).
    Flush,
    /// Fail the response now: the dispatcher drops the connection without flushing.
    Abort,
}

#[derive(Debug)]
struct Shared {
    frames: VecDeque<Outgoing>,
    end: OutboundEnd,
    waker: Option<Waker>,
    /// A close frame is queued: no data frame may follow it.
    close_queued: bool,
    /// A text was refused because the queue was full; reported once.
    overflowed: bool,
    /// Room above the limit granted to replayed frames (a resume's or a catch-up's missed
    /// messages, bounded by `history.size`): a client that reads cannot take a long replay
    /// faster than it is queued, and is no slow consumer for it. Shrinks by one per frame
    /// taken, so that what the limit counts is the frames queued besides the replay.
    allowance: usize,
}

/// A queued outbound frame.
#[derive(Debug)]
enum Outgoing {
    /// Encoded when the dispatcher takes it.
    Frame(Message),
    /// A text frame encoded once for many recipients ([`encode_text`]): copied, not encoded.
    Encoded(Rc<[u8]>),
}

/// Encodes `text` as a server's (unmasked) text frame, to be offered to many sessions with
/// [`OutboundQueue::offer_encoded`]: one encoding, and an `Rc` clone per recipient.
pub fn encode_text(text: &str) -> Rc<[u8]> {
    let mut out = BytesMut::with_capacity(text.len() + 10);
    actix_http::ws::Parser::write_message(&mut out, text, OpCode::Text, true, false);
    Rc::from(&out[..])
}

/// Why [`OutboundQueue::offer_text`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A close frame is queued, or the connection ended: nothing may follow.
    OutputClosed,
    /// The queue holds its limit: the peer does not read. `first` is true the first time.
    Full {
        /// Whether this is the first refusal for a full queue.
        first: bool,
    },
}

/// The session's side of its outbound frames. Cloning shares the queue.
#[derive(Debug, Clone)]
pub struct OutboundQueue {
    shared: Rc<RefCell<Shared>>,
}

/// The dispatcher's side: the response body. Encodes queued frames as it is polled.
#[derive(Debug)]
pub struct OutboundBody {
    shared: Rc<RefCell<Shared>>,
    codec: Codec,
}

/// Most bytes encoded per poll: large enough to batch many chat messages into one write, small
/// enough to leave queued frames counted in the queue.
const ENCODE_BATCH_BYTES: usize = 64 * 1024;

/// A new queue and the body that drains it.
pub fn outbound() -> (OutboundQueue, OutboundBody) {
    let shared = Rc::new(RefCell::new(Shared {
        frames: VecDeque::new(),
        end: OutboundEnd::Running,
        waker: None,
        close_queued: false,
        overflowed: false,
        allowance: 0,
    }));
    (
        OutboundQueue {
            shared: shared.clone(),
        },
        OutboundBody {
            shared,
            codec: Codec::new(),
        },
    )
}

impl OutboundQueue {
    /// Queues a text unless a close frame is queued or `limit` frames are waiting: the one
    /// check of every outgoing data frame, whoever sends it.
    pub fn offer_text(&self, text: ByteString, limit: usize) -> Result<(), Refused> {
        self.offer(Outgoing::Frame(Message::Text(text)), limit)
    }

    /// [`offer_text`](Self::offer_text) for a text frame already encoded by [`encode_text`].
    pub fn offer_encoded(&self, frame: Rc<[u8]>, limit: usize) -> Result<(), Refused> {
        self.offer(Outgoing::Encoded(frame), limit)
    }

    /// Queues a replayed text (a resume's or a catch-up's missed message): like
    /// [`offer_text`](Self::offer_text), but it does not count against `limit`.
    pub fn offer_text_replayed(&self, text: ByteString) -> Result<(), Refused> {
        self.offer_replayed(Outgoing::Frame(Message::Text(text)))
    }

    /// [`offer_text_replayed`](Self::offer_text_replayed) for a frame encoded by
    /// [`encode_text`].
    pub fn offer_encoded_replayed(&self, frame: Rc<[u8]>) -> Result<(), Refused> {
        self.offer_replayed(Outgoing::Encoded(frame))
    }

    fn offer_replayed(&self, data: Outgoing) -> Result<(), Refused> {
        let mut shared = self.shared.borrow_mut();
        if shared.close_queued || shared.end != OutboundEnd::Running {
            return Err(Refused::OutputClosed);
        }
        shared.allowance += 1;
        Self::enqueue(&mut shared, data);
        Ok(())
    }

    fn offer(&self, data: Outgoing, limit: usize) -> Result<(), Refused> {
        let mut shared = self.shared.borrow_mut();
        if shared.close_queued || shared.end != OutboundEnd::Running {
            return Err(Refused::OutputClosed);
        }
        if shared.frames.len() >= limit.saturating_add(shared.allowance) {
            let first = !shared.overflowed;
            shared.overflowed = true;
            return Err(Refused::Full { first });
        }
        Self::enqueue(&mut shared, data);
        Ok(())
    }

    /// Queues a ping or pong the server owes its peer, counted against `limit` like a text: a
    /// peer that sends pings and reads nothing fills the queue (and is closed as a slow
    /// consumer) instead of growing it without bound.
    pub fn offer_control(&self, frame: Message, limit: usize) -> Result<(), Refused> {
        self.offer(Outgoing::Frame(frame), limit)
    }

    /// Queues a close frame, whatever the queue holds: the last frame there is, which no limit
    /// may keep from the peer. After a close frame only the end may follow; after
    /// [`end`](Self::end) or [`abort`](Self::abort) it is discarded.
    pub fn push(&self, frame: Message) {
        let mut shared = self.shared.borrow_mut();
        if shared.end != OutboundEnd::Running || shared.close_queued {
            return;
        }
        if matches!(frame, Message::Close(_)) {
            shared.close_queued = true;
        }
        Self::enqueue(&mut shared, Outgoing::Frame(frame));
    }

    fn enqueue(shared: &mut Shared, frame: Outgoing) {
        shared.frames.push_back(frame);
        if shared.frames.len() == 1 {
            if let Some(waker) = shared.waker.take() {
                waker.wake();
            }
        }
    }

    /// Drops every queued frame; returns how many text messages were among them.
    pub fn discard(&self) -> usize {
        let mut shared = self.shared.borrow_mut();
        let texts = shared
            .frames
            .iter()
            .filter(|f| matches!(f, Outgoing::Frame(Message::Text(_)) | Outgoing::Encoded(_)))
            .count();
        shared.frames.clear();
        shared.allowance = 0;
        texts
    }

    /// Flushes what is queued, then ends the connection.
    pub fn end(&self) {
        self.finish(OutboundEnd::Flush);
    }

    /// Ends the connection now; queued frames are discarded.
    pub fn abort(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.frames.clear();
        shared.allowance = 0;
        drop(shared);
        self.finish(OutboundEnd::Abort);
    }

    fn finish(&self, end: OutboundEnd) {
        let mut shared = self.shared.borrow_mut();
        if shared.end == OutboundEnd::Running {
            shared.end = end;
        }
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
    }
}

/// An outbound frame could not be encoded: the connection is dropped.
#[derive(Debug, thiserror::Error)]
#[error("websocket frame could not be encoded")]
struct EncodeFailed;

impl actix_web::ResponseError for EncodeFailed {}

impl OutboundBody {
    /// The session aborted the connection: nothing more is written, and it does not linger.
    pub fn aborted(&self) -> bool {
        self.shared.borrow().end == OutboundEnd::Abort
    }
}

impl Stream for OutboundBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut shared = this.shared.borrow_mut();
        if shared.end == OutboundEnd::Abort {
            // Nothing more is written; ending the body closes the connection (an error here
            // would do the same, with an error line in actix-http's log for every abort).
            return Poll::Ready(None);
        }
        let mut out = BytesMut::new();
        while out.len() < ENCODE_BATCH_BYTES {
            let taken = shared.frames.pop_front();
            if taken.is_some() {
                shared.allowance = shared.allowance.saturating_sub(1);
            }
            match taken {
                None => break,
                Some(Outgoing::Encoded(frame)) => out.extend_from_slice(&frame),
                Some(Outgoing::Frame(frame)) => {
                    if let Err(err) = this.codec.encode(frame, &mut out) {
                        log::error!("encoding an outbound frame failed: {err}");
                        return Poll::Ready(Some(Err(EncodeFailed.into())));
                    }
                }
            }
        }
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        match shared.end {
            OutboundEnd::Running => {
                shared.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            OutboundEnd::Flush | OutboundEnd::Abort => Poll::Ready(None),
        }
    }
}

/// Socket options set on every accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketTuning {
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel drops
    /// the connection.
    pub user_timeout: std::time::Duration,
    /// `SO_SNDBUF` in bytes; 0 leaves the kernel's default (autotuned).
    pub send_buffer: usize,
}

/// Applies `tuning` to an accepted socket.
///
/// `TCP_USER_TIMEOUT` bounds how long the kernel keeps a connection whose peer stopped
/// acknowledging data (it stopped reading, or vanished). Such a connection cannot be ended from
/// the session: the HTTP dispatcher only polls the response body when it can write, so an
/// abort or the end of a close handshake waits behind bytes the peer never takes. With it, the
/// kernel drops the connection once sent data stays unacknowledged for the timeout (zero-window
/// probes included), and the dispatcher with it. `SO_SNDBUF` bounds the bytes such a peer parks
/// in kernel memory, and what a close frame waits behind.
pub fn tune_socket(tcp: &actix_web::rt::net::TcpStream, tuning: SocketTuning) {
    let socket = socket2::SockRef::from(tcp);
    if let Err(err) = socket.set_tcp_user_timeout(Some(tuning.user_timeout)) {
        log::warn!("cannot set TCP_USER_TIMEOUT on a new connection: {err}");
    }
    if tuning.send_buffer > 0 {
        if let Err(err) = socket.set_send_buffer_size(tuning.send_buffer) {
            log::warn!("cannot set SO_SNDBUF on a new connection: {err}");
        }
    }
}

/// For `HttpServer::on_connect`, in apps that embed the session with actix-web's own server:
/// [`tune_socket`] on every accepted TCP connection.
pub fn on_connect(
    tuning: SocketTuning,
) -> impl Fn(&dyn Any, &mut actix_web::dev::Extensions) + Send + Sync + Clone + 'static {
    move |connection: &dyn Any, _: &mut actix_web::dev::Extensions| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            tune_socket(tcp, tuning);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_holds_the_reader_back_at_its_limit_and_wakes_it_below() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let in_flight = InFlight::new(2);
        let first = in_flight.hold();
        assert!(in_flight.poll_room(&mut cx).is_ready());
        let second = in_flight.hold();
        assert!(in_flight.is_full());
        assert!(in_flight.poll_room(&mut cx).is_pending());
        // Done on another thread, as the supervisor's are.
        std::thread::spawn(move || drop(second))
            .join()
            .expect("the dropping thread");
        assert!(woken.0.load(Ordering::SeqCst), "the reader was not woken");
        assert!(in_flight.poll_room(&mut cx).is_ready());
        assert_eq!(in_flight.count(), 1);
        drop(first);
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn a_replay_does_not_count_against_the_limit() {
        let (queue, mut body) = outbound();
        let text = || ByteString::from_static("x");
        for _ in 0..5 {
            assert_eq!(queue.offer_text_replayed(text()), Ok(()));
        }
        assert_eq!(queue.offer_text(text(), 2), Ok(()));
        assert_eq!(queue.offer_text(text(), 2), Ok(()));
        assert_eq!(
            queue.offer_text(text(), 2),
            Err(Refused::Full { first: true })
        );
        // Written out: the replay's room is gone with it.
        let written = futures::executor::block_on(futures::StreamExt::next(&mut body));
        assert!(matches!(written, Some(Ok(_))));
        assert_eq!(queue.offer_text(text(), 2), Ok(()));
        assert_eq!(queue.offer_text(text(), 2), Ok(()));
        assert_eq!(
            queue.offer_text(text(), 2),
            Err(Refused::Full { first: false })
        );
        queue.push(Message::Close(None));
        assert_eq!(
            queue.offer_text_replayed(text()),
            Err(Refused::OutputClosed)
        );
    }

    #[test]
    fn pings_and_pongs_count_against_the_limit_and_a_close_frame_does_not() {
        let (queue, _body) = outbound();
        let text = || ByteString::from_static("x");
        assert_eq!(queue.offer_text(text(), 3), Ok(()));
        assert_eq!(queue.offer_control(Message::Pong(Bytes::new()), 3), Ok(()));
        assert_eq!(queue.offer_control(Message::Ping(Bytes::new()), 3), Ok(()));
        assert_eq!(
            queue.offer_control(Message::Pong(Bytes::new()), 3),
            Err(Refused::Full { first: true })
        );
        assert_eq!(
            queue.offer_text(text(), 3),
            Err(Refused::Full { first: false })
        );
        // The close frame goes whatever the queue holds; nothing follows it.
        queue.push(Message::Close(None));
        assert_eq!(queue.shared.borrow().frames.len(), 4);
        assert_eq!(
            queue.offer_control(Message::Pong(Bytes::new()), 100),
            Err(Refused::OutputClosed)
        );
    }

    #[test]
    fn close_codes_per_error() {
        assert_eq!(
            InboundError::Protocol(String::new()).close_code(),
            Some(1002)
        );
        assert_eq!(InboundError::InvalidUtf8.close_code(), Some(1007));
        assert_eq!(InboundError::TooBig(1).close_code(), Some(1009));
        assert_eq!(InboundError::Binary.close_code(), Some(1003));
        assert_eq!(InboundError::Transport(String::new()).close_code(), None);
    }

    #[test]
    fn an_encoded_text_is_the_codecs_frame() {
        for text in ["", "hi", &"x".repeat(126), &"y".repeat(70_000)] {
            let mut expected = BytesMut::new();
            Codec::new()
                .encode(
                    Message::Text(ByteString::from(text.to_owned())),
                    &mut expected,
                )
                .unwrap();
            assert_eq!(&encode_text(text)[..], &expected[..]);
        }
    }

    #[test]
    fn headers_are_judged_before_their_payload() {
        let limit = 1024;
        // Masked text, 16-bit length 2000: over the limit, with no payload yet.
        assert_eq!(
            check_header(&[0x81, 0x80 | 126, 0x07, 0xd0], limit),
            Err(InboundError::TooBig(limit))
        );
        // 64-bit length with the top bit set.
        let mut top = vec![0x81, 0x80 | 127, 0x80];
        top.extend_from_slice(&[0; 7]);
        assert!(matches!(
            check_header(&top, limit),
            Err(InboundError::Protocol(_))
        ));
        // A ping of 126 bytes is a protocol error under the limit, and over it too.
        assert!(matches!(
            check_header(&[0x89, 0x80 | 126, 0x00, 0x7e], limit),
            Err(InboundError::Protocol(_))
        ));
        assert!(matches!(
            check_header(&[0x89, 0x80 | 126, 0x04, 0x01], limit),
            Err(InboundError::Protocol(_))
        ));
        // Within the limit, incomplete headers, and what the codec judges: left alone.
        assert_eq!(check_header(&[0x81, 0x80 | 125], limit), Ok(()));
        assert_eq!(check_header(&[0x81, 0x80 | 126, 0x07], limit), Ok(()));
        assert_eq!(check_header(&[0x81], limit), Ok(()));
        assert_eq!(check_header(&[0xC1, 0x80 | 126, 0x07, 0xd0], limit), Ok(()));
        assert_eq!(check_header(&[0x81, 126, 0x07, 0xd0], limit), Ok(()));
    }
}
