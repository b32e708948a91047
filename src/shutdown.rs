//! Shutdown: readiness, the signals, the drain deadline and the second-signal force.
//!
//! [`Readiness`] is the one flag that `/readyz` and the upgrade route read. [`drain_on_signal`]
//! waits for SIGTERM or SIGINT, flips readiness, asks the supervisor to drain, and bounds the
//! whole thing: the drain's own deadline, a hard cap one second later, and a second signal
//! that aborts everything at once. It must not know about sessions or sockets: it only talks
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
    /// Sessions per batch; 0 = all at once.
    pub batch_size: usize,
    /// Time between batches.
    pub batch_interval: Duration,
}

/// How the signal listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for signals: {0}")]
pub struct SignalError(#[from] std::io::Error);

/// SIGTERM and SIGINT, caught from the moment this value exists: create it before the server
/// announces itself, so that an early signal drains instead of killing the process.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> Result<Signals, SignalError> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Waits for SIGTERM or SIGINT, then drains and stops `server`. A second signal during the
/// drain aborts every session and stops at once. Returns the drain report.
pub async fn drain_on_signal(
    signals: Signals,
    supervisor: Addr<Supervisor>,
    readiness: Readiness,
    plan: DrainPlan,
    server: ServerHandle,
) -> DrainReport {
    let Signals { mut term, mut int } = signals;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    let second = async {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
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
    let request = supervisor.send(Drain {
        status: plan.status,
        deadline: plan.deadline,
        batch_size: plan.batch_size,
        batch_interval: plan.batch_interval,
    });
    tokio::select! {
        report = request => match report {
            Ok(report) => report,
            Err(err) => {
                warn!("the supervisor did not answer the drain: {err}");
                DrainReport { duration: started.elapsed(), ..DrainReport::default() }
            }
        },
        _ = force => {
            warn!("second signal: aborting every session");
            supervisor.do_send(AbortAll);
            DrainReport { duration: started.elapsed(), ..DrainReport::default() }
        }
        _ = actix_rt::time::sleep(hard_cap) => {
            warn!("drain not finished {hard_cap:?} after the signal: stopping anyway");
            supervisor.do_send(AbortAll);
            DrainReport { duration: started.elapsed(), ..DrainReport::default() }
        }
    }
}
