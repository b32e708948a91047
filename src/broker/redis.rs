//! The Redis broker: rooms shared by every node that uses one Redis and one key prefix.
//!
//! # Keys and channels (`P` = `broker.key_prefix`, `R` = room)
//!
//! | name | type | holds |
//! |---|---|---|
//! | `P:room:R` | hash | `epoch` (16 hex chars) and `seq` (the room's latest seq) |
//! | `P:history:R` | stream | the last `history.size` message frames, entry id `seq-0`, field `json` (absent when `history.size` is 0) |
//! | `P:room:R` | pub/sub channel | every message as `EPOCH:SEQ:JSON` |
//!
//! Both keys expire `history.ttl_ms` after the room's last message (a room that expired
//! starts a new epoch, like one Redis lost).
//!
//! # How it works
//!
//! - **Publish**: one Lua script per message ([`PUBLISH_SCRIPT`], by EVALSHA) creates the room
//!   with a new epoch if its hash is missing (and deletes a stale stream), takes the next seq,
//!   finishes the frame from the head this node serialized, appends it to the stream, renews
//!   the expiry and PUBLISHes it, atomically: seq order and publish order agree, and a
//!   message either gets a seq and reaches every subscriber or is refused. One publisher task
//!   per node sends whatever messages are waiting as one pipeline and awaits it before the
//!   next, so messages handed over in order execute in that order.
//! - **Join**: [`RedisBroker::subscribe`] answers once Redis confirmed the SUBSCRIBE (so that every
//!   later message reaches the event stream), then [`RedisBroker::snapshot`] reads the epoch and
//!   the seq with a script ([`SNAPSHOT_SCRIPT`], which creates a missing room), and, for a resume,
//!   the stream from `since`+1 to that seq with a plain XRANGE plus the epoch once more (one
//!   pipeline; a changed epoch or a missing entry: nothing replayed); the caller merges both with
//!   [`crate::rooms::resume::ResumeMerge`]. Subscriptions are counted per room: SUBSCRIBE on the
//!   first, UNSUBSCRIBE on the last.
//! - **Health**: the node starts without Redis. A driver task connects in the background with
//!   capped exponential backoff, reports up/down ([`RedisBroker::health`] and
//!   [`BrokerEvent::Health`]), logs one line per change (never per retry, never the URL's
//!   password), re-subscribes after a reconnect, and tells which rooms' epoch changed
//!   ([`BrokerEvent::EpochChanged`], always before any message of the new epoch).
//!
//! This module must not know sessions or actix: it hands [`BrokerEvent`]s to whoever holds
//! the receiver.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use log::{debug, info, warn};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Msg, RedisError, Script, Value};
use tokio::sync::watch;

use super::local::HistoryLimits;
use super::{
    can_resume, Broker, BrokerError, BrokerEvent, BrokerEvents, BrokerHealth, BrokerStatus, Epoch,
    EpochChange, JoinSnapshot, MessageHead, Pending, Published, Resume, ResumeRequest,
};
use crate::config::{check_redis_url, redact_url, BrokerSettings, HistorySettings};
use crate::metrics::metrics;

/// The script run once per message. KEYS: room hash, history stream. ARGV: channel, frame
/// head, a fresh epoch (used if the room is new), history size, ttl in ms. Returns
/// `{epoch, seq}`. The only write that can fail (XADD) comes before the seq is stored.
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
local seqtext = string.format('%d', seq)
local json = ARGV[2] .. seqtext .. '}'
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, seqtext .. '-0', 'json', json)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[1], 'seq', seqtext)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. seqtext .. ':' .. json)
return {epoch, seqtext}
"#;

/// The join script. KEYS: room hash, history stream. ARGV: a fresh epoch (used if the room
/// is new), ttl in ms. Returns `{epoch, seq}`. The history after `since` is read by the
/// caller with a plain XRANGE, not inside Lua: converting 100 stream entries to Lua tables
/// and back cost ~130 µs of Redis's single thread per resuming join (BENCHMARKS.md,
/// `mass-resume`), ~6 times the XRANGE itself.
pub const SNAPSHOT_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
return {epoch, string.format('%d', seq)}
"#;

