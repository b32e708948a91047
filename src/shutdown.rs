//! Shutdown: readiness, the signals, the drain deadline and the second-signal force.
//!
//! [`Readiness`] is the one flag that `/readyz` and the upgrade route read. [`drain_on_signal`]
//! waits for SIGTERM, SIGINT or SIGHUP, flips readiness, asks the supervisor to drain, and
//! bounds the whole thing: the drain's own deadline, a hard cap one second later, and a second
//! signal that aborts everything at once. It must not know about sessions or sockets: it only talks
//! to the supervisor and the HTTP server handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_rt::signal::unix::{signal, Signal, SignalKind};
use actix_web::dev::ServerHandle;
use log::{info, warn};

use crate::close::CloseStatus;
use crate::supervisor::{AbortAll, Drain, DrainReport, Supervisor};

/// Whether the server accepts new sessions. Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// A ready flag.
    pub fn new() -> Self {
        Readiness::default()
    }

    /// True until the drain starts.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }

    /// From now on: not ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// What a drain does.
#[derive(Debug, Clone)]
pub struct DrainPlan {
    /// Close status every session sends.
    pub status: Option<CloseStatus>,
    /// Hard deadline for the whole drain.
    pub deadline: Duration,
    /// How long a closing session waits for its ack (`close.timeout_ms`): the last batch must
    /// be told at least this long before the deadline.
    pub close_timeout: Duration,
    /// Sessions per batch; 0 = all at once.
    pub batch_size: usize,
    /// Time between batches.
    pub batch_interval: Duration,
    /// Each session's `going_away` suggests a reconnect delay drawn uniformly from zero to
    /// this (`shutdown.reconnect_spread_ms`); `None` sends no `going_away`.
    pub reconnect_spread: Option<Duration>,
}

/// One batch of a drain: the sessions at `sessions` (indexes into the drain's list) are told
/// `at` after the drain started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// When, from the drain's start.
    pub at: Duration,
    /// Which sessions.
    pub sessions: std::ops::Range<usize>,
}

/// When each of `sessions` sessions is told to close.
///
/// Batches go out `batch_interval` apart. A batch may start no later than `deadline` minus
/// `close_timeout`, so that its sessions have their whole close timeout before the deadline;
/// when the next batch could not start by then, the current one takes every session left
/// (and the schedule says it was `compressed`). Nobody is left to the deadline's abort for
/// want of a batch.
pub fn batch_schedule(sessions: usize, plan: &DrainPlan) -> (Vec<Batch>, bool) {
    if sessions == 0 {
        return (Vec::new(), false);
    }
    let all_at_once = vec![Batch {
        at: Duration::ZERO,
        sessions: 0..sessions,
    }];
    if plan.batch_size == 0 || plan.batch_size >= sessions || plan.batch_interval.is_zero() {
        return (all_at_once, false);
    }
    let last_start = plan.deadline.saturating_sub(plan.close_timeout);
    let mut batches = Vec::new();
    let mut start = 0usize;
    let mut compressed = false;
    for index in 0u32.. {
        let at = plan.batch_interval.saturating_mul(index);
        let next_at = plan.batch_interval.saturating_mul(index.saturating_add(1));
        let mut end = start.saturating_add(plan.batch_size).min(sessions);
        if end < sessions && next_at > last_start {
            end = sessions;
            compressed = true;
        }
        batches.push(Batch {
            at,
            sessions: start..end,
        });
        if end == sessions {
            break;
        }
        start = end;
    }
    (batches, compressed)
}

/// How the signal listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for signals: {0}")]
pub struct SignalError(#[from] std::io::Error);

/// SIGTERM, SIGINT and SIGHUP, caught from the moment this value exists: create it before the
/// server announces itself, so that an early signal drains instead of killing the process.
/// SIGHUP drains like SIGTERM: wsgrace has nothing to reload, and a hangup (a closed terminal,
/// a process supervisor's HUP) must not drop every connection without a close frame, as the
/// default action would.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> Result<Signals, SignalError> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP, then drains and stops `server`. A second signal during
/// the drain aborts every session and stops at once. Returns the drain report.
pub async fn drain_on_signal(
    signals: Signals,
    supervisor: Addr<Supervisor>,
    readiness: Readiness,
    plan: DrainPlan,
    server: ServerHandle,
) -> DrainReport {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        _ = hup.recv() => info!("SIGHUP: draining"),
    }
    let second = async {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
            _ = hup.recv() => {},
        }
    };
    let report = drain(supervisor, readiness, plan, second).await;
    info!("drain finished: {report}");
    server.stop(false).await;
    report
}

