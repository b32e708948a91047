//! The supervisor actor: the registry of sessions, the rooms with members on this node and
//! their fan-out, and the drain. It routes; the decisions are elsewhere.
//!
//! A v1 session [`Join`]s its one room at once; a `wsgrace.v2` session [`Connect`]s, then
//! joins and leaves rooms ([`JoinRoom`], [`LeaveRoom`]) while connected. Their messages
//! ([`Broadcast`], [`Publish`], [`SendSignal`]) go to the broker ([`crate::broker::Broker`]),
//! which gives a message the room's next `seq` (once per dedupe key) and records it in the
//! history. Every message of a room, as the broker hands it back (at once from the local
//! broker, as a live event from Redis), goes to the room's pure decisions
//! ([`crate::rooms::room::Room`]: who is enrolled, what a joining member is sent, the catch-up
//! after a broker reconnect), and the supervisor carries out the actions they return: a frame
//! serialized once, one shard message per worker thread with members in the room
//! ([`crate::rooms::fanout`]), sender included (its own copy of a v2 message carries its id),
//! in one order for all. A session ends with one [`Leave`], whatever its rooms.
//!
//! `messages.rs` holds the mailbox, `many_rooms.rs` the v2 requests, `publishing.rs` a message's
//! way to the broker and the answer to its sender, `draining.rs` the drain
//! ([`Drain`], [`AbortAll`]). It must not touch sockets or close semantics, nor decide what a
//! room member is sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler, WrapFuture,
};
use bytestring::ByteString;
use log::{debug, info, warn};

use crate::broker::local::HistoryLimits;
use crate::broker::{
    Broker, BrokerError, BrokerEvent, BrokerHealth, JoinRequest, JoinSnapshot, LocalBroker, Origin,
    Outgoing, Pending, Publication, ResumeRequest, SentBy, MAINTENANCE_INTERVAL,
};
use crate::close::CloseStatus;
use crate::connection::session::{SessionHandle, SessionId};
use crate::connection::transport::InFlightToken;
use crate::metrics::{metrics, DropReason};
use crate::protocol::v2::{ack_json, with_id, ErrorCode, Joined, Refusal};
use crate::protocol::{error_json, Welcome};
use crate::rooms::fanout::{Admit, AnswerFrame, Deliver, Exception, Removals, Remove, Shard};
use crate::rooms::resume::Delivery;
use crate::rooms::room::{Action, JoinAnswer, Room, MAX_JOIN_BUFFER};

mod api;
mod draining;
mod many_rooms;
mod messages;
mod presence;
mod presence_lists;
mod publishing;

use draining::{shut_down, DrainState};
// Where it was before 0.2 (see CHANGELOG.md).
#[doc(hidden)]
pub use crate::rooms::drain::DrainReport;
pub use api::{ApiDisconnect, ApiHistory, ApiPresence, ApiPublish, ApiPublished, Reply};
pub use messages::{
    AbortAll, AskPresence, Broadcast, Connect, Drain, Join, JoinRoom, Leave, LeaveBatch, LeaveRoom,
    Publish, SendSignal,
};

/// A fan-out shard's address, shared by the members of its thread
/// ([`Supervisor::intern_shard`]): an `Addr` clone per member would allocate its own sender
/// state.
type ShardRef = Arc<Addr<Shard>>;

/// A registered session.
struct Member {
    session: SessionHandle,
    name: String,
    shard: ShardRef,
    /// The rooms it is in (a v1 session: exactly one), each with how its join is answered.
    rooms: Vec<Membership>,
    /// How many rooms it may be in at once (v2: `session.max_rooms`).
    max_rooms: usize,
    /// The `going_away` delay the drain gave it, if it did: it stays present that long (and
    /// the grace) after its session ends.
    going_away: Option<Duration>,
}

/// One room of a session.
struct Membership {
    room: Arc<str>,
    answer: Answer,
    /// Its join was answered: it counts in the room's presence.
    present: bool,
}

/// How a session is told about its room: the protocol it speaks.
enum Answer {
    /// v1: a `welcome` frame; a join that cannot finish closes the session 1013.
    Welcome,
    /// v2: a `joined` frame answering the join's `ref`; a join the broker cannot answer gets
    /// an `error` `unavailable`, the session stays.
    Joined { reference: Option<String> },
}

impl Member {
    fn membership(&self, room: &str) -> Option<&Membership> {
        self.rooms
            .iter()
            .find(|membership| &*membership.room == room)
    }
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
    /// `presence.grace_ms`.
    presence_grace: Duration,
    /// Rooms to sweep when their kept members' time runs out.
    sweeps: presence::Sweeps,
    /// Rooms' presence lists for members that were behind on reading, until the room's next
    /// change.
    presence_lists: presence_lists::Lists,
}