/// Messages sent as one pipeline at most.
const MAX_BATCH: usize = 256;

/// How to reach Redis and what to keep there.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://...` or `rediss://...`; never logged unredacted.
    pub url: String,
    /// Every key and channel starts with it.
    pub key_prefix: String,
    /// `history.size` and `history.ttl_ms` (`max_bytes` is Redis's own `maxmemory`).
    pub history: HistoryLimits,
    /// Messages waiting for the publisher at most; beyond, publishing is refused.
    pub publish_queue: usize,
    /// Events waiting for the caller at most; beyond, the broker waits (back-pressure).
    pub event_queue: usize,
    /// First delay between connection attempts; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest delay between connection attempts.
    pub backoff_max: Duration,
    /// Connect and response timeout of every Redis request, and the health-check interval.
    pub timeout: Duration,
}

impl RedisSettings {
    /// Settings from the `[broker]` and `[history]` tables, with the default queues
    /// (4096 each), backoff (100 ms to 5 s) and timeout (2 s).
    pub fn new(broker: &BrokerSettings, history: &HistorySettings) -> Self {
        RedisSettings {
            url: broker.redis_url.clone(),
            key_prefix: broker.key_prefix.clone(),
            history: HistoryLimits::from(history),
            publish_queue: 4_096,
            event_queue: 4_096,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Keys and channels of one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    /// `P:room:`, the start of every room hash and channel.
    room_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            room_prefix: format!("{prefix}:room:"),
        }
    }

    fn room(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix)
    }

    fn history(&self, room: &str) -> String {
        format!("{}:history:{room}", self.prefix)
    }

    /// The room of a channel name.
    fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.room_prefix)
    }
}

enum Command {
    Subscribe {
        room: Arc<str>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    Unsubscribe {
        room: Arc<str>,
    },
    /// A request failed in a way that suggests the connection is gone.
    Suspect,
}

struct PublishJob {
    room: Arc<str>,
    head: MessageHead,
    reply: oneshot::Sender<Result<Published, BrokerError>>,
}

struct Shared {
    keys: Keys,
    history: HistoryLimits,
    commands: mpsc::UnboundedSender<Command>,
    publish: tokio::sync::mpsc::Sender<PublishJob>,
    connection: watch::Receiver<Option<MultiplexedConnection>>,
    health: watch::Receiver<BrokerHealth>,
    snapshot_script: Script,
}

/// The Redis broker: a handle on its tasks, and its event stream until the supervisor takes
/// it ([`Broker::take_event_stream`]). The tasks end when the broker is dropped.
pub struct RedisBroker {
    shared: Arc<Shared>,
    events: Option<BrokerEvents>,
}

impl RedisBroker {
    /// Starts the broker's tasks on the current tokio runtime (an actix system is one) and
    /// returns at once: the broker connects in the background and reports
    /// [`BrokerEvent::Health`] when it is up, on the event stream
    /// ([`Broker::take_event_stream`]). Fails only for a bad URL.
    pub fn start(settings: RedisSettings) -> Result<RedisBroker, BrokerError> {
        check_redis_url(&settings.url).map_err(BrokerError::BadUrl)?;
        if settings.url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(BrokerError::BadUrl(
                "rediss:// needs wsgrace built with the `redis-tls` feature".to_owned(),
            ));
        }
        let client = Client::open(settings.url.as_str())
            .map_err(|err| BrokerError::BadUrl(err.to_string()))?;
        let keys = Keys::new(&settings.key_prefix);
        let (commands_tx, commands_rx) = mpsc::unbounded();
        let (publish_tx, publish_rx) = tokio::sync::mpsc::channel(settings.publish_queue.max(1));
        let (connection_tx, connection_rx) = watch::channel(None);
        let (health_tx, health_rx) = watch::channel(BrokerHealth::Down);
        let (events_tx, events_rx) = mpsc::channel(settings.event_queue.max(1));
        metrics().broker_up.set(0);

