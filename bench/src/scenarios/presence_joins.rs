//! `presence-joins N RATE`: what a join costs with presence (issue 22). Starts its own
//! `redis-server` and two nodes on it (as `cluster-fanout` does), fills room "presence" with
//! N v1 members (the cheapest connection: ready at the welcome) alternating between the
//! nodes, opens `--joiners` idle `wsgrace.v2` connections (half on each node; their upgrade
//! is not measured), waits for the fill's presence frames to settle, measures an idle window
//! (`--idle-secs`: the nodes' and Redis's background CPU), then the churn window: RATE joins
//! per second of the room for `--secs`, alternating between the nodes, each joiner leaving
//! again (v2 `leave`) `--hold-ms` after its `joined`, so the room stays ~N. Reports over the
//! churn window only: node CPU (both nodes) and Redis CPU per join (raw, and net of the idle
//! rate), Redis commands per join, joins answered, join latency (join sent → `joined`), and
//! the `presence_join` / `presence_leave` frames the members received. `--matrix` runs N and
//! `--small` members, each with presence on and off, in one invocation, and prints the ratios
//! on/off and N/small side by side. `--broker local` runs the same on one node with the local
//! broker and no Redis (every member and join on that node; the Redis columns are null).
//!
//! It owns its scenario's load and report only: the connection handling is `mod.rs`'s
//! (`connect_many`, `frame_type`), Redis's numbers are `scenario_redis.rs`'s; it must not
//! change what the other scenarios measure.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{
    connect_many, cpu_sum, frame_type, hist_json, micros, ms, new_histogram, stop_json,
    ConnectStats, Ctx, Membership, Outcome,
};
use crate::client::{Frame, Read, WsReader, WsWriter};
use crate::launch::{self, Override};
use crate::scenario_redis::{self, command_stats, commands_json, CommandStats};
use wsgrace_kit::redis::RedisServer;

const ROOM: &str = "presence";

/// `on` / `off` for a config switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn on(self) -> bool {
        self == Switch::On
    }

    pub fn name(self) -> &'static str {
        if self.on() {
            "on"
        } else {
            "off"
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PresenceJoinsArgs {
    /// Members of the room, alternating between the two nodes.
    #[arg(default_value_t = 10_000)]
    pub members: usize,
    /// Joins per second, steady, alternating between the nodes.
    #[arg(default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of joins (the measured churn window).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// presence.enabled for the nodes.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub presence: Switch,
    /// presence.events for the nodes (off: no presence_join / presence_leave frames at all,
    /// for a like-for-like comparison of a small room with a big one).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub events: Switch,
    /// Run MEMBERS and `--small` members, each with presence on and off (four runs, each
    /// with its own Redis and nodes), and print the ratios; `--presence` is then ignored.
    #[arg(long)]
    pub matrix: bool,
    /// The small room of `--matrix`.
    #[arg(long, default_value_t = 100)]
    pub small: usize,
    /// Pre-opened wsgrace.v2 connections that do the joins, half on each node (a joiner is
    /// reused once its `left` arrived; a tick with no free joiner on its node is skipped).
    #[arg(long, default_value_t = 400)]
    pub joiners: usize,
    /// How long a joiner stays in the room after its `joined` before it sends `leave`.
    #[arg(long, default_value_t = 10)]
    pub hold_ms: u64,
    /// Seconds of the idle window before the churn (background CPU; 0 = none). With Redis
    /// presence a node renews its lease in each room every min(ttl/3, max(grace, 500 ms)),
    /// 5 s by default: the window holds one renewal, so "net of idle" takes it out.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    /// Connections opened at a time while filling the room.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// `redis`: two nodes on a Redis of the scenario's own; `local`: one node, local broker.
    #[arg(long, value_enum, default_value_t = BrokerKind::Redis)]
    pub broker: BrokerKind,
}

/// Where presence lives in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// Two nodes on one Redis.
    Redis,
    /// One node, the local broker.
    Local,
}

/// One pre-opened v2 connection that joins and leaves the room.
struct Joiner {
    node: usize,
    wr: Rc<Mutex<WsWriter>>,
    join_sent: Cell<Option<Instant>>,
    joined_at: Cell<Option<Instant>>,
    leave_sent: Cell<Option<Instant>>,
}

