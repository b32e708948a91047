//! This node's side of presence on Redis: the presence jobs the handle hands to the
//! publisher's ordered pipeline ([`PresenceJob`]), the book of this node's members per room
//! and name that the jobs come to ([`Book`]), and the publisher's part ([`PresenceWorker`]):
//! the script call of each job, its answer (a `presence` read, the rejoined count, a holder
//! Redis lost), and the heartbeat that renews this node's lease in every room where it has
//! members (which also sweeps those rooms) or restores the rooms whose ops did not reach
//! Redis.
//!
//! The rules are the script's (`presence_script.rs`); this file must not decide who is
//! present, and must not know sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use redis::{Cmd, Value};

use super::super::presence::PresentName;
use super::super::BrokerError;
use super::presence_script::{parse_answer, Op, PresenceCall};
use crate::metrics::{metrics, OpLabels};

/// A presence operation of this node, in the order the supervisor asked for it.
pub(in super::super) enum PresenceJob {
    /// A session joined `room` as `name`.
    Join {
        room: Arc<str>,
        name: Arc<str>,
        session: u64,
    },
    /// A session named `name` left `room` for good.
    Leave { room: Arc<str>, name: Arc<str> },
    /// A session named `name` went away from `room` without leaving: kept for `time`.
    Keep {
        room: Arc<str>,
        name: Arc<str>,
        session: u64,
        time: Duration,
    },
    /// This node's members of `room` are exactly `counts`.
    Restore {
        room: Arc<str>,
        counts: Vec<(Arc<str>, u32)>,
    },
    /// This node lives (the heartbeat).
    Renew { room: Arc<str> },
    /// The holders of `room` whose time ran out end.
    Sweep { room: Arc<str> },
    /// Who is in `room`.
    Read {
        room: Arc<str>,
        reply: oneshot::Sender<Result<Vec<PresentName>, BrokerError>>,
    },
}

impl PresenceJob {
    pub(super) fn room(&self) -> &Arc<str> {
        match self {
            PresenceJob::Join { room, .. }
            | PresenceJob::Leave { room, .. }
            | PresenceJob::Keep { room, .. }
            | PresenceJob::Restore { room, .. }
            | PresenceJob::Renew { room }
            | PresenceJob::Sweep { room }
            | PresenceJob::Read { room, .. } => room,
        }
    }

    fn op(&self) -> Op<'_> {
        match self {
            PresenceJob::Join { name, session, .. } => Op::Join {
                session: *session,
                name,
            },
            PresenceJob::Leave { name, .. } => Op::Leave { name },
            PresenceJob::Keep {
                name,
                session,
                time,
                ..
            } => Op::Keep {
                session: *session,
                name,
                time: *time,
            },
            PresenceJob::Restore { counts, .. } => Op::Restore(counts),
            PresenceJob::Renew { .. } => Op::Renew,
            PresenceJob::Sweep { .. } => Op::Sweep,
            PresenceJob::Read { .. } => Op::Read,
        }
    }
}

/// This node's live members per room and name, as the jobs so far leave them.
#[derive(Debug, Default)]
pub(super) struct Book {
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
}

impl Book {
    /// What `job` does to this node's members.
    pub(super) fn record(&mut self, job: &PresenceJob) {
        match job {
            PresenceJob::Join { room, name, .. } => {
                let names = self.rooms.entry(room.clone()).or_default();
                *names.entry(name.clone()).or_insert(0) += 1;
            }
            PresenceJob::Leave { room, name } | PresenceJob::Keep { room, name, .. } => {
                let Some(names) = self.rooms.get_mut(room) else {
                    return;
                };
                if let Some(count) = names.get_mut(name) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        names.remove(name);
                    }
                }
                if names.is_empty() {
                    self.rooms.remove(room);
                }
            }
            PresenceJob::Restore { room, counts } => {
                let mut names = HashMap::new();
                for (name, count) in counts.iter().filter(|(_, count)| *count > 0) {
                    *names.entry(name.clone()).or_insert(0) += count;
                }
                if names.is_empty() {
                    self.rooms.remove(room);
                } else {
                    self.rooms.insert(room.clone(), names);
                }
            }
            PresenceJob::Renew { .. } | PresenceJob::Sweep { .. } | PresenceJob::Read { .. } => {}
        }
    }

    /// This node's members of `room`, by name.
    pub(super) fn counts(&self, room: &str) -> Vec<(Arc<str>, u32)> {
        let mut counts: Vec<_> = self
            .rooms
            .get(room)
            .map(|names| names.iter().map(|(n, c)| (n.clone(), *c)).collect())
            .unwrap_or_default();
        counts.sort_unstable();
        counts
    }
}

/// The publisher's part of presence: see the module docs.
pub(super) struct PresenceWorker {
    call: PresenceCall,
    book: Book,
    /// Rooms whose ops did not all reach Redis, or whose holder Redis lost: restored at the
    /// next heartbeat.
    dirty: HashSet<Arc<str>>,
    /// How often this node renews its lease and sweeps its rooms.
    pub(super) heartbeat: Duration,
}

