//! `v2-resume K N`: the resume of a `wsgrace.v2` connection in K rooms (10) that missed N
//! messages in each (issue 26, item 5). One server, local broker. A sender (v2, in the K
//! rooms `resume-0`, ...) and `--clients` C clients, each one v2 connection in the same K
//! rooms; then `--repeat` times: every client disconnects (close 1000), the sender publishes
//! N messages in each room (at most `--window` of its own copies outstanding) and waits for
//! its copies, and all clients reconnect at once and send their K joins with `since`/`epoch`
//! right after `hello`. With `--v1` the same follows on a fresh server over protocol v1,
//! where a client in K rooms is K connections, each resumed with `since`/`epoch` in its URL,
//! all K at once; and a last object gives the ratios v1 / v2.
//!
//! Measured per client resume, from its first connect: the first frame (`hello`; v1: every
//! `welcome`), every room's `joined` (v1: welcome), every room's last missed message; the
//! bytes the server sent (its response heads, and its WebSocket frames with their headers)
//! and the client sent (requests and masked frames); whether every replay was complete, in
//! order and without duplicates; and the server's CPU over the resume windows, per client
//! and per replayed message. Presence events are off unless `--presence-events`. It owns this
//! scenario's load and report only.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::fanout::parse_message;
use super::{
    cpu_delta, frame_type, hist_json, micros, ms, new_histogram, server_frame_bytes, stop_json,
    str_field, u64_field, Ctx, Outcome, V2,
};
use crate::client::{self, Frame, Read, WsReader, WsWriter};
use crate::launch;
use wsgrace_kit::handshake::upgrade_request_offering;

#[derive(Debug, Clone, clap::Args)]
pub struct V2ResumeArgs {
    /// Rooms each client is in.
    #[arg(default_value_t = 10)]
    pub rooms: usize,
    /// Messages each room gets while the clients are away.
    #[arg(default_value_t = 100)]
    pub missed: u64,
    /// Clients that resume at once.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Disconnect-send-resume rounds.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Then the same over protocol v1 (K connections per client), and the ratios v1 / v2.
    #[arg(long)]
    pub v1: bool,
    /// The sender's own copies outstanding at most.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// How long a round's resume may take, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u64,
    /// Keep presence events on (off by default here: with many clients the rejoins' presence
    /// frames would be in the resume's bytes, and they pile up in connections this scenario
    /// does not read between rounds).
    #[arg(long)]
    pub presence_events: bool,
}

/// Which protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    V1,
    V2,
}

/// Where a client is in one room: the epoch and the last seq it has.
#[derive(Debug, Clone, Default)]
struct Position {
    epoch: String,
    seq: u64,
}

/// What one client's resume took and got.
#[derive(Debug, Default)]
struct Resume {
    first_frame: Option<Duration>,
    all_joined: Option<Duration>,
    done: Option<Duration>,
    server_bytes: u64,
    server_frames: u64,
    client_bytes: u64,
    replayed: u64,
    not_resumed: u64,
    wrong_missed: u64,
    out_of_order: u64,
    duplicates: u64,
    error: Option<String>,
}

/// Bytes of a masked client frame of `payload_len` bytes.
fn client_frame_bytes(payload_len: usize) -> u64 {
    server_frame_bytes(payload_len) + 4
}

/// The index of room `resume-I`.
fn room_index(room: &[u8]) -> Option<usize> {
    std::str::from_utf8(room.strip_prefix(b"resume-")?)
        .ok()?
        .parse()
        .ok()
}

fn room_name(i: usize) -> String {
    format!("resume-{i}")
}

