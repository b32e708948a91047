//! The broker seam: what the supervisor asks of wherever a room's order and history live,
//! as one interface both brokers implement ([`Broker`]), with the types it speaks in.
//!
//! A broker gives each room message its `seq` (per room, from 1, no gap), keeps a bounded
//! history per room for resume, names that history with an [`Epoch`], and delivers every
//! message to the room's members in `seq` order, as [`BrokerEvent`]s. Two implementations:
//!
//! - [`local::LocalBroker`], the default: one process, synchronous, called from inside the
//!   supervisor actor (no locks, no I/O): its answers are [`Pending::Ready`], its events are
//!   there to take at once ([`Broker::ready_events`]).
//! - [`redis::RedisBroker`]: rooms shared by every node on one Redis. Its answers are futures
//!   ([`Pending::Later`]); messages of every node (this one's included) come back on its
//!   event stream ([`Broker::take_event_stream`]).
//!
//! The supervisor never asks which one it has. This module owns the shared types and the
//! pure resume rule both brokers apply ([`can_resume`]). It must not know about actix,
//! sessions or sockets.

pub mod control;
pub mod local;
mod local_presence;
pub mod presence;
pub mod redis;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use futures::future::LocalBoxFuture;

use crate::protocol::{epoch_json, FrameError};

pub use crate::protocol::MessageHead;
pub use control::{page_of, Control, Disconnect, HistoryPage};
pub use local::LocalBroker;
pub use presence::{PresenceChange, PresentName};
pub use redis::RedisBroker;

/// The name of one room's history. It changes only when the history was lost (the local
/// broker's process restarted, the local broker evicted the room's history, or Redis lost
/// the room). Opaque to clients: they echo it back as `epoch=` when they resume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(ByteString);

impl Epoch {
    /// A new epoch: 16 lowercase hex characters, different on every call and in every
    /// process (not a secret: a per-process random key mixed with the time and a counter).
    pub fn random() -> Epoch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        Epoch(ByteString::from(format!("{:016x}", hasher.finish())))
    }

    /// An epoch as stored or as a client sent it (`epoch=` of a resume).
    pub fn new(epoch: impl Into<ByteString>) -> Epoch {
        Epoch(epoch.into())
    }

    /// The epoch's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room message that has its `seq`: what every member of the room is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The room.
    pub room: Arc<str>,
    /// The room's epoch the message belongs to.
    pub epoch: Epoch,
    /// The message's seq in its room and epoch, from 1.
    pub seq: u64,
    /// The exact `{"type":"message","room":R,"from":F,"text":T,"seq":N,"ts":MS}` frame text,
    /// shared by every recipient.
    pub json: ByteString,
    /// The session that sent it and the id its own copy carries (a `wsgrace.v2` publish with
    /// an `id`), when known: set on live messages, not on history.
    pub sent_by: Option<SentBy>,
}

/// A node of a cluster, named at random when its broker starts.
pub type NodeId = u64;

/// A session on a node: where a message or a signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The node.
    pub node: NodeId,
    /// The session, on that node.
    pub session: u64,
}

/// A message's sender and the id its own copy carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBy {
    /// The sender.
    pub origin: Origin,
    /// The client's message id (1-64 characters of `[A-Za-z0-9_.-]`).
    pub id: Arc<str>,
}

/// A message to publish in a room.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The sender's name (`from`).
    pub from: &'a str,
    /// The text.
    pub text: &'a str,
    /// Names the message for `publish.dedupe_ms`: a publish with the same key in the same
    /// room within that time is not published again ([`Publication::Repeat`]).
    pub dedupe_key: Option<&'a str>,
    /// The sender and the id its copy carries.
    pub sent_by: Option<&'a SentBy>,
}

/// What a publish came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// The message got its seq (and reaches the room's members as an event).
    New(Published),
    /// Its dedupe key was seen within `publish.dedupe_ms`: nothing was published; this is
    /// the first one's epoch and seq.
    Repeat {
        /// The epoch the first one was published in.
        epoch: Epoch,
        /// Its seq.
        seq: u64,
    },
}

