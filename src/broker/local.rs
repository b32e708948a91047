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
//! The budget finds the room idle longest in an index kept in order (`IdleIndex`: rooms
//! with history, and rooms with neither history nor members, each by last activity then
//! name), so that a publish at the budget costs O(log rooms), not a sort of every room. Every
//! change to a room's last activity, to whether its history is empty, to its occupancy or to
//! whether it is remembered at all must move its index entry (`IdleIndex::update`); the
//! budget checks each room it takes from the index against the room itself before acting.
//!
//! It must not fan out, know sessions, or do I/O: the supervisor delivers what it returns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::local_presence::LocalPresence;
use super::{
    can_resume, unix_ms, Broker, BrokerError, BrokerEvent, BrokerEvents, BrokerStatus, Departure,
    Epoch, EpochChange, JoinRequest, JoinSnapshot, MessageHead, NodeId, Origin, Outgoing, Pending,
    PresenceLimits, PresentName, Publication, Published, Resume, ResumeRequest, Signal,
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
    /// The dedupe keys published within `publish.dedupe_ms`, with their epoch and seq.
    recent: RecentKeys,
}

/// The dedupe keys of one room's recent publishes, each until `publish.dedupe_ms` after it:
/// a map to answer a repeat, and the keys in publish order to expire them (the oldest first).
#[derive(Default)]
struct RecentKeys {
    seqs: HashMap<Box<str>, (Epoch, u64)>,
    order: VecDeque<(Instant, Box<str>)>,
}

