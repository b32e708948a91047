//! The `[shutdown]` table: what the drain on SIGTERM / SIGINT sends (close code, reason,
//! the `going_away` reconnect spread), its deadline and its batches, with their defaults
//! and the rules of their keys.
//!
//! It must not drain or catch signals: `crate::shutdown` and the supervisor do. From the
//! crate it imports only the close-frame rules (which codes may be sent, the reason's
//! length), so that a code the config accepts is one the close machine can send.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;
use crate::close::{is_sendable_code, MAX_REASON_BYTES};

/// Allowed `shutdown.drain_timeout_ms`: 1 ms to one hour.
const DRAIN_TIMEOUT_MS: RangeInclusive<u64> = 1..=3_600_000;
/// Allowed `shutdown.batch_interval_ms`: up to ten minutes.
const BATCH_INTERVAL_MS: RangeInclusive<u64> = 0..=600_000;
/// Allowed `shutdown.reconnect_spread_ms`: up to ten minutes.
const RECONNECT_SPREAD_MS: RangeInclusive<u64> = 0..=600_000;

/// The `[shutdown]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// The close code sent to every session on shutdown; a sendable code.
    pub code: u16,
    /// The close reason sent on shutdown, at most 123 bytes of UTF-8.
    pub reason: String,
    /// Hard deadline for the whole drain, from the first signal, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Close sessions in batches of this many; 0 = all at once.
    pub batch_size: usize,
    /// Milliseconds between two batches.
    pub batch_interval_ms: u64,
    /// The `going_away` message before a shutdown close suggests a reconnect delay drawn
    /// uniformly from 0 to this many milliseconds.
    pub reconnect_spread_ms: u64,
}

impl ShutdownSettings {
    /// The rules of `[shutdown]`, in the order its errors are reported: the close frame
    /// (code, reason), then the ranges. `batch_size` takes any value.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if !is_sendable_code(self.code) {
            return Err(check.invalid(
                "shutdown.code",
                format!(
                    "close code {} may not be sent (allowed: 1000-1003, 1007-1014, 3000-4999)",
                    self.code
                ),
            ));
        }
        if self.reason.len() > MAX_REASON_BYTES {
            return Err(check.invalid(
                "shutdown.reason",
                format!(
                    "must be at most {MAX_REASON_BYTES} bytes of UTF-8, got {}",
                    self.reason.len()
                ),
            ));
        }
        check.range(
            "shutdown.drain_timeout_ms",
            self.drain_timeout_ms,
            DRAIN_TIMEOUT_MS,
        )?;
        check.range(
            "shutdown.batch_interval_ms",
            self.batch_interval_ms,
            BATCH_INTERVAL_MS,
        )?;
        check.range(
            "shutdown.reconnect_spread_ms",
            self.reconnect_spread_ms,
            RECONNECT_SPREAD_MS,
        )
    }
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            code: 1001,
            reason: "server shutting down".to_owned(),
            drain_timeout_ms: 10_000,
            batch_size: 0,
            batch_interval_ms: 0,
            reconnect_spread_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{error, parse};

    #[test]
    fn shutdown_reason_is_limited_to_123_bytes() {
        let ok = format!("[shutdown]\nreason = \"{}\"\n", "r".repeat(123));
        assert_eq!(parse(&ok).unwrap().shutdown.reason.len(), 123);
        // 62 two-byte characters: 124 bytes, though only 62 characters.
        let long = format!("[shutdown]\nreason = \"{}\"\n", "é".repeat(62));
        let err = error(&long);
        assert_eq!(err.key(), Some("shutdown.reason"));
        assert!(err.to_string().ends_with("got 124"), "{err}");
    }
}
