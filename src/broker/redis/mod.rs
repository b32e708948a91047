//! The Redis broker: rooms shared by every node that uses one Redis and one key prefix.
//!
//! # Keys and channels (`P` = `broker.key_prefix`, `R` = room)
//!
//! | name | type | holds |
//! |---|---|---|
//! | `P:{R}:room` | hash | `epoch` (16 hex chars), `seq` (the room's latest seq), `base` (the seq the epoch began after: 0, or where a failover left it), `run` (the `run_id` of the Redis process that last wrote it; empty with `broker.wait_replicas` > 0) and `released` (with `wait_replicas` > 0: the last seq published) |
//! | `P:{R}:pending` | list | with `broker.wait_replicas` > 0: the channel payloads of messages with a seq, held until `WAIT` confirms them ([`RELEASE_SCRIPT`] publishes them in seq order) |
//! | `P:{R}:history` | stream | the last `history.size` message frames, entry id `seq-0`, field `json` (absent when `history.size` is 0) |
//! | `P:{R}:room` | pub/sub channel (sharded on a cluster) | every message as `EPOCH:SEQ:ORIGIN:JSON`, every signal as `S:NODE.SESSION:JSON`, presence as `P:J:NODE.SESSION:NAME` (a name arrived; `P:J::NAME` after a restore), `P:L::NAME` (a name is gone), `P:K::MS` (a connection is kept MS: sweep then) |
//! | `P:control` | pub/sub channel (sharded on a cluster) | the server API's orders to every node (a disconnect by name), as JSON; every node subscribes on each connect |
//! | `P:{R}:dedupe:KEY` | string | `EPOCH:SEQ` of the first message published with dedupe key KEY (a v2 `n:NAME:ID`, an API `a:KEY`), for `publish.dedupe_ms` |
//! | `P:{R}:presence:names` | hash | every present name → its connections over all holders |
//! | `P:{R}:presence:holders` | zset | holder → deadline (ms, Redis's clock) |
//! | `P:{R}:presence:h:HOLDER` | hash | name → connections of one holder: `n:NODE` (a node's live sessions, a lease renewed by its heartbeat), `k:NODE.SESSION` (one kept connection) |
//!
//! Every key of a room, and its channel, carry the room as a hash tag (`{R}`): they share
//! one Redis Cluster slot, so each script touches one slot. Keys written under the names of
//! before 0.2 (`P:room:R`, `P:history:R`) are not read: such a room starts a new epoch once.
//!
//! The room hash and the stream expire `history.ttl_ms` after the room's last message (a
//! room that expired starts a new epoch, like one Redis lost). The presence keys carry the
//! room as a hash tag (one Redis Cluster slot per room) and expire a margin after their
//! longest deadline.
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
//! - **Presence** (`presence.enabled`): one script ([`PRESENCE_SCRIPT`]) keeps each room's
//!   [`Ledger`](super::presence::Ledger) in Redis with the same rules, and publishes the
//!   arrivals and departures on the room's channel for every node to tell its members. This
//!   node's presence ops go through the publisher's pipeline, in order with its messages,
//!   fire-and-forget (a `presence` read answers). The publisher's heartbeat renews this
//!   node's lease in every room where it has members (and so sweeps them) every
//!   `min(ttl/3, max(grace, 500 ms))`, and restores the rooms whose ops did not reach Redis
//!   or whose holder Redis lost (a FLUSHALL); the supervisor restores every room after an
//!   outage.
//! - **Failover** (`docs/redis-ha.md`): the scripts get the master's `run_id`; a room last
//!   written by another Redis process (a promoted replica, a restart from disk) may lack its
//!   last seqs, so it starts a new epoch first, its seqs going on from what it has. Through
//!   Sentinel (`redis+sentinel://`), the sentinels are asked for the master on every
//!   connect; `+switch-master`, a broken connection or a `READONLY` answer makes the driver
//!   reconnect. On a Redis Cluster (`redis+cluster://`) rooms spread over the shards by their
//!   hash tag, the scripts `SPUBLISH`, the driver `SSUBSCRIBE`s per room, each script reads
//!   its own shard master's `run_id` (`?`), and a broken shard connection makes the driver
//!   reconnect to the whole cluster. With `broker.wait_replicas` = N > 0 (`held.rs`) a message is held, not
//!   published, until `WAIT N` confirms it, and a failover keeps the epochs.
//! - **Health**: the node starts without Redis. A driver task connects in the background with
//!   capped exponential backoff, reports up/down ([`RedisBroker::health`] and
//!   [`BrokerEvent::Health`]), logs one line per change (never per retry, never the URL's
//!   password), re-subscribes after a reconnect, and tells which rooms' epoch changed
//!   ([`BrokerEvent::EpochChanged`], always before any message of the new epoch).
//!
//! # Files
//!
//! `keys.rs`: key and channel names, the Lua scripts and the parsers of Redis's answers (pure);
//! `presence_script.rs`: the presence script, its calls and answers, the presence notices
//! (pure); `presence.rs`: this node's presence jobs, its book of members, the heartbeat;
//! `publisher.rs`: the task that sends messages and presence jobs as pipelines; `held.rs`: its
//! path with `broker.wait_replicas` > 0 (WAIT, then release); `driver.rs`:
//! the task that keeps the connection, the subscriptions and the health; `target.rs`: where
//! to connect (one Redis, the master the sentinels name, or a cluster); `conn.rs`: the
//! connection for commands (a cluster's pipelines split by room); `subscriber.rs`: the
//! subscriptions (`SUBSCRIBE`, or `SSUBSCRIBE` on a cluster); `server_api.rs`: a
//! page of history and an order to every node, for the server API; this file: the
//! handle the supervisor holds and its [`Broker`] seam; `settings.rs`: [`RedisSettings`].
//!
//! This module must not know sessions or actix: it hands [`BrokerEvent`]s to whoever holds
//! the receiver.

