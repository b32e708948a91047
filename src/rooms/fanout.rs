//! Fan-out shards: one per worker thread, holding that thread's room members and delivering
//! room messages straight into their outboxes.
//!
//! The supervisor orders a room's messages and serializes each once; it then sends one
//! [`Deliver`] per shard that has members in the room, instead of one actor message per
//! member. The shard encodes the frame once in its own thread's memory (so that reference
//! counts are not shared between cores) and offers it to each local member's [`Outbox`]: a
//! queue push and an `Rc` clone, no allocation, no cross-thread traffic. For the members that
//! agreed to `permessage-deflate` it also compresses the frame once (on first need, so a thread
//! whose members in the room all read plain frames compresses nothing), and they share those
//! bytes the same way: no compressor per connection. A shard's mailbox is
//! FIFO and the supervisor sends in `seq` order, so every member sees one order. It must not
//! decide anything about closes: the outbox refuses what may not be sent. The drain's
//! [`ShutDown`] goes the same way: one message per thread, whose loop writes each idle
//! session's `going_away` and close frame straight to its socket and tells the session, which
//! decides its close mode itself ([`Outbox::shut_down_at_once`]).
//!
//! Presence events yield to a member that is behind on reading ([`Outbox::behind`]): the shard
//! notes the room instead of queuing the event, and once the member has caught up asks the
//! supervisor for the room's list ([`ResyncPresence`]), which comes back through this same
//! mailbox ([`PresenceList`]), in order with the room's later events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, Recipient};
use bytestring::ByteString;
use log::debug;

use crate::close::CloseStatus;
use crate::connection::session::{local_outbox, Outbox, SessionHandle, SessionId, ShutdownFrames};
use crate::connection::transport::{encode_text, encode_text_compressed, Refused};
use crate::metrics::{metrics, DropReason};

thread_local! {
    static LOCAL: RefCell<Option<Addr<Shard>>> = const { RefCell::new(None) };
}

/// The shard of the calling thread, started on first use. Call it on a worker thread (an
/// actix arbiter), where that thread's sessions run.
pub fn local_shard() -> Addr<Shard> {
    LOCAL.with(|local| {
        local
            .borrow_mut()
            .get_or_insert_with(|| Shard::default().start())
            .clone()
    })
}

/// How often a shard looks whether its members that fell behind have caught up.
const BEHIND_CHECK: Duration = Duration::from_millis(50);

/// The fan-out actor of one worker thread.
#[derive(Default)]
pub struct Shard {
    rooms: HashMap<Arc<str>, Members<Rc<Outbox>>>,
    /// Members whose presence events were not queued because they were behind on reading
    /// ([`Outbox::behind`]), with the rooms they missed events of; each gets those rooms'
    /// lists once caught up.
    behind: HashMap<SessionId, Vec<Arc<str>>>,
    /// Where to ask for those lists (the supervisor), learnt from the presence events.
    resync: Option<Recipient<ResyncPresence>>,
    /// A check of [`Shard::behind`] is due.
    checking: bool,
}