        let driver = Driver {
            client,
            redacted_url: redact_url(&settings.url),
            keys: keys.clone(),
            settings: settings.clone(),
            commands: commands_rx,
            events: events_tx,
            connection: connection_tx,
            health: health_tx,
            rooms: HashMap::new(),
            publish_script: Script::new(PUBLISH_SCRIPT),
            snapshot_script: Script::new(SNAPSHOT_SCRIPT),
        };
        tokio::spawn(driver.run());
        let publisher = Publisher {
            keys: keys.clone(),
            history: settings.history,
            jobs: publish_rx,
            connection: connection_rx.clone(),
            commands: commands_tx.clone(),
            script: Script::new(PUBLISH_SCRIPT),
        };
        tokio::spawn(publisher.run());
        let broker = RedisBroker {
            shared: Arc::new(Shared {
                keys,
                history: settings.history,
                commands: commands_tx,
                publish: publish_tx,
                connection: connection_rx,
                health: health_rx,
                snapshot_script: Script::new(SNAPSHOT_SCRIPT),
            }),
            events: Some(events_rx),
        };
        Ok(broker)
    }

    /// Publishes a message from `from` in `room` saying `text`. The order of calls is the
    /// order of execution (the message is queued before this returns); the future answers
    /// with the message as published (its seq and epoch), or an error if it was refused
    /// (down, queue full: [`BrokerError::Unavailable`]) or its fate is unknown (the
    /// connection broke in flight: [`BrokerError::Interrupted`]). The room's members,
    /// the sender included, get it as [`BrokerEvent::Message`].
    pub fn publish(
        &self,
        room: &str,
        from: &str,
        text: &str,
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = MessageHead::new(room, from, text)
            .map_err(BrokerError::from)
            .and_then(|head| {
                if self.shared.connection.borrow().is_none() {
                    return Err(BrokerError::Unavailable);
                }
                self.shared
                    .publish
                    .try_send(PublishJob {
                        room: Arc::from(room),
                        head,
                        reply,
                    })
                    .map_err(|err| match err {
                        tokio::sync::mpsc::error::TrySendError::Full(_) => BrokerError::Unavailable,
                        tokio::sync::mpsc::error::TrySendError::Closed(_) => BrokerError::Stopped,
                    })
            });
        async move {
            queued?;
            answer.await.unwrap_or(Err(BrokerError::Stopped))
        }
    }

    /// Counts one local member of `room`; the first one subscribes. The future answers when
    /// Redis confirmed the subscription (every message published from then on reaches the
    /// event stream), or with [`BrokerError::Unavailable`] while the broker is down (the
    /// subscription is made when it comes back). Call [`RedisBroker::unsubscribe`] once per
    /// call, whatever the answer.
    pub fn subscribe(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.shared.commands.unbounded_send(Command::Subscribe {
            room: Arc::from(room),
            reply,
        });
        async move {
            if sent.is_err() {
                return Err(BrokerError::Stopped);
            }
            answer.await.unwrap_or(Err(BrokerError::Stopped))
        }
    }

