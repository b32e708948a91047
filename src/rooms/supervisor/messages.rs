//! The supervisor's mailbox: every message a session, a handler or the service sends it, with
//! what each means and answers.

use actix::{Addr, Message};
use bytestring::ByteString;

use crate::broker::{JoinRequest, ResumeRequest};
use crate::connection::session::{SessionEnd, SessionHandle, SessionId};
use crate::connection::transport::InFlightToken;
use crate::rooms::drain::{DrainPlan, DrainReport};
use crate::rooms::fanout::Shard;

/// A session joins `room` as `name`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The session.
    pub session: SessionHandle,
    /// Its room.
    pub room: String,
    /// Its nickname.
    pub name: String,
    /// The fan-out shard of the session's thread ([`crate::rooms::fanout::local_shard`], called on
    /// that thread).
    pub shard: Addr<Shard>,
    /// The `since` and `epoch` of its upgrade, if it resumes.
    pub resume: Option<ResumeRequest>,
}

/// A session ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// Its id.
    pub id: SessionId,
    /// How it ended.
    pub end: SessionEnd,
}

/// Sessions ended: [`Leave`] for each, sent together (see [`crate::rooms::handler::ChatHandler`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LeaveBatch {
    /// One per session, in the order they ended.
    pub leaves: Vec<Leave>,
}

/// A chat message from session `from` to its room.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// The sender.
    pub from: SessionId,
    /// The text.
    pub text: ByteString,
    /// Counts the message as on its way ([`SessionHandle::hold_inbound`]) until it is
    /// delivered or refused (for Redis: published); `None`: not counted.
    pub in_flight: Option<InFlightToken>,
}

/// Drain every session as `plan` says (its deadline counted from now); answers the report.
#[derive(Debug, Clone, Message)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    /// Status, deadline and batches.
    pub plan: DrainPlan,
}

/// Aborts every session still registered (the second signal).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AbortAll;

/// A `wsgrace.v2` session registers under `name`; it joins rooms with [`JoinRoom`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The session.
    pub session: SessionHandle,
    /// Its nickname.
    pub name: String,
    /// The fan-out shard of the session's thread ([`crate::rooms::fanout::local_shard`]).
    pub shard: Addr<Shard>,
    /// Rooms it may have joined at once (`session.max_rooms`).
    pub max_rooms: usize,
}

/// A registered v2 session joins `room` (its handler checked the name and the grant):
/// answered `joined` (with the resume's outcome, `ref` echoed) through the session's shard,
/// then the replay or the last messages, then live ones; or `error` `already_joined`,
/// `too_many_rooms` or `unavailable`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct JoinRoom {
    /// The session.
    pub session: SessionId,
    /// The room.
    pub room: String,
    /// Its resume, or the last messages it asks for.
    pub request: JoinRequest,
    /// The join's `ref`.
    pub reference: Option<String>,
}

/// A v2 session leaves `room`: answered `left` (with `ref`), after which nothing of the room
/// reaches it; or `error` `not_joined`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    /// The session.
    pub session: SessionId,
    /// The room.
    pub room: String,
    /// The leave's `ref`.
    pub reference: Option<String>,
}

/// A v2 session's publish in one of its rooms. With an `id`: exactly once within
/// `publish.dedupe_ms` (a repeat is answered `ack` with the first one's seq), and the
/// sender's own copy carries the id.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The sender.
    pub session: SessionId,
    /// The room.
    pub room: String,
    /// The text.
    pub text: String,
    /// The client's message id.
    pub id: Option<String>,
    /// The publish's `ref`, echoed on an `ack` or `error`.
    pub reference: Option<String>,
    /// Counts the message as on its way until it is published or refused.
    pub in_flight: Option<InFlightToken>,
}

/// A v2 session's `signal` to the other members of one of its rooms, on every node.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SendSignal {
    /// The sender.
    pub session: SessionId,
    /// The room.
    pub room: String,
    /// The signal's text.
    pub text: String,
    /// The signal's `ref`, echoed on an `error`.
    pub reference: Option<String>,
    /// Counts the signal as on its way until it is sent.
    pub in_flight: Option<InFlightToken>,
}

/// A v2 session asks who is in one of its rooms: answered `presence` (with `ref`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AskPresence {
    /// The session.
    pub session: SessionId,
    /// The room.
    pub room: String,
    /// The request's `ref`.
    pub reference: Option<String>,
}
