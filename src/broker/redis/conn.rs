//! The connection the broker's tasks send commands on: one Redis (or the master the sentinels
//! named) over a multiplexed connection, or a Redis Cluster through redis-rs's cluster
//! connection, which routes each command to the shard of its key and follows MOVED/ASK.
//!
//! A Redis Cluster takes a pipeline only if all its commands go to one slot; the publisher
//! sends one pipeline for messages of many rooms. So, on a cluster, [`Conn`] splits a
//! pipeline by the hash tag of each command's first tagged argument (every key of a room
//! carries the room as its tag, see `keys.rs`): one sub-pipeline per tag, sent at once, the
//! answers put back in the pipeline's order. A command without a tag (`WAIT`) waits for the
//! commands before it and goes alone, routed by the cluster client (`WAIT` to every master).
//! The order of the commands of one room is kept; the order between rooms is not (nobody
//! relies on it).
//!
//! It owns the sending only: it must not decide about rooms, retry, or log.

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to one Redis, or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    /// One Redis: the master (named by the URL, or by the sentinels).
    Single(MultiplexedConnection),
    /// A Redis Cluster: every shard's master, commands routed by slot.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Loads the script `code` into the script cache (of every master, on a cluster; not of
    /// the replicas, so that a replica down does not stop the broker: a promoted one gets
    /// it when the broker connects again).
    pub(super) async fn load_script(&mut self, code: &str) -> RedisResult<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(code);
        match self {
            Conn::Single(connection) => load.query_async::<Value>(connection).await.map(|_| ()),
            Conn::Cluster(connection) => connection
                .route_command(
                    &load,
                    RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    )),
                )
                .await
                .map(|_| ()),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(connection) => connection.req_packed_command(cmd),
            Conn::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(connection) => {
                if pipeline.is_transaction() {
                    // A transaction (MULTI/EXEC) must stay whole: the caller keeps it to one
                    // slot.
                    connection.req_packed_commands(pipeline, offset, count)
                } else {
                    split_by_tag(connection.clone(), pipeline).boxed()
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(connection) => connection.get_db(),
            Conn::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The hash tag (`{...}`, not empty) of a command's first argument that has one, after the
/// command's name: the commands with the same tag go to the same slot.
fn hash_tag(cmd: &Cmd) -> Option<Vec<u8>> {
    cmd.args_iter().skip(1).find_map(|arg| {
        let Arg::Simple(bytes) = arg else {
            return None;
        };
        let open = bytes.iter().position(|b| *b == b'{')?;
        let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
        let tag = &bytes[open + 1..open + 1 + close];
        (!tag.is_empty()).then(|| tag.to_vec())
    })
}

/// One part of a split pipeline: the positions of its commands in the pipeline, and the
/// sub-pipeline that sends them.
struct Part {
    positions: Vec<usize>,
    pipeline: Pipeline,
}

/// Sends `pipeline` over a cluster as the module says; the answers come in the pipeline's
/// order, or the first error of a part (the fate of the others is then unknown to the
/// caller, as with a broken connection).
async fn split_by_tag(
    connection: ClusterConnection,
    pipeline: &Pipeline,
) -> RedisResult<Vec<Value>> {
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let mut answers: Vec<Option<Value>> = vec![None; commands.len()];
    let mut parts: Vec<(Vec<u8>, Part)> = Vec::new();
    for (position, cmd) in commands.iter().enumerate() {
        match hash_tag(cmd) {
            Some(tag) => {
                let part = match parts.iter_mut().find(|(known, _)| *known == tag) {
                    Some((_, part)) => part,
                    None => {
                        parts.push((
                            tag,
                            Part {
                                positions: Vec::new(),
                                pipeline: redis::pipe(),
                            },
                        ));
                        let last = parts.len() - 1;
                        &mut parts[last].1
                    }
                };
                part.positions.push(position);
                part.pipeline.add_command((*cmd).clone());
            }
            None => {
                // A barrier: what came before it is sent first.
                send_parts(&connection, std::mem::take(&mut parts), &mut answers).await?;
                let mut single = connection.clone();
                answers[position] = Some(single.req_packed_command(cmd).await?);
            }
        }
    }
    send_parts(&connection, parts, &mut answers).await?;
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Value::Nil))
        .collect())
}

/// The positions of a part's commands, and its answers.
type PartAnswer = (Vec<usize>, RedisResult<Vec<Value>>);

/// Sends every part at once and puts each answer at its command's position.
async fn send_parts(
    connection: &ClusterConnection,
    parts: Vec<(Vec<u8>, Part)>,
    answers: &mut [Option<Value>],
) -> RedisResult<()> {
    if parts.is_empty() {
        return Ok(());
    }
    let sends: Vec<BoxFuture<'_, PartAnswer>> = parts
        .iter()
        .map(|(_, part)| {
            let mut connection = connection.clone();
            let positions = part.positions.clone();
            let count = part.pipeline.len();
            async move {
                let answer = connection
                    .req_packed_commands(&part.pipeline, 0, count)
                    .await;
                (positions, answer)
            }
            .boxed()
        })
        .collect();
    for (positions, answer) in join_all(sends).await {
        for (position, value) in positions.into_iter().zip(answer?) {
            if let Some(slot) = answers.get_mut(position) {
                *slot = Some(value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg("abc")
            .arg(2)
            .arg("P:{room 1}:room")
            .arg("P:{x}:y");
        assert_eq!(hash_tag(&evalsha), Some(b"room 1".to_vec()));
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(100);
        assert_eq!(hash_tag(&wait), None);
        let mut empty = redis::cmd("GET");
        empty.arg("P:{}:x");
        assert_eq!(hash_tag(&empty), None);
    }
}
