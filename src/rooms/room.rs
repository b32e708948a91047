//! One room on this node, as a plain value: its local members, which of them are enrolled in
//! the fan-out, the room's line, joins in progress and the catch-up after a broker reconnect.
//! Fed inputs (a member joins, its snapshot, a live message, an epoch change, a leave, the
//! broker back, a catch-up's answer), it appends [`Action`]s for the supervisor to carry out.
//!
//! A joining member is not enrolled at once: it first gets its join answer (the welcome) and,
//! when it resumes, the replay from its join snapshot; with Redis, live messages that arrive
//! before the snapshot are merged in ([`ResumeMerge`]). It is enrolled in the room's fan-out
//! once the room's line (what the enrolled members have been given) is not behind it; until
//! then it gets live messages one by one. Each seq reaches it once. When the broker comes back
//! after an outage, the line stops, reads the room's history from where the enrolled members
//! are ([`Action::ReadSince`]) and passes the missed messages on before the live ones.
//!
//! Generic over the shard handle `S` (the actor uses the fan-out shard's address, the tests a
//! number). It must not do I/O, know actix or sockets, or render frames: the supervisor turns
//! actions into shard messages and frames.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::broker::{
    BrokerError, Epoch, EpochChange, JoinSnapshot, Published, Resume, ResumeRequest,
};
use crate::connection::session::SessionId;
use crate::rooms::resume::{Delivery, ResumeMerge};

/// Live messages a joining member may receive before its join snapshot (with the Redis
/// broker); more, and it is closed 1013 so that its client resumes.
pub const MAX_JOIN_BUFFER: usize = 4_096;

/// What a joining member is told first (v1: the `welcome` frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The room's epoch.
    pub epoch: Epoch,
    /// The room's latest seq when the member joined.
    pub seq: u64,
    /// Whether it was resumed, when it asked to be.
    pub resumed: Option<bool>,
    /// How many missed messages follow, when resumed.
    pub missed: Option<u64>,
}

/// What the supervisor does for the room, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<S> {
    /// To one member through its shard: its join answer first when there is one, then
    /// `deliveries`; with `enroll`, the member gets every later message of the room through
    /// its shard's fan-out. `replayed`: the frames are a replay (not counted against the
    /// outbound queue's limit).
    Admit {
        /// The member.
        member: SessionId,
        /// Its shard.
        shard: S,
        /// Its join answer, for the first admission.
        answer: Option<JoinAnswer>,
        /// Messages and epoch frames for it alone.
        deliveries: Vec<Delivery>,
        /// Whether it joins the fan-out now.
        enroll: bool,
        /// Whether the frames are a replay.
        replayed: bool,
    },
    /// To every enrolled member, through each shard with enrolled members
    /// ([`Room::shards`], read when the action is carried out: a member enrolled by a later
    /// action of the same batch is admitted after this, in its shard's order).
    FanOut {
        /// The message or epoch frame.
        delivery: Delivery,
        /// A catch-up's missed message (not counted against the outbound queue's limit).
        replayed: bool,
    },
    /// The member's join could not be answered (the broker could not give its snapshot):
    /// it is no longer in the room.
    Unanswered {
        /// The member.
        member: SessionId,
        /// Why, for the log.
        why: String,
    },
    /// The member cannot be given every seq: close it 1013 so that its client resumes.
    Retry {
        /// The member.
        member: SessionId,
        /// Why, for the log.
        why: String,
    },
    /// The enrolled members cannot be given every seq: close them 1013.
    RetryEnrolled {
        /// The members.
        members: Vec<SessionId>,
        /// Why, for the log.
        why: String,
    },
    /// Take the member out of its shard's fan-out.
    Remove {
        /// The member.
        member: SessionId,
        /// Its shard.
        shard: S,
    },
    /// Read the room's history after the line (the broker is back); answer with
    /// [`Room::caught_up`] and `attempt`.
    ReadSince {
        /// From where.
        request: ResumeRequest,
        /// Which catch-up this is.
        attempt: u64,
    },
}

