//! `rolling N RATE`: a rolling deploy under load. Two nodes (A, B) on one Redis (started
//! here), N clients of room "rolling" alternating between them, a sender on B sending RATE
//! messages per second for `--before-secs` + `--after-secs`. After `--before-secs`, node A
//! gets SIGTERM: its clients get `going_away` and 1001, answer the close, wait the
//! `reconnect_after_ms` it suggested and reconnect to B with `since`/`epoch` (what a load
//! balancer would do; connecting to B directly needs no proxy). Each client checks every
//! seq arrives once and none is missing across the reconnect. Reports clean closes, lost
//! and duplicated messages, the reconnect times after SIGTERM as a histogram (500 ms
//! buckets), and latency of live messages sent before the SIGTERM, during the spread, and
//! after, and for each of these phases the CPU of both nodes and of Redis and Redis's
//! commands per second (where the time goes during the restart).
//!
//! Presence (issue 22, on by default as in the config): `presence.events_max_members` is
//! raised above the room's size so that the room sends presence frames at all, and the
//! `presence_join` / `presence_leave` frames the clients get from the SIGTERM until the
//! final seq is known are counted: those the clients that stayed on B got, about the names
//! that came back from A (the target is 0) and about others, and those the returners got
//! once back. Frames of the initial joins settle before the first send and are reported
//! apart.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::fanout::parse_message;
use super::presence_joins::Switch;
use super::{
    drain_line, frame_type, hist_json, micros, ms, new_histogram, presence_change, stop_json,
    welcome_json, Ctx, Outcome, PresenceChange,
};
use crate::client::{self, End, Frame, Read};
use crate::launch::{self, Override};
use crate::scenario_redis::{self, command_stats, CommandStats};
use wsgrace_kit::child::Signal;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;

#[derive(Debug, clap::Args)]
pub struct RollingArgs {
    /// Clients, split over the two nodes.
    pub clients: usize,
    /// Messages per second, steady.
    pub rate: f64,
    /// Seconds of load before node A gets SIGTERM.
    #[arg(long, default_value_t = 5.0)]
    pub before_secs: f64,
    /// Seconds of load after the SIGTERM (more than the spread).
    #[arg(long, default_value_t = 10.0)]
    pub after_secs: f64,
    /// shutdown.reconnect_spread_ms for the nodes (the default is 5000).
    #[arg(long, default_value_t = 5000)]
    pub spread_ms: i64,
    /// history.size for the nodes: a client away for the whole spread misses
    /// rate × spread messages, which must fit (the default 1000 is exactly 200/s × 5 s).
    #[arg(long, default_value_t = 4000)]
    pub history_size: i64,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// presence.enabled for the nodes.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub presence: Switch,
    /// presence.events_max_members for the nodes (default: twice the clients, so that the
    /// room sends presence frames; the config's default, 1000, would silence a room of 2,000).
    #[arg(long)]
    pub events_max_members: Option<i64>,
}

/// What all clients add up.
struct Shared {
    base: Instant,
    /// SIGTERM time as nanos since `base`; u64::MAX until sent.
    sigterm_ns: Cell<u64>,
    spread_ns: u64,
    lat_before: RefCell<Histogram<u64>>,
    lat_during: RefCell<Histogram<u64>>,
    lat_after: RefCell<Histogram<u64>>,
    /// Reconnect (welcome on B) times after SIGTERM.
    reconnect_at: RefCell<Vec<Duration>>,
    /// How much later than its `reconnect_after_ms` each client had its welcome on B.
    reconnect_lag: RefCell<Histogram<u64>>,
    going_away_delays: RefCell<Vec<u64>>,
    /// Clients that had their first welcome.
    joined: Cell<usize>,
    received: Cell<u64>,
    lost: Cell<u64>,
    duplicates: Cell<u64>,
    not_resumed: Cell<u64>,
    closes: RefCell<BTreeMap<String, u64>>,
    clean: Cell<u64>,
    unclean: Cell<u64>,
    failed_reconnects: Cell<u64>,
    /// Each client's last seq.
    last_seqs: RefCell<Vec<u64>>,
    first_error: RefCell<Option<String>>,
    /// Presence frames before the SIGTERM (the initial joins), all clients.
    presence_before: Cell<u64>,
    /// Of those, `presence_leave` frames (a room that only fills should have none).
    presence_leaves_before: Cell<u64>,
    /// After the SIGTERM, to the clients that stayed on B: about returners, about others.
    stayers_about_returners: Cell<u64>,
    stayers_other: Cell<u64>,
    /// After the SIGTERM, to the returners once back on B: about returners, about others.
    returners_about_returners: Cell<u64>,
    returners_other: Cell<u64>,
    /// The first few presence frames stayers got about returners (what flapped).
    stayer_samples: RefCell<Vec<String>>,
}

