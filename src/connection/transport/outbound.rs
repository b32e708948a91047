//! Outbound: the session's bounded queue of frames not yet written ([`OutboundQueue`]) and
//! what drains it ([`OutboundBody`]): as the response body the dispatcher polls, or through
//! [`write_out`] straight to the socket. A text for many recipients is encoded once
//! ([`encode_text`], and compressed once for those that agreed to `permessage-deflate`:
//! [`encode_text_compressed`]). A text queued for one session is compressed when it is written,
//! if the session agreed to it ([`OutboundBody::compressing`]). The queue is the one check of
//! every outgoing frame: nothing after a close frame, and no more than the limit (pings and
//! pongs count too).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_codec::Encoder;
use actix_http::ws::{Codec, Message, OpCode};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::Stream;

use super::deflate::{self, COMPRESS_MIN_BYTES};
use crate::connection::linger::LingeringStream;

/// Writes what the session queues to its upgraded connection until the session ends it: then
/// half-closes (the connection lingers, see [`crate::connection::linger`]) or, when it is not to
/// linger (an abort, an acknowledged close), just drops it. A failed write ends both directions, so
/// that the session's [`super::SocketReader`] sees the end and the session is aborted.
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

/// The RSV1 bit of a frame's first byte: "this message is compressed" (RFC 7692 §6).
const RSV1: u8 = 0x40;

/// Encodes `text` as a compressed text frame (`permessage-deflate`: RSV1 set, the payload one
/// message's DEFLATE data), to be offered to the sessions that agreed to the extension. `None`
/// when compressing does not pay: below [`COMPRESS_MIN_BYTES`], or when the compressed payload
/// is not smaller; those sessions then get [`encode_text`]'s frame (RFC 7692 lets any message
/// go uncompressed).
pub fn encode_text_compressed(text: &str) -> Option<Rc<[u8]>> {
    if text.len() < COMPRESS_MIN_BYTES {
        return None;
    }
    let compressed = deflate::compress(text.as_bytes())?;
    if compressed.len() >= text.len() {
        return None;
    }
    let mut out = BytesMut::with_capacity(compressed.len() + 10);
    write_compressed_frame(&mut out, &compressed);
    Some(Rc::from(&out[..]))
}

/// Appends `text`'s compressed frame to `out` when compressing pays (see
/// [`encode_text_compressed`]); false, and `out` untouched, when not. A text queued for one
/// session is often queued for others on this thread too (a replay after a drain): its
/// compressed copy is taken from this thread's recent ones ([`deflate::compress_recent`]).
fn write_compressed(out: &mut BytesMut, text: &str) -> bool {
    if text.len() < COMPRESS_MIN_BYTES {
        return false;
    }
    let Some(compressed) = deflate::compress_recent(text) else {
        return false;
    };
    write_compressed_frame(out, &compressed);
    true
}