/// The frame of one delivery; `own` is the session it goes to, whose own copy of a v2
/// message carries its id.
fn delivery_json(delivery: &Delivery, own: Option<Origin>) -> Option<ByteString> {
    match delivery {
        Delivery::Message(message) => Some(match &message.sent_by {
            Some(sent_by) if Some(sent_by.origin) == own => with_id(&message.json, &sent_by.id),
            _ => message.json.clone(),
        }),
        Delivery::Epoch(change) => match change.to_json() {
            Ok(json) => Some(json),
            Err(err) => {
                log::error!("serializing an epoch frame failed: {err}");
                None
            }
        },
    }
}

/// The first frame of `member` in `room` for `answer`: `welcome` (v1) or `joined` (v2).
fn answer_json(member: &Member, room: &str, answer: &JoinAnswer) -> Option<ByteString> {
    let rendered = match member.membership(room).map(|membership| &membership.answer) {
        Some(Answer::Welcome) => {
            Welcome::new(room, &member.name, answer.epoch.as_str(), answer.seq)
                .resumed(answer.resumed, answer.missed)
                .to_json()
        }
        Some(Answer::Joined { reference }) => Joined::new(room, answer.epoch.as_str(), answer.seq)
            .resumed(answer.resumed, answer.missed)
            .answering(reference.as_deref())
            .to_json(),
        None => return None,
    };
    rendered
        .map_err(|err| log::error!("serializing a join answer failed: {err}"))
        .ok()
}

/// The close status of a session whose join could not finish: its client retries later.
fn try_again_later() -> Option<CloseStatus> {
    CloseStatus::new(1013, "try again later").ok()
}