/// Whether `name` is a client that starts on node A (`c{even}`): one that comes back.
fn is_returner(name: &[u8]) -> bool {
    name.strip_prefix(b"c")
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(|id| id.parse::<usize>().ok())
        .is_some_and(|id| id.is_multiple_of(2))
}

impl Shared {
    /// Counts a presence frame that client `id` got, about `name`, `change`.
    fn presence_frame(&self, id: usize, change: PresenceChange, name: &[u8], stopping: bool) {
        let bump = |c: &Cell<u64>| c.set(c.get() + 1);
        if self.sigterm_ns.get() == u64::MAX {
            bump(&self.presence_before);
            if change == PresenceChange::Leave {
                bump(&self.presence_leaves_before);
            }
            return;
        }
        if stopping {
            // The run is over: clients are leaving by dropping their sockets.
            return;
        }
        let about_returner = is_returner(name);
        match (id.is_multiple_of(2), about_returner) {
            (false, true) => {
                bump(&self.stayers_about_returners);
                let mut samples = self.stayer_samples.borrow_mut();
                if samples.len() < 5 {
                    samples.push(format!("{change:?} {}", String::from_utf8_lossy(name)));
                }
            }
            (false, false) => bump(&self.stayers_other),
            (true, true) => bump(&self.returners_about_returners),
            (true, false) => bump(&self.returners_other),
        }
    }

    fn presence_total(&self) -> u64 {
        self.presence_before.get()
            + self.stayers_about_returners.get()
            + self.stayers_other.get()
            + self.returners_about_returners.get()
            + self.returners_other.get()
    }

    fn error(&self, e: String) {
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            eprintln!("rolling: {e}");
            *first = Some(e);
        }
    }
}

