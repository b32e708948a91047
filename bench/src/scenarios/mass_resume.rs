//! `mass-resume N K`: N clients of room "resume" join, then all disconnect (close 1000);
//! one more client sends K messages and waits for its own copies; then all N reconnect at
//! once with `since` = the seq of their welcome and `epoch` = its epoch. Measures, from the
//! moment the reconnects start: when each client has its welcome and its last message (the
//! K-th), whether every replay was complete and in order, and the servers' (and Redis's) CPU
//! over the reconnect. Runs on the local broker (one node) and then on Redis (two nodes,
//! clients alternating, its own `redis-server`; `--redis-nodes 1` for one), unless told to
//! run only one.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::fanout::parse_message;
use super::{
    connect_many, cpu_delta, cpu_sum, hist_json, micros, ms, new_histogram, stop_json,
    welcome_json, ConnectStats, Ctx, Membership, Outcome,
};
use crate::client::{self, Frame, Read, WsReader, WsWriter};
use crate::launch::{self, Override};
use crate::scenario_redis::{self, command_stats, commands_json};

#[derive(Debug, clap::Args)]
pub struct MassResumeArgs {
    /// Clients that disconnect and resume.
    pub clients: usize,
    /// Messages sent while they are away.
    pub missed: u64,
    /// Which brokers: local, redis or both.
    #[arg(long, default_value = "both")]
    pub broker: String,
    /// Nodes on Redis (1 or 2; clients alternate between them).
    #[arg(long, default_value_t = 2)]
    pub redis_nodes: usize,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// After the reconnects start, wait at most this long for every last message, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// Chat lines for the missed messages (one per line, used in turn after the `t=` stamp),
    /// e.g. `bench/corpus/chat_lines.txt`; without it a message is the stamp alone.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
}

/// How one resuming client did.
#[derive(Default)]
struct Tally {
    done: Cell<usize>,
    failed: Cell<usize>,
    resumed: Cell<usize>,
    not_resumed: Cell<usize>,
    wrong_missed: Cell<usize>,
    out_of_order: Cell<u64>,
    duplicates: Cell<u64>,
    first_error: RefCell<Option<String>>,
    welcome: RefCell<Vec<Duration>>,
    last_message: RefCell<Vec<Duration>>,
}

/// The room's epoch and seq, from a welcome.
fn epoch_seq(welcome: &Value) -> (String, u64) {
    (
        welcome["epoch"].as_str().unwrap_or_default().to_string(),
        welcome["seq"].as_u64().unwrap_or(0),
    )
}

/// One resuming client: connects with since/epoch, reads its welcome and the replay up to
/// seq `last`; keeps the connection until `hold` ends.
async fn resume_one(
    addr: SocketAddr,
    path: String,
    since: u64,
    last: u64,
    missed: u64,
    start: Instant,
    tally: Rc<Tally>,
) -> Option<(WsReader, WsWriter)> {
    let fail = |e: String| {
        tally.failed.set(tally.failed.get() + 1);
        let mut first = tally.first_error.borrow_mut();
        if first.is_none() {
            eprintln!("mass-resume: {e}");
            *first = Some(e);
        }
    };
    let (mut rd, mut wr) = match client::connect(addr, None, &path, since).await {
        Ok(c) => c,
        Err(e) => {
            fail(e.to_string());
            return None;
        }
    };
    let welcome = match welcome_json(&mut rd, &mut wr).await {
        Ok(w) => w,
        Err(e) => {
            fail(e.to_string());
            return None;
        }
    };
    tally.welcome.borrow_mut().push(start.elapsed());
    if welcome["resumed"].as_bool() == Some(true) {
        tally.resumed.set(tally.resumed.get() + 1);
        if welcome["missed"].as_u64() != Some(missed) {
            tally.wrong_missed.set(tally.wrong_missed.get() + 1);
        }
    } else {
        tally.not_resumed.set(tally.not_resumed.get() + 1);
        return Some((rd, wr));
    }
    let mut seen = since;
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                let Some(Some((seq, _))) = parse_message(payload) else {
                    continue;
                };
                if seq <= seen {
                    tally.duplicates.set(tally.duplicates.get() + 1);
                    continue;
                }
                if seq != seen + 1 {
                    tally.out_of_order.set(tally.out_of_order.get() + 1);
                }
                seen = seq;
                if seq >= last {
                    tally.last_message.borrow_mut().push(start.elapsed());
                    tally.done.set(tally.done.get() + 1);
                    return Some((rd, wr));
                }
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(_) => {}
            Read::End(end) => {
                fail(format!("connection ended during the replay: {end:?}"));
                return None;
            }
        }
    }
}

