//! The supervisor actor: the registry of sessions, rooms and their fan-out, and the drain.
//!
//! Sessions [`Join`] and [`Leave`]; a [`Broadcast`] goes to the room's broker
//! ([`crate::broker`]), which gives it the room's next `seq` and records it in the history.
//! Every message of a room, as the broker hands it back (at once from the local broker, as a
//! live event from Redis), is serialized once and goes to every enrolled member through the
//! per-thread shards, sender included, in one order for all.
//!
//! A joining session is not enrolled at once: it first gets its welcome and, when it resumes,
//! the replay from its join snapshot; with Redis, live messages that arrive before the
//! snapshot are merged in ([`crate::rooms::resume::ResumeMerge`]). It is enrolled in the room's
//! shard fan-out once the room's line (what the enrolled members have been given) is not
//! behind it; until then it gets live messages one by one. Each seq reaches it once.
//!
//! On [`Drain`] every session is told to shut down (in batches if configured), after a
//! `going_away` that suggests a reconnect delay; each chooses its own close mode and reports
//! its end through [`Leave`]; sessions still open at the deadline are aborted, and the answer
//! is a [`DrainReport`]. It must not touch sockets or close semantics: it only routes
//! messages to sessions.
//!
//! [`ChatHandler`] is the session handler that connects a session to its supervisor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    ResponseFuture, SpawnHandle, StreamHandler, WrapFuture,
};
use bytestring::ByteString;
use futures::channel::oneshot;
use log::{debug, info, warn};
use serde::Serialize;

use crate::broker::local::HistoryLimits;
use crate::broker::redis::{BrokerEvent, BrokerEvents, BrokerHealth};
use crate::broker::{
    Broker, BrokerError, Epoch, EpochChange, JoinSnapshot, LocalBroker, Published, Resume,
    ResumeRequest,
};
use crate::close::CloseStatus;
use crate::connection::session::{SessionEnd, SessionHandle, SessionId};
use crate::connection::transport::InFlightToken;
use crate::metrics::{metrics, DropReason};
use crate::rooms::drain::{batch_schedule, DrainPlan};
// Where it was before 0.2 (see CHANGELOG.md).
#[doc(hidden)]
pub use crate::rooms::drain::DrainReport;
use crate::rooms::fanout::{Admit, Deliver, Remove, Shard, ShutDown};
#[doc(hidden)]
pub use crate::rooms::handler::ChatHandler;
use crate::rooms::resume::{Delivery, ResumeMerge};

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

/// Sessions ended: [`Leave`] for each, sent together (see [`ChatHandler`]).
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

struct Member {
    session: SessionHandle,
    room: Arc<str>,
    name: String,
    /// Shared by the members of one thread ([`Supervisor::intern_shard`]): an `Addr` clone
    /// per member would allocate its own sender state.
    shard: Arc<Addr<Shard>>,
    /// Until the session is enrolled in its room's fan-out: its own merge of the join
    /// snapshot and the live messages (see [`crate::rooms::resume`]).
    joining: Option<ResumeMerge>,
}

#[derive(Default)]
struct Room {
    /// Shards with enrolled members in the room, and how many each has.
    shards: HashMap<Arc<Addr<Shard>>, usize>,
    /// Members not enrolled yet (waiting for their snapshot, or catching up with the live
    /// messages their snapshot was ahead of).
    joining: HashSet<SessionId>,
    /// Local members, enrolled or not.
    members: usize,
    /// The epoch and seq the enrolled members have been given up to; `None` before the first
    /// enrolment. It drops a live message it already passed (a late copy) and announces a
    /// new epoch before its first message. While the room catches up after a broker
    /// reconnect it is not live: it buffers live messages until the catch-up snapshot.
    line: Option<ResumeMerge>,
    /// Set while catching up after a broker reconnect: the epoch and seq the enrolled members
    /// had, and the number of the catch-up (a late answer to an older one is ignored).
    catch_up: Option<CatchUp>,
}

#[derive(Clone)]
struct CatchUp {
    epoch: Epoch,
    last: u64,
    attempt: u64,
}

struct DrainState {
    started: Instant,
    status: Option<CloseStatus>,
    reconnect_spread: Option<Duration>,
    report: DrainReport,
    reply: Option<oneshot::Sender<DrainReport>>,
    deadline: Option<SpawnHandle>,
}

