//! `failover`: what a Redis master's SIGKILL costs the clients. A Sentinel set from the kit
//! (a master, `--replicas` replicas, three sentinels, down-after 1 s) or, with `--cluster`,
//! a Redis Cluster (3 masters, `--replicas` replicas each, node timeout 1 s; the master
//! serving the most rooms is killed), two wsgrace nodes on it, `--rooms` rooms each with `--members-per-node` v1 members on each node, and two
//! senders (`wsgrace.v2`, one per node, joined to every room) publishing `--rate` messages
//! a second in all, each with an `id`, round robin over the rooms and alternating between
//! the nodes. After `--before-ms` the master gets SIGKILL; the senders go on at the same
//! rate until every room has had a message sent after the kill delivered (at most
//! `--failover-timeout-secs`), and `--after-ms` more.
//!
//! Measured from the SIGKILL: the sentinels naming the new master (the first, and all
//! three; on a cluster: every node `ok` and naming the killed master's replica as the owner
//! of its slots), each node's `/readyz` going 503 and answering 200 again, per room the first
//! message sent after the kill delivered to a member (min / median / max over the rooms);
//! what the senders saw (acknowledged by their copy, refused `unavailable` and which
//! refusal, no answer, closes, `epoch` frames); acknowledged messages some open member
//! never got, duplicates, seqs naming two messages, holes; and, per room, whether a client
//! that was away from just before the kill until the end resumes (`since`/`epoch`) and
//! gets every acknowledged message in the replay. With `--wait-replicas-compare`
//! each run is made with `broker.wait_replicas` 0 and then 1; `--runs N` repeats it and
//! reports each run and the medians.
//!
//! It owns the scenario's timeline and its clients; the counting is `failover/ledger.rs`'s
//! (pure), the Redis processes are the kit's. It must not change the servers' config beyond
//! the broker keys, nor reconnect clients (what a client would do after a close is the
//! client's business: the report says how many were closed and with which code).

mod ledger;
mod topology;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{join_rooms, stop_json, welcome_json, Ctx, Outcome, V2};
use crate::client::{self, Frame, Read, WsReader, WsWriter};
use crate::launch::{self, Override};
use ledger::{median, node_name, Ledger, Refusal};
use topology::{events_json, watch_events, watch_switches, EventLog, Switches, Topology};
use wsgrace_kit::server::ServerProcess;

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// v1 members of each room on each of the two nodes.
    #[arg(long, default_value_t = 2)]
    pub members_per_node: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Sending before the SIGKILL, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub before_ms: u64,
    /// Sending after every room has a message sent after the kill delivered, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub after_ms: u64,
    /// From the SIGKILL, how long the rooms may take to come back before the run gives up
    /// on them.
    #[arg(long, default_value_t = 30)]
    pub failover_timeout_secs: u64,
    /// After the last send, how long to wait for every acknowledged message to reach every
    /// open member of its room, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub settle_ms: u64,
    /// Replicas of the master (2: the promoted one still has a replica, which
    /// `broker.wait_replicas = 1` needs to confirm anything after the failover).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// `broker.wait_replicas` of the nodes.
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u8,
    /// Each run twice, with `broker.wait_replicas` 0 and then 1 (instead of
    /// `--wait-replicas`), and the ratios of the medians 1 / 0.
    #[arg(long)]
    pub wait_replicas_compare: bool,
    /// On a Redis Cluster from the kit (3 masters, `--replicas` replicas each) instead of
    /// Sentinel; the master killed is the one serving the most rooms.
    #[arg(long)]
    pub cluster: bool,
    /// Runs (each with its own Redis processes and nodes); the report has each and the
    /// medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// How long one client may take from connect to being in its rooms.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// How often `/readyz` and the sentinels are asked during the failover.
const POLL: Duration = Duration::from_millis(20);

fn room_name(room: usize) -> String {
    format!("fo-{room}")
}