/// A `signal`: no seq, not kept, to the room's members on every node but its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The room.
    pub room: Arc<str>,
    /// The `{"type":"signal","room":R,"from":F,"text":T}` frame.
    pub json: ByteString,
    /// Its sender, who does not get it.
    pub origin: Origin,
}

/// How a member's presence in a room ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// For good (a normal close, a v2 `leave`, a kick): gone at once.
    Now,
    /// Gone without leaving (a drain's `going_away`, a dropped connection): still present
    /// for this long, so that its client can come back, on any node, unseen.
    Keep(Duration),
}

/// A name arrived in a room with members on this node, or is gone from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The room.
    pub room: Arc<str>,
    /// What changed.
    pub change: PresenceChange,
    /// The session whose join made the name arrive (it is not told of its own arrival).
    pub origin: Option<Origin>,
}

/// What the brokers need of `[presence]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Rooms know who is in them; false: nobody is listed, nothing is sent.
    pub enabled: bool,
    /// Arrivals and departures are told to the room (`presence.events`).
    pub events: bool,
    /// No event in a room with more names present than this.
    pub events_max_members: usize,
    /// With Redis: a node's lease on its members' presence.
    pub ttl: Duration,
}

impl PresenceLimits {
    /// Whether a change in a room where `present` names are (counting the one that arrives
    /// or leaves) is told.
    pub fn tells(&self, present: usize) -> bool {
        self.enabled && self.events && present <= self.events_max_members
    }
}

impl From<&crate::config::PresenceSettings> for PresenceLimits {
    fn from(settings: &crate::config::PresenceSettings) -> Self {
        PresenceLimits {
            enabled: settings.enabled,
            events: settings.events,
            events_max_members: settings.events_max_members,
            ttl: Duration::from_millis(settings.ttl_ms),
        }
    }
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits::from(&crate::config::PresenceSettings::default())
    }
}

/// What a joining member asks of the room's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinRequest {
    /// Resume after `since` (of `epoch`).
    pub resume: Option<ResumeRequest>,
    /// Without a resume: the room's last this many kept messages (v2 `last`).
    pub last: usize,
}

/// Milliseconds since the Unix epoch now, for a message's `ts`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A joining session's wish to resume: the `since` and `epoch` of its upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The last seq the client saw in the room.
    pub since: u64,
    /// The epoch its welcome carried, if it sent one.
    pub epoch: Option<Epoch>,
}

/// What a join's resume request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The join did not ask to resume (no `since`): the welcome carries no `resumed`.
    NotAsked,
    /// `"resumed":true,"missed":K`: these K messages, `since`+1 ..= the snapshot's seq, in
    /// order, are to be sent right after the welcome.
    Resumed(Vec<Published>),
    /// `"resumed":false`: history trimmed, another epoch, `since` ahead of the room, or no
    /// history kept. Nothing is replayed.
    NotResumed,
    /// A join that asked for the last K messages (v2 `last`): these, oldest first (fewer
    /// when fewer are kept), are sent after the answer; it says nothing of a resume.
    Recent(Vec<Published>),
}

/// A room as a joining session first sees it: the welcome's epoch and seq, and the resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSnapshot {
    /// The room.
    pub room: Arc<str>,
    /// The room's epoch.
    pub epoch: Epoch,
    /// The room's latest seq (0 for a room without messages in this epoch).
    pub seq: u64,
    /// The outcome of the session's resume request.
    pub resume: Resume,
}

impl JoinSnapshot {
    /// The count of replayed messages if resumed (for `"missed":K` and the metrics).
    pub fn missed(&self) -> Option<u64> {
        match &self.resume {
            Resume::Resumed(entries) => Some(entries.len() as u64),
            Resume::NotAsked | Resume::NotResumed | Resume::Recent(_) => None,
        }
    }
}

/// A room's history was lost while sessions may be open in it: from now on its epoch is
/// `epoch` and its seqs continue from `seq` + 1. The supervisor sends each member the
/// [`EpochChange::to_json`] frame before any message of the new epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochChange {
    /// The room.
    pub room: Arc<str>,
    /// Its new epoch.
    pub epoch: Epoch,
    /// The seq after which its messages continue.
    pub seq: u64,
}

