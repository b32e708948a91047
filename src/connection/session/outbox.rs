//! The outboxes of the sessions running on one thread: the direct way into a session's
//! outbound queue for code on its own thread (the fan-out shards), with no actor message and
//! no allocation per delivery; and the drain's way to write a session's last frames from the
//! shard's loop ([`Outbox::shut_down_at_once`], [`ShutdownFrames`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Message};
use actix_http::ws::{OpCode, Parser};
use bytes::BytesMut;
use bytestring::ByteString;

use super::handle::state_to_u8;
use super::{close_reason, Session, SessionId, Shutdown};
use crate::close::{CloseState, CloseStatus};
use crate::connection::linger::LingeringStream;
use crate::connection::transport::{OutboundQueue, Refused};
use crate::protocol::write_going_away;

thread_local! {
    /// The outboxes of the sessions running on this thread, for [`local_outbox`].
    /// Shared (`Rc`) with the shard that fans out to the session: one outbox per session,
    /// not a copy with its own actor address (each `Addr` clone allocates).
    static OUTBOXES: RefCell<HashMap<SessionId, Rc<Outbox>>> = RefCell::new(HashMap::new());
}

/// The direct way into a session's outbound queue, for code running on the session's own
/// thread (the fan-out shards): no actor message, no allocation per delivery. The queue
/// itself refuses data after the close frame and beyond `session.outbound_queue`; a full
/// queue makes the session close 1008 "slow consumer".
#[derive(Clone)]
pub struct Outbox {
    pub(super) queue: OutboundQueue,
    pub(super) limit: usize,
    pub(super) session: Addr<Session>,
    /// The session's close state, as of its last transition.
    pub(super) state: Arc<AtomicU8>,
    /// The connection, when the session owns it (the binary's server): a drain writes the
    /// last frames straight to it. Weak: the connection closes when its session's writer lets
    /// go of it, not when the shard forgets the outbox.
    pub(super) socket: Weak<LingeringStream>,
    /// The session agreed to `permessage-deflate` and takes compressed messages.
    pub(super) compressed: bool,
}

impl Outbox {
    /// Whether the session takes compressed messages: the fan-out offers it the compressed
    /// frame of a room message ([`crate::connection::transport::encode_text_compressed`]).
    pub fn takes_compressed(&self) -> bool {
        self.compressed
    }

    /// Queues `text` for the peer, or says why not.
    pub fn offer(&self, text: ByteString) -> Result<(), Refused> {
        self.report(self.queue.offer_text(text, self.limit))
    }

    /// Queues a text frame encoded once for many peers
    /// ([`crate::connection::transport::encode_text`]).
    pub fn offer_encoded(&self, frame: std::rc::Rc<[u8]>) -> Result<(), Refused> {
        self.report(self.queue.offer_encoded(frame, self.limit))
    }

    /// Whether the session is behind on reading: half of `session.outbound_queue` waits.
    /// Presence events are not queued for it then ([`crate::rooms::fanout`]): in a join storm
    /// they would be what closes a client that reads, only slower than the server writes, as
    /// a slow consumer.
    pub fn behind(&self) -> bool {
        self.queue.backlog() >= self.limit / 2
    }

    /// Whether the session has caught up after being [`behind`](Self::behind): a quarter of
    /// `session.outbound_queue` or less waits.
    pub fn caught_up(&self) -> bool {
        self.queue.backlog() <= self.limit / 4
    }

    /// Queues a replayed text (missed messages of a resume or a catch-up): not counted
    /// against `session.outbound_queue` (the replay is bounded by `history.size`).
    pub fn offer_replayed(&self, text: ByteString) -> Result<(), Refused> {
        self.queue.offer_text_replayed(text)
    }

    /// [`Outbox::offer_replayed`] for a frame encoded once for many sessions.
    pub fn offer_encoded_replayed(&self, frame: std::rc::Rc<[u8]>) -> Result<(), Refused> {
        self.queue.offer_encoded_replayed(frame)
    }

    /// Tells the session to close for shutdown ([`Shutdown`]), from its own thread: the
    /// drain's way in, with no actor address cloned and no other thread woken.
    pub fn shut_down(&self, status: Option<CloseStatus>, reconnect_after: Option<Duration>) {
        self.session.do_send(Shutdown {
            status,
            reconnect_after,
        });
    }

