//! `fanout N M`: N members of room "fanout"; member 0 sends M messages, each carrying its
//! send time (`t=<nanos since a base Instant>`), keeping at most W in flight (sent minus
//! what the slowest receiver has). Measures deliveries per second, send→receive latency,
//! losses and order violations. Receivers find `"seq":` and `"text":"t=` by byte search
//! instead of parsing JSON: the server serializes these fields itself. With `--v2-rooms K`
//! the members speak `wsgrace.v2`: each joins the room and K - 1 quiet rooms, and the
//! senders publish with an `id` (as a v2 client does, so the dedupe is paid for).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::{
    connect_many, hist_json, micros, ms, new_histogram, stop_json, ConnectStats, Ctx, Membership,
    Outcome,
};
use crate::client::{Frame, Read, WsReader, WsWriter};
use crate::launch;
use crate::perf::Perf;
use wsgrace_kit::proc_stats::own_rss;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Members of the room.
    pub n: usize,
    /// Messages member 0 sends.
    pub m: usize,
    /// Messages in flight at most: sent minus those the slowest receiver has.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Send rate limit in messages per second; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// After the last send, wait at most this long for the deliveries, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// session.outbound_queue for the server: large, so no member is a slow consumer.
    #[arg(long, default_value_t = 65_536)]
    pub outbound_queue: i64,
    /// 0: protocol v1. K > 0: `wsgrace.v2`, each member in the measured room and K - 1
    /// quiet rooms (`quiet-0`, ... out of a pool of `--room-pool`).
    #[arg(long, default_value_t = 0)]
    pub v2_rooms: usize,
    /// With `--v2-rooms K`: how many quiet rooms there are in all (at least K - 1).
    #[arg(long, default_value_t = 0)]
    pub room_pool: usize,
    /// Count the server's write system calls over the send (`perf stat`), and so the
    /// deliveries per write call. Tracing system calls slows each one a little: the CPU per
    /// delivery of such a run is not comparable with a run without it.
    #[arg(long)]
    pub count_writes: bool,
    /// `perf record -g` the server over the send into DIR/<binary>.fanout.perf.data. Sampling
    /// costs CPU too: compare CPU per delivery between runs without it.
    #[arg(long, value_name = "DIR")]
    pub perf_record: Option<std::path::PathBuf>,
    /// Chat lines to send (one per line, used in turn after the `t=` stamp), e.g.
    /// `bench/corpus/chat_lines.txt`; without it a message is the stamp alone.
    #[arg(long)]
    pub corpus: Option<std::path::PathBuf>,
}

impl FanoutArgs {
    /// The same run over protocol v1.
    pub fn as_v1(&self) -> FanoutArgs {
        FanoutArgs {
            v2_rooms: 0,
            ..self.clone()
        }
    }
}

