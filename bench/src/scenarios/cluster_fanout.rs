//! `cluster-fanout N M`: the `fanout` load across two nodes on one Redis, and beside it, in
//! the same run, the same load on one node with the local broker. Starts its own
//! `redis-server` (free port, no persistence, killed at the end). Members alternate between
//! the two nodes; two senders (member 0 on node A, member 1 on node B) send the M messages
//! round robin. Reports each side's deliveries/s, latency, losses and order, the servers'
//! CPU per delivery summed over the nodes, Redis's CPU, Redis commands per message
//! (`INFO commandstats` before/after the send), and the ratios cross-node / single node.
//! With `--wait-replicas-compare`: the Redis gets one replica, and the cross-node load runs
//! with `broker.wait_replicas` 0 and then 1, with the ratios of the second over the first.
//! With `--redis-cluster-compare`: the many-rooms load (`rooms_load.rs`: N members over
//! `--rooms` rooms, a sender per room) across the two nodes, first on one Redis, then on a
//! Redis Cluster of 3 masters (no replicas, like the one Redis), with the ratios cluster /
//! one Redis; Redis's CPU and `INFO commandstats` are summed over the cluster's masters.

use std::time::Duration;

use serde_json::{json, Value};

use super::fanout::{FanoutArgs, Load};
use super::rooms_load::RoomsLoad;
use super::{cpu_delta, cpu_sum, ms, stop_json, Ctx, Outcome};
use crate::launch::{self, Override};
use crate::scenario_redis::{self, command_stats, commands_json, CommandStats};
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::redis_cluster::RedisCluster;

#[derive(Debug, clap::Args)]
pub struct ClusterFanoutArgs {
    #[command(flatten)]
    pub load: FanoutArgs,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Skip the single-node run.
    #[arg(long)]
    pub no_single: bool,
    /// Instead of the single-node comparison: give the Redis one replica and run the
    /// cross-node load twice, with `broker.wait_replicas` 0 and then 1, and print the ratio
    /// (the cost of waiting for the replica: `WAIT 1` per batch before delivery).
    #[arg(long)]
    pub wait_replicas_compare: bool,
    /// Instead of the single-node comparison: the many-rooms load over one Redis and then
    /// over a 3-master Redis Cluster, and the ratios cluster / one Redis.
    #[arg(long, conflicts_with = "wait_replicas_compare")]
    pub redis_cluster_compare: bool,
    /// With `--redis-cluster-compare`: the rooms the members are spread over (a sender in
    /// each; `--window` is then per room).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
}

/// The Redis of a many-rooms run: one server, or a cluster.
enum RoomsRedis {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl RoomsRedis {
    fn url(&self) -> String {
        match self {
            RoomsRedis::One(redis) => redis.url(),
            RoomsRedis::Cluster(cluster) => cluster.url(),
        }
    }

    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            RoomsRedis::One(redis) => vec![redis],
            RoomsRedis::Cluster(cluster) => cluster.servers().collect(),
        }
    }

    /// Each Redis process's CPU time so far.
    fn cpu_times(&self) -> Vec<Option<Duration>> {
        self.servers()
            .into_iter()
            .map(scenario_redis::cpu_time)
            .collect()
    }

    /// `INFO commandstats` summed over the processes.
    async fn command_stats(&self) -> CommandStats {
        let mut sum = CommandStats::new();
        for server in self.servers() {
            for (name, (calls, usec)) in command_stats(server).await.unwrap_or_default() {
                let entry = sum.entry(name).or_default();
                entry.0 += calls;
                entry.1 += usec;
            }
        }
        sum
    }
}

