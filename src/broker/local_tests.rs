//! Tests of the local broker: seqs, resume, ttl, the budget and its eviction index (unit
//! tests, and a property test against a model that sorts every room on every step), and the
//! seam's join and leave.

use proptest::prelude::*;

use super::*;

#[test]
fn a_room_joined_through_the_seam_is_kept_while_it_has_members() {
    // Room for three remembered rooms: joining more forgets the vacant ones idle longest,
    // never one with a member, until its last member left.
    let mut b = LocalBroker::new(limits(10, 60_000, 3 * ROOM_OVERHEAD_BYTES))
        .with_room_overhead(ROOM_OVERHEAD_BYTES);
    let room = |name: &str| -> Arc<str> { Arc::from(name) };
    let _ = Broker::join(&mut b, &room("a"), JoinRequest::default());
    let _ = Broker::join(&mut b, &room("a"), JoinRequest::default());
    for name in ["b", "c", "d", "e", "f"] {
        let _ = Broker::join(&mut b, &room(name), JoinRequest::default());
        Broker::leave(&mut b, &room(name));
    }
    assert!(b.room("a").is_some(), "a room with members was forgotten");
    assert!(b.rooms() <= 3, "{} rooms remembered", b.rooms());
    Broker::leave(&mut b, &room("a"));
    assert!(b.room("a").is_some(), "one member is still in a");
    Broker::leave(&mut b, &room("a"));
    for name in ["g", "h", "i"] {
        let _ = Broker::join(&mut b, &room(name), JoinRequest::default());
    }
    assert!(b.room("a").is_none(), "a vacant room idle longest was kept");
    b.check_index();
}

fn limits(size: usize, ttl_ms: u64, max_bytes: u64) -> HistoryLimits {
    HistoryLimits {
        size,
        ttl: Duration::from_millis(ttl_ms),
        max_bytes,
    }
}

fn broker() -> LocalBroker {
    LocalBroker::new(HistoryLimits::from(&HistorySettings::default()))
}

fn ask(since: u64, epoch: Option<&Epoch>) -> ResumeRequest {
    ResumeRequest {
        since,
        epoch: epoch.cloned(),
    }
}

fn seqs(snapshot: &JoinSnapshot) -> Option<Vec<u64>> {
    match &snapshot.resume {
        Resume::Resumed(entries) => Some(entries.iter().map(|p| p.seq).collect()),
        _ => None,
    }
}

#[test]
fn seq_counts_per_room_from_1() {
    let mut b = broker();
    let now = Instant::now();
    for expected in 1..=5 {
        let before = unix_ms();
        let p = b.publish("a", "ann", "x", now).unwrap().message;
        assert_eq!(p.seq, expected);
        let frame: serde_json::Value = serde_json::from_str(&p.json).unwrap();
        let ts = frame["ts"].as_u64().expect("a ts");
        assert!(before <= ts && ts <= unix_ms(), "ts {ts}");
        assert_eq!(
            &*p.json,
            format!(
                r#"{{"type":"message","room":"a","from":"ann","text":"x","seq":{expected},"ts":{ts}}}"#
            )
        );
    }
    assert_eq!(b.publish("b", "bob", "y", now).unwrap().message.seq, 1);
    assert_ne!(
        b.room("a").unwrap().0,
        b.room("b").unwrap().0,
        "epochs per room"
    );
    assert_eq!(b.room("a").unwrap().1, 5);
}

#[test]
fn a_new_room_snapshot_fixes_the_epoch() {
    let mut b = broker();
    let now = Instant::now();
    let snap = b.snapshot("r", None, now);
    assert_eq!(snap.seq, 0);
    assert_eq!(snap.resume, Resume::NotAsked);
    let p = b.publish("r", "ann", "x", now).unwrap().message;
    assert_eq!(p.epoch, snap.epoch);
    assert_eq!(p.seq, 1);
}

#[test]
fn a_new_process_is_a_new_epoch() {
    let now = Instant::now();
    let mut one = broker();
    let mut two = broker();
    assert_ne!(
        one.snapshot("r", None, now).epoch,
        two.snapshot("r", None, now).epoch
    );
}

