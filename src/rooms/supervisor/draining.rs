//! The supervisor's drain: telling every session to shut down (in batches, after a
//! `going_away`), the deadline's aborts, a second signal's, and the report. The plan and the
//! report's counting are [`crate::rooms::drain`]'s; this is the carrying out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{ActorContext, AsyncContext, Context, Handler, ResponseFuture, SpawnHandle};
use futures::channel::oneshot;
use log::{debug, info, warn};

use super::{AbortAll, Drain, ShardRef, Supervisor};
use crate::close::CloseStatus;
use crate::connection::session::{SessionHandle, SessionId};
use crate::rooms::drain::{batch_schedule, DrainReport};
use crate::rooms::fanout::ShutDown;

/// Sessions in a shard's first [`ShutDown`] message of a batch: few enough that the shard
/// starts writing close frames a fraction of a millisecond after the drain starts, while the
/// supervisor sorts out the rest, which follow in one message. (Messages of 128 throughout
/// cost 17-31 % more CPU in drain 10000: the shard's loop broke into pieces between which its
/// thread took up the acks that had come in, a few at a time.)
const FIRST_CHUNK: usize = 64;

/// One shard's part of a batch being told: its sessions not sent yet (each with its
/// `going_away` delay), and whether its first message went.
struct Orders {
    shard: ShardRef,
    sessions: Vec<(SessionId, Option<Duration>)>,
    first_sent: bool,
}

/// A drain under way (and, once answered, the flag that turns late joins away).
pub(super) struct DrainState {
    pub(super) started: Instant,
    pub(super) status: Option<CloseStatus>,
    pub(super) reconnect_spread: Option<Duration>,
    pub(super) report: DrainReport,
    pub(super) reply: Option<oneshot::Sender<DrainReport>>,
    pub(super) deadline: Option<SpawnHandle>,
    /// The broker has carried out the sessions' departures (presence) before the answer.
    pub(super) flushed: bool,
}

/// A `going_away` reconnect delay drawn uniformly from 0 to `spread` (`None`: no `going_away`).
pub(super) fn reconnect_delay(spread: Option<Duration>) -> Option<Duration> {
    spread.map(|spread| {
        let millis = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    })
}

/// Tells one session to shut down, after a `going_away` with a delay drawn from `spread`;
/// returns the delay it was given.
pub(super) fn shut_down(
    session: &SessionHandle,
    status: &Option<CloseStatus>,
    spread: Option<Duration>,
) -> Option<Duration> {
    let delay = reconnect_delay(spread);
    match delay {
        Some(delay) => session.shutdown_going_away(status.clone(), delay),
        None => session.shutdown(status.clone()),
    }
    delay
}

impl Supervisor {
    /// Ends the drain if every session has left.
    pub(super) fn finish_drain_if_done(&mut self, ctx: &mut Context<Self>) {
        // A message a session sent before its close is published before the process exits
        // (each publish answers within the broker's request timeout).
        if !self.members.is_empty() || self.publishing > 0 {
            return;
        }
        // What the sessions' ends did to presence reaches the broker before the process
        // exits (with Redis, presence calls are fire-and-forget): counted like a publish.
        if let Some(drain) = self.drain.as_mut().filter(|drain| !drain.flushed) {
            drain.flushed = true;
            self.publishing += 1;
            let pending = self.broker.flush();
            self.when_answered(pending, ctx, |act, _, ctx| {
                act.publishing = act.publishing.saturating_sub(1);
                act.finish_drain_if_done(ctx);
            });
            return;
        }
        if let Some(mut drain) = self.drain.take() {
            if let Some(handle) = drain.deadline.take() {
                ctx.cancel_future(handle);
            }
            drain.report.duration = drain.started.elapsed();
            if let Some(reply) = drain.reply.take() {
                let _ = reply.send(drain.report.clone());
            }
            // Keep answering "draining" for late upgrades that raced the signal.
            self.drain = Some(DrainState {
                reply: None,
                deadline: None,
                ..drain
            });
        }
    }