/// A room's local members: a list to deliver along and an index for O(1) removal (a room of
/// 10,000 emptied one by one in a drain would otherwise cost 10,000 scans).
struct Members<T> {
    list: Vec<(SessionId, T)>,
    index: HashMap<SessionId, usize>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members {
            list: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Members<T> {
    fn insert(&mut self, id: SessionId, outbox: T) {
        if self.index.contains_key(&id) {
            return;
        }
        self.index.insert(id, self.list.len());
        self.list.push((id, outbox));
    }

    fn remove(&mut self, id: SessionId) {
        let Some(position) = self.index.remove(&id) else {
            return;
        };
        self.list.swap_remove(position);
        if let Some((moved, _)) = self.list.get(position) {
            self.index.insert(*moved, position);
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Actor for Shard {
    type Context = Context<Self>;
}

/// Queues `frames` to session `id` (which runs on this shard's thread), in order, and with
/// `enroll` adds it to `room`'s members, so that every later [`Deliver`] reaches it too. The
/// supervisor sends the welcome (and a resume's replay) this way, and live messages one by
/// one to a joining session that is not enrolled yet.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Admit {
    /// The room.
    pub room: Arc<str>,
    /// The session.
    pub id: SessionId,
    /// Frames for this session only, before any later room message.
    pub frames: Vec<ByteString>,
    /// Whether the session now gets the room's messages through [`Deliver`].
    pub enroll: bool,
    /// The frames are the session's welcome and replay (bounded by `history.size`): not
    /// counted against `session.outbound_queue`.
    pub replayed: bool,
}

/// Removes sessions from rooms: each `(room, id)` (the supervisor sends the sessions that
/// left together, one message per thread).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Remove {
    /// The rooms and sessions.
    pub members: Vec<(Arc<str>, SessionId)>,
}

/// Delivers one serialized room message (or signal) to every local member of `room`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The room.
    pub room: Arc<str>,
    /// The message, serialized once by the supervisor.
    pub text: ByteString,
    /// A missed message of a catch-up: not counted against `session.outbound_queue`.
    pub replayed: bool,
    /// One member that gets another frame, or none: the sender of a v2 message (its own copy
    /// carries its id), or of a signal (it does not get it).
    pub except: Option<Exception>,
    /// A presence event (`presence_join`, `presence_leave`): not queued for a member that is
    /// behind on reading, which instead gets the room's list from here once it caught up.
    pub presence: Option<Recipient<ResyncPresence>>,
}

/// An answer of the supervisor's to one session (a refusal, a repeat's `ack`, a presence list
/// it asked for), queued behind what the supervisor sent this shard before it: a drain's
/// [`ShutDown`] that follows finds it queued and closes after it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AnswerFrame {
    /// The session.
    pub session: SessionHandle,
    /// The frame.
    pub text: ByteString,
}

/// The shard's request for the presence lists of `rooms` for `session`, which missed events
/// of theirs while it was behind on reading and has caught up. The answer is a
/// [`PresenceList`] per room, through the session's shard, so that it comes in order with the
/// room's later events.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ResyncPresence {
    /// The session.
    pub session: SessionId,
    /// The rooms.
    pub rooms: Vec<Arc<str>>,
}

/// A room's presence list for one member (`{"type":"presence","room":R,"members":[...]}`,
/// no `ref`), the answer to [`ResyncPresence`]: it replaces what the client knew.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PresenceList {
    /// The room.
    pub room: Arc<str>,
    /// The session.
    pub session: SessionId,
    /// The frame.
    pub text: ByteString,
    /// Presence events of the room to send right after the list: those that came while the
    /// list was read, which it may be older than (see the supervisor's `Lists`). Applied
    /// after it in order they leave the client's list right, whichever side of the read
    /// they were.
    pub then: Vec<ByteString>,
}

/// A member of a [`Deliver`]'s room that gets `frame` instead of the room's (`None`:
/// nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    /// The member.
    pub session: SessionId,
    /// What it gets instead.
    pub frame: Option<ByteString>,
}

/// Tells sessions of this shard's thread to shut down ([`crate::connection::session::Shutdown`]):
/// the drain sends one of these per thread instead of one message per session across threads.
/// Sessions that ended meanwhile are skipped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ShutDown {
    /// The close status each session sends.
    pub status: Option<CloseStatus>,
    /// The sessions, each with the reconnect delay of its `going_away` (`None`: none sent).
    pub sessions: Vec<(SessionId, Option<Duration>)>,
}

impl Handler<Admit> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) {
        // A session that ended before its admission has no outbox any more.
        let Some(outbox) = local_outbox(msg.id) else {
            debug!("session={} gone before it joined {}", msg.id, msg.room);
            return;
        };
        let mut sent = 0;
        for frame in msg.frames {
            let offered = if msg.replayed {
                outbox.offer_replayed(frame)
            } else {
                outbox.offer(frame)
            };
            if offered.is_ok() {
                sent += 1;
            }
        }
        metrics().messages_out.inc_by(sent);
        if msg.enroll {
            self.rooms
                .entry(msg.room)
                .or_default()
                .insert(msg.id, outbox);
        }
    }
}

impl Handler<Remove> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Remove, _: &mut Self::Context) {
        for (room, id) in msg.members {
            if let Some(members) = self.rooms.get_mut(&room) {
                members.remove(id);
                if members.is_empty() {
                    self.rooms.remove(&room);
                }
            }
        }
    }
}

impl Handler<ShutDown> for Shard {
    type Result = ();