#[test]
fn resume_cases() {
    let now = Instant::now();
    let mut b = LocalBroker::new(limits(5, 60_000, 1 << 20));
    for _ in 0..8 {
        b.publish("r", "ann", "x", now).unwrap();
    }
    let epoch = b.room("r").unwrap().0;
    let other = Epoch::new("other");
    // History holds 4..=8.
    let cases: [(ResumeRequest, Option<Vec<u64>>); 8] = [
        (ask(3, Some(&epoch)), Some(vec![4, 5, 6, 7, 8])),
        (ask(5, None), Some(vec![6, 7, 8])),
        (ask(7, Some(&epoch)), Some(vec![8])),
        (ask(8, Some(&epoch)), Some(vec![])),
        (ask(2, Some(&epoch)), None), // trimmed by history.size
        (ask(0, None), None),
        (ask(9, None), None),         // ahead
        (ask(5, Some(&other)), None), // other epoch
    ];
    for (request, expected) in cases {
        let snap = b.snapshot("r", Some(&request), now);
        assert_eq!(snap.seq, 8);
        assert_eq!(seqs(&snap), expected, "{request:?}");
        if let Resume::Resumed(entries) = &snap.resume {
            assert_eq!(snap.missed(), Some(entries.len() as u64));
            for p in entries {
                assert!(p.json.contains(&format!("\"seq\":{},\"ts\":", p.seq)));
                assert_eq!(p.epoch, epoch);
            }
        }
    }
}

#[test]
fn no_history_means_no_resume() {
    let now = Instant::now();
    let mut b = LocalBroker::new(limits(0, 60_000, 1 << 20));
    for _ in 0..3 {
        b.publish("r", "ann", "x", now).unwrap();
    }
    assert_eq!(b.history_bytes(), 0);
    for since in [0, 2, 3, 4] {
        let snap = b.snapshot("r", Some(&ask(since, None)), now);
        assert_eq!(snap.resume, Resume::NotResumed, "since {since}");
        assert_eq!(snap.seq, 3);
    }
}

#[test]
fn entries_older_than_the_ttl_are_trimmed() {
    let t0 = Instant::now();
    let mut b = LocalBroker::new(limits(100, 1_000, 1 << 20));
    b.publish("r", "ann", "1", t0).unwrap();
    b.publish("r", "ann", "2", t0 + Duration::from_millis(600))
        .unwrap();
    let t = t0 + Duration::from_millis(1_100);
    // Entry 1 expired: resuming from 0 fails, from 1 works.
    assert_eq!(seqs(&b.snapshot("r", Some(&ask(0, None)), t)), None);
    assert_eq!(
        seqs(&b.snapshot("r", Some(&ask(1, None)), t)),
        Some(vec![2])
    );
    let t = t0 + Duration::from_millis(1_700);
    assert_eq!(seqs(&b.snapshot("r", Some(&ask(1, None)), t)), None);
    assert_eq!(seqs(&b.snapshot("r", Some(&ask(2, None)), t)), Some(vec![]));
    assert_eq!(b.history_bytes(), 0);
}

#[test]
fn idle_rooms_without_history_are_forgotten_unless_kept() {
    let t0 = Instant::now();
    let mut b = LocalBroker::new(limits(10, 1_000, 1 << 20));
    b.publish("gone", "ann", "x", t0).unwrap();
    b.publish("kept", "ann", "x", t0).unwrap();
    let first = b.room("gone").unwrap().0;
    assert_eq!(b.sweep(t0 + Duration::from_millis(500), |_| false), 0);
    assert_eq!(
        b.sweep(t0 + Duration::from_millis(1_000), |r| r == "kept"),
        1
    );
    assert!(b.room("gone").is_none());
    assert_eq!(b.room("kept").unwrap().1, 1);
    assert_eq!(b.history_bytes(), 0);
    // A later message starts a new epoch.
    let p = b
        .publish("gone", "ann", "x", t0 + Duration::from_secs(2))
        .unwrap()
        .message;
    assert_eq!(p.seq, 1);
    assert_ne!(p.epoch, first);
}