/// Live messages a joining session may receive before its join snapshot (with the Redis
/// broker); more, and the session is closed 1013 so that its client resumes.
pub const MAX_JOIN_BUFFER: usize = 4_096;

/// How often the local broker drops expired history.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The supervisor actor. One per server.
pub struct Supervisor {
    members: HashMap<SessionId, Member>,
    rooms: HashMap<Arc<str>, Room>,
    drain: Option<DrainState>,
    broker: Broker,
    events: Option<BrokerEvents>,
    /// Scratch space for one message's deliveries (no allocation per message).
    out: Vec<Delivery>,
    /// The shards of the members' threads, shared by their members.
    shards: Vec<Arc<Addr<Shard>>>,
    /// Catch-ups started so far.
    catch_ups: u64,
    /// Messages handed to the Redis broker and not answered yet.
    publishing: usize,
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    name: &'a str,
    epoch: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    text: &'a str,
}

fn to_json(value: &impl Serialize) -> Option<ByteString> {
    match serde_json::to_string(value) {
        Ok(json) => Some(ByteString::from(json)),
        Err(err) => {
            log::error!("serializing a frame failed: {err}");
            None
        }
    }
}

/// The frame of one delivery.
fn delivery_json(delivery: &Delivery) -> Option<ByteString> {
    match delivery {
        Delivery::Message(message) => Some(message.json.clone()),
        Delivery::Epoch(change) => match change.to_json() {
            Ok(json) => Some(json),
            Err(err) => {
                log::error!("serializing an epoch frame failed: {err}");
                None
            }
        },
    }
}

/// The close status of a session whose join could not finish: its client retries later.
fn try_again_later() -> Option<CloseStatus> {
    CloseStatus::new(1013, "try again later").ok()
}

