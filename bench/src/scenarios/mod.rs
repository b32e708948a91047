//! What every scenario shares: the run context (server options, the overall deadline),
//! opening many connections with bounded concurrency, waiting for the welcome, the idle
//! member loop (answer pings, answer or ignore the close, watch how TCP ends), and
//! turning histograms into JSON, and telling presence frames apart from the rest. Scenario-specific measuring lives in the sibling files.

pub mod api_publish;
pub mod close_latency;
pub mod cluster_fanout;
pub mod drain;
pub mod failover;
pub mod fanout;
pub mod hold;
pub mod mass_resume;
pub mod presence_joins;
pub mod rolling;
pub mod rooms_load;
pub mod v2_joins;
pub mod v2_resume;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::{self, End, Frame, Read, WsReader, WsWriter};
use wsgrace_kit::proc_stats::cpu_time_of;
use wsgrace_kit::server::{ServerProcess, Stopped};

use crate::launch::ServerOpts;

/// What a scenario gets from the command line besides its own arguments.
pub struct Ctx {
    pub server: ServerOpts,
    /// The overall deadline: past it, a scenario reports what it has and fails.
    pub deadline: Instant,
    /// RLIMIT_NOFILE in force for us and the server.
    pub nofile: u64,
}

impl Ctx {
    /// Warns when `n` connections may not fit the descriptor limit: we need one per
    /// connection, and the server (which inherits the limit) may need two: wsgrace keeps a
    /// duplicate of each socket to cut stuck connections.
    pub fn check_nofile(&self, n: usize) {
        let server_needs = 2 * n as u64 + 64;
        if server_needs > self.nofile {
            eprintln!(
                "warning: {n} connections may need {server_needs} descriptors in the server; \
                 RLIMIT_NOFILE is {}: expect failed or stalled connections",
                self.nofile
            );
        }
    }
}

/// A scenario's result: the JSON line, and whether it completed.
pub struct Outcome {
    pub report: Value,
    pub ok: bool,
}

/// Counters of a `connect_many` run, readable while it runs and after a timeout.
#[derive(Default)]
pub struct ConnectStats {
    pub connected: Cell<usize>,
    pub failed: Cell<usize>,
    pub first_error: RefCell<Option<String>>,
}

impl ConnectStats {
    pub fn json(&self) -> Value {
        json!({
            "connected": self.connected.get(),
            "failed": self.failed.get(),
            "first_error": *self.first_error.borrow(),
        })
    }
}

/// `server.max_connections` for a scenario of `n` connections: ample, within the range
/// the server accepts.
pub fn max_connections(n: usize) -> toml::Value {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    toml::Value::Integer(n.saturating_mul(2).clamp(1000, 10_000_000))
}

/// How long one connection may take from connect to welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Source addresses for `n` connections: the default one below `spread_above`, else
/// 127.0.0.2, 127.0.0.3, ... with at most `per_addr` connections each.
pub fn source_addrs(n: usize, spread_above: usize, per_addr: usize) -> Vec<IpAddr> {
    if n <= spread_above || per_addr == 0 {
        return Vec::new();
    }
    let count = n.div_ceil(per_addr).min(250);
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// The subprotocol of many rooms over one connection.
pub const V2: &str = "wsgrace.v2";

/// How a connection of [`connect_many`] is in its rooms.
#[derive(Clone)]
pub enum Membership {
    /// Protocol v1: the one room is in the URL; ready at the welcome.
    V1,
    /// `wsgrace.v2`: after `hello`, connection `i` joins the rooms `rooms(i)`; ready when
    /// each is joined.
    V2(Rc<dyn Fn(usize) -> Vec<String>>),
}

impl Membership {
    /// v2 with `per_connection` rooms each: `first` (when given: every connection's first
    /// room, the one that is measured), and the others from a pool of `pool` rooms named
    /// `{prefix}-0`, `{prefix}-1`, ...: connection `i` takes the next `k` of them from
    /// `i·k` on (mod `pool`), so that with `pool <= k` all are in the same rooms.
    pub fn v2_rooms(prefix: &str, first: Option<&str>, per_connection: usize, pool: usize) -> Self {
        let (prefix, first) = (prefix.to_owned(), first.map(str::to_owned));
        let k = per_connection.saturating_sub(usize::from(first.is_some()));
        let pool = pool.max(k).max(1);
        Membership::V2(Rc::new(move |i| {
            let mut rooms: Vec<String> = first.iter().cloned().collect();
            rooms.extend((0..k).map(|j| format!("{prefix}-{}", (i * k + j) % pool)));
            rooms
        }))
    }

    fn subprotocol(&self) -> Option<&'static str> {
        match self {
            Membership::V1 => None,
            Membership::V2(_) => Some(V2),
        }
    }
}