/// Reads one connection's frames until each of its rooms has seq `last[room]`, checking the
/// replay and counting bytes. `rooms` are the room indices this connection carries;
/// `positions` is updated as messages arrive. `joined_kind` is `joined` (v2) or `welcome`.
#[allow(clippy::too_many_arguments)]
async fn read_replay(
    rd: &mut WsReader,
    wr: &mut WsWriter,
    rooms: &[usize],
    positions: &RefCell<Vec<Position>>,
    last: &[u64],
    missed: u64,
    start: Instant,
    r: &RefCell<Resume>,
    joined_at: &Cell<usize>,
    total_rooms: usize,
) {
    let single = (rooms.len() == 1).then(|| rooms[0]);
    let mut joined = 0;
    let mut complete = rooms
        .iter()
        .filter(|&&i| positions.borrow()[i].seq >= last[i])
        .count();
    let mut first = true;
    // A v2 connection's rooms are resumed after `hello`; a v1 connection's first frame is its
    // welcome, which says whether it resumed.
    while complete < rooms.len() || joined < rooms.len() {
        let frame = rd.next().await;
        let now = start.elapsed();
        // The borrow ends before the pong is awaited.
        let pong = {
            let mut res = r.borrow_mut();
            match frame {
                Read::Frame(Frame::Message { payload }) => {
                    res.server_bytes += server_frame_bytes(payload.len());
                    res.server_frames += 1;
                    if first {
                        first = false;
                        res.first_frame = Some(res.first_frame.map_or(now, |t| t.max(now)));
                    }
                    let room = str_field(payload, "room")
                        .and_then(room_index)
                        .or(single)
                        .filter(|i| rooms.contains(i));
                    match frame_type(payload) {
                        Some(b"joined" | b"welcome") => {
                            let Some(i) = room else { continue };
                            joined += 1;
                            const RESUMED: &[u8] = br#""resumed":true"#;
                            if payload.windows(RESUMED.len()).any(|w| w == RESUMED) {
                                if u64_field(payload, "missed") != Some(missed) {
                                    res.wrong_missed += 1;
                                }
                            } else {
                                res.not_resumed += 1;
                                // Not resumed: nothing will be replayed; count it complete.
                                positions.borrow_mut()[i].seq = last[i];
                                complete += 1;
                            }
                            joined_at.set(joined_at.get() + 1);
                            if joined_at.get() == total_rooms {
                                res.all_joined = Some(now);
                            }
                        }
                        Some(b"message") => {
                            let Some(i) = room else { continue };
                            let Some(Some((seq, _))) = parse_message(payload) else {
                                continue;
                            };
                            let mut positions = positions.borrow_mut();
                            let seen = positions[i].seq;
                            if seq <= seen {
                                res.duplicates += 1;
                                continue;
                            }
                            if seq != seen + 1 {
                                res.out_of_order += 1;
                            }
                            positions[i].seq = seq;
                            res.replayed += 1;
                            if seq == last[i] {
                                complete += 1;
                            }
                        }
                        _ => {}
                    }
                    None
                }
                Read::Frame(Frame::Ping(p)) => {
                    res.server_bytes += server_frame_bytes(p.len());
                    Some(p.to_vec())
                }
                Read::Frame(_) => None,
                Read::End(end) => {
                    res.error
                        .get_or_insert(format!("connection ended during the resume: {end:?}"));
                    return;
                }
            }
        };
        if let Some(p) = pong {
            let _ = wr.pong(&p).await;
        }
    }
}

/// Connects on `path` and returns the connection, counting its upgrade's bytes.
async fn connect_counting(
    addr: SocketAddr,
    path: &str,
    protocol: Protocol,
    seed: u64,
    r: &RefCell<Resume>,
) -> Option<(WsReader, WsWriter)> {
    let subprotocol = (protocol == Protocol::V2).then_some(V2);
    let request = upgrade_request_offering(addr, path, subprotocol);
    match client::connect_measured(addr, None, path, seed, subprotocol).await {
        Ok((rd, wr, head)) => {
            let mut res = r.borrow_mut();
            res.client_bytes += request.len() as u64;
            res.server_bytes += head as u64;
            Some((rd, wr))
        }
        Err(e) => {
            r.borrow_mut().error.get_or_insert(e.to_string());
            None
        }
    }
}

