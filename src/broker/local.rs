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
//! With [`LocalBroker::with_room_overhead`], the budget also counts [`ROOM_OVERHEAD_BYTES`]
//! per remembered room and, when over, first forgets the rooms idle longest that have
//! neither history nor members (the supervisor says which rooms have members:
//! [`LocalBroker::set_occupied`]); a room with members is never forgotten.
//!
//! The budget finds the room idle longest in an index kept in order ([`IdleIndex`]: rooms
//! with history, and rooms with neither history nor members, each by last activity then
//! name), so that a publish at the budget costs O(log rooms), not a sort of every room. Every
//! change to a room's last activity, to whether its history is empty, to its occupancy or to
//! whether it is remembered at all must move its index entry ([`IdleIndex::update`]); the
//! budget checks each room it takes from the index against the room itself before acting.
//!
//! It must not fan out, know sessions, or do I/O: the supervisor delivers what it returns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::{
    can_resume, BrokerError, Epoch, EpochChange, JoinSnapshot, MessageHead, Published, Resume,
    ResumeRequest,
};
use crate::config::HistorySettings;

/// Bytes counted per history entry besides its JSON (seq, time, queue slot, refcount).
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The approximate cost of a remembered room besides its history: its name, epoch, seq and
/// empty queue, its hash-map slot and its index entry. Passed to
/// [`LocalBroker::with_room_overhead`], it is counted against `history.max_bytes` for every
/// room the broker remembers, which caps the number of rooms it keeps.
pub const ROOM_OVERHEAD_BYTES: u64 = 256;

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
    /// Whether the room has local members, as the supervisor last said
    /// ([`LocalBroker::set_occupied`]): such a room is never forgotten.
    occupied: bool,
}

impl RoomLog {
    fn new(now: Instant) -> Self {
        RoomLog {
            epoch: Epoch::random(),
            seq: 0,
            history: VecDeque::new(),
            bytes: 0,
            last_active: now,
            occupied: false,
        }
    }