struct Member<S> {
    shard: S,
    /// Until the member is enrolled: its own merge of the join snapshot and the live
    /// messages.
    joining: Option<Box<ResumeMerge>>,
}

/// The line's position while it catches up after a broker reconnect.
struct CatchUp {
    epoch: Epoch,
    last: u64,
    attempt: u64,
}

/// One room's decisions; see the module docs.
pub struct Room<S> {
    members: HashMap<SessionId, Member<S>>,
    /// Members not enrolled yet that still wait for their snapshot or the line.
    joining: HashSet<SessionId>,
    /// Shards with enrolled members, and how many each has.
    shards: HashMap<S, usize>,
    /// The epoch and seq the enrolled members have been given up to; `None` before the first
    /// enrolment. It drops a live message it already passed (a late copy) and announces a new
    /// epoch before its first message. While catching up it buffers live messages.
    line: Option<ResumeMerge>,
    catch_up: Option<CatchUp>,
    max_join_buffer: usize,
    /// Scratch space for one input's deliveries.
    out: Vec<Delivery>,
}

impl<S: Clone + Eq + Hash> Room<S> {
    /// A room with no members; a joining member may buffer `max_join_buffer` live messages.
    pub fn new(max_join_buffer: usize) -> Self {
        Room {
            members: HashMap::new(),
            joining: HashSet::new(),
            shards: HashMap::new(),
            line: None,
            catch_up: None,
            max_join_buffer,
            out: Vec::new(),
        }
    }

    /// Whether the room has no local member left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Local members, enrolled or not.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The shards with enrolled members.
    pub fn shards(&self) -> impl Iterator<Item = &S> {
        self.shards.keys()
    }

    /// Whether `member` gets the room's messages through the fan-out.
    pub fn is_enrolled(&self, member: SessionId) -> bool {
        self.members
            .get(&member)
            .is_some_and(|member| member.joining.is_none())
    }

    /// `member`, on `shard`, joins; its snapshot comes with [`Room::snapshot`].
    pub fn join(&mut self, member: SessionId, shard: S) {
        self.members.insert(
            member,
            Member {
                shard,
                joining: Some(Box::new(ResumeMerge::new(self.max_join_buffer))),
            },
        );
        self.joining.insert(member);
    }