    /// Uncounts one local member of `room`; the last one unsubscribes.
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.shared.commands.unbounded_send(Command::Unsubscribe {
            room: Arc::from(room),
        });
    }

    /// The room as a session joining it sees it: epoch, latest seq and the outcome of its
    /// resume request (the resume rule of [`can_resume`]). Creates the room with a new epoch
    /// if Redis does not have it. Call it after [`RedisBroker::subscribe`] answered.
    pub fn snapshot(
        &self,
        room: &str,
        resume: Option<ResumeRequest>,
    ) -> impl Future<Output = Result<JoinSnapshot, BrokerError>> + Send + 'static {
        let shared = self.shared.clone();
        let room: Arc<str> = Arc::from(room);
        async move {
            let Some(mut connection) = shared.connection.borrow().clone() else {
                return Err(BrokerError::Unavailable);
            };
            let failed = |err: RedisError| {
                metrics().broker_errors.inc();
                if is_connection_error(&err) {
                    let _ = shared.commands.unbounded_send(Command::Suspect);
                    BrokerError::Interrupted
                } else {
                    BrokerError::Server(err.to_string())
                }
            };
            let value: Value = shared
                .snapshot_script
                .key(shared.keys.room(&room))
                .key(shared.keys.history(&room))
                .arg(Epoch::random().as_str())
                .arg(shared.history.ttl.as_millis() as u64)
                .invoke_async(&mut connection)
                .await
                .map_err(failed)?;
            let (epoch, seq) = snapshot_head(&value)?;
            let wanted = resume
                .as_ref()
                .filter(|request| {
                    request.since < seq && seq - request.since <= shared.history.size as u64
                })
                .map(|request| request.since + 1);
            let history_size = shared.history.size;
            let Some(first) = wanted else {
                return join_snapshot(room, epoch, seq, Vec::new(), resume.as_ref(), history_size);
            };
            // The history after `since`, up to the snapshot's seq, and the room's epoch once
            // more: if Redis lost the room in between, the entries may be another epoch's, and
            // nothing is replayed (the epoch check fails, or the entries are not all there).
            let (entries, epoch_now): (Value, Option<String>) = redis::pipe()
                .cmd("XRANGE")
                .arg(shared.keys.history(&room))
                .arg(format!("{first}-0"))
                .arg(format!("{seq}-0"))
                .cmd("HGET")
                .arg(shared.keys.room(&room))
                .arg("epoch")
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            let entries = match entries {
                Value::Array(entries) if epoch_now.as_deref() == Some(epoch.as_str()) => entries,
                Value::Array(_) => Vec::new(),
                _ => return Err(snapshot_error("entries")),
            };
            join_snapshot(room, epoch, seq, entries, resume.as_ref(), history_size)
        }
    }

    /// Up or down now, and every change (for `/readyz` and upgrades).
    pub fn health(&self) -> watch::Receiver<BrokerHealth> {
        self.shared.health.clone()
    }

    /// Whether the broker is up now.
    pub fn is_up(&self) -> bool {
        *self.shared.health.borrow() == BrokerHealth::Up
    }
}

impl Broker for RedisBroker {
    fn status(&self) -> BrokerStatus {
        BrokerStatus::following(self.health())
    }

    fn take_event_stream(&mut self) -> Option<BrokerEvents> {
        self.events.take()
    }

    fn join(&mut self, room: &Arc<str>, resume: Option<ResumeRequest>) -> Pending<JoinSnapshot> {
        // SUBSCRIBE is sent now, before any later unsubscribe of this room; the snapshot is
        // read once Redis confirmed it, so that no message falls between.
        let subscribed = self.subscribe(room);
        let snapshot = self.snapshot(room, resume);
        Pending::Later(Box::pin(async move {
            subscribed.await?;
            snapshot.await
        }))
    }

    fn leave(&mut self, room: &Arc<str>) {
        self.unsubscribe(room);
    }

    fn read_since(&mut self, room: &Arc<str>, request: ResumeRequest) -> Pending<JoinSnapshot> {
        Pending::Later(Box::pin(self.snapshot(room, Some(request))))
    }

    fn publish(&mut self, room: &Arc<str>, from: &str, text: &str) -> Pending<Published> {
        Pending::Later(Box::pin(RedisBroker::publish(self, room, from, text)))
    }

    fn ready_events(&mut self, _: &mut Vec<BrokerEvent>) {}

    fn maintain(&mut self) {}
}

/// The snapshot answer is not what the script returns.
fn snapshot_error(what: &str) -> BrokerError {
    BrokerError::Server(format!("unexpected snapshot answer: {what}"))
}

/// The epoch and seq of the snapshot script's answer.
fn snapshot_head(value: &Value) -> Result<(String, u64), BrokerError> {
    let bad = || snapshot_error("epoch or seq");
    let Value::Array(parts) = value else {
        return Err(bad());
    };
    let epoch = parts.first().and_then(text).ok_or_else(bad)?;
    let seq = parts
        .get(1)
        .and_then(text)
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(bad)?;
    Ok((epoch, seq))
}