impl EpochChange {
    /// The `{"type":"epoch","room":R,"epoch":E,"seq":N}` frame.
    pub fn to_json(&self) -> Result<ByteString, BrokerError> {
        Ok(epoch_json(&self.room, self.epoch.as_str(), self.seq)?)
    }
}

/// Why a broker could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached (down, reconnecting, or its queue is full): the message
    /// was refused and reached nobody; the sender gets `{"type":"error","code":"unavailable"}`.
    #[error("the broker is unavailable")]
    Unavailable,
    /// The connection broke while the message was in flight: it may or may not have been
    /// delivered. Treated like [`BrokerError::Unavailable`] towards the sender.
    #[error("the broker connection broke with the request in flight")]
    Interrupted,
    /// A broker URL that is not `redis://` or `rediss://` (the URL is never in the text, as it
    /// may hold a password).
    #[error("bad broker URL: {0}")]
    BadUrl(String),
    /// The broker answered with an error, or with something this code does not understand.
    #[error("broker error: {0}")]
    Server(String),
    /// A message could not be encoded as JSON.
    #[error("encoding a message failed: {0}")]
    Encode(String),
    /// The broker has stopped (its task ended); it will not come back.
    #[error("the broker has stopped")]
    Stopped,
}

impl From<FrameError> for BrokerError {
    fn from(err: FrameError) -> Self {
        BrokerError::Encode(err.0)
    }
}

/// The resume rule of the SPEC, for a room at `epoch` whose latest seq is `seq` and whose
/// history's oldest entry is `oldest` (`None`: empty), holding every message from it to
/// `seq`. With `history_on` false (`history.size = 0`) nothing is ever resumed.
///
/// Resumed when `since` == `seq` (nothing missed), or `since` < `seq` and the history
/// reaches back to `since` + 1; never when `since` > `seq` or the request names another
/// epoch.
pub fn can_resume(
    request: &ResumeRequest,
    epoch: &Epoch,
    seq: u64,
    oldest: Option<u64>,
    history_on: bool,
) -> bool {
    if !history_on || request.epoch.as_ref().is_some_and(|asked| asked != epoch) {
        return false;
    }
    if request.since >= seq {
        return request.since == seq;
    }
    oldest.is_some_and(|oldest| oldest <= request.since + 1)
}

/// Whether the broker is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Not connected (yet, or any more): upgrades and `/readyz` answer 503, messages are
    /// refused.
    Down,
    /// Connected and subscribed.
    Up,
}

/// What a broker tells the supervisor, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A message of a room with members on this node (from any node, this one included), in
    /// seq order.
    Message(Published),
    /// A room's history was lost (Redis restarted empty, the room expired, or the local
    /// broker dropped it to stay in its budget): tell its open sessions with an `epoch` frame.
    /// Comes before any message of the new epoch. Found on a reconnect, its `seq` is 0 (the
    /// new epoch's messages published meanwhile are in the history, to be read after
    /// [`BrokerHealth::Up`]); seen on a live message, it is that message's seq less one.
    EpochChanged(EpochChange),
    /// A signal of a room with members on this node.
    Signal(Signal),
    /// A name arrived in a room with members on this node, or is gone from it.
    Presence(PresenceEvent),
    /// An order of the server API, given on any node (this one included), for this node's
    /// sessions.
    Control(Control),
    /// The broker went up or down.
    Health(BrokerHealth),
}

/// The receiving end of a broker's [`BrokerEvent`]s that arrive by themselves (an actix actor
/// can `add_stream` it).
pub type BrokerEvents = futures::channel::mpsc::Receiver<BrokerEvent>;

/// Whether the broker can be reached, for `/readyz` and upgrades: always with the local
/// broker; with Redis, while it is connected. Cheap to clone and to ask from any thread.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Option<tokio::sync::watch::Receiver<BrokerHealth>>);

impl BrokerStatus {
    /// A broker that is always up (one in this process).
    pub fn always_up() -> Self {
        BrokerStatus(None)
    }

    /// A broker whose health `health` follows.
    pub fn following(health: tokio::sync::watch::Receiver<BrokerHealth>) -> Self {
        BrokerStatus(Some(health))
    }