    /// Where the room belongs in the [`IdleIndex`]: a room with history may lose it to the
    /// budget, a room with neither history nor members may be forgotten, an occupied room
    /// without history is out of the budget's reach.
    fn idle_slot(&self) -> IdleSlot {
        if !self.history.is_empty() {
            Some((IdleList::WithHistory, self.last_active))
        } else if !self.occupied {
            Some((IdleList::Vacant, self.last_active))
        } else {
            None
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

    /// Drops the whole history under a new epoch; returns the bytes freed.
    fn drop_history(&mut self) -> u64 {
        let freed = self.bytes;
        self.history.clear();
        self.bytes = 0;
        self.epoch = Epoch::random();
        freed
    }

    fn log_eviction(&self, room: &str) {
        log::info!(
            "room {room}: history dropped to stay under history.max_bytes; new epoch {}",
            self.epoch
        );
    }
}

fn entry_bytes(json: &ByteString) -> u64 {
    json.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// The two orders the budget takes rooms in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleList {
    /// Rooms with history: the budget may drop it (a new epoch).
    WithHistory,
    /// Rooms with neither history nor members: the budget may forget them.
    Vacant,
}

/// A room's place in the [`IdleIndex`] (its list and last activity; its name completes the
/// key), or `None` when the budget cannot act on it.
type IdleSlot = Option<(IdleList, Instant)>;

/// A key of the [`IdleIndex`]: last activity, then name. Equal instants go to the smaller
/// name first, as the sort this index replaced did.
type IdleKey = (Instant, Arc<str>);

/// The rooms the budget may act on, in the order it takes them: the first key of a list is
/// its room idle longest. Holds exactly one key per room whose [`RoomLog::idle_slot`] is
/// `Some`, in that slot's list; nothing else.
#[derive(Default)]
struct IdleIndex {
    with_history: BTreeSet<IdleKey>,
    vacant: BTreeSet<IdleKey>,
}

impl IdleIndex {
    fn list(&self, list: IdleList) -> &BTreeSet<IdleKey> {
        match list {
            IdleList::WithHistory => &self.with_history,
            IdleList::Vacant => &self.vacant,
        }
    }

    fn list_mut(&mut self, list: IdleList) -> &mut BTreeSet<IdleKey> {
        match list {
            IdleList::WithHistory => &mut self.with_history,
            IdleList::Vacant => &mut self.vacant,
        }
    }

    /// Moves room `name` from the slot it had (`before`) to the one it has now (`after`).
    fn update(&mut self, name: &Arc<str>, before: IdleSlot, after: IdleSlot) {
        if before == after {
            return;
        }
        if let Some((list, at)) = before {
            self.list_mut(list).remove(&(at, name.clone()));
        }
        if let Some((list, at)) = after {
            self.list_mut(list).insert((at, name.clone()));
        }
    }

    /// The key of the room idle longest in `list`, other than `except` (the room being
    /// published to or joined, which the budget leaves alone).
    fn idlest(&self, list: IdleList, except: &str) -> Option<IdleKey> {
        // `except` is at most one key, so this looks at two keys at most.
        self.list(list)
            .iter()
            .find(|(_, name)| &**name != except)
            .cloned()
    }
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
    /// Bytes counted against `history.max_bytes` per remembered room (0: rooms are not
    /// counted, and the budget never forgets one).
    room_overhead: u64,
    rooms: HashMap<Arc<str>, RoomLog>,
    /// The rooms the budget may act on, idle longest first.
    index: IdleIndex,
    /// Bytes of every room's history.
    bytes: u64,
}

impl LocalBroker {
    /// A broker with no rooms, whose budget counts history only.
    pub fn new(limits: HistoryLimits) -> Self {
        LocalBroker {
            limits,
            room_overhead: 0,
            rooms: HashMap::new(),
            index: IdleIndex::default(),
            bytes: 0,
        }
    }

    /// The same broker, counting `bytes_per_room` ([`ROOM_OVERHEAD_BYTES`] in production)
    /// against `history.max_bytes` for every room it remembers. When over, the budget then
    /// forgets the rooms idle longest that have neither history nor members before it drops
    /// any room's history: such a room is worth less than any history (nobody is in it, and
    /// there is nothing to replay). This needs the supervisor's [`Self::set_occupied`] calls,
    /// since a room not marked occupied counts as having no members.
    pub fn with_room_overhead(mut self, bytes_per_room: u64) -> Self {
        self.room_overhead = bytes_per_room;
        self
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
        let (room_name, log, before) = self.room_mut(room, now);
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
        let after = log.idle_slot();
        self.index.update(&room_name, before, after);
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
        let (room_name, log, before) = self.room_mut(room, now);
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
        let after = log.idle_slot();
        self.index.update(&room_name, before, after);
        self.bytes -= freed;
        // A new room counts against the budget: make room by forgetting vacant rooms only,
        // since a dropped history's epoch change could not be told from here.
        self.forget_over_budget(&room_name);
        JoinSnapshot {
            room: room_name,
            epoch,
            seq,
            resume,
        }
    }

    /// Drops history entries older than the ttl in every room, and forgets rooms with no
    /// history left that have been idle for the ttl, unless the room is occupied
    /// ([`Self::set_occupied`]) or `keep` says it still has members (a forgotten room starts
    /// a new epoch). Returns how many rooms were forgotten. Call it now and then (e.g. every
    /// minute) from the supervisor.
    pub fn sweep(&mut self, now: Instant, keep: impl Fn(&str) -> bool) -> usize {
        let ttl = self.limits.ttl;
        let mut freed = 0;
        let before = self.rooms.len();
        let index = &mut self.index;
        self.rooms.retain(|name, log| {
            let slot_before = log.idle_slot();
            freed += log.expire(now, ttl);
            let remembered = !log.history.is_empty()
                || now.saturating_duration_since(log.last_active) < ttl
                || log.occupied
                || keep(name);
            let slot_after = if remembered { log.idle_slot() } else { None };
            index.update(name, slot_before, slot_after);
            remembered
        });
        self.bytes -= freed;
        before - self.rooms.len()
    }

    /// Tells the broker whether `room` has local members: call it with `true` when a room
    /// gets its first member (after the join's [`Self::snapshot`], which creates the room),
    /// and with `false` when its last member leaves. An occupied room is never forgotten, by
    /// the budget or by [`Self::sweep`]; its history can still be dropped (a new epoch). A
    /// room the broker does not know is left unknown.
    pub fn set_occupied(&mut self, room: &str, occupied: bool) {
        let Some(name) = self.rooms.get_key_value(room).map(|(name, _)| name.clone()) else {
            return;
        };
        self.change_room(&name, |log| log.occupied = occupied);
    }

    /// The room's epoch and latest seq, if the broker knows the room.
    pub fn room(&self, room: &str) -> Option<(Epoch, u64)> {
        self.rooms.get(room).map(|log| (log.epoch.clone(), log.seq))
    }

    /// Bytes of all rooms' history, as counted against `history.max_bytes`.
    pub fn history_bytes(&self) -> u64 {
        self.bytes
    }

    /// Everything counted against `history.max_bytes`: [`Self::history_bytes`] plus the
    /// per-room overhead ([`Self::with_room_overhead`]) of every remembered room.
    pub fn budget_bytes(&self) -> u64 {
        let rooms = self.rooms.len() as u64;
        self.bytes
            .saturating_add(self.room_overhead.saturating_mul(rooms))
    }

    /// Rooms the broker knows.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The room named `room`, created at `now` if new, with its index slot before the
    /// caller's change (`None` for a new room, which is not in the index yet). The caller
    /// must pass the slot the room has after its change to [`IdleIndex::update`].
    fn room_mut(&mut self, room: &str, now: Instant) -> (Arc<str>, &mut RoomLog, IdleSlot) {
        let name = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        let mut created = false;
        let log = self.rooms.entry(name.clone()).or_insert_with(|| {
            created = true;
            RoomLog::new(now)
        });
        let before = if created { None } else { log.idle_slot() };
        (name, log, before)
    }

    /// Applies `change` to a known room and moves its index entry accordingly.
    fn change_room<R>(
        &mut self,
        name: &Arc<str>,
        change: impl FnOnce(&mut RoomLog) -> R,
    ) -> Option<R> {
        let log = self.rooms.get_mut(name)?;
        let before = log.idle_slot();
        let result = change(log);
        let after = log.idle_slot();
        self.index.update(name, before, after);
        Some(result)
    }

    fn over_budget(&self) -> bool {
        self.budget_bytes() > self.limits.max_bytes
    }

    /// Past `max_bytes`, forgets the rooms idle longest with neither history nor members
    /// (when rooms are counted), then drops whole histories of the rooms idle longest, each
    /// getting a new epoch; never `current`'s. If `current` alone is still over, trims its
    /// oldest entries.
    fn evict_over_budget(&mut self, current: &Arc<str>) -> Vec<EpochChange> {
        let mut changes = Vec::new();
        loop {
            self.forget_over_budget(current);
            if !self.over_budget() {
                break;
            }
            let Some(name) = self.idlest(IdleList::WithHistory, current) else {
                break;
            };
            let dropped = self.change_room(&name, |log| {
                let freed = log.drop_history();
                log.log_eviction(&name);
                (freed, log.epoch.clone(), log.seq)
            });
            if let Some((freed, epoch, seq)) = dropped {
                self.bytes -= freed;
                changes.push(EpochChange {
                    room: name,
                    epoch,
                    seq,
                });
            }
        }
        let excess = self.budget_bytes().saturating_sub(self.limits.max_bytes);
        if excess > 0 {
            let trimmed = self.change_room(current, |log| {
                let mut trimmed = 0;
                while trimmed < excess && !log.history.is_empty() {
                    trimmed += log.pop_oldest();
                }
                trimmed
            });
            self.bytes -= trimmed.unwrap_or(0);
        }
        changes
    }

    /// Past `max_bytes` with rooms counted, forgets the rooms idle longest (not `current`)
    /// that have neither history nor members: no one is told, and the room's next message
    /// or join starts a new epoch.
    fn forget_over_budget(&mut self, current: &Arc<str>) {
        if self.room_overhead == 0 {
            return;
        }
        while self.over_budget() {
            let Some(name) = self.idlest(IdleList::Vacant, current) else {
                return;
            };
            if let Some(log) = self.rooms.remove(&name) {
                self.index.update(&name, log.idle_slot(), None);
                self.bytes -= log.bytes;
                log::debug!("room {name}: forgotten to stay under history.max_bytes");
            }
        }
    }

    /// The room idle longest in `list`, other than `current`. An index key that does not
    /// match its room (a bug) is dropped and logged rather than acted on: the budget's loops
    /// end, and a room with members is never forgotten on the index's word alone.
    fn idlest(&mut self, list: IdleList, current: &str) -> Option<Arc<str>> {
        loop {
            let (at, name) = self.index.idlest(list, current)?;
            if self.rooms.get(&name).and_then(RoomLog::idle_slot) == Some((list, at)) {
                return Some(name);
            }
            log::error!("history index: room {name} is not where its entry says; entry dropped");
            self.index.list_mut(list).remove(&(at, name));
        }
    }

    /// Test only: asserts the index holds exactly the rooms' slots and the byte counts are
    /// the sums they stand for.
    #[cfg(test)]
    fn check_index(&self) {
        let mut with_history = BTreeSet::new();
        let mut vacant = BTreeSet::new();
        let mut bytes = 0;
        for (name, log) in &self.rooms {
            let entries: u64 = log
                .history
                .iter()
                .map(|entry| entry_bytes(&entry.json))
                .sum();
            assert_eq!(log.bytes, entries, "room {name}: its bytes");
            bytes += log.bytes;
            match log.idle_slot() {
                Some((IdleList::WithHistory, at)) => with_history.insert((at, name.clone())),
                Some((IdleList::Vacant, at)) => vacant.insert((at, name.clone())),
                None => false,
            };
        }
        assert_eq!(self.bytes, bytes, "history bytes");
        assert_eq!(self.index.with_history, with_history, "rooms with history");
        assert_eq!(self.index.vacant, vacant, "vacant rooms");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    #[test]
    fn equally_idle_rooms_lose_their_history_in_name_order() {
        // The order of the sort the index replaced: last activity, then name.
        let t0 = Instant::now();
        let one = entry_bytes(&MessageHead::new("a", "ann", "x").unwrap().finish(1));
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
        let one = entry_bytes(&MessageHead::new("a", "ann", "x").unwrap().finish(1));
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
        use crate::broker::MessageHead;

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
                        .finish(room.seq);
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
}