#[test]
fn over_max_bytes_the_idlest_rooms_lose_their_history_and_epoch() {
    let t0 = Instant::now();
    let one = entry_bytes(
        &MessageHead::new("a", "ann", "x")
            .unwrap()
            .finish(1, unix_ms()),
    );
    // Room for 4 entries in all.
    let mut b = LocalBroker::new(limits(100, 60_000, 4 * one));
    let at = |ms| t0 + Duration::from_millis(ms);
    b.publish("a", "ann", "x", at(0)).unwrap();
    b.publish("b", "ann", "x", at(1)).unwrap();
    b.publish("c", "ann", "x", at(2)).unwrap();
    let out = b.publish("a", "ann", "x", at(3)).unwrap();
    assert!(out.epoch_changes.is_empty());
    assert_eq!(b.history_bytes(), 4 * one);
    let epoch_b = b.room("b").unwrap().0;
    // The fifth entry goes over: b is idle longest (a was active at 3).
    let out = b.publish("d", "ann", "x", at(4)).unwrap();
    assert_eq!(out.epoch_changes.len(), 1, "{:?}", out.epoch_changes);
    let change = &out.epoch_changes[0];
    assert_eq!(&*change.room, "b");
    assert_eq!(change.seq, 1);
    assert_ne!(change.epoch, epoch_b);
    assert_eq!(b.room("b").unwrap(), (change.epoch.clone(), 1));
    assert_eq!(b.history_bytes(), 4 * one);
    // b's seqs continue in the new epoch; an old-epoch resume fails.
    let snap = b.snapshot("b", Some(&ask(1, Some(&epoch_b))), at(5));
    assert_eq!(snap.resume, Resume::NotResumed);
    let p = b.publish("b", "ann", "x", at(6)).unwrap();
    assert_eq!(p.message.seq, 2);
    assert_eq!(p.message.epoch, change.epoch);
}

#[test]
fn one_room_alone_over_max_bytes_trims_itself() {
    let t0 = Instant::now();
    let one = entry_bytes(
        &MessageHead::new("a", "ann", "x")
            .unwrap()
            .finish(1, unix_ms()),
    );
    let mut b = LocalBroker::new(limits(100, 60_000, 3 * one));
    for _ in 0..5 {
        let out = b.publish("a", "ann", "x", t0).unwrap();
        assert!(out.epoch_changes.is_empty());
    }
    assert!(b.history_bytes() <= 3 * one);
    let snap = b.snapshot("a", Some(&ask(2, None)), t0);
    assert_eq!(seqs(&snap), Some(vec![3, 4, 5]));
}

#[test]
fn byte_count_stays_exact() {
    // Publishing, trimming by size, by ttl, evicting and sweeping keep the total equal to
    // the sum over rooms.
    let t0 = Instant::now();
    let mut b = LocalBroker::new(limits(3, 1_000, 2_000));
    for i in 0..200u64 {
        let room = format!("r{}", i % 7);
        let text = "y".repeat((i % 13) as usize);
        b.publish(&room, "ann", &text, t0 + Duration::from_millis(i * 20))
            .unwrap();
        if i % 50 == 0 {
            b.sweep(t0 + Duration::from_millis(i * 20), |_| false);
        }
        let sum: u64 = b.rooms.values().map(|log| log.bytes).sum();
        assert_eq!(b.history_bytes(), sum, "after {i}");
        assert!(b.history_bytes() <= 2_000);
    }
}

#[test]
fn equally_idle_rooms_lose_their_history_in_name_order() {
    // The order of the sort the index replaced: last activity, then name.
    let t0 = Instant::now();
    let one = entry_bytes(
        &MessageHead::new("a", "ann", "x")
            .unwrap()
            .finish(1, unix_ms()),
    );
    let mut b = LocalBroker::new(limits(100, 60_000, 3 * one));
    for room in ["c", "a", "b"] {
        b.publish(room, "ann", "x", t0).unwrap();
    }
    let later = t0 + Duration::from_millis(1);
    let out = b.publish("d", "ann", "x", later).unwrap();
    let evicted: Vec<&str> = out.epoch_changes.iter().map(|c| &*c.room).collect();
    assert_eq!(evicted, ["a"]);
    let out = b.publish("d", "ann", "x", later).unwrap();
    let evicted: Vec<&str> = out.epoch_changes.iter().map(|c| &*c.room).collect();
    assert_eq!(evicted, ["b"]);
    b.check_index();
}