/// State shared by the sender and all receivers (one thread: cells suffice).
struct Shared {
    n: usize,
    base: Instant,
    /// `reached[k]`: receivers that have k+1 messages or more.
    reached: Vec<Cell<u32>>,
    /// Messages every receiver has (the slowest receiver's count).
    slowest: Cell<u64>,
    window_open: Notify,
    received: Cell<u64>,
    expected: u64,
    all_received: Notify,
    last_delivery: Cell<Option<Instant>>,
    latency: RefCell<Histogram<u64>>,
    out_of_order: Cell<u64>,
    gaps: Cell<u64>,
    regressions: Cell<u64>,
    unparsed: Cell<u64>,
    other_types: Cell<u64>,
    /// Close frames seen before the scenario stopped the server: code → count.
    early_closes: RefCell<BTreeMap<String, u64>>,
    ended_early: Cell<u64>,
    stopping: Cell<bool>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut any = false;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// `(seq, t)` of a chat message, `None` for other types or unparsable text.
pub(crate) fn parse_message(payload: &[u8]) -> Option<Option<(u64, u64)>> {
    const TYPE: &[u8] = br#"{"type":"message""#;
    if !payload.starts_with(TYPE) && find(payload, br#""type":"message""#).is_none() {
        return None;
    }
    let seq = find(payload, br#""seq":"#).and_then(|i| digits(&payload[i + 6..]));
    let t = find(payload, br#""text":"t="#).and_then(|i| digits(&payload[i + 10..]));
    Some(seq.zip(t))
}

async fn receiver(mut rd: WsReader, wr: Rc<Mutex<WsWriter>>, shared: Rc<Shared>) {
    let mut count: usize = 0;
    let mut last_seq: u64 = 0;
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload, .. }) => {
                let now = Instant::now();
                let Some(parsed) = parse_message(payload) else {
                    shared.other_types.set(shared.other_types.get() + 1);
                    continue;
                };
                let Some((seq, t)) = parsed else {
                    shared.unparsed.set(shared.unparsed.get() + 1);
                    continue;
                };
                if seq != last_seq + 1 {
                    shared.out_of_order.set(shared.out_of_order.get() + 1);
                    if seq > last_seq {
                        shared.gaps.set(shared.gaps.get() + 1);
                    } else {
                        shared.regressions.set(shared.regressions.get() + 1);
                    }
                }
                last_seq = seq;
                let sent = shared.base + Duration::from_nanos(t);
                let _ = shared
                    .latency
                    .borrow_mut()
                    .record(micros(now.saturating_duration_since(sent)));
                if let Some(reached) = shared.reached.get(count) {
                    reached.set(reached.get() + 1);
                    if reached.get() as usize == shared.n {
                        shared.slowest.set(shared.slowest.get() + 1);
                        shared.window_open.notify_one();
                    }
                }
                count += 1;
                let received = shared.received.get() + 1;
                shared.received.set(received);
                shared.last_delivery.set(Some(now));
                if received == shared.expected {
                    shared.all_received.notify_one();
                }
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.lock().await.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                if !shared.stopping.get() {
                    let key = code.map_or("none".to_string(), |c| c.to_string());
                    *shared.early_closes.borrow_mut().entry(key).or_default() += 1;
                }
                let _ = wr.lock().await.close(code, b"").await;
            }
            Read::End(_) => {
                if !shared.stopping.get() {
                    shared.ended_early.set(shared.ended_early.get() + 1);
                    // The window can no longer open, nor every delivery arrive: wake the
                    // sender so that it gives up now rather than at the deadline.
                    shared.window_open.notify_one();
                    shared.all_received.notify_one();
                }
                return;
            }
        }
    }
}

pub async fn run(ctx: &Ctx, args: &FanoutArgs) -> Result<Outcome, String> {
    if args.n == 0 {
        return Err("fanout needs at least one member".into());
    }
    let overrides = [
        ("server", "max_connections", super::max_connections(args.n)),
        (
            "session",
            "outbound_queue",
            toml::Value::Integer(args.outbound_queue),
        ),
    ];
    ctx.check_nofile(args.n);
    let mut server = launch::start(&ctx.server, &overrides)?;
    eprintln!("fanout: server pid {} on {}", server.pid(), server.addr);
    let load = Load::join(ctx, &[server.addr], args, "fanout", 1).await;
    let perf = start_perf(args, server.pid(), &ctx.server.binary).await;
    let cpu_before = server.cpu_time();
    crate::client::reset_wire_counts();
    let result = load.send(ctx, args).await;
    let delivered_wire = crate::client::wire_counts();
    let rss = server.rss();
    // Server CPU per delivery: a cost that does not depend on how busy the machine is.
    let server_cpu = match (cpu_before, server.cpu_time()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => Duration::ZERO,
    };
    let perf = match perf {
        Some(Ok(perf)) => Some(perf.stop().await),
        Some(Err(e)) => Some(json!({ "error": e })),
        None => None,
    };
    eprintln!(
        "fanout: {}/{} delivered; stopping the server",
        result.received, result.expected
    );
    // Everything is read before the stop: deliveries during the drain are not the run's.
    let mut report = load.report(args, &result, server_cpu);
    let ok = result.ok;
    let stop = stop_json(&mut server, Duration::from_secs(15)).await;
    if let Some(obj) = report.as_object_mut() {
        obj.insert("scenario".into(), json!("fanout"));
        obj.insert("server_rss_bytes".into(), json!(rss));
        obj.insert("server".into(), stop);
        if let Some(mut perf) = perf {
            // Deliveries per socket send: how many frames the server puts in one write call.
            let calls = perf.get("socket_sends").and_then(Value::as_u64);
            if let (Some(calls), Some(m)) = (calls.filter(|c| *c > 0), perf.as_object_mut()) {
                let per_call = result.received as f64 / calls as f64;
                m.insert(
                    "deliveries_per_write_call".into(),
                    json!((per_call * 100.0).round() / 100.0),
                );
            }
            let key = if args.count_writes {
                "server_writes"
            } else {
                "perf_record"
            };
            obj.insert(key.into(), perf);
        }
        obj.insert(
            "delivered_wire".into(),
            crate::client::wire_json(delivered_wire),
        );
        obj.insert(
            "corpus".into(),
            json!(args.corpus.as_ref().map(|p| p.display().to_string())),
        );
    }
    Ok(Outcome { report, ok })
}