/// Whether a member whose merge is live can join the room's fan-out now: the enrolled
/// members have been given at least what it has, in its epoch (or nobody is enrolled yet).
fn can_enroll(line: Option<&ResumeMerge>, merge: &ResumeMerge) -> bool {
    let Some((epoch, last)) = merge.last_delivered() else {
        return false;
    };
    match line {
        None => true,
        Some(line) => match line.last_delivered() {
            // Catching up after a reconnect: not before it is done.
            None => false,
            Some((line_epoch, line_last)) => line_epoch == epoch && line_last >= last,
        },
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// A supervisor with no sessions and the local broker with the default `[history]`.
    pub fn new() -> Self {
        let limits = HistoryLimits::from(&crate::config::HistorySettings::default());
        Supervisor::with_broker(Broker::Local(LocalBroker::new(limits)), None)
    }

    /// A supervisor whose rooms go through `broker`; `events` is the Redis broker's event
    /// stream ([`Broker::from_config`] returns both).
    pub fn with_broker(broker: Broker, events: Option<BrokerEvents>) -> Self {
        Supervisor {
            members: HashMap::new(),
            rooms: HashMap::new(),
            drain: None,
            broker,
            events,
            out: Vec::new(),
            shards: Vec::new(),
            catch_ups: 0,
            publishing: 0,
        }
    }

    /// The shared address of `shard` (one per worker thread); forgets shards nobody uses
    /// any more (a worker thread that was replaced).
    fn intern_shard(&mut self, shard: Addr<Shard>) -> Arc<Addr<Shard>> {
        if let Some(known) = self.shards.iter().find(|known| ***known == shard) {
            return known.clone();
        }
        self.shards.retain(|known| Arc::strong_count(known) > 1);
        let shard = Arc::new(shard);
        self.shards.push(shard.clone());
        shard
    }

    /// Ends the drain if every session has left.
    fn finish_drain_if_done(&mut self, ctx: &mut Context<Self>) {
        // A message a session sent before its close is published before the process exits
        // (each publish answers within the broker's request timeout).
        if !self.members.is_empty() || self.publishing > 0 {
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

    /// Tells `ids` to shut down: one [`ShutDown`] per shard (thread), not one cross-thread
    /// message per session. The shard finds each session by its id (no address cloned).
    fn shut_down_batch(&self, ids: &[SessionId], status: &Option<CloseStatus>) {
        let spread = self.drain.as_ref().and_then(|drain| drain.reconnect_spread);
        let mut per_shard = PerShard::default();
        for id in ids {
            if let Some(member) = self.members.get(id) {
                per_shard.add(&*member.shard, (*id, reconnect_delay(spread)));
            }
        }
        for (shard, sessions) in per_shard.0 {
            shard.do_send(ShutDown {
                status: status.clone(),
                sessions,
            });
        }
    }

    /// A live message of a room (from the local broker at once, from Redis as it arrives):
    /// to the enrolled members through their shards, to joining members one by one through
    /// their merges; then enrols the joining members it caught up with.
    fn on_live(&mut self, message: Published) {
        let room_name = message.room.clone();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        let mut failed = Vec::new();
        for id in &room.joining {
            let Some(member) = self.members.get_mut(id) else {
                continue;
            };
            let Some(merge) = member.joining.as_mut() else {
                continue;
            };
            self.out.clear();
            if merge.live(message.clone(), &mut self.out).is_err() {
                failed.push(*id);
                continue;
            }
            send_to_member(member, *id, &self.out);
        }
        let mut line_overflowed = false;
        if let Some(line) = room.line.as_mut() {
            self.out.clear();
            // With nobody enrolled the line still follows the room, for later enrolments.
            // It buffers (and may overflow) only while catching up after a reconnect.
            line_overflowed = line.live(message, &mut self.out).is_err();
            fan_out(room, &room_name, &self.out, false);
        }
        if line_overflowed {
            self.room_failed(&room_name, "too many live messages while catching up");
        }
        for id in failed {
            self.join_failed(
                id,
                "more live messages arrived before its snapshot than it may buffer",
            );
        }
        self.enroll_caught_up(&room_name);
    }

    /// A room's history was lost: its members are told before its next message.
    fn on_epoch_change(&mut self, change: EpochChange) {
        let Some(room) = self.rooms.get_mut(&change.room) else {
            return;
        };
        for id in &room.joining {
            let Some(member) = self.members.get_mut(id) else {
                continue;
            };
            if let Some(merge) = member.joining.as_mut() {
                self.out.clear();
                merge.epoch_changed(&change, &mut self.out);
                send_to_member(member, *id, &self.out);
            }
        }
        if let Some(line) = room.line.as_mut() {
            self.out.clear();
            line.epoch_changed(&change, &mut self.out);
            fan_out(room, &change.room, &self.out, false);
        }
    }

    /// A joining member's snapshot (or why there is none): the welcome and the replay, then
    /// enrolment in the room's fan-out, or one-by-one delivery until the room catches up.
    fn on_snapshot(
        &mut self,
        id: SessionId,
        asked: bool,
        snapshot: Result<JoinSnapshot, BrokerError>,
    ) {
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(err) => {
                self.join_failed(id, &format!("the broker could not be read: {err}"));
                return;
            }
        };
        let Some(member) = self.members.get_mut(&id) else {
            return; // Left meanwhile.
        };
        let Some(merge) = member.joining.as_mut() else {
            return;
        };
        if asked {
            metrics().resume(snapshot.missed());
        }
        let welcome = Welcome {
            kind: "welcome",
            room: &member.room,
            name: &member.name,
            epoch: snapshot.epoch.as_str(),
            seq: snapshot.seq,
            resumed: asked.then(|| snapshot.missed().is_some()),
            missed: snapshot.missed(),
        };
        let Some(welcome) = to_json(&welcome) else {
            return;
        };
        self.out.clear();
        if merge.snapshot(&snapshot, &mut self.out).is_err() {
            self.join_failed(
                id,
                "more live messages arrived before its snapshot than it may buffer",
            );
            return;
        }
        debug!(
            "session={id} joined room {} at {}:{} ({:?} missed)",
            member.room,
            snapshot.epoch,
            snapshot.seq,
            snapshot.missed()
        );
        let mut frames = Vec::with_capacity(self.out.len() + 1);
        frames.push(welcome);
        frames.extend(self.out.iter().filter_map(delivery_json));
        let Some(room) = self.rooms.get_mut(&member.room) else {
            return;
        };
        // With the local broker (and mostly with Redis) the member is enrolled at once: the
        // welcome, the replay and the enrolment go to its shard as one message.
        if enroll(room, id, member, frames, true) {
            room.joining.remove(&id);
        }
    }

    /// Enrols every joining member of `room` whose merge is live and no ahead of the room's
    /// enrolled members (see [`can_enroll`]).
    fn enroll_caught_up(&mut self, room_name: &Arc<str>) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        // Taken out while `enroll` changes the room (an empty set does not allocate).
        let mut joining = std::mem::take(&mut room.joining);
        joining.retain(|id| match self.members.get_mut(id) {
            Some(member) => !enroll(room, *id, member, Vec::new(), false),
            None => true,
        });
        room.joining = joining;
    }

    /// A join that cannot finish: the session is closed 1013 so that its client comes back
    /// and resumes.
    fn join_failed(&mut self, id: SessionId, why: &str) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        warn!(
            "session={id}: joining room {} failed: {why}; closing it 1013",
            member.room
        );
        member.session.shutdown(try_again_later());
    }

    /// The Redis broker is (back) up: messages other nodes published while this node was
    /// cut off are in the rooms' history, not on the live stream. Every room with enrolled
    /// members reads its history after the last seq they were given (the subscription is
    /// already renewed), buffering live messages meanwhile, and hands the missed ones on.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let Broker::Redis(redis) = &self.broker else {
            return;
        };
        let mut requests = Vec::new();
        for (name, room) in &mut self.rooms {
            let from = match (&room.catch_up, room.line.as_ref()) {
                (Some(catch_up), _) => (catch_up.epoch.clone(), catch_up.last),
                (None, Some(line)) => match line.last_delivered() {
                    Some((epoch, last)) => (epoch.clone(), last),
                    None => continue,
                },
                (None, None) => continue,
            };
            self.catch_ups += 1;
            room.catch_up = Some(CatchUp {
                epoch: from.0.clone(),
                last: from.1,
                attempt: self.catch_ups,
            });
            room.line = Some(ResumeMerge::new(MAX_JOIN_BUFFER));
            let request = ResumeRequest {
                since: from.1,
                epoch: Some(from.0),
            };
            requests.push((
                name.clone(),
                self.catch_ups,
                redis.snapshot(name, Some(request)),
            ));
        }
        // A member still catching up one by one has no line of its own to catch up from:
        // it resumes instead.
        let behind: Vec<SessionId> = self
            .members
            .iter()
            .filter(|(_, member)| member.joining.as_ref().is_some_and(ResumeMerge::is_live))
            .map(|(id, _)| *id)
            .collect();
        for id in behind {
            self.join_failed(
                id,
                "the broker reconnected before it caught up with its room",
            );
        }
        for (name, attempt, snapshot) in requests {
            ctx.spawn(
                snapshot
                    .into_actor(self)
                    .map(move |snapshot, act, _| act.caught_up(name, attempt, snapshot)),
            );
        }
    }

    /// The answer of a room's catch-up: the missed messages to the enrolled members, then
    /// the live ones buffered meanwhile. A gap that cannot be filled (history trimmed, the
    /// broker failing) closes the room's sessions 1013, so that their clients resume and
    /// learn it (`resumed: false`).
    fn caught_up(
        &mut self,
        room_name: Arc<str>,
        attempt: u64,
        snapshot: Result<JoinSnapshot, BrokerError>,
    ) {
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        if room.catch_up.as_ref().map(|c| c.attempt) != Some(attempt) {
            return;
        }
        let problem = match &snapshot {
            Ok(snapshot) => match &snapshot.resume {
                Resume::Resumed(_) => None,
                Resume::NotResumed | Resume::NotAsked => Some(
                    "the messages published while the broker was unreachable are no longer in \
                     its history"
                        .to_owned(),
                ),
            },
            Err(err) => Some(format!("reading its history failed: {err}")),
        };
        let (Ok(snapshot), None) = (snapshot, problem.clone()) else {
            self.room_failed(
                &room_name,
                problem.as_deref().unwrap_or("catching up failed"),
            );
            return;
        };
        room.catch_up = None;
        let Some(line) = room.line.as_mut() else {
            return;
        };
        self.out.clear();
        if line.snapshot(&snapshot, &mut self.out).is_err() {
            self.room_failed(&room_name, "too many live messages while catching up");
            return;
        }
        if let Some(missed) = snapshot.missed().filter(|missed| *missed > 0) {
            info!(
                "room {room_name}: caught up {missed} messages published while the broker was \
                 unreachable"
            );
        }
        fan_out(room, &room_name, &self.out, true);
        self.enroll_caught_up(&room_name);
    }

    /// The room's enrolled members cannot be given every seq: they are closed 1013 (their
    /// clients resume and learn about the gap), and the room's line starts again.
    fn room_failed(&mut self, room_name: &Arc<str>, why: &str) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        room.line = None;
        room.catch_up = None;
        let enrolled: Vec<&Member> = self
            .members
            .values()
            .filter(|member| member.room == *room_name && member.joining.is_none())
            .collect();
        warn!(
            "room {room_name}: {why}; closing its {} sessions 1013 so that they resume",
            enrolled.len()
        );
        for member in enrolled {
            member.session.shutdown(try_again_later());
        }
    }

    /// A message from `from` to its room, through the broker. The local broker answers at
    /// once; with Redis the message comes back as a live event, and a refusal reaches the
    /// sender as an `error` frame.
    /// Publishes `text` of member `from`; `in_flight` is dropped once the message is done
    /// with (delivered here, or published to Redis, or refused).
    fn publish(
        &mut self,
        from: SessionId,
        text: ByteString,
        in_flight: Option<InFlightToken>,
        ctx: &mut Context<Self>,
    ) {
        let Some(member) = self.members.get(&from) else {
            return;
        };
        match &mut self.broker {
            Broker::Local(local) => {
                match local.publish(&member.room, &member.name, &text, Instant::now()) {
                    Ok(published) => {
                        for change in published.epoch_changes {
                            self.on_epoch_change(change);
                        }
                        self.on_live(published.message);
                    }
                    Err(err) => refuse(&member.session, &err),
                }
            }
            Broker::Redis(redis) => {
                let published = redis.publish(&member.room, &member.name, &text);
                let sender = member.session.clone();
                self.publishing += 1;
                ctx.spawn(
                    async move {
                        if let Err(err) = published.await {
                            refuse(&sender, &err);
                        }
                        drop(in_flight);
                    }
                    .into_actor(self)
                    .map(|(), act, ctx| {
                        act.publishing = act.publishing.saturating_sub(1);
                        act.finish_drain_if_done(ctx);
                    }),
                );
            }
        }
    }
}

