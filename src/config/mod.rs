//! The server's configuration: [`Config`], the whole `config.toml`, and how it is loaded
//! (read, parsed, overridden by the environment, validated), with [`ConfigError`], the
//! one-line error that names the file, the dotted key path (`session.max_frame_bytes`,
//! `close.room_modes.lobby`) and the problem.
//!
//! One file per TOML table: `server`, `session`, `close` (with `close.room_modes`),
//! `shutdown`, `broker`, `history`, `publish`, `presence`, `api`, `auth`. Each holds its struct (`deny_unknown_fields`, so
//! that a typo is an error rather than a silently ignored setting), its `Default`, which the
//! shipped `config.toml` repeats key for key (a unit test holds the two together), its
//! allowed ranges and its own `validate`. The checks they share live beside them: `check`
//! (the error for a key, and the range rule's one wording), `names` (room and nick names)
//! and `redis_url` (a broker URL's form, and its redaction). Everything public is
//! re-exported here, so that every item is `config::Item` whatever file holds it.
//!
//! This module must not do I/O beyond reading the one file it is given and the environment
//! variables it names, and must not know about actix: the binary and embedding applications
//! turn a [`Config`] into their own settings. It is the ground floor: from the crate it
//! imports only `crate::close`, whose close modes and close-frame rules the tables use.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::close::CloseMode;

mod api;
mod auth;
mod broker;
mod check;
mod close;
mod history;
mod names;
mod presence;
mod publish;
mod redis_url;
mod server;
mod session;
mod shutdown;

pub use api::{ApiSettings, API_KEY_ENV, MIN_API_KEY_BYTES};
pub use auth::{AuthSettings, JWT_SECRET_ENV, MIN_JWT_SECRET_BYTES};
pub use broker::{BrokerKind, BrokerSettings, REDIS_URL_ENV};
use check::Check;
pub use close::CloseSettings;
pub use history::HistorySettings;
pub use names::is_valid_name;
pub use presence::PresenceSettings;
pub use publish::PublishSettings;
pub use redis_url::{
    check_redis_url, parse_cluster_url, parse_sentinel_url, redact_url, ClusterUrl, SentinelUrl,
    CLUSTER_SCHEME, SENTINEL_SCHEME,
};
pub use server::ServerConfig;
pub use session::{SessionSettings, DEFAULT_PERMESSAGE_DEFLATE, DEFAULT_SEND_BUFFER_BYTES};
pub use shutdown::ShutdownSettings;

/// The whole configuration file: one field per TOML table.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listening and upgrade admission.
    pub server: ServerConfig,
    /// `[session]`: per-connection timing and limits.
    pub session: SessionSettings,
    /// `[close]`: how server-initiated closes behave.
    pub close: CloseSettings,
    /// `[shutdown]`: the drain on SIGTERM / SIGINT.
    pub shutdown: ShutdownSettings,
    /// `[broker]`: where rooms live (this process, or Redis shared by several nodes).
    pub broker: BrokerSettings,
    /// `[history]`: the messages kept per room for resume.
    pub history: HistorySettings,
    /// `[publish]`: how a repeated publish is recognised.
    pub publish: PublishSettings,
    /// `[presence]`: who is in a room, and telling its members.
    pub presence: PresenceSettings,
    /// `[api]`: the server API's listener and key (off while `bind` is empty).
    pub api: ApiSettings,
    /// `[auth]`: signed tokens at the upgrade (off while no secret and no key file is set).
    pub auth: AuthSettings,
}

