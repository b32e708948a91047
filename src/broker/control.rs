//! What the server API asks of the brokers besides messages: an order for every node's
//! sessions ([`Control`], a disconnect by name), and a page of a room's kept history
//! ([`HistoryPage`], with [`page_of`] cutting one out of the kept messages).
//!
//! It must not act on an order: the supervisor of each node does, for its own sessions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Epoch, Published};
use crate::close::CloseMode;

/// An order the server API gives every node, through the broker (with Redis, a channel of the
/// key prefix every node subscribes to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of a name.
    Disconnect(Disconnect),
}

/// Close every connection of `name` (only those that joined `room`, when given) with `code`
/// and `reason`, in `mode` (`None`: the session's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// The name whose connections close.
    pub name: String,
    /// Only the connections in this room.
    pub room: Option<String>,
    /// The close code (1000, 1008 or 3000-4999).
    pub code: u16,
    /// The close reason (at most 123 bytes).
    pub reason: String,
    /// `awaited` or `fire_and_forget`; absent: each session's own mode.
    pub mode: Option<CloseMode>,
}

/// A page of a room's kept history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The room.
    pub room: Arc<str>,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its latest seq.
    pub seq: u64,
    /// The kept messages after the asked seq, oldest first, at most the asked count.
    pub messages: Vec<Published>,
}

/// The messages of `kept` (oldest first) after `since` (`None`: from the oldest), at most
/// `limit` of them.
pub fn page_of(kept: Vec<Published>, since: Option<u64>, limit: usize) -> Vec<Published> {
    let after = since.unwrap_or(0);
    kept.into_iter()
        .filter(|message| message.seq > after)
        .take(limit)
        .collect()
}