mod conn;
mod driver;
#[cfg(test)]
mod failover_tests;
mod held;
mod keys;
mod presence;
mod presence_script;
#[cfg(test)]
mod presence_tests;
mod publisher;
mod runs;
mod server_api;
mod settings;
mod subscriber;
mod target;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use redis::{RedisError, Script, Value};
use tokio::sync::watch;

use self::conn::Conn;
use self::driver::Driver;
use self::keys::{
    is_connection_error, is_readonly, join_snapshot, signal_payload, snapshot_error, snapshot_head,
    Keys,
};
pub use self::keys::{PUBLISH_SCRIPT, RELEASE_SCRIPT, SNAPSHOT_SCRIPT};
use self::presence::{heartbeat_interval, Book, PresenceJob, PresenceWorker};
use self::presence_script::PresenceCall;
pub use self::presence_script::PRESENCE_SCRIPT;
use self::publisher::Publisher;
use self::runs::Runs;
pub use self::settings::RedisSettings;
use self::target::Target;
use super::local::HistoryLimits;
use super::{
    Broker, BrokerError, BrokerEvent, BrokerEvents, BrokerHealth, BrokerStatus, Departure, Epoch,
    JoinRequest, JoinSnapshot, MessageHead, NodeId, Origin, Outgoing, Pending, PresenceLimits,
    PresentName, Publication, Published, ResumeRequest, SentBy, Signal,
};
use crate::config::{check_redis_url, redact_url};
use crate::metrics::metrics;

pub(super) enum Command {
    Subscribe {
        room: Arc<str>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    Unsubscribe {
        room: Arc<str>,
    },
    /// A request failed in a way that suggests the connection is gone.
    Suspect,
    /// A write was refused with `READONLY`: the server is a replica now (a failover); the
    /// driver reconnects, and asks the sentinels again.
    Readonly,
    /// The publisher's pipelines broke several times in a row while the connection answers
    /// its health checks (a cluster node the client cannot use any more, whatever the
    /// cause): the driver makes everything again.
    Reconnect(String),
}

/// The connection to the master, and the master's `run_id` (passed to the scripts: a room
/// last written by another Redis process starts a new epoch, see `keys.rs`; empty with
/// `broker.wait_replicas` > 0, where a failover keeps the epochs).
#[derive(Clone)]
struct Link {
    connection: Conn,
    run: Runs,
}

/// The scripts' hold argument: `1` when messages wait for `WAIT` (`broker.wait_replicas` > 0).
pub(super) fn hold_arg(hold: bool) -> &'static str {
    if hold {
        "1"
    } else {
        "0"
    }
}