/// What the members and joiners of one run add up.
#[derive(Default)]
struct Tally {
    member_joins_seen: Cell<u64>,
    member_leaves_seen: Cell<u64>,
    members_ended: Cell<u64>,
    joiner_presence_frames: Cell<u64>,
    joiners_ended: Cell<u64>,
    joins_answered: Cell<u64>,
    leaves_answered: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    join_latency: RefCell<Option<Histogram<u64>>>,
    leave_latency: RefCell<Option<Histogram<u64>>>,
    /// Joiner time in the room (joined → left), summed.
    in_room: Cell<Duration>,
    /// Free joiners per node (the first one only, with one node).
    free: [RefCell<VecDeque<usize>>; 2],
}

impl Tally {
    fn error(&self, e: String) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            eprintln!("presence-joins: {e}");
            *first = Some(e);
        }
    }

    fn member_frames(&self) -> (u64, u64) {
        (self.member_joins_seen.get(), self.member_leaves_seen.get())
    }

    fn record(cell: &RefCell<Option<Histogram<u64>>>, d: Duration) {
        if let Some(h) = cell.borrow_mut().as_mut() {
            let _ = h.record(micros(d));
        }
    }
}

/// A member: answers pings and the close, counts the presence frames it gets.
async fn member(mut rd: WsReader, mut wr: WsWriter, tally: Rc<Tally>) {
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => match frame_type(payload) {
                Some(b"presence_join") => tally
                    .member_joins_seen
                    .set(tally.member_joins_seen.get() + 1),
                Some(b"presence_leave") => tally
                    .member_leaves_seen
                    .set(tally.member_leaves_seen.get() + 1),
                _ => {}
            },
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                let _ = wr.close(code, b"").await;
            }
            Read::End(_) => {
                tally.members_ended.set(tally.members_ended.get() + 1);
                return;
            }
        }
    }
}

/// A joiner's reader: `joined` → latency, then `leave` after the hold; `left` → free again.
async fn joiner(k: usize, mut rd: WsReader, j: Rc<Joiner>, tally: Rc<Tally>, hold: Duration) {
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => match frame_type(payload) {
                Some(b"joined") => {
                    let now = Instant::now();
                    if let Some(sent) = j.join_sent.take() {
                        Tally::record(&tally.join_latency, now.saturating_duration_since(sent));
                    }
                    j.joined_at.set(Some(now));
                    tally.joins_answered.set(tally.joins_answered.get() + 1);
                    let (j, tally) = (j.clone(), tally.clone());
                    tokio::task::spawn_local(async move {
                        if !hold.is_zero() {
                            tokio::time::sleep(hold).await;
                        }
                        let leave = format!(r#"{{"type":"leave","room":"{ROOM}"}}"#);
                        j.leave_sent.set(Some(Instant::now()));
                        if let Err(e) = j.wr.lock().await.text(leave.as_bytes()).await {
                            tally.error(format!("joiner {k}: leave: {e}"));
                        }
                    });
                }
                Some(b"left") => {
                    let now = Instant::now();
                    if let Some(sent) = j.leave_sent.take() {
                        Tally::record(&tally.leave_latency, now.saturating_duration_since(sent));
                    }
                    if let Some(at) = j.joined_at.take() {
                        tally
                            .in_room
                            .set(tally.in_room.get() + now.saturating_duration_since(at));
                    }
                    tally.leaves_answered.set(tally.leaves_answered.get() + 1);
                    tally.free[j.node].borrow_mut().push_back(k);
                }
                Some(b"error") => {
                    tally.error(format!("joiner {k}: {}", String::from_utf8_lossy(payload)));
                    // Whatever was refused, the joiner is out of the room: use it again.
                    j.join_sent.set(None);
                    j.joined_at.set(None);
                    tally.free[j.node].borrow_mut().push_back(k);
                }
                Some(b"presence_join" | b"presence_leave") => tally
                    .joiner_presence_frames
                    .set(tally.joiner_presence_frames.get() + 1),
                _ => {}
            },
            Read::Frame(Frame::Ping(p)) => {
                let _ = j.wr.lock().await.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                let _ = j.wr.lock().await.close(code, b"").await;
            }
            Read::End(_) => {
                tally.joiners_ended.set(tally.joiners_ended.get() + 1);
                return;
            }
        }
    }
}

