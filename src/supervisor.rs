//! The supervisor actor: the registry of sessions, rooms and their fan-out, and the drain.
//!
//! Sessions [`Join`] and [`Leave`]; a [`Broadcast`] gets the room's next `seq`, is serialized
//! once and the same bytes go to every member, sender included, in one order for all. On
//! [`Drain`] every session is told to shut down (in batches if configured); each chooses its
//! own close mode and reports its end through [`Leave`]; sessions still open at the deadline
//! are aborted, and the answer is a [`DrainReport`]. It must not touch sockets or close
//! semantics: it only routes messages to sessions.
//!
//! [`ChatHandler`] is the session handler that connects a session to its supervisor.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message, ResponseFuture, SpawnHandle,
};
use bytestring::ByteString;
use futures::channel::oneshot;
use log::{debug, info};
use serde::Serialize;

use crate::close::{CloseMode, CloseResult, CloseStatus, Initiator};
use crate::fanout::{local_shard, Admit, Deliver, Remove, Shard};
use crate::session::{SessionEnd, SessionHandle, SessionHandler, SessionId};
use crate::shutdown::{batch_schedule, DrainPlan};

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
    /// The fan-out shard of the session's thread ([`crate::fanout::local_shard`], called on
    /// that thread).
    pub shard: Addr<Shard>,
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

/// A chat message from session `from` to its room.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// The sender.
    pub from: SessionId,
    /// The text.
    pub text: ByteString,
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

/// The result of a drain, logged at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions open when the drain started.
    pub sessions: usize,
    /// Closed awaited, with the peer's ack.
    pub acked_awaited: usize,
    /// Closed fire-and-forget, with the peer's ack.
    pub acked_fire_and_forget: usize,
    /// The peer closed first during the drain.
    pub client_closed: usize,
    /// Not acked within the close timeout.
    pub timed_out: usize,
    /// Aborted: vanished, failed, or still open at the deadline.
    pub aborted: usize,
    /// Messages from peers dropped because their session was closing awaited.
    pub dropped_messages: u64,
    /// Messages from peers delivered after a fire-and-forget close frame.
    pub delivered_after_close: u64,
    /// From the drain's start to its end.
    pub duration: Duration,
}

impl DrainReport {
    fn count(&mut self, end: &SessionEnd) {
        self.dropped_messages += end.dropped_after_close + end.dropped_slow_consumer;
        self.delivered_after_close += end.delivered_after_close;
        match (end.record.result, end.record.initiator, end.record.mode) {
            (CloseResult::Acked, Initiator::Client, _) => self.client_closed += 1,
            (CloseResult::Acked, _, CloseMode::Awaited) => self.acked_awaited += 1,
            (CloseResult::Acked, _, CloseMode::FireAndForget) => self.acked_fire_and_forget += 1,
            (CloseResult::Timeout, _, _) => self.timed_out += 1,
            (CloseResult::Aborted | CloseResult::Error, _, _) => self.aborted += 1,
        }
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions={} acked_awaited={} acked_fire_and_forget={} client_closed={} \
             timed_out={} aborted={} dropped_messages={} delivered_after_close={} duration_ms={}",
            self.sessions,
            self.acked_awaited,
            self.acked_fire_and_forget,
            self.client_closed,
            self.timed_out,
            self.aborted,
            self.dropped_messages,
            self.delivered_after_close,
            self.duration.as_millis()
        )
    }
}

struct Member {
    session: SessionHandle,
    room: Arc<str>,
    name: String,
    shard: Addr<Shard>,
}

#[derive(Default)]
struct Room {
    seq: u64,
    /// Shards with members in the room, and how many each has.
    shards: HashMap<Addr<Shard>, usize>,
}

struct DrainState {
    started: Instant,
    status: Option<CloseStatus>,
    report: DrainReport,
    reply: Option<oneshot::Sender<DrainReport>>,
    deadline: Option<SpawnHandle>,
}

/// The supervisor actor. One per server.
#[derive(Default)]
pub struct Supervisor {
    members: HashMap<SessionId, Member>,
    rooms: HashMap<Arc<str>, Room>,
    drain: Option<DrainState>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    text: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    name: &'a str,
}

fn to_json(value: &impl Serialize) -> Option<ByteString> {
    match serde_json::to_string(value) {
        Ok(json) => Some(ByteString::from(json)),
        Err(err) => {
            log::error!("serializing a chat message failed: {err}");
            None
        }
    }
}

impl Supervisor {
    /// A supervisor with no sessions.
    pub fn new() -> Self {
        Supervisor::default()
    }

    /// Ends the drain if every session has left.
    fn finish_drain_if_done(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() {
            return;
        }
        if let Some(mut drain) = self.drain.take() {
            if let Some(handle) = drain.deadline.take() {
                ctx.cancel_future(handle);
            }
            drain.report.duration = drain.started.elapsed();
            if let Some(reply) = drain.reply.take() {
                let _ = reply.send(drain.report.clone());
            }
            // Keep answering "draining" for late upgrades that raced the signal.
            self.drain = Some(DrainState {
                reply: None,
                deadline: None,
                ..drain
            });
        }
    }