/// Sends `deliveries` to one member (not enrolled yet) through its shard.
fn send_to_member(member: &Member, id: SessionId, deliveries: &[Delivery]) {
    if deliveries.is_empty() {
        return;
    }
    member.shard.do_send(Admit {
        room: member.room.clone(),
        id,
        frames: deliveries.iter().filter_map(delivery_json).collect(),
        enroll: false,
        replayed: false,
    });
}

/// Enrols joining member `id` of `room` in its shard's fan-out if its merge is live and not
/// ahead of the room's enrolled members ([`can_enroll`]); `frames` (its welcome and replay,
/// `replayed`) go to its shard first, in the same message. Not enrolled: the frames alone.
/// Returns whether it was enrolled (the caller takes it off `room.joining`).
fn enroll(
    room: &mut Room,
    id: SessionId,
    member: &mut Member,
    frames: Vec<ByteString>,
    replayed: bool,
) -> bool {
    let enrollable = member
        .joining
        .as_ref()
        .is_some_and(|merge| can_enroll(room.line.as_ref(), merge));
    if enrollable {
        if room.line.is_none() {
            if let Some((epoch, seq)) = member
                .joining
                .as_ref()
                .and_then(ResumeMerge::last_delivered)
            {
                room.line = Some(ResumeMerge::live_at(epoch.clone(), seq));
            }
        }
        member.joining = None;
        *room.shards.entry(member.shard.clone()).or_default() += 1;
    }
    if enrollable || !frames.is_empty() {
        member.shard.do_send(Admit {
            room: member.room.clone(),
            id,
            frames,
            enroll: enrollable,
            replayed,
        });
    }
    enrollable
}

