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

use crate::rooms::drain::DrainReport;
// Where the drain plan was before 0.2 (see CHANGELOG.md).
#[doc(hidden)]
pub use crate::rooms::drain::{batch_schedule, Batch, DrainPlan};
use crate::rooms::supervisor::{AbortAll, Drain, Supervisor};

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