    fn handle(&mut self, msg: ShutDown, _: &mut Self::Context) {
        // Same thread: each session's frames go to its socket in this loop, one write each, the
        // first right away; each message is a local queue push, no wake-up of another thread.
        let mut frames = ShutdownFrames::new(msg.status);
        for (id, reconnect_after) in msg.sessions {
            if let Some(outbox) = local_outbox(id) {
                outbox.shut_down_at_once(&mut frames, reconnect_after);
            }
        }
    }
}

impl Handler<Deliver> for Shard {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        let Some(members) = self.rooms.get(&msg.room) else {
            return;
        };
        // Encoded once per thread: each member gets an `Rc` clone of the same frame bytes,
        // copied into its connection's buffer when written (no per-member encoding, no
        // atomic reference counts shared between cores).
        //
        // Compressed once per thread too, not once in the supervisor: the supervisor is one
        // thread that every room message goes through, the shards run on every core; a
        // compression costs ~24 us (mostly the compressor's reset), which on the supervisor
        // would cap the process near 40,000 room messages per second, while each worker pays
        // it in parallel beside its members' writes (BENCHMARKS.md, "permessage-deflate").
        let frame = encode_text(&msg.text);
        let mut compressed: Option<std::rc::Rc<[u8]>> = None;
        let own = msg
            .except
            .as_ref()
            .map(|except| (except.session, except.frame.as_ref()));
        let (mut sent, mut closed, mut full) = (0u64, 0u64, 0u64);
        let mut deferred = 0u64;
        for (id, outbox) in &members.list {
            if msg.presence.is_some() && defers_presence(&mut self.behind, *id, outbox, &msg.room) {
                deferred += 1;
                continue;
            }
            let frame = match own {
                Some((session, own_text)) if session == *id => match own_text {
                    // The sender's own copy is for it alone: its queue compresses it as it is
                    // written, if the sender agreed to.
                    Some(own_text) => {
                        let offered = if msg.replayed {
                            outbox.offer_replayed(own_text.clone())
                        } else {
                            outbox.offer(own_text.clone())
                        };
                        count(offered, &mut sent, &mut closed, &mut full);
                        continue;
                    }
                    None => continue,
                },
                _ if outbox.takes_compressed() => compressed
                    .get_or_insert_with(|| {
                        encode_text_compressed(&msg.text).unwrap_or_else(|| frame.clone())
                    })
                    .clone(),
                _ => frame.clone(),
            };
            let offered = if msg.replayed {
                outbox.offer_encoded_replayed(frame)
            } else {
                outbox.offer_encoded(frame)
            };
            count(offered, &mut sent, &mut closed, &mut full);
        }
        metrics().messages_out.inc_by(sent);
        if closed > 0 {
            metrics().dropped(DropReason::OutputClosed, closed);
        }
        if full > 0 {
            metrics().dropped(DropReason::SlowConsumer, full);
        }
        if deferred > 0 {
            metrics().presence_deferred.inc_by(deferred);
            self.resync = msg.presence;
            self.check_behind_later(ctx);
        }
    }
}

/// Whether a presence event of `room` is held back from member `id`: it is behind on reading,
/// or missed one of the room's events already (the room's list will replace them all). Marks
/// it behind in `room` in `behind`.
fn defers_presence(
    behind: &mut HashMap<SessionId, Vec<Arc<str>>>,
    id: SessionId,
    outbox: &Outbox,
    room: &Arc<str>,
) -> bool {
    if let Some(rooms) = behind.get_mut(&id) {
        if rooms.contains(room) {
            return true;
        }
        if outbox.behind() {
            rooms.push(room.clone());
            return true;
        }
        return false;
    }
    if outbox.behind() {
        behind.insert(id, vec![room.clone()]);
        return true;
    }
    false
}

impl Shard {
    /// Arms the check of the members that are behind, unless it is armed.
    fn check_behind_later(&mut self, ctx: &mut Context<Self>) {
        if self.checking || self.behind.is_empty() {
            return;
        }
        self.checking = true;
        ctx.run_later(BEHIND_CHECK, |shard, ctx| {
            shard.checking = false;
            shard.check_behind(ctx);
        });
    }

