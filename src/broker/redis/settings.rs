//! The Redis broker's settings: how to reach Redis and what to keep there, built from the
//! `[broker]`, `[history]`, `[publish]` and `[presence]` tables. Plain data: it must not
//! connect or log (the URL holds a password).

use std::time::Duration;

use super::super::local::HistoryLimits;
use super::super::PresenceLimits;
use crate::config::{BrokerSettings, HistorySettings, PresenceSettings, PublishSettings};

/// How to reach Redis and what to keep there.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://...`, `rediss://...`, `redis+sentinel://...` or `redis+cluster://...`; never
    /// logged unredacted.
    pub url: String,
    /// Every key and channel starts with it.
    pub key_prefix: String,
    /// `history.size` and `history.ttl_ms` (`max_bytes` is Redis's own `maxmemory`).
    pub history: HistoryLimits,
    /// Messages waiting for the publisher at most; beyond, publishing is refused.
    pub publish_queue: usize,
    /// Events waiting for the caller at most; beyond, the broker waits (back-pressure).
    pub event_queue: usize,
    /// First delay between connection attempts; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest delay between connection attempts.
    pub backoff_max: Duration,
    /// Connect and response timeout of every Redis request, and the health-check interval.
    pub timeout: Duration,
    /// `publish.dedupe_ms`: how long a message's dedupe key marks a repeat (zero: never).
    pub dedupe: Duration,
    /// `[presence]`: on or off, the events, and this node's lease (`presence.ttl_ms`).
    pub presence: PresenceLimits,
    /// `presence.grace_ms`: the heartbeat comes at least this often (500 ms at the
    /// fastest), so that a dead node's members are gone within `ttl` + `grace`.
    pub presence_grace: Duration,
    /// `broker.wait_replicas`: replicas that must have a message (Redis `WAIT`) before it is
    /// released to the room and acknowledged; 0 = publish at once.
    pub wait_replicas: u8,
}

impl RedisSettings {
    /// Settings from the `[broker]` and `[history]` tables, with the default queues
    /// (4096 each), backoff (100 ms to 5 s), timeout (2 s) and `[presence]`.
    pub fn new(broker: &BrokerSettings, history: &HistorySettings) -> Self {
        RedisSettings {
            url: broker.redis_url.clone(),
            key_prefix: broker.key_prefix.clone(),
            history: HistoryLimits::from(history),
            publish_queue: 4_096,
            event_queue: 4_096,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            dedupe: Duration::from_millis(PublishSettings::default().dedupe_ms),
            presence: PresenceLimits::default(),
            presence_grace: Duration::from_millis(PresenceSettings::default().grace_ms),
            wait_replicas: broker.wait_replicas,
        }
    }
}
