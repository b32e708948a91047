//! `v2-joins C K`: how fast `wsgrace.v2` connections join rooms (issue 26, item 5). Opens C
//! v2 connections (their upgrade and `hello` are not measured), then all at once each joins K
//! rooms with at most `--window` joins in flight per connection (`ref` = the join's index),
//! reading every `joined`; then, unless `--no-leave`, each leaves them again the same way.
//! Every connection is read all along (between the phases too, and until the server is
//! stopped), so that presence frames never pile up unread in the server.
//! Connection i joins rooms `j-{(i·K + k) mod P}` for k < K out of a pool of P rooms
//! (`--room-pool`; default K: every connection in the same K rooms). One server, local broker.
//!
//! Reports for each phase: answers per second (first frame sent → last answer), the
//! answer's latency (sent → `joined`/`left`), refusals, the server's CPU per join or leave,
//! and, after the joins, the server's RSS growth per membership. It owns this scenario's load
//! and report only; connecting is `mod.rs`'s (`connect_many`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

use tokio::sync::Notify;

use super::{
    connect_many, frame_type, hist_json, idle, micros, ms, new_histogram, stop_json, str_field,
    ConnectStats, Ctx, Membership, Outcome,
};
use crate::client::{Frame, Read, WsReader, WsWriter};
use crate::launch;

#[derive(Debug, Clone, clap::Args)]
pub struct V2JoinsArgs {
    /// Connections that join.
    pub connections: usize,
    /// Rooms each connection joins.
    pub rooms: usize,
    /// Rooms in all (at least K; K: every connection joins the same K rooms).
    #[arg(long, default_value_t = 0)]
    pub room_pool: usize,
    /// Joins (or leaves) in flight per connection at most.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Handshakes in flight at once while opening the connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measure the joins only.
    #[arg(long)]
    pub no_leave: bool,
    /// Wait this long after the joins before reading the RSS, in ms.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
}

