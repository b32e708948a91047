//! The `[api]` table: the server API's own listener and its bearer key, with the environment
//! variable that overrides the key and the rules that tie the two together.
//!
//! It must not serve anything (`crate::service::api` does) and must never show the key: not
//! in an error, not in `Debug`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// The environment variable that overrides `api.key`.
pub const API_KEY_ENV: &str = "WSGRACE_API_KEY";
/// The shortest `api.key`.
pub const MIN_API_KEY_BYTES: usize = 16;

/// The `[api]` table. The API is on when `bind` is set.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// `IP:PORT` of the API's own listener; empty: no API.
    pub bind: String,
    /// The bearer key every request must carry, at least [`MIN_API_KEY_BYTES`] bytes;
    /// [`API_KEY_ENV`] overrides it. Never logged, never shown in an error or in `Debug`.
    pub key: String,
}

impl ApiSettings {
    /// Whether the API listens.
    pub fn enabled(&self) -> bool {
        !self.bind.is_empty()
    }

    /// `bind` is an `IP:PORT`; with it, a key of at least [`MIN_API_KEY_BYTES`] bytes. No
    /// message shows the key.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.bind.parse::<SocketAddr>().is_err() {
            return Err(check.invalid(
                "api.bind",
                format!("must be IP:PORT (e.g. 127.0.0.1:8081), got {:?}", self.bind),
            ));
        }
        if self.key.len() < MIN_API_KEY_BYTES {
            return Err(check.invalid(
                "api.key",
                format!(
                    "must be at least {MIN_API_KEY_BYTES} bytes when api.bind is set (e.g. \
                     `openssl rand -base64 32`), got {} (from the file or {API_KEY_ENV})",
                    self.key.len()
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.key.len() {
            0 => "",
            _ => "<hidden>",
        };
        f.debug_struct("ApiSettings")
            .field("bind", &self.bind)
            .field("key", &key)
            .finish()
    }
}