/// The room at `epoch` and `seq` for a joining session, with the XRANGE `entries` read after
/// its `since`; applies the resume rule.
fn join_snapshot(
    room: Arc<str>,
    epoch: String,
    seq: u64,
    entries: Vec<Value>,
    resume: Option<&ResumeRequest>,
    history_size: usize,
) -> Result<JoinSnapshot, BrokerError> {
    let epoch = Epoch::new(epoch);
    let Some(request) = resume else {
        return Ok(JoinSnapshot {
            room,
            epoch,
            seq,
            resume: Resume::NotAsked,
        });
    };
    let mut replay = Vec::with_capacity(entries.len());
    for entry in entries {
        let (seq, json) = parse_entry(entry).ok_or_else(|| snapshot_error("stream entry"))?;
        replay.push(Published {
            room: room.clone(),
            epoch: epoch.clone(),
            seq,
            json,
        });
    }
    // The stream's ids are consecutive seqs trimmed from the front: it holds everything
    // after `since` exactly when it returned `seq - since` entries starting at `since + 1`.
    let since = request.since;
    let complete = since < seq
        && replay.len() as u64 == seq - since
        && replay.first().is_some_and(|first| first.seq == since + 1);
    let oldest = complete.then_some(since + 1);
    let resume = if can_resume(request, &epoch, seq, oldest, history_size > 0) {
        Resume::Resumed(replay)
    } else {
        Resume::NotResumed
    };
    Ok(JoinSnapshot {
        room,
        epoch,
        seq,
        resume,
    })
}

/// One XRANGE entry `[id, [field, value]]` → (seq, json).
fn parse_entry(entry: Value) -> Option<(u64, ByteString)> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    let fields = parts.pop()?;
    let id = text(parts.first()?)?;
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let json = text(fields.get(1)?)?;
    Some((seq, ByteString::from(json)))
}

/// A bulk or simple string, or an integer, as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_timeout()
}

/// A channel payload `EPOCH:SEQ:JSON` of `room` → the message.
fn parse_publication(room: &str, payload: &[u8]) -> Option<Published> {
    let payload = std::str::from_utf8(payload).ok()?;
    let (epoch, rest) = payload.split_once(':')?;
    let (seq, json) = rest.split_once(':')?;
    Some(Published {
        room: Arc::from(room),
        epoch: Epoch::new(epoch.to_owned()),
        seq: seq.parse().ok()?,
        json: ByteString::from(json.to_owned()),
    })
}

/// The publisher task: sends the waiting messages as one pipeline, awaits it, answers each.
struct Publisher {
    keys: Keys,
    history: HistoryLimits,
    jobs: tokio::sync::mpsc::Receiver<PublishJob>,
    connection: watch::Receiver<Option<MultiplexedConnection>>,
    commands: mpsc::UnboundedSender<Command>,
    script: Script,
}

impl Publisher {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(job) = self.jobs.recv().await {
            batch.push(job);
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.send(&mut batch).await;
        }
    }

    async fn send(&mut self, batch: &mut Vec<PublishJob>) {
        let connection = self.connection.borrow().clone();
        let Some(mut connection) = connection else {
            for job in batch.drain(..) {
                metrics().broker_errors.inc();
                let _ = job.reply.send(Err(BrokerError::Unavailable));
            }
            return;
        };
        let ttl_ms = self.history.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        for job in batch.iter() {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(2)
                .arg(self.keys.room(&job.room))
                .arg(self.keys.history(&job.room))
                .arg(self.keys.room(&job.room))
                .arg(job.head.as_str())
                .arg(Epoch::random().as_str())
                .arg(self.history.size)
                .arg(ttl_ms);
        }
        // `req_packed_commands` rather than `query_async`: it answers per command, so that
        // one refused message does not hide that the others were published.
        let answers = connection.req_packed_commands(&pipe, 0, batch.len()).await;
        match answers {
            Ok(values) if values.len() == batch.len() => {
                let mut reload = false;
                for (job, value) in batch.drain(..).zip(values) {
                    let result = parse_published(&job, value, &mut reload);
                    if result.is_err() {
                        metrics().broker_errors.inc();
                    }
                    let _ = job.reply.send(result);
                }
                if reload {
                    if let Err(err) = self.script.load_async(&mut connection).await {
                        debug!("broker: loading the publish script failed: {err}");
                    }
                }
            }
            Ok(_) | Err(_) => {
                if let Err(err) = &answers {
                    debug!("broker: publishing {} messages failed: {err}", batch.len());
                }
                let _ = self.commands.unbounded_send(Command::Suspect);
                for job in batch.drain(..) {
                    metrics().broker_errors.inc();
                    let _ = job.reply.send(Err(BrokerError::Interrupted));
                }
            }
        }
    }
}

