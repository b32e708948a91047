//! The `[close]` table and its `[close.room_modes]` subtable: the mode of server-initiated
//! closes (per room if named), the close timeout and the lingering close, with their
//! defaults and the rules of their keys.
//!
//! It must not close anything: the close machine (`crate::close`) and the session carry the
//! values out. From the crate it imports only `CloseMode`, the one type the table holds.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::check::Check;
use super::names::{is_valid_name, MAX_NAME_CHARS};
use super::ConfigError;
use crate::close::CloseMode;

/// Allowed `close.timeout_ms`: 1 ms to ten minutes.
const CLOSE_TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
/// Allowed `close.linger_ms`: up to one minute (0 = close at once).
const LINGER_MS: RangeInclusive<u64> = 0..=60_000;
/// Allowed `close.linger_bytes`: up to 1 GiB.
const LINGER_BYTES: RangeInclusive<u64> = 0..=1 << 30;

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

impl CloseSettings {
    /// The rules of `[close]`, in the order its errors are reported: the ranges, then each
    /// key of `room_modes` must be a room name a client could join (the key in the error is
    /// escaped, so that it stays on one line).
    pub(super) fn validate(&self, check: &Check) -> Result<(), ConfigError> {
        check.range("close.timeout_ms", self.timeout_ms, CLOSE_TIMEOUT_MS)?;
        check.range("close.linger_ms", self.linger_ms, LINGER_MS)?;
        check.range("close.linger_bytes", self.linger_bytes, LINGER_BYTES)?;
        for room in self.room_modes.keys() {
            if !is_valid_name(room) {
                return Err(check.invalid(
                    &format!("close.room_modes.{}", room.escape_debug()),
                    format!(
                        "not a valid room name: 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . -"
                    ),
                ));
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use crate::config::tests::error;

    #[test]
    fn a_newline_in_a_room_name_stays_on_one_line() {
        let err = error("[close.room_modes]\n\"a\\nb\" = \"awaited\"\n");
        assert_eq!(err.key(), Some("close.room_modes.a\\nb"));
        assert!(!err.to_string().contains('\n'));
    }
}