/// Sends `deliveries` to every shard with enrolled members of `room` (`replayed`: a
/// catch-up's missed messages, not counted against the outbound queue's limit).
fn fan_out(room: &Room, room_name: &Arc<str>, deliveries: &[Delivery], replayed: bool) {
    for delivery in deliveries {
        let Some(text) = delivery_json(delivery) else {
            continue;
        };
        for shard in room.shards.keys() {
            shard.do_send(Deliver {
                room: room_name.clone(),
                text: text.clone(),
                replayed,
            });
        }
    }
}

/// Tells `session` its message was not accepted and reached nobody.
fn refuse(session: &SessionHandle, err: &BrokerError) {
    let text = match err {
        BrokerError::Interrupted => {
            "the broker connection broke while sending: the message may not have been sent"
        }
        BrokerError::Encode(_) => "the message could not be encoded",
        _ => "the broker is unavailable: the message was not sent",
    };
    debug!("session={}: message refused: {err}", session.id());
    metrics().dropped(DropReason::BrokerUnavailable, 1);
    let frame = ErrorFrame {
        kind: "error",
        code: "unavailable",
        text,
    };
    if let Some(json) = to_json(&frame) {
        session.deliver(json);
    }
}

/// A `going_away` reconnect delay drawn uniformly from 0 to `spread` (`None`: no `going_away`).
fn reconnect_delay(spread: Option<Duration>) -> Option<Duration> {
    spread.map(|spread| {
        let millis = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    })
}