    /// Whether the broker is up now.
    pub fn is_up(&self) -> bool {
        match &self.0 {
            None => true,
            Some(health) => *health.borrow() == BrokerHealth::Up,
        }
    }
}

/// A broker's answer: now (the local broker), or a future that answers later (Redis).
pub enum Pending<T> {
    /// The answer.
    Ready(Result<T, BrokerError>),
    /// The answer to come.
    Later(LocalBoxFuture<'static, Result<T, BrokerError>>),
}

/// What the supervisor asks of a broker. Every call is made from the supervisor's actor, in
/// the order its inputs arrive; see the module docs.
pub trait Broker {
    /// Whether it can be reached, for `/readyz` and upgrades.
    fn status(&self) -> BrokerStatus;

    /// This node's name among the nodes that share the broker.
    fn node(&self) -> NodeId;

    /// The events that arrive by themselves (messages from other nodes, epoch changes,
    /// health), once; `None` for a broker that has none.
    fn take_event_stream(&mut self) -> Option<BrokerEvents>;

    /// A member of this node joins `room`: from now on the room's messages reach this node
    /// as events (with Redis: once the first member's SUBSCRIBE is confirmed, which comes
    /// before the answer), and the answer is the room as the member first sees it, with the
    /// outcome of its resume request. Every call is matched by one [`Broker::leave`],
    /// whatever the answer.
    fn join(&mut self, room: &Arc<str>, request: JoinRequest) -> Pending<JoinSnapshot>;

    /// A member of this node left `room` (after the last one, the node no longer follows it).
    fn leave(&mut self, room: &Arc<str>);

    /// The room's history after `request` (a catch-up after a reconnect), without joining.
    fn read_since(&mut self, room: &Arc<str>, request: ResumeRequest) -> Pending<JoinSnapshot>;

