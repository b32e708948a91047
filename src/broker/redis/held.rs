//! `broker.wait_replicas` = N > 0: the publisher's path for messages that count as sent only
//! once N replicas have them. The publish script then holds each message (its seq taken,
//! kept in the stream, appended to the room's pending list) instead of PUBLISHing it; the
//! pipeline ends with `WAIT N timeout`; once WAIT confirms, [`RELEASE_SCRIPT`] PUBLISHes the
//! room's held messages up to the batch's last seq, in seq order, and only then is each
//! sender answered. WAIT covers every write the master made before it, so a release may
//! publish the lower seqs another node still waits for: one room's messages go out once and
//! in seq order whichever node releases them.
//!
//! A WAIT that does not confirm in time answers the batch's senders
//! [`BrokerError::Interrupted`] (the message may or may not be sent: it stays held, and the
//! room's next confirmed release delivers it to every member, or a failover to a replica
//! that lacks it drops it unseen). The publisher retries such rooms every
//! [`RETRY_HELD`]: a write, `WAIT`, and the release once confirmed, so that held messages
//! go out as soon as the replicas are back even in a room where nobody speaks. It owns this path only; the answers' parsing is in
//! `keys.rs` and the ordinary path in `publisher.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use redis::aio::ConnectionLike;
use redis::{Pipeline, Value};

use super::super::{BrokerError, Publication};
use super::conn::Conn;
use super::keys::{parse_published, RELEASE_SCRIPT};
use super::publisher::Publisher;
use super::{Command, Job, Link, PublishJob};
use crate::metrics::metrics;

/// The most messages a room may hold waiting for WAIT (beyond, a publish is refused with
/// `unavailable`: the replicas are far behind or gone).
pub(super) const MAX_HELD: usize = 10_000;

/// How often rooms whose held messages WAIT did not confirm are tried again.
pub(super) const RETRY_HELD: Duration = Duration::from_millis(500);