/// Appends a text frame with RSV1 whose payload is `compressed`.
fn write_compressed_frame(out: &mut BytesMut, compressed: &[u8]) {
    let start = out.len();
    actix_http::ws::Parser::write_message(&mut *out, compressed, OpCode::Text, true, false);
    if let Some(first) = out.get_mut(start) {
        *first |= RSV1;
    }
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
    /// The session agreed to `permessage-deflate`: texts queued for it alone go compressed.
    compress: bool,
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
            compress: false,
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

    /// Frames waiting that count against the limit (a replay's are not counted).
    pub fn backlog(&self) -> usize {
        let shared = self.shared.borrow();
        shared.frames.len().saturating_sub(shared.allowance)
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

    /// The connection's last frames at once, for a drain: when nothing is queued and the writer
    /// waits for frames with nothing in hand, `frames` (encoded, a close frame last) are
    /// offered to `write` (a write that does not wait), what it does not take is queued for the
    /// writer, and nothing may be queued after them. Returns false, doing nothing, otherwise
    /// (frames waiting, a close frame already queued, the output ended, the writer busy with a
    /// chunk): the caller closes the usual way. Either way no byte is written out of order.
    pub fn close_at_once(
        &self,
        frames: &[u8],
        write: impl FnOnce(&[u8]) -> std::io::Result<usize>,
    ) -> bool {
        let mut shared = self.shared.borrow_mut();
        let idle = shared.frames.is_empty() && shared.waker.is_some();
        if shared.close_queued || shared.end != OutboundEnd::Running || !idle {
            return false;
        }
        shared.close_queued = true;
        // A failed write leaves everything to the writer, which meets the same error and ends
        // the connection.
        let written = write(frames).unwrap_or(0);
        if let Some(rest) = frames.get(written..).filter(|rest| !rest.is_empty()) {
            Self::enqueue(&mut shared, Outgoing::Encoded(Rc::from(rest)));
        }
        true
    }

    /// Drops every queued frame; returns how many text messages were among them. Once a close
    /// frame is queued nothing is dropped: what is queued is the peer's last frames, which
    /// [`close_at_once`](Self::close_at_once) may have started to write.
    pub fn discard(&self) -> usize {
        let mut shared = self.shared.borrow_mut();
        if shared.close_queued {
            return 0;
        }
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
    /// Texts queued for this session alone (its welcome, a replay, answers) are compressed as
    /// they are written when `compress` is true (the session agreed to `permessage-deflate` and
    /// takes compressed messages); texts encoded for many sessions come already encoded.
    pub fn compressing(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

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
                Some(Outgoing::Frame(Message::Text(text)))
                    if this.compress && write_compressed(&mut out, &text) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A body polled until it waits for frames, as the writer does when it has nothing to write.
    fn parked(body: &mut OutboundBody) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(body).poll_next(&mut cx).is_pending());
    }

    #[test]
    fn closing_at_once_writes_only_when_the_writer_has_nothing_in_hand() {
        let (queue, mut body) = outbound();
        // The writer has not waited yet: it may hold a chunk.
        assert!(!queue.close_at_once(b"bye", |_| panic!("written while busy")));
        parked(&mut body);
        let mut written = Vec::new();
        assert!(queue.close_at_once(b"bye", |bytes| {
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        }));
        assert_eq!(written, b"bye");
        assert!(queue.shared.borrow().frames.is_empty());
        // Nothing follows the close frame, and nothing of it is dropped.
        let text = || ByteString::from_static("x");
        assert_eq!(queue.offer_text(text(), 8), Err(Refused::OutputClosed));
        assert_eq!(queue.discard(), 0);
        assert!(!queue.close_at_once(b"again", |_| panic!("a second close")));
        queue.end();
        let rest = futures::executor::block_on(futures::StreamExt::next(&mut body));
        assert!(rest.is_none());
    }

    #[test]
    fn what_the_socket_does_not_take_at_once_is_written_next() {
        let (queue, mut body) = outbound();
        parked(&mut body);
        assert!(queue.close_at_once(b"going away, then close", |_| Ok(6)));
        assert_eq!(queue.discard(), 0);
        let rest = futures::executor::block_on(futures::StreamExt::next(&mut body));
        assert_eq!(&rest.unwrap().unwrap()[..], b"away, then close");

        let (queue, mut body) = outbound();
        parked(&mut body);
        let would_block = || Err(std::io::ErrorKind::WouldBlock.into());
        assert!(queue.close_at_once(b"all of it", |_| would_block()));
        let rest = futures::executor::block_on(futures::StreamExt::next(&mut body));
        assert_eq!(&rest.unwrap().unwrap()[..], b"all of it");
    }

    #[test]
    fn frames_waiting_close_the_usual_way() {
        let (queue, mut body) = outbound();
        parked(&mut body);
        assert_eq!(queue.offer_text(ByteString::from_static("x"), 8), Ok(()));
        assert!(!queue.close_at_once(b"bye", |_| panic!("written before a queued frame")));
        queue.push(Message::Close(None));
        assert!(!queue.close_at_once(b"bye", |_| panic!("a second close")));
    }

    #[test]
    fn a_compressed_text_is_a_text_frame_with_rsv1_that_inflates_back() {
        let text = "{\"type\":\"message\",\"text\":\"".to_owned() + &"ha".repeat(200) + "\"}";
        let frame = encode_text_compressed(&text).expect("compressed");
        // FIN, RSV1, text; unmasked, a 16-bit or 7-bit length.
        assert_eq!(frame[0], 0xC1);
        let (start, len) = match frame[1] {
            126 => (4, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
            n => (2, usize::from(n)),
        };
        assert_eq!(frame.len(), start + len);
        let inflated = deflate::inflate(&frame[start..], text.len()).expect("inflated");
        assert_eq!(inflated, text.as_bytes());
        // Short texts go plain.
        assert_eq!(encode_text_compressed("hi"), None);
        assert_eq!(
            encode_text_compressed(&"x".repeat(COMPRESS_MIN_BYTES - 1)),
            None
        );
    }

    #[test]
    fn a_session_that_compresses_gets_its_own_texts_compressed() {
        let (queue, body) = outbound();
        let mut body = body.compressing(true);
        let long = "word ".repeat(100);
        queue
            .offer_text(ByteString::from(long.clone()), 10)
            .expect("queued");
        queue
            .offer_text(ByteString::from_static("short"), 10)
            .expect("queued");
        let written = futures::executor::block_on(futures::StreamExt::next(&mut body))
            .expect("a chunk")
            .expect("bytes");
        let compressed = encode_text_compressed(&long).expect("compressed");
        assert_eq!(&written[..compressed.len()], &compressed[..]);
        assert_eq!(&written[compressed.len()..], &encode_text("short")[..]);
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
}