/// The many-rooms load across two nodes on one Redis or on a 3-master cluster.
async fn rooms_cross_node(
    ctx: &Ctx,
    args: &ClusterFanoutArgs,
    cluster: bool,
) -> Result<(bool, Value), String> {
    let redis = if cluster {
        eprintln!("cluster-fanout: forming a 3-master Redis Cluster");
        RoomsRedis::Cluster(
            RedisCluster::builder(3, 0)
                .program(&args.redis_server)
                .try_start()
                .map_err(|e| e.to_string())?,
        )
    } else {
        RoomsRedis::One(scenario_redis::start(&args.redis_server)?)
    };
    // Where the rooms live (asked before any client: the kit's helper blocks).
    let rooms_per_master: Option<Vec<(u16, usize)>> = match &redis {
        RoomsRedis::One(_) => None,
        RoomsRedis::Cluster(c) => {
            let mut count = std::collections::BTreeMap::<u16, usize>::new();
            for room in 0..args.rooms {
                if let Some(master) = c.master_of(&format!("{{r-{room}}}")) {
                    *count.entry(master).or_default() += 1;
                }
            }
            Some(count.into_iter().collect())
        }
    };
    let o = overrides(&args.load, Some(&redis.url()));
    let mut a = launch::start_ready(&ctx.server, &o).await?;
    let mut b = launch::start_ready(&ctx.server, &o).await?;
    eprintln!(
        "cluster-fanout: {} on {}, node A pid {} on {}, node B pid {} on {}",
        if cluster {
            "Redis Cluster"
        } else {
            "one Redis"
        },
        redis.url(),
        a.pid(),
        a.addr,
        b.pid(),
        b.addr
    );
    let load = RoomsLoad::join(ctx, &[a.addr, b.addr], &args.load, args.rooms).await;
    let pids = [a.pid(), b.pid()];
    let stats_before = redis.command_stats().await;
    let (cpu_before, redis_before) = (cpu_sum(&pids), redis.cpu_times());
    let result = load.send(ctx, &args.load).await;
    let (cpu_after, redis_after) = (cpu_sum(&pids), redis.cpu_times());
    let stats_after = redis.command_stats().await;
    let server_cpu = cpu_delta(cpu_before, cpu_after);
    let redis_cpu: Vec<Duration> = redis_before
        .iter()
        .zip(&redis_after)
        .map(|(a, b)| cpu_delta(*a, *b))
        .collect();
    let redis_total: Duration = redis_cpu.iter().sum();
    let mut report = load.report(&args.load, &result, server_cpu);
    let stop_a = stop_json(&mut a, Duration::from_secs(15)).await;
    let stop_b = stop_json(&mut b, Duration::from_secs(15)).await;
    drop(redis);
    let per_message = |d: Duration| {
        if result.sent == 0 {
            0.0
        } else {
            (d.as_nanos() as f64 / result.sent as f64).round()
        }
    };
    if let Some(obj) = report.as_object_mut() {
        obj.insert(
            "broker".into(),
            json!(if cluster {
                "redis cluster (3 masters), 2 nodes"
            } else {
                "one redis, 2 nodes"
            }),
        );
        obj.insert("rooms_per_master".into(), json!(rooms_per_master));
        obj.insert("redis_cpu_ms".into(), json!(ms(redis_total)));
        obj.insert(
            "redis_cpu_ms_per_process".into(),
            json!(redis_cpu.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
        );
        obj.insert(
            "redis_cpu_ns_per_message".into(),
            json!(per_message(redis_total)),
        );
        obj.insert(
            "redis_commands".into(),
            commands_json(&stats_before, &stats_after, result.sent),
        );
        obj.insert("server".into(), json!({ "a": stop_a, "b": stop_b }));
    }
    Ok((result.ok, report))
}

/// A replica of `master` (same binary), started and following it.
fn start_replica(program: &str, master: &RedisServer) -> Result<RedisServer, String> {
    wsgrace_kit::redis::RedisNode::new()
        .program(program)
        .args([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ])
        .try_start()
        .map_err(|e| e.to_string())
}

fn overrides(args: &FanoutArgs, redis_url: Option<&str>) -> Vec<Override> {
    let mut o: Vec<Override> = vec![
        ("server", "max_connections", super::max_connections(args.n)),
        (
            "session",
            "outbound_queue",
            toml::Value::Integer(args.outbound_queue),
        ),
    ];
    if let Some(url) = redis_url {
        o.push(("broker", "kind", toml::Value::String("redis".into())));
        o.push(("broker", "redis_url", toml::Value::String(url.into())));
    }
    o
}

async fn cross_node(
    ctx: &Ctx,
    args: &FanoutArgs,
    redis_bin: &str,
    wait_replicas: Option<i64>,
) -> Result<(bool, Value), String> {
    let mut redis = scenario_redis::start(redis_bin)?;
    let replica = match wait_replicas {
        Some(_) => Some(start_replica(redis_bin, &redis)?),
        None => None,
    };
    if replica.is_some() {
        // The master's first sync to a new replica waits `repl-diskless-sync-delay` (5 s):
        // the load starts once the replica is online, as in production, where a replica
        // is there long before.
        let online = async {
            loop {
                let info = redis.info("replication").await.unwrap_or_default();
                if info.contains("state=online") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), online)
            .await
            .map_err(|_| "the replica did not come online within 30 s".to_owned())?;
    }
    let url = redis.url();
    let mut o = overrides(args, Some(&url));
    if let Some(n) = wait_replicas {
        o.push(("broker", "wait_replicas", toml::Value::Integer(n)));
    }
    let mut a = launch::start_ready(&ctx.server, &o).await?;
    let mut b = launch::start_ready(&ctx.server, &o).await?;
    eprintln!(
        "cluster-fanout: redis pid {} on {}, node A pid {} on {}, node B pid {} on {}",
        redis.pid().unwrap_or_default(),
        redis.addr(),
        a.pid(),
        a.addr,
        b.pid(),
        b.addr
    );
    let load = Load::join(ctx, &[a.addr, b.addr], args, "fanout", 2).await;
    let pids = [a.pid(), b.pid()];
    let stats_before = command_stats(&redis).await.unwrap_or_default();
    let (cpu_before, redis_before) = (cpu_sum(&pids), scenario_redis::cpu_time(&redis));
    let result = load.send(ctx, args).await;
    let (cpu_after, redis_after) = (cpu_sum(&pids), scenario_redis::cpu_time(&redis));
    let stats_after = command_stats(&redis).await.unwrap_or_default();
    let per_node = [("a", a.cpu_time(), a.rss()), ("b", b.cpu_time(), b.rss())];
    let server_cpu = cpu_delta(cpu_before, cpu_after);
    let redis_cpu = cpu_delta(redis_before, redis_after);
    let mut report = load.report(args, &result, server_cpu);
    let stop_a = stop_json(&mut a, Duration::from_secs(15)).await;
    let stop_b = stop_json(&mut b, Duration::from_secs(15)).await;
    redis.kill();
    drop(replica);
    let per_message = |d: Duration| {
        if result.sent == 0 {
            0.0
        } else {
            (d.as_nanos() as f64 / result.sent as f64).round()
        }
    };
    if let Some(obj) = report.as_object_mut() {
        obj.insert("broker".into(), json!("redis, 2 nodes"));
        if let Some(n) = wait_replicas {
            obj.insert("wait_replicas".into(), json!(n));
            obj.insert("redis_replicas".into(), json!(1));
        }
        obj.insert("redis_cpu_ms".into(), json!(ms(redis_cpu)));
        obj.insert(
            "redis_cpu_ns_per_message".into(),
            json!(per_message(redis_cpu)),
        );
        obj.insert(
            "server_cpu_ns_per_message".into(),
            json!(per_message(server_cpu)),
        );
        obj.insert(
            "redis_commands".into(),
            commands_json(&stats_before, &stats_after, result.sent),
        );
        obj.insert(
            "nodes".into(),
            json!(per_node
                .iter()
                .map(|(name, cpu, rss)| json!({
                    "node": name,
                    "cpu_total_ms": cpu.map(ms),
                    "rss_bytes": rss,
                }))
                .collect::<Vec<_>>()),
        );
        obj.insert("server".into(), json!({ "a": stop_a, "b": stop_b }));
    }
    Ok((result.ok, report))
}

async fn single_node(ctx: &Ctx, args: &FanoutArgs) -> Result<(bool, Value), String> {
    let o = overrides(args, None);
    let mut server = launch::start(&ctx.server, &o)?;
    eprintln!(
        "cluster-fanout: single node pid {} on {}",
        server.pid(),
        server.addr
    );
    let load = Load::join(ctx, &[server.addr], args, "fanout", 2).await;
    let cpu_before = server.cpu_time();
    let result = load.send(ctx, args).await;
    let server_cpu = cpu_delta(cpu_before, server.cpu_time());
    let mut report = load.report(args, &result, server_cpu);
    let stop = stop_json(&mut server, Duration::from_secs(15)).await;
    if let Some(obj) = report.as_object_mut() {
        obj.insert("broker".into(), json!("local, 1 node"));
        obj.insert("server".into(), stop);
    }
    Ok((result.ok, report))
}

fn ratio(a: &Value, b: &Value, pointer: &str) -> Value {
    match (
        a.pointer(pointer).and_then(Value::as_f64),
        b.pointer(pointer).and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if b != 0.0 => json!((a / b * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

pub async fn run(ctx: &Ctx, args: &ClusterFanoutArgs) -> Result<Outcome, String> {
    if args.load.n < 2 {
        return Err("cluster-fanout needs at least two members (a sender on each node)".into());
    }
    ctx.check_nofile(args.load.n);
    if args.redis_cluster_compare {
        let (a_ok, a) = rooms_cross_node(ctx, args, false).await?;
        let (b_ok, b) = rooms_cross_node(ctx, args, true).await?;
        let report = json!({
            "scenario": "cluster-fanout",
            "n": args.load.n,
            "m": args.load.m,
            "rooms": args.rooms,
            "complete": a_ok && b_ok,
            "cluster_over_one_redis": {
                "messages_per_s": ratio(&b, &a, "/messages_per_s"),
                "deliveries_per_s": ratio(&b, &a, "/deliveries_per_s"),
                "latency_p50_ms": ratio(&b, &a, "/latency/p50_ms"),
                "latency_p99_ms": ratio(&b, &a, "/latency/p99_ms"),
                "server_cpu_ns_per_message": ratio(&b, &a, "/server_cpu_ns_per_message"),
                "redis_cpu_ns_per_message": ratio(&b, &a, "/redis_cpu_ns_per_message"),
            },
            "one_redis": a,
            "redis_cluster": b,
        });
        return Ok(Outcome {
            report,
            ok: a_ok && b_ok,
        });
    }
    if args.wait_replicas_compare {
        let (a_ok, a) = cross_node(ctx, &args.load, &args.redis_server, Some(0)).await?;
        let (b_ok, b) = cross_node(ctx, &args.load, &args.redis_server, Some(1)).await?;
        let report = json!({
            "scenario": "cluster-fanout",
            "n": args.load.n,
            "m": args.load.m,
            "complete": a_ok && b_ok,
            "wait_1_over_wait_0": {
                "deliveries_per_s": ratio(&b, &a, "/deliveries_per_s"),
                "latency_p50_ms": ratio(&b, &a, "/latency/p50_ms"),
                "latency_p99_ms": ratio(&b, &a, "/latency/p99_ms"),
                "server_cpu_ns_per_delivery": ratio(&b, &a, "/server_cpu_ns_per_delivery"),
                "redis_cpu_ns_per_message": ratio(&b, &a, "/redis_cpu_ns_per_message"),
            },
            "wait_replicas_0": a,
            "wait_replicas_1": b,
        });
        return Ok(Outcome {
            report,
            ok: a_ok && b_ok,
        });
    }
    let (cross_ok, cross) = cross_node(ctx, &args.load, &args.redis_server, None).await?;
    let (single_ok, single) = if args.no_single {
        (true, Value::Null)
    } else {
        single_node(ctx, &args.load).await?
    };
    let report = json!({
        "scenario": "cluster-fanout",
        "n": args.load.n,
        "m": args.load.m,
        "complete": cross_ok && single_ok,
        "cross_over_single": {
            "deliveries_per_s": ratio(&cross, &single, "/deliveries_per_s"),
            "server_cpu_ns_per_delivery": ratio(&cross, &single, "/server_cpu_ns_per_delivery"),
            "latency_p99_ms": ratio(&cross, &single, "/latency/p99_ms"),
        },
        "cross_node": cross,
        "single_node": single,
    });
    Ok(Outcome {
        report,
        ok: cross_ok && single_ok,
    })
}
