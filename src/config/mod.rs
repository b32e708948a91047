//! The server's configuration: serde structs mirroring `config.toml`, their defaults, and
//! validation that names the offending key.
//!
//! One struct per TOML table, each `deny_unknown_fields` so that a typo is an error rather
//! than a silently ignored setting. The defaults are defined once, in the `Default` impls
//! below, and the shipped `config.toml` repeats them key for key (a unit test holds the two
//! together). Every error is a [`ConfigError`] whose one-line `Display` names the file, the
//! dotted key path (`session.max_frame_bytes`, `close.room_modes.lobby`) and the problem.
//!
//! This module must not do I/O beyond reading the one file it is given, and must not know
//! about actix: the binary and embedding applications turn a [`Config`] into their own
//! settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::close::{is_sendable_code, CloseMode, MAX_REASON_BYTES};

mod check;
mod names;
mod redis_url;

use check::Check;
pub use names::is_valid_name;
use names::MAX_NAME_CHARS;
pub use redis_url::{check_redis_url, redact_url};

/// Allowed `session.heartbeat_interval_ms`: 10 ms to one hour.
const HEARTBEAT_INTERVAL_MS: RangeInclusive<u64> = 10..=3_600_000;
/// Allowed `session.client_timeout_ms`: 10 ms to one day (and above the heartbeat interval).
const CLIENT_TIMEOUT_MS: RangeInclusive<u64> = 10..=86_400_000;
/// Allowed `session.max_frame_bytes`: at least a control frame's payload, at most 64 MiB.
const MAX_FRAME_BYTES: RangeInclusive<usize> = 125..=64 * 1024 * 1024;
/// Allowed `session.outbound_queue`.
const OUTBOUND_QUEUE: RangeInclusive<usize> = 1..=1_000_000;
/// Allowed `close.timeout_ms`: 1 ms to ten minutes.
const CLOSE_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
/// Allowed `server.workers` (0 = one per core).
const WORKERS: RangeInclusive<usize> = 0..=1024;
/// Allowed `server.request_timeout_ms`: 100 ms to ten minutes.
const REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
/// Allowed `session.max_messages_per_sec` (0 = no limit).
const MAX_MESSAGES_PER_SEC: RangeInclusive<u32> = 0..=1_000_000;
/// Allowed `server.max_connections`.
const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=10_000_000;
/// Allowed `shutdown.drain_timeout_ms`: 1 ms to one hour.
const DRAIN_TIMEOUT_MS: RangeInclusive<u64> = 1..=3_600_000;
/// Allowed `shutdown.batch_interval_ms`: up to ten minutes.
const BATCH_INTERVAL_MS: RangeInclusive<u64> = 0..=600_000;
/// Allowed `shutdown.reconnect_spread_ms`: up to ten minutes.
const RECONNECT_SPREAD_MS: RangeInclusive<u64> = 0..=600_000;
/// The default `session.send_buffer_bytes`.
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 262_144;
/// Allowed `close.linger_ms`: up to one minute (0 = close at once).
const LINGER_MS: RangeInclusive<u64> = 0..=60_000;
/// Allowed `close.linger_bytes`: up to 1 GiB.
const LINGER_BYTES: RangeInclusive<u64> = 0..=1 << 30;
/// Allowed `session.send_buffer_bytes`: 0 (the kernel's default) or 4 KiB to 64 MiB.
const SEND_BUFFER_BYTES: RangeInclusive<usize> = 4_096..=64 << 20;
/// Allowed `history.size` (0 = no history).
const HISTORY_SIZE: RangeInclusive<usize> = 0..=1_000_000;
/// Allowed `history.ttl_ms`: one second to 30 days.
const HISTORY_TTL_MS: RangeInclusive<u64> = 1_000..=2_592_000_000;
/// Allowed `history.max_bytes`: up to 1 TiB.
const HISTORY_MAX_BYTES: RangeInclusive<u64> = 0..=1 << 40;
/// The longest `broker.key_prefix`.
const MAX_KEY_PREFIX_CHARS: usize = 64;
/// The environment variable that overrides `broker.redis_url`.
pub const REDIS_URL_ENV: &str = "WSGRACE_REDIS_URL";
/// The environment variable that overrides `auth.jwt_secret`.
pub const JWT_SECRET_ENV: &str = "WSGRACE_JWT_SECRET";
/// The shortest `auth.jwt_secret`: 256 bits, as RFC 7518 §3.2 asks of an HS256 key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

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
    /// `[auth]`: signed tokens at the upgrade (off while no secret and no key file is set).
    pub auth: AuthSettings,
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address, `IP:PORT`; port 0 picks a free port.
    pub bind: String,
    /// actix-web worker threads; 0 = one per core.
    pub workers: usize,
    /// Open connections beyond which upgrades get HTTP 503.
    pub max_connections: usize,
    /// If not empty, an upgrade whose `Origin` header is not one of these gets HTTP 403.
    pub allowed_origins: Vec<String>,
    /// A client must send each whole request head (every request of a keep-alive connection)
    /// within this many milliseconds, else 408 and the connection is closed (slowloris).
    pub request_timeout_ms: u64,
    /// Open WebSockets per client address; more get HTTP 429. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Peers (addresses or CIDRs) whose `X-Forwarded-For` is believed for the client address;
    /// empty = the TCP peer is the client. Read them with [`ServerConfig::trusted_proxies`].
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    /// `trusted_proxies` parsed (a single address is a /32 or /128 network). Entries that do
    /// not parse are left out; [`Config::validate`] refuses them first.
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|entry| parse_network(entry).ok())
            .collect()
    }
}

