//! The supervisor actor: the registry of sessions, the rooms with members on this node and
//! their fan-out, and the drain. It routes; the decisions are elsewhere.
//!
//! Sessions [`Join`] and [`Leave`]; a [`Broadcast`] goes to the broker
//! ([`crate::broker::Broker`]), which gives it the room's next `seq` and records it in the
//! history. Every message of a room, as the broker hands it back (at once from the local
//! broker, as a live event from Redis), goes to the room's pure decisions
//! ([`super::room::Room`]: who is enrolled, what a joining member is sent, the
//! catch-up after a broker reconnect), and the supervisor carries out the actions they return:
//! a frame serialized once, one shard message per worker thread with members in the room
//! ([`super::fanout`]), sender included, in one order for all.
//!
//! On [`Drain`] every session is told to shut down (in batches if configured,
//! [`super::drain`]), after a `going_away` that suggests a reconnect delay; each chooses
//! its own close mode and reports its end through [`Leave`]; sessions still open at the
//! deadline are aborted, and the answer is a [`DrainReport`]. It must not touch sockets or
//! close semantics, nor decide what a room member is sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    ResponseFuture, SpawnHandle, StreamHandler, WrapFuture,
};
use bytestring::ByteString;
use futures::channel::oneshot;
use log::{debug, info, warn};

use crate::broker::local::HistoryLimits;
use crate::broker::{
    Broker, BrokerError, BrokerEvent, BrokerHealth, JoinSnapshot, LocalBroker, Pending,
    ResumeRequest, MAINTENANCE_INTERVAL,
};
use crate::close::CloseStatus;
use crate::connection::session::{SessionEnd, SessionHandle, SessionId};
use crate::connection::transport::InFlightToken;
use crate::metrics::{metrics, DropReason};
use crate::protocol::{error_json, Welcome};
use crate::rooms::drain::{batch_schedule, DrainPlan};
// Where it was before 0.2 (see CHANGELOG.md).
#[doc(hidden)]
pub use crate::rooms::drain::DrainReport;
use crate::rooms::fanout::{Admit, Deliver, PerShard, Removals, Remove, Shard, ShutDown};
use crate::rooms::resume::Delivery;
use crate::rooms::room::{Action, JoinAnswer, Room, MAX_JOIN_BUFFER};

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
    /// The fan-out shard of the session's thread ([`super::fanout::local_shard`], called on
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

/// Sessions ended: [`Leave`] for each, sent together (see [`super::handler::ChatHandler`]).
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

/// A fan-out shard's address, shared by the members of its thread
/// ([`Supervisor::intern_shard`]): an `Addr` clone per member would allocate its own sender
/// state.
type ShardRef = Arc<Addr<Shard>>;

/// A registered session.
struct Member {
    session: SessionHandle,
    room: Arc<str>,
    name: String,
    shard: ShardRef,
}

struct DrainState {
    started: Instant,
    status: Option<CloseStatus>,
    reconnect_spread: Option<Duration>,
    report: DrainReport,
    reply: Option<oneshot::Sender<DrainReport>>,
    deadline: Option<SpawnHandle>,
}

/// The supervisor actor. One per server.
pub struct Supervisor {
    members: HashMap<SessionId, Member>,
    rooms: HashMap<Arc<str>, Room<ShardRef>>,
    drain: Option<DrainState>,
    broker: Box<dyn Broker>,
    /// Scratch space for one input's actions (no allocation per message).
    actions: Vec<Action<ShardRef>>,
    /// Scratch space for the events a broker call produced at once.
    ready: Vec<BrokerEvent>,
    /// Members that left, per shard, not yet removed from their shards' fan-out.
    removals: Removals,
    /// The shards of the members' threads, shared by their members.
    shards: Vec<ShardRef>,
    /// Catch-ups started so far.
    catch_ups: u64,
    /// Messages handed to a broker that answers later, not answered yet.
    publishing: usize,
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

/// The `welcome` frame of `member` for `answer`.
fn welcome_json(member: &Member, answer: &JoinAnswer) -> Option<ByteString> {
    let welcome = Welcome::new(
        &member.room,
        &member.name,
        answer.epoch.as_str(),
        answer.seq,
    )
    .resumed(answer.resumed, answer.missed);
    match welcome.to_json() {
        Ok(json) => Some(json),
        Err(err) => {
            log::error!("serializing a welcome failed: {err}");
            None
        }
    }
}

/// The close status of a session whose join could not finish: its client retries later.
fn try_again_later() -> Option<CloseStatus> {
    CloseStatus::new(1013, "try again later").ok()
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
        Supervisor::with_broker(Box::new(
            LocalBroker::new(limits).with_room_overhead(crate::broker::local::ROOM_OVERHEAD_BYTES),
        ))
    }