    /// `member`'s join snapshot, or why the broker could not give one: its answer and replay,
    /// then its enrolment, or one-by-one delivery until the line is not behind it. `asked`:
    /// whether it asked to resume.
    pub fn snapshot(
        &mut self,
        member: SessionId,
        asked: bool,
        snapshot: Result<JoinSnapshot, BrokerError>,
        actions: &mut Vec<Action<S>>,
    ) {
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(err) => {
                if self.members.remove(&member).is_some() {
                    self.joining.remove(&member);
                    actions.push(Action::Unanswered {
                        member,
                        why: format!("the broker could not be read: {err}"),
                    });
                }
                return;
            }
        };
        let Some(merge) = self
            .members
            .get_mut(&member)
            .and_then(|m| m.joining.as_mut())
        else {
            return; // Left meanwhile.
        };
        self.out.clear();
        if merge.snapshot(&snapshot, &mut self.out).is_err() {
            self.retry(member, buffer_full(), actions);
            return;
        }
        let answer = JoinAnswer {
            epoch: snapshot.epoch.clone(),
            seq: snapshot.seq,
            resumed: asked.then(|| snapshot.missed().is_some()),
            missed: snapshot.missed(),
        };
        let deliveries = std::mem::take(&mut self.out);
        self.enroll(member, Some(answer), deliveries, true, actions);
    }

    /// A live message of the room: to joining members one by one through their merges, to
    /// the enrolled ones through the fan-out; then enrols the joining members it caught up
    /// with.
    pub fn live(&mut self, message: Published, actions: &mut Vec<Action<S>>) {
        let mut failed = Vec::new();
        for id in &self.joining {
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
            admit_deliveries(*id, &member.shard, &mut self.out, actions);
        }
        let mut line_overflowed = false;
        if let Some(line) = self.line.as_mut() {
            self.out.clear();
            // With nobody enrolled the line still follows the room, for later enrolments.
            // It buffers (and may overflow) only while catching up after a reconnect.
            line_overflowed = line.live(message, &mut self.out).is_err();
            fan_out(&mut self.out, false, actions);
        }
        if line_overflowed {
            self.fail("too many live messages while catching up", actions);
        }
        for id in failed {
            self.retry(id, buffer_full(), actions);
        }
        self.enroll_caught_up(actions);
    }

    /// The room's history was lost: its members are told before its next message.
    pub fn epoch_changed(&mut self, change: &EpochChange, actions: &mut Vec<Action<S>>) {
        for id in &self.joining {
            let Some(member) = self.members.get_mut(id) else {
                continue;
            };
            if let Some(merge) = member.joining.as_mut() {
                self.out.clear();
                merge.epoch_changed(change, &mut self.out);
                admit_deliveries(*id, &member.shard, &mut self.out, actions);
            }
        }
        if let Some(line) = self.line.as_mut() {
            self.out.clear();
            line.epoch_changed(change, &mut self.out);
            fan_out(&mut self.out, false, actions);
        }
    }

    /// `member` left; an enrolled one is taken out of its shard's fan-out.
    pub fn leave(&mut self, member: SessionId, actions: &mut Vec<Action<S>>) {
        let Some(left) = self.members.remove(&member) else {
            return;
        };
        if left.joining.is_some() {
            self.joining.remove(&member);
            return;
        }
        if let Some(count) = self.shards.get_mut(&left.shard) {
            *count -= 1;
            if *count == 0 {
                self.shards.remove(&left.shard);
            }
        }
        actions.push(Action::Remove {
            member,
            shard: left.shard,
        });
    }

    /// The broker is back after an outage: messages other nodes published meanwhile are in
    /// the history, not on the live stream. The line stops at what the enrolled members were
    /// given and asks for the history after it (this is catch-up number `attempt`), buffering
    /// live messages meanwhile. A member still catching up one by one has no line of its own
    /// to catch up from: it resumes instead.
    pub fn reconnected(&mut self, attempt: u64, actions: &mut Vec<Action<S>>) {
        let from = match (&self.catch_up, self.line.as_ref()) {
            (Some(catch_up), _) => Some((catch_up.epoch.clone(), catch_up.last)),
            (None, Some(line)) => line
                .last_delivered()
                .map(|(epoch, last)| (epoch.clone(), last)),
            (None, None) => None,
        };
        if let Some((epoch, last)) = from {
            self.catch_up = Some(CatchUp {
                epoch: epoch.clone(),
                last,
                attempt,
            });
            self.line = Some(ResumeMerge::new(self.max_join_buffer));
            actions.push(Action::ReadSince {
                request: ResumeRequest {
                    since: last,
                    epoch: Some(epoch),
                },
                attempt,
            });
        }
        let behind: Vec<SessionId> = self
            .joining
            .iter()
            .filter(|id| {
                self.members
                    .get(id)
                    .and_then(|member| member.joining.as_deref())
                    .is_some_and(ResumeMerge::is_live)
            })
            .copied()
            .collect();
        for id in behind {
            self.retry(
                id,
                "the broker reconnected before it caught up with its room".to_owned(),
                actions,
            );
        }
    }

    /// The answer of catch-up `attempt`: the missed messages to the enrolled members, then
    /// the live ones buffered meanwhile. A gap that cannot be filled (history trimmed, the
    /// broker failing) closes the enrolled members 1013, so that their clients resume and
    /// learn it (`resumed: false`). An answer to an older catch-up is ignored.
    pub fn caught_up(
        &mut self,
        attempt: u64,
        snapshot: Result<JoinSnapshot, BrokerError>,
        actions: &mut Vec<Action<S>>,
    ) {
        if self.catch_up.as_ref().map(|c| c.attempt) != Some(attempt) {
            return;
        }
        let snapshot = match snapshot {
            Ok(snapshot) if matches!(snapshot.resume, Resume::Resumed(_)) => snapshot,
            Ok(_) => {
                self.fail(
                    "the messages published while the broker was unreachable are no longer in \
                     its history",
                    actions,
                );
                return;
            }
            Err(err) => {
                self.fail(&format!("reading its history failed: {err}"), actions);
                return;
            }
        };
        self.catch_up = None;
        let Some(line) = self.line.as_mut() else {
            return;
        };
        self.out.clear();
        if line.snapshot(&snapshot, &mut self.out).is_err() {
            self.fail("too many live messages while catching up", actions);
            return;
        }
        fan_out(&mut self.out, true, actions);
        self.enroll_caught_up(actions);
    }

    /// Enrols every joining member whose merge is live and not ahead of the line.
    fn enroll_caught_up(&mut self, actions: &mut Vec<Action<S>>) {
        let ready: Vec<SessionId> = self
            .joining
            .iter()
            .filter(|id| {
                self.members
                    .get(id)
                    .and_then(|member| member.joining.as_ref())
                    .is_some_and(|merge| can_enroll(self.line.as_ref(), merge))
            })
            .copied()
            .collect();
        for id in ready {
            self.enroll(id, None, Vec::new(), false, actions);
        }
    }

    /// Enrols `member` if its merge is live and not ahead of the line ([`can_enroll`]); its
    /// `answer` and `deliveries` go first, in the same admission. Not enrolled: those alone.
    fn enroll(
        &mut self,
        id: SessionId,
        answer: Option<JoinAnswer>,
        deliveries: Vec<Delivery>,
        replayed: bool,
        actions: &mut Vec<Action<S>>,
    ) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let enroll = member
            .joining
            .as_ref()
            .is_some_and(|merge| can_enroll(self.line.as_ref(), merge));
        if enroll {
            if self.line.is_none() {
                if let Some((epoch, seq)) = member
                    .joining
                    .as_deref()
                    .and_then(ResumeMerge::last_delivered)
                {
                    self.line = Some(ResumeMerge::live_at(epoch.clone(), seq));
                }
            }
            member.joining = None;
            *self.shards.entry(member.shard.clone()).or_default() += 1;
            self.joining.remove(&id);
        }
        if enroll || answer.is_some() || !deliveries.is_empty() {
            actions.push(Action::Admit {
                member: id,
                shard: member.shard.clone(),
                answer,
                deliveries,
                enroll,
                replayed,
            });
        }
    }

    /// `member`'s join cannot finish: it is closed 1013 and gets nothing more of the room.
    fn retry(&mut self, member: SessionId, why: String, actions: &mut Vec<Action<S>>) {
        if self.joining.remove(&member) {
            actions.push(Action::Retry { member, why });
        }
    }

    /// The enrolled members cannot be given every seq: closed 1013 (their clients resume and
    /// learn about the gap), and the line starts again.
    fn fail(&mut self, why: &str, actions: &mut Vec<Action<S>>) {
        self.line = None;
        self.catch_up = None;
        let members: Vec<SessionId> = self
            .members
            .iter()
            .filter(|(_, member)| member.joining.is_none())
            .map(|(id, _)| *id)
            .collect();
        actions.push(Action::RetryEnrolled {
            members,
            why: why.to_owned(),
        });
    }
}

fn buffer_full() -> String {
    "more live messages arrived before its snapshot than it may buffer".to_owned()
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

/// The deliveries of one member that is not enrolled, as an admission without enrolment.
fn admit_deliveries<S: Clone>(
    member: SessionId,
    shard: &S,
    out: &mut Vec<Delivery>,
    actions: &mut Vec<Action<S>>,
) {
    if out.is_empty() {
        return;
    }
    actions.push(Action::Admit {
        member,
        shard: shard.clone(),
        answer: None,
        deliveries: std::mem::take(out),
        enroll: false,
        replayed: false,
    });
}

fn fan_out<S>(out: &mut Vec<Delivery>, replayed: bool, actions: &mut Vec<Action<S>>) {
    for delivery in out.drain(..) {
        actions.push(Action::FanOut { delivery, replayed });
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