/// Why a configuration file was refused. `Display` is one line: the file, the key (where
/// there is one) and the problem, e.g.
/// `config.toml: session.max_frame_bytes: must be between 125 and 67108864, got 0`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{path}: cannot read the file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: line {line}, column {column}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A key that no table has, e.g. `session.bogus`.
    #[error("{path}: {key}: unknown key{expected}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The unknown key's full dotted path.
        key: String,
        /// The keys allowed there, as `" (expected ...)"`, or empty.
        expected: String,
    },
    /// A value of the wrong type, e.g. a string where a number belongs, or an unknown mode.
    #[error("{path}: {key}: {message}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key's dotted path.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A value of the right type outside its allowed range or form.
    #[error("{path}: {key}: {message}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key's dotted path.
        key: String,
        /// The rule and the value that broke it.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::InvalidValue { key, .. } => Some(key),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::UnknownKey { path, .. }
            | ConfigError::WrongType { path, .. }
            | ConfigError::InvalidValue { path, .. } => path,
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, with the environment's overrides
    /// ([`REDIS_URL_ENV`]) applied before validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given as a lookup function (for tests and for
    /// applications that keep their settings elsewhere).
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::deserialize(&text, path)?;
        config.apply_env(env);
        config.validate(path)?;
        Ok(config)
    }

    /// Applies the environment's overrides: a non-empty [`REDIS_URL_ENV`] replaces
    /// `broker.redis_url`, a non-empty [`JWT_SECRET_ENV`] replaces `auth.jwt_secret`, a
    /// non-empty [`API_KEY_ENV`] replaces `api.key`. Call
    /// [`Config::validate`] afterwards.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(url) = env(REDIS_URL_ENV).filter(|url| !url.is_empty()) {
            self.broker.redis_url = url;
        }
        if let Some(secret) = env(JWT_SECRET_ENV).filter(|secret| !secret.is_empty()) {
            self.auth.jwt_secret = secret;
        }
        if let Some(key) = env(API_KEY_ENV).filter(|key| !key.is_empty()) {
            self.api.key = key;
        }
    }

    /// Parses and validates `text`, the contents of the file at `path` (used in errors only).
    /// Missing keys and tables take their defaults; an empty text is the default config.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::deserialize(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses `text` without validating it.
    fn deserialize(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // Parse the syntax on its own first, so that a syntax error is told apart from a
        // value error by construction rather than by its message.
        if let Err(err) = text.parse::<toml::Table>() {
            let (line, column) = err
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: one_line(err.message()),
            });
        }
        serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|err| value_error(path, &err.path().to_string(), err.inner().message()))
    }

    /// Checks every value against its allowed range and form; `path` names the file in
    /// errors. The first rule broken is the one reported; the tables are asked in the order
    /// they appear in `config.toml`.
    ///
    /// Every rule today lies within one table (a Redis URL when `broker.kind` is `redis`,
    /// the client timeout above the heartbeat, `auth.issuer` only with a secret or key
    /// file), so there is nothing left to check across tables here.
    ///
    /// [`Config::parse`] calls this; call it again after changing a config in code (e.g. a
    /// command-line override of `server.bind`).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let check = Check::new(path);
        self.server.validate(&check)?;
        self.session.validate(&check)?;
        self.close.validate(&check)?;
        self.shutdown.validate(&check)?;
        self.broker.validate(&check)?;
        self.history.validate(&check)?;
        self.publish.validate(&check)?;
        self.presence.validate(&check)?;
        self.api.validate(&check)?;
        self.auth.validate(&check)
    }

    /// The close mode for a session in `room`: its `close.room_modes` entry if there is one,
    /// else `close.mode`.
    pub fn mode_for_room(&self, room: &str) -> CloseMode {
        self.close
            .room_modes
            .get(room)
            .copied()
            .unwrap_or(self.close.mode)
    }
}

/// Turns a deserialization error at dotted `key` into an unknown-key or wrong-type error.
fn value_error(path: &Path, key: &str, message: &str) -> ConfigError {
    let message = one_line(message);
    // serde words every `deny_unknown_fields` refusal as "unknown field `NAME`, expected ...";
    // serde_path_to_error has already put NAME at the end of `key`.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest
            .split_once("`, ")
            .map(|(_, expected)| format!(" ({expected})"))
            .unwrap_or_default();
        return ConfigError::UnknownKey {
            path: path.to_owned(),
            key: key.to_owned(),
            expected,
        };
    }
    // A table given as a plain value reads "expected struct SessionSettings": name the TOML
    // notion rather than the Rust type.
    let message = match message.split_once("expected struct ") {
        Some((found, _)) => format!("{found}expected a table"),
        None => message,
    };
    ConfigError::WrongType {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Joins a multi-line parser message into one line, so that every error is one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
