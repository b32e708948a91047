//! `drain N --deaf K`: N idle members (room "drain"), K of which never answer the close
//! frame (they still answer pings); then SIGTERM. Measures, from the signal: the first and
//! last close frame, how each connection ended (clean = the shutdown code arrived, our
//! reply went out, then the server's FIN; 1006-like = the TCP ended without a close
//! frame), when and how the server process exited, and the CPU time the server used from the
//! signal to its exit (`server_cpu_drain_ms`: its threads' time before the signal, from
//! /proc, subtracted from its whole time, from the rusage of reaped children), and the load
//! generator's own CPU time over the same drain (`loadgen_cpu_drain_ms`, until every client
//! saw its end: the two share the machine's cores).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{
    connect_many, drain_line, hist_json, idle, micros, ms, new_histogram, source_addrs,
    ConnectStats, Ctx, IdleOutcome, Membership, Outcome,
};
use crate::client::End;
use crate::launch;
use wsgrace_kit::child::Signal;
use wsgrace_kit::server::Stopped;

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Connections to open.
    pub n: usize,
    /// How many of them never answer the server's close frame.
    #[arg(long, default_value_t = 0)]
    pub deaf: usize,
    /// close.timeout_ms for the server: what a deaf client costs.
    #[arg(long, default_value_t = 1000)]
    pub close_timeout_ms: i64,
    /// shutdown.drain_timeout_ms for the server.
    #[arg(long, default_value_t = 10_000)]
    pub drain_timeout_ms: i64,
    /// close.mode for the server: awaited or fire_and_forget.
    #[arg(long, default_value = "awaited")]
    pub mode: String,
    /// The close code the server is expected to send (shutdown.code).
    #[arg(long, default_value_t = 1001)]
    pub code: u16,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