/// One client: on `addr` until a shutdown close, then on `fallback`, resuming. Returns when
/// `stop` is set and it has every seq up to `final_seq` (or when told to give up).
async fn client_task(
    id: usize,
    addr: SocketAddr,
    fallback: SocketAddr,
    shared: Rc<Shared>,
    stop: Rc<Cell<u64>>,
) {
    let mut target = addr;
    let mut last: Option<u64> = None;
    let mut epoch = String::new();
    let mut attempt = 0u32;
    let mut drained_at: Option<Instant> = None;
    let mut going_away: Option<u64> = None;
    loop {
        let path = match last {
            Some(s) => format!("/ws?room=rolling&name=c{id}&since={s}&epoch={epoch}"),
            None => format!("/ws?room=rolling&name=c{id}"),
        };
        let connected = match client::connect(target, None, &path, id as u64).await {
            Ok((mut rd, mut wr)) => match welcome_json(&mut rd, &mut wr).await {
                Ok(welcome) => Ok((rd, wr, welcome)),
                Err(e) => Err(format!("client {id} welcome: {e}")),
            },
            Err(e) => Err(format!("client {id} connect: {e}")),
        };
        let (mut rd, mut wr, welcome) = match connected {
            Ok(connected) => connected,
            Err(e) => {
                shared.error(e);
                shared
                    .failed_reconnects
                    .set(shared.failed_reconnects.get() + 1);
                attempt += 1;
                if attempt > 20 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                continue;
            }
        };
        let wseq = welcome["seq"].as_u64().unwrap_or(0);
        epoch = welcome["epoch"].as_str().unwrap_or_default().to_string();
        // Replayed messages are not live: their latency is the time away.
        let mut replay = 0u64;
        match last {
            None => {
                last = Some(wseq);
                shared.joined.set(shared.joined.get() + 1);
            }
            Some(prev) => {
                if let Some(t) = drained_at.take() {
                    let sig = shared.base + Duration::from_nanos(shared.sigterm_ns.get());
                    shared
                        .reconnect_at
                        .borrow_mut()
                        .push(Instant::now().saturating_duration_since(sig));
                    let planned = t + Duration::from_millis(going_away.unwrap_or(0));
                    let _ = shared
                        .reconnect_lag
                        .borrow_mut()
                        .record(micros(Instant::now().saturating_duration_since(planned)));
                }
                if welcome["resumed"].as_bool() == Some(true) {
                    replay = welcome["missed"].as_u64().unwrap_or(0);
                } else {
                    shared.not_resumed.set(shared.not_resumed.get() + 1);
                    shared
                        .lost
                        .set(shared.lost.get() + wseq.saturating_sub(prev));
                    last = Some(wseq.max(prev));
                }
            }
        }
        going_away = None;
        let mut close_code = None;
        let mut replied = false;
        let end = loop {
            let stop_at = stop.get();
            if stop_at != 0 && last.unwrap_or(0) >= stop_at {
                // Everything arrived: leave without a fuss (no more measuring).
                shared.last_seqs.borrow_mut().push(last.unwrap_or(0));
                return;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(200), rd.next()).await {
                Ok(f) => f,
                Err(_) => continue,
            };
            match frame {
                Read::Frame(Frame::Message { payload }) => {
                    let now = Instant::now();
                    match parse_message(payload) {
                        Some(Some((seq, t))) => {
                            let prev = last.unwrap_or(0);
                            if seq <= prev {
                                shared.duplicates.set(shared.duplicates.get() + 1);
                                continue;
                            }
                            if seq != prev + 1 {
                                shared.lost.set(shared.lost.get() + (seq - prev - 1));
                            }
                            last = Some(seq);
                            shared.received.set(shared.received.get() + 1);
                            if replay > 0 {
                                replay -= 1;
                                continue;
                            }
                            let sent = shared.base + Duration::from_nanos(t);
                            let lat = micros(now.saturating_duration_since(sent));
                            let sig = shared.sigterm_ns.get();
                            let h = if t < sig {
                                &shared.lat_before
                            } else if t < sig.saturating_add(shared.spread_ns) {
                                &shared.lat_during
                            } else {
                                &shared.lat_after
                            };
                            let _ = h.borrow_mut().record(lat);
                        }
                        Some(None) => {}
                        None => {
                            if let Some((change, name)) = presence_change(payload) {
                                shared.presence_frame(id, change, name, stop.get() != 0);
                            } else if frame_type(payload) == Some(b"going_away") {
                                let v: Value = serde_json::from_slice(payload).unwrap_or_default();
                                let d = v["reconnect_after_ms"].as_u64().unwrap_or(0);
                                going_away = Some(d);
                                shared.going_away_delays.borrow_mut().push(d);
                            }
                        }
                    }
                }
                Read::Frame(Frame::Ping(p)) => {
                    let _ = wr.pong(p).await;
                }
                Read::Frame(Frame::Pong) => {}
                Read::Frame(Frame::Close { code, .. }) => {
                    close_code = code;
                    replied = wr.close(code, b"").await.is_ok();
                }
                Read::End(end) => break end,
            }
        };
        let key = close_code.map_or("none".to_string(), |c| c.to_string());
        *shared.closes.borrow_mut().entry(key).or_default() += 1;
        if close_code == Some(1001) && replied && end == End::Eof && going_away.is_some() {
            shared.clean.set(shared.clean.get() + 1);
        } else {
            shared.unclean.set(shared.unclean.get() + 1);
        }
        drained_at = Some(Instant::now());
        let delay = going_away.unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        target = fallback;
        attempt = 0;
    }
}

/// CPU of node A, node B and Redis and Redis's command counters at one moment.
struct Snapshot {
    at: Instant,
    a: Option<Duration>,
    b: Option<Duration>,
    redis: Option<Duration>,
    commands: CommandStats,
}

async fn snapshot(a: &ServerProcess, b: &ServerProcess, redis: &RedisServer) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        a: a.cpu_time(),
        b: b.cpu_time(),
        redis: scenario_redis::cpu_time(redis),
        commands: command_stats(redis).await.unwrap_or_default(),
    }
}