#[test]
fn counted_rooms_without_history_or_members_are_forgotten_first() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let one = entry_bytes(
        &MessageHead::new("a", "ann", "x")
            .unwrap()
            .finish(1, unix_ms()),
    );
    assert!(one < ROOM_OVERHEAD_BYTES);
    // Four rooms and two entries.
    let max_bytes = 4 * ROOM_OVERHEAD_BYTES + 2 * one;
    let mut b =
        LocalBroker::new(limits(10, 60_000, max_bytes)).with_room_overhead(ROOM_OVERHEAD_BYTES);
    // `a` has a member; `b` and `c` were joined and left (no members, no history).
    b.snapshot("a", None, at(0));
    b.set_occupied("a", true);
    b.snapshot("b", None, at(1));
    b.snapshot("c", None, at(2));
    b.publish("a", "ann", "x", at(3)).unwrap();
    let out = b.publish("d", "ann", "x", at(4)).unwrap();
    assert!(out.epoch_changes.is_empty());
    assert_eq!(b.budget_bytes(), max_bytes);
    b.check_index();

    // Over by one entry: `b`, the vacant room idle longest, is forgotten; no history is
    // dropped and nobody is told.
    let out = b.publish("d", "ann", "x", at(5)).unwrap();
    assert!(out.epoch_changes.is_empty(), "{:?}", out.epoch_changes);
    assert!(b.room("b").is_none());
    assert!(b.room("c").is_some());
    assert_eq!(b.rooms(), 3);
    assert_eq!(b.history_bytes(), 3 * one);
    assert_eq!(b.budget_bytes(), 3 * ROOM_OVERHEAD_BYTES + 3 * one);
    b.check_index();

    // More entries in `d`: `c` is forgotten, then `a` (occupied) loses its history and its
    // epoch but is remembered, then `d` trims itself.
    let epoch_a = b.room("a").unwrap().0;
    let mut changes = Vec::new();
    for ms in 6..12 {
        let out = b.publish("d", "ann", "x", at(ms)).unwrap();
        changes.extend(out.epoch_changes);
        b.check_index();
        assert!(b.budget_bytes() <= max_bytes);
    }
    assert!(b.room("c").is_none());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(&*changes[0].room, "a");
    let (epoch, seq) = b.room("a").unwrap();
    assert_ne!(epoch, epoch_a);
    assert_eq!((changes[0].epoch.clone(), changes[0].seq), (epoch, seq));
    assert_eq!(seq, 1);
    assert_eq!(b.rooms(), 2);

    // A forgotten room comes back as a new room: seq 0, a new epoch.
    let snap = b.snapshot("b", None, at(12));
    assert_eq!(snap.seq, 0);
    b.check_index();
}

#[test]
fn an_occupied_room_outlives_the_sweep_until_its_members_leave() {
    let t0 = Instant::now();
    let mut b = LocalBroker::new(limits(10, 1_000, 1 << 20));
    b.snapshot("r", None, t0);
    b.set_occupied("r", true);
    // A room the broker does not know stays unknown.
    b.set_occupied("unknown", true);
    assert!(b.room("unknown").is_none());
    let later = t0 + Duration::from_secs(5);
    assert_eq!(b.sweep(later, |_| false), 0);
    assert!(b.room("r").is_some());
    b.check_index();
    b.set_occupied("r", false);
    b.check_index();
    assert_eq!(b.sweep(later, |_| false), 1);
    assert!(b.room("r").is_none());
    b.check_index();
}

#[test]
fn a_wrong_index_entry_is_dropped_not_acted_on() {
    // Cannot happen through the API; if it did, an occupied room must not be forgotten on
    // the index's word, and the budget must not loop.
    let t0 = Instant::now();
    let mut b = LocalBroker::new(limits(10, 60_000, 2 * ROOM_OVERHEAD_BYTES))
        .with_room_overhead(ROOM_OVERHEAD_BYTES);
    b.snapshot("members", None, t0);
    b.set_occupied("members", true);
    let name = b.rooms.get_key_value("members").unwrap().0.clone();
    b.index.vacant.insert((t0, name.clone()));
    b.index.with_history.insert((t0, name));
    b.snapshot("new", None, t0 + Duration::from_millis(1));
    let out = b
        .publish("new", "ann", "x", t0 + Duration::from_millis(2))
        .unwrap();
    assert!(out.epoch_changes.is_empty());
    assert!(b.room("members").is_some());
    b.check_index();
}