    /// Gives `message` the room's next seq, atomically with its dedupe key (a repeat within
    /// `publish.dedupe_ms` is not published: [`Publication::Repeat`]); the answer is the
    /// message as published. The message itself reaches the room's members as a
    /// [`BrokerEvent::Message`] (with the epoch changes it caused before it): at once from
    /// [`Broker::ready_events`], or later on the event stream. A refusal
    /// ([`BrokerError::Unavailable`]) means it reached nobody.
    fn publish(&mut self, room: &Arc<str>, message: Outgoing<'_>) -> Pending<Publication>;

    /// Sends `signal` to its room's members on every node (as [`BrokerEvent::Signal`]): no
    /// seq, not kept, at most once.
    fn signal(&mut self, signal: Signal) -> Pending<()>;

    /// A member of this node named `name` is now in `room` (its join was answered):
    /// presence counts one more connection of the name, and the room is told when it is the
    /// name's first ([`BrokerEvent::Presence`], on every node, `origin` not told).
    fn presence_join(&mut self, room: &Arc<str>, name: &str, origin: Origin);

    /// A member of this node named `name`, joined with [`Broker::presence_join`], is no
    /// longer in `room`: one connection less, at once or after `departure`'s time; the room is
    /// told when it was the name's last.
    fn presence_leave(&mut self, room: &Arc<str>, name: &str, origin: Origin, departure: Departure);

    /// Who is in `room`, on every node, by name.
    fn presence(&mut self, room: &Arc<str>) -> Pending<Vec<PresentName>>;

    /// What `[presence]` says (which rooms are told of changes).
    fn presence_limits(&self) -> PresenceLimits;

    /// Ends the presence of the members of `room` whose time ran out (the supervisor calls it
    /// when a [`Departure::Keep`] it asked for is over; any presence call does it too).
    fn presence_sweep(&mut self, room: &Arc<str>);

    /// This node's members of `room` are exactly `counts` (name, connections): after the
    /// broker was unreachable, what it knew is set right (it may have lost it all).
    fn presence_restore(&mut self, room: &Arc<str>, counts: Vec<(Arc<str>, u32)>);

    /// A page of `room`'s kept history: the messages after `since` (`None`: from the oldest
    /// kept), oldest first, at most `limit`; with the room's epoch and latest seq (a room
    /// never seen gets its epoch, as a join would).
    fn history(
        &mut self,
        room: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> Pending<HistoryPage>;

    /// Gives `control` to every node, this one included, as [`BrokerEvent::Control`]; the
    /// answer comes once the broker took it (with Redis: published).
    fn control(&mut self, control: Control) -> Pending<()>;

    /// Answers once every call made before it has been carried out by the broker (the
    /// presence calls are fire-and-forget): a drain waits for it, so that what its sessions'
    /// ends did to presence is in the broker before the process exits. At once by default.
    fn flush(&mut self) -> Pending<()> {
        Pending::Ready(Ok(()))
    }

    /// Moves the events the last calls produced at once into `out` (the local broker's
    /// messages); a broker whose events all come on its stream has none.
    fn ready_events(&mut self, out: &mut Vec<BrokerEvent>);

    /// Housekeeping, called every [`MAINTENANCE_INTERVAL`] (the local broker drops expired
    /// history and forgets idle rooms).
    fn maintain(&mut self);
}

/// How often the supervisor calls [`Broker::maintain`].
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The broker `config` asks for. The Redis broker's tasks start on the current tokio runtime
/// (call it inside the actix system); it connects in the background. Fails only for a bad
/// URL.
pub fn from_config(config: &crate::config::Config) -> Result<Box<dyn Broker>, BrokerError> {
    match config.broker.kind {
        crate::config::BrokerKind::Local => {
            crate::metrics::metrics().broker_up.set(1);
            let limits = local::HistoryLimits::from(&config.history);
            let broker = LocalBroker::new(limits)
                .with_room_overhead(local::ROOM_OVERHEAD_BYTES)
                .with_dedupe(Duration::from_millis(config.publish.dedupe_ms))
                .with_presence(PresenceLimits::from(&config.presence));
            Ok(Box::new(match config.history.snapshot_path.as_str() {
                "" => broker,
                path => broker.with_snapshot(std::path::PathBuf::from(path)),
            }))
        }
        crate::config::BrokerKind::Redis => {
            let mut settings = redis::RedisSettings::new(&config.broker, &config.history);
            settings.dedupe = Duration::from_millis(config.publish.dedupe_ms);
            settings.presence = PresenceLimits::from(&config.presence);
            settings.presence_grace = Duration::from_millis(config.presence.grace_ms);
            Ok(Box::new(RedisBroker::start(settings)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_16_hex_and_differ() {
        let a = Epoch::random();
        let b = Epoch::random();
        assert_ne!(a, b);
        for e in [&a, &b] {
            assert_eq!(e.as_str().len(), 16, "{e}");
            assert!(e.as_str().bytes().all(|c| c.is_ascii_hexdigit()), "{e}");
        }
    }

    #[test]
    fn resume_rule() {
        let e = Epoch::new("e1");
        let other = Epoch::new("e2");
        let ask = |since, epoch: Option<&Epoch>| ResumeRequest {
            since,
            epoch: epoch.cloned(),
        };
        // (request, room seq, oldest held, history on) -> resumed
        let cases = [
            (ask(5, None), 10, Some(1), true, true),
            (ask(5, Some(&e)), 10, Some(6), true, true),
            (ask(5, Some(&e)), 10, Some(7), true, false), // trimmed: 6 is gone
            (ask(5, Some(&other)), 10, Some(1), true, false), // another epoch
            (ask(10, None), 10, Some(1), true, true),     // nothing missed
            (ask(10, None), 10, None, true, true),        // nothing missed, empty history
            (ask(0, None), 0, None, true, true),          // new room
            (ask(11, None), 10, Some(1), true, false),    // since ahead
            (ask(5, None), 10, None, true, false),        // history gone (ttl)
            (ask(10, None), 10, Some(1), false, false),   // no history kept
            (ask(0, Some(&other)), 0, None, true, false), // another epoch, new room
            (ask(0, None), 3, Some(1), true, true),
        ];
        for (request, seq, oldest, on, expected) in cases {
            assert_eq!(
                can_resume(&request, &e, seq, oldest, on),
                expected,
                "{request:?} seq={seq} oldest={oldest:?} on={on}"
            );
        }
    }
}