    fn shut_down_batch(&self, ids: &[SessionId], status: &Option<CloseStatus>) {
        for id in ids {
            if let Some(member) = self.members.get(id) {
                member.session.shutdown(status.clone());
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<Join> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Join, _: &mut Self::Context) {
        let id = msg.session.id();
        if let Some(drain) = &self.drain {
            // The upgrade raced the signal: close it like the others.
            debug!("session={id} joined during the drain");
            msg.session.shutdown(drain.status.clone());
        }
        let welcome = Welcome {
            kind: "welcome",
            room: &msg.room,
            name: &msg.name,
        };
        let Some(welcome) = to_json(&welcome) else {
            return;
        };
        let room_name: Arc<str> = Arc::from(msg.room.as_str());
        let room = self.rooms.entry(room_name.clone()).or_default();
        *room.shards.entry(msg.shard.clone()).or_default() += 1;
        msg.shard.do_send(Admit {
            room: room_name.clone(),
            id,
            welcome,
        });
        debug!("session={id} joined room {} as {}", msg.room, msg.name);
        self.members.insert(
            id,
            Member {
                session: msg.session,
                room: room_name,
                name: msg.name,
                shard: msg.shard,
            },
        );
    }
}

impl Handler<Leave> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let Some(member) = self.members.remove(&msg.id) else {
            return;
        };
        member.shard.do_send(Remove {
            room: member.room.clone(),
            id: msg.id,
        });
        if let Some(room) = self.rooms.get_mut(&member.room) {
            if let Some(count) = room.shards.get_mut(&member.shard) {
                *count -= 1;
                if *count == 0 {
                    room.shards.remove(&member.shard);
                }
            }
            if room.shards.is_empty() {
                self.rooms.remove(&member.room);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            if drain.reply.is_some() {
                drain.report.count(&msg.end);
            }
        }
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<Broadcast> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) {
        let Some(member) = self.members.get(&msg.from) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&member.room) else {
            return;
        };
        room.seq += 1;
        let message = ChatMessage {
            kind: "message",
            room: &member.room,
            from: &member.name,
            text: &msg.text,
            seq: room.seq,
        };
        let Some(json) = to_json(&message) else {
            return;
        };
        for shard in room.shards.keys() {
            shard.do_send(Deliver {
                room: member.room.clone(),
                text: json.clone(),
            });
        }
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let plan = msg.plan;
        let (tx, rx) = oneshot::channel();
        let sessions = self.members.len();
        info!(
            "drain started: {sessions} sessions, deadline {:?}",
            plan.deadline
        );
        let deadline = ctx.run_later(plan.deadline, |act, ctx| {
            info!(
                "drain deadline reached: aborting {} sessions",
                act.members.len()
            );
            for member in act.members.values() {
                member.session.abort();
            }
            // Aborted sessions leave at once; if one cannot (its thread is gone), end anyway.
            ctx.run_later(Duration::from_millis(500), |act, ctx| {
                let ids: Vec<SessionId> = act.members.keys().copied().collect();
                for id in ids {
                    if let Some(member) = act.members.remove(&id) {
                        debug!("session={} dropped from the registry", member.session.id());
                        if let Some(drain) = act.drain.as_mut() {
                            drain.report.aborted += 1;
                        }
                    }
                }
                act.rooms.clear();
                act.finish_drain_if_done(ctx);
            });
        });
        self.drain = Some(DrainState {
            started: Instant::now(),
            status: plan.status.clone(),
            report: DrainReport {
                sessions,
                ..DrainReport::default()
            },
            reply: Some(tx),
            deadline: Some(deadline),
        });

        let mut ids: Vec<SessionId> = self.members.keys().copied().collect();
        ids.sort_unstable();
        let (batches, compressed) = batch_schedule(ids.len(), &plan);
        if compressed {
            if let Some(last) = batches.last() {
                info!(
                    "drain: batches of {} every {:?} do not fit the deadline {:?} less the close \
                     timeout {:?}: the batch at {:?} closes the last {} sessions",
                    plan.batch_size,
                    plan.batch_interval,
                    plan.deadline,
                    plan.close_timeout,
                    last.at,
                    last.sessions.len()
                );
            }
        }
        for batch in batches {
            let Some(chunk) = ids.get(batch.sessions) else {
                continue;
            };
            if batch.at.is_zero() {
                self.shut_down_batch(chunk, &plan.status);
            } else {
                let chunk = chunk.to_vec();
                let status = plan.status.clone();
                ctx.run_later(batch.at, move |act, _| act.shut_down_batch(&chunk, &status));
            }
        }
        self.finish_drain_if_done(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<AbortAll> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: AbortAll, ctx: &mut Self::Context) {
        info!("aborting {} sessions", self.members.len());
        for member in self.members.values() {
            member.session.abort();
        }
        if self.members.is_empty() {
            ctx.stop();
        }
    }
}

/// The session handler of the chat server: joins the supervisor on start, broadcasts every
/// message to the room, leaves on end. The shutdown close mode is the session's configured
/// one (the room override or `close.mode`).
pub struct ChatHandler {
    supervisor: Addr<Supervisor>,
    room: String,
    name: Option<String>,
}

impl ChatHandler {
    /// A handler for a session in `room`; `name` defaults to `guest-ID`.
    pub fn new(supervisor: Addr<Supervisor>, room: String, name: Option<String>) -> Self {
        ChatHandler {
            supervisor,
            room,
            name,
        }
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
            room: self.room.clone(),
            name,
            shard: local_shard(),
        });
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.supervisor.do_send(Broadcast {
            from: session.id(),
            text,
        });
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        self.supervisor.do_send(Leave {
            id: session.id(),
            end: end.clone(),
        });
    }
}
