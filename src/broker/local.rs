//! The embedded default broker: per-room seq and a bounded in-memory history, in this
//! process.
//!
//! [`LocalBroker`] is a plain value the supervisor actor owns and calls synchronously: no
//! locks, no tasks, no clock of its own (every call takes `now`, so tests drive time). It
//! gives each message its seq, keeps the last `history.size` messages of each room (none when
//! 0), drops entries older than `history.ttl_ms`, and keeps all rooms' history under
//! `history.max_bytes` by dropping the history of the rooms idle longest first, which
//! changes their epoch ([`EpochChange`], to be told to their open sessions). Each room's
//! epoch is drawn at random when the room is first seen, so a restart is a new epoch.
//!
//! It must not fan out, know sessions, or do I/O: the supervisor delivers what it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::{
    can_resume, Broker, BrokerError, BrokerEvent, BrokerEvents, BrokerStatus, Epoch, EpochChange,
    JoinSnapshot, MessageHead, Pending, Published, Resume, ResumeRequest,
};
use crate::config::HistorySettings;

/// Bytes counted per history entry besides its JSON (seq, time, queue slot, refcount).
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The history limits (`[history]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Entries kept per room; 0 = none.
    pub size: usize,
    /// Entries older than this are dropped.
    pub ttl: Duration,
    /// All rooms' entries together, counted as JSON length + [`ENTRY_OVERHEAD_BYTES`].
    pub max_bytes: u64,
}

impl From<&HistorySettings> for HistoryLimits {
    fn from(settings: &HistorySettings) -> Self {
        HistoryLimits {
            size: settings.size,
            ttl: Duration::from_millis(settings.ttl_ms),
            max_bytes: settings.max_bytes,
        }
    }
}

struct Entry {
    seq: u64,
    at: Instant,
    json: ByteString,
}

struct RoomLog {
    epoch: Epoch,
    seq: u64,
    history: VecDeque<Entry>,
    /// Bytes of `history`.
    bytes: u64,
    /// The last message, or the room's creation.
    last_active: Instant,
}

impl RoomLog {
    fn new(now: Instant) -> Self {
        RoomLog {
            epoch: Epoch::random(),
            seq: 0,
            history: VecDeque::new(),
            bytes: 0,
            last_active: now,
        }
    }

    /// Drops the oldest entry; returns its bytes.
    fn pop_oldest(&mut self) -> u64 {
        let Some(entry) = self.history.pop_front() else {
            return 0;
        };
        let bytes = entry_bytes(&entry.json);
        self.bytes -= bytes;
        bytes
    }

    /// Drops entries older than `ttl`; returns the bytes freed.
    fn expire(&mut self, now: Instant, ttl: Duration) -> u64 {
        let mut freed = 0;
        while self
            .history
            .front()
            .is_some_and(|entry| now.saturating_duration_since(entry.at) >= ttl)
        {
            freed += self.pop_oldest();
        }
        freed
    }
}

fn entry_bytes(json: &ByteString) -> u64 {
    json.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// What [`LocalBroker::publish`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPublish {
    /// The message with its seq, to fan out to the room.
    pub message: Published,
    /// Rooms whose history was dropped to stay under `history.max_bytes`: tell their open
    /// sessions (an `epoch` frame) before their next message.
    pub epoch_changes: Vec<EpochChange>,
}

/// The in-process broker. See the module doc.
pub struct LocalBroker {
    limits: HistoryLimits,
    rooms: HashMap<Arc<str>, RoomLog>,
    /// Bytes of every room's history.
    bytes: u64,
    /// Local members per room ([`Broker::join`] / [`Broker::leave`]): a room with members is
    /// never forgotten.
    occupants: HashMap<Arc<str>, usize>,
    /// Events of the last publish, for [`Broker::ready_events`].
    ready: Vec<BrokerEvent>,
}

impl LocalBroker {
    /// A broker with no rooms.
    pub fn new(limits: HistoryLimits) -> Self {
        LocalBroker {
            limits,
            rooms: HashMap::new(),
            bytes: 0,
            occupants: HashMap::new(),
            ready: Vec::new(),
        }
    }

    /// Gives a message from `from` in `room` saying `text` the room's next seq, records it in
    /// the history and returns it. A room not seen before (or forgotten) starts a new epoch.
    pub fn publish(
        &mut self,
        room: &str,
        from: &str,
        text: &str,
        now: Instant,
    ) -> Result<LocalPublish, BrokerError> {
        let head = MessageHead::new(room, from, text)?;
        let limits = self.limits;
        let (room_name, log) = self.room_mut(room, now);
        let freed = log.expire(now, limits.ttl);
        log.seq += 1;
        log.last_active = now;
        let json = head.finish(log.seq);
        let message = Published {
            room: room_name.clone(),
            epoch: log.epoch.clone(),
            seq: log.seq,
            json: json.clone(),
        };
        let mut added = 0;
        let mut trimmed = freed;
        if limits.size > 0 {
            added = entry_bytes(&json);
            log.history.push_back(Entry {
                seq: log.seq,
                at: now,
                json,
            });
            log.bytes += added;
            while log.history.len() > limits.size {
                trimmed += log.pop_oldest();
            }
        }
        self.bytes = self.bytes + added - trimmed;
        let epoch_changes = self.evict_over_budget(&room_name);
        Ok(LocalPublish {
            message,
            epoch_changes,
        })
    }

    /// The room as a session joining it now sees it, with the outcome of its resume request:
    /// the replayed entries are every message after `since`, in order. Creates the room (and
    /// its epoch) if it is new, so that the welcome's epoch is the one its messages carry.
    pub fn snapshot(
        &mut self,
        room: &str,
        resume: Option<&ResumeRequest>,
        now: Instant,
    ) -> JoinSnapshot {
        let ttl = self.limits.ttl;
        let history_on = self.limits.size > 0;
        let (room_name, log) = self.room_mut(room, now);
        let freed = log.expire(now, ttl);
        let epoch = log.epoch.clone();
        let seq = log.seq;
        let resume = match resume {
            None => Resume::NotAsked,
            Some(request) => {
                let oldest = log.history.front().map(|entry| entry.seq);
                if can_resume(request, &epoch, seq, oldest, history_on) {
                    let replay = log
                        .history
                        .iter()
                        .filter(|entry| entry.seq > request.since)
                        .map(|entry| Published {
                            room: room_name.clone(),
                            epoch: epoch.clone(),
                            seq: entry.seq,
                            json: entry.json.clone(),
                        })
                        .collect();
                    Resume::Resumed(replay)
                } else {
                    Resume::NotResumed
                }
            }
        };
        self.bytes -= freed;
        JoinSnapshot {
            room: room_name,
            epoch,
            seq,
            resume,
        }
    }

    /// Drops history entries older than the ttl in every room, and forgets rooms with no
    /// history left that have been idle for the ttl, unless `keep` says the room still has
    /// members (a forgotten room starts a new epoch). Returns how many rooms were forgotten.
    /// Call it now and then (e.g. every minute) from the supervisor.
    pub fn sweep(&mut self, now: Instant, keep: impl Fn(&str) -> bool) -> usize {
        let ttl = self.limits.ttl;
        let mut freed = 0;
        let before = self.rooms.len();
        self.rooms.retain(|name, log| {
            freed += log.expire(now, ttl);
            !log.history.is_empty()
                || now.saturating_duration_since(log.last_active) < ttl
                || keep(name)
        });
        self.bytes -= freed;
        before - self.rooms.len()
    }

    /// The room's epoch and latest seq, if the broker knows the room.
    pub fn room(&self, room: &str) -> Option<(Epoch, u64)> {
        self.rooms.get(room).map(|log| (log.epoch.clone(), log.seq))
    }

    /// Bytes of all rooms' history, as counted against `history.max_bytes`.
    pub fn history_bytes(&self) -> u64 {
        self.bytes
    }

    /// Rooms the broker knows.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    fn room_mut(&mut self, room: &str, now: Instant) -> (Arc<str>, &mut RoomLog) {
        let name = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        let log = self
            .rooms
            .entry(name.clone())
            .or_insert_with(|| RoomLog::new(now));
        (name, log)
    }

    /// Past `max_bytes`, drops whole histories of the rooms idle longest (not `current`),
    /// each getting a new epoch; if `current` alone is still over, trims its oldest entries.
    fn evict_over_budget(&mut self, current: &Arc<str>) -> Vec<EpochChange> {
        let mut changes = Vec::new();
        if self.bytes <= self.limits.max_bytes {
            return changes;
        }
        let mut idle: Vec<(Instant, Arc<str>)> = self
            .rooms
            .iter()
            .filter(|(name, log)| *name != current && !log.history.is_empty())
            .map(|(name, log)| (log.last_active, name.clone()))
            .collect();
        idle.sort_unstable();
        for (_, name) in idle {
            if self.bytes <= self.limits.max_bytes {
                break;
            }
            if let Some(log) = self.rooms.get_mut(&name) {
                self.bytes -= log.bytes;
                log.history.clear();
                log.bytes = 0;
                log.epoch = Epoch::random();
                log.log_eviction(&name);
                changes.push(EpochChange {
                    room: name.clone(),
                    epoch: log.epoch.clone(),
                    seq: log.seq,
                });
            }
        }
        if let Some(log) = self.rooms.get_mut(current) {
            while self.bytes > self.limits.max_bytes && !log.history.is_empty() {
                self.bytes -= log.pop_oldest();
            }
        }
        changes
    }
}

impl Broker for LocalBroker {
    fn status(&self) -> BrokerStatus {
        BrokerStatus::always_up()
    }

    fn take_event_stream(&mut self) -> Option<BrokerEvents> {
        None
    }

    fn join(&mut self, room: &Arc<str>, resume: Option<ResumeRequest>) -> Pending<JoinSnapshot> {
        *self.occupants.entry(room.clone()).or_default() += 1;
        Pending::Ready(Ok(self.snapshot(room, resume.as_ref(), Instant::now())))
    }

    fn leave(&mut self, room: &Arc<str>) {
        if let Some(count) = self.occupants.get_mut(room) {
            *count -= 1;
            if *count == 0 {
                self.occupants.remove(room);
            }
        }
    }

    fn read_since(&mut self, room: &Arc<str>, request: ResumeRequest) -> Pending<JoinSnapshot> {
        Pending::Ready(Ok(self.snapshot(room, Some(&request), Instant::now())))
    }

    fn publish(&mut self, room: &Arc<str>, from: &str, text: &str) -> Pending<Published> {
        let published = LocalBroker::publish(self, room, from, text, Instant::now()).map(|out| {
            self.ready
                .extend(out.epoch_changes.into_iter().map(BrokerEvent::EpochChanged));
            self.ready.push(BrokerEvent::Message(out.message.clone()));
            out.message
        });
        Pending::Ready(published)
    }

    fn ready_events(&mut self, out: &mut Vec<BrokerEvent>) {
        out.append(&mut self.ready);
    }

    fn maintain(&mut self) {
        let occupants = std::mem::take(&mut self.occupants);
        let forgotten = self.sweep(Instant::now(), |room| occupants.contains_key(room));
        self.occupants = occupants;
        if forgotten > 0 {
            log::debug!("history: {forgotten} idle rooms forgotten");
        }
    }
}

impl RoomLog {
    fn log_eviction(&self, room: &str) {
        log::info!(
            "room {room}: history dropped to stay under history.max_bytes; new epoch {}",
            self.epoch
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let p = b.publish("a", "ann", "x", now).unwrap().message;
            assert_eq!(p.seq, expected);
            assert_eq!(
                &*p.json,
                format!(
                    r#"{{"type":"message","room":"a","from":"ann","text":"x","seq":{expected}}}"#
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
                    assert!(p.json.ends_with(&format!("\"seq\":{}}}", p.seq)));
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
        let one = entry_bytes(&MessageHead::new("a", "ann", "x").unwrap().finish(1));
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
        let one = entry_bytes(&MessageHead::new("a", "ann", "x").unwrap().finish(1));
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
}
