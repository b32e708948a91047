//! The `[session]` table: per-connection timing and limits (heartbeat, client timeout,
//! message size, outbound queue, message rate, kernel send buffer, rooms per v2 connection,
//! `permessage-deflate`, `TCP_NODELAY`), with its defaults and the rules of its keys.
//!
//! It must not know about actix or sockets: the session actor and the transport read these
//! values and carry them out.

use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// Allowed `session.heartbeat_interval_ms`: 10 ms to one hour.
const HEARTBEAT_INTERVAL_MS: RangeInclusive<u64> = 10..=3_600_000;
/// Allowed `session.client_timeout_ms`: 10 ms to one day (and above the heartbeat interval).
const CLIENT_TIMEOUT_MS: RangeInclusive<u64> = 10..=86_400_000;
/// Allowed `session.max_frame_bytes`: at least a control frame's payload, at most 64 MiB.
const MAX_FRAME_BYTES: RangeInclusive<usize> = 125..=64 * 1024 * 1024;
/// Allowed `session.outbound_queue`.
const OUTBOUND_QUEUE: RangeInclusive<usize> = 1..=1_000_000;
/// Allowed `session.max_messages_per_sec` (0 = no limit).
const MAX_MESSAGES_PER_SEC: RangeInclusive<u32> = 0..=1_000_000;
/// The default `session.send_buffer_bytes`.
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 262_144;
/// Allowed `session.send_buffer_bytes`: 0 (the kernel's default) or 4 KiB to 64 MiB.
const SEND_BUFFER_BYTES: RangeInclusive<usize> = 4_096..=64 << 20;
/// The default `session.permessage_deflate`: off. A compression costs ~20 µs however short the
/// message, paid once per worker thread with members in the room: nothing in a room of 1,000,
/// several times the CPU per delivery in a room of two, for ~19% fewer bytes on chat text
/// (BENCHMARKS.md, "permessage-deflate").
pub const DEFAULT_PERMESSAGE_DEFLATE: bool = false;
/// Allowed `session.max_rooms`.
const MAX_ROOMS: RangeInclusive<usize> = 1..=100_000;

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
    /// `wsgrace.v2` connections: rooms one connection may have joined at once; one more join
    /// is refused with `too_many_rooms`.
    pub max_rooms: usize,
    /// Answer RFC 7692 `permessage-deflate` offers (with `server_no_context_takeover` and
    /// `client_no_context_takeover`): a room message is compressed once and its bytes shared by
    /// every member that agreed; what a client sends compressed is inflated up to
    /// `max_frame_bytes` (more: 1009, found before inflating past it).
    pub permessage_deflate: bool,
    /// Set `TCP_NODELAY` on every connection: a frame goes out when it is written, instead of
    /// waiting (Nagle's algorithm) for the acknowledgement of the one before, which a client
    /// that sends nothing meanwhile delays by ~40 ms (its delayed ACK).
    pub tcp_nodelay: bool,
}

impl SessionSettings {
    /// The rules of `[session]`, in the order its errors are reported; the client timeout
    /// must also exceed the heartbeat interval, or a quiet but healthy client would be
    /// aborted between two pings.
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range(
            "session.heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            HEARTBEAT_INTERVAL_MS,
        )?;
        check.range(
            "session.client_timeout_ms",
            self.client_timeout_ms,
            CLIENT_TIMEOUT_MS,
        )?;
        check.range(
            "session.max_messages_per_sec",
            self.max_messages_per_sec,
            MAX_MESSAGES_PER_SEC,
        )?;
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            return Err(check.invalid(
                "session.client_timeout_ms",
                format!(
                    "must be greater than session.heartbeat_interval_ms ({}), got {}",
                    self.heartbeat_interval_ms, self.client_timeout_ms
                ),
            ));
        }
        check.range(
            "session.max_frame_bytes",
            self.max_frame_bytes,
            MAX_FRAME_BYTES,
        )?;
        check.range(
            "session.outbound_queue",
            self.outbound_queue,
            OUTBOUND_QUEUE,
        )?;
        check.range("session.max_rooms", self.max_rooms, MAX_ROOMS)?;
        if self.send_buffer_bytes != 0 && !SEND_BUFFER_BYTES.contains(&self.send_buffer_bytes) {
            return Err(check.invalid(
                "session.send_buffer_bytes",
                format!(
                    "must be 0 (the kernel's default) or between {} and {}, got {}",
                    SEND_BUFFER_BYTES.start(),
                    SEND_BUFFER_BYTES.end(),
                    self.send_buffer_bytes
                ),
            ));
        }
        Ok(())
    }
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
            max_rooms: 100,
            permessage_deflate: DEFAULT_PERMESSAGE_DEFLATE,
            tcp_nodelay: true,
        }
    }
}
