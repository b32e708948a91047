//! The driver task of one node's Redis broker: the connection (made in the background, with
//! capped backoff, and made again when it breaks or the server turns out to be a replica;
//! through Sentinel, the master is asked for again each time), the pub/sub subscriptions of the rooms
//! with local members, the broker's health, and the epoch checks after a reconnect. It hands
//! [`BrokerEvent`]s to the supervisor's stream: messages, signals, epoch changes and presence
//! events; a presence keep notice (`P:K::MS`) makes it queue a sweep of the room once the
//! kept connection's time is over (the node that kept it may be gone by then).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use log::{debug, info, warn};
use redis::{Msg, RedisError, Script, Value};
use tokio::sync::watch;

use super::super::{
    BrokerError, BrokerEvent, BrokerHealth, Control, Epoch, EpochChange, JoinRequest,
};
use super::conn::Conn;
use super::keys::{
    join_snapshot, parse_publication, snapshot_base, snapshot_head, Keys, Publication,
    PUBLISH_SCRIPT, SNAPSHOT_SCRIPT,
};
use super::presence::PresenceJob;
use super::presence_script::{Notice, PRESENCE_SCRIPT};
use super::publisher::BROKEN_BEFORE_RECONNECT;
use super::runs::Runs;
use super::subscriber::{Incoming, Subscriber};
use super::target::{cluster_runs, run_id, Switches, Target};
use super::{hold_arg, Command, Job, Link, RedisSettings};
use crate::metrics::metrics;

/// A room with local members: how many, and the epoch last seen in it.
pub(super) struct RoomState {
    pub(super) members: usize,
    pub(super) epoch: Option<Epoch>,
}

/// The driver task: connection, subscriptions, health, epoch changes.
pub(super) struct Driver {
    /// One Redis, or the sentinels that name the master.
    pub(super) target: Target,
    /// While [`Driver::check_epochs`] lets the messages before its snapshots through: the
    /// epoch each room has now and the seq it began after, so that a message of that epoch
    /// met first reports the change from there (not from its own seq - 1).
    pub(super) expected: HashMap<Arc<str>, (Epoch, u64)>,
    /// While (re)connecting, before `Health(Up)`: the messages met then are not passed on,
    /// as the supervisor's catch-up after `Health(Up)` reads them from the history, in
    /// order after the ones other nodes published while this one was away (passing one on
    /// first would make the catch-up start after it, and skip those).
    pub(super) catching_up: bool,
    pub(super) redacted_url: String,
    pub(super) keys: Keys,
    pub(super) settings: RedisSettings,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) events: mpsc::Sender<BrokerEvent>,
    pub(super) connection: watch::Sender<Option<Link>>,
    pub(super) health: watch::Sender<BrokerHealth>,
    pub(super) rooms: HashMap<Arc<str>, RoomState>,
    pub(super) snapshot_script: Script,
    /// The publisher's queue, for the sweeps after kept connections (weak: the publisher
    /// ends when the handle is dropped).
    pub(super) jobs: tokio::sync::mpsc::WeakSender<Job>,
    /// The sweeps queued, by room and [`SWEEP_SLOT`] (one per slot is enough).
    pub(super) sweeps: HashSet<(Arc<str>, u64)>,
    /// The start of the sweep slots.
    pub(super) started: Instant,
}

/// Sweeps of a room after kept connections are made at most once per slot of this length
/// (a drain keeps thousands of connections with close deadlines: one sweep ends them all).
const SWEEP_SLOT: Duration = Duration::from_millis(250);

/// A sweep comes this long after the kept connection's time, so that it is surely over.
const SWEEP_MARGIN: Duration = Duration::from_millis(50);

