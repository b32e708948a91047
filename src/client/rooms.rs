//! What the app sees of a `wsgrace.v2` client ([`RoomsClient`](super::RoomsClient)): how a
//! join starts ([`JoinOptions`]), the events of its rooms and connection ([`RoomEvent`]),
//! why a publish was given up ([`PublishFailure`]), and what its calls fail with
//! ([`RoomError`]).
//!
//! Plain types only: it must not decide anything (that is `rooms_core.rs`) or do I/O.

use std::time::Duration;

use thiserror::Error;

use super::policy::Step;
use super::wire::Resume;
use super::wire_v2::{ErrorCode, Member};
use super::ConnectionState;

/// The largest `last` a join may ask (SPEC: 0–1000).
pub const MAX_LAST: u32 = 1000;

/// How many publishes one [`RoomsClient`](super::RoomsClient) keeps until their room confirms
/// them; one more is refused with [`RoomError::OutboxFull`].
pub const OUTBOX_CAPACITY: usize = 1024;

/// Where a join starts in the room's history. The default: at the room's present (live
/// messages only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// The room's last K kept messages (0–1000) come first, oldest first: a user who opens
    /// a room sees its recent conversation. Used for the first join only; every later join
    /// (after a reconnect) resumes from the room's position.
    pub last: Option<u32>,
    /// Go on from here instead: another client's [`RoomsClient::position`] for this room,
    /// to continue after it stopped without losing or repeating a message (a refused resume
    /// is a [`RoomEvent::Gap`]). Wins over `last`.
    ///
    /// [`RoomsClient::position`]: super::RoomsClient::position
    pub resume: Option<Resume>,
}

/// Why a publish was given up (it is no longer resent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishFailure {
    /// The server refused it (`bad_request`, `not_joined`, `forbidden`, ...), or refused its
    /// room's join: it reached nobody.
    Refused { code: ErrorCode, text: String },
    /// The app left the room before the publish was confirmed: if it had been sent, it may be
    /// in the room (nothing of the room is delivered after the leave to tell).
    Left,
}

/// What a [`RoomsClient`](super::RoomsClient) tells the app, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A new state (the first event is `State(Connecting)`; `Open` comes with each hello).
    State(ConnectionState),
    /// Once per connection, first: the name the server gave it (the token's `sub` with
    /// authentication). The rooms are joined again right after it.
    Hello { name: String },
    /// The room is joined on this connection (after every reconnect, too). With `resumed:
    /// Some(true)`, `missed` messages after the room's last seq follow; after a join with
    /// `last`, up to that many recent messages follow.
    Joined {
        room: String,
        epoch: Option<String>,
        seq: Option<u64>,
        resumed: Option<bool>,
        missed: Option<u64>,
    },
    /// The room's resume was refused (`resumed: false`): its messages after `previous_seq`
    /// may be lost; delivery goes on after `seq`.
    Gap {
        room: String,
        previous_epoch: Option<String>,
        previous_seq: u64,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    /// The server refused the room's join (`bad_room`, `forbidden`, `too_many_rooms`, ...):
    /// the room is no longer joined or rejoined; its unconfirmed publishes fail. A join
    /// refused as `unavailable` is retried after a backoff delay instead.
    JoinRefused {
        room: String,
        code: ErrorCode,
        text: String,
    },
    /// The room is left (its `left` came, or there was nothing to leave on the server);
    /// nothing of it is delivered after [`RoomsClient::leave`](super::RoomsClient::leave).
    Left { room: String },
    /// A room's message: each seq once, in increasing order, per room (per epoch). `id` is
    /// set on this client's own publishes (the one [`RoomsClient::publish`] returned).
    ///
    /// [`RoomsClient::publish`]: super::RoomsClient::publish
    Message {
        room: String,
        from: String,
        text: String,
        seq: u64,
        /// When the message got its seq, ms since the Unix epoch (server clock).
        ts: Option<u64>,
        id: Option<String>,
    },
    /// The publish `id` is in the room, once: its copy came (right after its `Message`),
    /// or an `ack` said the room had it already (a resend after a reconnect). `seq`: its
    /// seq in the room.
    Published {
        room: String,
        id: String,
        seq: Option<u64>,
    },
    /// The publish `id` (with its `text`) is given up.
    PublishFailed {
        room: String,
        id: String,
        text: String,
        reason: PublishFailure,
    },
    /// Another member's signal (typing, read receipts): no seq, not kept, at most once.
    Signal {
        room: String,
        from: String,
        text: String,
    },
    /// Who is in the room, each name with its number of connections: the answer to
    /// [`RoomsClient::presence`](super::RoomsClient::presence), or sent unasked after a storm
    /// of presence events this client was too slow to be sent (it replaces the list).
    Presence { room: String, members: Vec<Member> },
    /// A name's first connection joined the room.
    PresenceJoin { room: String, name: String },
    /// A name's last connection left the room.
    PresenceLeave { room: String, name: String },
    /// The room's history was reset; its seqs continue from `seq + 1`.
    Epoch {
        room: String,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    /// The server refused a frame of ours that is not a join or a publish (a signal or a
    /// presence request for a room it does not count as joined, a `bad_request`); the
    /// connection stays open.
    Refused {
        code: ErrorCode,
        room: Option<String>,
        text: String,
    },
    /// The server is about to close this connection; the client reconnects after this.
    GoingAway { reconnect_after: Duration },
    /// From the client itself: `token` (the token hook failed: retried after backoff),
    /// `connect` (the URL cannot be connected to, or the server did not choose
    /// `wsgrace.v2`: state Closed).
    Error { code: String, text: String },
    /// An underlying socket ended, or an attempt to open one failed (`opened: false`);
    /// `welcomed`: its hello had come; `next` is the decision.
    Closed {
        code: u16,
        reason: String,
        clean: bool,
        opened: bool,
        welcomed: bool,
        next: Step,
    },
}

/// What the calls of a [`RoomsClient`](super::RoomsClient) fail with; nothing is sent then.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoomError {
    #[error("room {0:?} is not 1-64 characters of [A-Za-z0-9_.-]")]
    BadRoom(String),
    #[error("last {0} is more than 1000")]
    LastOutOfRange(u32),
    #[error("room {0} is joined already")]
    AlreadyJoined(String),
    #[error("room {0} is not joined")]
    NotJoined(String),
    /// Signals and presence requests are not queued: they need the room joined on an open
    /// connection.
    #[error("room {0} is not joined on an open connection yet")]
    NotReady(String),
    #[error("{0} publishes wait for their room to confirm them: no room for more")]
    OutboxFull(usize),
    #[error("the client's send queue is full")]
    QueueFull,
    #[error("the client is closed")]
    Closed,
}
