//! Inbound: the peer's bytes into [`Inbound`] events. [`InboundFrames`] decodes with
//! actix-http's codec, reassembles fragmented messages (RFC 6455 §5.4), enforces the message
//! size limit (from a frame's header, before its payload is buffered), checks UTF-8 and
//! classifies every failure as an [`InboundError`] whose close code is decided in one place
//! ([`InboundError::close_code`]). [`SocketReader`] reads an upgraded connection's socket
//! without keeping a buffer while the connection is idle.
//!
//! With `permessage-deflate` agreed ([`InboundFrames::inflating`]), a data message whose first
//! frame has RSV1 set is compressed: actix-http's codec refuses any reserved bit, so the bit is
//! read and cleared here before the codec sees the frame, and the message is inflated once it
//! is whole ([`super::deflate::inflate`], bounded by the message limit). RSV1 on a control
//! frame or a continuation frame, or without the extension, is a protocol error (RFC 7692 §6).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::Stream;

use super::deflate::{self, InflateError};
use super::InFlight;
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
    /// A compressed message whose data is no valid DEFLATE stream.
    #[error("compressed message cannot be inflated: {0}")]
    BadCompression(String),
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
            // RFC 6455 §7.4.1: "data within a message that was not consistent with the type
            // of the message", as for invalid UTF-8 (RFC 7692 names no code of its own).
            InboundError::InvalidUtf8 | InboundError::BadCompression(_) => Some(1007),
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
            InboundError::BadCompression(_) => "invalid compressed data",
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

/// The most a compressed message may take on the wire beyond the message limit: DEFLATE's
/// stored blocks (what incompressible text becomes) cost 5 bytes per 64 KiB, and a sync flush
/// a few more; a message within the limit must not be refused for them.
fn wire_allowance(max_message_bytes: usize) -> usize {
    max_message_bytes / 65_535 * 5 + 64
}

/// Reads RSV1 off the frame at the front of `buf` when the connection inflates: `Ok(true)` when
/// it was set on a data frame (the bit is cleared for the codec, and the message is compressed),
/// `Ok(false)` when it was not (or the codec's own checks come first: other reserved bits, an
/// unknown opcode), `Err` when it may not be set there.
fn take_rsv1(buf: &mut BytesMut) -> Result<bool, InboundError> {
    let Some(first) = buf.first_mut() else {
        return Ok(false);
    };
    if *first & 0x70 != 0x40 {
        return Ok(false);
    }
    match *first & 0x0f {
        0x1 | 0x2 => {
            *first &= !0x40;
            Ok(true)
        }
        0x0 => Err(InboundError::Protocol(
            "RSV1 set on a continuation frame".into(),
        )),
        0x8..=0xA => Err(InboundError::Protocol("RSV1 set on a control frame".into())),
        _ => Ok(false),
    }
}

/// Decodes a request payload into [`Inbound`] events.
pub struct InboundFrames<S> {
    payload: S,
    codec: Codec,
    buf: BytesMut,
    /// The text message being reassembled from fragments.
    partial: Option<BytesMut>,
    /// Whether `partial` is compressed (its first frame had RSV1).
    partial_compressed: bool,
    /// The frame at the front of `buf` had RSV1, already cleared for the codec.
    head_compressed: bool,
    /// `permessage-deflate` agreed: RSV1 marks a compressed message.
    inflating: bool,
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
            partial_compressed: false,
            head_compressed: false,
            inflating: false,
            in_flight,
            max_message_bytes,
            eof: false,
            done: false,
        }
    }

    /// Accepts compressed messages (RFC 7692 `permessage-deflate`, agreed at the upgrade) when
    /// `inflating` is true: a frame may then be up to a few bytes over the message limit on the
    /// wire (DEFLATE's overhead on incompressible text), and the limit bounds what a message
    /// inflates to.
    pub fn inflating(mut self, inflating: bool) -> Self {
        self.inflating = inflating;
        if inflating {
            let wire = self.wire_limit();
            self.codec = Codec::new().max_size(wire);
        }
        self
    }

    /// The most bytes one frame, or a compressed message's frames together, may have.
    fn wire_limit(&self) -> usize {
        if self.inflating {
            self.max_message_bytes
                .saturating_add(wire_allowance(self.max_message_bytes))
        } else {
            self.max_message_bytes
        }
    }

    /// Turns one decoded frame into an event; `None` while a fragmented message is incomplete.
    /// `compressed`: the frame had RSV1 (only a data message's first frame gets here with it).
    fn assemble(
        &mut self,
        frame: Frame,
        compressed: bool,
    ) -> Option<Result<Inbound, InboundError>> {
        match frame {
            Frame::Text(data) => Some(self.message(data.into(), compressed)),
            Frame::Binary(_) | Frame::Continuation(Item::FirstBinary(_)) => {
                Some(Err(InboundError::Binary))
            }
            Frame::Ping(data) => Some(Ok(Inbound::Ping(data))),
            Frame::Pong(_) => Some(Ok(Inbound::Pong)),
            Frame::Close(reason) => Some(close(reason)),
            Frame::Continuation(Item::FirstText(data)) => {
                self.partial = Some(BytesMut::new());
                self.partial_compressed = compressed;
                self.extend(&data).err().map(Err)
            }
            Frame::Continuation(Item::Continue(data)) => self.extend(&data).err().map(Err),
            Frame::Continuation(Item::Last(data)) => match self.extend(&data) {
                Err(e) => Some(Err(e)),
                Ok(()) => {
                    let whole = self.partial.take().unwrap_or_default();
                    let compressed = std::mem::take(&mut self.partial_compressed);
                    Some(self.message(whole, compressed))
                }
            },
        }
    }

    /// A whole text message: inflated when `compressed`, its size checked, UTF-8 checked.
    fn message(&self, data: BytesMut, compressed: bool) -> Result<Inbound, InboundError> {
        if !compressed {
            // Within the wire limit, which may be a little above the message limit.
            if data.len() > self.max_message_bytes {
                return Err(InboundError::TooBig(self.max_message_bytes));
            }
            return text(data);
        }
        match deflate::inflate(&data, self.max_message_bytes) {
            Ok(inflated) => ByteString::try_from(Bytes::from(inflated))
                .map(Inbound::Text)
                .map_err(|_| InboundError::InvalidUtf8),
            Err(InflateError::TooBig(limit)) => Err(InboundError::TooBig(limit)),
            Err(InflateError::Corrupt(why)) => Err(InboundError::BadCompression(why)),
        }
    }

    fn extend(&mut self, data: &[u8]) -> Result<(), InboundError> {
        // The codec refuses a continuation without a start, so `partial` is set here; a
        // missing one is still answered as the protocol error it would be.
        let cap = if self.partial_compressed {
            self.wire_limit()
        } else {
            self.max_message_bytes
        };
        let partial = self
            .partial
            .as_mut()
            .ok_or_else(|| InboundError::Protocol("continuation without a start".into()))?;
        if partial.len() + data.len() > cap {
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
            if this.inflating && !this.head_compressed {
                match take_rsv1(&mut this.buf) {
                    Ok(compressed) => this.head_compressed = compressed,
                    Err(err) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            }
            if let Err(err) = check_header(&this.buf, this.wire_limit()) {
                this.done = true;
                let err = match err {
                    InboundError::TooBig(_) => InboundError::TooBig(this.max_message_bytes),
                    other => other,
                };
                return Poll::Ready(Some(Err(err)));
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    let compressed = std::mem::take(&mut this.head_compressed);
                    if let Some(event) = this.assemble(frame, compressed) {
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
