//! The publisher task of one node: the jobs waiting (messages to publish, presence
//! operations) go to Redis as one pipeline of script calls, awaited before the next, so that
//! jobs handed over in order execute in that order; each message gets its answer. It also
//! runs the presence heartbeat ([`PresenceWorker`]). It decides nothing about rooms.

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::mpsc;
use log::debug;
use redis::aio::ConnectionLike;
use redis::{Pipeline, Script};
use tokio::sync::watch;

use super::super::local::HistoryLimits;
use super::super::{BrokerError, Epoch};
use super::conn::Conn;
use super::held::{MAX_HELD, RETRY_HELD};
use super::keys::{origin_field, parse_published, Keys, PUBLISH_SCRIPT};
use super::presence::PresenceWorker;
use super::presence_script::PRESENCE_SCRIPT;
use super::runs::Runs;
use super::{hold_arg, Command, Job, Link, PublishJob};
use crate::metrics::metrics;

/// Jobs sent as one pipeline at most.
pub(super) const MAX_BATCH: usize = 256;

/// The publisher task: sends the waiting jobs as one pipeline, awaits it, answers each.
pub(super) struct Publisher {
    pub(super) keys: Keys,
    pub(super) history: HistoryLimits,
    pub(super) jobs: tokio::sync::mpsc::Receiver<Job>,
    pub(super) connection: watch::Receiver<Option<Link>>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) script: Script,
    /// `publish.dedupe_ms`, for the dedupe keys' expiry.
    pub(super) dedupe_ms: u64,
    /// `broker.wait_replicas` (0: publish at once; else `held.rs`).
    pub(super) wait_replicas: u8,
    /// How long a `WAIT` may block (below the connection's response timeout).
    pub(super) wait_timeout_ms: u64,
    /// Rooms with messages held after a WAIT that did not confirm, and the last such seq:
    /// tried again every [`RETRY_HELD`].
    pub(super) unreleased: HashMap<Arc<str>, u64>,
    pub(super) presence: PresenceWorker,
    /// Per room, the pipelines with its messages that broke since one was answered (see
    /// [`BROKEN_BEFORE_RECONNECT`]).
    pub(super) broken_rooms: HashMap<Arc<str>, u32>,
}

/// Once this many pipelines with a room's messages broke in a row, the driver is asked to
/// make the connection again even if it answers its PINGs (a cluster client stuck on a
/// shard: after a failover, a shard's rooms stayed refused while the node reported up, and
/// the other rooms' messages went through).
pub(super) const BROKEN_BEFORE_RECONNECT: u32 = 3;

