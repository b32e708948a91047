//! The session handlers that connect a chat session to its supervisor: [`ChatHandler`] for
//! the one-room protocol (v1) and [`MultiRoomHandler`] for `wsgrace.v2`. Each joins on
//! start, hands every message on, and leaves on end, batching the leaves of one thread's
//! turn into one [`LeaveBatch`].
//!
//! [`MultiRoomHandler`] reads the client's frames ([`parse_client_frame`]) and refuses on the
//! spot what it can tell alone (a bad frame, a room its token does not grant), with an
//! `error` frame that keeps the connection; the rest goes to the supervisor, which knows the
//! session's rooms. It decides nothing about rooms.
use std::cell::RefCell;

use actix::Addr;
use bytestring::ByteString;

use crate::broker::{Epoch, JoinRequest, ResumeRequest};
use crate::connection::session::{SessionEnd, SessionHandle, SessionHandler};
use crate::metrics::{metrics, ProtocolLabels};
use crate::protocol::v2::{hello_json, parse_client_frame, ClientFrame, ErrorCode, Refusal};
use crate::rooms::fanout::{local_shard, offer_own};
use crate::rooms::supervisor::{
    AskPresence, Broadcast, Connect, Join, JoinRoom, Leave, LeaveBatch, LeaveRoom, Publish,
    SendSignal, Supervisor,
};

/// The session handler of the chat server: joins the supervisor on start, broadcasts every
/// message to the room, leaves on end. The shutdown close mode is the session's configured
/// one (the room override or `close.mode`).
pub struct ChatHandler {
    supervisor: Addr<Supervisor>,
    room: String,
    name: Option<String>,
    resume: Option<ResumeRequest>,
}

impl ChatHandler {
    /// A handler for a session in `room`; `name` defaults to `guest-ID`.
    pub fn new(supervisor: Addr<Supervisor>, room: String, name: Option<String>) -> Self {
        ChatHandler {
            supervisor,
            room,
            name,
            resume: None,
        }
    }

    /// The session resumes: the welcome says whether, and the messages after `since` follow.
    pub fn resume(mut self, resume: Option<ResumeRequest>) -> Self {
        self.resume = resume;
        self
    }
}

impl SessionHandler for ChatHandler {
    fn on_start(&mut self, session: &SessionHandle) {
        count_connection("v1", 1);
        let name = self
            .name
            .take()
            .unwrap_or_else(|| format!("guest-{}", session.id()));
        self.supervisor.do_send(Join {
            session: session.clone(),
            room: std::mem::take(&mut self.room),
            name,
            shard: local_shard(),
            resume: self.resume.take(),
        });
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.supervisor.do_send(Broadcast {
            from: session.id(),
            text,
            in_flight: Some(session.hold_inbound()),
        });
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        count_connection("v1", -1);
        leave_soon(
            &self.supervisor,
            Leave {
                id: session.id(),
                end: end.clone(),
            },
        );
    }
}

/// Whether a session may join a room (its token's grants); `None`: any room.
pub type RoomGrant = Box<dyn Fn(&str) -> bool>;

/// The session handler of a `wsgrace.v2` connection: many rooms, joined and left while
/// connected. See the module docs.
pub struct MultiRoomHandler {
    supervisor: Addr<Supervisor>,
    name: Option<String>,
    grant: Option<RoomGrant>,
    max_rooms: usize,
}

impl MultiRoomHandler {
    /// A handler for a v2 session named `name` (default `guest-ID`) that may be in at most
    /// `max_rooms` rooms at once.
    pub fn new(supervisor: Addr<Supervisor>, name: Option<String>, max_rooms: usize) -> Self {
        MultiRoomHandler {
            supervisor,
            name,
            grant: None,
            max_rooms,
        }
    }

    /// Rooms not granted by `grant` are refused `forbidden`.
    pub fn granting(mut self, grant: RoomGrant) -> Self {
        self.grant = Some(grant);
        self
    }