/// The publish script's answer `{epoch, seq}` for `job` → the published message.
fn parse_published(
    job: &PublishJob,
    value: Value,
    reload: &mut bool,
) -> Result<Published, BrokerError> {
    match value {
        Value::Array(parts) => {
            let epoch = parts.first().and_then(text);
            let seq = parts.get(1).and_then(text).and_then(|s| s.parse().ok());
            match (epoch, seq) {
                (Some(epoch), Some(seq)) => Ok(Published {
                    room: job.room.clone(),
                    epoch: Epoch::new(epoch),
                    seq,
                    json: job.head.finish(seq),
                }),
                _ => Err(BrokerError::Server("unexpected publish answer".to_owned())),
            }
        }
        Value::ServerError(err) => {
            if err.code() == "NOSCRIPT" {
                // The script cache was flushed: this message did not run; reload for the next.
                *reload = true;
                return Err(BrokerError::Unavailable);
            }
            Err(BrokerError::Server(format!("{err:?}")))
        }
        _ => Err(BrokerError::Server("unexpected publish answer".to_owned())),
    }
}

/// A room with local members: how many, and the epoch last seen in it.
struct RoomState {
    members: usize,
    epoch: Option<Epoch>,
}

/// The driver task: connection, subscriptions, health, epoch changes.
struct Driver {
    client: Client,
    redacted_url: String,
    keys: Keys,
    settings: RedisSettings,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<BrokerEvent>,
    connection: watch::Sender<Option<MultiplexedConnection>>,
    health: watch::Sender<BrokerHealth>,
    rooms: HashMap<Arc<str>, RoomState>,
    publish_script: Script,
    snapshot_script: Script,
}