async fn one_broker(
    ctx: &Ctx,
    args: &MassResumeArgs,
    redis: bool,
) -> Result<(bool, Value), String> {
    let mut redis_proc = if redis {
        Some(scenario_redis::start(&args.redis_server)?)
    } else {
        None
    };
    let mut o: Vec<Override> = vec![(
        "server",
        "max_connections",
        super::max_connections(args.clients),
    )];
    if let Some(r) = &redis_proc {
        o.push(("broker", "kind", toml::Value::String("redis".into())));
        o.push(("broker", "redis_url", toml::Value::String(r.url())));
    }
    let mut servers = vec![launch::start_ready(&ctx.server, &o).await?];
    if redis && args.redis_nodes >= 2 {
        servers.push(launch::start_ready(&ctx.server, &o).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.pid()).collect();
    let label = match (redis, servers.len()) {
        (false, _) => "local, 1 node",
        (true, 1) => "redis, 1 node",
        (true, _) => "redis, 2 nodes",
    };
    eprintln!("mass-resume ({label}): servers {addrs:?}");

    // The sender: its welcome gives the room's epoch and seq.
    let (mut srd, mut swr) = client::connect(addrs[0], None, "/ws?room=resume&name=sender", 7)
        .await
        .map_err(|e| format!("sender: {e}"))?;
    let (epoch, since) = epoch_seq(
        &welcome_json(&mut srd, &mut swr)
            .await
            .map_err(|e| e.to_string())?,
    );

    // Join everybody, then disconnect everybody.
    let conns: Rc<RefCell<Vec<(WsReader, WsWriter)>>> = Rc::new(RefCell::new(Vec::new()));
    let stats = Rc::new(ConnectStats::default());
    let n_servers = addrs.len();
    for (k, addr) in addrs.iter().enumerate() {
        let count = (args.clients + n_servers - 1 - k) / n_servers;
        let conns = conns.clone();
        connect_many(
            *addr,
            count,
            64,
            Rc::new(Vec::new()),
            Rc::new(move |i| format!("/ws?room=resume&name=r{}", k + i * n_servers)),
            Membership::V1,
            Rc::new(move |_, rd, wr| conns.borrow_mut().push((rd, wr))),
            stats.clone(),
        )
        .await;
    }
    let joined = stats.connected.get();
    let mut leaving = Vec::new();
    for (mut rd, mut wr) in conns.borrow_mut().drain(..) {
        leaving.push(tokio::task::spawn_local(async move {
            let _ = wr.close(Some(1000), b"bye").await;
            let ended = async { while !matches!(rd.next().await, Read::End(_)) {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
        }));
    }
    for l in leaving {
        let _ = l.await;
    }
    eprintln!(
        "mass-resume ({label}): {joined} joined and left; sending {}",
        args.missed
    );

    // K messages while they are away; the sender's own copies say when all have seqs.
    let mut last = since;
    let corpus: Vec<String> = match &args.corpus {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| format!(" {line}"))
            .collect(),
        None => Vec::new(),
    };
    for i in 0..args.missed {
        let line = match corpus.len() {
            0 => "",
            n => corpus[i as usize % n].as_str(),
        };
        swr.text(format!("t={i}{line}").as_bytes())
            .await
            .map_err(|e| format!("sender: {e}"))?;
    }
    while last < since + args.missed {
        match tokio::time::timeout_at(ctx.deadline, srd.next()).await {
            Ok(Read::Frame(Frame::Message { payload })) => {
                if let Some(Some((seq, _))) = parse_message(payload) {
                    last = seq;
                }
            }
            Ok(Read::Frame(Frame::Ping(p))) => {
                let _ = swr.pong(p).await;
            }
            Ok(Read::Frame(_)) => {}
            Ok(Read::End(_)) | Err(_) => return Err("sender: no receipt for every message".into()),
        }
    }
    // Let the leaves settle so that they are not in the measurement.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stats_before = match &redis_proc {
        Some(r) => command_stats(r).await,
        None => None,
    };
    let redis_cpu_before = redis_proc.as_ref().and_then(scenario_redis::cpu_time);
    let cpu_before = cpu_sum(&pids);
    let tally = Rc::new(Tally::default());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(joined);
    for i in 0..joined {
        let path = format!("/ws?room=resume&name=r{i}&since={since}&epoch={epoch}");
        tasks.push(tokio::task::spawn_local(resume_one(
            addrs[i % n_servers],
            path,
            since,
            last,
            args.missed,
            start,
            tally.clone(),
        )));
    }
    let limit = (start + Duration::from_millis(args.wait_ms)).min(ctx.deadline);
    let mut held = Vec::with_capacity(joined);
    let mut timed_out = false;
    for t in tasks {
        match tokio::time::timeout_at(limit, t).await {
            Ok(Ok(conn)) => held.push(conn),
            _ => timed_out = true,
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_delta(cpu_before, cpu_sum(&pids));
    let redis_cpu = cpu_delta(
        redis_cpu_before,
        redis_proc.as_ref().and_then(scenario_redis::cpu_time),
    );
    let stats_after = match &redis_proc {
        Some(r) => command_stats(r).await,
        None => None,
    };
    let mut welcome_hist = new_histogram();
    for d in tally.welcome.borrow().iter() {
        let _ = welcome_hist.record(micros(*d));
    }
    let mut done_hist = new_histogram();
    for d in tally.last_message.borrow().iter() {
        let _ = done_hist.record(micros(*d));
    }
    let last_done = tally.last_message.borrow().iter().max().copied();
    let replayed = tally.done.get() as u64 * args.missed;
    drop(held);
    let mut stops = Vec::new();
    for s in &mut servers {
        stops.push(stop_json(s, Duration::from_secs(15)).await);
    }
    if let Some(r) = &mut redis_proc {
        r.kill();
    }
    let ok = !timed_out
        && tally.done.get() == args.clients
        && joined == args.clients
        && tally.out_of_order.get() == 0
        && tally.duplicates.get() == 0
        && tally.wrong_missed.get() == 0;
    let report = json!({
        "broker": label,
        "complete": ok,
        "timed_out": timed_out,
        "joined": joined,
        "since": since,
        "last_seq": last,
        "reconnected_with_last_message": tally.done.get(),
        "failed": tally.failed.get(),
        "first_error": *tally.first_error.borrow(),
        "resumed": tally.resumed.get(),
        "not_resumed": tally.not_resumed.get(),
        "wrong_missed_count": tally.wrong_missed.get(),
        "out_of_order": tally.out_of_order.get(),
        "duplicates": tally.duplicates.get(),
        "time_to_all_last_messages_ms": last_done.map(ms),
        "elapsed_ms": ms(elapsed),
        "welcome_after_start": hist_json(&welcome_hist),
        "last_message_after_start": hist_json(&done_hist),
        "server_cpu_ms": ms(cpu),
        "server_cpu_us_per_client": if joined == 0 { 0.0 } else {
            (cpu.as_nanos() as f64 / joined as f64 / 10.0).round() / 100.0
        },
        "server_cpu_ns_per_replayed_message": if replayed == 0 { 0.0 } else {
            (cpu.as_nanos() as f64 / replayed as f64).round()
        },
        "redis_cpu_ms": redis_proc.as_ref().map(|_| ms(redis_cpu)),
        "redis_commands_per_client": match (&stats_before, &stats_after) {
            (Some(b), Some(a)) => commands_json(b, a, joined as u64),
            _ => Value::Null,
        },
        "server": stops,
    });
    Ok((ok, report))
}

pub async fn run(ctx: &Ctx, args: &MassResumeArgs) -> Result<Outcome, String> {
    let which: &[bool] = match args.broker.as_str() {
        "local" => &[false],
        "redis" => &[true],
        "both" => &[false, true],
        other => return Err(format!("--broker: local, redis or both, not {other:?}")),
    };
    ctx.check_nofile(args.clients);
    let mut runs = Vec::new();
    let mut ok = true;
    for redis in which {
        let (run_ok, report) = one_broker(ctx, args, *redis).await?;
        ok &= run_ok;
        runs.push(report);
    }
    Ok(Outcome {
        report: json!({
            "scenario": "mass-resume",
            "clients": args.clients,
            "missed": args.missed,
            "complete": ok,
            "runs": runs,
        }),
        ok,
    })
}