    /// What `frame` asks, or why not: a room the token does not grant is refused here; the
    /// rest goes to the supervisor, which knows the session's rooms (`already_joined`,
    /// `not_joined`, `too_many_rooms` are its answers).
    fn take(&self, session: &SessionHandle, frame: ClientFrame) -> Result<(), Refusal> {
        let id = session.id();
        match frame {
            ClientFrame::Join { ref room, .. }
                if self.grant.as_ref().is_some_and(|grant| !grant(room)) =>
            {
                Err(
                    Refusal::new(ErrorCode::Forbidden, "the token does not grant this room")
                        .about(Some(room), frame.reference()),
                )
            }
            ClientFrame::Join {
                room,
                since,
                epoch,
                last,
                reference,
            } => {
                let resume = since.map(|since| ResumeRequest {
                    since,
                    epoch: epoch.map(Epoch::new),
                });
                let last = last
                    .and_then(|last| usize::try_from(last).ok())
                    .unwrap_or(0);
                self.supervisor.do_send(JoinRoom {
                    session: id,
                    room,
                    request: JoinRequest { resume, last },
                    reference,
                });
                Ok(())
            }
            ClientFrame::Leave { room, reference } => {
                self.supervisor.do_send(LeaveRoom {
                    session: id,
                    room,
                    reference,
                });
                Ok(())
            }
            ClientFrame::Publish {
                room,
                text,
                id: message_id,
                reference,
            } => {
                self.supervisor.do_send(Publish {
                    session: id,
                    room,
                    text,
                    id: message_id,
                    reference,
                    in_flight: Some(session.hold_inbound()),
                });
                Ok(())
            }
            ClientFrame::Signal {
                room,
                text,
                reference,
            } => {
                self.supervisor.do_send(SendSignal {
                    session: id,
                    room,
                    text,
                    reference,
                    in_flight: Some(session.hold_inbound()),
                });
                Ok(())
            }
            ClientFrame::Presence { room, reference } => {
                self.supervisor.do_send(AskPresence {
                    session: id,
                    room,
                    reference,
                });
                Ok(())
            }
        }
    }
}

/// Queues `frame` for `session` on its own thread, behind what is queued already.
fn send_own(session: &SessionHandle, frame: Result<ByteString, impl std::fmt::Display>) {
    match frame {
        Ok(json) => offer_own(session, json),
        Err(err) => log::error!(
            "session={}: serializing a frame failed: {err}",
            session.id()
        ),
    }
}

impl SessionHandler for MultiRoomHandler {
    fn on_start(&mut self, session: &SessionHandle) {
        count_connection("v2", 1);
        let name = self
            .name
            .take()
            .unwrap_or_else(|| format!("guest-{}", session.id()));
        // The first frame, before anything a room sends.
        send_own(session, hello_json(&name));
        self.supervisor.do_send(Connect {
            session: session.clone(),
            name,
            shard: local_shard(),
            max_rooms: self.max_rooms,
        });
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        let taken = parse_client_frame(&text).and_then(|frame| self.take(session, frame));
        if let Err(refusal) = taken {
            log::debug!(
                "session={}: frame refused: {}",
                session.id(),
                refusal.code.as_str()
            );
            send_own(session, refusal.to_json());
        }
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        count_connection("v2", -1);
        leave_soon(
            &self.supervisor,
            Leave {
                id: session.id(),
                end: end.clone(),
            },
        );
    }
}

/// Counts a session of `protocol` opening (+1) or ending (-1).
fn count_connection(protocol: &'static str, change: i64) {
    metrics()
        .connections_by_protocol
        .get_or_create(&ProtocolLabels { protocol })
        .inc_by(change);
}

thread_local! {
    /// Leaves of this thread's sessions not sent yet, with their supervisor.
    static LEAVING: RefCell<Vec<(Addr<Supervisor>, Leave)>> = const { RefCell::new(Vec::new()) };
}

/// Sends `leave` to `supervisor` together with the other leaves of this thread's sessions that
/// end in the same turn of the thread's event loop: a task queued behind them sends them as
/// one [`LeaveBatch`]. In a drain of 10,000 sessions that is a few hundred messages to the
/// supervisor's thread instead of 10,000, each of which could wake it.
fn leave_soon(supervisor: &Addr<Supervisor>, leave: Leave) {
    let first = LEAVING.with(|leaving| {
        let mut leaving = leaving.borrow_mut();
        leaving.push((supervisor.clone(), leave));
        leaving.len() == 1
    });
    if !first {
        return;
    }
    // Outside an arbiter (or one that is stopping) nobody would run the task: send now.
    let queued = actix_rt::Arbiter::try_current()
        .is_some_and(|arbiter| arbiter.spawn(async { send_leaving() }));
    if !queued {
        send_leaving();
    }
}

/// Sends this thread's pending leaves, one [`LeaveBatch`] per supervisor.
fn send_leaving() {
    let mut leaving = LEAVING.with(|leaving| std::mem::take(&mut *leaving.borrow_mut()));
    while let Some((supervisor, _)) = leaving.first() {
        let supervisor = supervisor.clone();
        let (mine, others): (Vec<_>, Vec<_>) = leaving
            .into_iter()
            .partition(|(other, _)| *other == supervisor);
        supervisor.do_send(LeaveBatch {
            leaves: mine.into_iter().map(|(_, leave)| leave).collect(),
        });
        leaving = others;
    }
}
