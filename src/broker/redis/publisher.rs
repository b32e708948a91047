//! The publisher task of one node: the messages waiting to be published go to Redis as one
//! pipeline of script calls, awaited before the next, so that messages handed over in order
//! execute in that order; each gets its answer. It decides nothing about rooms.

use futures::channel::mpsc;
use log::debug;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::Script;
use tokio::sync::watch;

use super::super::local::HistoryLimits;
use super::super::{BrokerError, Epoch};
use super::keys::{origin_field, parse_published, Keys};
use super::{Command, PublishJob};
use crate::metrics::metrics;

/// Messages sent as one pipeline at most.
pub(super) const MAX_BATCH: usize = 256;

/// The publisher task: sends the waiting messages as one pipeline, awaits it, answers each.
pub(super) struct Publisher {
    pub(super) keys: Keys,
    pub(super) history: HistoryLimits,
    pub(super) jobs: tokio::sync::mpsc::Receiver<PublishJob>,
    pub(super) connection: watch::Receiver<Option<MultiplexedConnection>>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) script: Script,
    /// `publish.dedupe_ms`, for the dedupe keys' expiry.
    pub(super) dedupe_ms: u64,
}

impl Publisher {
    pub(super) async fn run(mut self) {
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
            let command = pipe
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(if job.dedupe.is_some() { 3 } else { 2 })
                .arg(self.keys.room(&job.room))
                .arg(self.keys.history(&job.room));
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
                .arg(self.dedupe_ms);
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