/// An address (`10.0.0.5`, `::1`) or a CIDR (`10.0.0.0/8`, `fd00::/8`).
fn parse_network(entry: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(network) = entry.parse::<ipnet::IpNet>() {
        return Ok(network.trunc());
    }
    entry
        .parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("must be an IP address or a CIDR such as 10.0.0.0/8, got {entry:?}"))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8080".to_owned(),
            workers: 0,
            max_connections: 100_000,
            allowed_origins: Vec::new(),
            request_timeout_ms: 5_000,
            max_connections_per_ip: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The `[session]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// The server pings each session this often, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// A session that sends no frame at all (pong included) for this long is aborted, in
    /// milliseconds. Greater than `heartbeat_interval_ms`.
    pub client_timeout_ms: u64,
    /// The largest incoming message, reassembled, in bytes; a larger one is closed with 1009.
    pub max_frame_bytes: usize,
    /// Outgoing messages a session may have queued; beyond this it is closed with 1008.
    pub outbound_queue: usize,
    /// Incoming messages per second one session may send (bursts up to one second's worth);
    /// beyond this it is closed with 1008. 0 = no limit.
    pub max_messages_per_sec: u32,
    /// The kernel send buffer of each connection (`SO_SNDBUF`), in bytes; 0 = the kernel's
    /// default, which grows up to `net.ipv4.tcp_wmem`'s maximum per socket. It bounds how much
    /// a client that does not read can park in kernel memory, and what a close frame waits
    /// behind.
    pub send_buffer_bytes: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            heartbeat_interval_ms: 5_000,
            client_timeout_ms: 15_000,
            max_frame_bytes: 65_536,
            outbound_queue: 1_024,
            max_messages_per_sec: 0,
            send_buffer_bytes: DEFAULT_SEND_BUFFER_BYTES,
        }
    }
}

/// The `[close]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloseSettings {
    /// The mode of server-initiated closes, unless `room_modes` names the session's room.
    pub mode: CloseMode,
    /// How long a closing session waits for the peer's close frame before it aborts, in
    /// milliseconds, counted from the moment its own close frame is sent.
    pub timeout_ms: u64,
    /// Room name → close mode, overriding `mode` for that room's sessions.
    pub room_modes: BTreeMap<String, CloseMode>,
    /// Lingering close: after the server's last byte and its FIN, how long it keeps reading and
    /// discarding what the peer still sends before it closes the socket, in milliseconds, so
    /// that the peer's kernel does not throw away the close frame on a reset. 0 = close at once.
    pub linger_ms: u64,
    /// Lingering close: the most bytes discarded; past it nothing more is read, and the socket
    /// closes when `linger_ms` is up.
    pub linger_bytes: u64,
}

