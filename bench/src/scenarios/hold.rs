//! `hold N`: open N idle connections (room "hold") that answer pings; measure the connect
//! rate and the server's RSS before and after, hence bytes per connection. With
//! `--v2-rooms K` the connections speak `wsgrace.v2` and each joins K rooms (`hold-0`, ...,
//! out of a pool of `--room-pool` rooms).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{
    connect_many, idle, ms, source_addrs, stop_json, ConnectStats, Ctx, Membership, Outcome,
};
use crate::launch;
use wsgrace_kit::proc_stats::own_rss;

#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Connections to open.
    pub n: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Wait this long after the last connection before reading the RSS, in ms.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Above this many connections, bind clients to 127.0.0.2, 127.0.0.3, ...
    #[arg(long, default_value_t = 25_000)]
    pub spread_above: usize,
    /// Connections per source address when spreading.
    #[arg(long, default_value_t = 20_000)]
    pub per_addr: usize,
    /// 0: protocol v1, each connection in room "hold". K > 0: `wsgrace.v2`, each
    /// connection joins K rooms.
    #[arg(long, default_value_t = 0)]
    pub v2_rooms: usize,
    /// With `--v2-rooms K`: how many rooms there are in all (at least K; K: every
    /// connection is in the same K rooms).
    #[arg(long, default_value_t = 0)]
    pub room_pool: usize,
}

impl HoldArgs {
    /// The same run over protocol v1.
    pub fn as_v1(&self) -> HoldArgs {
        HoldArgs {
            v2_rooms: 0,
            ..self.clone()
        }
    }
}

pub async fn run(ctx: &Ctx, args: &HoldArgs) -> Result<Outcome, String> {
    let mut overrides = vec![("server", "max_connections", super::max_connections(args.n))];
    if args.v2_rooms > 100 {
        // Above the default session.max_rooms (set only then: the baseline has no such key).
        let rooms = i64::try_from(args.v2_rooms).unwrap_or(i64::MAX);
        overrides.push(("session", "max_rooms", toml::Value::Integer(rooms)));
    }
    ctx.check_nofile(args.n);
    let mut server = launch::start(&ctx.server, &overrides)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = server.rss();
    eprintln!(
        "hold: server pid {} on {}, rss {:?}",
        server.pid(),
        server.addr,
        rss_before
    );

    let stats = Rc::new(ConnectStats::default());
    let ended = Rc::new(Cell::new(0usize));
    let on_connected = {
        let ended = ended.clone();
        Rc::new(move |_i: usize, rd, wr| {
            let ended = ended.clone();
            tokio::task::spawn_local(async move {
                idle(rd, wr, false).await;
                ended.set(ended.get() + 1);
            });
        })
    };
    let sources = Rc::new(source_addrs(args.n, args.spread_above, args.per_addr));
    let (path, membership): (Rc<dyn Fn(usize) -> String>, _) = match args.v2_rooms {
        0 => (
            Rc::new(|i| format!("/ws?room=hold&name=h{i}")),
            Membership::V1,
        ),
        k => (
            Rc::new(|i| format!("/ws?name=h{i}")),
            Membership::v2_rooms("hold", None, k, args.room_pool),
        ),
    };
    let started = Instant::now();
    let progress = {
        let stats = stats.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "hold: {} connected, {} failed",
                    stats.connected.get(),
                    stats.failed.get()
                );
            }
        })
    };
    let connecting = connect_many(
        server.addr,
        args.n,
        args.concurrency,
        sources.clone(),
        path,
        membership,
        on_connected,
        stats.clone(),
    );
    let finished = tokio::time::timeout_at(ctx.deadline, connecting)
        .await
        .is_ok();
    let connect_time = started.elapsed();
    progress.abort();
    let connected = stats.connected.get();
    if finished {
        let settle = Instant::now() + Duration::from_millis(args.settle_ms);
        tokio::time::sleep_until(settle.min(ctx.deadline)).await;
    }
    let rss_after = server.rss();
    let still_open = connected.saturating_sub(ended.get());
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if still_open > 0 => Some((a.saturating_sub(b)) / still_open as u64),
        _ => None,
    };
    eprintln!("hold: {connected} connected in {connect_time:?}; stopping the server");
    let grace = Duration::from_secs(15);
    let stop = stop_json(&mut server, grace).await;
    let report = json!({
        "scenario": "hold",
        "n": args.n,
        "protocol": if args.v2_rooms == 0 { "v1" } else { "v2" },
        "rooms_per_connection": args.v2_rooms.max(1),
        "room_pool": if args.v2_rooms == 0 { 1 } else { args.room_pool.max(args.v2_rooms) },
        "complete": finished,
        "timed_out": !finished,
        "connect": stats.json(),
        "source_addrs": sources.len(),
        "connect_ms": ms(connect_time),
        "connect_rate_per_s": (connected as f64 / connect_time.as_secs_f64()).round(),
        "ended_before_measure": connected - still_open,
        "open_at_measure": still_open,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_conn_bytes": per_conn,
        "loadgen_rss_bytes": own_rss(),
        "server": stop,
    });
    Ok(Outcome {
        report,
        ok: finished && stats.failed.get() == 0,
    })
}