impl Publisher {
    /// Sends `pipe` (the jobs of `batch`, publishes held) and `WAIT`, then releases and
    /// answers as the module says.
    pub(super) async fn send_held(
        &mut self,
        connection: &mut Conn,
        mut pipe: Pipeline,
        batch: &mut Vec<Job>,
        replicas: u8,
    ) {
        pipe.cmd("WAIT").arg(replicas).arg(self.wait_timeout_ms);
        let answers = connection
            .req_packed_commands(&pipe, 0, batch.len() + 1)
            .await;
        let mut values = match answers {
            Ok(values) if values.len() == batch.len() + 1 => {
                self.answered(batch);
                values
            }
            other => {
                let why = match &other {
                    Err(err) => err.to_string(),
                    Ok(_) => "a short answer".to_owned(),
                };
                debug!("broker: sending {} jobs failed: {why}", batch.len());
                self.broken(batch, why);
                return;
            }
        };
        let confirmed = matches!(values.pop(), Some(Value::Int(n)) if n >= i64::from(replicas));
        let mut reload = false;
        let mut readonly = false;
        let mut reload_presence = false;
        let mut held: Vec<(PublishJob, Publication)> = Vec::new();
        for (job, value) in batch.drain(..).zip(values) {
            match job {
                Job::Publish(job) => match parse_published(&job, value, &mut reload, &mut readonly)
                {
                    // A repeat too: its first message may still be held (by any node), and
                    // the repeat counts as sent only once that one is released.
                    Ok(publication @ (Publication::New(_) | Publication::Repeat { .. })) => {
                        held.push((job, publication))
                    }
                    result => {
                        if result.is_err() {
                            metrics().broker_errors.inc();
                        }
                        let _ = job.reply.send(result);
                    }
                },
                Job::Presence(job) => self.presence.answered(job, value, &mut reload_presence),
                Job::Flush(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        self.after_answers(connection, reload, readonly, reload_presence)
            .await;
        if held.is_empty() {
            return;
        }
        // One release per room, up to the last seq of the batch in it.
        let mut upto: HashMap<Arc<str>, u64> = HashMap::new();
        for (job, publication) in &held {
            let seq = upto.entry(job.room.clone()).or_default();
            *seq = (*seq).max(held_seq(publication));
        }
        if !confirmed {
            debug!(
                "broker: WAIT {replicas} did not confirm {} messages in time",
                held.len()
            );
            for (room, seq) in upto {
                let retry = self.unreleased.entry(room).or_default();
                *retry = (*retry).max(seq);
            }
            answer_all(held, BrokerError::Interrupted);
            return;
        }
        let rooms: Vec<(Arc<str>, u64)> = upto.into_iter().collect();
        let Some(released) = self.release(connection, rooms).await else {
            answer_all(held, BrokerError::Interrupted);
            return;
        };
        for (job, publication) in held {
            let out = released
                .get(&job.room)
                .is_some_and(|last| *last >= held_seq(&publication));
            let _ = job.reply.send(if out {
                Ok(publication)
            } else {
                // The room lost its held messages (Redis lost the room) before the release.
                metrics().broker_errors.inc();
                Err(BrokerError::Interrupted)
            });
        }
    }
}

impl Publisher {
    /// Releases `rooms` up to their seqs: the last seq released per room, or `None` if the
    /// pipeline failed (the driver is told to check the connection).
    async fn release(
        &mut self,
        connection: &mut Conn,
        rooms: Vec<(Arc<str>, u64)>,
    ) -> Option<HashMap<Arc<str>, u64>> {
        let release_code = self.keys.script_text(RELEASE_SCRIPT);
        let mut release = redis::pipe();
        for (room, seq) in &rooms {
            release
                .cmd("EVAL")
                .arg(&release_code)
                .arg(2)
                .arg(self.keys.room(room))
                .arg(self.keys.pending(room))
                .arg(self.keys.room(room))
                .arg(*seq);
        }
        let released = connection
            .req_packed_commands(&release, 0, rooms.len())
            .await;
        match released {
            Ok(values) if values.len() == rooms.len() => Some(
                rooms
                    .into_iter()
                    .zip(values)
                    .filter_map(|((room, _), value)| match value {
                        Value::Int(n) => Some((room, u64::try_from(n).unwrap_or(0))),
                        _ => None,
                    })
                    .collect(),
            ),
            other => {
                if let Err(err) = &other {
                    debug!("broker: releasing held messages failed: {err}");
                }
                let _ = self.commands.unbounded_send(Command::Suspect);
                None
            }
        }
    }

    /// Tries the rooms whose held messages WAIT did not confirm again: a write in each (so
    /// that WAIT covers everything the master has, on this connection too), WAIT, and the
    /// release once confirmed. Rooms released (or whose held messages are gone) are done.
    pub(super) async fn retry_held(&mut self) {
        let link = self.connection.borrow().clone();
        let Some(Link { mut connection, .. }) = link else {
            return;
        };
        let rooms: Vec<(Arc<str>, u64)> = self
            .unreleased
            .iter()
            .map(|(room, seq)| (room.clone(), *seq))
            .collect();
        let mut pipe = redis::pipe();
        for (room, _) in &rooms {
            pipe.cmd("PEXPIRE")
                .arg(self.keys.pending(room))
                .arg(self.history.ttl.as_millis() as u64);
        }
        pipe.cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(self.wait_timeout_ms);
        let answers = connection
            .req_packed_commands(&pipe, 0, rooms.len() + 1)
            .await;
        let confirmed = matches!(
            answers.as_deref().ok().and_then(<[Value]>::last),
            Some(Value::Int(n)) if *n >= i64::from(self.wait_replicas)
        );
        if !confirmed {
            return;
        }
        if let Some(released) = self.release(&mut connection, rooms).await {
            for room in released.keys() {
                self.unreleased.remove(room);
            }
        }
    }
}

/// The seq a held publication waits for: its own, or a repeat's first message's.
fn held_seq(publication: &Publication) -> u64 {
    match publication {
        Publication::New(published) => published.seq,
        Publication::Repeat { seq, .. } => *seq,
    }
}

fn answer_all(held: Vec<(PublishJob, Publication)>, err: BrokerError) {
    for (job, _) in held {
        metrics().broker_errors.inc();
        let _ = job.reply.send(Err(err.clone()));
    }
}