/// `perf` on the server for the send, when asked: `--count-writes` or `--perf-record`.
async fn start_perf(
    args: &FanoutArgs,
    pid: u32,
    binary: &std::path::Path,
) -> Option<Result<Perf, String>> {
    if args.count_writes {
        return Some(Perf::count_writes(pid).await);
    }
    let dir = args.perf_record.as_ref()?;
    let name = binary
        .file_name()
        .map_or("server".into(), |n| n.to_string_lossy().into_owned());
    Some(Perf::record(pid, &dir.join(format!("{name}.fanout.perf.data"))).await)
}

/// A member's writer, shared by its reader (pongs, close replies) and the send loop.
type SharedWriter = Rc<Mutex<WsWriter>>;

/// One room's members joined on one or more servers, and the senders among them.
pub struct Load {
    shared: Rc<Shared>,
    /// The senders' writers: member k (k < senders) is on server k % servers.
    writers: Vec<SharedWriter>,
    stats: Rc<ConnectStats>,
    connected_all: bool,
    /// The room, for v2 publish frames; `None` on v1 (a text frame is a message).
    v2_room: Option<String>,
}

/// What a `Load::send` did.
pub struct SendResult {
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub ok: bool,
    timed_out: bool,
    member_lost: bool,
    send_error: Option<String>,
    duration: Duration,
    send_duration: Duration,
}