/// The budget as a plain re-implementation: byte totals summed afresh and the room idle
/// longest found by sorting every candidate, at every step.
mod model {
    use std::collections::{HashMap, VecDeque};
    use std::time::{Duration, Instant};

    use super::super::{entry_bytes, HistoryLimits};
    use crate::broker::{unix_ms, MessageHead};

    pub struct Room {
        /// A number per epoch: a new one on creation and on each dropped history.
        pub epoch: u64,
        pub seq: u64,
        /// (seq, at, bytes) of each entry, oldest first.
        pub history: VecDeque<(u64, Instant, u64)>,
        pub last_active: Instant,
        pub occupied: bool,
    }

    pub struct Model {
        pub limits: HistoryLimits,
        pub room_overhead: u64,
        pub rooms: HashMap<String, Room>,
        epochs: u64,
    }

    impl Model {
        pub fn new(limits: HistoryLimits, room_overhead: u64) -> Self {
            Model {
                limits,
                room_overhead,
                rooms: HashMap::new(),
                epochs: 0,
            }
        }

        pub fn history_bytes(&self) -> u64 {
            self.rooms
                .values()
                .flat_map(|room| room.history.iter().map(|(_, _, bytes)| bytes))
                .sum()
        }

        pub fn budget_bytes(&self) -> u64 {
            self.history_bytes() + self.room_overhead * self.rooms.len() as u64
        }

        fn over(&self) -> bool {
            self.budget_bytes() > self.limits.max_bytes
        }

        fn new_epoch(&mut self) -> u64 {
            self.epochs += 1;
            self.epochs
        }

        fn room(&mut self, name: &str, now: Instant) -> &mut Room {
            if !self.rooms.contains_key(name) {
                let epoch = self.new_epoch();
                self.rooms.insert(
                    name.to_owned(),
                    Room {
                        epoch,
                        seq: 0,
                        history: VecDeque::new(),
                        last_active: now,
                        occupied: false,
                    },
                );
            }
            self.rooms.get_mut(name).unwrap()
        }

        fn expire(room: &mut Room, now: Instant, ttl: Duration) {
            room.history
                .retain(|(_, at, _)| now.saturating_duration_since(*at) < ttl);
        }

        /// The candidate idle longest, by sorting them all.
        fn idlest(&self, current: &str, with_history: bool) -> Option<String> {
            let mut candidates: Vec<(Instant, &String)> = self
                .rooms
                .iter()
                .filter(|(name, room)| {
                    *name != current
                        && if with_history {
                            !room.history.is_empty()
                        } else {
                            room.history.is_empty() && !room.occupied
                        }
                })
                .map(|(name, room)| (room.last_active, name))
                .collect();
            candidates.sort();
            candidates.first().map(|(_, name)| (*name).clone())
        }

        fn forget_over_budget(&mut self, current: &str) {
            if self.room_overhead == 0 {
                return;
            }
            while self.over() {
                let Some(name) = self.idlest(current, false) else {
                    return;
                };
                self.rooms.remove(&name);
            }
        }

        /// Returns the rooms whose history was dropped, with their seq, in order.
        pub fn publish(&mut self, name: &str, text: &str, now: Instant) -> Vec<(String, u64)> {
            let limits = self.limits;
            let room = self.room(name, now);
            Self::expire(room, now, limits.ttl);
            room.seq += 1;
            room.last_active = now;
            if limits.size > 0 {
                let json = MessageHead::new(name, "ann", text)
                    .unwrap()
                    .finish(room.seq, unix_ms());
                room.history.push_back((room.seq, now, entry_bytes(&json)));
                while room.history.len() > limits.size {
                    room.history.pop_front();
                }
            }
            let mut dropped = Vec::new();
            loop {
                self.forget_over_budget(name);
                if !self.over() {
                    break;
                }
                let Some(idlest) = self.idlest(name, true) else {
                    break;
                };
                let epoch = self.new_epoch();
                let room = self.rooms.get_mut(&idlest).unwrap();
                room.history.clear();
                room.epoch = epoch;
                dropped.push((idlest, room.seq));
            }
            while self.over() && !self.rooms[name].history.is_empty() {
                self.rooms.get_mut(name).unwrap().history.pop_front();
            }
            dropped
        }

