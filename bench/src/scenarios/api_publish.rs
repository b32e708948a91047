//! `api-publish N M`: the app's backend publishing through the server API. N members in
//! room "fanout"; M messages posted to `POST /api/publish` over `--connections` keep-alive
//! HTTP connections (each posts its next message once the last was answered). Run twice in
//! one invocation, side by side: one node with the local broker, then two nodes on a Redis it
//! starts (members alternate between the nodes, the HTTP connections too). Reports API
//! publishes per second, the API's answer latency, the members' delivery latency (post →
//! delivery) and losses, the servers' and Redis's CPU per publish, and the ratio two nodes /
//! one node.

use std::time::Duration;

use serde_json::{json, Value};

use super::fanout::{FanoutArgs, Load};
use super::{cpu_delta, cpu_sum, hist_json, ms, stop_json, Ctx, Outcome};
use crate::launch::{self, Override};
use crate::scenario_redis;

/// The key the scenario's nodes take.
const KEY: &str = "bench-api-key-0123456789abcdef";

#[derive(Debug, clap::Args)]
pub struct ApiPublishArgs {
    #[command(flatten)]
    pub load: FanoutArgs,
    /// Keep-alive HTTP connections posting at once.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

fn overrides(args: &FanoutArgs, redis_url: Option<&str>) -> Vec<Override> {
    let mut o: Vec<Override> = vec![
        ("server", "max_connections", super::max_connections(args.n)),
        (
            "session",
            "outbound_queue",
            toml::Value::Integer(args.outbound_queue),
        ),
        ("api", "bind", toml::Value::String("127.0.0.1:0".into())),
        ("api", "key", toml::Value::String(KEY.into())),
    ];
    if let Some(url) = redis_url {
        o.push(("broker", "kind", toml::Value::String("redis".into())));
        o.push(("broker", "redis_url", toml::Value::String(url.into())));
    }
    o
}

/// One side: `nodes` nodes (1: local broker; 2: Redis).
async fn side(ctx: &Ctx, args: &ApiPublishArgs, nodes: usize) -> Result<(bool, Value), String> {
    let mut redis = match nodes {
        1 => None,
        _ => Some(scenario_redis::start(&args.redis_server)?),
    };
    let url = redis.as_ref().map(|r| r.url());
    let o = overrides(&args.load, url.as_deref());
    let mut servers = Vec::new();
    for _ in 0..nodes {
        servers.push(launch::start_ready(&ctx.server, &o).await?);
    }
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let apis: Vec<_> = servers
        .iter()
        .map(|s| (s.api_addr(), KEY.to_owned()))
        .collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    let load = Load::join(ctx, &addrs, &args.load, "fanout", 0).await;
    let cpu_before = cpu_sum(&pids);
    let redis_before = redis.as_ref().and_then(scenario_redis::cpu_time);
    let (result, answers) = load
        .send_via_api(ctx, &args.load, &apis, args.connections)
        .await;
    let server_cpu = cpu_delta(cpu_before, cpu_sum(&pids));
    let redis_cpu = redis
        .as_ref()
        .map(|r| cpu_delta(redis_before, scenario_redis::cpu_time(r)));
    let mut report = load.report(&args.load, &result, server_cpu);
    let mut stops = Vec::new();
    for server in &mut servers {
        stops.push(stop_json(server, Duration::from_secs(15)).await);
    }
    if let Some(redis) = redis.as_mut() {
        redis.kill();
    }
    let per_publish = |d: Duration| {
        if result.sent == 0 {
            0.0
        } else {
            (d.as_nanos() as f64 / result.sent as f64).round()
        }
    };
    // Answered publishes per second over the posting (the report's `sends_per_s`).
    let publishes_per_s = report["sends_per_s"].clone();
    if let Some(obj) = report.as_object_mut() {
        obj.insert(
            "broker".into(),
            json!(if nodes == 1 {
                "local, 1 node"
            } else {
                "redis, 2 nodes"
            }),
        );
        obj.insert("connections".into(), json!(args.connections));
        obj.insert("api_publishes_per_s".into(), json!(publishes_per_s));
        obj.insert("api_answer_latency".into(), hist_json(&answers));
        obj.insert(
            "server_cpu_ns_per_publish".into(),
            json!(per_publish(server_cpu)),
        );
        if let Some(cpu) = redis_cpu {
            obj.insert("redis_cpu_ms".into(), json!(ms(cpu)));
            obj.insert("redis_cpu_ns_per_publish".into(), json!(per_publish(cpu)));
        }
        obj.insert("servers".into(), json!(stops));
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

pub async fn run(ctx: &Ctx, args: &ApiPublishArgs) -> Result<Outcome, String> {
    ctx.check_nofile(args.load.n);
    let (single_ok, single) = side(ctx, args, 1).await?;
    let (cluster_ok, cluster) = side(ctx, args, 2).await?;
    let report = json!({
        "scenario": "api-publish",
        "n": args.load.n,
        "m": args.load.m,
        "connections": args.connections,
        "complete": single_ok && cluster_ok,
        "two_nodes_over_one": {
            "api_publishes_per_s": ratio(&cluster, &single, "/api_publishes_per_s"),
            "delivery_latency_p99_ms": ratio(&cluster, &single, "/latency/p99_ms"),
            "server_cpu_ns_per_publish": ratio(&cluster, &single, "/server_cpu_ns_per_publish"),
        },
        "one_node": single,
        "two_nodes": cluster,
    });
    Ok(Outcome {
        report,
        ok: single_ok && cluster_ok,
    })
}