impl PresenceWorker {
    pub(super) fn new(call: PresenceCall, heartbeat: Duration) -> Self {
        PresenceWorker {
            call,
            book: Book::default(),
            dirty: HashSet::new(),
            heartbeat,
        }
    }

    /// Records what `job` does to this node's members (whether or not it is sent).
    pub(super) fn record(&mut self, job: &PresenceJob) {
        self.book.record(job);
        if let PresenceJob::Restore { room, .. } = job {
            self.dirty.remove(room);
        }
    }

    /// Records `job` and returns its script call (counted as sent).
    pub(super) fn prepare(&mut self, job: &PresenceJob) -> Cmd {
        self.record(job);
        let op = job.op();
        metrics()
            .presence_redis_ops
            .get_or_create(&OpLabels { op: op.name() })
            .inc();
        self.call.command(job.room(), &op, None)
    }

    /// `job` did not reach Redis, or failed there.
    pub(super) fn unsent(&mut self, job: PresenceJob, err: BrokerError) {
        metrics().broker_errors.inc();
        match job {
            PresenceJob::Read { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            // A sweep or a renew that failed changes nothing of this node's members.
            PresenceJob::Sweep { .. } | PresenceJob::Renew { .. } => {}
            job => {
                self.dirty.insert(job.room().clone());
            }
        }
    }

    /// Redis's answer to `job`; a `NOSCRIPT` sets `reload`.
    pub(super) fn answered(&mut self, job: PresenceJob, value: Value, reload: &mut bool) {
        match parse_answer(value, reload) {
            Ok(answer) => {
                metrics().presence_kept_rejoined.inc_by(answer.rejoined);
                match job {
                    PresenceJob::Read { reply, .. } => {
                        let _ = reply.send(Ok(answer.members));
                    }
                    PresenceJob::Renew { room } if !answer.holds => {
                        log::debug!("presence: Redis lost this node's members of room {room}");
                        self.dirty.insert(room);
                    }
                    _ => {}
                }
            }
            Err(err) => self.unsent(job, err),
        }
    }

    /// The heartbeat's jobs: a restore of every dirty room, a renew (and sweep) of every
    /// other room where this node has members.
    pub(super) fn heartbeat_jobs(&mut self) -> Vec<PresenceJob> {
        let mut jobs: Vec<PresenceJob> = self
            .dirty
            .drain()
            .map(|room| PresenceJob::Restore {
                counts: self.book.counts(&room),
                room,
            })
            .collect();
        let restored: HashSet<Arc<str>> = jobs.iter().map(|job| job.room().clone()).collect();
        jobs.extend(
            self.book
                .rooms
                .keys()
                .filter(|room| !restored.contains(*room))
                .map(|room| PresenceJob::Renew { room: room.clone() }),
        );
        jobs
    }
}

/// How often a node renews its lease: a third of it, or sooner (the grace, at least 500 ms)
/// so that a dead node's members are swept within `ttl` + `grace`.
pub(super) fn heartbeat_interval(ttl: Duration, grace: Duration) -> Duration {
    (ttl / 3)
        .min(grace.max(Duration::from_millis(500)))
        .max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_follows_the_jobs() {
        let room: Arc<str> = Arc::from("r");
        let name = |n: &str| -> Arc<str> { Arc::from(n) };
        let mut book = Book::default();
        let join = |n: &str| PresenceJob::Join {
            room: room.clone(),
            name: name(n),
            session: 1,
        };
        book.record(&join("ann"));
        book.record(&join("ann"));
        book.record(&join("bob"));
        assert_eq!(book.counts("r"), vec![(name("ann"), 2), (name("bob"), 1)]);
        book.record(&PresenceJob::Keep {
            room: room.clone(),
            name: name("ann"),
            session: 1,
            time: Duration::from_secs(1),
        });
        book.record(&PresenceJob::Leave {
            room: room.clone(),
            name: name("bob"),
        });
        book.record(&PresenceJob::Leave {
            room: room.clone(),
            name: name("nobody"),
        });
        assert_eq!(book.counts("r"), vec![(name("ann"), 1)]);
        book.record(&PresenceJob::Restore {
            room: room.clone(),
            counts: vec![(name("cat"), 3), (name("dog"), 0)],
        });
        assert_eq!(book.counts("r"), vec![(name("cat"), 3)]);
        book.record(&PresenceJob::Restore {
            room: room.clone(),
            counts: Vec::new(),
        });
        assert!(book.rooms.is_empty());
    }

    #[test]
    fn heartbeats_come_within_the_grace_and_a_third_of_the_lease() {
        let ms = Duration::from_millis;
        assert_eq!(heartbeat_interval(ms(30_000), ms(5_000)), ms(5_000));
        assert_eq!(heartbeat_interval(ms(1_500), ms(5_000)), ms(500));
        assert_eq!(heartbeat_interval(ms(30_000), ms(0)), ms(500));
        assert_eq!(heartbeat_interval(ms(3_000), ms(800)), ms(800));
    }
}