    /// Asks for the lists of the rooms each caught-up member missed events of; forgets the
    /// members that are gone.
    fn check_behind(&mut self, ctx: &mut Context<Self>) {
        let Some(resync) = self.resync.clone() else {
            self.behind.clear();
            return;
        };
        self.behind.retain(|id, rooms| match local_outbox(*id) {
            None => false,
            Some(outbox) if outbox.caught_up() => {
                resync.do_send(ResyncPresence {
                    session: *id,
                    rooms: std::mem::take(rooms),
                });
                false
            }
            Some(_) => true,
        });
        self.check_behind_later(ctx);
    }
}

impl Handler<AnswerFrame> for Shard {
    type Result = ();

    fn handle(&mut self, msg: AnswerFrame, _: &mut Self::Context) {
        offer_own(&msg.session, msg.text);
    }
}

/// Queues `text`, a frame for `session` alone, behind what is queued for it already; call it
/// on the session's own thread. Counted as [`crate::connection::session::SendText`] counts.
pub fn offer_own(session: &SessionHandle, text: ByteString) {
    match local_outbox(session.id()) {
        // A full queue closes the session (1008); after its close frame nothing is sent.
        Some(outbox) => match outbox.offer(text) {
            Ok(()) => {
                metrics().messages_out.inc();
            }
            Err(Refused::OutputClosed) => metrics().dropped(DropReason::OutputClosed, 1),
            Err(Refused::Full { .. }) => {}
        },
        // A session without an outbox on this thread: its own mailbox.
        None => session.deliver(text),
    }
}

impl Handler<PresenceList> for Shard {
    type Result = ();

    fn handle(&mut self, msg: PresenceList, ctx: &mut Self::Context) {
        let Some(outbox) = local_outbox(msg.session) else {
            return;
        };
        // Behind once more: asked again later (`resync` is known: this list answers a request
        // made after a deferral).
        if defers_presence(&mut self.behind, msg.session, &outbox, &msg.room) {
            metrics().presence_deferred.inc();
            self.check_behind_later(ctx);
            return;
        }
        if outbox.offer(msg.text).is_ok() {
            metrics().messages_out.inc();
            metrics().presence_resyncs.inc();
            for event in msg.then {
                if outbox.offer(event).is_ok() {
                    metrics().messages_out.inc();
                }
            }
        }
    }
}

/// Counts one offer's outcome: sent, refused after the close frame, refused by a full queue.
fn count(offered: Result<(), Refused>, sent: &mut u64, closed: &mut u64, full: &mut u64) {
    match offered {
        Ok(()) => *sent += 1,
        Err(Refused::OutputClosed) => *closed += 1,
        // The first refusal is counted by the session when it closes 1008.
        Err(Refused::Full { first }) => *full += u64::from(!first),
    }
}

/// Items grouped by shard. There is one shard per worker thread, so a list does; and an
/// actor address is no hash key for clippy (interior mutability, though it hashes a pointer).
pub struct PerShard<S, T>(pub Vec<(S, Vec<T>)>);

impl<S, T> Default for PerShard<S, T> {
    fn default() -> Self {
        PerShard(Vec::new())
    }
}

impl<S: PartialEq, T> PerShard<S, T> {
    /// Adds `item` to `shard`'s group.
    pub fn add(&mut self, shard: S, item: T) {
        match self.0.iter_mut().find(|(known, _)| *known == shard) {
            Some((_, items)) => items.push(item),
            None => self.0.push((shard, vec![item])),
        }
    }
}

/// Per shard, the `(room, id)` of members that left and must be removed from its fan-out.
pub type Removals = PerShard<Arc<Addr<Shard>>, (Arc<str>, SessionId)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_removed_in_any_order() {
        let mut members = Members::default();
        for id in 0..10 {
            members.insert(id, ());
        }
        members.insert(4, ());
        for id in [3, 9, 0, 5, 42] {
            members.remove(id);
        }
        let mut left: Vec<SessionId> = members.list.iter().map(|(id, _)| *id).collect();
        left.sort_unstable();
        assert_eq!(left, vec![1, 2, 4, 6, 7, 8]);
        for (position, (id, _)) in members.list.iter().enumerate() {
            assert_eq!(members.index[id], position);
        }
        for id in [1, 2, 4, 6, 7, 8] {
            members.remove(id);
        }
        assert!(members.is_empty());
        assert!(members.index.is_empty());
    }
}