/// A v2 join of room `i`, resuming from `position` when given.
fn join_frame(i: usize, position: Option<&Position>) -> String {
    match position {
        Some(p) => format!(
            r#"{{"type":"join","room":"{}","since":{},"epoch":"{}"}}"#,
            room_name(i),
            p.seq,
            p.epoch
        ),
        None => format!(r#"{{"type":"join","room":"{}"}}"#, room_name(i)),
    }
}

/// One client, connected in its K rooms: its connections (one for v2, K for v1) and its
/// positions.
struct Client {
    index: usize,
    positions: RefCell<Vec<Position>>,
}

/// Opens a client's connections and brings each room to `last` (a first join: `resume` is
/// false and `last` is whatever the joins say). Returns the connections to keep until the
/// next round.
async fn connect_client(
    addr: SocketAddr,
    protocol: Protocol,
    client: &Client,
    resume: bool,
    last: &[u64],
    missed: u64,
    r: &RefCell<Resume>,
) -> Vec<(WsReader, WsWriter)> {
    let k = last.len();
    let start = Instant::now();
    let joined_at = Cell::new(0);
    let name = format!("c{}", client.index);
    match protocol {
        Protocol::V2 => {
            let Some((mut rd, mut wr)) = connect_counting(
                addr,
                &format!("/ws?name={name}"),
                protocol,
                client.index as u64,
                r,
            )
            .await
            else {
                return Vec::new();
            };
            for i in 0..k {
                let frame = {
                    let positions = client.positions.borrow();
                    join_frame(i, resume.then(|| &positions[i]))
                };
                r.borrow_mut().client_bytes += client_frame_bytes(frame.len());
                if let Err(e) = wr.text(frame.as_bytes()).await {
                    r.borrow_mut().error.get_or_insert(e.to_string());
                    return Vec::new();
                }
            }
            if resume {
                let rooms: Vec<usize> = (0..k).collect();
                read_replay(
                    &mut rd,
                    &mut wr,
                    &rooms,
                    &client.positions,
                    last,
                    missed,
                    start,
                    r,
                    &joined_at,
                    k,
                )
                .await;
            } else if let Err(e) = first_joins(&mut rd, &mut wr, client, None, k).await {
                r.borrow_mut().error.get_or_insert(e);
            }
            r.borrow_mut().done = Some(start.elapsed());
            vec![(rd, wr)]
        }
        Protocol::V1 => {
            // K connections at once, one per room.
            let tasks = (0..k).map(|i| {
                let path = {
                    let positions = client.positions.borrow();
                    let p = &positions[i];
                    if resume {
                        format!(
                            "/ws?room={}&name={name}&since={}&epoch={}",
                            room_name(i),
                            p.seq,
                            p.epoch
                        )
                    } else {
                        format!("/ws?room={}&name={name}", room_name(i))
                    }
                };
                let joined_at = &joined_at;
                async move {
                    let seed = (client.index * k + i) as u64;
                    let (mut rd, mut wr) = connect_counting(addr, &path, protocol, seed, r).await?;
                    if resume {
                        read_replay(
                            &mut rd,
                            &mut wr,
                            &[i],
                            &client.positions,
                            last,
                            missed,
                            start,
                            r,
                            joined_at,
                            k,
                        )
                        .await;
                    } else if let Err(e) = first_joins(&mut rd, &mut wr, client, Some(i), 1).await {
                        r.borrow_mut().error.get_or_insert(e);
                    }
                    Some((rd, wr))
                }
            });
            let conns: Vec<_> = futures_join_all(tasks)
                .await
                .into_iter()
                .flatten()
                .collect();
            r.borrow_mut().done = Some(start.elapsed());
            conns
        }
    }
}

/// Polls the futures concurrently on this task (no spawn: they borrow the client).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(outputs.drain(..).flatten().collect())
        }
    })
    .await
}

/// Reads a first join's answers (`joined` for v2, the welcome for v1: `only` names its
/// room) and records each room's epoch and seq.
async fn first_joins(
    rd: &mut WsReader,
    wr: &mut WsWriter,
    client: &Client,
    only: Option<usize>,
    expected: usize,
) -> Result<(), String> {
    let mut joined = 0;
    while joined < expected {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                if !matches!(frame_type(payload), Some(b"joined" | b"welcome")) {
                    continue;
                }
                let Some(i) = str_field(payload, "room").and_then(room_index).or(only) else {
                    continue;
                };
                let epoch = str_field(payload, "epoch")
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .unwrap_or_default();
                let seq = u64_field(payload, "seq").unwrap_or(0);
                if let Some(p) = client.positions.borrow_mut().get_mut(i) {
                    *p = Position { epoch, seq };
                }
                joined += 1;
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(_) => {}
            Read::End(end) => return Err(format!("ended before joining: {end:?}")),
        }
    }
    Ok(())
}