/// What the connections of one phase add up to.
struct Phase {
    answered: Cell<u64>,
    refused: Cell<u64>,
    first_error: RefCell<Option<String>>,
    latency: RefCell<Histogram<u64>>,
    last_answer: Cell<Option<Instant>>,
    ended: Cell<u64>,
    /// Other frames read meanwhile (presence frames of the rooms joined).
    other_frames: Cell<u64>,
    /// Connections done with the phase (or ended), and a wake-up for each.
    finished: Cell<usize>,
    progress: Notify,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            answered: Cell::new(0),
            refused: Cell::new(0),
            first_error: RefCell::new(None),
            latency: RefCell::new(new_histogram()),
            last_answer: Cell::new(None),
            ended: Cell::new(0),
            other_frames: Cell::new(0),
            finished: Cell::new(0),
            progress: Notify::new(),
        }
    }

    fn finish(&self) {
        self.finished.set(self.finished.get() + 1);
        self.progress.notify_one();
    }

    /// Waits until `n` connections have finished the phase; false at the deadline.
    async fn wait_finished(&self, n: usize, deadline: Instant) -> bool {
        while self.finished.get() < n {
            if tokio::time::timeout_at(deadline, self.progress.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// When the leave phase may start.
#[derive(Default)]
struct Gate {
    open: Cell<bool>,
    notify: Notify,
}

/// Reads (answering pings, counting frames in `between`) until the gate opens; false if the
/// connection ended first.
async fn read_until_open(
    conn: &mut (WsReader, WsWriter),
    gate: &Gate,
    between: &Cell<u64>,
) -> bool {
    let (rd, wr) = conn;
    loop {
        if gate.open.get() {
            return true;
        }
        tokio::select! {
            biased;
            _ = gate.notify.notified() => {}
            frame = rd.next() => match frame {
                Read::Frame(Frame::Ping(p)) => {
                    let _ = wr.pong(p).await;
                }
                Read::Frame(Frame::Message { .. }) => between.set(between.get() + 1),
                Read::Frame(_) => {}
                Read::End(_) => return false,
            },
        }
    }
}

/// One connection's whole run: the joins, reading until the leaves may start, the leaves,
/// then reading until the end (the server's stop).
async fn connection(
    mut conn: (WsReader, WsWriter),
    rooms: Vec<String>,
    window: usize,
    joins: Rc<Phase>,
    leaves: Option<(Rc<Gate>, Rc<Phase>)>,
    between: Rc<Cell<u64>>,
) {
    run_phase(&mut conn, &rooms, "join", b"joined", window, &joins).await;
    joins.finish();
    if let Some((gate, leaves)) = leaves {
        if read_until_open(&mut conn, &gate, &between).await {
            run_phase(&mut conn, &rooms, "leave", b"left", window, &leaves).await;
        } else {
            leaves.ended.set(leaves.ended.get() + 1);
        }
        leaves.finish();
    }
    let (rd, wr) = conn;
    idle(rd, wr, false).await;
}

/// One connection's part of a phase: `verb` (join or leave) each of `rooms`, at most
/// `window` unanswered, until each is answered (`answer`) or refused (`error`).
async fn run_phase(
    conn: &mut (WsReader, WsWriter),
    rooms: &[String],
    verb: &str,
    answer: &[u8],
    window: usize,
    phase: &Phase,
) {
    let (rd, wr) = conn;
    let mut sent_at: Vec<Option<Instant>> = vec![None; rooms.len()];
    let (mut next, mut done) = (0usize, 0usize);
    while done < rooms.len() {
        while next < rooms.len() && next - done < window.max(1) {
            let frame = format!(
                r#"{{"type":"{verb}","room":"{}","ref":"{next}"}}"#,
                rooms[next]
            );
            sent_at[next] = Some(Instant::now());
            if let Err(e) = wr.text(frame.as_bytes()).await {
                phase.first_error.borrow_mut().get_or_insert(e.to_string());
                phase.ended.set(phase.ended.get() + 1);
                return;
            }
            next += 1;
        }
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                let kind = frame_type(payload);
                let refused = kind == Some(&b"error"[..]);
                if kind != Some(answer) && !refused {
                    phase.other_frames.set(phase.other_frames.get() + 1);
                    continue;
                }
                let now = Instant::now();
                let index = str_field(payload, "ref")
                    .and_then(|r| std::str::from_utf8(r).ok()?.parse::<usize>().ok());
                if let Some(sent) = index.and_then(|i| sent_at.get_mut(i)?.take()) {
                    let _ = phase
                        .latency
                        .borrow_mut()
                        .record(micros(now.saturating_duration_since(sent)));
                }
                if refused {
                    phase.refused.set(phase.refused.get() + 1);
                    let mut first = phase.first_error.borrow_mut();
                    if first.is_none() {
                        *first = Some(String::from_utf8_lossy(payload).into_owned());
                    }
                } else {
                    phase.answered.set(phase.answered.get() + 1);
                }
                phase.last_answer.set(Some(now));
                done += 1;
            }
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(_) => {}
            Read::End(end) => {
                phase
                    .first_error
                    .borrow_mut()
                    .get_or_insert(format!("connection ended: {end:?}"));
                phase.ended.set(phase.ended.get() + 1);
                return;
            }
        }
    }
}

/// A phase's numbers; `cpu` is the server's CPU time over it.
fn phase_json(phase: &Phase, start: Instant, cpu: Option<Duration>, timed_out: bool) -> Value {
    let answered = phase.answered.get() + phase.refused.get();
    let span = phase
        .last_answer
        .get()
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
    json!({
        "answered": phase.answered.get(),
        "refused": phase.refused.get(),
        "connections_ended": phase.ended.get(),
        "other_frames_read": phase.other_frames.get(),
        "first_error": *phase.first_error.borrow(),
        "timed_out": timed_out,
        "duration_ms": ms(span),
        "per_s": if span.is_zero() { Value::Null } else {
            json!((answered as f64 / span.as_secs_f64()).round())
        },
        "latency": hist_json(&phase.latency.borrow()),
        "server_cpu_ms": cpu.map(ms),
        "server_cpu_us_per_answer": match cpu {
            Some(cpu) if answered > 0 => json!((cpu.as_secs_f64() * 1e6 / answered as f64 * 100.0).round() / 100.0),
            _ => Value::Null,
        },
    })
}

pub async fn run(ctx: &Ctx, args: &V2JoinsArgs) -> Result<Outcome, String> {
    if args.connections == 0 || args.rooms == 0 {
        return Err("v2-joins needs at least one connection and one room".into());
    }
    let mut overrides = vec![(
        "server",
        "max_connections",
        super::max_connections(args.connections),
    )];
    if args.rooms > 100 {
        let rooms = i64::try_from(args.rooms).unwrap_or(i64::MAX);
        overrides.push(("session", "max_rooms", toml::Value::Integer(rooms)));
    }
    ctx.check_nofile(args.connections);
    let mut server = launch::start(&ctx.server, &overrides)?;
    eprintln!("v2-joins: server pid {} on {}", server.pid(), server.addr);

    let conns: Rc<RefCell<Vec<(WsReader, WsWriter)>>> = Rc::new(RefCell::new(Vec::new()));
    let stats = Rc::new(ConnectStats::default());
    let on_connected: Rc<dyn Fn(usize, WsReader, WsWriter)> = {
        let conns = conns.clone();
        Rc::new(move |_, rd, wr| conns.borrow_mut().push((rd, wr)))
    };
    let connecting = connect_many(
        server.addr,
        args.connections,
        args.concurrency,
        Rc::new(Vec::new()),
        Rc::new(|i| format!("/ws?name=j{i}")),
        Membership::V2(Rc::new(|_| Vec::new())),
        on_connected,
        stats.clone(),
    );
    let connected_all = tokio::time::timeout_at(ctx.deadline, connecting)
        .await
        .is_ok()
        && stats.connected.get() == args.connections;
    let conns: Vec<_> = conns.borrow_mut().drain(..).collect();
    eprintln!(
        "v2-joins: {} connections open; each joins {} rooms",
        conns.len(),
        args.rooms
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (k, pool) = (args.rooms, args.room_pool.max(args.rooms));
    let rooms: Rc<dyn Fn(usize) -> Vec<String>> = Rc::new(move |i| {
        (0..k)
            .map(|j| format!("j-{}", (i * k + j) % pool))
            .collect()
    });
    let memberships = (conns.len() * k) as u64;

    let n = conns.len();
    let joins = Rc::new(Phase::new());
    let leaves = (!args.no_leave).then(|| (Rc::new(Gate::default()), Rc::new(Phase::new())));
    let between = Rc::new(Cell::new(0u64));
    let rss_before = server.rss();
    let cpu_before = server.cpu_time();
    let join_start = Instant::now();
    for (i, conn) in conns.into_iter().enumerate() {
        tokio::task::spawn_local(connection(
            conn,
            rooms(i),
            args.window,
            joins.clone(),
            leaves.clone(),
            between.clone(),
        ));
    }
    let join_timed_out = !joins.wait_finished(n, ctx.deadline).await;
    let cpu_joins = server
        .cpu_time()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    let settle = Instant::now() + Duration::from_millis(args.settle_ms);
    tokio::time::sleep_until(settle.min(ctx.deadline)).await;
    let rss_after = server.rss();
    let per_membership = match (rss_before, rss_after) {
        (Some(b), Some(a)) if memberships > 0 => Some(a.saturating_sub(b) / memberships),
        _ => None,
    };

    let mut leave_report = Value::Null;
    let mut leaves_ok = true;
    if let Some((gate, leaves)) = &leaves {
        let cpu_before = server.cpu_time();
        let start = Instant::now();
        gate.open.set(true);
        gate.notify.notify_waiters();
        let timed_out = !leaves.wait_finished(n, ctx.deadline).await;
        let cpu = server
            .cpu_time()
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        leaves_ok = !timed_out && leaves.answered.get() == memberships;
        leave_report = phase_json(leaves, start, cpu, timed_out);
    }
    // The connections are read until the server has stopped (they answer its close).
    let stop = stop_json(&mut server, Duration::from_secs(15)).await;
    let ok = connected_all && !join_timed_out && joins.answered.get() == memberships && leaves_ok;
    let report = json!({
        "scenario": "v2-joins",
        "connections": args.connections,
        "rooms_per_connection": k,
        "room_pool": pool,
        "members_per_room": members_per_room(args.connections, k, pool),
        "window": args.window,
        "complete": ok,
        "connect": stats.json(),
        "memberships": memberships,
        "joins": phase_json(&joins, join_start, cpu_joins, join_timed_out),
        "rss_before_bytes": rss_before,
        "rss_after_joins_bytes": rss_after,
        "rss_per_membership_bytes": per_membership,
        "frames_read_between_phases": between.get(),
        "leaves": leave_report,
        "server": stop,
    });
    Ok(Outcome { report, ok })
}

/// Members per room when C connections each join K rooms out of P (on average).
fn members_per_room(c: usize, k: usize, pool: usize) -> f64 {
    if pool == 0 {
        return 0.0;
    }
    ((c * k) as f64 / pool as f64 * 100.0).round() / 100.0
}