    /// A supervisor whose rooms go through `broker` ([`crate::broker::from_config`] makes
    /// the one a config asks for).
    pub fn with_broker(broker: Box<dyn Broker>) -> Self {
        Supervisor {
            members: HashMap::new(),
            rooms: HashMap::new(),
            drain: None,
            broker,
            actions: Vec::new(),
            ready: Vec::new(),
            removals: Removals::default(),
            shards: Vec::new(),
            catch_ups: 0,
            publishing: 0,
        }
    }

    /// The shared address of `shard` (one per worker thread); forgets shards nobody uses
    /// any more (a worker thread that was replaced).
    fn intern_shard(&mut self, shard: Addr<Shard>) -> ShardRef {
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

    /// Calls `then` with a broker's answer: now if it has one, else when it comes.
    fn when_answered<T: 'static>(
        &mut self,
        pending: Pending<T>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Result<T, BrokerError>, &mut Context<Self>) + 'static,
    ) {
        match pending {
            Pending::Ready(answer) => then(self, answer, ctx),
            Pending::Later(answer) => {
                ctx.spawn(
                    answer
                        .into_actor(self)
                        .map(move |answer, act, ctx| then(act, answer, ctx)),
                );
            }
        }
    }

    /// Handles the events the last broker call produced at once (the local broker's).
    fn take_ready_events(&mut self, ctx: &mut Context<Self>) {
        let mut ready = std::mem::take(&mut self.ready);
        self.broker.ready_events(&mut ready);
        for event in ready.drain(..) {
            self.on_event(event, ctx);
        }
        self.ready = ready;
    }

    /// A broker event: a room's message or epoch change to the room's decisions; the broker
    /// back up: every room catches up.
    fn on_event(&mut self, event: BrokerEvent, ctx: &mut Context<Self>) {
        match event {
            BrokerEvent::Message(message) => {
                let room_name = message.room.clone();
                if let Some(room) = self.rooms.get_mut(&room_name) {
                    room.live(message, &mut self.actions);
                    self.carry_out(&room_name, ctx);
                }
            }
            BrokerEvent::EpochChanged(change) => {
                if let Some(room) = self.rooms.get_mut(&change.room) {
                    room.epoch_changed(&change, &mut self.actions);
                    self.carry_out(&change.room, ctx);
                }
            }
            BrokerEvent::Health(BrokerHealth::Up) => self.catch_up(ctx),
            BrokerEvent::Health(BrokerHealth::Down) => debug!("supervisor: broker down"),
        }
    }

    /// The broker is (back) up: messages other nodes published while this node was cut off
    /// are in the rooms' history, not on the live stream; every room reads its history after
    /// the last seq its members were given (the subscription is already renewed).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room_name in rooms {
            if let Some(room) = self.rooms.get_mut(&room_name) {
                self.catch_ups += 1;
                room.reconnected(self.catch_ups, &mut self.actions);
                self.carry_out(&room_name, ctx);
            }
        }
    }

    /// A joining member's snapshot (or why there is none), to its room's decisions.
    fn on_snapshot(
        &mut self,
        id: SessionId,
        room_name: Arc<str>,
        asked: bool,
        snapshot: Result<JoinSnapshot, BrokerError>,
        ctx: &mut Context<Self>,
    ) {
        if let (Ok(snapshot), true) = (&snapshot, self.members.contains_key(&id)) {
            if asked {
                metrics().resume(snapshot.missed());
            }
            debug!(
                "session={id} joined room {room_name} at {}:{} ({:?} missed)",
                snapshot.epoch,
                snapshot.seq,
                snapshot.missed()
            );
        }
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.snapshot(id, asked, snapshot, &mut self.actions);
            self.carry_out(&room_name, ctx);
        }
    }

    /// Carries out the actions of `room_name`'s decisions, in order.
    fn carry_out(&mut self, room_name: &Arc<str>, ctx: &mut Context<Self>) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Admit {
                    member,
                    shard,
                    answer,
                    deliveries,
                    enroll,
                    replayed,
                } => {
                    let welcome = answer.as_ref().and_then(|answer| {
                        self.members
                            .get(&member)
                            .and_then(|registered| welcome_json(registered, answer))
                    });
                    let frames = welcome
                        .into_iter()
                        .chain(deliveries.iter().filter_map(delivery_json))
                        .collect();
                    shard.do_send(Admit {
                        room: room_name.clone(),
                        id: member,
                        frames,
                        enroll,
                        replayed,
                    });
                }
                Action::FanOut { delivery, replayed } => {
                    let (Some(room), Some(text)) =
                        (self.rooms.get(room_name), delivery_json(&delivery))
                    else {
                        continue;
                    };
                    for shard in room.shards() {
                        shard.do_send(Deliver {
                            room: room_name.clone(),
                            text: text.clone(),
                            replayed,
                        });
                    }
                }
                Action::Retry { member, why } => {
                    if let Some(registered) = self.members.get(&member) {
                        warn!(
                            "session={member}: joining room {room_name} failed: {why}; closing \
                             it 1013"
                        );
                        registered.session.shutdown(try_again_later());
                    }
                }
                Action::RetryEnrolled { members, why } => {
                    warn!(
                        "room {room_name}: {why}; closing its {} sessions 1013 so that they \
                         resume",
                        members.len()
                    );
                    for member in members {
                        if let Some(registered) = self.members.get(&member) {
                            registered.session.shutdown(try_again_later());
                        }
                    }
                }
                Action::Remove { member, shard } => {
                    self.removals.add(shard, (room_name.clone(), member));
                }
                Action::ReadSince { request, attempt } => {
                    self.read_since(room_name.clone(), request, attempt, ctx);
                }
            }
        }
        self.actions = actions;
    }

    /// Reads `room_name`'s history for catch-up `attempt` and hands the answer to the room.
    fn read_since(
        &mut self,
        room_name: Arc<str>,
        request: ResumeRequest,
        attempt: u64,
        ctx: &mut Context<Self>,
    ) {
        let pending = self.broker.read_since(&room_name, request);
        self.when_answered(pending, ctx, move |act, snapshot, ctx| {
            if let Some(missed) = snapshot
                .as_ref()
                .ok()
                .and_then(JoinSnapshot::missed)
                .filter(|missed| *missed > 0)
            {
                info!(
                    "room {room_name}: caught up {missed} messages published while the broker \
                     was unreachable"
                );
            }
            if let Some(room) = act.rooms.get_mut(&room_name) {
                room.caught_up(attempt, snapshot, &mut act.actions);
                act.carry_out(&room_name, ctx);
            }
        });
    }

    /// Sends the removals of members that left to their shards: one [`Remove`] per shard, so
    /// that a drain that ends 10,000 sessions crosses threads once per batch of leaves, not
    /// once per session.
    fn send_removals(&mut self) {
        for (shard, members) in std::mem::take(&mut self.removals).0 {
            shard.do_send(Remove { members });
        }
    }

    /// A message from `from` to its room, through the broker; `in_flight` is dropped once the
    /// message is done with (published, or refused). A refusal reaches the sender as an
    /// `error` frame.
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
        let sender = member.session.clone();
        let pending = self.broker.publish(&member.room, &member.name, &text);
        match pending {
            Pending::Ready(answer) => {
                if let Err(err) = answer {
                    refuse(&sender, &err);
                }
                drop(in_flight);
                self.take_ready_events(ctx);
            }
            Pending::Later(answer) => {
                self.publishing += 1;
                ctx.spawn(
                    async move {
                        if let Err(err) = answer.await {
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

    /// Forgets a session that ended; its room's decisions say what else to undo.
    fn leave(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        let Some(member) = self.members.remove(&msg.id) else {
            return;
        };
        self.broker.leave(&member.room);
        if let Some(room) = self.rooms.get_mut(&member.room) {
            room.leave(msg.id, &mut self.actions);
            self.carry_out(&member.room, ctx);
            if self.rooms.get(&member.room).is_some_and(Room::is_empty) {
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
    match error_json("unavailable", text) {
        Ok(json) => session.deliver(json),
        Err(err) => log::error!("serializing an error frame failed: {err}"),
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
        if let Some(events) = self.broker.take_event_stream() {
            ctx.add_stream(events);
        }
        ctx.run_interval(MAINTENANCE_INTERVAL, |act, _| act.broker.maintain());
    }
}

impl StreamHandler<BrokerEvent> for Supervisor {
    fn handle(&mut self, event: BrokerEvent, ctx: &mut Self::Context) {
        self.on_event(event, ctx);
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
        self.rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room::new(MAX_JOIN_BUFFER))
            .join(id, shard.clone());
        self.members.insert(
            id,
            Member {
                session: msg.session,
                room: room_name.clone(),
                name: msg.name,
                shard,
            },
        );
        let asked = msg.resume.is_some();
        let pending = self.broker.join(&room_name, msg.resume);
        self.when_answered(pending, ctx, move |act, snapshot, ctx| {
            act.on_snapshot(id, room_name, asked, snapshot, ctx)
        });
    }
}

impl Handler<Leave> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.leave(msg, ctx);
        self.send_removals();
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<LeaveBatch> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: LeaveBatch, ctx: &mut Self::Context) {
        for leave in msg.leaves {
            self.leave(leave, ctx);
        }
        self.send_removals();
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
