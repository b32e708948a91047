//! The WebSocket transport: the one module that turns bytes into frames and frames into bytes.
//!
//! Inbound, [`InboundFrames`] decodes the request payload with actix-http's codec,
//! reassembles fragmented messages (RFC 6455 §5.4), enforces the message size limit, checks
//! UTF-8 and classifies every failure as an [`InboundError`] whose close code is decided in
//! one place ([`InboundError::close_code`]).
//!
//! Outbound, [`OutboundQueue`] is the session's bounded queue of frames not yet taken by the
//! HTTP dispatcher, and [`OutboundBody`] is the response body that drains it. The session
//! actor runs as its own task (not inside the response body, as actix-web-actors'
//! `WebsocketContext` does): a client that stops reading then only fills this queue, while
//! its actor keeps running its heartbeat, timeouts and slow-consumer check.
//!
//! This module knows nothing of close states or of the chat: it must not decide anything
//! beyond "these bytes are (not) a valid frame". Replacing actix-web-actors means replacing
//! this file.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Item, Message, ProtocolError};
use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::Stream;

use crate::close::CloseStatus;

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

/// Maps a codec error. `header` is the undecoded input, to tell an over-long message from a
/// 64-bit length with its top bit set, which actix-http reports alike.
fn classify(err: ProtocolError, header: &[u8], limit: usize) -> InboundError {
    match err {
        ProtocolError::Overflow if has_invalid_64bit_length(header) => {
            InboundError::Protocol("64-bit payload length with the top bit set".into())
        }
        ProtocolError::Overflow => InboundError::TooBig(limit),
        // The decoder's only I/O error is "non-zero reserved bits"; transport errors come
        // from the payload, not from here.
        ProtocolError::Io(e) => InboundError::Protocol(e.to_string()),
        other => InboundError::Protocol(other.to_string()),
    }
}

fn has_invalid_64bit_length(header: &[u8]) -> bool {
    match header {
        [_, second, top, ..] => second & 0x7f == 127 && top & 0x80 != 0,
        _ => false,
    }
}

/// Decodes a request payload into [`Inbound`] events.
pub struct InboundFrames<S> {
    payload: S,
    codec: Codec,
    buf: BytesMut,
    /// The text message being reassembled from fragments.
    partial: Option<BytesMut>,
    max_message_bytes: usize,
    eof: bool,
    done: bool,
}

impl<S> InboundFrames<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    /// Reads `payload`, accepting messages of at most `max_message_bytes`.
    pub fn new(payload: S, max_message_bytes: usize) -> Self {
        InboundFrames {
            payload,
            codec: Codec::new().max_size(max_message_bytes),
            buf: BytesMut::new(),
            partial: None,
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
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    if let Some(event) = this.assemble(frame) {
                        this.done = event.is_err();
                        return Poll::Ready(Some(event));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    this.done = true;
                    let err = classify(err, &this.buf, this.max_message_bytes);
                    return Poll::Ready(Some(Err(err)));
                }
            }
            if this.eof {
                this.done = true;
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
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
    frames: VecDeque<Message>,
    end: OutboundEnd,
    waker: Option<Waker>,
    /// The dispatcher is done with the body: flushed, failed or dropped.
    finished: bool,
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
        finished: false,
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
    /// Frames queued and not yet taken by the dispatcher.
    pub fn len(&self) -> usize {
        self.shared.borrow().frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a frame. After [`end`](Self::end) or [`abort`](Self::abort) it is discarded.
    pub fn push(&self, frame: Message) {
        let mut shared = self.shared.borrow_mut();
        if shared.end != OutboundEnd::Running {
            return;
        }
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
            .filter(|f| matches!(f, Message::Text(_)))
            .count();
        shared.frames.clear();
        texts
    }

    /// Whether the dispatcher is done with the connection's response: everything flushed, or
    /// the connection dropped.
    pub fn is_finished(&self) -> bool {
        self.shared.borrow().finished
    }

    /// Flushes what is queued, then ends the connection.
    pub fn end(&self) {
        self.finish(OutboundEnd::Flush);
    }

    /// Ends the connection now; queued frames are discarded.
    pub fn abort(&self) {
        self.shared.borrow_mut().frames.clear();
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

/// The error that makes the dispatcher drop an aborted connection.
#[derive(Debug, thiserror::Error)]
#[error("websocket session aborted")]
struct SessionAborted;

impl actix_web::ResponseError for SessionAborted {}

impl Stream for OutboundBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut shared = this.shared.borrow_mut();
        if shared.end == OutboundEnd::Abort {
            shared.finished = true;
            return Poll::Ready(Some(Err(SessionAborted.into())));
        }
        let mut out = BytesMut::new();
        while out.len() < ENCODE_BATCH_BYTES {
            let Some(frame) = shared.frames.pop_front() else {
                break;
            };
            if let Err(err) = this.codec.encode(frame, &mut out) {
                log::error!("encoding an outbound frame failed: {err}");
                return Poll::Ready(Some(Err(SessionAborted.into())));
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
            OutboundEnd::Flush | OutboundEnd::Abort => {
                shared.finished = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for OutboundBody {
    fn drop(&mut self) {
        self.shared.borrow_mut().finished = true;
    }
}

/// A second handle on a connection's TCP socket, to cut a connection that the HTTP dispatcher
/// can no longer end by itself: one whose peer stopped reading, so that the dispatcher never
/// polls the response body again. Shutting the socket down fails its pending write.
#[derive(Debug, Clone)]
pub struct ConnectionHandle(Rc<std::net::TcpStream>);

impl ConnectionHandle {
    /// Shuts the socket down in both directions; the dispatcher then drops the connection.
    pub fn shutdown(&self) {
        // The peer may be gone already; then there is nothing to cut.
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// For `HttpServer::on_connect`: keeps a [`ConnectionHandle`] in the connection's data, where
/// [`crate::session::start`] finds it. It costs one file descriptor per connection. Without it
/// sessions still end, but a peer that stops reading holds its connection until the kernel
/// gives up on it.
pub fn on_connect(connection: &dyn Any, data: &mut actix_web::dev::Extensions) {
    let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    match tcp.as_fd().try_clone_to_owned() {
        Ok(fd) => {
            data.insert(ConnectionHandle(Rc::new(std::net::TcpStream::from(fd))));
        }
        Err(err) => log::warn!("cannot keep a handle on a new connection: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn overflow_is_split_by_the_length_field() {
        let top_bit = [0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        let large = [0x81, 0xff, 0x00, 0, 0, 0, 0x10, 0, 0, 0];
        assert!(matches!(
            classify(ProtocolError::Overflow, &top_bit, 10),
            InboundError::Protocol(_)
        ));
        assert_eq!(
            classify(ProtocolError::Overflow, &large, 10),
            InboundError::TooBig(10)
        );
    }
}
