//! The outboxes of the sessions running on one thread: the direct way into a session's
//! outbound queue for code on its own thread (the fan-out shards), with no actor message and
//! no allocation per delivery.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix::{Addr, Message};
use bytestring::ByteString;

use super::{Session, SessionId, Shutdown};
use crate::close::CloseStatus;
use crate::connection::transport::{OutboundQueue, Refused};

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