impl Load {
    /// Joins `args.n` members to `room`, member i on `addrs[i % addrs.len()]`; members
    /// `0..senders` are the senders (so with two servers and two senders, one on each).
    pub async fn join(
        ctx: &Ctx,
        addrs: &[SocketAddr],
        args: &FanoutArgs,
        room: &str,
        senders: usize,
    ) -> Load {
        let shared = Rc::new(Shared {
            n: args.n,
            base: Instant::now(),
            reached: (0..args.m).map(|_| Cell::new(0)).collect(),
            slowest: Cell::new(0),
            window_open: Notify::new(),
            received: Cell::new(0),
            expected: (args.n * args.m) as u64,
            all_received: Notify::new(),
            last_delivery: Cell::new(None),
            latency: RefCell::new(new_histogram()),
            out_of_order: Cell::new(0),
            gaps: Cell::new(0),
            regressions: Cell::new(0),
            unparsed: Cell::new(0),
            other_types: Cell::new(0),
            early_closes: RefCell::new(BTreeMap::new()),
            ended_early: Cell::new(0),
            stopping: Cell::new(false),
        });
        let writers: Rc<RefCell<Vec<Option<SharedWriter>>>> =
            Rc::new(RefCell::new(vec![None; senders]));
        let stats = Rc::new(ConnectStats::default());
        let servers = addrs.len().max(1);
        let mut connected_all = true;
        for (k, addr) in addrs.iter().enumerate() {
            // Members k, k + servers, k + 2·servers, ... go to server k.
            let count = (args.n + servers - 1 - k) / servers;
            let global = move |i: usize| k + i * servers;
            let on_connected = {
                let (shared, writers) = (shared.clone(), writers.clone());
                Rc::new(move |i: usize, rd, wr| {
                    let wr = Rc::new(Mutex::new(wr));
                    if let Some(slot) = writers.borrow_mut().get_mut(global(i)) {
                        *slot = Some(wr.clone());
                    }
                    tokio::task::spawn_local(receiver(rd, wr, shared.clone()));
                })
            };
            let (path, membership): (Rc<dyn Fn(usize) -> String>, _) = match args.v2_rooms {
                0 => {
                    let room = room.to_string();
                    let path = move |i| format!("/ws?room={room}&name=m{}", global(i));
                    (Rc::new(path), Membership::V1)
                }
                k => {
                    let membership = Membership::v2_rooms("quiet", Some(room), k, args.room_pool);
                    (
                        Rc::new(move |i| format!("/ws?name=m{}", global(i))),
                        membership,
                    )
                }
            };
            let connecting = connect_many(
                *addr,
                count,
                args.concurrency,
                Rc::new(Vec::new()),
                path,
                membership,
                on_connected,
                stats.clone(),
            );
            connected_all &= tokio::time::timeout_at(ctx.deadline, connecting)
                .await
                .is_ok();
        }
        connected_all &= stats.connected.get() == args.n;
        let writers: Vec<_> = writers.borrow_mut().drain(..).flatten().collect();
        connected_all &= writers.len() == senders;
        Load {
            shared,
            writers,
            stats,
            connected_all,
            v2_room: (args.v2_rooms > 0).then(|| room.to_owned()),
        }
    }