/// Tells one session to shut down, after a `going_away` with a delay drawn from `spread`.
fn shut_down(session: &SessionHandle, status: &Option<CloseStatus>, spread: Option<Duration>) {
    match reconnect_delay(spread) {
        Some(delay) => session.shutdown_going_away(status.clone(), delay),
        None => session.shutdown(status.clone()),
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(events) = self.events.take() {
            ctx.add_stream(events);
        }
        if matches!(self.broker, Broker::Local(_)) {
            ctx.run_interval(SWEEP_INTERVAL, |act, _| {
                let Supervisor { broker, rooms, .. } = act;
                if let Broker::Local(local) = broker {
                    let forgotten = local.sweep(Instant::now(), |room| rooms.contains_key(room));
                    if forgotten > 0 {
                        debug!("history: {forgotten} idle rooms forgotten");
                    }
                }
            });
        }
    }
}

impl StreamHandler<BrokerEvent> for Supervisor {
    fn handle(&mut self, event: BrokerEvent, ctx: &mut Self::Context) {
        match event {
            BrokerEvent::Message(message) => self.on_live(message),
            BrokerEvent::EpochChanged(change) => self.on_epoch_change(change),
            BrokerEvent::Health(BrokerHealth::Up) => self.catch_up(ctx),
            BrokerEvent::Health(BrokerHealth::Down) => debug!("supervisor: broker down"),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The broker's tasks ended (the process is stopping): keep serving the drain.
        debug!("supervisor: broker event stream ended");
    }
}

impl Handler<Join> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) {
        let id = msg.session.id();
        if let Some(drain) = &self.drain {
            // The upgrade raced the signal: close it like the others.
            debug!("session={id} joined during the drain");
            shut_down(&msg.session, &drain.status, drain.reconnect_spread);
        }
        let room_name: Arc<str> = match self.rooms.get_key_value(msg.room.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(msg.room.as_str()),
        };
        let shard = self.intern_shard(msg.shard);
        let room = self.rooms.entry(room_name.clone()).or_default();
        room.members += 1;
        room.joining.insert(id);
        self.members.insert(
            id,
            Member {
                session: msg.session,
                room: room_name.clone(),
                name: msg.name,
                shard,
                joining: Some(ResumeMerge::new(MAX_JOIN_BUFFER)),
            },
        );
        let asked = msg.resume.is_some();
        match &mut self.broker {
            Broker::Local(local) => {
                let snapshot = local.snapshot(&room_name, msg.resume.as_ref(), Instant::now());
                self.on_snapshot(id, asked, Ok(snapshot));
            }
            Broker::Redis(redis) => {
                // SUBSCRIBE is sent now, before any later unsubscribe of this room; the
                // snapshot is read once Redis confirmed it, so that no message falls between.
                let subscribed = redis.subscribe(&room_name);
                let redis = redis.clone();
                let resume = msg.resume;
                ctx.spawn(
                    async move {
                        subscribed.await?;
                        redis.snapshot(&room_name, resume).await
                    }
                    .into_actor(self)
                    .map(move |snapshot, act, _| act.on_snapshot(id, asked, snapshot)),
                );
            }
        }
    }
}