/// Drains through `supervisor`: readiness off, every session told, answer by the deadline.
/// When `force` completes first, every session is aborted and the drain ends at once.
pub async fn drain(
    supervisor: Addr<Supervisor>,
    readiness: Readiness,
    plan: DrainPlan,
    force: impl std::future::Future<Output = ()>,
) -> DrainReport {
    readiness.set_draining();
    crate::metrics::metrics().draining.set(1);
    let started = std::time::Instant::now();
    let hard_cap = plan.deadline + Duration::from_millis(900);
    let mut request = std::pin::pin!(supervisor.send(Drain { plan }));
    tokio::select! {
        report = &mut request => return answered(report, started),
        _ = force => warn!("second signal: aborting every session"),
        _ = actix_rt::time::sleep(hard_cap) => {
            warn!("drain not finished {hard_cap:?} after the signal: stopping anyway");
        }
    }
    // The aborted sessions' ends reach the supervisor at once; its report counts them.
    supervisor.do_send(AbortAll);
    if std::env::var_os("MUTANT").is_some() {
        return DrainReport::default();
    }
    match tokio::time::timeout(FORCED_REPORT_WAIT, request).await {
        Ok(report) => answered(report, started),
        Err(_) => {
            warn!("the supervisor did not report the aborted drain in time");
            DrainReport {
                duration: started.elapsed(),
                ..DrainReport::default()
            }
        }
    }
}

/// How long a forced drain waits for the supervisor's report (which it gives within its abort
/// grace): the process still exits within 1 s of the second signal.
const FORCED_REPORT_WAIT: Duration = Duration::from_millis(800);

/// The supervisor's answer to the drain, or an empty report if it could not answer.
fn answered(
    report: Result<DrainReport, actix::MailboxError>,
    started: std::time::Instant,
) -> DrainReport {
    report.unwrap_or_else(|err| {
        warn!("the supervisor did not answer the drain: {err}");
        DrainReport {
            duration: started.elapsed(),
            ..DrainReport::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(batch_size: usize, interval_ms: u64, deadline_ms: u64, close_ms: u64) -> DrainPlan {
        DrainPlan {
            status: None,
            deadline: Duration::from_millis(deadline_ms),
            close_timeout: Duration::from_millis(close_ms),
            batch_size,
            batch_interval: Duration::from_millis(interval_ms),
            reconnect_spread: None,
        }
    }

    /// (start ms, first, end) per batch.
    fn shape(batches: &[Batch]) -> Vec<(u128, usize, usize)> {
        batches
            .iter()
            .map(|b| (b.at.as_millis(), b.sessions.start, b.sessions.end))
            .collect()
    }

    #[test]
    fn batches_that_fit_go_out_as_configured() {
        let (batches, compressed) = batch_schedule(30, &plan(10, 1000, 10_000, 2000));
        assert_eq!(
            shape(&batches),
            [(0, 0, 10), (1000, 10, 20), (2000, 20, 30)]
        );
        assert!(!compressed);
    }

    #[test]
    fn the_last_batch_that_fits_takes_everyone_left() {
        // 100 sessions, 10 a second, 3 s to drain, 1 s close timeout: batches may start up to
        // 2 s; the one at 2 s takes the remaining 80.
        let (batches, compressed) = batch_schedule(100, &plan(10, 1000, 3000, 1000));
        assert_eq!(
            shape(&batches),
            [(0, 0, 10), (1000, 10, 20), (2000, 20, 100)]
        );
        assert!(compressed);
    }

    #[test]
    fn a_close_timeout_as_long_as_the_deadline_tells_everyone_at_once() {
        // The case with the default close timeout (5 s) and a 3 s deadline.
        let (batches, compressed) = batch_schedule(100, &plan(10, 1000, 3000, 5000));
        assert_eq!(shape(&batches), [(0, 0, 100)]);
        assert!(compressed);
    }

    #[test]
    fn no_batching_is_one_batch() {
        for p in [
            plan(0, 1000, 3000, 1000),
            plan(10, 0, 3000, 1000),
            plan(500, 10, 1, 1),
        ] {
            let (batches, compressed) = batch_schedule(100, &p);
            assert_eq!(shape(&batches), [(0, 0, 100)]);
            assert!(!compressed);
        }
        assert_eq!(batch_schedule(0, &plan(10, 10, 10, 1)).0, []);
    }

    #[test]
    fn every_session_is_in_exactly_one_batch_that_starts_in_time() {
        for sessions in [1, 7, 99, 1000] {
            for size in [1, 3, 10, 64] {
                for interval in [1, 250, 1000] {
                    for (deadline, close) in [(3000, 1000), (10_000, 5000), (500, 100), (100, 900)]
                    {
                        let p = plan(size, interval, deadline, close);
                        let (batches, _) = batch_schedule(sessions, &p);
                        let mut next = 0;
                        for b in &batches {
                            assert_eq!(b.sessions.start, next, "{p:?}");
                            assert!(b.sessions.end > b.sessions.start, "{p:?}");
                            next = b.sessions.end;
                            let latest = p.deadline.saturating_sub(p.close_timeout);
                            assert!(b.at <= latest || b.at.is_zero(), "{p:?}: {b:?}");
                        }
                        assert_eq!(next, sessions, "{p:?}");
                    }
                }
            }
        }
    }
}