/// What the publisher's queue carries, in the order it runs.
pub(super) enum Job {
    /// A message to publish.
    Publish(PublishJob),
    /// A presence operation.
    Presence(PresenceJob),
    /// Answered once the jobs before it have run.
    Flush(oneshot::Sender<()>),
}

pub(super) struct PublishJob {
    room: Arc<str>,
    head: MessageHead,
    /// The dedupe key's Redis key, when the message has one.
    dedupe: Option<String>,
    sent_by: Option<SentBy>,
    reply: oneshot::Sender<Result<Publication, BrokerError>>,
}

pub(super) struct Shared {
    keys: Keys,
    history: HistoryLimits,
    /// `publish.dedupe_ms`.
    dedupe: Duration,
    /// `broker.wait_replicas` > 0: messages are held until `WAIT` confirms them.
    hold: bool,
    /// This node's name.
    node: NodeId,
    commands: mpsc::UnboundedSender<Command>,
    publish: tokio::sync::mpsc::Sender<Job>,
    connection: watch::Receiver<Option<Link>>,
    health: watch::Receiver<BrokerHealth>,
    snapshot_script: Script,
}

impl Shared {
    /// A failed command as the broker reports it: a broken connection (the driver checks it)
    /// is `Interrupted`, a `READONLY` master (a failover: the driver asks the sentinels
    /// again) `Unavailable`, anything else a server error; each is counted.
    fn failed(&self, err: RedisError) -> BrokerError {
        metrics().broker_errors.inc();
        if is_connection_error(&err) {
            let _ = self.commands.unbounded_send(Command::Suspect);
            BrokerError::Interrupted
        } else if is_readonly(&err) {
            let _ = self.commands.unbounded_send(Command::Readonly);
            BrokerError::Unavailable
        } else {
            BrokerError::Server(err.to_string())
        }
    }

    /// The room's epoch and latest seq by the snapshot script, which creates a missing room
    /// (and starts a new epoch for one another Redis process wrote last, `run`).
    async fn room_head(
        &self,
        connection: &mut Conn,
        run: &Runs,
        room: &str,
    ) -> Result<(String, u64), BrokerError> {
        let value: Value = self
            .snapshot_script
            .key(self.keys.room(room))
            .key(self.keys.history(room))
            .key(self.keys.pending(room))
            .arg(Epoch::random().as_str())
            .arg(self.history.ttl.as_millis() as u64)
            .arg(run.for_key(&self.keys.room(room)))
            .arg(hold_arg(self.hold))
            .invoke_async(connection)
            .await
            .map_err(|err| self.failed(err))?;
        snapshot_head(&value)
    }
}

/// The Redis broker: a handle on its tasks, and its event stream until the supervisor takes
/// it ([`Broker::take_event_stream`]). The tasks end when the broker is dropped.
pub struct RedisBroker {
    shared: Arc<Shared>,
    events: Option<BrokerEvents>,
    /// `[presence]`.
    presence: PresenceLimits,
    /// This node's members per room, as the presence calls so far leave them.
    book: Book,
    /// Rooms whose presence jobs did not fit in the queue: a restore is sent for them as
    /// soon as one fits.
    lost: HashSet<Arc<str>>,
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
        let target = Target::new(&settings.url).map_err(BrokerError::BadUrl)?;
        let keys = Keys::new(&settings.key_prefix).sharded(target.is_cluster());
        let node = fastrand::u64(..);
        let (commands_tx, commands_rx) = mpsc::unbounded();
        let (publish_tx, publish_rx) = tokio::sync::mpsc::channel(settings.publish_queue.max(1));
        let (connection_tx, connection_rx) = watch::channel(None);
        let (health_tx, health_rx) = watch::channel(BrokerHealth::Down);
        let (events_tx, events_rx) = mpsc::channel(settings.event_queue.max(1));
        metrics().broker_up.set(0);

