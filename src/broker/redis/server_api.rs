//! What the server API asks of the Redis broker: a page of a room's history (the room's
//! epoch and seq by the snapshot script, which creates a missing room as a join would, then
//! one XRANGE of at most the page's size and the epoch once more), and an order for every
//! node on the key prefix's control channel (every node's driver subscribes to it on each
//! connect and hands what arrives over as [`BrokerEvent::Control`]).
//!
//! It must not act on an order, nor write history.

use std::future::Future;
use std::sync::Arc;

use redis::{RedisError, Value};

use super::keys::{parse_entry, snapshot_error};
use super::RedisBroker;
use crate::broker::{BrokerError, Control, Epoch, HistoryPage, Published};

impl RedisBroker {
    /// The kept messages of `room` after `since` (`None`: from the oldest kept), at most
    /// `limit`, with the room's epoch and seq.
    pub fn history_page(
        &self,
        room: &str,
        since: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send + 'static {
        let shared = self.shared.clone();
        let room: Arc<str> = Arc::from(room);
        async move {
            let Some(super::Link {
                mut connection,
                run,
            }) = shared.connection.borrow().clone()
            else {
                return Err(BrokerError::Unavailable);
            };
            let failed = |err: RedisError| shared.failed(err);
            let (epoch, seq) = shared.room_head(&mut connection, &run, &room).await?;
            let epoch = Epoch::new(epoch);
            let first = match since {
                Some(since) => format!("{}-0", since.saturating_add(1)),
                None => "-".to_owned(),
            };
            let (entries, epoch_now): (Value, Option<String>) = redis::pipe()
                .cmd("XRANGE")
                .arg(shared.keys.history(&room))
                .arg(first)
                .arg(format!("{seq}-0"))
                .arg("COUNT")
                .arg(limit)
                .cmd("HGET")
                .arg(shared.keys.room(&room))
                .arg("epoch")
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            let entries = match entries {
                // Redis lost the room in between: another epoch's entries are not this one's.
                Value::Array(_) if epoch_now.as_deref() != Some(epoch.as_str()) => Vec::new(),
                Value::Array(entries) => entries,
                _ => return Err(snapshot_error("history entries")),
            };
            let mut messages = Vec::with_capacity(entries.len());
            for entry in entries {
                let (seq, json) =
                    parse_entry(entry).ok_or_else(|| snapshot_error("stream entry"))?;
                messages.push(Published {
                    room: room.clone(),
                    epoch: epoch.clone(),
                    seq,
                    json,
                    sent_by: None,
                });
            }
            Ok(HistoryPage {
                room,
                epoch,
                seq,
                messages,
            })
        }
    }

    /// Publishes `control` on the control channel: every node subscribed (this one too) gets
    /// it.
    pub fn send_control(
        &self,
        control: &Control,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let published = serde_json::to_string(control)
            .map(|payload| self.publish_raw(self.shared.keys.control(), payload));
        async move {
            match published {
                Ok(published) => published.await,
                Err(err) => Err(BrokerError::Encode(err.to_string())),
            }
        }
    }
}
