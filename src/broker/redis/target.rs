//! Where the Redis broker connects: one Redis named by a `redis://` / `rediss://` URL, the
//! master a set of sentinels names (`redis+sentinel://`), asked again on every (re)connect so
//! that a failover is followed (redis-rs's own Sentinel client does not follow one on an
//! existing connection, redis-rs#1438: the driver reconnects, and this asks again), or a Redis
//! Cluster (`redis+cluster://`: the nodes named are asked for the layout on every connect,
//! and every shard's master must answer). It opens the connection for commands and the one
//! for subscriptions, and reads the `run_id` of a master, the name of the Redis process that
//! answers.
//!
//! It owns the discovery only: it must not keep the connections it hands out, subscribe,
//! decide about rooms, or log (the driver logs, and only the address: host and port).

use std::pin::Pin;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt};

use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, ProtocolVersion,
    RedisConnectionInfo, RedisError, RedisResult, Value,
};

use std::sync::Arc;

use super::conn::Conn;
use super::runs::{parse_cluster_slots, Runs};
use super::subscriber::Subscriber;
use crate::config::{parse_cluster_url, parse_sentinel_url, CLUSTER_SCHEME, SENTINEL_SCHEME};

/// How many times the cluster client tries a command again (after MOVED/ASK, or a node it
/// could not reach) before the error reaches the broker, which then takes the cluster for
/// changed and connects again.
const CLUSTER_RETRIES: u32 = 2;

/// The connections made to a target.
pub(super) struct Opened {
    /// For commands.
    pub(super) connection: Conn,
    /// For subscriptions.
    pub(super) subscriber: Subscriber,
    /// What it is, for logs: `master HOST:PORT`, or `a Redis Cluster`.
    pub(super) described: String,
}

/// What the driver connects to.
pub(super) enum Target {
    /// One Redis, always the same.
    Direct(Client),
    /// The master the sentinels name, asked on every connect.
    Sentinel {
        sentinel: Box<Sentinel>,
        /// The name the sentinels monitor the master under.
        master: String,
        /// The db and the password for the master (not for the sentinels).
        node: SentinelNodeConnectionInfo,
        /// The sentinels, for the `+switch-master` subscription.
        sentinels: Vec<ConnectionInfo>,
    },
    /// A Redis Cluster: the nodes to ask for the layout first, and the nodes' password.
    Cluster {
        nodes: Vec<ConnectionInfo>,
        password: Option<String>,
    },
}

/// The `+switch-master` announcements of one sentinel (a pub/sub connection of its own).
pub(super) type Switches = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

impl Target {
    /// The target of a broker URL (checked by `check_redis_url` before). The error names
    /// the rule broken, never the password.
    pub(super) fn new(url: &str) -> Result<Target, String> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            let parsed = parse_cluster_url(rest)?;
            return Ok(Target::Cluster {
                nodes: parsed
                    .nodes
                    .iter()
                    .map(|(host, port)| ConnectionInfo {
                        addr: ConnectionAddr::Tcp(host.clone(), *port),
                        redis: RedisConnectionInfo {
                            protocol: ProtocolVersion::RESP3,
                            ..RedisConnectionInfo::default()
                        },
                    })
                    .collect(),
                password: parsed.password,
            });
        }
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Client::open(url)
                .map(Target::Direct)
                .map_err(|err| err.to_string());
        };
        let parsed = parse_sentinel_url(rest)?;
        let sentinels: Vec<ConnectionInfo> = parsed
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.clone(), *port),
                redis: RedisConnectionInfo::default(),
            })
            .collect();
        let sentinel = Sentinel::build(sentinels.clone()).map_err(|err| err.to_string())?;
        Ok(Target::Sentinel {
            sentinel: Box::new(sentinel),
            master: parsed.master,
            node: SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: Some(RedisConnectionInfo {
                    db: parsed.db,
                    password: parsed.password,
                    ..RedisConnectionInfo::default()
                }),
            },
            sentinels,
        })
    }

    /// Through Sentinel: the `+switch-master` announcements of the first sentinel that
    /// takes the subscription within `timeout` (`None` without Sentinel, or if none does:
    /// a broken connection and `READONLY` still make the driver follow a failover).
    pub(super) async fn switches(&self, timeout: Duration) -> Option<Switches> {
        let Target::Sentinel { sentinels, .. } = self else {
            return None;
        };
        for info in sentinels {
            let subscribed = tokio::time::timeout(timeout, async {
                let client = Client::open(info.clone())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(pubsub)
            })
            .await;
            if let Ok(Ok(pubsub)) = subscribed {
                return Some(pubsub.into_on_message().boxed());
            }
        }
        None
    }

    /// Whether a `+switch-master` payload (`NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`) is about
    /// this target's master.
    pub(super) fn is_our_switch(&self, payload: &[u8]) -> bool {
        let Target::Sentinel { master, .. } = self else {
            return false;
        };
        payload
            .split(|b| *b == b' ')
            .next()
            .is_some_and(|name| name == master.as_bytes())
    }

    /// Whether the master is found through sentinels, or the masters through a cluster's
    /// nodes: either way a failover is followed by connecting again, soon.
    pub(super) fn follows_failovers(&self) -> bool {
        matches!(self, Target::Sentinel { .. } | Target::Cluster { .. })
    }

    /// Whether this is a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// Opens the connections for commands and for subscriptions, within `timeout` each.
    pub(super) async fn open(&mut self, timeout: Duration) -> RedisResult<Opened> {
        if let Target::Cluster { nodes, password } = self {
            return open_cluster(nodes, password.as_deref(), timeout).await;
        }
        let (client, addr) = self.client(timeout).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("pub/sub connection timed out"))??;
        let (sink, stream) = pubsub.split();
        Ok(Opened {
            connection: Conn::Single(connection),
            subscriber: Subscriber::Single { sink, stream },
            described: format!("master {addr}"),
        })
    }

    /// A client for the master now, and its address (`host:port`, for logs): the sentinels
    /// are asked (the first that answers; the master it names must say it is a master),
    /// within `timeout`. Not for a cluster (see [`Target::open`]).
    async fn client(&mut self, timeout: Duration) -> RedisResult<(Client, String)> {
        match self {
            Target::Direct(client) => {
                let addr = client.get_connection_info().addr.to_string();
                Ok((client.clone(), addr))
            }
            Target::Sentinel {
                sentinel,
                master,
                node,
                ..
            } => {
                let found =
                    tokio::time::timeout(timeout, sentinel.async_master_for(master, Some(node)))
                        .await
                        .map_err(|_| {
                            RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the sentinels did not name a master in time",
                            ))
                        })??;
                let addr = found.get_connection_info().addr.to_string();
                Ok((found, addr))
            }
            Target::Cluster { .. } => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no single master",
            ))),
        }
    }
}

