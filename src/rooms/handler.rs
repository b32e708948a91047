//! [`ChatHandler`]: the session handler that connects a chat session to its supervisor. It
//! joins on start, hands every message on as a [`Broadcast`], and leaves on end, batching the
//! leaves of one thread's turn into one [`LeaveBatch`]. It decides nothing about rooms.

use std::cell::RefCell;

use actix::Addr;
use bytestring::ByteString;

use crate::broker::ResumeRequest;
use crate::connection::session::{SessionEnd, SessionHandle, SessionHandler};
use crate::rooms::fanout::local_shard;
use crate::rooms::supervisor::{Broadcast, Join, Leave, LeaveBatch, Supervisor};

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
        leave_soon(
            &self.supervisor,
            Leave {
                id: session.id(),
                end: end.clone(),
            },
        );
    }
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