/// Closes every connection (1000) and waits for each to end (at most 5 s).
async fn disconnect(conns: Vec<(WsReader, WsWriter)>) {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(mut rd, mut wr)| {
            tokio::task::spawn_local(async move {
                let _ = wr.close(Some(1000), b"bye").await;
                let ended = async { while !matches!(rd.next().await, Read::End(_)) {} };
                let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// The sender publishes `missed` messages in each of `k` rooms, at most `window` of its own
/// copies outstanding, and returns each room's last seq.
async fn send_round(
    ctx: &Ctx,
    sender: &mut (WsReader, WsWriter),
    k: usize,
    missed: u64,
    window: u64,
    last: &mut [u64],
) -> Result<(), String> {
    let (rd, wr) = sender;
    let total = k as u64 * missed;
    let (mut sent, mut seen) = (0u64, 0u64);
    while seen < total {
        while sent < total && sent - seen < window.max(1) {
            let room = room_name((sent % k as u64) as usize);
            let frame = format!(r#"{{"type":"publish","room":"{room}","text":"t={sent}"}}"#);
            wr.text(frame.as_bytes())
                .await
                .map_err(|e| format!("sender: {e}"))?;
            sent += 1;
        }
        match tokio::time::timeout_at(ctx.deadline, rd.next()).await {
            Ok(Read::Frame(Frame::Message { payload })) => {
                if frame_type(payload) != Some(b"message") {
                    continue;
                }
                let room = str_field(payload, "room").and_then(room_index);
                if let (Some(i), Some(Some((seq, _)))) = (room, parse_message(payload)) {
                    if let Some(l) = last.get_mut(i) {
                        *l = (*l).max(seq);
                    }
                    seen += 1;
                }
            }
            Ok(Read::Frame(Frame::Ping(p))) => {
                let _ = wr.pong(p).await;
            }
            Ok(Read::Frame(_)) => {}
            Ok(Read::End(_)) | Err(_) => return Err("sender: no copy of every message".into()),
        }
    }
    Ok(())
}

/// One protocol's run on its own server.
async fn run_protocol(
    ctx: &Ctx,
    args: &V2ResumeArgs,
    protocol: Protocol,
) -> Result<(bool, Value), String> {
    let k = args.rooms;
    let connections = match protocol {
        Protocol::V1 => args.clients * k,
        Protocol::V2 => args.clients,
    };
    ctx.check_nofile(connections + 1);
    let history = i64::try_from(args.missed.max(1000)).unwrap_or(i64::MAX);
    let mut overrides = vec![
        (
            "server",
            "max_connections",
            super::max_connections(connections + 1),
        ),
        ("history", "size", toml::Value::Integer(history)),
        (
            "presence",
            "events",
            toml::Value::Boolean(args.presence_events),
        ),
    ];
    if k > 100 {
        let rooms = i64::try_from(k).unwrap_or(i64::MAX);
        overrides.push(("session", "max_rooms", toml::Value::Integer(rooms)));
    }
    let mut server = launch::start(&ctx.server, &overrides)?;
    let addr = server.addr;
    let label = match protocol {
        Protocol::V1 => "v1",
        Protocol::V2 => "v2",
    };
    eprintln!("v2-resume ({label}): server pid {} on {addr}", server.pid());

    // The sender, in every room.
    let (mut srd, mut swr) = client::connect_offering(addr, None, "/ws?name=sender", 7, Some(V2))
        .await
        .map_err(|e| format!("sender: {e}"))?;
    let rooms: Vec<String> = (0..k).map(room_name).collect();
    super::await_welcome(&mut srd, &mut swr)
        .await
        .map_err(|e| format!("sender: {e}"))?;
    super::join_rooms(&mut srd, &mut swr, &rooms)
        .await
        .map_err(|e| format!("sender: {e}"))?;
    let mut sender = (srd, swr);

    // The clients' first joins.
    let clients: Vec<Rc<Client>> = (0..args.clients)
        .map(|index| {
            Rc::new(Client {
                index,
                positions: RefCell::new(vec![Position::default(); k]),
            })
        })
        .collect();
    let mut last = vec![0u64; k];
    let mut held = Vec::new();
    {
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, last) = (c.clone(), last.clone());
                tokio::task::spawn_local(async move {
                    let r = RefCell::new(Resume::default());
                    let conns = connect_client(addr, protocol, &c, false, &last, 0, &r).await;
                    (conns, r.into_inner().error)
                })
            })
            .collect();
        for task in tasks {
            match tokio::time::timeout_at(ctx.deadline, task).await {
                Ok(Ok((conns, None))) => held.push(conns),
                Ok(Ok((_, Some(e)))) => return Err(format!("a first join failed: {e}")),
                _ => return Err("the first joins did not finish".into()),
            }
        }
    }
    eprintln!(
        "v2-resume ({label}): {} clients in {k} rooms ({connections} connections)",
        args.clients
    );

    let mut first_frame = new_histogram();
    let mut all_joined = new_histogram();
    let mut done = new_histogram();
    let mut rounds = Vec::new();
    let mut totals = Resume::default();
    let mut resumes = 0u64;
    let mut cpu_total = Duration::ZERO;
    let mut ok = true;
    for round in 0..args.repeat {
        for conns in held.drain(..) {
            disconnect(conns).await;
        }
        // The leaves reach the supervisor before the messages: they are missed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_round(ctx, &mut sender, k, args.missed, args.window, &mut last).await?;
        let cpu_before = server.cpu_time();
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, last) = (c.clone(), last.clone());
                let missed = args.missed;
                tokio::task::spawn_local(async move {
                    let r = RefCell::new(Resume::default());
                    let conns = connect_client(addr, protocol, &c, true, &last, missed, &r).await;
                    (conns, r.into_inner())
                })
            })
            .collect();
        let limit = (started + Duration::from_millis(args.wait_ms)).min(ctx.deadline);
        let mut round_done = Duration::ZERO;
        let mut round_ok = true;
        for task in tasks {
            match tokio::time::timeout_at(limit, task).await {
                Ok(Ok((conns, r))) => {
                    held.push(conns);
                    resumes += 1;
                    let complete = r.error.is_none()
                        && r.replayed == k as u64 * args.missed
                        && r.out_of_order == 0
                        && r.duplicates == 0
                        && r.not_resumed == 0
                        && r.wrong_missed == 0;
                    round_ok &= complete;
                    for (hist, value) in [
                        (&mut first_frame, r.first_frame),
                        (&mut all_joined, r.all_joined),
                        (&mut done, r.done),
                    ] {
                        if let Some(d) = value {
                            let _ = hist.record(micros(d));
                        }
                    }
                    round_done = round_done.max(r.done.unwrap_or_default());
                    totals.server_bytes += r.server_bytes;
                    totals.server_frames += r.server_frames;
                    totals.client_bytes += r.client_bytes;
                    totals.replayed += r.replayed;
                    totals.not_resumed += r.not_resumed;
                    totals.wrong_missed += r.wrong_missed;
                    totals.out_of_order += r.out_of_order;
                    totals.duplicates += r.duplicates;
                    if totals.error.is_none() {
                        totals.error = r.error;
                    }
                }
                _ => round_ok = false,
            }
        }
        let cpu = cpu_delta(cpu_before, server.cpu_time());
        cpu_total += cpu;
        ok &= round_ok;
        rounds.push(json!({
            "round": round,
            "complete": round_ok,
            "all_clients_done_ms": ms(round_done),
            "server_cpu_ms": ms(cpu),
        }));
        if !round_ok {
            break;
        }
    }
    for conns in held.drain(..) {
        disconnect(conns).await;
    }
    let stop = stop_json(&mut server, Duration::from_secs(15)).await;
    let per = |total: u64| {
        if resumes == 0 {
            Value::Null
        } else {
            json!((total as f64 / resumes as f64).round())
        }
    };
    let report = json!({
        "protocol": label,
        "rooms": k,
        "missed_per_room": args.missed,
        "presence_events": args.presence_events,
        "clients": args.clients,
        "connections_per_client": if protocol == Protocol::V1 { k } else { 1 },
        "repeat": args.repeat,
        "complete": ok,
        "resumes": resumes,
        "first_error": totals.error,
        "replayed": totals.replayed,
        "not_resumed": totals.not_resumed,
        "wrong_missed": totals.wrong_missed,
        "out_of_order": totals.out_of_order,
        "duplicates": totals.duplicates,
        "per_resume": {
            "server_bytes": per(totals.server_bytes),
            "server_frames": per(totals.server_frames),
            "client_bytes": per(totals.client_bytes),
            "server_bytes_per_replayed_message": if totals.replayed == 0 { Value::Null } else {
                json!((totals.server_bytes as f64 / totals.replayed as f64 * 10.0).round() / 10.0)
            },
        },
        "first_frame": hist_json(&first_frame),
        "all_joined": hist_json(&all_joined),
        "all_replayed": hist_json(&done),
        "server_cpu_ms": ms(cpu_total),
        "server_cpu_us_per_resume": if resumes == 0 { Value::Null } else {
            json!((cpu_total.as_secs_f64() * 1e6 / resumes as f64 * 10.0).round() / 10.0)
        },
        "server_cpu_ns_per_replayed_message": if totals.replayed == 0 { Value::Null } else {
            json!((cpu_total.as_nanos() as f64 / totals.replayed as f64).round())
        },
        "rounds": rounds,
        "server": stop,
    });
    Ok((ok, report))
}