/// Sends `frame` to `session` (an answer of its own, not a room's message) through its
/// `shard`: in order with the room messages and the drain's `ShutDown` sent there before and
/// after it, so that an answer given before a drain goes out before its `going_away`.
fn tell(
    shard: &ShardRef,
    session: &SessionHandle,
    frame: Result<ByteString, impl std::fmt::Display>,
) {
    match frame {
        Ok(text) => shard.do_send(AnswerFrame {
            session: session.clone(),
            text,
        }),
        Err(err) => log::error!("serializing an answer failed: {err}"),
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
            presence_grace: Duration::from_millis(
                crate::config::PresenceSettings::default().grace_ms,
            ),
            sweeps: presence::Sweeps::default(),
            presence_lists: presence_lists::Lists::default(),
        }
    }

    /// The same supervisor, keeping a member that went away without leaving present for
    /// `grace` (`presence.grace_ms`; after its `going_away` delay, for a drained one).
    pub fn with_presence_grace(mut self, grace: Duration) -> Self {
        self.presence_grace = grace;
        self
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

    /// Registers a session that may be in `max_rooms` rooms; one that arrives during the
    /// drain is told to close like the others.
    fn register(
        &mut self,
        session: SessionHandle,
        name: String,
        shard: Addr<Shard>,
        max_rooms: usize,
    ) {
        let id = session.id();
        let mut going_away = None;
        if let Some(drain) = &self.drain {
            // The upgrade raced the signal: close it like the others.
            debug!("session={id} joined during the drain");
            going_away = shut_down(&session, &drain.status, drain.reconnect_spread);
        }
        let shard = self.intern_shard(shard);
        self.members.insert(
            id,
            Member {
                session,
                name,
                shard,
                rooms: Vec::new(),
                max_rooms,
                going_away,
            },
        );
    }

    /// Session `id` joins `room`, answered as `answer` says; the broker's snapshot follows.
    fn join(
        &mut self,
        id: SessionId,
        room: &str,
        request: JoinRequest,
        answer: Answer,
        ctx: &mut Context<Self>,
    ) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        if member.membership(room).is_some() {
            return;
        }
        let room_name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        member.rooms.push(Membership {
            room: room_name.clone(),
            answer,
            present: false,
        });
        metrics().room_joins_open.inc();
        self.rooms
            .entry(room_name.clone())
            .or_insert_with(|| {
                metrics().rooms_open.inc();
                Room::new(MAX_JOIN_BUFFER)
            })
            .join(id, member.shard.clone());
        let asked = request.resume.is_some();
        let pending = self.broker.join(&room_name, request);
        self.when_answered(pending, ctx, move |act, snapshot, ctx| {
            act.on_snapshot(id, room_name, asked, snapshot, ctx)
        });
    }

    /// Session `id` is no longer in `room` (it left it, or ended): the broker and the room's
    /// decisions are told; its shard's removal waits in [`Self::removals`].
    fn leave_room(&mut self, id: SessionId, room: &Arc<str>, ctx: &mut Context<Self>) {
        self.broker.leave(room);
        metrics().room_joins_open.dec();
        if let Some(decisions) = self.rooms.get_mut(room) {
            decisions.leave(id, &mut self.actions);
            self.carry_out(room, ctx);
            if self.rooms.get(room).is_some_and(Room::is_empty) {
                self.rooms.remove(room);
                self.presence_lists.remove(room);
                metrics().rooms_open.dec();
            }
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

    /// A broker event: a room's message or epoch change to the room's decisions, a signal to
    /// the room's members; the broker back up: every room catches up.
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
            BrokerEvent::Signal(signal) => {
                let Some(room) = self.rooms.get(&signal.room) else {
                    return;
                };
                let except = (signal.origin.node == self.broker.node()).then_some(Exception {
                    session: signal.origin.session,
                    frame: None,
                });
                for shard in room.shards() {
                    shard.do_send(Deliver {
                        room: signal.room.clone(),
                        text: signal.json.clone(),
                        replayed: false,
                        except: except.clone(),
                        presence: None,
                    });
                }
            }
            BrokerEvent::Presence(event) => self.on_presence(event, ctx),
            BrokerEvent::Control(control) => self.on_control(control),
            BrokerEvent::Health(BrokerHealth::Up) => {
                self.catch_up(ctx);
                self.restore_presence(ctx);
            }
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
        let answered = snapshot.is_ok() && self.members.contains_key(&id);
        if let (Ok(snapshot), true) = (&snapshot, answered) {
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
        if answered {
            self.present(id, &room_name, ctx);
        }
    }

    /// Carries out the actions of `room_name`'s decisions, in order.
    fn carry_out(&mut self, room_name: &Arc<str>, ctx: &mut Context<Self>) {
        let node = self.broker.node();
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
                    let first = answer.as_ref().and_then(|answer| {
                        self.members
                            .get(&member)
                            .and_then(|registered| answer_json(registered, room_name, answer))
                    });
                    let own = Some(Origin {
                        node,
                        session: member,
                    });
                    let frames = first
                        .into_iter()
                        .chain(deliveries.iter().filter_map(|d| delivery_json(d, own)))
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
                        (self.rooms.get(room_name), delivery_json(&delivery, None))
                    else {
                        continue;
                    };
                    let except = match &delivery {
                        Delivery::Message(message) => message
                            .sent_by
                            .as_ref()
                            .filter(|sent_by| sent_by.origin.node == node)
                            .map(|sent_by| Exception {
                                session: sent_by.origin.session,
                                frame: Some(with_id(&text, &sent_by.id)),
                            }),
                        Delivery::Epoch(_) => None,
                    };
                    for shard in room.shards() {
                        shard.do_send(Deliver {
                            room: room_name.clone(),
                            text: text.clone(),
                            replayed,
                            except: except.clone(),
                            presence: None,
                        });
                    }
                }
                Action::Unanswered { member, why } => self.unanswered(member, room_name, &why, ctx),
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

    /// `member`'s join of `room_name` could not be answered (the broker could not give its
    /// snapshot): a v1 session closes 1013 so that its client retries; a v2 session is told
    /// `unavailable` and is not in the room.
    fn unanswered(
        &mut self,
        member: SessionId,
        room_name: &Arc<str>,
        why: &str,
        ctx: &mut Context<Self>,
    ) {
        let Some(registered) = self.members.get_mut(&member) else {
            return;
        };
        let Some(position) = registered
            .rooms
            .iter()
            .position(|membership| membership.room == *room_name)
        else {
            return;
        };
        match &registered.rooms[position].answer {
            Answer::Welcome => {
                warn!("session={member}: joining room {room_name} failed: {why}; closing it 1013");
                registered.session.shutdown(try_again_later());
            }
            Answer::Joined { reference } => {
                debug!("session={member}: joining room {room_name} failed: {why}");
                let refusal = Refusal::new(
                    ErrorCode::Unavailable,
                    "the broker is unavailable: the room was not joined; try again",
                )
                .about(Some(room_name), reference.as_deref());
                tell(&registered.shard, &registered.session, refusal.to_json());
                registered.rooms.remove(position);
                self.leave_room(member, room_name, ctx);
            }
        }
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

    /// Forgets a session that ended, and takes it out of every room it was in.
    fn leave(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        let Some(member) = self.members.remove(&msg.id) else {
            return;
        };
        let departure = presence::departure(&msg.end, member.going_away, self.presence_grace);
        for membership in &member.rooms {
            self.leave_room(msg.id, &membership.room, ctx);
            if membership.present {
                self.absent(msg.id, &member.name, &membership.room, departure, ctx);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            if drain.reply.is_some() {
                drain.report.count(&msg.end);
            }
        }
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
        self.register(msg.session, msg.name, msg.shard, 1);
        let request = JoinRequest {
            resume: msg.resume,
            last: 0,
        };
        self.join(id, &msg.room, request, Answer::Welcome, ctx);
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