    /// Sends `args.m` messages, round robin over the senders, within the window, then
    /// waits for the deliveries (up to `args.wait_ms`).
    pub async fn send(&self, ctx: &Ctx, args: &FanoutArgs) -> SendResult {
        let shared = &self.shared;
        let mut sent: u64 = 0;
        let mut send_error = None;
        let mut first_send = None;
        let mut last_send = None;
        let mut timed_out = !self.connected_all;
        if self.connected_all && !self.writers.is_empty() {
            eprintln!(
                "fanout: {} members joined; sending {} messages from {} sender(s)",
                args.n,
                args.m,
                self.writers.len()
            );
            let corpus: Vec<String> = match &args.corpus {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => text
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    Err(e) => {
                        eprintln!("fanout: cannot read {}: {e}", path.display());
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            let mut text = Vec::with_capacity(32);
            let start = Instant::now();
            first_send = Some(start);
            'send: for i in 0..args.m as u64 {
                while sent - shared.slowest.get() >= args.window {
                    if shared.ended_early.get() > 0 {
                        break 'send;
                    }
                    let wait = shared.window_open.notified();
                    if tokio::time::timeout_at(ctx.deadline, wait).await.is_err() {
                        timed_out = true;
                        break 'send;
                    }
                }
                if args.rate > 0.0 {
                    let at = start + Duration::from_secs_f64(i as f64 / args.rate);
                    tokio::time::sleep_until(at.min(ctx.deadline)).await;
                }
                text.clear();
                let now = Instant::now();
                let t = now.duration_since(shared.base).as_nanos();
                let line = match corpus.len() {
                    0 => String::new(),
                    n => format!(" {}", corpus[i as usize % n]),
                };
                let _ = match &self.v2_room {
                    None => write!(text, "t={t}{line}"),
                    Some(room) => {
                        let body = serde_json::to_string(&format!("t={t}{line}"))
                            .unwrap_or_else(|_| format!("\"t={t}\""));
                        write!(
                            text,
                            r#"{{"type":"publish","room":"{room}","id":"p{i}","text":{body}}}"#
                        )
                    }
                };
                let writer = &self.writers[i as usize % self.writers.len()];
                if let Err(e) = writer.lock().await.text(&text).await {
                    send_error = Some(e.to_string());
                    break;
                }
                sent += 1;
                last_send = Some(now);
                if now >= ctx.deadline {
                    timed_out = true;
                    break;
                }
            }
            if !timed_out {
                let limit =
                    (Instant::now() + Duration::from_millis(args.wait_ms)).min(ctx.deadline);
                while shared.received.get() < sent * args.n as u64 && shared.ended_early.get() == 0
                {
                    let wait = shared.all_received.notified();
                    if tokio::time::timeout_at(limit, wait).await.is_err() {
                        break;
                    }
                }
            }
        } else {
            eprintln!(
                "fanout: only {} of {} members joined",
                self.stats.connected.get(),
                args.n
            );
        }
        shared.stopping.set(true);
        let received = shared.received.get();
        let expected = sent * args.n as u64;
        let lost = expected.saturating_sub(received);
        let member_lost = shared.ended_early.get() > 0;
        let ok = !timed_out
            && !member_lost
            && send_error.is_none()
            && sent == args.m as u64
            && lost == 0;
        let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        SendResult {
            sent,
            expected,
            received,
            lost,
            ok,
            timed_out,
            member_lost,
            send_error,
            duration: span(first_send, shared.last_delivery.get()),
            send_duration: span(first_send, last_send),
        }
    }

    /// Sends `args.m` messages through the server API instead of a member: `connections`
    /// keep-alive HTTP/1.1 connections spread over `apis`, each posting its next message once
    /// the last one was answered (so at most `connections` in flight), the text carrying its
    /// send time as a member's does; then waits for the deliveries. Returns the result and
    /// the API's answer latency.
    pub async fn send_via_api(
        &self,
        ctx: &Ctx,
        args: &FanoutArgs,
        apis: &[(SocketAddr, String)],
        connections: usize,
    ) -> (SendResult, Histogram<u64>) {
        let shared = self.shared.clone();
        let next = Rc::new(Cell::new(0u64));
        let sent = Rc::new(Cell::new(0u64));
        let answer_latency = Rc::new(RefCell::new(new_histogram()));
        let send_error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
        let start = Instant::now();
        let last_send = Rc::new(Cell::new(None));
        let mut timed_out = !self.connected_all;
        if self.connected_all {
            eprintln!(
                "api-publish: {} members joined; posting {} messages over {connections} connections",
                args.n, args.m
            );
            let tasks: Vec<_> = (0..connections.max(1))
                .map(|c| {
                    let (addr, key) = apis[c % apis.len()].clone();
                    let (shared, next, sent) = (shared.clone(), next.clone(), sent.clone());
                    let (answers, error) = (answer_latency.clone(), send_error.clone());
                    let last_send = last_send.clone();
                    let m = args.m as u64;
                    tokio::task::spawn_local(async move {
                        let mut api = match crate::api_client::ApiConnection::open(addr, &key).await
                        {
                            Ok(api) => api,
                            Err(err) => {
                                *error.borrow_mut() = Some(err.to_string());
                                return;
                            }
                        };
                        loop {
                            let i = next.get();
                            if i >= m || error.borrow().is_some() {
                                return;
                            }
                            next.set(i + 1);
                            let now = Instant::now();
                            let t = now.duration_since(shared.base).as_nanos();
                            let body =
                                format!(r#"{{"room":"fanout","text":"t={t}","from":"api"}}"#);
                            match api.publish(&body).await {
                                Ok(200) => {
                                    sent.set(sent.get() + 1);
                                    last_send.set(Some(now));
                                    let _ = answers.borrow_mut().record(micros(now.elapsed()));
                                }
                                Ok(status) => {
                                    *error.borrow_mut() = Some(format!("HTTP {status}"));
                                    return;
                                }
                                Err(err) => {
                                    *error.borrow_mut() = Some(err.to_string());
                                    return;
                                }
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                if tokio::time::timeout_at(ctx.deadline, task).await.is_err() {
                    timed_out = true;
                }
            }
            if !timed_out {
                let limit =
                    (Instant::now() + Duration::from_millis(args.wait_ms)).min(ctx.deadline);
                while shared.received.get() < sent.get() * args.n as u64
                    && shared.ended_early.get() == 0
                {
                    let wait = shared.all_received.notified();
                    if tokio::time::timeout_at(limit, wait).await.is_err() {
                        break;
                    }
                }
            }
        }
        shared.stopping.set(true);
        let sent = sent.get();
        let received = shared.received.get();
        let expected = sent * args.n as u64;
        let lost = expected.saturating_sub(received);
        let member_lost = shared.ended_early.get() > 0;
        let send_error = send_error.borrow().clone();
        let ok = !timed_out
            && !member_lost
            && send_error.is_none()
            && sent == args.m as u64
            && lost == 0;
        let span =
            |b: Option<Instant>| b.map_or(Duration::ZERO, |b| b.saturating_duration_since(start));
        let result = SendResult {
            sent,
            expected,
            received,
            lost,
            ok,
            timed_out,
            member_lost,
            send_error,
            duration: span(shared.last_delivery.get()),
            send_duration: span(last_send.get()),
        };
        let answers = answer_latency.borrow().clone();
        (result, answers)
    }

    /// The report's common part; `server_cpu` is the servers' CPU time over the send.
    pub fn report(&self, args: &FanoutArgs, r: &SendResult, server_cpu: Duration) -> Value {
        let shared = &self.shared;
        let rate = |count: u64, d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                (count as f64 / d.as_secs_f64()).round()
            }
        };
        let cpu_ns_per_delivery = if r.received == 0 {
            0.0
        } else {
            (server_cpu.as_nanos() as f64 / r.received as f64).round()
        };
        json!({
            "n": args.n,
            "m": args.m,
            "protocol": if args.v2_rooms == 0 { "v1" } else { "v2" },
            "rooms_per_member": args.v2_rooms.max(1),
            "window": args.window,
            "rate_limit": args.rate,
            "senders": self.writers.len(),
            "complete": r.ok,
            "timed_out": r.timed_out,
            "stopped_early_member_lost": r.member_lost,
            "connect": self.stats.json(),
            "sent": r.sent,
            "send_error": r.send_error,
            "expected": r.expected,
            "received": r.received,
            "lost": r.lost,
            "out_of_order": shared.out_of_order.get(),
            "seq_gaps": shared.gaps.get(),
            "seq_regressions": shared.regressions.get(),
            "unparsed": shared.unparsed.get(),
            "other_types": shared.other_types.get(),
            "early_closes": *shared.early_closes.borrow(),
            "ended_early": shared.ended_early.get(),
            "duration_ms": ms(r.duration),
            "send_duration_ms": ms(r.send_duration),
            "sends_per_s": rate(r.sent, r.send_duration),
            "deliveries_per_s": rate(r.received, r.duration),
            "latency": hist_json(&shared.latency.borrow()),
            "server_cpu_ms": ms(server_cpu),
            "server_cpu_ns_per_delivery": cpu_ns_per_delivery,
            "loadgen_rss_bytes": own_rss(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chat_messages() {
        let m = br#"{"type":"message","room":"fanout","from":"m0","text":"t=12345","seq":7}"#;
        assert_eq!(parse_message(m), Some(Some((7, 12345))));
        assert_eq!(
            parse_message(br#"{"type":"welcome","room":"r","name":"n"}"#),
            None
        );
        let bad = br#"{"type":"message","room":"r","from":"x","text":"hi","seq":1}"#;
        assert_eq!(parse_message(bad), Some(None));
        // v1 members get presence frames too (issue 22): not messages, whatever the name.
        for other in [
            &br#"{"type":"presence_join","room":"fanout","name":"m3"}"#[..],
            br#"{"type":"presence_leave","room":"fanout","name":"message"}"#,
        ] {
            assert_eq!(parse_message(other), None);
        }
    }
}