        pub fn snapshot(&mut self, name: &str, now: Instant) {
            let ttl = self.limits.ttl;
            Self::expire(self.room(name, now), now, ttl);
            self.forget_over_budget(name);
        }

        pub fn sweep(&mut self, now: Instant, keep: impl Fn(&str) -> bool) -> usize {
            let ttl = self.limits.ttl;
            let before = self.rooms.len();
            self.rooms.retain(|name, room| {
                Self::expire(room, now, ttl);
                !room.history.is_empty()
                    || now.saturating_duration_since(room.last_active) < ttl
                    || room.occupied
                    || keep(name)
            });
            before - self.rooms.len()
        }

        pub fn set_occupied(&mut self, name: &str, occupied: bool) {
            if let Some(room) = self.rooms.get_mut(name) {
                room.occupied = occupied;
            }
        }
    }
}

/// Room names of the property test: few, so that rooms meet the budget and each other,
/// of different lengths, so that their entries weigh differently.
const MODEL_ROOMS: [&str; 5] = ["a", "b", "cc", "d", "eee"];

#[derive(Debug, Clone)]
enum Op {
    Publish {
        room: usize,
        text_len: usize,
        after_ms: u64,
    },
    /// A join: the snapshot expires the room's old entries (and creates the room).
    Join {
        room: usize,
        after_ms: u64,
    },
    /// A sweep; bit i of `keep` keeps room i as the supervisor's closure would.
    Sweep {
        after_ms: u64,
        keep: u8,
    },
    Occupy {
        room: usize,
        occupied: bool,
    },
}

fn time_step() -> impl Strategy<Value = u64> {
    // Often 0, so that rooms tie on their last activity.
    prop_oneof![Just(0u64), 1u64..50, 0u64..1_500]
}

fn op() -> impl Strategy<Value = Op> {
    let room = 0..MODEL_ROOMS.len();
    prop_oneof![
        6 => (room.clone(), 0usize..40, time_step()).prop_map(|(room, text_len, after_ms)| {
            Op::Publish { room, text_len, after_ms }
        }),
        2 => (room.clone(), time_step()).prop_map(|(room, after_ms)| Op::Join { room, after_ms }),
        1 => (time_step(), any::<u8>()).prop_map(|(after_ms, keep)| Op::Sweep { after_ms, keep }),
        2 => (room, any::<bool>()).prop_map(|(room, occupied)| Op::Occupy { room, occupied }),
    ]
}