/// Through Sentinel or on a Redis Cluster, connection attempts come at least this often:
/// asking the sentinels (or a cluster node) is cheap, and a failover is over a moment after
/// they name the new master (with 1 s, recovery came up to a second after that).
const SENTINEL_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How long one sentinel may take to accept the `+switch-master` subscription (the driver
/// waits for it after each connect; a sentinel on the network answers in milliseconds).
const SWITCHES_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection made: to `described` (for logs), whose master's `run_id` is `run` (per
/// slot range on a cluster).
struct Connection {
    connection: Conn,
    subscriber: Subscriber,
    run: Runs,
    described: String,
}

/// Why the connected phase ended.
enum Ended {
    /// Every handle is gone.
    Stopped,
    /// The connection broke.
    Lost(String),
}

/// The next `+switch-master` announcement; never, without a subscription (or once it ended).
async fn next_switch(switches: &mut Option<Switches>) -> Msg {
    if let Some(stream) = switches.as_mut() {
        if let Some(switch) = stream.next().await {
            return switch;
        }
        *switches = None;
    }
    std::future::pending().await
}

impl Driver {
    pub(super) async fn run(mut self) {
        let mut backoff = self.settings.backoff_min;
        let backoff_max = if self.target.follows_failovers() {
            self.settings.backoff_max.min(SENTINEL_BACKOFF_MAX)
        } else {
            self.settings.backoff_max
        };
        let mut told_down = false;
        info!("broker: connecting to {}", self.redacted_url);
        loop {
            match self.connect().await {
                Ok(connection) => match self.connected(connection).await {
                    Ended::Stopped => return,
                    Ended::Lost(why) => {
                        let was_up = *self.health.borrow() == BrokerHealth::Up;
                        self.set_down().await;
                        if was_up || !told_down {
                            warn!(
                                "broker down: lost {} ({why}); reconnecting",
                                self.redacted_url
                            );
                        } else {
                            debug!("broker: connecting failed: {why}");
                        }
                        // Said once: failed reconnects are not a new change of state.
                        told_down = true;
                        if was_up {
                            // At once: the next master may be there already.
                            backoff = self.settings.backoff_min;
                        } else {
                            // Connected but never up (a cluster still failing over: a
                            // subscription refused): as a failed connect.
                            metrics().broker_errors.inc();
                            if !self.wait_down(backoff).await {
                                return;
                            }
                            backoff = (backoff * 2).min(backoff_max);
                        }
                    }
                },
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
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
    }

    /// Connects to the master (asking the sentinels for it, through Sentinel; to every
    /// shard's master, on a cluster), loads the scripts and reads the master's `run_id`.
    async fn connect(&mut self) -> Result<Connection, RedisError> {
        let timeout = self.settings.timeout;
        let opened = self.target.open(timeout).await?;
        let mut connection = opened.connection;
        for code in [PUBLISH_SCRIPT, SNAPSHOT_SCRIPT, PRESENCE_SCRIPT] {
            connection.load_script(&self.keys.script_text(code)).await?;
        }
        let run = match &mut connection {
            Conn::Cluster(cluster) => cluster_runs(cluster).await?,
            Conn::Single(single) => {
                let info: String = redis::cmd("INFO").arg("server").query_async(single).await?;
                Runs::One(Arc::from(run_id(&info)?))
            }
        };
        Ok(Connection {
            connection,
            subscriber: opened.subscriber,
            run,
            described: opened.described,
        })
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
            Command::Suspect | Command::Readonly | Command::Reconnect(_) => {}
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

    async fn connected(&mut self, connected: Connection) -> Ended {
        let Connection {
            mut connection,
            mut subscriber,
            run,
            described,
        } = connected;
        // With `wait_replicas` > 0 a failover keeps the epochs: the scripts get no run_id.
        let script_run = if self.settings.wait_replicas > 0 {
            Runs::One(Arc::from(""))
        } else {
            run.clone()
        };
        let run = match &run {
            Runs::One(run) => format!("run_id {run}"),
            Runs::Shards(ranges) => format!("the run_ids of {} slot ranges", ranges.len()),
        };
        // Re-subscribe every room with local members, then find the rooms whose epoch changed.
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        if let Err(err) = subscriber.subscribe(&self.keys.control()).await {
            return Ended::Lost(err.to_string());
        }
        for room in &rooms {
            if let Err(err) = subscriber.subscribe(&self.keys.room(room)).await {
                return Ended::Lost(err.to_string());
            }
        }
        self.catching_up = true;
        let checked = self
            .check_epochs(&rooms, &script_run, &mut connection, &mut subscriber)
            .await;
        self.catching_up = false;
        if let Err(why) = checked {
            return Ended::Lost(why);
        }
        self.connection.send_replace(Some(Link {
            connection: connection.clone(),
            run: script_run.clone(),
        }));
        self.health.send_replace(BrokerHealth::Up);
        metrics().broker_up.set(1);
        // The address and run_id only: never the URL's password.
        info!(
            "broker up: connected to {} ({described}, {run}; {} rooms subscribed)",
            self.redacted_url,
            rooms.len()
        );
        self.emit(BrokerEvent::Health(BrokerHealth::Up)).await;
        // Through Sentinel: a failover announced by the sentinels is followed at once (the
        // old master may live on and take writes until it is demoted).
        let mut switches = self
            .target
            .switches(self.settings.timeout.min(SWITCHES_TIMEOUT))
            .await;

        let mut check = tokio::time::interval(self.settings.timeout);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = subscriber.next() => match message {
                    Some(Incoming::Message(message)) => self.publication(message).await,
                    Some(Incoming::Lost(why)) => return Ended::Lost(why),
                    None => return Ended::Lost("the pub/sub connection closed".to_owned()),
                },
                command = self.commands.next() => {
                    let Some(command) = command else {
                        return Ended::Stopped;
                    };
                    if let Err(why) = self
                        .command(command, &script_run, &mut connection, &mut subscriber)
                        .await
                    {
                        return Ended::Lost(why);
                    }
                }
                switch = next_switch(&mut switches) => {
                    if self.target.is_our_switch(switch.get_payload_bytes()) {
                        return Ended::Lost("the sentinels switched the master".to_owned());
                    }
                }
                _ = check.tick() => {
                    if let Err(why) = self.ping(&mut connection, &mut subscriber).await {
                        return Ended::Lost(why);
                    }
                }
            }
        }
    }

    /// A PING on both connections (to every master, on a cluster).
    async fn ping(&self, connection: &mut Conn, subscriber: &mut Subscriber) -> Result<(), String> {
        let timeout = self.settings.timeout;
        let pong: Result<Value, RedisError> = redis::cmd("PING").query_async(connection).await;
        pong.map_err(|err| err.to_string())?;
        match tokio::time::timeout(timeout, subscriber.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("pub/sub ping timed out".to_owned()),
        }
    }

    async fn command(
        &mut self,
        command: Command,
        run: &Runs,
        connection: &mut Conn,
        subscriber: &mut Subscriber,
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
                let subscribed = subscriber.subscribe(&self.keys.room(&room)).await;
                if let Err(err) = subscribed {
                    let _ = reply.send(Err(BrokerError::Unavailable));
                    return Err(err.to_string());
                }
                let checked = self
                    .check_epochs(std::slice::from_ref(&room), run, connection, subscriber)
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
                subscriber
                    .unsubscribe(&self.keys.room(&room))
                    .await
                    .map_err(|err| err.to_string())
            }
            Command::Suspect => self.ping(connection, subscriber).await,
            Command::Readonly => {
                Err("a write met READONLY: the server is a replica now".to_owned())
            }
            Command::Reconnect(why) => Err(format!(
                "{BROKEN_BEFORE_RECONNECT} pipelines in a row with a room's messages broke \
                 while the connection answered its health checks; the last: {why}"
            )),
        }
    }

    /// Reads the epoch and seq of `rooms` (creating rooms Redis lacks), lets every message
    /// published before that reach the event stream first (a PING on the pub/sub connection
    /// answers after them), then reports the rooms whose epoch differs from the one last
    /// seen, from the seq its epoch began after. A room seen for the first time takes its
    /// epoch silently. After a failover (`run` is another master's than the rooms' last
    /// writer), the script itself starts the rooms' new epochs.
    async fn check_epochs(
        &mut self,
        rooms: &[Arc<str>],
        run: &Runs,
        connection: &mut Conn,
        subscriber: &mut Subscriber,
    ) -> Result<(), String> {
        let mut current = Vec::with_capacity(rooms.len());
        for room in rooms {
            let answer: Result<Value, RedisError> = self
                .snapshot_script
                .key(self.keys.room(room))
                .key(self.keys.history(room))
                .key(self.keys.pending(room))
                .arg(Epoch::random().as_str())
                .arg(self.settings.history.ttl.as_millis() as u64)
                .arg(run.for_key(&self.keys.room(room)))
                .arg(hold_arg(self.settings.wait_replicas > 0))
                .invoke_async(connection)
                .await;
            let value = answer.map_err(|err| err.to_string())?;
            let (epoch, seq) = snapshot_head(&value).map_err(|err| err.to_string())?;
            let base = snapshot_base(&value);
            let snapshot = join_snapshot(
                room.clone(),
                epoch,
                seq,
                Vec::new(),
                &JoinRequest::default(),
                self.settings.history.size,
            )
            .map_err(|err| err.to_string())?;
            self.expected
                .insert(room.clone(), (snapshot.epoch.clone(), base));
            current.push((snapshot, base));
        }
        let drained = self.drain(subscriber).await;
        self.expected.clear();
        drained?;
        for (snapshot, base) in current {
            let Some(state) = self.rooms.get_mut(&snapshot.room) else {
                continue;
            };
            match &state.epoch {
                None => state.epoch = Some(snapshot.epoch),
                Some(seen) if *seen == snapshot.epoch => {}
                Some(_) => {
                    state.epoch = Some(snapshot.epoch.clone());
                    info!(
                        "broker: room {} has a new epoch {} from seq {base} (its history was \
                         lost, or may lack its last messages after a failover)",
                        snapshot.room, snapshot.epoch
                    );
                    // From the seq the epoch began after: messages other nodes published in
                    // the new epoch while this one was away are in the history (the
                    // supervisor's catch-up after `Health(Up)` delivers them), and the first
                    // of them is `base` + 1.
                    self.emit(BrokerEvent::EpochChanged(EpochChange {
                        room: snapshot.room,
                        epoch: snapshot.epoch,
                        seq: base,
                    }))
                    .await;
                }
            }
        }
        Ok(())
    }

    /// Lets every message published before now reach the event stream (a PING on the pub/sub
    /// connection answers after them).
    async fn drain(&mut self, subscriber: &mut Subscriber) -> Result<(), String> {
        subscriber.ping().await.map_err(|err| err.to_string())?;
        while let Some(next) = subscriber.next_ready() {
            match next {
                Some(Incoming::Message(message)) => self.publication(message).await,
                Some(Incoming::Lost(why)) => return Err(why),
                None => return Err("the pub/sub connection closed".to_owned()),
            }
        }
        Ok(())
    }

    /// A message on a room channel: reported after an epoch change if its epoch is new.
    async fn publication(&mut self, message: Msg) {
        if message.get_channel_name() == self.keys.control() {
            match serde_json::from_slice::<Control>(message.get_payload_bytes()) {
                Ok(control) => self.emit(BrokerEvent::Control(control)).await,
                Err(err) => {
                    warn!("broker: an unreadable order on the control channel was ignored: {err}")
                }
            }
            return;
        }
        let Some(room) = self.keys.room_of_channel(message.get_channel_name()) else {
            return;
        };
        let Some(room) = self.rooms.get_key_value(room).map(|(room, _)| room.clone()) else {
            // Unsubscribed meanwhile.
            return;
        };
        let mut published = match parse_publication(&room, message.get_payload_bytes()) {
            Some(Publication::Message(published)) => published,
            Some(Publication::Signal(mut signal)) => {
                signal.room = room;
                self.emit(BrokerEvent::Signal(signal)).await;
                return;
            }
            Some(Publication::Presence(Notice::Event(mut event))) => {
                event.room = room;
                self.emit(BrokerEvent::Presence(event)).await;
                return;
            }
            Some(Publication::Presence(Notice::Kept(time))) => {
                self.sweep_after(room, time);
                return;
            }
            None => {
                warn!("broker: an unreadable publication on room {room} was ignored");
                return;
            }
        };
        published.room = room.clone();
        let Some(state) = self.rooms.get_mut(&room) else {
            return;
        };
        let change = match &state.epoch {
            Some(seen) if *seen != published.epoch => Some(EpochChange {
                room: room.clone(),
                epoch: published.epoch.clone(),
                seq: match self.expected.get(&room) {
                    Some((epoch, base)) if *epoch == published.epoch => *base,
                    _ => published.seq.saturating_sub(1),
                },
            }),
            _ => None,
        };
        state.epoch = Some(published.epoch.clone());
        if let Some(change) = change {
            info!(
                "broker: room {} has a new epoch {} from seq {} (its history was lost, or may \
                 lack its last messages after a failover)",
                change.room, change.epoch, change.seq
            );
            self.emit(BrokerEvent::EpochChanged(change)).await;
        }
        if self.catching_up && self.settings.history.size > 0 {
            debug!(
                "broker: room {room} seq {} left to the catch-up",
                published.seq
            );
            return;
        }
        self.emit(BrokerEvent::Message(published)).await;
    }

    /// Queues a sweep of `room` once `time` (and a margin) is over, unless one is queued for
    /// the same slot already.
    fn sweep_after(&mut self, room: Arc<str>, time: Duration) {
        let slot_ms = SWEEP_SLOT.as_millis();
        let now = self.started.elapsed();
        let due = now.saturating_add(time).saturating_add(SWEEP_MARGIN);
        let slot = u64::try_from(due.as_millis().div_ceil(slot_ms)).unwrap_or(u64::MAX);
        let current = u64::try_from(now.as_millis() / slot_ms).unwrap_or(u64::MAX);
        self.sweeps.retain(|(_, queued)| *queued >= current);
        if !self.sweeps.insert((room.clone(), slot)) {
            return;
        }
        let at = self.started + SWEEP_SLOT.saturating_mul(u32::try_from(slot).unwrap_or(u32::MAX));
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            if let Some(jobs) = jobs.upgrade() {
                // A full queue: the heartbeat's renew sweeps the room too.
                let _ = jobs.try_send(Job::Presence(PresenceJob::Sweep { room }));
            }
        });
    }
}