/// Where the CPU went between two snapshots: each process's CPU in ms per second of the
/// phase, and Redis's commands (calls and µs) per second.
fn phase_json(name: &str, from: &Snapshot, to: &Snapshot) -> Value {
    let secs = to.at.saturating_duration_since(from.at).as_secs_f64();
    let per_s = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
        (Some(x), Some(y)) if secs > 0.0 => {
            json!((y.saturating_sub(x).as_secs_f64() * 1000.0 / secs).round())
        }
        _ => Value::Null,
    };
    let mut commands = serde_json::Map::new();
    for (cmd, (calls, usec)) in &to.commands {
        let (c0, u0) = from.commands.get(cmd).copied().unwrap_or((0, 0));
        if *calls > c0 && secs > 0.0 {
            commands.insert(
                cmd.clone(),
                json!({
                    "calls_per_s": ((calls - c0) as f64 / secs).round(),
                    "usec_per_s": (usec.saturating_sub(u0) as f64 / secs).round(),
                }),
            );
        }
    }
    json!({
        "phase": name,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "cpu_ms_per_s": {
            "node_a": per_s(from.a, to.a),
            "node_b": per_s(from.b, to.b),
            "redis": per_s(from.redis, to.redis),
        },
        "redis_commands": commands,
    })
}

