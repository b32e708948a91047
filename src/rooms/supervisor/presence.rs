//! The supervisor's part of presence: a member counts as present in a room once its join is
//! answered, and stops counting when it leaves the room or its session ends, at once or
//! after a time ([`departure`]); the broker keeps the book (who is present on every node)
//! and says when a name arrived or is gone ([`BrokerEvent::Presence`]), which goes to the
//! room's members here as `presence_join` / `presence_leave`. A v2 `presence` request is
//! answered from the broker. When the broker comes back after being unreachable, this node
//! tells it again who of its members is in each room.
//!
//! A member kept present is swept out of its room's book at its time; the times of all rooms
//! wait in one ordered list under one timer ([`Sweeps`]), not one timer each: an actor polls
//! every one of its timers each time it wakes, and a drain keeps thousands of members.
//!
//! The rules of who counts and when an event is due are the broker's
//! ([`crate::broker::presence`]); this file must not decide them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{AsyncContext, Context, Handler, SpawnHandle};
use bytestring::ByteString;
use log::debug;

use super::presence_lists::{Then, Wait};
use super::{tell, AskPresence, Supervisor};
use crate::broker::{Departure, Origin, PresenceChange, PresenceEvent, PresentName};
use crate::close::{CloseResult, Initiator};
use crate::connection::session::{SessionEnd, SessionId};
use crate::metrics::{metrics, KindLabels};
use crate::protocol::v2::{presence_change_json, presence_json, PresentMember};
use crate::rooms::fanout::{Deliver, Exception, PresenceList, ResyncPresence};

/// How long after a kept member's time the supervisor sweeps its room (the broker's clock
/// and this process's may differ by a little).
const SWEEP_MARGIN: Duration = Duration::from_millis(20);

/// When rooms are to be swept, earliest first, and the one timer armed for the earliest.
#[derive(Default)]
pub(super) struct Sweeps {
    due: BTreeSet<(Instant, Arc<str>)>,
    timer: Option<(Instant, SpawnHandle)>,
}

/// How a session that ended leaves the rooms it was in: a drained session (it was given a
/// `going_away` delay) stays present for that delay plus `grace`, so that its client can come
/// back on another node unseen; one that was cut off without a close handshake (a vanished
/// peer, a heartbeat or close timeout), or told to come back (1001 going away, 1011-1014, 3000
/// token expired), for `grace`; any other close (the client's own, 1000, a kick, a policy close) leaves at
/// once.
pub fn departure(end: &SessionEnd, going_away: Option<Duration>, grace: Duration) -> Departure {
    if let Some(delay) = going_away {
        return Departure::Keep(delay.saturating_add(grace));
    }
    let cut_off = matches!(
        end.record.result,
        CloseResult::Aborted | CloseResult::Timeout
    );
    let told_to_come_back = end.record.initiator == Initiator::Server
        && matches!(end.close_code, Some(1001 | 1011..=1014 | 3000));
    if cut_off || told_to_come_back {
        Departure::Keep(grace)
    } else {
        Departure::Now
    }
}

impl Supervisor {
    /// Session `id`'s join of `room` was answered: it counts as present there.
    pub(super) fn present(&mut self, id: SessionId, room: &Arc<str>, ctx: &mut Context<Self>) {
        let node = self.broker.node();
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let Some(membership) = member
            .rooms
            .iter_mut()
            .find(|membership| membership.room == *room)
        else {
            return;
        };
        if membership.present {
            return;
        }
        membership.present = true;
        metrics().presence_members.inc();
        let origin = Origin { node, session: id };
        self.broker.presence_join(room, &member.name, origin);
        self.take_ready_events(ctx);
    }

    /// Session `id` named `name`, present in `room`, is no longer in it, as `departure` says.
    pub(super) fn absent(
        &mut self,
        id: SessionId,
        name: &str,
        room: &Arc<str>,
        departure: Departure,
        ctx: &mut Context<Self>,
    ) {
        let origin = Origin {
            node: self.broker.node(),
            session: id,
        };
        metrics().presence_members.dec();
        self.broker.presence_leave(room, name, origin, departure);
        if let Departure::Keep(time) = departure {
            metrics().presence_kept.inc();
            let at = Instant::now() + time.saturating_add(SWEEP_MARGIN);
            self.sweeps.due.insert((at, room.clone()));
            self.arm_sweeps(ctx);
        }
        self.take_ready_events(ctx);
    }