fn end_name(end: End) -> &'static str {
    match end {
        End::Eof => "eof",
        End::Reset => "reset",
        End::Error => "error",
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// Summarizes the outcomes of the answering clients.
fn answering_json(outcomes: &[&IdleOutcome], code: u16, signal: Instant) -> Value {
    let mut clean = 0u64;
    let mut no_close = BTreeMap::new();
    let mut after_close = BTreeMap::new();
    let mut codes = BTreeMap::new();
    let mut not_replied = 0u64;
    let mut frames_after_close = 0u64;
    let mut last_end = Duration::ZERO;
    for o in outcomes {
        frames_after_close += u64::from(o.frames_after_close);
        last_end = last_end.max(o.end_at.saturating_duration_since(signal));
        if o.close_at.is_none() {
            bump(&mut no_close, end_name(o.end));
            continue;
        }
        bump(
            &mut codes,
            o.close_code.map_or("none".into(), |c| c.to_string()),
        );
        bump(&mut after_close, end_name(o.end));
        if !o.replied {
            not_replied += 1;
        }
        if o.close_code == Some(code) && o.replied && o.end == End::Eof {
            clean += 1;
        }
    }
    let total = outcomes.len();
    json!({
        "count": total,
        "clean": clean,
        "clean_fraction": if total == 0 { 1.0 } else { clean as f64 / total as f64 },
        "close_codes": codes,
        "end_after_close": after_close,
        "no_close_frame_1006": no_close,
        "reply_failed": not_replied,
        "frames_after_close": frames_after_close,
        "last_tcp_end_ms": ms(last_end),
    })
}

fn deaf_json(outcomes: &[&IdleOutcome], signal: Instant) -> Value {
    let mut ends = BTreeMap::new();
    let mut end_hist = new_histogram();
    let mut got_close = 0u64;
    for o in outcomes {
        if o.close_at.is_some() {
            got_close += 1;
        }
        bump(&mut ends, end_name(o.end));
        let _ = end_hist.record(micros(o.end_at.saturating_duration_since(signal)));
    }
    json!({
        "count": outcomes.len(),
        "got_close": got_close,
        "ends": ends,
        "tcp_end_after_signal": hist_json(&end_hist),
    })
}

pub async fn run(ctx: &Ctx, args: &DrainArgs) -> Result<Outcome, String> {
    let overrides = [
        ("server", "max_connections", super::max_connections(args.n)),
        (
            "close",
            "timeout_ms",
            toml::Value::Integer(args.close_timeout_ms),
        ),
        ("close", "mode", toml::Value::String(args.mode.clone())),
        (
            "shutdown",
            "drain_timeout_ms",
            toml::Value::Integer(args.drain_timeout_ms),
        ),
        (
            "shutdown",
            "code",
            toml::Value::Integer(i64::from(args.code)),
        ),
    ];
    ctx.check_nofile(args.n);
    let mut server = launch::start(&ctx.server, &overrides)?;
    eprintln!("drain: server pid {} on {}", server.pid(), server.addr);
    let outcomes: Rc<RefCell<Vec<(bool, IdleOutcome)>>> = Rc::new(RefCell::new(Vec::new()));
    // Deaf clients are spread evenly over the connection order (and so over workers).
    let deaf_count = args.deaf.min(args.n);
    let deaf_every = args.n.checked_div(deaf_count).unwrap_or(usize::MAX).max(1);
    let is_deaf = move |i: usize| i.is_multiple_of(deaf_every) && i / deaf_every < deaf_count;
    let on_connected = {
        let outcomes = outcomes.clone();
        Rc::new(move |i: usize, rd, wr| {
            let outcomes = outcomes.clone();
            let deaf = is_deaf(i);
            tokio::task::spawn_local(async move {
                let outcome = idle(rd, wr, deaf).await;
                outcomes.borrow_mut().push((deaf, outcome));
            });
        })
    };
    let stats = Rc::new(ConnectStats::default());
    let connecting = connect_many(
        server.addr,
        args.n,
        args.concurrency,
        Rc::new(source_addrs(args.n, 25_000, 20_000)),
        Rc::new(|i| format!("/ws?room=drain&name=d{i}")),
        Membership::V1,
        on_connected,
        stats.clone(),
    );
    let connected_all = tokio::time::timeout_at(ctx.deadline, connecting)
        .await
        .is_ok();
    let connected = stats.connected.get();
    let ended_before_signal = outcomes.borrow().len();
    eprintln!("drain: {connected} connected; SIGTERM");

    let cpu_before_signal = threads_cpu_time(server.pid());
    let own_before_signal = threads_cpu_time(std::process::id());
    let children_before = children_cpu_time();
    let signal = Instant::now();
    let signalled = server.try_signal(Signal::Term);
    let exit = server
        .try_wait_exit(ctx.deadline.saturating_duration_since(Instant::now()))
        .await;
    let exit_after = signal.elapsed();
    let exited = exit.is_some();
    // Reaped: its whole CPU time is now in this process's children's rusage.
    let server_cpu_drain = match (exited, cpu_before_signal) {
        (true, Some(before)) => children_cpu_time()
            .checked_sub(children_before)
            .and_then(|total| total.checked_sub(before)),
        _ => None,
    };
    let exit = match exit {
        Some(status) => Stopped {
            code: status.code(),
            killed: false,
        },
        None => server.stop(Duration::from_secs(1), true).await,
    };
    // The server is gone: every client sees its TCP end promptly.
    let settle = Instant::now() + Duration::from_secs(5);
    while outcomes.borrow().len() < connected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every client has seen its end (or the settling gave up): what answering them cost here,
    // on the cores the server used too.
    let own_cpu_drain = threads_cpu_time(std::process::id())
        .zip(own_before_signal)
        .and_then(|(after, before)| after.checked_sub(before));
    let drain_log = drain_line(&server).await;

    let all = outcomes.borrow();
    let closes: Vec<Duration> = all
        .iter()
        .filter_map(|(_, o)| o.close_at.map(|t| t.saturating_duration_since(signal)))
        .collect();
    let mut close_hist = new_histogram();
    for c in &closes {
        let _ = close_hist.record(micros(*c));
    }
    let answering: Vec<&IdleOutcome> = all.iter().filter(|(d, _)| !d).map(|(_, o)| o).collect();
    let deaf: Vec<&IdleOutcome> = all.iter().filter(|(d, _)| *d).map(|(_, o)| o).collect();
    let unfinished = connected.saturating_sub(all.len());
    let ok = connected_all && signalled && exited && exit.code == Some(0) && unfinished == 0;
    let report = json!({
        "scenario": "drain",
        "n": args.n,
        "deaf": deaf_count,
        "mode": args.mode,
        "close_timeout_ms": args.close_timeout_ms,
        "drain_timeout_ms": args.drain_timeout_ms,
        "complete": ok,
        "timed_out": !connected_all || !exited,
        "connect": stats.json(),
        "ended_before_signal": ended_before_signal,
        "closes_received": closes.len(),
        "first_close_ms": closes.iter().min().map(|d| ms(*d)),
        "last_close_ms": closes.iter().max().map(|d| ms(*d)),
        "close_after_signal": hist_json(&close_hist),
        "answering": answering_json(&answering, args.code, signal),
        "deaf_clients": deaf_json(&deaf, signal),
        "clients_unfinished": unfinished,
        "server_exit_ms": exited.then(|| ms(exit_after)),
        "server_cpu_drain_ms": server_cpu_drain.map(ms),
        "loadgen_cpu_drain_ms": own_cpu_drain.map(ms),
        "server_exit_code": exit.code,
        "server_killed": exit.killed,
        "drain_log": drain_log,
    });
    Ok(Outcome { report, ok })
}

/// The CPU time process `pid`'s threads have run so far (the sum of their schedstat run times,
/// in nanoseconds: finer than the clock ticks of /proc/PID/stat).
fn threads_cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let stat = std::fs::read_to_string(path).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// The user and system time of this process's reaped children, all together.
fn children_cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}