pub async fn run(ctx: &Ctx, args: &RollingArgs) -> Result<Outcome, String> {
    ctx.check_nofile(args.clients);
    let mut redis = scenario_redis::start(&args.redis_server)?;
    let events_max_members = args.events_max_members.unwrap_or_else(|| {
        i64::try_from(args.clients)
            .unwrap_or(i64::MAX)
            .saturating_mul(2)
            .max(1000)
    });
    let o: Vec<Override> = vec![
        (
            "server",
            "max_connections",
            super::max_connections(args.clients),
        ),
        ("broker", "kind", toml::Value::String("redis".into())),
        ("broker", "redis_url", toml::Value::String(redis.url())),
        ("history", "size", toml::Value::Integer(args.history_size)),
        (
            "shutdown",
            "reconnect_spread_ms",
            toml::Value::Integer(args.spread_ms),
        ),
        (
            "presence",
            "enabled",
            toml::Value::Boolean(args.presence.on()),
        ),
        (
            "presence",
            "events_max_members",
            toml::Value::Integer(events_max_members),
        ),
    ];
    let mut a = launch::start_ready(&ctx.server, &o).await?;
    let mut b = launch::start_ready(&ctx.server, &o).await?;
    eprintln!(
        "rolling: redis {}, node A {} (pid {}), node B {}",
        redis.addr(),
        a.addr,
        a.pid(),
        b.addr
    );
    let spread = Duration::from_millis(u64::try_from(args.spread_ms).unwrap_or(0));
    let shared = Rc::new(Shared {
        base: Instant::now(),
        sigterm_ns: Cell::new(u64::MAX),
        // "during": from the SIGTERM to the end of the spread plus one second.
        spread_ns: u64::try_from((spread + Duration::from_secs(1)).as_nanos()).unwrap_or(u64::MAX),
        lat_before: RefCell::new(new_histogram()),
        lat_during: RefCell::new(new_histogram()),
        lat_after: RefCell::new(new_histogram()),
        reconnect_at: RefCell::new(Vec::new()),
        reconnect_lag: RefCell::new(new_histogram()),
        going_away_delays: RefCell::new(Vec::new()),
        joined: Cell::new(0),
        received: Cell::new(0),
        lost: Cell::new(0),
        duplicates: Cell::new(0),
        not_resumed: Cell::new(0),
        closes: RefCell::new(BTreeMap::new()),
        clean: Cell::new(0),
        unclean: Cell::new(0),
        failed_reconnects: Cell::new(0),
        last_seqs: RefCell::new(Vec::new()),
        first_error: RefCell::new(None),
        presence_before: Cell::new(0),
        presence_leaves_before: Cell::new(0),
        stayers_about_returners: Cell::new(0),
        stayers_other: Cell::new(0),
        returners_about_returners: Cell::new(0),
        returners_other: Cell::new(0),
        stayer_samples: RefCell::new(Vec::new()),
    });
    let stop = Rc::new(Cell::new(0u64));
    // Clients connect 64 at a time (their tasks stay), each waiting for its welcome.
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (addr, fallback) = if i % 2 == 0 {
            (a.addr, b.addr)
        } else {
            (b.addr, b.addr)
        };
        tasks.push(tokio::task::spawn_local(client_task(
            i,
            addr,
            fallback,
            shared.clone(),
            stop.clone(),
        )));
        if i % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The sender, on B: reads its own copies only to know the final seq.
    let (mut srd, mut swr) = client::connect(b.addr, None, "/ws?room=rolling&name=sender", 3)
        .await
        .map_err(|e| format!("sender: {e}"))?;
    welcome_json(&mut srd, &mut swr)
        .await
        .map_err(|e| format!("sender: {e}"))?;
    let sender_last = Rc::new(Cell::new(0u64));
    {
        let sender_last = sender_last.clone();
        tokio::task::spawn_local(async move {
            loop {
                match srd.next().await {
                    Read::Frame(Frame::Message { payload }) => {
                        if let Some(Some((seq, _))) = parse_message(payload) {
                            sender_last.set(seq);
                        }
                    }
                    Read::Frame(_) => {}
                    Read::End(_) => return,
                }
            }
        });
    }
    // Every client's first welcome comes before the first send (bounded: 30 s).
    let joining = Instant::now() + Duration::from_secs(30);
    while shared.joined.get() < args.clients && Instant::now() < joining {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The initial joins' presence frames (N² of them with events on) settle before the
    // first send: no new one for 500 ms (bounded: 20 s).
    let settling = Instant::now() + Duration::from_secs(20);
    let (mut seen, mut quiet_since) = (shared.presence_total(), Instant::now());
    while Instant::now() < settling.min(ctx.deadline) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if shared.presence_total() != seen {
            (seen, quiet_since) = (shared.presence_total(), Instant::now());
        } else if quiet_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    eprintln!(
        "rolling: {} of {} clients joined; {} presence frames so far",
        shared.joined.get(),
        args.clients,
        shared.presence_total()
    );
    let total = ((args.before_secs + args.after_secs) * args.rate).round() as u64;
    let sigterm_after = (args.before_secs * args.rate).round() as u64;
    eprintln!(
        "rolling: sending {total} messages at {}/s; SIGTERM to A after {sigterm_after}",
        args.rate
    );
    let start = Instant::now();
    let during_end = spread + Duration::from_secs(1);
    let mut phases = vec![snapshot(&a, &b, &redis).await];
    let mut sigterm_at = None;
    let mut sent = 0u64;
    let mut a_exit = None;
    for i in 0..total {
        if i == sigterm_after {
            shared.sigterm_ns.set(
                u64::try_from(Instant::now().duration_since(shared.base).as_nanos()).unwrap_or(0),
            );
            phases.push(snapshot(&a, &b, &redis).await);
            sigterm_at = Some(Instant::now());
            a.try_signal(Signal::Term);
        }
        let at = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(at.min(ctx.deadline)).await;
        let now = Instant::now();
        let text = format!("t={}", now.duration_since(shared.base).as_nanos());
        if let Err(e) = swr.text(text.as_bytes()).await {
            shared.error(format!("sender: {e}"));
            break;
        }
        sent += 1;
        if phases.len() == 2 && sigterm_at.is_some_and(|t| t.elapsed() >= during_end) {
            phases.push(snapshot(&a, &b, &redis).await);
        }
        if a_exit.is_none() {
            if let (Some(sig), Some(exit)) = (sigterm_at, a.try_wait_exit(Duration::ZERO).await) {
                a_exit = Some((sig.elapsed(), exit));
            }
        }
    }
    phases.push(snapshot(&a, &b, &redis).await);
    let phase_names = ["before", "during", "after"];
    let phases_json: Vec<Value> = phases
        .windows(2)
        .zip(phase_names)
        .map(|(w, name)| phase_json(name, &w[0], &w[1]))
        .collect();
    let wait = Instant::now() + Duration::from_secs(10);
    while sender_last.get() < sent && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let final_seq = sender_last.get();
    stop.set(final_seq.max(1));
    let limit = (Instant::now() + Duration::from_secs(10)).min(ctx.deadline);
    let mut unfinished = 0;
    for t in tasks {
        if tokio::time::timeout_at(limit, t).await.is_err() {
            unfinished += 1;
        }
    }
    if a_exit.is_none() {
        if let (Some(sig), Some(exit)) = (sigterm_at, a.try_wait_exit(Duration::from_secs(1)).await)
        {
            a_exit = Some((sig.elapsed(), exit));
        }
    }
    // Messages never reached: a client's last seq below the final one.
    let tail_lost: u64 = shared
        .last_seqs
        .borrow()
        .iter()
        .map(|s| final_seq.saturating_sub(*s))
        .sum();
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for d in shared.reconnect_at.borrow().iter() {
        *buckets.entry(d.as_millis() as u64 / 500 * 500).or_default() += 1;
    }
    let mut ga_buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for d in shared.going_away_delays.borrow().iter() {
        *ga_buckets.entry(d / 500 * 500).or_default() += 1;
    }
    let mut reconnect_hist = new_histogram();
    for d in shared.reconnect_at.borrow().iter() {
        let _ = reconnect_hist.record(micros(*d));
    }
    let drained = shared.clean.get() + shared.unclean.get();
    let lost = shared.lost.get() + tail_lost;
    // The sender closes first (its reader task cannot answer a close from B's drain).
    let _ = swr.close(Some(1000), b"done").await;
    let stop_b = stop_json(&mut b, Duration::from_secs(15)).await;
    let a_stop = if a_exit.is_none() {
        Some(stop_json(&mut a, Duration::from_secs(5)).await)
    } else {
        None
    };
    redis.kill();
    let ok = unfinished == 0
        && shared.joined.get() == args.clients
        && sent == total
        && lost == 0
        && shared.duplicates.get() == 0
        && shared.unclean.get() == 0;
    let mut report = json!({
        "scenario": "rolling",
        "clients": args.clients,
        "rate": args.rate,
        "spread_ms": args.spread_ms,
        "history_size": args.history_size,
        "complete": ok,
        "sent": sent,
        "final_seq": final_seq,
        "clients_joined_before_first_send": shared.joined.get(),
        "clients_unfinished": unfinished,
        "deliveries": shared.received.get(),
        "drained_connections": drained,
        "clean_closes": shared.clean.get(),
        "clean_fraction": if drained == 0 { Value::Null } else { json!(shared.clean.get() as f64 / drained as f64) },
        "close_codes": *shared.closes.borrow(),
        "lost": lost,
        "lost_at_end": tail_lost,
        "duplicates": shared.duplicates.get(),
        "not_resumed": shared.not_resumed.get(),
        "failed_connects": shared.failed_reconnects.get(),
        "first_error": *shared.first_error.borrow(),
        "going_away_delay_buckets_ms": ga_buckets,
        "reconnect_after_sigterm_buckets_ms": buckets,
        "reconnect_after_sigterm": hist_json(&reconnect_hist),
        "reconnect_later_than_suggested": hist_json(&shared.reconnect_lag.borrow()),
        "latency_before": hist_json(&shared.lat_before.borrow()),
        "latency_during": hist_json(&shared.lat_during.borrow()),
        "latency_after": hist_json(&shared.lat_after.borrow()),
        "node_a_exit_ms": a_exit.map(|(d, _)| ms(d)),
        "node_a_exit_code": a_exit.and_then(|(_, e)| e.code()),
        "node_a_drain_log": drain_line(&a).await,
        "node_a_stop": a_stop,
        "node_b": stop_b,
        "phases": phases_json,
    });
    if let Some(obj) = report.as_object_mut() {
        // Apart from the rest: one json! of it all passes the macro's recursion limit.
        let presence = json!({
            "presence": args.presence.name(),
            "presence_events_max_members": events_max_members,
            "presence_frames_before_sigterm": shared.presence_before.get(),
            "presence_leaves_before_sigterm": shared.presence_leaves_before.get(),
            "presence_flap_free": shared.stayers_about_returners.get() == 0,
            "presence_events_seen_by_stayers": {
                "about_returners": shared.stayers_about_returners.get(),
                "other": shared.stayers_other.get(),
                "samples_about_returners": *shared.stayer_samples.borrow(),
            },
            "presence_events_seen_by_returners": {
                "about_returners": shared.returners_about_returners.get(),
                "other": shared.returners_other.get(),
            },
        });
        if let Value::Object(fields) = presence {
            obj.extend(fields);
        }
    }
    Ok(Outcome { report, ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returners_are_the_even_clients() {
        assert!(is_returner(b"c0"));
        assert!(is_returner(b"c1998"));
        assert!(!is_returner(b"c7"));
        assert!(!is_returner(b"sender"));
        assert!(!is_returner(b"c"));
    }
}