/// Why the connected phase ended.
enum Ended {
    /// Every handle is gone.
    Stopped,
    /// The connection broke.
    Lost(String),
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = self.settings.backoff_min;
        let mut told_down = false;
        info!("broker: connecting to {}", self.redacted_url);
        loop {
            match self.connect().await {
                Ok((connection, pubsub)) => {
                    backoff = self.settings.backoff_min;
                    match self.connected(connection, pubsub).await {
                        Ended::Stopped => return,
                        Ended::Lost(why) => {
                            self.set_down().await;
                            warn!(
                                "broker down: lost {} ({why}); reconnecting",
                                self.redacted_url
                            );
                            // Said once: failed reconnects are not a new change of state.
                            told_down = true;
                        }
                    }
                }
                Err(err) => {
                    metrics().broker_errors.inc();
                    if !told_down {
                        warn!(
                            "broker down: cannot reach {} ({err}); retrying with backoff",
                            self.redacted_url
                        );
                        told_down = true;
                    } else {
                        debug!("broker: connecting failed: {err}");
                    }
                    if !self.wait_down(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                }
            }
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, redis::aio::PubSub), RedisError> {
        let timeout = self.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.publish_script.load_async(&mut connection).await?;
        self.snapshot_script.load_async(&mut connection).await?;
        let pubsub = tokio::time::timeout(timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "pub/sub connection timed out",
                ))
            })??;
        Ok((connection, pubsub))
    }

    /// Waits `delay` while down, answering commands. False when every handle is gone.
    async fn wait_down(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                command = self.commands.next() => match command {
                    None => return false,
                    Some(command) => self.count(command),
                },
            }
        }
    }

    /// Handles a command while down: counts members; subscriptions are made on connect.
    fn count(&mut self, command: Command) {
        match command {
            Command::Subscribe { room, reply } => {
                self.rooms
                    .entry(room)
                    .or_insert(RoomState {
                        members: 0,
                        epoch: None,
                    })
                    .members += 1;
                let _ = reply.send(Err(BrokerError::Unavailable));
            }
            Command::Unsubscribe { room } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.members = state.members.saturating_sub(1);
                    if state.members == 0 {
                        self.rooms.remove(&room);
                    }
                }
            }
            Command::Suspect => {}
        }
    }

    async fn set_down(&mut self) {
        self.connection.send_replace(None);
        self.health.send_replace(BrokerHealth::Down);
        metrics().broker_up.set(0);
        self.emit(BrokerEvent::Health(BrokerHealth::Down)).await;
    }

    async fn emit(&mut self, event: BrokerEvent) {
        // A dropped receiver only means nobody listens any more.
        let _ = self.events.send(event).await;
    }

    async fn connected(
        &mut self,
        mut connection: MultiplexedConnection,
        pubsub: redis::aio::PubSub,
    ) -> Ended {
        let (mut sink, mut stream) = pubsub.split();
        // Re-subscribe every room with local members, then find the rooms whose epoch changed.
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room in &rooms {
            if let Err(err) = sink.subscribe(self.keys.room(room)).await {
                return Ended::Lost(err.to_string());
            }
        }
        if let Err(why) = self
            .check_epochs(&rooms, &mut connection, &mut sink, &mut stream)
            .await
        {
            return Ended::Lost(why);
        }
        self.connection.send_replace(Some(connection.clone()));
        self.health.send_replace(BrokerHealth::Up);
        metrics().broker_up.set(1);
        info!(
            "broker up: connected to {} ({} rooms subscribed)",
            self.redacted_url,
            rooms.len()
        );
        self.emit(BrokerEvent::Health(BrokerHealth::Up)).await;

        let mut check = tokio::time::interval(self.settings.timeout);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.publication(message).await,
                    None => return Ended::Lost("the pub/sub connection closed".to_owned()),
                },
                command = self.commands.next() => {
                    let Some(command) = command else {
                        return Ended::Stopped;
                    };
                    if let Err(why) = self
                        .command(command, &mut connection, &mut sink, &mut stream)
                        .await
                    {
                        return Ended::Lost(why);
                    }
                }
                _ = check.tick() => {
                    if let Err(why) = self.ping(&mut connection, &mut sink).await {
                        return Ended::Lost(why);
                    }
                }
            }
        }
    }

    async fn ping(
        &self,
        connection: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
    ) -> Result<(), String> {
        let timeout = self.settings.timeout;
        let pong: Result<String, RedisError> = redis::cmd("PING").query_async(connection).await;
        pong.map_err(|err| err.to_string())?;
        match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("pub/sub ping timed out".to_owned()),
        }
    }

    async fn command(
        &mut self,
        command: Command,
        connection: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        stream: &mut PubSubStream,
    ) -> Result<(), String> {
        match command {
            Command::Subscribe { room, reply } => {
                let state = self.rooms.entry(room.clone()).or_insert(RoomState {
                    members: 0,
                    epoch: None,
                });
                state.members += 1;
                if state.members > 1 {
                    // Subscribed before (the driver handles one command at a time).
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let subscribed = sink.subscribe(self.keys.room(&room)).await;
                if let Err(err) = subscribed {
                    let _ = reply.send(Err(BrokerError::Unavailable));
                    return Err(err.to_string());
                }
                let checked = self
                    .check_epochs(std::slice::from_ref(&room), connection, sink, stream)
                    .await;
                let answer = checked
                    .as_ref()
                    .map(|_| ())
                    .map_err(|_| BrokerError::Unavailable);
                let _ = reply.send(answer);
                checked
            }
            Command::Unsubscribe { room } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return Ok(());
                };
                state.members = state.members.saturating_sub(1);
                if state.members > 0 {
                    return Ok(());
                }
                self.rooms.remove(&room);
                sink.unsubscribe(self.keys.room(&room))
                    .await
                    .map_err(|err| err.to_string())
            }
            Command::Suspect => self.ping(connection, sink).await,
        }
    }

    /// Reads the epoch and seq of `rooms` (creating rooms Redis lacks), lets every message
    /// published before that reach the event stream first (a PING on the pub/sub connection
    /// answers after them), then reports the rooms whose epoch differs from the one last
    /// seen. A room seen for the first time takes its epoch silently.
    async fn check_epochs(
        &mut self,
        rooms: &[Arc<str>],
        connection: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        stream: &mut PubSubStream,
    ) -> Result<(), String> {
        let mut current = Vec::with_capacity(rooms.len());
        for room in rooms {
            let answer: Result<Value, RedisError> = self
                .snapshot_script
                .key(self.keys.room(room))
                .key(self.keys.history(room))
                .arg(Epoch::random().as_str())
                .arg(self.settings.history.ttl.as_millis() as u64)
                .invoke_async(connection)
                .await;
            let value = answer.map_err(|err| err.to_string())?;
            let (epoch, seq) = snapshot_head(&value).map_err(|err| err.to_string())?;
            let snapshot = join_snapshot(
                room.clone(),
                epoch,
                seq,
                Vec::new(),
                None,
                self.settings.history.size,
            )
            .map_err(|err| err.to_string())?;
            current.push(snapshot);
        }
        sink.ping::<Value>().await.map_err(|err| err.to_string())?;
        while let Some(next) = stream.next().now_or_never() {
            match next {
                Some(message) => self.publication(message).await,
                None => return Err("the pub/sub connection closed".to_owned()),
            }
        }
        for snapshot in current {
            let Some(state) = self.rooms.get_mut(&snapshot.room) else {
                continue;
            };
            match &state.epoch {
                None => state.epoch = Some(snapshot.epoch),
                Some(seen) if *seen == snapshot.epoch => {}
                Some(_) => {
                    state.epoch = Some(snapshot.epoch.clone());
                    info!(
                        "broker: room {} has a new epoch {} (its history was lost)",
                        snapshot.room, snapshot.epoch
                    );
                    // From seq 0: messages other nodes published in the new epoch while this
                    // one was away are in the history (the supervisor's catch-up after
                    // `Health(Up)` delivers them), and the first of them is seq 1.
                    self.emit(BrokerEvent::EpochChanged(EpochChange {
                        room: snapshot.room,
                        epoch: snapshot.epoch,
                        seq: 0,
                    }))
                    .await;
                }
            }
        }
        Ok(())
    }

    /// A message on a room channel: reported after an epoch change if its epoch is new.
    async fn publication(&mut self, message: Msg) {
        let Some(room) = self.keys.room_of_channel(message.get_channel_name()) else {
            return;
        };
        let Some(room) = self.rooms.get_key_value(room).map(|(room, _)| room.clone()) else {
            // Unsubscribed meanwhile.
            return;
        };
        let Some(mut published) = parse_publication(&room, message.get_payload_bytes()) else {
            warn!("broker: an unreadable publication on room {room} was ignored");
            return;
        };
        published.room = room.clone();
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let change = match &state.epoch {
            Some(seen) if *seen != published.epoch => Some(EpochChange {
                room: room.clone(),
                epoch: published.epoch.clone(),
                seq: published.seq.saturating_sub(1),
            }),
            _ => None,
        };
        state.epoch = Some(published.epoch.clone());
        if let Some(change) = change {
            info!(
                "broker: room {} has a new epoch {} (its history was lost)",
                change.room, change.epoch
            );
            self.emit(BrokerEvent::EpochChanged(change)).await;
        }
        self.emit(BrokerEvent::Message(published)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_channels() {
        let keys = Keys::new("app");
        assert_eq!(keys.room("lobby"), "app:room:lobby");
        assert_eq!(keys.history("lobby"), "app:history:lobby");
        assert_eq!(keys.room_of_channel("app:room:lobby"), Some("lobby"));
        assert_eq!(keys.room_of_channel("other:room:lobby"), None);
    }

    #[test]
    fn publications() {
        let p = parse_publication("r", br#"00ab:12:{"type":"message","seq":12}"#).unwrap();
        assert_eq!(p.epoch, Epoch::new("00ab"));
        assert_eq!(p.seq, 12);
        assert_eq!(&*p.json, r#"{"type":"message","seq":12}"#);
        assert!(parse_publication("r", b"nope").is_none());
        assert!(parse_publication("r", b"e:x:{}").is_none());
        assert!(parse_publication("r", b"e:1:\xff").is_none());
    }

    #[test]
    fn bad_urls_are_refused_before_any_task_starts() {
        let settings = |url: &str| RedisSettings {
            url: url.to_owned(),
            ..RedisSettings::new(&BrokerSettings::default(), &HistorySettings::default())
        };
        for url in ["", "http://x:6379", "127.0.0.1:6379", "redis://"] {
            assert!(
                matches!(
                    RedisBroker::start(settings(url)),
                    Err(BrokerError::BadUrl(_))
                ),
                "{url}"
            );
        }
    }
}