/// A node's `/readyz` statuses, each with the time it was first seen.
type StatusChanges = Rc<RefCell<Vec<(Instant, u16)>>>;

/// Asks `/readyz` every [`POLL`] (each answer bounded by 1 s; none counts as 0) and keeps
/// each change of status with its time.
async fn watch_readyz(addr: SocketAddr, changes: StatusChanges) {
    loop {
        let status = tokio::time::timeout(
            Duration::from_secs(1),
            wsgrace_kit::http::try_get_status(addr, "/readyz"),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
        let now = Instant::now();
        let changed = changes.borrow().last().map(|(_, s)| *s) != Some(status);
        if changed {
            changes.borrow_mut().push((now, status));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A node's `/readyz` after the kill: when it first answered anything but 200, and when it
/// answered 200 again after the last such answer (`null`: it never stopped answering 200).
fn readyz_json(changes: &[(Instant, u16)], killed: Instant) -> Value {
    let since = |at: Instant| super::ms(at.saturating_duration_since(killed));
    let down = changes
        .iter()
        .find(|(at, status)| *at >= killed && *status != 200);
    let last_down = changes.iter().rposition(|(_, status)| *status != 200);
    let again = last_down
        .and_then(|i| changes.get(i + 1))
        .map(|(at, _)| *at);
    json!({
        "not_ready_after_kill_ms": down.map(|(at, _)| since(*at)),
        "ready_again_after_kill_ms": again.map(since),
        "statuses_seen": changes.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
    })
}

/// A v1 member: records its messages and `epoch` frames, answers pings and the close.
async fn member_reader(
    mut rd: WsReader,
    mut wr: WsWriter,
    i: usize,
    ledger: Rc<RefCell<Ledger>>,
    stopping: Rc<Cell<bool>>,
) {
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                let now = Instant::now();
                let Ok(frame) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                match frame.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        let n = frame
                            .get("text")
                            .and_then(Value::as_str)
                            .and_then(|t| t.strip_prefix("f-"))
                            .and_then(|n| n.parse().ok());
                        let seq = frame.get("seq").and_then(Value::as_u64);
                        if let (Some(n), Some(seq)) = (n, seq) {
                            ledger.borrow_mut().message(i, n, seq, now);
                        }
                    }
                    Some("epoch") => {
                        let epoch = frame.get("epoch").and_then(Value::as_str);
                        let seq = frame.get("seq").and_then(Value::as_u64);
                        if let (Some(epoch), Some(seq)) = (epoch, seq) {
                            ledger.borrow_mut().epoch(i, epoch, seq, now);
                        }
                    }
                    _ => {}
                }
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                if !stopping.get() {
                    ledger.borrow_mut().member_closed(i, code);
                }
                let _ = wr.close(code, b"").await;
            }
            Read::End(_) => {
                if !stopping.get() {
                    ledger.borrow_mut().member_ended(i);
                }
                return;
            }
        }
    }
}

/// The number of a publish `id` (`fN`).
fn id_number(frame: &Value) -> Option<u64> {
    frame.get("id")?.as_str()?.strip_prefix('f')?.parse().ok()
}