/// Opens connections `0..n` on `path(i)`, `concurrency` at a time, in their rooms as
/// `membership` says; each one that is in them is handed to `on_connected` (which must
/// spawn its reader at once: pings do not wait). Returns when all were tried; `stats` shows
/// progress meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn connect_many(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    sources: Rc<Vec<IpAddr>>,
    path: Rc<dyn Fn(usize) -> String>,
    membership: Membership,
    on_connected: Rc<dyn Fn(usize, WsReader, WsWriter)>,
    stats: Rc<ConnectStats>,
) {
    let next = Rc::new(Cell::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (next, sources, path, membership, on_connected, stats) = (
            next.clone(),
            sources.clone(),
            path.clone(),
            membership.clone(),
            on_connected.clone(),
            stats.clone(),
        );
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= n {
                    break;
                }
                next.set(i + 1);
                let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                let attempt = async {
                    let subprotocol = membership.subprotocol();
                    let (mut rd, mut wr) =
                        client::connect_offering(addr, source, &path(i), i as u64, subprotocol)
                            .await?;
                    await_welcome(&mut rd, &mut wr).await?;
                    if let Membership::V2(rooms) = &membership {
                        join_rooms(&mut rd, &mut wr, &rooms(i)).await?;
                    }
                    Ok::<_, std::io::Error>((rd, wr))
                };
                // A server out of descriptors leaves accepted-but-unserved sockets in its
                // backlog: without a bound, one such handshake would stall the run.
                let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no welcome within {HANDSHAKE_TIMEOUT:?}"),
                    )),
                };
                match result {
                    Ok((rd, wr)) => {
                        stats.connected.set(stats.connected.get() + 1);
                        on_connected(i, rd, wr);
                    }
                    Err(e) => {
                        stats.failed.set(stats.failed.get() + 1);
                        let mut first = stats.first_error.borrow_mut();
                        if first.is_none() {
                            eprintln!("connection {i} failed: {e}");
                            *first = Some(e.to_string());
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// On a `wsgrace.v2` connection after `hello`: joins `rooms` (all frames sent at once) and
/// reads until each is `joined`, answering pings; an `error` frame or the end is an error.
pub async fn join_rooms(
    rd: &mut WsReader,
    wr: &mut WsWriter,
    rooms: &[String],
) -> std::io::Result<()> {
    for room in rooms {
        let frame = json!({"type": "join", "room": room}).to_string();
        wr.text(frame.as_bytes()).await?;
    }
    let mut joined = 0;
    while joined < rooms.len() {
        let frame = welcome_json(rd, wr).await?;
        match frame.get("type").and_then(Value::as_str) {
            Some("joined") => joined += 1,
            Some("error") => {
                return Err(std::io::Error::other(format!(
                    "a join was refused: {frame}"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads until the first data message (the welcome), answering pings.
pub async fn await_welcome(rd: &mut WsReader, wr: &mut WsWriter) -> std::io::Result<()> {
    welcome_json(rd, wr).await.map(drop)
}

/// How an idle member's connection went.
#[derive(Debug, Clone)]
pub struct IdleOutcome {
    pub close_code: Option<u16>,
    pub close_reason: String,
    /// When the server's close frame arrived, if it did.
    pub close_at: Option<Instant>,
    /// Whether our close reply was written.
    pub replied: bool,
    pub end: End,
    pub end_at: Instant,
    /// Data frames that arrived after the server's close frame (a protocol violation).
    pub frames_after_close: u32,
    /// Data messages before the close.
    pub messages: u64,
}

/// An idle member: answers pings; on the server's close frame replies with the same code
/// unless `deaf` (a deaf member stays silent but keeps answering pings); reads until TCP
/// ends.
pub async fn idle(mut rd: WsReader, mut wr: WsWriter, deaf: bool) -> IdleOutcome {
    let mut out = IdleOutcome {
        close_code: None,
        close_reason: String::new(),
        close_at: None,
        replied: false,
        end: End::Eof,
        end_at: Instant::now(),
        frames_after_close: 0,
        messages: 0,
    };
    loop {
        match rd.next().await {
            Read::Frame(Frame::Ping(p)) => {
                let _ = wr.pong(p).await;
            }
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Message { .. }) => {
                if out.close_at.is_some() {
                    out.frames_after_close += 1;
                } else {
                    out.messages += 1;
                }
            }
            Read::Frame(Frame::Close { code, reason }) => {
                if out.close_at.is_some() {
                    out.frames_after_close += 1;
                    continue;
                }
                out.close_at = Some(Instant::now());
                out.close_code = code;
                out.close_reason = String::from_utf8_lossy(reason).into_owned();
                if !deaf {
                    out.replied = wr.close(code, b"").await.is_ok();
                }
            }
            Read::End(end) => {
                out.end = end;
                out.end_at = Instant::now();
                return out;
            }
        }
    }
}

/// A latency histogram in microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// p50/p90/p99/max/mean of a µs histogram, in milliseconds.
pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "mean_ms": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Stops the server at the end of a scenario and describes how it went.
pub async fn stop_json(server: &mut ServerProcess, grace: Duration) -> Value {
    let started = Instant::now();
    let Stopped { code, killed } = server.stop(grace, false).await;
    json!({
        "stop_ms": ms(started.elapsed()),
        "exit_code": code,
        "killed": killed,
        "drain_log": drain_line(server).await,
    })
}

/// Reads until the first data message (the welcome; any next frame on v2), answering
/// pings, and parses it.
pub async fn welcome_json(rd: &mut WsReader, wr: &mut WsWriter) -> std::io::Result<Value> {
    loop {
        match rd.next().await {
            Read::Frame(Frame::Message { payload }) => {
                return serde_json::from_slice(payload)
                    .map_err(|e| std::io::Error::other(format!("welcome is not JSON: {e}")))
            }
            Read::Frame(Frame::Ping(p)) => wr.pong(p).await?,
            Read::Frame(Frame::Pong) => {}
            Read::Frame(Frame::Close { code, .. }) => {
                return Err(std::io::Error::other(format!(
                    "closed before the welcome: {code:?}"
                )))
            }
            Read::End(end) => {
                return Err(std::io::Error::other(format!(
                    "connection ended before the welcome: {end:?}"
                )))
            }
        }
    }
}

/// The sum of the CPU time of `pids` so far (None if any cannot be read).
pub fn cpu_sum(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|p| cpu_time_of(*p)).sum()
}

/// The server's `drain finished: ...` log line, once it has been logged. Gives the stderr
/// reader a moment to catch up first.
pub async fn drain_line(server: &ServerProcess) -> Option<String> {
    server
        .find_log_line("drain finished", Duration::from_millis(500))
        .await
}

/// `b - a` of two `cpu_sum` readings, zero when either is missing.
pub fn cpu_delta(a: Option<Duration>, b: Option<Duration>) -> Duration {
    match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of a server frame's first `"type":"..."`, without parsing the JSON (the server
/// writes `type` first, so this is a prefix check on every frame it sends).
pub fn frame_type(payload: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""type":""#;
    let start = find(payload, KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    Some(&payload[start..start + len])
}

/// The raw value of a server frame's first `"key":"..."` (values wsgrace writes without
/// escapes: room names, refs, epochs); `None` if it has none.
pub fn str_field<'a>(payload: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let needle = format!("\"{key}\":\"");
    let start = find(payload, needle.as_bytes())? + needle.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    Some(&payload[start..start + len])
}

/// The value of a server frame's first `"key":<unsigned integer>`.
pub fn u64_field(payload: &[u8], key: &str) -> Option<u64> {
    let needle = format!("\"{key}\":");
    let start = find(payload, needle.as_bytes())? + needle.len();
    let digits = payload[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The bytes a server frame of `payload_len` bytes takes on the wire (unmasked, header
/// included).
pub fn server_frame_bytes(payload_len: usize) -> u64 {
    let header = match payload_len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload_len + header) as u64
}

/// What a `presence_join` / `presence_leave` frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
}

/// A presence frame's change and the name it is about (its raw bytes: the load generator's
/// names need no JSON escapes); `None` for every other frame.
pub fn presence_change(payload: &[u8]) -> Option<(PresenceChange, &[u8])> {
    let change = match frame_type(payload)? {
        b"presence_join" => PresenceChange::Join,
        b"presence_leave" => PresenceChange::Leave,
        _ => return None,
    };
    const KEY: &[u8] = br#""name":""#;
    let start = find(payload, KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    Some((change, &payload[start..start + len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_frames_are_told_apart() {
        let join = br#"{"type":"presence_join","room":"r","name":"c12"}"#;
        let leave = br#"{"type":"presence_leave","room":"r","name":"j3"}"#;
        assert_eq!(frame_type(join), Some(&b"presence_join"[..]));
        assert_eq!(
            presence_change(join),
            Some((PresenceChange::Join, &b"c12"[..]))
        );
        assert_eq!(
            presence_change(leave),
            Some((PresenceChange::Leave, &b"j3"[..]))
        );
        let message = br#"{"type":"message","room":"r","from":"a","text":"t=1","seq":1}"#;
        assert_eq!(presence_change(message), None);
        assert_eq!(
            frame_type(br#"{"type":"joined","room":"r"}"#),
            Some(&b"joined"[..])
        );
        assert_eq!(frame_type(b"not json"), None);
    }

    #[test]
    fn fields_of_server_frames() {
        let joined = br#"{"type":"joined","room":"r-1","epoch":"9c1e","seq":41,"resumed":true,"missed":2,"ref":"7"}"#;
        assert_eq!(str_field(joined, "room"), Some(&b"r-1"[..]));
        assert_eq!(str_field(joined, "ref"), Some(&b"7"[..]));
        assert_eq!(u64_field(joined, "seq"), Some(41));
        assert_eq!(u64_field(joined, "missed"), Some(2));
        assert_eq!(u64_field(joined, "since"), None);
        assert_eq!(str_field(joined, "seq"), None);
        assert_eq!(server_frame_bytes(125), 127);
        assert_eq!(server_frame_bytes(126), 130);
        assert_eq!(server_frame_bytes(70_000), 70_010);
    }
}