impl Default for CloseSettings {
    fn default() -> Self {
        CloseSettings {
            mode: CloseMode::Awaited,
            timeout_ms: 5_000,
            room_modes: BTreeMap::new(),
            linger_ms: 5_000,
            linger_bytes: 16 << 20,
        }
    }
}

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
    /// `redis://[user:password@]host:port/db` or `rediss://...`; required when `kind` is
    /// `redis`. [`REDIS_URL_ENV`] overrides it in [`Config::load`]. Log it only through
    /// [`redact_url`].
    pub redis_url: String,
    /// Every Redis key and channel starts with this.
    pub key_prefix: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            kind: BrokerKind::Local,
            redis_url: String::new(),
            key_prefix: "wsgrace".to_owned(),
        }
    }
}

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
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            size: 1_000,
            ttl_ms: 3_600_000,
            max_bytes: 268_435_456,
        }
    }
}

/// The `[auth]` table. Authentication is on when `jwt_secret` or `jwt_public_key_file` is
/// set; `crate::auth::Verifier::from_config` turns it into a token verifier (and reads the
/// key file).
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 secret, at least [`MIN_JWT_SECRET_BYTES`] bytes; [`JWT_SECRET_ENV`] overrides
    /// it in [`Config::load`]. Never logged, never shown in an error or in `Debug`.
    pub jwt_secret: String,
    /// PEM public key (RSA, EC P-256 or Ed25519) for RS256, ES256 or EdDSA tokens instead of
    /// a secret; the algorithm follows from the key.
    pub jwt_public_key_file: String,
    /// When set, a token's `iss` must be this.
    pub issuer: String,
    /// When set, a token's `aud` must be (or contain) this.
    pub audience: String,
}

