//! The `[publish]` table: how a repeated publish is recognised (a v2 client's message `id`,
//! the server API's `idempotency_key`), with its default and range.
//!
//! It must not keep any id: the brokers do.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// Allowed `publish.dedupe_ms`: up to one day (0 = a repeat is published again).
const DEDUPE_MS: RangeInclusive<u64> = 0..=86_400_000;

/// The `[publish]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// A publish that repeats a client's message `id` (or the API's `idempotency_key`) for
    /// the same room within this many milliseconds is not published again; its sender is
    /// told the first one's seq. 0 = no repeat is recognised.
    pub dedupe_ms: u64,
}

impl PublishSettings {
    /// The range of `[publish]`.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("publish.dedupe_ms", self.dedupe_ms, DEDUPE_MS)
    }
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings { dedupe_ms: 300_000 }
    }
}