/// An I/O timeout as a Redis error (the broker takes it for a connection error).
fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Connects to a Redis Cluster through `nodes`, with RESP3 push messages for the sharded
/// subscriptions; every shard's master must answer a PING, so that a cluster still failing
/// over is not taken for up.
async fn open_cluster(
    nodes: &[ConnectionInfo],
    password: Option<&str>,
    timeout: Duration,
) -> RedisResult<Opened> {
    let (pushes_tx, pushes) = tokio::sync::mpsc::unbounded_channel();
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes_tx)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(CLUSTER_RETRIES);
    if let Some(password) = password {
        builder = builder.password(password.to_owned());
    }
    let client = builder.build()?;
    let mut connection = tokio::time::timeout(timeout, client.get_async_connection())
        .await
        .map_err(|_| timed_out("the cluster's nodes did not answer in time"))??;
    ping_masters(&mut connection).await?;
    Ok(Opened {
        connection: Conn::Cluster(connection.clone()),
        subscriber: Subscriber::Cluster {
            connection,
            pushes,
            channels: HashSet::new(),
            leaving: HashMap::new(),
        },
        described: "a Redis Cluster".to_owned(),
    })
}

/// The `run` of every slot range of the cluster as the broker connects (see `runs.rs`):
/// `MYID:RUN_ID` of the range's master, from `CLUSTER SLOTS` and every master's
/// `INFO server`. A range whose master's run_id is not read is left out (its rooms' scripts
/// read it themselves).
pub(super) async fn cluster_runs(
    connection: &mut redis::cluster_async::ClusterConnection,
) -> RedisResult<Runs> {
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await?;
    let infos: Value = connection
        .route_command(
            redis::cmd("INFO").arg("server"),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await?;
    let mut run_ids: HashMap<String, String> = HashMap::new();
    if let Value::Map(answers) = infos {
        for (addr, info) in answers {
            let text = match (addr, info) {
                (Value::BulkString(addr), Value::BulkString(info)) => {
                    (String::from_utf8(addr).ok(), String::from_utf8(info).ok())
                }
                (Value::BulkString(addr), Value::VerbatimString { text, .. }) => {
                    (String::from_utf8(addr).ok(), Some(text))
                }
                _ => (None, None),
            };
            if let (Some(addr), Some(info)) = text {
                if let Ok(run) = run_id(&info) {
                    run_ids.insert(addr, run);
                }
            }
        }
    }
    let ranges: Vec<(u16, u16, Arc<str>)> = parse_cluster_slots(&slots)
        .into_iter()
        .filter_map(|(start, end, addr, id)| {
            let run = run_ids.get(&addr)?;
            Some((start, end, Arc::from(format!("{id}:{run}"))))
        })
        .collect();
    Ok(Runs::Shards(Arc::from(ranges)))
}

/// PINGs every master of the cluster: an error unless all of them answered.
pub(super) async fn ping_masters(
    connection: &mut redis::cluster_async::ClusterConnection,
) -> RedisResult<()> {
    connection
        .route_command(
            &redis::cmd("PING"),
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        )
        .await
        .map(|_: Value| ())
}

/// The `run_id` in the text of `INFO server`.
pub(super) fn run_id(info: &str) -> RedisResult<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| RedisError::from((ErrorKind::ParseError, "INFO server has no run_id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_and_targets() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:1\r\n";
        assert_eq!(run_id(info).ok().as_deref(), Some("abc123"));
        assert!(run_id("# Server\r\n").is_err());
        assert!(!Target::new("redis://127.0.0.1:1/0")
            .unwrap()
            .follows_failovers());
        assert!(
            Target::new("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m/1")
                .unwrap()
                .follows_failovers()
        );
        assert!(Target::new("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2")
            .unwrap()
            .follows_failovers());
        let target = Target::new("redis+sentinel://h:1/mymaster").unwrap();
        assert!(target.is_our_switch(b"mymaster 127.0.0.1 1 127.0.0.1 2"));
        assert!(!target.is_our_switch(b"mymaster2 127.0.0.1 1 127.0.0.1 2"));
        let err = Target::new("redis+sentinel://:hunter2@h:1/")
            .err()
            .unwrap_or_default();
        assert!(!err.is_empty() && !err.contains("hunter2"), "{err}");
    }
}