/// Runs `ops` on a broker and on the model and compares them after every step.
fn against_the_model(limits: HistoryLimits, room_overhead: u64, ops: &[Op]) {
    let mut broker = LocalBroker::new(limits).with_room_overhead(room_overhead);
    let mut model = model::Model::new(limits, room_overhead);
    let mut now = Instant::now();
    // Each room's epoch after the previous step, in the broker and in the model.
    let mut epochs: Vec<(Option<Epoch>, Option<u64>)> = vec![(None, None); MODEL_ROOMS.len()];
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Publish {
                room,
                text_len,
                after_ms,
            } => {
                now += Duration::from_millis(after_ms);
                let name = MODEL_ROOMS[room];
                let text = "t".repeat(text_len);
                let out = broker.publish(name, "ann", &text, now).unwrap();
                let dropped: Vec<(String, u64)> = out
                    .epoch_changes
                    .iter()
                    .map(|change| (change.room.to_string(), change.seq))
                    .collect();
                assert_eq!(
                    dropped,
                    model.publish(name, &text, now),
                    "step {step}: {op:?}"
                );
                assert_eq!(out.message.seq, model.rooms[name].seq);
            }
            Op::Join { room, after_ms } => {
                now += Duration::from_millis(after_ms);
                broker.snapshot(MODEL_ROOMS[room], None, now);
                model.snapshot(MODEL_ROOMS[room], now);
            }
            Op::Sweep { after_ms, keep } => {
                now += Duration::from_millis(after_ms);
                let kept = |name: &str| {
                    MODEL_ROOMS
                        .iter()
                        .position(|room| *room == name)
                        .is_some_and(|i| keep & (1 << i) != 0)
                };
                assert_eq!(
                    broker.sweep(now, kept),
                    model.sweep(now, kept),
                    "step {step}"
                );
            }
            Op::Occupy { room, occupied } => {
                broker.set_occupied(MODEL_ROOMS[room], occupied);
                model.set_occupied(MODEL_ROOMS[room], occupied);
            }
        }
        broker.check_index();
        assert_eq!(
            broker.history_bytes(),
            model.history_bytes(),
            "step {step}: {op:?}"
        );
        assert_eq!(broker.budget_bytes(), model.budget_bytes(), "step {step}");
        assert_eq!(broker.rooms(), model.rooms.len(), "step {step}");
        for (i, name) in MODEL_ROOMS.iter().enumerate() {
            let log = broker.rooms.get(*name);
            let expected = model.rooms.get(*name);
            assert_eq!(
                log.is_some(),
                expected.is_some(),
                "step {step}: room {name} known"
            );
            let epoch = (
                log.map(|log| log.epoch.clone()),
                expected.map(|room| room.epoch),
            );
            let (before_broker, before_model) = &epochs[i];
            assert_eq!(
                before_broker != &epoch.0,
                before_model != &epoch.1,
                "step {step}: room {name}'s epoch changed in one and not in the other"
            );
            epochs[i] = epoch;
            if let (Some(log), Some(expected)) = (log, expected) {
                assert_eq!(log.seq, expected.seq, "step {step}: room {name}'s seq");
                assert_eq!(log.last_active, expected.last_active, "step {step}: {name}");
                assert_eq!(log.occupied, expected.occupied, "step {step}: {name}");
                let seqs: Vec<u64> = log.history.iter().map(|entry| entry.seq).collect();
                let model_seqs: Vec<u64> =
                    expected.history.iter().map(|(seq, _, _)| *seq).collect();
                assert_eq!(seqs, model_seqs, "step {step}: room {name}'s history");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]
    #[test]
    fn the_budget_acts_as_a_sort_of_every_room_would(
        size in 0usize..6,
        ttl_ms in 50u64..3_000,
        max_bytes in 0u64..2_000,
        room_overhead in prop_oneof![Just(0u64), Just(40u64), Just(ROOM_OVERHEAD_BYTES)],
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        against_the_model(limits(size, ttl_ms, max_bytes), room_overhead, &ops);
    }
}

#[test]
fn a_dedupe_key_is_published_once_within_its_window() {
    let t0 = Instant::now();
    let mut b = broker().with_dedupe(Duration::from_millis(1_000));
    let at = |ms| t0 + Duration::from_millis(ms);
    let message = |key| Outgoing {
        from: "ann",
        text: "x",
        dedupe_key: Some(key),
        sent_by: None,
    };
    let first = b.publish_message("r", message("k"), at(0), 5).unwrap().0;
    let Publication::New(first) = first else {
        panic!("{first:?}");
    };
    assert!(first.json.ends_with(r#""seq":1,"ts":5}"#), "{}", first.json);
    // Within the window: the first one's seq; nothing published, the room's seq unchanged.
    let repeat = b.publish_message("r", message("k"), at(999), 6).unwrap().0;
    assert_eq!(
        repeat,
        Publication::Repeat {
            epoch: first.epoch.clone(),
            seq: 1
        }
    );
    assert_eq!(b.room("r").unwrap().1, 1);
    // The same key in another room, or without a key: new messages.
    assert!(matches!(
        b.publish_message("s", message("k"), at(999), 6).unwrap().0,
        Publication::New(_)
    ));
    assert_eq!(b.publish("r", "ann", "x", at(999)).unwrap().message.seq, 2);
    // Past the window: a new message.
    let later = b
        .publish_message("r", message("k"), at(1_000), 7)
        .unwrap()
        .0;
    assert!(
        matches!(later, Publication::New(ref p) if p.seq == 3),
        "{later:?}"
    );
    // Without a window (publish.dedupe_ms = 0) every publish is new.
    let mut none = broker();
    for seq in 1..=2 {
        let published = none.publish_message("r", message("k"), t0, 1).unwrap().0;
        assert!(matches!(published, Publication::New(ref p) if p.seq == seq));
    }
}
