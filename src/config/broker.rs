//! The `[broker]` table: where rooms live (this process, or a Redis shared by several
//! nodes), the Redis URL and the key prefix, with their defaults, the environment variable
//! that overrides the URL, and the rules of their keys (a URL is required for the Redis
//! broker, and must have the form [`check_redis_url`] asks).
//!
//! It must not connect to Redis: `crate::broker` does. No message it builds may show the
//! URL's password.

use serde::Deserialize;

use super::check::Check;
use super::redis_url::{check_redis_url, redact_url};
use super::ConfigError;

/// The longest `broker.key_prefix`.
const MAX_KEY_PREFIX_CHARS: usize = 64;
/// The environment variable that overrides `broker.redis_url`.
pub const REDIS_URL_ENV: &str = "WSGRACE_REDIS_URL";

/// Where rooms live: `broker.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// Rooms live in this process (one node, nothing else to run).
    #[default]
    Local,
    /// Rooms span every node that uses the same Redis and `broker.key_prefix`.
    Redis,
}

/// The `[broker]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Local or Redis.
    pub kind: BrokerKind,
    /// `redis://[user:password@]host:port/db`, `rediss://...` or
    /// `redis+sentinel://[:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]` or
    /// `redis+cluster://[:password@]HOST:PORT[,HOST:PORT...]`; required when `kind` is `redis`. [`REDIS_URL_ENV`] overrides it in [`Config::load`](super::Config::load). Log
    /// it only through [`redact_url`].
    pub redis_url: String,
    /// Every Redis key and channel starts with this.
    pub key_prefix: String,
    /// With Redis: a message counts as sent only once this many replicas have it (Redis
    /// `WAIT`); 0 = do not wait. At most 16 (`MAX_WAIT_REPLICAS`).
    pub wait_replicas: u8,
}

/// The largest `broker.wait_replicas`.
pub const MAX_WAIT_REPLICAS: u8 = 16;

impl BrokerSettings {
    /// The rules of `[broker]`, in the order its errors are reported: the URL (required
    /// when `kind` is `redis`; when set, well formed, and `rediss://` only in a build with
    /// TLS), then the key prefix.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if self.redis_url.is_empty() {
            if self.kind == BrokerKind::Redis {
                return Err(check.invalid(
                    "broker.redis_url",
                    format!(
                        "required when broker.kind is \"redis\" (or set {REDIS_URL_ENV}), \
                         e.g. \"redis://127.0.0.1:6379/0\""
                    ),
                ));
            }
        } else if let Err(problem) = check_redis_url(&self.redis_url) {
            return Err(check.invalid(
                "broker.redis_url",
                format!("{problem}, got {:?}", redact_url(&self.redis_url)),
            ));
        } else if self.redis_url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(check.invalid(
                "broker.redis_url",
                "rediss:// (TLS) needs wsgrace built with the `redis-tls` feature \
                 (cargo build --release --features redis-tls)"
                    .to_owned(),
            ));
        }
        if self.wait_replicas > MAX_WAIT_REPLICAS {
            return Err(check.invalid(
                "broker.wait_replicas",
                format!(
                    "must be 0-{MAX_WAIT_REPLICAS} (replicas that must have a message before it \
                     counts as sent), got {}",
                    self.wait_replicas
                ),
            ));
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.chars().count() > MAX_KEY_PREFIX_CHARS
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(check.invalid(
                "broker.key_prefix",
                format!(
                    "must be 1-{MAX_KEY_PREFIX_CHARS} characters with no whitespace, got {:?}",
                    prefix
                ),
            ));
        }
        Ok(())
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            kind: BrokerKind::Local,
            redis_url: String::new(),
            key_prefix: "wsgrace".to_owned(),
            wait_replicas: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::error;

    #[test]
    fn a_bad_url_error_never_shows_the_password() {
        let err = error("[broker]\nredis_url = \"http://user:hunter2@host:6379\"\n");
        let shown = err.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@host:6379"), "{shown}");
    }
}
