//! The `[history]` table: the messages kept per room so that a client can resume (how many,
//! for how long, and the local broker's byte budget), with their defaults and the ranges of
//! their keys.
//!
//! It must not keep any history: the brokers do.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// Allowed `history.size` (0 = no history).
const HISTORY_SIZE: RangeInclusive<usize> = 0..=1_000_000;
/// Allowed `history.ttl_ms`: one second to 30 days.
const HISTORY_TTL_MS: RangeInclusive<u64> = 1_000..=2_592_000_000;
/// Allowed `history.max_bytes`: up to 1 TiB.
const HISTORY_MAX_BYTES: RangeInclusive<u64> = 0..=1 << 40;

/// The `[history]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Messages kept per room for resume; 0 = no history (no resume succeeds).
    pub size: usize,
    /// A room's history is dropped this long after its last message, in milliseconds.
    pub ttl_ms: u64,
    /// Local broker: all rooms' history together stays under this many bytes.
    pub max_bytes: u64,
    /// Local broker: the file the history is written to at the end of a drain and read
    /// from before the next process listens; empty = not kept across a restart.
    pub snapshot_path: String,
}

impl HistorySettings {
    /// The ranges of `[history]`, in the order their errors are reported.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("history.size", self.size, HISTORY_SIZE)?;
        check.range("history.ttl_ms", self.ttl_ms, HISTORY_TTL_MS)?;
        check.range("history.max_bytes", self.max_bytes, HISTORY_MAX_BYTES)?;
        if self.snapshot_path.ends_with('/') {
            return Err(check.invalid(
                "history.snapshot_path",
                format!(
                    "must name a file, not a directory: {:?}",
                    self.snapshot_path
                ),
            ));
        }
        Ok(())
    }
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            size: 1_000,
            ttl_ms: 3_600_000,
            max_bytes: 268_435_456,
            snapshot_path: String::new(),
        }
    }
}