/// A sender's connection: its copies and `ack`s acknowledge, `unavailable` refuses.
async fn sender_reader(
    mut rd: WsReader,
    wr: Rc<Mutex<WsWriter>>,
    node: usize,
    ledger: Rc<RefCell<Ledger>>,
    stopping: Rc<Cell<bool>>,
) {
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                let now = Instant::now();
                let Ok(frame) = serde_json::from_slice::<Value>(payload) else {
                    continue;
                };
                let mut ledger = ledger.borrow_mut();
                match frame.get("type").and_then(Value::as_str) {
                    Some("message" | "ack") => {
                        if let Some(n) = id_number(&frame) {
                            ledger.acked(n, now);
                        }
                    }
                    Some("error") => {
                        let code = frame.get("code").and_then(Value::as_str).unwrap_or("");
                        match id_number(&frame) {
                            Some(n) if code == "unavailable" => {
                                let text = frame.get("text").and_then(Value::as_str);
                                ledger.refused(n, Refusal::from_text(text.unwrap_or("")), now);
                            }
                            _ => {
                                if let Some(sender) = ledger.sender_mut(node) {
                                    *sender.other_errors.entry(code.to_owned()).or_default() += 1;
                                }
                            }
                        }
                    }
                    Some("epoch") => {
                        if let Some(sender) = ledger.sender_mut(node) {
                            sender.epoch_frames += 1;
                        }
                    }
                    _ => {}
                }
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.lock().await.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                if !stopping.get() {
                    if let Some(sender) = ledger.borrow_mut().sender_mut(node) {
                        sender.closed.get_or_insert(code);
                    }
                }
                let _ = wr.lock().await.close(code, b"").await;
            }
            Read::End(_) => {
                if !stopping.get() {
                    if let Some(sender) = ledger.borrow_mut().sender_mut(node) {
                        sender.ended = true;
                    }
                }
                return;
            }
        }
    }
}

/// Publishes at `rate` until `stop`: message k to room k mod R, from node ⌊k / R⌋ mod 2
/// (so that each room hears from both nodes).
async fn send_loop(
    writers: Vec<Rc<Mutex<WsWriter>>>,
    ledger: Rc<RefCell<Ledger>>,
    rooms: usize,
    rate: f64,
    stop: Rc<Cell<bool>>,
) {
    let start = Instant::now();
    let mut k: u64 = 0;
    while !stop.get() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        if stop.get() {
            return;
        }
        let room = (k % rooms as u64) as usize;
        let node = ((k / rooms as u64) % writers.len() as u64) as usize;
        let n = ledger.borrow_mut().sent(room, node, Instant::now());
        let frame = format!(
            r#"{{"type":"publish","room":"{}","id":"f{n}","text":"f-{n}"}}"#,
            room_name(room)
        );
        if writers[node]
            .lock()
            .await
            .text(frame.as_bytes())
            .await
            .is_err()
        {
            ledger.borrow_mut().write_failed(n);
        }
        k += 1;
    }
}

/// Connects a v1 member of `room` to `addr` and waits for its welcome: the reader, the
/// writer, the welcome's epoch and seq.
async fn join_member(
    addr: SocketAddr,
    path: &str,
    seed: u64,
) -> Result<(WsReader, WsWriter, String, u64), String> {
    let attempt = async {
        let (mut rd, mut wr) = client::connect(addr, None, path, seed).await?;
        let welcome = welcome_json(&mut rd, &mut wr).await?;
        Ok::<_, std::io::Error>((rd, wr, welcome))
    };
    let (rd, wr, welcome) = tokio::time::timeout(HANDSHAKE, attempt)
        .await
        .map_err(|_| format!("{path}: no welcome within {HANDSHAKE:?}"))?
        .map_err(|e| format!("{path}: {e}"))?;
    let epoch = welcome
        .get("epoch")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}: a welcome without an epoch: {welcome}"))?;
    let seq = welcome.get("seq").and_then(Value::as_u64).unwrap_or(0);
    Ok((rd, wr, epoch.to_owned(), seq))
}

/// Connects a `wsgrace.v2` sender to `addr` and joins it to every room.
async fn join_sender(
    addr: SocketAddr,
    name: &str,
    rooms: &[String],
    seed: u64,
) -> Result<(WsReader, WsWriter), String> {
    let path = format!("/ws?name={name}");
    let attempt = async {
        let (mut rd, mut wr) = client::connect_offering(addr, None, &path, seed, Some(V2)).await?;
        welcome_json(&mut rd, &mut wr).await?;
        join_rooms(&mut rd, &mut wr, rooms).await?;
        Ok::<_, std::io::Error>((rd, wr))
    };
    tokio::time::timeout(HANDSHAKE, attempt)
        .await
        .map_err(|_| format!("sender {name}: not in its rooms within {HANDSHAKE:?}"))?
        .map_err(|e| format!("sender {name}: {e}"))
}