/// The CPU of both nodes and of Redis, Redis's counters and the members' presence frames
/// at one moment.
struct Snapshot {
    at: Instant,
    nodes: Option<Duration>,
    redis: Option<Duration>,
    commands: CommandStats,
    member_frames: (u64, u64),
}

async fn snapshot(pids: &[u32], redis: Option<&RedisServer>, tally: &Tally) -> Snapshot {
    let commands = match redis {
        Some(redis) => command_stats(redis).await.unwrap_or_default(),
        None => CommandStats::default(),
    };
    Snapshot {
        at: Instant::now(),
        nodes: cpu_sum(pids),
        redis: redis.and_then(scenario_redis::cpu_time),
        commands,
        member_frames: tally.member_frames(),
    }
}

fn delta(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some(b?.saturating_sub(a?))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// µs per join of a CPU time; null without joins or a reading.
fn us_per(cpu: Option<f64>, joins: u64) -> Value {
    match cpu {
        Some(ms) if joins > 0 => json!(round2(ms * 1000.0 / joins as f64)),
        _ => Value::Null,
    }
}

/// Waits until the members' presence frames stop arriving (no new one for 300 ms), at most
/// `limit`.
async fn settle(tally: &Tally, limit: Instant) {
    let mut last = tally.member_frames();
    let mut quiet_since = Instant::now();
    while Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tally.member_frames();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

/// Opens `count` connections alternating over `addrs` (connection i on `addrs[i % nodes]`),
/// each handed to `on_connected` with its global index.
async fn open(
    addrs: &[SocketAddr],
    count: usize,
    concurrency: usize,
    name: &'static str,
    membership: Membership,
    on_connected: Rc<dyn Fn(usize, WsReader, WsWriter)>,
    stats: Rc<ConnectStats>,
) {
    let nodes = addrs.len().max(1);
    for (node, addr) in addrs.iter().enumerate() {
        let here = (count + nodes - 1 - node) / nodes;
        let global = move |i: usize| node + nodes * i;
        let path: Rc<dyn Fn(usize) -> String> = match membership {
            Membership::V1 => Rc::new(move |i| format!("/ws?room={ROOM}&name={name}{}", global(i))),
            Membership::V2(_) => Rc::new(move |i| format!("/ws?name={name}{}", global(i))),
        };
        let on_connected = on_connected.clone();
        let on_connected: Rc<dyn Fn(usize, WsReader, WsWriter)> =
            Rc::new(move |i, rd, wr| on_connected(global(i), rd, wr));
        connect_many(
            *addr,
            here,
            concurrency,
            Rc::new(Vec::new()),
            path,
            membership.clone(),
            on_connected,
            stats.clone(),
        )
        .await;
    }
}

/// One run: its own Redis and two nodes (or one node on the local broker), N members, the
/// joiners, the idle window, the churn.
async fn run_one(
    ctx: &Ctx,
    args: &PresenceJoinsArgs,
    members: usize,
    presence: Switch,
) -> Result<(bool, Value), String> {
    let mut redis = match args.broker {
        BrokerKind::Redis => Some(scenario_redis::start(&args.redis_server)?),
        BrokerKind::Local => None,
    };
    let mut o: Vec<Override> = vec![
        (
            "server",
            "max_connections",
            super::max_connections(members + args.joiners),
        ),
        ("presence", "enabled", toml::Value::Boolean(presence.on())),
        ("presence", "events", toml::Value::Boolean(args.events.on())),
    ];
    if let Some(redis) = &redis {
        o.push(("broker", "kind", toml::Value::String("redis".into())));
        o.push(("broker", "redis_url", toml::Value::String(redis.url())));
    }
    let mut nodes = vec![launch::start_ready(&ctx.server, &o).await?];
    if redis.is_some() {
        nodes.push(launch::start_ready(&ctx.server, &o).await?);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid()).collect();
    eprintln!(
        "presence-joins: N={members} presence {} events {}: redis {:?}, nodes {addrs:?} (pids {pids:?})",
        presence.name(),
        args.events.name(),
        redis.as_ref().map(|r| r.addr()),
    );
    let node_count = nodes.len();
    let tally = Rc::new(Tally {
        join_latency: RefCell::new(Some(new_histogram())),
        leave_latency: RefCell::new(Some(new_histogram())),
        ..Tally::default()
    });

    // The room's members (v1).
    let fill_started = Instant::now();
    let member_stats = Rc::new(ConnectStats::default());
    let on_member: Rc<dyn Fn(usize, WsReader, WsWriter)> = {
        let tally = tally.clone();
        Rc::new(move |_, rd, wr| {
            tokio::task::spawn_local(member(rd, wr, tally.clone()));
        })
    };
    let filling = open(
        &addrs,
        members,
        args.concurrency,
        "m",
        Membership::V1,
        on_member,
        member_stats.clone(),
    );
    let filled = tokio::time::timeout_at(ctx.deadline, filling).await.is_ok();
    let fill_ms = ms(fill_started.elapsed());
    eprintln!(
        "presence-joins: {} of {members} members in {fill_ms} ms",
        member_stats.connected.get()
    );

    // The joiners (v2, in no room yet).
    let joiner_stats = Rc::new(ConnectStats::default());
    let joiners: Rc<RefCell<Vec<Option<Rc<Joiner>>>>> =
        Rc::new(RefCell::new(vec![None; args.joiners]));
    let on_joiner: Rc<dyn Fn(usize, WsReader, WsWriter)> = {
        let (tally, joiners) = (tally.clone(), joiners.clone());
        let hold = Duration::from_millis(args.hold_ms);
        Rc::new(move |k, rd, wr| {
            let j = Rc::new(Joiner {
                node: k % node_count,
                wr: Rc::new(Mutex::new(wr)),
                join_sent: Cell::new(None),
                joined_at: Cell::new(None),
                leave_sent: Cell::new(None),
            });
            joiners.borrow_mut()[k] = Some(j.clone());
            tally.free[k % node_count].borrow_mut().push_back(k);
            tokio::task::spawn_local(joiner(k, rd, j, tally.clone(), hold));
        })
    };
    let opening = open(
        &addrs,
        args.joiners,
        args.concurrency,
        "j",
        Membership::V2(Rc::new(|_| Vec::new())),
        on_joiner,
        joiner_stats.clone(),
    );
    let opened = filled && tokio::time::timeout_at(ctx.deadline, opening).await.is_ok();
    let joiners: Vec<Option<Rc<Joiner>>> = joiners.borrow().clone();

    settle(
        &tally,
        (Instant::now() + Duration::from_secs(10)).min(ctx.deadline),
    )
    .await;
    let fill_frames = tally.member_frames();

    // The idle window, then the churn.
    let idle0 = snapshot(&pids, redis.as_ref(), &tally).await;
    let idle_end =
        (Instant::now() + Duration::from_secs_f64(args.idle_secs.max(0.0))).min(ctx.deadline);
    tokio::time::sleep_until(idle_end).await;
    let before = snapshot(&pids, redis.as_ref(), &tally).await;
    let total = (args.rate * args.secs).round().max(0.0) as u64;
    eprintln!(
        "presence-joins: {} joiners open; {total} joins at {}/s",
        joiner_stats.connected.get(),
        args.rate
    );
    let (mut sent, mut skipped, mut timed_out) = (0u64, 0u64, !opened);
    let start = Instant::now();
    for i in 0..total {
        if timed_out {
            break;
        }
        let at = start + Duration::from_secs_f64(i as f64 / args.rate);
        if at >= ctx.deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep_until(at).await;
        let node = (i % node_count as u64) as usize;
        let Some(k) = tally.free[node].borrow_mut().pop_front() else {
            skipped += 1;
            continue;
        };
        let Some(j) = joiners.get(k).and_then(Option::as_ref) else {
            continue;
        };
        let frame = format!(r#"{{"type":"join","room":"{ROOM}","ref":"{i}"}}"#);
        j.join_sent.set(Some(Instant::now()));
        if let Err(e) = j.wr.lock().await.text(frame.as_bytes()).await {
            tally.error(format!("joiner {k}: join: {e}"));
            continue;
        }
        sent += 1;
    }
    let send_secs = start.elapsed().as_secs_f64();
    // The last joins' leaves are part of the churn: wait for them (bounded).
    let limit = (Instant::now() + Duration::from_secs(5)).min(ctx.deadline);
    while tally.leaves_answered.get() + tally.errors.get() < sent && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = snapshot(&pids, redis.as_ref(), &tally).await;
    let members_ended = tally.members_ended.get();
    let churn_secs = after.at.saturating_duration_since(before.at).as_secs_f64();
    let idle_secs = before.at.saturating_duration_since(idle0.at).as_secs_f64();

    let mut stops = Vec::new();
    for node in &mut nodes {
        stops.push(stop_json(node, Duration::from_secs(10)).await);
    }
    if let Some(redis) = &mut redis {
        redis.kill();
    }

    let joins = tally.joins_answered.get();
    let as_ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let node_ms = as_ms(delta(before.nodes, after.nodes));
    let redis_ms = as_ms(delta(before.redis, after.redis));
    let idle_rate = |d: Option<f64>| d.filter(|_| idle_secs > 0.0).map(|d| d / idle_secs);
    let node_idle = idle_rate(as_ms(delta(idle0.nodes, before.nodes)));
    let redis_idle = idle_rate(as_ms(delta(idle0.redis, before.redis)));
    let net = |cpu: Option<f64>, idle: Option<f64>| Some(cpu? - idle? * churn_secs);
    let frames = (
        after.member_frames.0 - before.member_frames.0,
        after.member_frames.1 - before.member_frames.1,
    );
    let ok = !timed_out
        && member_stats.connected.get() == members
        && joiner_stats.connected.get() == args.joiners
        && sent == total
        && joins == sent
        && tally.leaves_answered.get() == sent
        && tally.errors.get() == 0
        && members_ended == 0;
    let report = json!({
        "members": members,
        "presence": presence.name(),
        "events": args.events.name(),
        "rate": args.rate,
        "secs": args.secs,
        "joiners": args.joiners,
        "hold_ms": args.hold_ms,
        "complete": ok,
        "timed_out": timed_out,
        "connect": { "members": member_stats.json(), "joiners": joiner_stats.json() },
        "fill_ms": fill_ms,
        "member_presence_frames_during_fill": { "join": fill_frames.0, "leave": fill_frames.1 },
        "joins_sent": sent,
        "joins_skipped_no_free_joiner": skipped,
        "joins_answered": joins,
        "leaves_answered": tally.leaves_answered.get(),
        "errors": tally.errors.get(),
        "first_error": *tally.first_error.borrow(),
        "send_secs": round2(send_secs),
        "churn_secs": round2(churn_secs),
        "joins_answered_per_s": if churn_secs > 0.0 { json!((joins as f64 / churn_secs).round()) } else { Value::Null },
        "joiners_in_room_mean": if churn_secs > 0.0 { json!(round2(tally.in_room.get().as_secs_f64() / churn_secs)) } else { Value::Null },
        "join_latency": tally.join_latency.borrow().as_ref().map(hist_json),
        "leave_latency": tally.leave_latency.borrow().as_ref().map(hist_json),
        "node_cpu_ms": node_ms.map(round2),
        "node_cpu_us_per_join": us_per(node_ms, joins),
        "node_cpu_us_per_join_net_of_idle": us_per(net(node_ms, node_idle), joins),
        "redis_cpu_ms": redis_ms.map(round2),
        "redis_cpu_us_per_join": us_per(redis_ms, joins),
        "redis_cpu_us_per_join_net_of_idle": us_per(net(redis_ms, redis_idle), joins),
        "idle": {
            "secs": round2(idle_secs),
            "node_cpu_ms_per_s": node_idle.map(round2),
            "redis_cpu_ms_per_s": redis_idle.map(round2),
        },
        "redis_commands": if redis.is_some() {
            commands_json(&before.commands, &after.commands, joins)
        } else {
            Value::Null
        },
        "member_presence_frames": {
            "join": frames.0,
            "leave": frames.1,
            "per_join": if joins == 0 { Value::Null } else { json!(round2((frames.0 + frames.1) as f64 / joins as f64)) },
        },
        "joiner_presence_frames": tally.joiner_presence_frames.get(),
        "members_ended_before_the_end": members_ended,
        "broker": if node_count == 1 { "local, 1 node" } else { "redis, 2 nodes" },
        "nodes": stops,
    });
    Ok((ok, report))
}

/// `a / b` of two reports' numbers at `key`; null when either is missing or `b` is 0.
fn ratio(a: &Value, b: &Value, key: &str) -> Value {
    match (a[key].as_f64(), b[key].as_f64()) {
        (Some(a), Some(b)) if b != 0.0 => json!((a / b * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// The ratios of the per-join CPU numbers of two runs.
fn ratios(a: &Value, b: &Value) -> Value {
    let keys = [
        "redis_cpu_us_per_join",
        "node_cpu_us_per_join",
        "redis_cpu_us_per_join_net_of_idle",
        "node_cpu_us_per_join_net_of_idle",
    ];
    let mut out = serde_json::Map::new();
    for key in keys {
        out.insert(key.into(), ratio(a, b, key));
    }
    let commands = |v: &Value| v["redis_commands"]["per_message"].as_f64();
    out.insert(
        "redis_commands_per_join".into(),
        match (commands(a), commands(b)) {
            (Some(x), Some(y)) if y != 0.0 => json!((x / y * 1000.0).round() / 1000.0),
            _ => Value::Null,
        },
    );
    Value::Object(out)
}

/// The key numbers of one run, for the matrix's summary.
fn summary(r: &Value) -> Value {
    json!({
        "members": r["members"],
        "presence": r["presence"],
        "joins_answered": r["joins_answered"],
        "node_cpu_us_per_join": r["node_cpu_us_per_join"],
        "redis_cpu_us_per_join": r["redis_cpu_us_per_join"],
        "node_cpu_us_per_join_net_of_idle": r["node_cpu_us_per_join_net_of_idle"],
        "redis_cpu_us_per_join_net_of_idle": r["redis_cpu_us_per_join_net_of_idle"],
        "redis_commands_per_join": r["redis_commands"]["per_message"],
        "join_latency_p50_ms": r["join_latency"]["p50_ms"],
        "join_latency_p99_ms": r["join_latency"]["p99_ms"],
        "member_presence_frames_per_join": r["member_presence_frames"]["per_join"],
    })
}

pub async fn run(ctx: &Ctx, args: &PresenceJoinsArgs) -> Result<Outcome, String> {
    if args.joiners < 2 || args.rate <= 0.0 {
        return Err("presence-joins needs at least two joiners and a rate above 0".into());
    }
    let biggest = if args.matrix {
        args.members.max(args.small)
    } else {
        args.members
    };
    // Per node: half the members and joiners; here: all of them.
    ctx.check_nofile((biggest + args.joiners).div_ceil(2));
    if (biggest + args.joiners + 64) as u64 > ctx.nofile {
        eprintln!(
            "warning: {} connections do not fit loadgen's RLIMIT_NOFILE {}",
            biggest + args.joiners,
            ctx.nofile
        );
    }
    if !args.matrix {
        let (ok, mut report) = run_one(ctx, args, args.members, args.presence).await?;
        if let Some(obj) = report.as_object_mut() {
            obj.insert("scenario".into(), json!("presence-joins"));
        }
        return Ok(Outcome { report, ok });
    }
    // Big on, big off, small on, small off: each pair side by side.
    let mut runs = Vec::new();
    let mut all_ok = true;
    for n in [args.members, args.small] {
        for presence in [Switch::On, Switch::Off] {
            match run_one(ctx, args, n, presence).await {
                Ok((ok, report)) => {
                    all_ok &= ok;
                    eprintln!("presence-joins: {}", summary(&report));
                    runs.push(report);
                }
                Err(e) => {
                    all_ok = false;
                    eprintln!("presence-joins: N={n} presence {}: {e}", presence.name());
                    runs.push(json!({ "members": n, "presence": presence.name(), "error": e }));
                }
            }
        }
    }
    let (big_on, big_off, small_on, small_off) = (&runs[0], &runs[1], &runs[2], &runs[3]);
    let (big, small) = (format!("n{}", args.members), format!("n{}", args.small));
    let report = json!({
        "scenario": "presence-joins",
        "matrix": true,
        "events": args.events.name(),
        "rate": args.rate,
        "secs": args.secs,
        "complete": all_ok,
        "summary": runs.iter().map(summary).collect::<Vec<_>>(),
        "presence_on_over_off": {
            big.clone(): ratios(big_on, big_off),
            small.clone(): ratios(small_on, small_off),
        },
        format!("{big}_over_{small}"): {
            "presence_on": ratios(big_on, small_on),
            "presence_off": ratios(big_off, small_off),
        },
        "runs": runs,
    });
    Ok(Outcome { report, ok: all_ok })
}
