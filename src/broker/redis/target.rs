//! Where the Redis broker connects: one Redis named by a `redis://` / `rediss://` URL, or the
//! master a set of sentinels names (`redis+sentinel://`), asked again on every (re)connect so
//! that a failover is followed (redis-rs's own Sentinel client does not follow one on an
//! existing connection, redis-rs#1438: the driver reconnects, and this asks again). It also
//! reads the master's `run_id`, the name of the Redis process that answers.
//!
//! It owns the discovery only: it must not keep the connections it hands out, subscribe,
//! decide about rooms, or log (the driver logs, and only the address: host and port).

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, ErrorKind, RedisConnectionInfo, RedisError, RedisResult,
};

use crate::config::{parse_sentinel_url, SENTINEL_SCHEME};

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
}

/// The `+switch-master` announcements of one sentinel (a pub/sub connection of its own).
pub(super) type Switches = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

impl Target {
    /// The target of a broker URL (checked by `check_redis_url` before). The error names
    /// the rule broken, never the password.
    pub(super) fn new(url: &str) -> Result<Target, String> {
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

    /// Whether the master is found through sentinels.
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }

    /// A client for the master now, and its address (`host:port`, for logs): the sentinels
    /// are asked (the first that answers; the master it names must say it is a master),
    /// within `timeout`.
    pub(super) async fn client(&mut self, timeout: Duration) -> RedisResult<(Client, String)> {
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
        }
    }
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
        assert!(!Target::new("redis://127.0.0.1:1/0").unwrap().is_sentinel());
        assert!(
            Target::new("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m/1")
                .unwrap()
                .is_sentinel()
        );
        let target = Target::new("redis+sentinel://h:1/mymaster").unwrap();
        assert!(target.is_our_switch(b"mymaster 127.0.0.1 1 127.0.0.1 2"));
        assert!(!target.is_our_switch(b"mymaster2 127.0.0.1 1 127.0.0.1 2"));
        let err = Target::new("redis+sentinel://:hunter2@h:1/")
            .err()
            .unwrap_or_default();
        assert!(!err.is_empty() && !err.contains("hunter2"), "{err}");
    }
}