impl Publisher {
    pub(super) async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut retry = tokio::time::interval(RETRY_HELD);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.presence.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = self.jobs.recv() => {
                    let Some(job) = job else {
                        return;
                    };
                    batch.push(job);
                    while batch.len() < MAX_BATCH {
                        match self.jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    self.send(&mut batch).await;
                }
                _ = retry.tick(), if !self.unreleased.is_empty() => self.retry_held().await,
                _ = heartbeat.tick() => {
                    let mut jobs = self.presence.heartbeat_jobs().into_iter().map(Job::Presence);
                    loop {
                        batch.extend(jobs.by_ref().take(MAX_BATCH));
                        if batch.is_empty() {
                            break;
                        }
                        self.send(&mut batch).await;
                    }
                }
            }
        }
    }

    /// Sends `batch` (emptied); the flushes in it are answered once the rest has run.
    async fn send(&mut self, batch: &mut Vec<Job>) {
        let mut flushes = Vec::new();
        for job in std::mem::take(batch) {
            match job {
                Job::Flush(reply) => flushes.push(reply),
                job => batch.push(job),
            }
        }
        if !batch.is_empty() {
            self.send_jobs(batch).await;
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }

    async fn send_jobs(&mut self, batch: &mut Vec<Job>) {
        let link = self.connection.borrow().clone();
        let Some(Link {
            mut connection,
            run,
        }) = link
        else {
            for job in batch.drain(..) {
                match job {
                    Job::Publish(job) => {
                        metrics().broker_errors.inc();
                        let _ = job.reply.send(Err(BrokerError::Unavailable));
                    }
                    Job::Presence(job) => {
                        self.presence.record(&job);
                        self.presence.unsent(job, BrokerError::Unavailable);
                    }
                    Job::Flush(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
            return;
        };
        let mut pipe = redis::pipe();
        for job in batch.iter() {
            match job {
                Job::Publish(job) => self.publish_command(&mut pipe, job, &run),
                Job::Presence(job) => {
                    pipe.add_command(self.presence.prepare(job));
                }
                Job::Flush(_) => {}
            }
        }
        if self.wait_replicas > 0 {
            let replicas = self.wait_replicas;
            self.send_held(&mut connection, pipe, batch, replicas).await;
            return;
        }
        // `req_packed_commands` rather than `query_async`: it answers per command, so that
        // one refused message does not hide that the others were published.
        let answers = connection.req_packed_commands(&pipe, 0, batch.len()).await;
        match answers {
            Ok(values) if values.len() == batch.len() => {
                self.answered(batch);
                let mut reload = false;
                let mut readonly = false;
                let mut reload_presence = false;
                for (job, value) in batch.drain(..).zip(values) {
                    match job {
                        Job::Publish(job) => {
                            let result = parse_published(&job, value, &mut reload, &mut readonly);
                            if result.is_err() {
                                metrics().broker_errors.inc();
                            }
                            let _ = job.reply.send(result);
                        }
                        Job::Presence(job) => {
                            self.presence.answered(job, value, &mut reload_presence);
                        }
                        Job::Flush(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
                self.after_answers(&mut connection, reload, readonly, reload_presence)
                    .await;
            }
            Ok(_) | Err(_) => {
                let why = match &answers {
                    Err(err) => err.to_string(),
                    Ok(_) => "a short answer".to_owned(),
                };
                debug!("broker: sending {} jobs failed: {why}", batch.len());
                self.broken(batch, why);
            }
        }
    }

    /// After a pipeline's answers: a `READONLY` makes the driver reconnect; a flushed script
    /// cache is refilled (the jobs that met NOSCRIPT did not run).
    pub(super) async fn after_answers(
        &mut self,
        connection: &mut Conn,
        reload: bool,
        readonly: bool,
        reload_presence: bool,
    ) {
        if readonly {
            let _ = self.commands.unbounded_send(Command::Readonly);
        }
        if reload {
            let code = self.keys.script_text(PUBLISH_SCRIPT);
            if let Err(err) = connection.load_script(&code).await {
                debug!("broker: loading the publish script failed: {err}");
            }
        }
        if reload_presence {
            let code = self.keys.script_text(PRESENCE_SCRIPT);
            if let Err(err) = connection.load_script(&code).await {
                debug!("broker: loading the presence script failed: {err}");
            }
        }
    }

    /// The pipeline of `batch` was answered: its rooms reach Redis.
    pub(super) fn answered(&mut self, batch: &[Job]) {
        if self.broken_rooms.is_empty() {
            return;
        }
        for job in batch {
            if let Job::Publish(job) = job {
                self.broken_rooms.remove(&job.room);
            }
        }
    }

    /// The pipeline of `batch` broke (`why`): its jobs' fate is unknown; the driver checks the
    /// connection.
    pub(super) fn broken(&mut self, batch: &mut Vec<Job>, why: String) {
        let mut stuck = false;
        for job in batch.iter() {
            if let Job::Publish(job) = job {
                let count = self.broken_rooms.entry(job.room.clone()).or_default();
                *count += 1;
                stuck |= *count >= BROKEN_BEFORE_RECONNECT;
            }
        }
        let command = if stuck {
            self.broken_rooms.clear();
            Command::Reconnect(why)
        } else {
            Command::Suspect
        };
        let _ = self.commands.unbounded_send(command);
        for job in batch.drain(..) {
            match job {
                Job::Publish(job) => {
                    metrics().broker_errors.inc();
                    let _ = job.reply.send(Err(BrokerError::Interrupted));
                }
                Job::Presence(job) => self.presence.unsent(job, BrokerError::Interrupted),
                Job::Flush(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// The publish script's call for `job`, added to `pipe`.
    fn publish_command(&self, pipe: &mut Pipeline, job: &PublishJob, run: &Runs) {
        let ttl_ms = self.history.ttl.as_millis() as u64;
        let command = pipe
            .cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(if job.dedupe.is_some() { 4 } else { 3 })
            .arg(self.keys.room(&job.room))
            .arg(self.keys.history(&job.room))
            .arg(self.keys.pending(&job.room));
        if let Some(dedupe) = &job.dedupe {
            command.arg(dedupe);
        }
        command
            .arg(self.keys.room(&job.room))
            .arg(job.head.as_str())
            .arg(Epoch::random().as_str())
            .arg(self.history.size)
            .arg(ttl_ms)
            .arg(origin_field(job.sent_by.as_ref()))
            .arg(self.dedupe_ms)
            .arg(run.for_key(&self.keys.room(&job.room)))
            .arg(hold_arg(self.wait_replicas > 0))
            .arg(MAX_HELD);
    }
}
