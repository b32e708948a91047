//! The per-connection message rate (`session.max_messages_per_sec`): a token bucket.

use std::time::Instant;

/// A token bucket: `per_sec` tokens a second, holding at most one second's worth.
#[derive(Debug)]
pub(super) struct RateLimit {
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    pub(super) fn new(per_sec: u32) -> Self {
        RateLimit {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            refilled: Instant::now(),
        }
    }

    /// Takes a token for a message that arrived at `now`; false when none is left. A limit of
    /// 0 allows everything.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