impl AuthSettings {
    /// Whether upgrades need a token.
    pub fn enabled(&self) -> bool {
        !self.jwt_secret.is_empty() || !self.jwt_public_key_file.is_empty()
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never shown, not even in a test failure's `{config:?}`.
        let secret = match self.jwt_secret.len() {
            0 => "",
            _ => "<hidden>",
        };
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &secret)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
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
    /// `broker.redis_url`, a non-empty [`JWT_SECRET_ENV`] replaces `auth.jwt_secret`. Call
    /// [`Config::validate`] afterwards.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(url) = env(REDIS_URL_ENV).filter(|url| !url.is_empty()) {
            self.broker.redis_url = url;
        }
        if let Some(secret) = env(JWT_SECRET_ENV).filter(|secret| !secret.is_empty()) {
            self.auth.jwt_secret = secret;
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

    /// Checks every value against its allowed range; `path` names the file in errors.
    ///
    /// [`Config::parse`] calls this; call it again after changing a config in code (e.g. a
    /// command-line override of `server.bind`).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let check = Check::new(path);

        let server = &self.server;
        if let Err(err) = server.bind.parse::<SocketAddr>() {
            return Err(check.invalid(
                "server.bind",
                format!("{err}: expected IP:PORT, got {:?}", server.bind),
            ));
        }
        check.range("server.workers", server.workers, WORKERS)?;
        check.range(
            "server.max_connections",
            server.max_connections,
            MAX_CONNECTIONS,
        )?;
        check.range(
            "server.request_timeout_ms",
            server.request_timeout_ms,
            REQUEST_TIMEOUT_MS,
        )?;
        for (index, origin) in server.allowed_origins.iter().enumerate() {
            let key = format!("server.allowed_origins[{index}]");
            if origin.is_empty() {
                return Err(check.invalid(&key, "must not be empty".to_owned()));
            }
            if origin.chars().any(char::is_whitespace) || origin.ends_with('/') {
                return Err(check.invalid(
                    &key,
                    format!(
                        "must be an origin as browsers send it, scheme://host[:port] with no \
                         whitespace or trailing slash, got {origin:?}"
                    ),
                ));
            }
        }

        for (index, entry) in server.trusted_proxies.iter().enumerate() {
            if let Err(problem) = parse_network(entry) {
                return Err(check.invalid(&format!("server.trusted_proxies[{index}]"), problem));
            }
        }

        let session = &self.session;
        check.range(
            "session.heartbeat_interval_ms",
            session.heartbeat_interval_ms,
            HEARTBEAT_INTERVAL_MS,
        )?;
        check.range(
            "session.client_timeout_ms",
            session.client_timeout_ms,
            CLIENT_TIMEOUT_MS,
        )?;
        check.range(
            "session.max_messages_per_sec",
            session.max_messages_per_sec,
            MAX_MESSAGES_PER_SEC,
        )?;
        if session.client_timeout_ms <= session.heartbeat_interval_ms {
            return Err(check.invalid(
                "session.client_timeout_ms",
                format!(
                    "must be greater than session.heartbeat_interval_ms ({}), got {}",
                    session.heartbeat_interval_ms, session.client_timeout_ms
                ),
            ));
        }
        check.range(
            "session.max_frame_bytes",
            session.max_frame_bytes,
            MAX_FRAME_BYTES,
        )?;
        check.range(
            "session.outbound_queue",
            session.outbound_queue,
            OUTBOUND_QUEUE,
        )?;
        if session.send_buffer_bytes != 0 && !SEND_BUFFER_BYTES.contains(&session.send_buffer_bytes)
        {
            return Err(check.invalid(
                "session.send_buffer_bytes",
                format!(
                    "must be 0 (the kernel's default) or between {} and {}, got {}",
                    SEND_BUFFER_BYTES.start(),
                    SEND_BUFFER_BYTES.end(),
                    session.send_buffer_bytes
                ),
            ));
        }

        let close = &self.close;
        check.range("close.timeout_ms", close.timeout_ms, CLOSE_TIMEOUT_MS)?;
        check.range("close.linger_ms", close.linger_ms, LINGER_MS)?;
        check.range("close.linger_bytes", close.linger_bytes, LINGER_BYTES)?;
        for room in close.room_modes.keys() {
            if !is_valid_name(room) {
                return Err(check.invalid(
                    &format!("close.room_modes.{}", room.escape_debug()),
                    format!(
                        "not a valid room name: 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . -"
                    ),
                ));
            }
        }

        let shutdown = &self.shutdown;
        if !is_sendable_code(shutdown.code) {
            return Err(check.invalid(
                "shutdown.code",
                format!(
                    "close code {} may not be sent (allowed: 1000-1003, 1007-1014, 3000-4999)",
                    shutdown.code
                ),
            ));
        }
        if shutdown.reason.len() > MAX_REASON_BYTES {
            return Err(check.invalid(
                "shutdown.reason",
                format!(
                    "must be at most {MAX_REASON_BYTES} bytes of UTF-8, got {}",
                    shutdown.reason.len()
                ),
            ));
        }
        check.range(
            "shutdown.drain_timeout_ms",
            shutdown.drain_timeout_ms,
            DRAIN_TIMEOUT_MS,
        )?;
        check.range(
            "shutdown.batch_interval_ms",
            shutdown.batch_interval_ms,
            BATCH_INTERVAL_MS,
        )?;
        check.range(
            "shutdown.reconnect_spread_ms",
            shutdown.reconnect_spread_ms,
            RECONNECT_SPREAD_MS,
        )?;

        let broker = &self.broker;
        if broker.redis_url.is_empty() {
            if broker.kind == BrokerKind::Redis {
                return Err(check.invalid(
                    "broker.redis_url",
                    format!(
                        "required when broker.kind is \"redis\" (or set {REDIS_URL_ENV}), \
                         e.g. \"redis://127.0.0.1:6379/0\""
                    ),
                ));
            }
        } else if let Err(problem) = check_redis_url(&broker.redis_url) {
            return Err(check.invalid(
                "broker.redis_url",
                format!("{problem}, got {:?}", redact_url(&broker.redis_url)),
            ));
        } else if broker.redis_url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(check.invalid(
                "broker.redis_url",
                "rediss:// (TLS) needs wsgrace built with the `redis-tls` feature \
                 (cargo build --release --features redis-tls)"
                    .to_owned(),
            ));
        }
        let prefix = &broker.key_prefix;
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

        let history = &self.history;
        check.range("history.size", history.size, HISTORY_SIZE)?;
        check.range("history.ttl_ms", history.ttl_ms, HISTORY_TTL_MS)?;
        check.range("history.max_bytes", history.max_bytes, HISTORY_MAX_BYTES)?;

        self.validate_auth(&check)
    }

    /// The `[auth]` rules that need no file: the key file itself is read and checked by
    /// `crate::auth::Verifier::from_config`. No message shows the secret.
    fn validate_auth(&self, check: &Check) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if !auth.jwt_secret.is_empty() && !auth.jwt_public_key_file.is_empty() {
            return Err(check.invalid(
                "auth.jwt_secret",
                format!(
                    "set either auth.jwt_secret (or {JWT_SECRET_ENV}) for HS256 or \
                     auth.jwt_public_key_file for RS256/ES256/EdDSA, not both"
                ),
            ));
        }
        if !auth.jwt_secret.is_empty() && auth.jwt_secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(check.invalid(
                "auth.jwt_secret",
                format!(
                    "must be at least {MIN_JWT_SECRET_BYTES} bytes (e.g. `openssl rand -base64 \
                     32`), got {} (from the file or {JWT_SECRET_ENV})",
                    auth.jwt_secret.len()
                ),
            ));
        }
        if !auth.enabled() {
            for (key, value) in [
                ("auth.issuer", &auth.issuer),
                ("auth.audience", &auth.audience),
            ] {
                if !value.is_empty() {
                    return Err(check.invalid(
                        key,
                        "has no effect while authentication is off: set auth.jwt_secret (or \
                         WSGRACE_JWT_SECRET) or auth.jwt_public_key_file too"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(())
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
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn error(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn shipped_config_is_the_defaults() {
        assert_eq!(parse(SHIPPED).unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_names_every_key() {
        // The shipped file documents every key: each default-valued key appears uncommented.
        let table: toml::Table = SHIPPED.parse().unwrap();
        let keys = |name: &str| -> Vec<String> {
            let mut keys: Vec<String> = table[name].as_table().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys("server"),
            [
                "allowed_origins",
                "bind",
                "max_connections",
                "max_connections_per_ip",
                "request_timeout_ms",
                "trusted_proxies",
                "workers"
            ]
        );
        assert_eq!(
            keys("session"),
            [
                "client_timeout_ms",
                "heartbeat_interval_ms",
                "max_frame_bytes",
                "max_messages_per_sec",
                "outbound_queue",
                "send_buffer_bytes"
            ]
        );
        assert_eq!(
            keys("close"),
            [
                "linger_bytes",
                "linger_ms",
                "mode",
                "room_modes",
                "timeout_ms"
            ]
        );
        assert_eq!(
            keys("shutdown"),
            [
                "batch_interval_ms",
                "batch_size",
                "code",
                "drain_timeout_ms",
                "reason",
                "reconnect_spread_ms"
            ]
        );
        assert_eq!(keys("broker"), ["key_prefix", "kind", "redis_url"]);
        assert_eq!(keys("history"), ["max_bytes", "size", "ttl_ms"]);
        assert_eq!(
            keys("auth"),
            ["audience", "issuer", "jwt_public_key_file", "jwt_secret"]
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
        assert_eq!(
            parse("[server]\n[session]\n[close]\n[shutdown]\n[broker]\n[history]\n[auth]\n")
                .unwrap(),
            Config::default()
        );
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate(Path::new("x")).unwrap();
    }

    #[test]
    fn missing_keys_keep_their_defaults() {
        let config = parse("[session]\nmax_frame_bytes = 1024\n").unwrap();
        assert_eq!(config.session.max_frame_bytes, 1024);
        assert_eq!(config.session.heartbeat_interval_ms, 5_000);
        assert_eq!(config.server, ServerConfig::default());
    }

    #[test]
    fn room_override() {
        let config =
            parse("[close]\nmode = \"awaited\"\n[close.room_modes]\nlobby = \"fire_and_forget\"\n")
                .unwrap();
        assert_eq!(config.mode_for_room("lobby"), CloseMode::FireAndForget);
        assert_eq!(config.mode_for_room("other"), CloseMode::Awaited);

        let config =
            parse("[close]\nmode = \"fire_and_forget\"\nroom_modes = { ops = \"awaited\" }")
                .unwrap();
        assert_eq!(config.mode_for_room("ops"), CloseMode::Awaited);
        assert_eq!(config.mode_for_room("lobby"), CloseMode::FireAndForget);
    }

    #[test]
    fn missing_file_names_the_file() {
        let path = Path::new("/nonexistent/wsgrace/config.toml");
        let err = Config::load(path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert_eq!(err.path(), path);
        assert_eq!(err.key(), None);
        assert!(err
            .to_string()
            .starts_with("/nonexistent/wsgrace/config.toml: "));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = error("[session]\nheartbeat_interval_ms = = 3\n");
        assert!(
            matches!(
                err,
                ConfigError::Syntax {
                    line: 2,
                    column: 25,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.key(), None);
        let text = err.to_string();
        assert!(
            text.starts_with("test.toml: line 2, column 25: invalid TOML: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");

        let err = error("[session\n");
        assert!(
            matches!(err, ConfigError::Syntax { line: 1, .. }),
            "{err:?}"
        );
        let err = error("[session]\nheartbeat_interval_ms = 1\nheartbeat_interval_ms = 2\n");
        assert!(
            matches!(err, ConfigError::Syntax { line: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        for (text, key) in [
            ("[session]\nbogus = 1\n", "session.bogus"),
            ("bogus = 1\n", "bogus"),
            ("[bogus]\n", "bogus"),
            ("[close]\nroom_mode = {}\n", "close.room_mode"),
            ("[server]\nport = 80\n", "server.port"),
        ] {
            let err = error(text);
            assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
            assert!(err
                .to_string()
                .starts_with(&format!("test.toml: {key}: unknown key")));
        }
        let text = error("[session]\nbogus = 1\n").to_string();
        assert!(
            text.contains("expected one of `heartbeat_interval_ms`"),
            "{text}"
        );
    }

    #[test]
    fn wrong_types_name_their_key() {
        for (text, key) in [
            ("[close]\nmode = \"sometimes\"\n", "close.mode"),
            (
                "[close.room_modes]\nlobby = \"sometimes\"\n",
                "close.room_modes.lobby",
            ),
            (
                "[session]\nmax_frame_bytes = \"big\"\n",
                "session.max_frame_bytes",
            ),
            ("[session]\noutbound_queue = -1\n", "session.outbound_queue"),
            ("[shutdown]\ncode = 70000\n", "shutdown.code"),
            (
                "[server]\nallowed_origins = [\"a\", 3]\n",
                "server.allowed_origins[1]",
            ),
            ("session = 3\n", "session"),
        ] {
            let err = error(text);
            assert!(matches!(err, ConfigError::WrongType { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("test.toml: {key}: ")), "{shown}");
            assert!(!shown.contains('\n'), "{shown}");
        }
        let shown = error("session = 3\n").to_string();
        assert!(shown.ends_with("expected a table"), "{shown}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (text, key) in [
            ("[server]\nbind = \"localhost\"\n", "server.bind"),
            ("[server]\nbind = \"127.0.0.1\"\n", "server.bind"),
            ("[server]\nworkers = 1025\n", "server.workers"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nallowed_origins = [\"https://a.example\", \"\"]\n",
                "server.allowed_origins[1]",
            ),
            (
                "[server]\nallowed_origins = [\"https://a.example/\"]\n",
                "server.allowed_origins[0]",
            ),
            (
                "[session]\nheartbeat_interval_ms = 9\n",
                "session.heartbeat_interval_ms",
            ),
            (
                "[session]\nclient_timeout_ms = 86400001\n",
                "session.client_timeout_ms",
            ),
            (
                "[session]\nclient_timeout_ms = 5000\n",
                "session.client_timeout_ms",
            ),
            (
                "[session]\nmax_frame_bytes = 0\n",
                "session.max_frame_bytes",
            ),
            (
                "[session]\nmax_frame_bytes = 67108865\n",
                "session.max_frame_bytes",
            ),
            ("[session]\noutbound_queue = 0\n", "session.outbound_queue"),
            ("[close]\ntimeout_ms = 0\n", "close.timeout_ms"),
            (
                "[session]\nsend_buffer_bytes = 4095\n",
                "session.send_buffer_bytes",
            ),
            ("[close]\nlinger_ms = 60001\n", "close.linger_ms"),
            (
                "[close.room_modes]\n\"no spaces\" = \"awaited\"\n",
                "close.room_modes.no spaces",
            ),
            (
                "[close.room_modes]\n\"\" = \"awaited\"\n",
                "close.room_modes.",
            ),
            ("[shutdown]\ncode = 1005\n", "shutdown.code"),
            ("[shutdown]\ncode = 999\n", "shutdown.code"),
            (
                "[shutdown]\ndrain_timeout_ms = 0\n",
                "shutdown.drain_timeout_ms",
            ),
            (
                "[shutdown]\nbatch_interval_ms = 600001\n",
                "shutdown.batch_interval_ms",
            ),
            (
                "[shutdown]\nreconnect_spread_ms = 600001\n",
                "shutdown.reconnect_spread_ms",
            ),
        ] {
            let err = error(text);
            assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
        }
        assert_eq!(
            error("[session]\nmax_frame_bytes = 0\n").to_string(),
            "test.toml: session.max_frame_bytes: must be between 125 and 67108864, got 0"
        );
        assert_eq!(
            error("[session]\nsend_buffer_bytes = 5\n").to_string(),
            "test.toml: session.send_buffer_bytes: must be 0 (the kernel's default) or between \
             4096 and 67108864, got 5"
        );
    }

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

    #[test]
    fn bounds_are_inclusive() {
        let config = parse(
            "[server]\nworkers = 1024\nmax_connections = 1\n\
             [session]\nheartbeat_interval_ms = 10\nclient_timeout_ms = 11\n\
             max_frame_bytes = 125\noutbound_queue = 1\n\
             [close]\ntimeout_ms = 1\n\
             [shutdown]\ncode = 4999\ndrain_timeout_ms = 1\nbatch_interval_ms = 600000\n",
        );
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn a_newline_in_a_room_name_stays_on_one_line() {
        let err = error("[close.room_modes]\n\"a\\nb\" = \"awaited\"\n");
        assert_eq!(err.key(), Some("close.room_modes.a\\nb"));
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn broker_and_history_defaults() {
        let config = Config::default();
        assert_eq!(config.broker.kind, BrokerKind::Local);
        assert_eq!(config.broker.redis_url, "");
        assert_eq!(config.broker.key_prefix, "wsgrace");
        assert_eq!(config.history.size, 1_000);
        assert_eq!(config.history.ttl_ms, 3_600_000);
        assert_eq!(config.history.max_bytes, 268_435_456);
    }

    #[test]
    fn redis_broker_settings() {
        let config =
            parse("[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n")
                .unwrap();
        assert_eq!(config.broker.kind, BrokerKind::Redis);
        let config = parse("[broker]\nredis_url = \"rediss://u:p@cache.example:6380/1\"\n");
        if cfg!(feature = "redis-tls") {
            assert!(config.is_ok(), "{config:?}");
        } else {
            let err = config.unwrap_err();
            assert_eq!(err.key(), Some("broker.redis_url"));
            assert!(err.to_string().contains("redis-tls"), "{err}");
            assert!(!err.to_string().contains(":p@"), "{err}");
        }
        let config = parse("[history]\nsize = 0\n").unwrap();
        assert_eq!(config.history.size, 0);
    }

    #[test]
    fn bad_broker_settings_name_their_key() {
        for (text, key) in [
            ("[broker]\nkind = \"redis\"\n", "broker.redis_url"),
            (
                "[broker]\nredis_url = \"http://127.0.0.1:6379\"\n",
                "broker.redis_url",
            ),
            (
                "[broker]\nredis_url = \"127.0.0.1:6379\"\n",
                "broker.redis_url",
            ),
            ("[broker]\nredis_url = \"redis://\"\n", "broker.redis_url"),
            (
                "[broker]\nredis_url = \"redis://:6379\"\n",
                "broker.redis_url",
            ),
            ("[broker]\nkey_prefix = \"\"\n", "broker.key_prefix"),
            ("[broker]\nkey_prefix = \"a b\"\n", "broker.key_prefix"),
            ("[history]\nttl_ms = 0\n", "history.ttl_ms"),
            ("[history]\nsize = 1000001\n", "history.size"),
            (
                "[history]\nmax_bytes = 1099511627777\n",
                "history.max_bytes",
            ),
        ] {
            let err = error(text);
            assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
        }
        for (text, key) in [
            ("[broker]\nkind = \"memcached\"\n", "broker.kind"),
            ("[broker]\nurl = \"redis://x\"\n", "broker.url"),
            ("[history]\nsize = -1\n", "history.size"),
        ] {
            let err = error(text);
            assert_eq!(err.key(), Some(key), "{text:?}");
        }
        let shown = error("[broker]\nkind = \"redis\"\n").to_string();
        assert!(shown.contains("WSGRACE_REDIS_URL"), "{shown}");
    }

    #[test]
    fn a_bad_url_error_never_shows_the_password() {
        let err = error("[broker]\nredis_url = \"http://user:hunter2@host:6379\"\n");
        let shown = err.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@host:6379"), "{shown}");
    }

    #[test]
    fn the_environment_overrides_the_redis_url() {
        let dir = std::env::temp_dir().join(format!("wsgrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "[broker]\nkind = \"redis\"\n").unwrap();

        let env =
            |url: &'static str| move |name: &str| (name == REDIS_URL_ENV).then(|| url.to_owned());
        let config = Config::load_with_env(&path, env("redis://10.0.0.1:6379/2")).unwrap();
        assert_eq!(config.broker.redis_url, "redis://10.0.0.1:6379/2");

        // An empty variable is no override: the file's (missing) URL is an error.
        let err = Config::load_with_env(&path, env("")).unwrap_err();
        assert_eq!(err.key(), Some("broker.redis_url"));

        // A bad URL from the environment is named by the key it overrides.
        let err = Config::load_with_env(&path, env("tcp://x:secret@h")).unwrap_err();
        assert_eq!(err.key(), Some("broker.redis_url"));
        assert!(!err.to_string().contains("secret"), "{err}");

        std::fs::write(&path, "[broker]\nredis_url = \"redis://file:6379\"\n").unwrap();
        let config = Config::load_with_env(&path, env("redis://env:6379")).unwrap();
        assert_eq!(config.broker.redis_url, "redis://env:6379");
        let config = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(config.broker.redis_url, "redis://file:6379");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn auth_is_off_by_default() {
        let config = Config::default();
        assert!(!config.auth.enabled());
        let config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
        assert!(config.auth.enabled());
        let config = parse("[auth]\njwt_public_key_file = \"/etc/wsgrace/jwt.pem\"\n").unwrap();
        assert!(config.auth.enabled());
        let config = parse(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nissuer = \"https://id.example\"\naudience = \"chat\"\n"
        ))
        .unwrap();
        assert_eq!(config.auth.issuer, "https://id.example");
        assert_eq!(config.auth.audience, "chat");
    }

    #[test]
    fn bad_auth_settings_name_their_key_and_never_the_secret() {
        let short = "short-secret-31-bytes-long-xxxxx";
        assert_eq!(short.len(), 32);
        let short = &short[..31];
        for (text, key) in [
            (
                format!("[auth]\njwt_secret = \"{short}\"\n"),
                "auth.jwt_secret",
            ),
            (
                format!("[auth]\njwt_secret = \"{SECRET}\"\njwt_public_key_file = \"k.pem\"\n"),
                "auth.jwt_secret",
            ),
            ("[auth]\nissuer = \"me\"\n".to_owned(), "auth.issuer"),
            ("[auth]\naudience = \"chat\"\n".to_owned(), "auth.audience"),
        ] {
            let err = error(&text);
            assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
            assert_eq!(err.key(), Some(key), "{text:?}");
            let shown = err.to_string();
            assert!(!shown.contains(short) && !shown.contains(SECRET), "{shown}");
            assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        }
        let shown = error(&format!("[auth]\njwt_secret = \"{short}\"\n")).to_string();
        assert!(shown.contains("at least 32 bytes"), "{shown}");
        assert!(shown.contains("got 31"), "{shown}");
        assert_eq!(
            error("[auth]\njwt_secret = 5\n").key(),
            Some("auth.jwt_secret")
        );
        assert_eq!(error("[auth]\nsecret = \"x\"\n").key(), Some("auth.secret"));
    }

    #[test]
    fn the_secret_is_hidden_from_debug() {
        let config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }

    #[test]
    fn the_environment_overrides_the_jwt_secret() {
        let mut config = parse("").unwrap();
        config.apply_env(|name| (name == JWT_SECRET_ENV).then(|| SECRET.to_owned()));
        assert_eq!(config.auth.jwt_secret, SECRET);
        config.validate(Path::new("x")).unwrap();

        let mut config = parse(&format!("[auth]\njwt_secret = \"{SECRET}\"\n")).unwrap();
        config.apply_env(|name| (name == JWT_SECRET_ENV).then(String::new));
        assert_eq!(
            config.auth.jwt_secret, SECRET,
            "an empty variable is no override"
        );

        let mut config = parse("").unwrap();
        config.apply_env(|name| (name == JWT_SECRET_ENV).then(|| "too short".to_owned()));
        let err = config.validate(Path::new("x")).unwrap_err();
        assert_eq!(err.key(), Some("auth.jwt_secret"));
        assert!(err.to_string().contains(JWT_SECRET_ENV), "{err}");
        assert!(!err.to_string().contains("too short"), "{err}");
    }
}
