//! The drain's plan and its report: which sessions are told to close when, and how they
//! ended.
//!
//! [`batch_schedule`] is pure: it turns a [`DrainPlan`] and a count of sessions into
//! [`Batch`]es, so that every session has its whole close timeout before the deadline.
//! [`DrainReport`] counts the ends the supervisor sees. The supervisor carries the plan out;
//! the signals that start it are the service's ([`crate::service::shutdown`]). It must not
//! touch sessions itself.

use std::fmt;
use std::time::Duration;

use crate::close::{CloseMode, CloseResult, CloseStatus, Initiator};
use crate::connection::session::SessionEnd;

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

/// The result of a drain, logged at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions open when the drain started.
    pub sessions: usize,
    /// Closed awaited, with the peer's ack.
    pub acked_awaited: usize,
    /// Closed fire-and-forget, with the peer's ack.
    pub acked_fire_and_forget: usize,
    /// The peer closed first during the drain.
    pub client_closed: usize,
    /// Not acked within the close timeout.
    pub timed_out: usize,
    /// Aborted: vanished, failed, or still open at the deadline.
    pub aborted: usize,
    /// Messages from peers dropped because their session was closing awaited.
    pub dropped_messages: u64,
    /// Messages from peers delivered after a fire-and-forget close frame.
    pub delivered_after_close: u64,
    /// From the drain's start to its end.
    pub duration: Duration,
}

impl DrainReport {
    /// Counts one session's end.
    pub fn count(&mut self, end: &SessionEnd) {
        self.dropped_messages += end.dropped_after_close + end.dropped_slow_consumer;
        self.delivered_after_close += end.delivered_after_close;
        match (end.record.result, end.record.initiator, end.record.mode) {
            (CloseResult::Acked, Initiator::Client, _) => self.client_closed += 1,
            (CloseResult::Acked, _, CloseMode::Awaited) => self.acked_awaited += 1,
            (CloseResult::Acked, _, CloseMode::FireAndForget) => self.acked_fire_and_forget += 1,
            (CloseResult::Timeout, _, _) => self.timed_out += 1,
            (CloseResult::Aborted | CloseResult::Error, _, _) => self.aborted += 1,
        }
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions={} acked_awaited={} acked_fire_and_forget={} client_closed={} \
             timed_out={} aborted={} dropped_messages={} delivered_after_close={} duration_ms={}",
            self.sessions,
            self.acked_awaited,
            self.acked_fire_and_forget,
            self.client_closed,
            self.timed_out,
            self.aborted,
            self.dropped_messages,
            self.delivered_after_close,
            self.duration.as_millis()
        )
    }
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