impl RecentKeys {
    /// Forgets the keys published `window` or longer before `now`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            self.seqs.remove(key);
            self.order.pop_front();
        }
    }

    /// The epoch and seq `key` was published with, if within the window.
    fn get(&self, key: &str) -> Option<(Epoch, u64)> {
        self.seqs.get(key).cloned()
    }

    fn insert(&mut self, key: &str, epoch: Epoch, seq: u64, now: Instant) {
        if self.seqs.insert(key.into(), (epoch, seq)).is_none() {
            self.order.push_back((now, key.into()));
        }
    }
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
            recent: RecentKeys::default(),
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
    /// Local members per room ([`Broker::join`] / [`Broker::leave`]): the first makes the
    /// room occupied, the last vacant ([`Self::set_occupied`]).
    occupants: HashMap<Arc<str>, usize>,
    /// Events of the last publish, for [`Broker::ready_events`].
    ready: Vec<BrokerEvent>,
    /// `publish.dedupe_ms`: how long a dedupe key marks a repeat (zero: never).
    dedupe: Duration,
    /// This node's name, in the origins of its messages and signals.
    node: NodeId,
    /// Who is in each room (`local_presence.rs`).
    presence: LocalPresence,
    /// `history.snapshot_path`: where [`Broker::flush`] (the end of a drain) writes the
    /// history for the next process (`local_snapshot.rs`).
    snapshot_path: Option<std::path::PathBuf>,
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
            occupants: HashMap::new(),
            ready: Vec::new(),
            dedupe: Duration::ZERO,
            node: fastrand::u64(..),
            presence: LocalPresence::new(PresenceLimits::default()),
            snapshot_path: None,
        }
    }

    /// The same broker, with the history `path` holds (written by a process before this
    /// one), writing it there again at the end of a drain. A file that cannot be trusted is
    /// refused whole with a warn line: the broker starts empty.
    pub fn with_snapshot(mut self, path: std::path::PathBuf) -> Self {
        match self.load_snapshot(&path) {
            Ok(0) => {}
            Ok(rooms) => log::info!("history: {rooms} rooms restored from {}", path.display()),
            Err(err) => log::warn!("history snapshot not used, starting empty: {err}"),
        }
        self.snapshot_path = Some(path);
        self
    }

    /// The same broker, keeping presence as `limits` say (`[presence]`; the default's
    /// otherwise).
    pub fn with_presence(mut self, limits: PresenceLimits) -> Self {
        self.presence = LocalPresence::new(limits);
        self
    }

    /// The same broker, taking a publish whose dedupe key it saw in the room within `window`
    /// (`publish.dedupe_ms`) for a repeat.
    pub fn with_dedupe(mut self, window: Duration) -> Self {
        self.dedupe = window;
        self
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
    /// the history and returns it, with `ts` the current time. A room not seen before (or
    /// forgotten) starts a new epoch. (No dedupe key: see [`Self::publish_message`].)
    pub fn publish(
        &mut self,
        room: &str,
        from: &str,
        text: &str,
        now: Instant,
    ) -> Result<LocalPublish, BrokerError> {
        let message = Outgoing {
            from,
            text,
            dedupe_key: None,
            sent_by: None,
        };
        let (publication, epoch_changes) = self.publish_message(room, message, now, unix_ms())?;
        match publication {
            Publication::New(message) => Ok(LocalPublish {
                message,
                epoch_changes,
            }),
            // Without a dedupe key a publish is never a repeat.
            Publication::Repeat { .. } => Err(BrokerError::Server(
                "a publish without a dedupe key was taken for a repeat".to_owned(),
            )),
        }
    }

    /// Publishes `message` in `room` at `now`, its `ts` being `ts_ms`: the room's next seq,
    /// recorded in the history, unless its dedupe key was published in the room within
    /// `publish.dedupe_ms` ([`Publication::Repeat`], nothing published). Also returns the
    /// rooms whose history the budget dropped.
    pub fn publish_message(
        &mut self,
        room: &str,
        message: Outgoing<'_>,
        now: Instant,
        ts_ms: u64,
    ) -> Result<(Publication, Vec<EpochChange>), BrokerError> {
        let head = MessageHead::new(room, message.from, message.text)?;
        let limits = self.limits;
        let dedupe = self.dedupe;
        let (room_name, log, before) = self.room_mut(room, now);
        let key = message.dedupe_key.filter(|_| !dedupe.is_zero());
        if let Some(key) = key {
            log.recent.expire(now, dedupe);
            if let Some((epoch, seq)) = log.recent.get(key) {
                // Nothing changed; the room's place in the index did not move either.
                return Ok((Publication::Repeat { epoch, seq }, Vec::new()));
            }
        }
        let freed = log.expire(now, limits.ttl);
        log.seq += 1;
        log.last_active = now;
        if let Some(key) = key {
            log.recent.insert(key, log.epoch.clone(), log.seq, now);
        }
        let json = head.finish(log.seq, ts_ms);
        let published = Published {
            room: room_name.clone(),
            epoch: log.epoch.clone(),
            seq: log.seq,
            json: json.clone(),
            sent_by: message.sent_by.cloned(),
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
        Ok((Publication::New(published), epoch_changes))
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
        let request = JoinRequest {
            resume: resume.cloned(),
            last: 0,
        };
        self.join_snapshot(room, &request, now)
    }

    /// [`Self::snapshot`] for a join's whole request: a resume, or (without one) the room's
    /// last `request.last` kept messages ([`Resume::Recent`]).
    pub fn join_snapshot(
        &mut self,
        room: &str,
        request: &JoinRequest,
        now: Instant,
    ) -> JoinSnapshot {
        let ttl = self.limits.ttl;
        let history_on = self.limits.size > 0;
        let (room_name, log, before) = self.room_mut(room, now);
        let freed = log.expire(now, ttl);
        let epoch = log.epoch.clone();
        let seq = log.seq;
        let entry = |entry: &Entry| Published {
            room: room_name.clone(),
            epoch: epoch.clone(),
            seq: entry.seq,
            json: entry.json.clone(),
            sent_by: None,
        };
        let resume = match &request.resume {
            None if request.last > 0 => {
                let skip = log.history.len().saturating_sub(request.last);
                Resume::Recent(log.history.iter().skip(skip).map(entry).collect())
            }
            None => Resume::NotAsked,
            Some(request) => {
                let oldest = log.history.front().map(|entry| entry.seq);
                if can_resume(request, &epoch, seq, oldest, history_on) {
                    let replay = log
                        .history
                        .iter()
                        .filter(|entry| entry.seq > request.since)
                        .map(entry)
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

#[path = "local_seam.rs"]
mod seam;
#[path = "local_snapshot.rs"]
mod snapshot;
pub use snapshot::SnapshotError;
#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
