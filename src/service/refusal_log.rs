//! Warn lines for refused upgrades, rate-limited: a client that retries a refused upgrade
//! (a wrong token, a bad name) must not fill the log with a line per attempt, and a flood of
//! different refusals must not either.
//!
//! Two rules, over windows of [`INTERVAL`]:
//! - the same line (same reason, same detail: the same client retrying) is logged at most
//!   once per interval; its next line says how many repeats were left out;
//! - at most [`LINES_PER_INTERVAL`] lines in all per interval; the first line after a full
//!   interval says how many refusals the budget left out.
//!
//! The exact counts are always in `wsgrace_upgrades_refused_total{reason}`. It decides
//! nothing about refusals: it only logs them.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window of both rules.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// At most this many refusal lines per [`INTERVAL`], all lines together.
pub const LINES_PER_INTERVAL: u32 = 50;

/// What a refusal's line will say about the refusals left out before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeftOut {
    /// Repeats of this same line since it was last logged.
    repeats: u64,
    /// Refusals of any kind the budget left out in the last full interval.
    over_budget: u64,
}

/// The limiter's state: the lines logged this interval, and the budget.
#[derive(Debug, Default)]
struct Limiter {
    /// Per line logged: when, and how many repeats were left out since.
    lines: HashMap<String, (Instant, u64)>,
    /// Where the budget's window started, how many lines it logged, how many it left out.
    window: Option<(Instant, u32, u64)>,
}

static LIMITER: Mutex<Option<Limiter>> = Mutex::new(None);

/// Logs `line` for a refusal at warn level, unless the rules above leave it out.
pub fn warn(line: impl Display) {
    let line = line.to_string();
    let decision = {
        let mut limiter = LIMITER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        limiter
            .get_or_insert_with(Limiter::default)
            .decide(&line, Instant::now())
    };
    match decision {
        None => {}
        Some(LeftOut {
            repeats: 0,
            over_budget: 0,
        }) => log::warn!("upgrade refused: {line}"),
        Some(LeftOut {
            repeats,
            over_budget,
        }) => log::warn!(
            "upgrade refused: {line} (left out of the log: {repeats} repeats of this line, \
             {over_budget} other refusals over the budget)"
        ),
    }
}

impl Limiter {
    /// Whether `line` at `now` is logged, and what it says was left out before it.
    fn decide(&mut self, line: &str, now: Instant) -> Option<LeftOut> {
        let expired = |at: Instant| now.saturating_duration_since(at) >= INTERVAL;
        let mut over_budget = 0;
        match &mut self.window {
            Some((start, _, left_out)) if expired(*start) => {
                over_budget = *left_out;
                self.window = Some((now, 0, 0));
                // A line logged in an ended window no longer holds back its repeats, but
                // keeps its count of them until it is logged again.
                self.lines.retain(|_, (_, repeats)| *repeats > 0);
            }
            Some(_) => {}
            None => self.window = Some((now, 0, 0)),
        }
        let repeats = match self.lines.get_mut(line) {
            Some((at, repeats)) if !expired(*at) => {
                *repeats += 1;
                return None;
            }
            Some((_, repeats)) => *repeats,
            None => 0,
        };
        let Some((_, logged, left_out)) = &mut self.window else {
            return None;
        };
        if *logged >= LINES_PER_INTERVAL {
            *left_out += 1;
            return None;
        }
        *logged += 1;
        self.lines.insert(line.to_owned(), (now, 0));
        Some(LeftOut {
            repeats,
            over_budget,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(repeats: u64, over_budget: u64) -> Option<LeftOut> {
        Some(LeftOut {
            repeats,
            over_budget,
        })
    }

    #[test]
    fn the_same_line_once_per_interval_with_the_repeats_left_out() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limiter.decide("a", at(0)), logged(0, 0));
        assert_eq!(limiter.decide("a", at(1)), None);
        assert_eq!(limiter.decide("a", at(9_999)), None);
        // Another line is logged at once.
        assert_eq!(limiter.decide("b", at(2)), logged(0, 0));
        assert_eq!(limiter.decide("a", at(10_000)), logged(2, 0));
        assert_eq!(limiter.decide("a", at(10_001)), None);
        assert_eq!(limiter.decide("a", at(20_000)), logged(1, 0));
        // A line not repeated for long starts afresh.
        assert_eq!(limiter.decide("b", at(60_000)), logged(0, 0));
    }

    #[test]
    fn at_most_the_budget_of_different_lines_per_interval() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        for i in 0..LINES_PER_INTERVAL {
            assert_eq!(limiter.decide(&format!("room r{i}"), at(0)), logged(0, 0));
        }
        for i in 0..7 {
            assert_eq!(limiter.decide(&format!("flood {i}"), at(5)), None);
        }
        // The first line of the next interval tells how many the budget left out.
        assert_eq!(limiter.decide("flood 0", at(10_000)), logged(0, 7));
        assert_eq!(limiter.decide("flood 1", at(10_001)), logged(0, 0));
        // The lines kept stay bounded by the budget: old ones without repeats are dropped.
        assert!(limiter.lines.len() <= 2 * LINES_PER_INTERVAL as usize);
    }
}
