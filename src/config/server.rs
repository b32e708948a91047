//! The `[server]` table: the listen address, the workers and who may upgrade (connection
//! limits, allowed origins, the request-head deadline, trusted proxies), with its defaults
//! and the rules of its keys.
//!
//! It must not bind, resolve or listen: it only says whether the values are well formed.
//! `server.rs` of the crate and `client_address.rs` carry them out.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// Allowed `server.workers` (0 = one per core).
const WORKERS: RangeInclusive<usize> = 0..=1024;
/// Allowed `server.request_timeout_ms`: 100 ms to ten minutes.
const REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
/// Allowed `server.max_connections`.
const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=10_000_000;

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
    /// not parse are left out; [`Config::validate`](super::Config::validate) refuses them
    /// first.
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|entry| parse_network(entry).ok())
            .collect()
    }

    /// The rules of `[server]`, in the order its errors are reported: the address, the
    /// ranges, then each allowed origin and each trusted proxy.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        if let Err(err) = self.bind.parse::<SocketAddr>() {
            return Err(check.invalid(
                "server.bind",
                format!("{err}: expected IP:PORT, got {:?}", self.bind),
            ));
        }
        check.range("server.workers", self.workers, WORKERS)?;
        check.range(
            "server.max_connections",
            self.max_connections,
            MAX_CONNECTIONS,
        )?;
        check.range(
            "server.request_timeout_ms",
            self.request_timeout_ms,
            REQUEST_TIMEOUT_MS,
        )?;
        for (index, origin) in self.allowed_origins.iter().enumerate() {
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

        for (index, entry) in self.trusted_proxies.iter().enumerate() {
            if let Err(problem) = parse_network(entry) {
                return Err(check.invalid(&format!("server.trusted_proxies[{index}]"), problem));
            }
        }
        Ok(())
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