    /// Tells `ids` to shut down: two [`ShutDown`]s per shard (thread), the first with
    /// [`FIRST_CHUNK`] of its sessions, not one cross-thread message per session. The shard
    /// finds each session by its id (no address cloned).
    fn shut_down_batch(&mut self, ids: &[SessionId], status: &Option<CloseStatus>) {
        let spread = self.drain.as_ref().and_then(|drain| drain.reconnect_spread);
        let mut per_shard: Vec<Orders> = Vec::new();
        for id in ids {
            let Some(member) = self.members.get_mut(id) else {
                continue;
            };
            // Remembered for presence: it stays present until it could be back.
            member.going_away = reconnect_delay(spread);
            let group = match per_shard
                .iter()
                .position(|orders| Arc::ptr_eq(&orders.shard, &member.shard))
            {
                Some(group) => group,
                None => {
                    per_shard.push(Orders {
                        shard: member.shard.clone(),
                        sessions: Vec::with_capacity(FIRST_CHUNK),
                        first_sent: false,
                    });
                    per_shard.len() - 1
                }
            };
            let Some(orders) = per_shard.get_mut(group) else {
                continue;
            };
            orders.sessions.push((*id, member.going_away));
            if !orders.first_sent && orders.sessions.len() >= FIRST_CHUNK {
                orders.first_sent = true;
                orders.shard.do_send(ShutDown {
                    status: status.clone(),
                    sessions: std::mem::take(&mut orders.sessions),
                });
            }
        }
        for orders in per_shard {
            if !orders.sessions.is_empty() {
                orders.shard.do_send(ShutDown {
                    status: status.clone(),
                    sessions: orders.sessions,
                });
            }
        }
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let plan = msg.plan;
        let (tx, rx) = oneshot::channel();
        let sessions = self.members.len();
        info!(
            "drain started: {sessions} sessions, deadline {:?}",
            plan.deadline
        );
        let deadline = ctx.run_later(plan.deadline, |act, ctx| {
            info!(
                "drain deadline reached: aborting {} sessions",
                act.members.len()
            );
            act.abort_remaining(ctx);
        });
        self.drain = Some(DrainState {
            started: Instant::now(),
            status: plan.status.clone(),
            reconnect_spread: plan.reconnect_spread,
            report: DrainReport {
                sessions,
                ..DrainReport::default()
            },
            reply: Some(tx),
            deadline: Some(deadline),
            flushed: false,
        });

        let mut ids: Vec<SessionId> = self.members.keys().copied().collect();
        // Batches go in session order. So do the shards' loops, which is also the order their
        // sessions' memory (and the kernel's sockets) were allocated in: in the registry's hash
        // order drain 10000 took ~17 % more CPU.
        ids.sort_unstable();
        let (batches, compressed) = batch_schedule(ids.len(), &plan);
        if compressed {
            if let Some(last) = batches.last() {
                info!(
                    "drain: batches of {} every {:?} do not fit the deadline {:?} less the close \
                     timeout {:?}: the batch at {:?} closes the last {} sessions",
                    plan.batch_size,
                    plan.batch_interval,
                    plan.deadline,
                    plan.close_timeout,
                    last.at,
                    last.sessions.len()
                );
            }
        }
        for batch in batches {
            let Some(chunk) = ids.get(batch.sessions) else {
                continue;
            };
            if batch.at.is_zero() {
                self.shut_down_batch(chunk, &plan.status);
            } else {
                let chunk = chunk.to_vec();
                let status = plan.status.clone();
                ctx.run_later(batch.at, move |act, _| act.shut_down_batch(&chunk, &status));
            }
        }
        self.finish_drain_if_done(ctx);
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<AbortAll> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: AbortAll, ctx: &mut Self::Context) {
        info!("aborting {} sessions", self.members.len());
        if self
            .drain
            .as_ref()
            .is_some_and(|drain| drain.reply.is_some())
        {
            // The drain's report counts them, and answers once they are gone.
            self.abort_remaining(ctx);
            return;
        }
        for member in self.members.values() {
            member.session.abort();
        }
        if self.members.is_empty() {
            ctx.stop();
        }
    }
}

/// How long aborted sessions have to report their end before the supervisor forgets them.
const ABORT_GRACE: Duration = Duration::from_millis(500);

impl Supervisor {
    /// Aborts every session still registered, for the drain's deadline or a second signal.
    /// Aborted sessions leave at once, each counted in the drain's report; one that cannot (its
    /// thread is gone) is dropped from the registry after [`ABORT_GRACE`], counted aborted,
    /// and the drain answers.
    fn abort_remaining(&mut self, ctx: &mut Context<Self>) {
        for member in self.members.values() {
            member.session.abort();
        }
        ctx.run_later(ABORT_GRACE, |act, ctx| {
            let ids: Vec<SessionId> = act.members.keys().copied().collect();
            for id in ids {
                if let Some(member) = act.members.remove(&id) {
                    debug!("session={} dropped from the registry", member.session.id());
                    if let Some(drain) = act.drain.as_mut() {
                        drain.report.aborted += 1;
                    }
                }
            }
            act.rooms.clear();
            if act.publishing > 0 {
                warn!(
                    "drain: {} messages still unanswered by the broker at the deadline",
                    act.publishing
                );
                act.publishing = 0;
            }
            act.finish_drain_if_done(ctx);
        });
    }
}