/// A client that was in `room` until the kill comes back: `since`/`epoch` from before the
/// kill; answers whether it resumed and the numbers of the messages replayed (read for at
/// most 2 s).
async fn resume_once(
    addr: SocketAddr,
    room: usize,
    epoch: &str,
    since: u64,
    seed: u64,
) -> Result<(bool, Vec<u64>), String> {
    let path = format!(
        "/ws?room={}&name=late{room}&since={since}&epoch={epoch}",
        room_name(room)
    );
    let (mut rd, mut wr) =
        tokio::time::timeout(HANDSHAKE, client::connect(addr, None, &path, seed))
            .await
            .map_err(|_| format!("{path}: no upgrade within {HANDSHAKE:?}"))?
            .map_err(|e| format!("{path}: {e}"))?;
    let welcome = tokio::time::timeout(HANDSHAKE, welcome_json(&mut rd, &mut wr))
        .await
        .map_err(|_| format!("{path}: no welcome within {HANDSHAKE:?}"))?
        .map_err(|e| format!("{path}: {e}"))?;
    let resumed = welcome.get("resumed").and_then(Value::as_bool) == Some(true);
    let missed = welcome.get("missed").and_then(Value::as_u64).unwrap_or(0);
    let mut replayed = Vec::new();
    let read = async {
        while (replayed.len() as u64) < missed {
            match rd.next().await {
                Read::Frame(Frame::Message { payload }) => {
                    let frame: Value = serde_json::from_slice(payload).unwrap_or_default();
                    let n = frame
                        .get("text")
                        .and_then(Value::as_str)
                        .and_then(|t| t.strip_prefix("f-"))
                        .and_then(|n| n.parse().ok());
                    if let Some(n) = n {
                        replayed.push(n);
                    }
                }
                Read::Frame(Frame::Ping(p)) => {
                    let _ = wr.pong(p).await;
                }
                Read::Frame(_) => {}
                Read::End(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    let _ = wr.close(Some(1000), b"").await;
    Ok((resumed, replayed))
}

/// Sleeps until `at` or the scenario's deadline, whichever comes first; false at the
/// deadline.
async fn sleep_within(ctx: &Ctx, at: Instant) -> bool {
    tokio::time::sleep_until(at.min(ctx.deadline)).await;
    at <= ctx.deadline
}

/// One run: Redis processes, two nodes, the clients, the kill, and what everyone saw.
async fn one_run(
    ctx: &Ctx,
    args: &FailoverArgs,
    wait_replicas: u8,
    run: usize,
) -> Result<(bool, Value), String> {
    eprintln!("failover: run {run}, wait_replicas {wait_replicas}: starting Redis");
    let room_names: Vec<String> = (0..args.rooms).map(room_name).collect();
    let (mut topology, on_killed) = if args.cluster {
        let (topology, on_killed) = Topology::start_cluster(args.replicas, &room_names)?;
        (topology, Some(on_killed))
    } else {
        (Topology::start_sentinel(args.replicas)?, None)
    };
    let topology_json = topology.describe();
    let overrides: Vec<Override> = vec![
        ("broker", "kind", toml::Value::String("redis".into())),
        ("broker", "redis_url", toml::Value::String(topology.url())),
        (
            "broker",
            "wait_replicas",
            toml::Value::Integer(i64::from(wait_replicas)),
        ),
    ];
    let mut nodes: Vec<ServerProcess> = Vec::new();
    for _ in 0..2 {
        nodes.push(launch::start_ready(&ctx.server, &overrides).await?);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let ledger = Rc::new(RefCell::new(Ledger::new(args.rooms, addrs.len())));
    if let Some(on_killed) = on_killed {
        ledger.borrow_mut().rooms_on_killed_master(on_killed);
    }
    let stopping = Rc::new(Cell::new(false));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut seed = 1u64;
    for room in 0..args.rooms {
        for (node, addr) in addrs.iter().enumerate() {
            for j in 0..args.members_per_node {
                let path = format!(
                    "/ws?room={}&name=m{room}{}{j}",
                    room_name(room),
                    node_name(node)
                );
                seed += 1;
                let (rd, wr, epoch, seq) = join_member(*addr, &path, seed).await?;
                let i = ledger.borrow_mut().member(room, node, &epoch, seq);
                tasks.push(tokio::task::spawn_local(member_reader(
                    rd,
                    wr,
                    i,
                    ledger.clone(),
                    stopping.clone(),
                )));
            }
        }
    }
    let mut writers = Vec::new();
    for (node, addr) in addrs.iter().enumerate() {
        seed += 1;
        let name = format!("s{}", node_name(node));
        let (rd, wr) = join_sender(*addr, &name, &room_names, seed).await?;
        let wr = Rc::new(Mutex::new(wr));
        tasks.push(tokio::task::spawn_local(sender_reader(
            rd,
            wr.clone(),
            node,
            ledger.clone(),
            stopping.clone(),
        )));
        writers.push(wr);
    }
    eprintln!(
        "failover: {} members and {} senders in {} rooms; sending {} msg/s",
        args.rooms * args.members_per_node * addrs.len(),
        writers.len(),
        args.rooms,
        args.rate
    );
    // The sentinels' events from before the kill on: they say why a failover went as it did.
    let events: EventLog = Rc::default();
    let mut watchers: Vec<JoinHandle<()>> = topology
        .event_ports()
        .into_iter()
        .enumerate()
        .map(|(i, port)| tokio::task::spawn_local(watch_events(port, i, events.clone())))
        .collect();
    let stop_sending = Rc::new(Cell::new(false));
    let sender = tokio::task::spawn_local(send_loop(
        writers,
        ledger.clone(),
        args.rooms,
        args.rate,
        stop_sending.clone(),
    ));
    let mut complete =
        sleep_within(ctx, Instant::now() + Duration::from_millis(args.before_ms)).await;

    let killed = Instant::now();
    ledger.borrow_mut().kill(killed);
    let old_master = topology.kill_master();
    eprintln!("failover: master on port {old_master} killed");
    let topology = Rc::new(topology);
    let switches = Rc::new(Switches::default());
    watchers.push(tokio::task::spawn_local(watch_switches(
        topology.clone(),
        old_master,
        switches.clone(),
        events.clone(),
        POLL,
    )));
    let readyz: Vec<StatusChanges> = addrs.iter().map(|_| Rc::default()).collect();
    for (addr, changes) in addrs.iter().zip(&readyz) {
        watchers.push(tokio::task::spawn_local(watch_readyz(
            *addr,
            changes.clone(),
        )));
    }

    // Until every room is back (bounded), then `after_ms` more.
    let give_up = killed + Duration::from_secs(args.failover_timeout_secs);
    let mut all_back = None;
    while all_back.is_none() && complete {
        if ledger.borrow().rooms_back() == args.rooms {
            all_back = Some(Instant::now());
            break;
        }
        if Instant::now() >= give_up {
            eprintln!(
                "failover: not every room came back within {} s of the kill",
                args.failover_timeout_secs
            );
            complete = false;
            break;
        }
        complete = sleep_within(ctx, Instant::now() + Duration::from_millis(10)).await;
    }
    if let Some(at) = all_back {
        eprintln!(
            "failover: every room back {:?} after the kill",
            at.duration_since(killed)
        );
    }
    complete &= sleep_within(ctx, Instant::now() + Duration::from_millis(args.after_ms)).await;
    stop_sending.set(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
    let settle_until = Instant::now() + Duration::from_millis(args.settle_ms);
    let mut settled = false;
    while Instant::now() < settle_until.min(ctx.deadline) {
        if ledger.borrow().settled() && switches.first_agreed().is_some() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client per room that was away across the failover resumes (rooms alternate
    // between the nodes).
    for room in 0..args.rooms {
        let Some((epoch, since, from)) = ledger.borrow().resume_point(room) else {
            continue;
        };
        seed += 1;
        let addr = addrs[room % addrs.len()];
        match resume_once(addr, room, &epoch, since, seed).await {
            Ok((resumed, replayed)) => ledger.borrow_mut().resume(room, from, resumed, &replayed),
            Err(e) => eprintln!("failover: a resume failed: {e}"),
        }
    }
    stopping.set(true);
    for watcher in watchers {
        watcher.abort();
    }

    let mut report = ledger.borrow().summary();
    let since_kill =
        |at: Option<Instant>| at.map(|at| super::ms(at.saturating_duration_since(killed)));
    let readyz_json: Vec<Value> = readyz
        .iter()
        .map(|changes| readyz_json(&changes.borrow(), killed))
        .collect();
    let ready_again_max = readyz_json
        .iter()
        .map(|r| r["ready_again_after_kill_ms"].as_f64())
        .collect::<Option<Vec<f64>>>()
        .and_then(|v| v.into_iter().reduce(f64::max));
    let mut stops = Vec::new();
    for node in &mut nodes {
        stops.push(stop_json(node, Duration::from_secs(5)).await);
    }
    for task in tasks {
        task.abort();
    }
    drop(topology);
    if let Some(obj) = report.as_object_mut() {
        obj.insert("run".into(), json!(run));
        obj.insert("wait_replicas".into(), json!(wait_replicas));
        obj.insert("complete".into(), json!(complete));
        obj.insert("settled".into(), json!(settled));
        obj.insert("redis".into(), topology_json);
        obj.insert("new_master_named_ms".into(), switches.json(killed));
        obj.insert("failover_events".into(), events_json(&events, killed));
        obj.insert(
            "readyz".into(),
            json!({
                "per_node": readyz_json,
                "both_ready_again_after_kill_ms": ready_again_max,
            }),
        );
        obj.insert(
            "all_rooms_back_after_kill_ms".into(),
            json!(since_kill(all_back)),
        );
        obj.insert("nodes".into(), json!(stops));
    }
    Ok((complete, report))
}

/// The numbers the medians over runs are taken of: (name, JSON pointer into a run).
const MEDIANS: &[(&str, &str)] = &[
    ("new_master_agreed_ms", "/new_master_named_ms/all"),
    (
        "both_ready_again_ms",
        "/readyz/both_ready_again_after_kill_ms",
    ),
    ("first_delivery_min_ms", "/first_delivery_after_kill_ms/min"),
    (
        "first_delivery_median_ms",
        "/first_delivery_after_kill_ms/median",
    ),
    ("first_delivery_max_ms", "/first_delivery_after_kill_ms/max"),
    ("sent_after_kill", "/senders/sent_after_kill"),
    ("refused_unavailable", "/senders/refused_unavailable"),
    ("no_answer", "/senders/no_answer"),
    ("refused_but_delivered", "/senders/refused_but_delivered"),
    ("acknowledged_lost", "/acknowledged_lost/messages"),
    ("duplicates", "/duplicates"),
    ("seqs_named_twice", "/seqs_named_twice"),
    (
        "members_with_an_epoch_frame",
        "/members/with_an_epoch_frame",
    ),
    ("members_closed", "/members/closed"),
    ("resumed", "/resume_across_the_failover/resumed"),
];

fn medians(runs: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, pointer) in MEDIANS {
        let mut values: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
            .collect();
        out.insert((*name).into(), json!(median(&mut values)));
    }
    Value::Object(out)
}

fn ratios(a: &Value, b: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (name, _) in MEDIANS {
        let ratio = match (a[name].as_f64(), b[name].as_f64()) {
            (Some(a), Some(b)) if a != 0.0 => json!((b / a * 1000.0).round() / 1000.0),
            _ => Value::Null,
        };
        out.insert((*name).into(), ratio);
    }
    Value::Object(out)
}

pub async fn run(ctx: &Ctx, args: &FailoverArgs) -> Result<Outcome, String> {
    if args.rooms == 0 || args.members_per_node == 0 || args.rate <= 0.0 {
        return Err("failover needs rooms, members and a rate above 0".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let modes: Vec<u8> = if args.wait_replicas_compare {
        vec![0, 1]
    } else {
        vec![args.wait_replicas]
    };
    let mut per_mode: Vec<Vec<Value>> = vec![Vec::new(); modes.len()];
    let mut ok = true;
    // Interleaved (run 1 with each mode, then run 2, ...): a slow stretch of the machine
    // falls on both modes.
    'runs: for run in 1..=args.runs {
        for (k, wait) in modes.iter().enumerate() {
            if Instant::now() >= ctx.deadline {
                ok = false;
                break 'runs;
            }
            // A run that could not be set up (a replica not in sync in time on a busy
            // machine) is reported as such; the other runs stand.
            let (complete, report) = match one_run(ctx, args, *wait, run).await {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("failover: run {run} failed: {e}");
                    let failed = json!({"run": run, "wait_replicas": wait, "error": e});
                    (false, failed)
                }
            };
            eprintln!("failover: {report}");
            ok &= complete;
            per_mode[k].push(report);
        }
    }
    let mode_json = |wait: u8, runs: &[Value]| {
        json!({
            "wait_replicas": wait,
            "median": medians(runs),
            "runs": runs,
        })
    };
    let mut report = json!({
        "scenario": "failover",
        "redis": if args.cluster { "cluster" } else { "sentinel" },
        "rooms": args.rooms,
        "members": args.rooms * args.members_per_node * 2,
        "rate": args.rate,
        "replicas": args.replicas,
        "runs": args.runs,
        "complete": ok,
    });
    if let Some(obj) = report.as_object_mut() {
        if args.wait_replicas_compare {
            let a = mode_json(0, &per_mode[0]);
            let b = mode_json(1, &per_mode[1]);
            obj.insert(
                "wait_1_over_wait_0".into(),
                ratios(&a["median"], &b["median"]),
            );
            obj.insert("wait_replicas_0".into(), a);
            obj.insert("wait_replicas_1".into(), b);
        } else {
            obj.insert("result".into(), mode_json(modes[0], &per_mode[0]));
        }
    }
    Ok(Outcome { report, ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_down_and_back() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let changes = [
            (at(0), 200),
            (at(150), 503),
            (at(900), 200),
            (at(950), 503),
            (at(2500), 200),
        ];
        let r = readyz_json(&changes, at(100));
        assert_eq!(r["not_ready_after_kill_ms"], json!(50.0));
        assert_eq!(r["ready_again_after_kill_ms"], json!(2400.0));
        let never = readyz_json(&[(at(0), 200)], at(100));
        assert_eq!(never["ready_again_after_kill_ms"], Value::Null);
    }

    #[test]
    fn medians_and_ratios() {
        let runs = [
            json!({"duplicates": 0, "new_master_named_ms": {"all": 2000.0}}),
            json!({"duplicates": 2, "new_master_named_ms": {"all": 3000.0}}),
            json!({"duplicates": 1, "new_master_named_ms": {"all": 2500.0}}),
        ];
        let m = medians(&runs);
        assert_eq!(m["duplicates"], json!(1.0));
        assert_eq!(m["new_master_agreed_ms"], json!(2500.0));
        assert_eq!(m["no_answer"], Value::Null);
        let r = ratios(&m, &json!({"new_master_agreed_ms": 5000.0}));
        assert_eq!(r["new_master_agreed_ms"], json!(2.0));
    }
}