/// `b / a` at a JSON pointer of two reports.
fn ratio(a: &Value, b: &Value, pointer: &str) -> Value {
    match (
        a.pointer(pointer).and_then(Value::as_f64),
        b.pointer(pointer).and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if a != 0.0 => json!((b / a * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

pub async fn run(ctx: &Ctx, args: &V2ResumeArgs) -> Result<Outcome, String> {
    if args.rooms == 0 || args.clients == 0 || args.missed == 0 {
        return Err("v2-resume needs rooms, clients and missed messages above 0".into());
    }
    let (v2_ok, v2) = run_protocol(ctx, args, Protocol::V2).await?;
    let mut runs = vec![v2.clone()];
    let mut ok = v2_ok;
    let mut ratios = Value::Null;
    if args.v1 {
        let (v1_ok, v1) = run_protocol(ctx, args, Protocol::V1).await?;
        ok &= v1_ok;
        let pointers = [
            "/all_replayed/p50_ms",
            "/all_replayed/p99_ms",
            "/all_joined/p50_ms",
            "/per_resume/server_bytes",
            "/per_resume/client_bytes",
            "/per_resume/server_frames",
            "/server_cpu_us_per_resume",
        ];
        let mut m = serde_json::Map::new();
        for p in pointers {
            m.insert(
                p.trim_start_matches('/').replace('/', "."),
                ratio(&v2, &v1, p),
            );
        }
        ratios = Value::Object(m);
        runs.push(v1);
    }
    Ok(Outcome {
        report: json!({
            "scenario": "v2-resume",
            "complete": ok,
            "runs": runs,
            "v1_over_v2": ratios,
        }),
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_and_frames() {
        assert_eq!(room_index(b"resume-7"), Some(7));
        assert_eq!(room_index(b"other-7"), None);
        let p = Position {
            epoch: "e1".into(),
            seq: 41,
        };
        assert_eq!(
            join_frame(3, Some(&p)),
            r#"{"type":"join","room":"resume-3","since":41,"epoch":"e1"}"#
        );
        assert_eq!(join_frame(0, None), r#"{"type":"join","room":"resume-0"}"#);
        assert_eq!(client_frame_bytes(10), 16);
    }
}
