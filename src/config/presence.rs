//! The `[presence]` table: whether rooms know who is in them, whether members are told of
//! arrivals and departures, and how long a member that went away without leaving stays
//! present, with the defaults and ranges.
//!
//! It must not keep anyone's presence: the brokers do.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// Allowed `presence.events_max_members`.
const EVENTS_MAX_MEMBERS: RangeInclusive<usize> = 0..=10_000_000;
/// Allowed `presence.grace_ms`: up to ten minutes.
const GRACE_MS: RangeInclusive<u64> = 0..=600_000;
/// Allowed `presence.ttl_ms`: from 1 s (a node renews its lease every third of it) to one
/// hour.
const TTL_MS: RangeInclusive<u64> = 1_000..=3_600_000;

/// The `[presence]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Rooms know who is in them (a v2 `presence` request answers it).
    pub enabled: bool,
    /// Members get `presence_join` / `presence_leave` frames.
    pub events: bool,
    /// A room with more members than this sends no `presence_join` / `presence_leave`
    /// frames (its presence can still be asked).
    pub events_max_members: usize,
    /// A member that went away without leaving (a drain's `going_away`, a dropped
    /// connection) stays present this long (after its `reconnect_after_ms`, for a drain).
    pub grace_ms: u64,
    /// With Redis: the members of a node that died without a drain are gone after at most
    /// this (plus `grace_ms`).
    pub ttl_ms: u64,
}

impl PresenceSettings {
    /// The ranges of `[presence]`.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range(
            "presence.events_max_members",
            self.events_max_members,
            EVENTS_MAX_MEMBERS,
        )?;
        check.range("presence.grace_ms", self.grace_ms, GRACE_MS)?;
        check.range("presence.ttl_ms", self.ttl_ms, TTL_MS)
    }
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            enabled: true,
            events: true,
            events_max_members: 1_000,
            grace_ms: 5_000,
            ttl_ms: 30_000,
        }
    }
}