        let driver = Driver {
            target,
            expected: HashMap::new(),
            catching_up: false,
            redacted_url: redact_url(&settings.url),
            keys: keys.clone(),
            settings: settings.clone(),
            commands: commands_rx,
            events: events_tx,
            connection: connection_tx,
            health: health_tx,
            rooms: HashMap::new(),
            snapshot_script: keys.script(SNAPSHOT_SCRIPT),
            jobs: publish_tx.downgrade(),
            sweeps: HashSet::new(),
            started: std::time::Instant::now(),
        };
        tokio::spawn(driver.run());
        let presence = PresenceWorker::new(
            PresenceCall::new(keys.clone(), node, settings.presence),
            heartbeat_interval(settings.presence.ttl, settings.presence_grace),
        );
        let publisher = Publisher {
            keys: keys.clone(),
            history: settings.history,
            jobs: publish_rx,
            connection: connection_rx.clone(),
            commands: commands_tx.clone(),
            script: keys.script(PUBLISH_SCRIPT),
            dedupe_ms: u64::try_from(settings.dedupe.as_millis()).unwrap_or(u64::MAX),
            wait_replicas: settings.wait_replicas,
            unreleased: HashMap::new(),
            broken_rooms: HashMap::new(),
            // Half the response timeout: WAIT answers (with fewer replicas) before the
            // connection would take the request for lost.
            wait_timeout_ms: u64::try_from(settings.timeout.as_millis() / 2)
                .unwrap_or(1_000)
                .max(1),
            presence,
        };
        tokio::spawn(publisher.run());
        let broker = RedisBroker {
            shared: Arc::new(Shared {
                snapshot_script: keys.script(SNAPSHOT_SCRIPT),
                keys,
                history: settings.history,
                dedupe: settings.dedupe,
                hold: settings.wait_replicas > 0,
                node,
                commands: commands_tx,
                publish: publish_tx,
                connection: connection_rx,
                health: health_rx,
            }),
            events: Some(events_rx),
            presence: settings.presence,
            book: Book::default(),
            lost: HashSet::new(),
        };
        Ok(broker)
    }

    /// Publishes a message from `from` in `room` saying `text` (no dedupe key, no sender):
    /// [`RedisBroker::publish_message`] answered with the message as published.
    pub fn publish(
        &self,
        room: &str,
        from: &str,
        text: &str,
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send + 'static {
        let message = Outgoing {
            from,
            text,
            dedupe_key: None,
            sent_by: None,
        };
        let published = self.publish_message(room, message);
        async move {
            match published.await? {
                Publication::New(published) => Ok(published),
                Publication::Repeat { .. } => Err(BrokerError::Server(
                    "a publish without a dedupe key was taken for a repeat".to_owned(),
                )),
            }
        }
    }

    /// Publishes `message` in `room`. The order of calls is the order of execution (the
    /// message is queued before this returns); the future answers with what the publish came
    /// to (the message with its seq and epoch, or the first one's for a repeated dedupe key),
    /// or an error if it was refused (down, queue full: [`BrokerError::Unavailable`]) or its
    /// fate is unknown (the connection broke in flight: [`BrokerError::Interrupted`]). The
    /// room's members, the sender included, get it as [`BrokerEvent::Message`].
    pub fn publish_message(
        &self,
        room: &str,
        message: Outgoing<'_>,
    ) -> impl Future<Output = Result<Publication, BrokerError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let dedupe = message
            .dedupe_key
            .filter(|_| !self.shared.dedupe.is_zero())
            .map(|key| self.shared.keys.dedupe(room, key));
        let queued = MessageHead::new(room, message.from, message.text)
            .map_err(BrokerError::from)
            .and_then(|head| {
                if self.shared.connection.borrow().is_none() {
                    return Err(BrokerError::Unavailable);
                }
                self.shared
                    .publish
                    .try_send(Job::Publish(PublishJob {
                        room: Arc::from(room),
                        head,
                        dedupe,
                        sent_by: message.sent_by.cloned(),
                        reply,
                    }))
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

    /// Sends `signal` on its room's channel: every node with members in the room gets it
    /// ([`BrokerEvent::Signal`]).
    pub fn send_signal(
        &self,
        signal: &Signal,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        self.publish_raw(self.shared.keys.room(&signal.room), signal_payload(signal))
    }

    /// PUBLISHes `payload` on `channel` as it is (a signal, an order): not kept, no seq, at
    /// most once (`SPUBLISH` on a cluster).
    fn publish_raw(
        &self,
        channel: String,
        payload: String,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let connection = self
            .shared
            .connection
            .borrow()
            .clone()
            .map(|l| l.connection);
        let command = self.shared.keys.publish_command();
        async move {
            let Some(mut connection) = connection else {
                return Err(BrokerError::Unavailable);
            };
            redis::cmd(command)
                .arg(channel)
                .arg(payload)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|err| {
                    metrics().broker_errors.inc();
                    BrokerError::Server(err.to_string())
                })
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
    /// resume request (the resume rule of [`super::can_resume`]). Creates the room with a new epoch
    /// if Redis does not have it. Call it after [`RedisBroker::subscribe`] answered.
    pub fn snapshot(
        &self,
        room: &str,
        resume: Option<ResumeRequest>,
    ) -> impl Future<Output = Result<JoinSnapshot, BrokerError>> + Send + 'static {
        self.join_snapshot(room, JoinRequest { resume, last: 0 })
    }

    /// [`RedisBroker::snapshot`] for a join's whole request: a resume, or (without one) the
    /// room's last `request.last` kept messages ([`Resume::Recent`](super::Resume::Recent)).
    pub fn join_snapshot(
        &self,
        room: &str,
        request: JoinRequest,
    ) -> impl Future<Output = Result<JoinSnapshot, BrokerError>> + Send + 'static {
        let shared = self.shared.clone();
        let room: Arc<str> = Arc::from(room);
        async move {
            let Some(Link {
                mut connection,
                run,
            }) = shared.connection.borrow().clone()
            else {
                return Err(BrokerError::Unavailable);
            };
            let failed = |err: RedisError| shared.failed(err);
            let (epoch, seq) = shared.room_head(&mut connection, &run, &room).await?;
            let history_size = shared.history.size;
            let size = history_size as u64;
            // The entries to read: after `since` up to the snapshot's seq, or its last K.
            let wanted = match &request.resume {
                Some(resume) if resume.since < seq && seq - resume.since <= size => {
                    Some((resume.since + 1, seq))
                }
                Some(_) => None,
                None if request.last > 0 && seq > 0 => {
                    Some((seq.saturating_sub(request.last as u64 - 1).max(1), seq))
                }
                None => None,
            };
            let Some((first, last)) = wanted else {
                return join_snapshot(room, epoch, seq, Vec::new(), &request, history_size);
            };
            // The history in that range, and the room's epoch once more: if Redis lost the
            // room in between, the entries may be another epoch's, and nothing is replayed
            // (the epoch check fails, or the entries are not all there).
            let (entries, epoch_now): (Value, Option<String>) = redis::pipe()
                .cmd("XRANGE")
                .arg(shared.keys.history(&room))
                .arg(format!("{first}-0"))
                .arg(format!("{last}-0"))
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
            join_snapshot(room, epoch, seq, entries, &request, history_size)
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

    fn node(&self) -> NodeId {
        self.shared.node
    }

    fn join(&mut self, room: &Arc<str>, request: JoinRequest) -> Pending<JoinSnapshot> {
        // SUBSCRIBE is sent now, before any later unsubscribe of this room; the snapshot is
        // read once Redis confirmed it, so that no message falls between.
        let subscribed = self.subscribe(room);
        let snapshot = self.join_snapshot(room, request);
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

    fn publish(&mut self, room: &Arc<str>, message: Outgoing<'_>) -> Pending<Publication> {
        Pending::Later(Box::pin(self.publish_message(room, message)))
    }

    fn signal(&mut self, signal: Signal) -> Pending<()> {
        Pending::Later(Box::pin(self.send_signal(&signal)))
    }

    fn presence_join(&mut self, room: &Arc<str>, name: &str, origin: Origin) {
        self.presence_job(PresenceJob::Join {
            room: room.clone(),
            name: Arc::from(name),
            session: origin.session,
        });
    }

    fn presence_leave(
        &mut self,
        room: &Arc<str>,
        name: &str,
        origin: Origin,
        departure: Departure,
    ) {
        let (room, name) = (room.clone(), Arc::from(name));
        self.presence_job(match departure {
            Departure::Now => PresenceJob::Leave { room, name },
            Departure::Keep(time) => PresenceJob::Keep {
                room,
                name,
                session: origin.session,
                time,
            },
        });
    }

    fn presence_limits(&self) -> PresenceLimits {
        self.presence
    }

    fn presence(&mut self, room: &Arc<str>) -> Pending<Vec<PresentName>> {
        if !self.presence.enabled {
            return Pending::Ready(Ok(Vec::new()));
        }
        let (reply, answer) = oneshot::channel();
        let job = PresenceJob::Read {
            room: room.clone(),
            reply,
        };
        if let Err(err) = self.shared.publish.try_send(Job::Presence(job)) {
            return Pending::Ready(Err(match err {
                tokio::sync::mpsc::error::TrySendError::Full(_) => BrokerError::Unavailable,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => BrokerError::Stopped,
            }));
        }
        Pending::Later(Box::pin(async move {
            answer.await.unwrap_or(Err(BrokerError::Stopped))
        }))
    }

    fn presence_sweep(&mut self, room: &Arc<str>) {
        self.presence_job(PresenceJob::Sweep { room: room.clone() });
    }

    fn presence_restore(&mut self, room: &Arc<str>, counts: Vec<(Arc<str>, u32)>) {
        self.presence_job(PresenceJob::Restore {
            room: room.clone(),
            counts,
        });
    }

    fn flush(&mut self) -> Pending<()> {
        let (reply, answer) = oneshot::channel();
        if self.shared.publish.try_send(Job::Flush(reply)).is_err() {
            return Pending::Ready(Err(BrokerError::Unavailable));
        }
        Pending::Later(Box::pin(async move {
            answer.await.map_err(|_| BrokerError::Stopped)
        }))
    }

    fn history(
        &mut self,
        room: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> Pending<super::HistoryPage> {
        Pending::Later(Box::pin(self.history_page(room, since, limit)))
    }

    fn control(&mut self, control: super::Control) -> Pending<()> {
        Pending::Later(Box::pin(self.send_control(&control)))
    }

    fn ready_events(&mut self, _: &mut Vec<BrokerEvent>) {}

    fn maintain(&mut self) {
        self.retry_lost();
    }
}

impl RedisBroker {
    /// Queues a presence job (nothing with presence off). A job that does not fit in the
    /// queue marks its room lost: a restore of this node's members there is queued instead
    /// as soon as one fits (the queue runs in order, so it sets exactly what the jobs before
    /// it left).
    fn presence_job(&mut self, job: PresenceJob) {
        if !self.presence.enabled {
            return;
        }
        // Before this job's own count: a restore queued now comes before the job.
        self.retry_lost();
        self.book.record(&job);
        let room = job.room().clone();
        if self.lost.contains(&room) {
            return;
        }
        if let Err(err) = self.shared.publish.try_send(Job::Presence(job)) {
            metrics().broker_errors.inc();
            if let tokio::sync::mpsc::error::TrySendError::Full(Job::Presence(job)) = err {
                if !matches!(job, PresenceJob::Sweep { .. } | PresenceJob::Renew { .. }) {
                    self.lost.insert(room);
                }
            }
        }
    }

    /// Queues a restore of every lost room that fits.
    fn retry_lost(&mut self) {
        let lost: Vec<Arc<str>> = self.lost.iter().cloned().collect();
        for room in lost {
            let job = PresenceJob::Restore {
                counts: self.book.counts(&room),
                room: room.clone(),
            };
            if self.shared.publish.try_send(Job::Presence(job)).is_err() {
                return;
            }
            self.lost.remove(&room);
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::config::{BrokerSettings, HistorySettings};

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