/// Items grouped by shard. There is one shard per worker thread, so a list does; and an
/// actor address is no hash key for clippy (interior mutability, though it hashes a pointer).
struct PerShard<S, T>(Vec<(S, Vec<T>)>);

impl<S, T> Default for PerShard<S, T> {
    fn default() -> Self {
        PerShard(Vec::new())
    }
}

impl<S: PartialEq, T> PerShard<S, T> {
    fn add(&mut self, shard: S, item: T) {
        match self.0.iter_mut().find(|(known, _)| *known == shard) {
            Some((_, items)) => items.push(item),
            None => self.0.push((shard, vec![item])),
        }
    }
}

/// Per shard, the `(room, id)` of members that left and must be removed from its fan-out.
type Removals = PerShard<Arc<Addr<Shard>>, (Arc<str>, SessionId)>;

impl Supervisor {
    /// Forgets a session that ended; its shard's removal is added to `removals`.
    fn leave(&mut self, msg: Leave, removals: &mut Removals) {
        let Some(member) = self.members.remove(&msg.id) else {
            return;
        };
        if let Broker::Redis(redis) = &self.broker {
            redis.unsubscribe(&member.room);
        }
        if let Some(room) = self.rooms.get_mut(&member.room) {
            room.members = room.members.saturating_sub(1);
            if member.joining.is_some() {
                room.joining.remove(&msg.id);
            } else {
                if let Some(count) = room.shards.get_mut(&member.shard) {
                    *count -= 1;
                    if *count == 0 {
                        room.shards.remove(&member.shard);
                    }
                }
                removals.add(member.shard, (member.room.clone(), msg.id));
            }
            if room.members == 0 {
                self.rooms.remove(&member.room);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            if drain.reply.is_some() {
                drain.report.count(&msg.end);
            }
        }
    }
}

/// One [`Remove`] per shard: a drain that ends 10,000 sessions crosses threads once per
/// batch of leaves, not once per session.
fn send_removals(removals: Removals) {
    for (shard, members) in removals.0 {
        shard.do_send(Remove { members });
    }
}

impl Handler<Leave> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let mut removals = Removals::default();
        self.leave(msg, &mut removals);
        send_removals(removals);
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<LeaveBatch> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: LeaveBatch, ctx: &mut Self::Context) {
        let mut removals = Removals::default();
        for leave in msg.leaves {
            self.leave(leave, &mut removals);
        }
        send_removals(removals);
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<Broadcast> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, ctx: &mut Self::Context) {
        self.publish(msg.from, msg.text, msg.in_flight, ctx);
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
            act.abort_remaining(ctx);
        });
        self.drain = Some(DrainState {
            started: Instant::now(),
            status: plan.status.clone(),
            reconnect_spread: plan.reconnect_spread,
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
        if self
            .drain
            .as_ref()
            .is_some_and(|drain| drain.reply.is_some())
        {
            // The drain's report counts them, and answers once they are gone.
            self.abort_remaining(ctx);
            return;
        }
        for member in self.members.values() {
            member.session.abort();
        }
        if self.members.is_empty() {
            ctx.stop();
        }
    }
}

/// How long aborted sessions have to report their end before the supervisor forgets them.
const ABORT_GRACE: Duration = Duration::from_millis(500);

impl Supervisor {
    /// Aborts every session still registered, for the drain's deadline or a second signal.
    /// Aborted sessions leave at once, each counted in the drain's report; one that cannot (its
    /// thread is gone) is dropped from the registry after [`ABORT_GRACE`], counted aborted,
    /// and the drain answers.
    fn abort_remaining(&mut self, ctx: &mut Context<Self>) {
        for member in self.members.values() {
            member.session.abort();
        }
        ctx.run_later(ABORT_GRACE, |act, ctx| {
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
            if act.publishing > 0 {
                warn!(
                    "drain: {} messages still unanswered by the broker at the deadline",
                    act.publishing
                );
                act.publishing = 0;
            }
            act.finish_drain_if_done(ctx);
        });
    }
}