    /// [`Outbox::shut_down`], with the `going_away` (when `reconnect_after`) and the close frame
    /// of `frames` written to the socket now, from the caller's loop, when the session is open
    /// and its connection idle (nothing queued, nothing being written): the session then only
    /// takes note (`ShutdownWritten`), choosing its close mode as for [`Shutdown`]. A drain
    /// that tells a thread's thousands of sessions in one loop gets each one's frames out
    /// without waiting for the others' turns, and without waking its writer. Otherwise (a
    /// session that is busy writing, closing or not on its own socket) it is told
    /// [`Shutdown`].
    pub fn shut_down_at_once(
        &self,
        frames: &mut ShutdownFrames,
        reconnect_after: Option<Duration>,
    ) {
        let open = self.state.load(Ordering::Acquire) == state_to_u8(CloseState::Open);
        let written = match (self.socket.upgrade(), open) {
            (Some(socket), true) => {
                let bytes = frames.encode(reconnect_after);
                self.queue
                    .close_at_once(bytes, |bytes| socket.try_write_shared(bytes))
            }
            _ => false,
        };
        if written {
            self.session.do_send(ShutdownWritten {
                status: frames.status.clone(),
                going_away: reconnect_after.is_some(),
            });
        } else {
            self.shut_down(frames.status.clone(), reconnect_after);
        }
    }

    fn report(&self, result: Result<(), Refused>) -> Result<(), Refused> {
        if let Err(Refused::Full { first: true }) = result {
            self.session.do_send(Overflowed);
        }
        result
    }
}

/// The outbox of session `id` if it runs on the calling thread.
pub fn local_outbox(id: SessionId) -> Option<Rc<Outbox>> {
    OUTBOXES.with(|outboxes| outboxes.borrow().get(&id).cloned())
}

/// The last frames a drain writes to the sessions of one thread, encoded as their sessions'
/// writers would: each one's `going_away` (its own delay) and the close frame (the same for
/// all, encoded once). The buffers are reused from one session to the next.
pub struct ShutdownFrames {
    status: Option<CloseStatus>,
    close: BytesMut,
    text: String,
    frames: BytesMut,
}

impl ShutdownFrames {
    /// The frames of a shutdown that closes with `status`.
    pub fn new(status: Option<CloseStatus>) -> Self {
        let mut close = BytesMut::new();
        Parser::write_close(&mut close, status.clone().map(close_reason), false);
        ShutdownFrames {
            status,
            close,
            text: String::new(),
            frames: BytesMut::new(),
        }
    }

    /// The close status.
    pub fn status(&self) -> &Option<CloseStatus> {
        &self.status
    }

    /// The bytes for one session: its `going_away` if `reconnect_after`, then the close frame.
    fn encode(&mut self, reconnect_after: Option<Duration>) -> &[u8] {
        self.frames.clear();
        if let Some(delay) = reconnect_after {
            self.text.clear();
            write_going_away(&mut self.text, delay);
            Parser::write_message(&mut self.frames, &self.text, OpCode::Text, true, false);
        }
        self.frames.extend_from_slice(&self.close);
        &self.frames
    }
}

/// A drain wrote the session's last frames ([`Outbox::shut_down_at_once`]): the `going_away`
/// if `going_away`, then a close frame with `status`. The session closes as for [`Shutdown`],
/// without queuing them again.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(super) struct ShutdownWritten {
    pub(super) status: Option<CloseStatus>,
    pub(super) going_away: bool,
}

/// The outbound queue overflowed: the session closes 1008 "slow consumer".
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(super) struct Overflowed;

/// Makes `outbox` the way into session `id` from its thread, until [`unregister`].
pub(super) fn register(id: SessionId, outbox: Outbox) {
    OUTBOXES.with(|outboxes| outboxes.borrow_mut().insert(id, Rc::new(outbox)));
}

/// Session `id` ended: its outbox is gone.
pub(super) fn unregister(id: SessionId) {
    OUTBOXES.with(|outboxes| outboxes.borrow_mut().remove(&id));
}

#[cfg(test)]
mod tests {
    use actix_codec::Encoder;
    use actix_http::ws::{Codec, Message as Frame};

    use super::*;
    use crate::protocol::going_away_json;

    /// What the session's writer would write: the `going_away` text, then the close frame.
    fn written_by_the_writer(status: Option<CloseStatus>, delay: Option<Duration>) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mut codec = Codec::new();
        if let Some(delay) = delay {
            codec
                .encode(Frame::Text(going_away_json(delay)), &mut out)
                .unwrap();
        }
        codec
            .encode(Frame::Close(status.map(close_reason)), &mut out)
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn the_drains_frames_are_the_writers_bytes() {
        let statuses = [
            None,
            Some(CloseStatus::new(1001, "").unwrap()),
            Some(CloseStatus::new(1001, "server shutting down").unwrap()),
            Some(CloseStatus::new(4000, "r".repeat(123)).unwrap()),
        ];
        for status in statuses {
            let mut frames = ShutdownFrames::new(status.clone());
            // The buffers are reused: each session's bytes are its own.
            for delay in [Some(4999), None, Some(0), Some(u64::MAX), Some(17)] {
                let delay = delay.map(Duration::from_millis);
                assert_eq!(
                    frames.encode(delay),
                    &written_by_the_writer(status.clone(), delay)[..],
                    "{status:?} {delay:?}"
                );
            }
        }
    }
}