    /// Makes the one sweep timer fire at the earliest time due, if it would not already.
    fn arm_sweeps(&mut self, ctx: &mut Context<Self>) {
        let Some(&(next, _)) = self.sweeps.due.first() else {
            return;
        };
        if let Some((armed, handle)) = self.sweeps.timer {
            if armed <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(wait, |act, ctx| {
            act.sweeps.timer = None;
            act.sweep_due(ctx);
        });
        self.sweeps.timer = Some((next, handle));
    }

    /// Sweeps every room with a kept member whose time has come (each room once), then waits
    /// for the next.
    fn sweep_due(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut rooms = Vec::new();
        while let Some((at, _)) = self.sweeps.due.first() {
            if *at > now {
                break;
            }
            if let Some((_, room)) = self.sweeps.due.pop_first() {
                rooms.push(room);
            }
        }
        rooms.sort_unstable();
        rooms.dedup();
        for room in &rooms {
            self.broker.presence_sweep(room);
        }
        self.take_ready_events(ctx);
        self.arm_sweeps(ctx);
    }

    /// A name arrived in a room with members here, or is gone: its members are told, but
    /// not the session whose join it was.
    pub(super) fn on_presence(&mut self, event: PresenceEvent, ctx: &mut Context<Self>) {
        let Some(room) = self.rooms.get(&event.room) else {
            return;
        };
        let node = self.broker.node();
        let (kind, name) = match &event.change {
            PresenceChange::Joined(name) => ("presence_join", name),
            PresenceChange::Left(name) => ("presence_leave", name),
        };
        let text = match presence_change_json(kind, &event.room, name) {
            Ok(text) => text,
            Err(err) => {
                self.presence_lists.changed(&event.room, None);
                log::error!("serializing a presence frame failed: {err}");
                return;
            }
        };
        let except = event
            .origin
            .filter(|origin| origin.node == node)
            .map(|origin| Exception {
                session: origin.session,
                frame: None,
            });
        self.presence_lists.changed(
            &event.room,
            Some((
                text.clone(),
                except.as_ref().map(|exception| exception.session),
            )),
        );
        let recipients = room.members().saturating_sub(usize::from(except.is_some()));
        if recipients == 0 {
            return;
        }
        metrics()
            .presence_events
            .get_or_create(&KindLabels { kind })
            .inc();
        let resync = ctx.address().recipient();
        for shard in room.shards() {
            shard.do_send(Deliver {
                room: event.room.clone(),
                text: text.clone(),
                replayed: false,
                except: except.clone(),
                presence: Some(resync.clone()),
            });
        }
    }

    /// The broker is back: it is told again who of this node's members is in each room (it
    /// may have lost it, or missed leaves while it was unreachable).
    pub(super) fn restore_presence(&mut self, ctx: &mut Context<Self>) {
        let mut rooms: BTreeMap<Arc<str>, BTreeMap<Arc<str>, u32>> = BTreeMap::new();
        for member in self.members.values() {
            let name: Arc<str> = Arc::from(member.name.as_str());
            for membership in member.rooms.iter().filter(|membership| membership.present) {
                *rooms
                    .entry(membership.room.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_insert(0) += 1;
            }
        }
        self.presence_lists.forget_all();
        debug!("presence: restoring {} rooms", rooms.len());
        for (room, names) in rooms {
            self.broker
                .presence_restore(&room, names.into_iter().collect());
        }
        self.take_ready_events(ctx);
    }
}

/// The broker's list of a room's present names, as the `presence` frame lists them.
fn listed(members: Vec<PresentName>) -> Vec<PresentMember> {
    members
        .into_iter()
        .map(|member| PresentMember {
            name: member.name.to_string(),
            connections: u64::from(member.connections),
        })
        .collect()
}

impl Handler<ResyncPresence> for Supervisor {
    type Result = ();

    /// A member that was behind on reading missed presence events of `rooms`: each room's
    /// list goes to it through its shard, after the events already sent there and before
    /// later ones (see the `presence_lists` module).
    fn handle(&mut self, msg: ResyncPresence, ctx: &mut Context<Self>) {
        for room in msg.rooms {
            if self.present_member(msg.session, &room).is_none() {
                continue;
            }
            match self.presence_lists.wait_for(&room, msg.session) {
                Wait::Ready(list) => self.send_list(msg.session, &room, list.as_ref(), &[]),
                Wait::Read(read) => self.read_list(room, read, ctx),
                Wait::Joined => {}
            }
        }
    }
}

impl Supervisor {
    /// Session `session`, if it counts as present in `room`.
    fn present_member(&self, session: SessionId, room: &str) -> Option<&super::Member> {
        self.members.get(&session).filter(|member| {
            member
                .membership(room)
                .is_some_and(|membership| membership.present)
        })
    }

    /// Reads `room`'s list (read number `read`) for the members waiting for it; what then is
    /// [`super::presence_lists::Lists::answered`]'s to say.
    fn read_list(&mut self, room: Arc<str>, read: u64, ctx: &mut Context<Self>) {
        let pending = self.broker.presence(&room);
        self.when_answered(pending, ctx, move |act, members, ctx| {
            act.take_ready_events(ctx);
            let list = match members {
                Ok(members) if act.broker.presence_limits().tells(members.len()) => Some(
                    presence_json(&room, &listed(members), None)
                        .map_err(|err| log::error!("serializing a presence list failed: {err}"))
                        .ok(),
                ),
                Ok(_) => Some(None),
                Err(err) => {
                    debug!("presence of room {room} unavailable: {err}");
                    None
                }
            };
            match act.presence_lists.answered(&room, read, list) {
                Then::Send {
                    list,
                    waiters,
                    events,
                } => {
                    for session in waiters {
                        act.send_list(session, &room, list.as_ref(), &events);
                    }
                }
                Then::ReadAgain(again) => {
                    metrics().presence_list_rereads.inc();
                    act.read_list(room, again, ctx);
                }
                Then::RetryAfter(ms) => {
                    ctx.run_later(Duration::from_millis(ms), move |act, ctx| {
                        if let Some(again) = act.presence_lists.retry(&room) {
                            act.read_list(room, again, ctx);
                        }
                    });
                }
                Then::Nothing => {}
            }
        });
    }

    /// Sends `list` (if any) to `session` through its shard, if it is still present in
    /// `room`, followed by `events` (but those not for it).
    fn send_list(
        &self,
        session: SessionId,
        room: &Arc<str>,
        list: Option<&ByteString>,
        events: &[(ByteString, Option<SessionId>)],
    ) {
        let Some(text) = list else {
            return;
        };
        let Some(member) = self.present_member(session, room) else {
            return;
        };
        let then = events
            .iter()
            .filter(|(_, except)| *except != Some(session))
            .map(|(text, _)| text.clone())
            .collect();
        member.shard.do_send(PresenceList {
            room: room.clone(),
            session,
            text: text.clone(),
            then,
        });
    }
}

impl Handler<AskPresence> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AskPresence, ctx: &mut Context<Self>) {
        let Some(room) = self.joined_room(msg.session, &msg.room, msg.reference.as_deref(), None)
        else {
            return;
        };
        let Some((shard, session)) = self
            .members
            .get(&msg.session)
            .map(|m| (m.shard.clone(), m.session.clone()))
        else {
            return;
        };
        let pending = self.broker.presence(&room);
        self.when_answered(pending, ctx, move |act, members, ctx| {
            act.take_ready_events(ctx);
            let reference = msg.reference.as_deref();
            match members {
                Ok(members) => {
                    tell(
                        &shard,
                        &session,
                        presence_json(&room, &listed(members), reference),
                    );
                }
                Err(err) => {
                    debug!("presence of room {room} unavailable: {err}");
                    let refusal = crate::protocol::v2::Refusal::new(
                        crate::protocol::v2::ErrorCode::Unavailable,
                        "the broker is unavailable: presence cannot be read now",
                    )
                    .about(Some(&room), reference);
                    tell(&shard, &session, refusal.to_json());
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::{CloseMode, CloseRecord, CloseState};

    fn end(initiator: Initiator, result: CloseResult, close_code: Option<u16>) -> SessionEnd {
        SessionEnd {
            state: CloseState::Closed,
            record: CloseRecord {
                initiator,
                mode: CloseMode::FireAndForget,
                result,
            },
            dropped_after_close: 0,
            delivered_after_close: 0,
            dropped_slow_consumer: 0,
            handshake: None,
            close_code,
        }
    }

    #[test]
    fn who_stays_present_and_for_how_long() {
        use CloseResult::*;
        use Initiator::*;
        let grace = Duration::from_secs(5);
        let keep = |ms| Departure::Keep(Duration::from_millis(ms));
        let drained = Some(Duration::from_millis(2_000));
        // (how it ended, the going_away it was given) → departure
        let cases = [
            (end(Server, Acked, Some(1001)), drained, keep(7_000)),
            (end(Server, Timeout, Some(1001)), drained, keep(7_000)),
            (end(Server, Aborted, None), drained, keep(7_000)),
            (end(Client, Aborted, None), None, keep(5_000)),
            (end(Server, Timeout, Some(1001)), None, keep(5_000)),
            (end(Server, Aborted, None), None, keep(5_000)),
            (end(Server, Acked, Some(1001)), None, keep(5_000)),
            (end(Server, Acked, Some(3000)), None, keep(5_000)),
            (end(Server, Acked, Some(1013)), None, keep(5_000)),
            (end(Server, Acked, Some(1000)), None, Departure::Now),
            (end(Server, Acked, Some(1008)), None, Departure::Now),
            (end(Server, Acked, Some(4001)), None, Departure::Now),
            (end(Server, Error, Some(1009)), None, Departure::Now),
            (end(Client, Acked, Some(1000)), None, Departure::Now),
            (end(Client, Acked, Some(1001)), None, Departure::Now),
            (end(Client, Acked, None), None, Departure::Now),
        ];
        for (ended, going_away, expected) in cases {
            assert_eq!(
                departure(&ended, going_away, grace),
                expected,
                "{ended:?} {going_away:?}"
            );
        }
    }
}
