//! The driver's subscriptions: the room channels and the control channel, on one Redis by a
//! pub/sub connection of its own (`SUBSCRIBE`), or on a Redis Cluster by `SSUBSCRIBE` on each
//! channel's shard (RESP3 push messages through the cluster connection; a message is copied to
//! the shard's nodes only). Either way a `PING` answers after the messages sent before it,
//! which the driver's epoch check relies on.
//!
//! On a cluster, a connection to a shard that closes (the library says so with a
//! disconnection push) or a sharded subscription the server ends by itself (a failover or a
//! slot moved: an unasked `sunsubscribe`) is reported as [`Incoming::Lost`]: the driver then
//! makes everything again (the shard's new master, the subscriptions, the epoch checks).
//!
//! It owns the subscriptions only: it must not decide about rooms or log.

use std::collections::{HashMap, HashSet};

use futures::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the subscriptions brought.
pub(super) enum Incoming {
    /// A message on a subscribed channel.
    Message(Msg),
    /// The subscriptions cannot be trusted any more (why).
    Lost(String),
}

/// The subscriptions of one connection.
pub(super) enum Subscriber {
    /// One Redis: a pub/sub connection.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A Redis Cluster: the cluster connection's push messages.
    Cluster {
        connection: ClusterConnection,
        pushes: UnboundedReceiver<PushInfo>,
        /// The channels subscribed now (an unasked `sunsubscribe` of one of them means
        /// the shard moved).
        channels: HashSet<Vec<u8>>,
        /// The channels unsubscribed whose confirmations have not come yet, and how many.
        leaving: HashMap<Vec<u8>, usize>,
    },
}

impl Subscriber {
    /// Subscribes `channel`; answers once the server confirmed it.
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.subscribe(channel).await,
            Subscriber::Cluster {
                connection,
                channels,
                ..
            } => {
                channels.insert(channel.as_bytes().to_vec());
                connection.ssubscribe(channel).await
            }
        }
    }

    /// Unsubscribes `channel`.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.unsubscribe(channel).await,
            Subscriber::Cluster {
                connection,
                channels,
                leaving,
                ..
            } => {
                channels.remove(channel.as_bytes());
                *leaving.entry(channel.as_bytes().to_vec()).or_default() += 1;
                connection.sunsubscribe(channel).await
            }
        }
    }

    /// A `PING` on the subscriptions' connections (every master's, on a cluster): answers
    /// after every message sent to them before.
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.ping::<Value>().await.map(|_| ()),
            // The cluster client sends PING to every node it knows and answers when all did.
            Subscriber::Cluster { connection, .. } => redis::cmd("PING")
                .query_async::<Value>(connection)
                .await
                .map(|_| ()),
        }
    }

    /// The next message, or `None` once the subscriptions are gone.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        match self {
            Subscriber::Single { stream, .. } => stream.next().await.map(Incoming::Message),
            Subscriber::Cluster {
                pushes,
                channels,
                leaving,
                ..
            } => loop {
                let push = pushes.recv().await?;
                if let Some(incoming) = sorted(push, channels, leaving) {
                    return Some(incoming);
                }
            },
        }
    }

    /// The next message if one is there already: `Some(None)` once the subscriptions are
    /// gone, `None` when nothing is waiting.
    pub(super) fn next_ready(&mut self) -> Option<Option<Incoming>> {
        self.next().now_or_never()
    }
}

/// What a push message from a cluster node means for the driver (`None`: nothing).
fn sorted(
    push: PushInfo,
    channels: &HashSet<Vec<u8>>,
    leaving: &mut HashMap<Vec<u8>, usize>,
) -> Option<Incoming> {
    match push.kind {
        PushKind::SMessage | PushKind::Message => Msg::from_push_info(push).map(Incoming::Message),
        PushKind::Disconnection => Some(Incoming::Lost(
            "a connection to a cluster node closed".to_owned(),
        )),
        PushKind::SUnsubscribe => {
            let channel = match push.data.first() {
                Some(Value::BulkString(bytes)) => bytes.clone(),
                _ => return None,
            };
            if let Some(count) = leaving.get_mut(&channel) {
                // The confirmation of an unsubscribe asked for.
                *count -= 1;
                if *count == 0 {
                    leaving.remove(&channel);
                }
                return None;
            }
            if !channels.contains(&channel) {
                return None;
            }
            Some(Incoming::Lost(
                "a shard ended a subscription (a failover, or its slot moved)".to_owned(),
            ))
        }
        _ => None,
    }
}
