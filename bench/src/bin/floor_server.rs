//! `floor_server`: the floor of fan-out (issue 26, item 4). It does only the writes a room
//! message's fan-out must do, so that `loadgen fanout` can measure how far wsgrace's server
//! CPU per delivery is above it, in the same invocation (`--compare`).
//!
//! What it keeps of wsgrace, so that the writes are the same:
//! - the sockets: accepted on one thread and handed round robin to `server.workers` worker
//!   threads (one current-thread tokio runtime each, as actix-server's workers), with
//!   `SO_SNDBUF` = `session.send_buffer_bytes` (262,144 unless set) and `TCP_USER_TIMEOUT` =
//!   `session.client_timeout_ms` (15 s unless set), Nagle left on, as wsgrace leaves them;
//! - the frames: `{"type":"message","room":R,"from":F,"text":T,"seq":S,"ts":MS}`, the bytes
//!   wsgrace sends, framed by actix-http's `Parser::write_message` as wsgrace's `encode_text`
//!   does, serialized and framed once per message;
//! - the batching: each worker takes every message waiting for it at once and writes them to
//!   each of its connections in one write call (at most 64 KiB per call, wsgrace's
//!   `ENCODE_BATCH_BYTES`); or, with `floor.frames_per_write` K, in calls of exactly K frames,
//!   frames short of K waiting for more for `floor.flush_us` (1,000), to match the deliveries
//!   per write call measured on wsgrace (`fanout --count-writes`). `FLOOR_FRAMES_PER_WRITE` and
//!   `FLOOR_FLUSH_US` in the environment win over the config: `loadgen --compare` gives both
//!   servers one config, and wsgrace refuses a `[floor]` table.
//!
//! What it leaves out, which is the point: no actors, no mailboxes, no JSON parser, no
//! rooms (every connection gets every message, whatever its `room`), no per-connection queue
//! or task wake-up on the common path (a worker writes straight from the shared batch; only
//! bytes a socket does not take are copied, for that connection's flush task), no heartbeat,
//! no history, no metrics, no drain (SIGTERM ends the process at once).
//!
//! It speaks to `loadgen` as the `baseline` binary does: `--config FILE` (it reads
//! `server.workers`, `session.send_buffer_bytes`, `session.client_timeout_ms`,
//! `session.max_frame_bytes`, `floor.frames_per_write` and `floor.flush_us`; every other key
//! is ignored),
//! `--bind ADDR`, one `listening on IP:PORT` line on stdout, then for `GET /ws?room=R&name=N`
//! a 101, a `welcome`, and every text frame a client sends becomes a message with the next
//! `seq` for every connection, its sender included. It refuses subprotocols (`wsgrace.v2` is
//! not spoken here) and any frame it does not need (binary, fragmented) by closing. It must
//! not grow into a chat server: what it does not need to write, it does not do.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_http::ws::{hash_key, OpCode, Parser as FrameWriter};
use bytes::BytesMut;
use clap::Parser;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use wsgrace_kit::frame::{parse_header, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// Most bytes per write call: wsgrace's `ENCODE_BATCH_BYTES` (src/connection/transport/outbound.rs).
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A request head longer than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// The accept queue's length, as wsgrace's (`BACKLOG` in src/service/server.rs).
const BACKLOG: u32 = 4096;
/// `floor.frames_per_write` and `floor.flush_us` from the environment.
const FRAMES_PER_WRITE_ENV: &str = "FLOOR_FRAMES_PER_WRITE";
const FLUSH_US_ENV: &str = "FLOOR_FLUSH_US";

#[derive(Debug, Parser)]
#[command(about = "The floor of fan-out: only the writes, to measure wsgrace against")]
struct Cli {
    /// TOML config; see the file's doc comment for the keys read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080).
    #[arg(long)]
    bind: Option<String>,
}

/// What the floor takes from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    workers: usize,
    send_buffer: usize,
    user_timeout: Duration,
    max_frame: usize,
    /// 0: every frame waiting goes in one write call (up to 64 KiB); K: exactly K frames
    /// per write call.
    frames_per_write: usize,
    /// With `frames_per_write` K: how long frames short of K wait for more.
    flush_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 0,
            send_buffer: 262_144,
            user_timeout: Duration::from_millis(15_000),
            max_frame: 65_536,
            frames_per_write: 0,
            flush_after: Duration::from_millis(1),
        }
    }
}

/// Reads the keys the floor knows from TOML `text`; others are ignored.
fn settings(text: &str) -> Result<(Settings, Option<String>), String> {
    let table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
    let int = |section: &str, key: &str| -> Result<Option<u64>, String> {
        match table.get(section).and_then(|t| t.get(key)) {
            None => Ok(None),
            Some(value) => value
                .as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("config: {section}.{key} must be a non-negative integer")),
        }
    };
    let size = |n: u64| usize::try_from(n).map_err(|e| format!("config: {e}"));
    let mut s = Settings::default();
    if let Some(n) = int("server", "workers")? {
        s.workers = size(n)?;
    }
    if let Some(n) = int("session", "send_buffer_bytes")? {
        s.send_buffer = size(n)?;
    }
    if let Some(n) = int("session", "client_timeout_ms")? {
        s.user_timeout = Duration::from_millis(n);
    }
    if let Some(n) = int("session", "max_frame_bytes")? {
        s.max_frame = size(n)?;
    }
    if let Some(n) = int("floor", "frames_per_write")? {
        s.frames_per_write = size(n)?;
    }
    if let Some(n) = int("floor", "flush_us")? {
        s.flush_after = Duration::from_micros(n);
    }
    let bind = table
        .get("server")
        .and_then(|t| t.get("bind"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    Ok((s, bind))
}

/// Hands every message to every worker, in one order: the seq is taken and the message
/// queued to all workers under one lock (per message, not per delivery), so that two senders
/// on two threads cannot interleave differently on different workers.
struct Hub {
    order: Mutex<u64>,
    workers: Vec<UnboundedSender<Arc<[u8]>>>,
}

impl Hub {
    /// Publishes `text` from `from` in `room` to every connection.
    fn publish(&self, room: &str, from: &str, text: &str) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let Ok(mut seq) = self.order.lock() else {
            return;
        };
        *seq += 1;
        let mut json = String::with_capacity(64 + room.len() + from.len() + text.len());
        json.push_str(r#"{"type":"message","room":"#);
        push_json_string(&mut json, room);
        json.push_str(r#","from":"#);
        push_json_string(&mut json, from);
        json.push_str(r#","text":"#);
        push_json_string(&mut json, text);
        json.push_str(&format!(r#","seq":{},"ts":{ts}}}"#, *seq));
        let frame: Arc<[u8]> = Arc::from(&encode_text(&json)[..]);
        for worker in &self.workers {
            let _ = worker.send(frame.clone());
        }
    }
}

/// A server's text frame, as wsgrace's `encode_text` makes it.
fn encode_text(text: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(text.len() + 10);
    FrameWriter::write_message(&mut out, text, OpCode::Text, true, false);
    out
}

/// `value` as a JSON string, as serde_json escapes it (`"`, `\`, and control characters).
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One connection of a worker, shared by its reader task, its flush task and the worker's
/// fan-out loop (all on the worker's thread).
struct Conn {
    stream: TcpStream,
    /// Bytes the kernel did not take yet, in order; written by the flush task.
    pending: RefCell<Vec<u8>>,
    flush: Notify,
    closed: Cell<bool>,
}

impl Conn {
    /// Writes `bytes` now if nothing is pending, else (or for what the socket does not
    /// take) appends them for the flush task.
    fn send(&self, bytes: &[u8]) {
        if self.closed.get() {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            pending.extend_from_slice(bytes);
            return;
        }
        let written = match self.stream.try_write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.closed.set(true);
                self.flush.notify_one();
                return;
            }
        };
        if let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
            pending.extend_from_slice(rest);
            self.flush.notify_one();
        }
    }

    /// Writes what is pending whenever there is some, until the connection is closed and
    /// nothing is pending (a close frame queued last is written), or a write fails.
    async fn flush_task(self: Rc<Conn>) {
        loop {
            if self.pending.borrow().is_empty() {
                if self.closed.get() {
                    return;
                }
                self.flush.notified().await;
                continue;
            }
            if self.stream.writable().await.is_err() {
                break;
            }
            let result = {
                let pending = self.pending.borrow();
                let chunk = &pending[..pending.len().min(WRITE_BATCH_BYTES)];
                self.stream.try_write(chunk)
            };
            match result {
                Ok(n) => {
                    self.pending.borrow_mut().drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        self.closed.set(true);
        self.pending.borrow_mut().clear();
    }
}

/// A worker thread's connections and how it batches.
struct Worker {
    conns: RefCell<Vec<Rc<Conn>>>,
    frames_per_write: usize,
    flush_after: Duration,
}

impl Worker {
    /// Takes every message waiting and writes what is due (see [`Batch`]) to each connection:
    /// one write call per connection per chunk. Frames held back for a full chunk are written
    /// anyway once no message has come for `flush_after`.
    async fn fan_out(self: Rc<Worker>, mut inbox: UnboundedReceiver<Arc<[u8]>>) {
        let mut batch = Batch::new(self.frames_per_write);
        let mut cuts: Vec<usize> = Vec::new();
        loop {
            let next = if batch.is_empty() {
                inbox.recv().await.map(Some)
            } else {
                match tokio::time::timeout(self.flush_after, inbox.recv()).await {
                    Ok(message) => message.map(Some),
                    Err(_) => Some(None),
                }
            };
            let flush = match next {
                None => return,
                Some(None) => true,
                Some(Some(frame)) => {
                    batch.push(&frame);
                    while let Ok(frame) = inbox.try_recv() {
                        batch.push(&frame);
                    }
                    false
                }
            };
            batch.cut(flush, &mut cuts);
            let Some(&written) = cuts.last() else {
                continue;
            };
            let mut any_closed = false;
            for conn in self.conns.borrow().iter() {
                let mut start = 0;
                for &end in &cuts {
                    conn.send(batch.bytes.get(start..end).unwrap_or_default());
                    start = end;
                }
                any_closed |= conn.closed.get();
            }
            if any_closed {
                self.conns.borrow_mut().retain(|c| !c.closed.get());
            }
            batch.written(written);
        }
    }
}

/// The frames a worker holds for its connections, and how they are cut into write calls:
/// with `per_write` 0, every frame held goes out at once, in calls of at most 64 KiB; with
/// K > 0, in calls of exactly K frames (the rest waits for more, or for a flush).
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Each held frame's length, in order.
    lens: VecDeque<usize>,
    per_write: usize,
}

impl Batch {
    fn new(per_write: usize) -> Batch {
        Batch {
            bytes: Vec::with_capacity(WRITE_BATCH_BYTES),
            lens: VecDeque::new(),
            per_write,
        }
    }

    fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.lens.push_back(frame.len());
    }

    fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The write calls due now, as the end offset of each in `bytes`: whole calls only
    /// (K frames, or 64 KiB) unless `flush` or `per_write` is 0.
    fn cut(&self, flush: bool, cuts: &mut Vec<usize>) {
        cuts.clear();
        let (mut start, mut end, mut in_call) = (0, 0, 0);
        for &len in &self.lens {
            let full = (self.per_write > 0 && in_call == self.per_write)
                || (in_call > 0 && end - start + len > WRITE_BATCH_BYTES);
            if full {
                cuts.push(end);
                start = end;
                in_call = 0;
            }
            end += len;
            in_call += 1;
        }
        if in_call > 0 && (flush || self.per_write == 0 || in_call == self.per_write) {
            cuts.push(end);
        }
    }

    /// Forgets the first `end` bytes: frames written.
    fn written(&mut self, end: usize) {
        let mut gone = 0;
        while gone < end {
            match self.lens.pop_front() {
                Some(len) => gone += len,
                None => break,
            }
        }
        self.bytes.drain(..end.min(self.bytes.len()));
    }
}

/// What the upgrade request asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    room: String,
    name: String,
    key: String,
}

/// Parses an upgrade request head: `GET /ws?room=R&name=N`, a `Sec-WebSocket-Key`, no
/// subprotocol. `Err` is the status line to answer with.
fn parse_request(head: &str) -> Result<Request, &'static str> {
    const BAD: &str = "HTTP/1.1 400 Bad Request";
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .ok_or(BAD)?;
    let query = target.strip_prefix("/ws").ok_or("HTTP/1.1 404 Not Found")?;
    let query = query.strip_prefix('?').unwrap_or_default();
    let param = |want: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == want)
            .map(|(_, v)| v.to_owned())
    };
    let mut key = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            return Err(BAD);
        }
    }
    Ok(Request {
        room: param("room").ok_or(BAD)?,
        name: param("name").ok_or(BAD)?,
        key: key.ok_or(BAD)?,
    })
}

/// Reads the request head; `None` if the peer went away or sent no valid head.
async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        read_some(stream, buf).await.ok().filter(|n| *n > 0)?;
    }
}

/// Reads what is there into `buf`; `Ok(0)` at the end.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A server frame of `opcode` with `payload`, unmasked.
fn control_frame(opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    FrameWriter::write_message(&mut out, payload, opcode, true, false);
    out
}

/// One connection: the handshake, then its frames until it ends.
async fn serve(worker: Rc<Worker>, hub: Arc<Hub>, stream: TcpStream, max_frame: usize) {
    let mut buf = Vec::with_capacity(1024);
    let Some(head) = read_head(&stream, &mut buf).await else {
        return;
    };
    let request = match parse_request(&head) {
        Ok(request) => request,
        Err(status) => {
            let answer = format!("{status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.try_write(answer.as_bytes());
            return;
        }
    };
    let accept = hash_key(request.key.as_bytes());
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    )
    .into_bytes();
    let mut welcome = String::from(r#"{"type":"welcome","room":"#);
    push_json_string(&mut welcome, &request.room);
    welcome.push_str(r#","name":"#);
    push_json_string(&mut welcome, &request.name);
    welcome.push_str(r#","epoch":"f100f100f100f100","seq":0}"#);
    answer.extend_from_slice(&encode_text(&welcome));
    let conn = Rc::new(Conn {
        stream,
        pending: RefCell::new(Vec::new()),
        flush: Notify::new(),
        closed: Cell::new(false),
    });
    conn.send(&answer);
    worker.conns.borrow_mut().push(conn.clone());
    tokio::task::spawn_local(conn.clone().flush_task());
    read_frames(&conn, &hub, &request, buf, max_frame).await;
    // No more data frames; the flush task writes what is pending (a close frame) and ends,
    // and the socket closes with the last owner.
    conn.closed.set(true);
    conn.flush.notify_one();
    worker.conns.borrow_mut().retain(|c| !Rc::ptr_eq(c, &conn));
}

/// Reads client frames: a text is published, a ping answered, a close echoed (then the
/// connection ends); anything else ends it with a close frame.
async fn read_frames(
    conn: &Conn,
    hub: &Hub,
    request: &Request,
    mut buf: Vec<u8>,
    max_frame: usize,
) {
    loop {
        while let Some(header) = parse_header(&buf) {
            let Some(len) = header.frame_len() else {
                return;
            };
            if header.payload_len > max_frame as u64 {
                conn.send(&control_frame(OpCode::Close, &1009u16.to_be_bytes()));
                return;
            }
            if buf.len() < len {
                break;
            }
            if !header.masked || !header.fin || header.rsv != 0 {
                conn.send(&control_frame(OpCode::Close, &1002u16.to_be_bytes()));
                return;
            }
            let (head, payload) = buf.split_at_mut(header.header_len);
            let payload = &mut payload[..len - header.header_len];
            if let Some(key) = head.get(header.header_len - 4..) {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= key[i % 4];
                }
            }
            match header.opcode {
                OP_TEXT => match std::str::from_utf8(payload) {
                    Ok(text) => hub.publish(&request.room, &request.name, text),
                    Err(_) => {
                        conn.send(&control_frame(OpCode::Close, &1007u16.to_be_bytes()));
                        return;
                    }
                },
                OP_PING => conn.send(&control_frame(OpCode::Pong, payload)),
                OP_PONG => {}
                OP_CLOSE => {
                    let code = payload.get(..2).unwrap_or_default();
                    conn.send(&control_frame(OpCode::Close, code));
                    return;
                }
                _ => {
                    conn.send(&control_frame(OpCode::Close, &1003u16.to_be_bytes()));
                    return;
                }
            }
            buf.drain(..len);
        }
        match read_some(&conn.stream, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A worker thread: its runtime, its fan-out loop, and the connections handed to it.
fn run_worker(
    settings: Settings,
    hub: Arc<Hub>,
    inbox: UnboundedReceiver<Arc<[u8]>>,
    mut accepted: UnboundedReceiver<std::net::TcpStream>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker {
            conns: RefCell::new(Vec::new()),
            frames_per_write: settings.frames_per_write,
            flush_after: settings.flush_after,
        });
        tokio::task::spawn_local(worker.clone().fan_out(inbox));
        while let Some(std_stream) = accepted.recv().await {
            let Ok(stream) = TcpStream::from_std(std_stream) else {
                continue;
            };
            tokio::task::spawn_local(serve(
                worker.clone(),
                hub.clone(),
                stream,
                settings.max_frame,
            ));
        }
    });
    Ok(())
}

/// The socket options wsgrace sets on an accepted connection (`tune_socket`).
fn tune(stream: &std::net::TcpStream, settings: &Settings) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_tcp_user_timeout(Some(settings.user_timeout));
    if settings.send_buffer > 0 {
        let _ = socket.set_send_buffer_size(settings.send_buffer);
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor_server: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let cli = Cli::parse();
    let (mut settings, config_bind) = match &cli.config {
        Some(path) => settings(
            &std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )?,
        None => (Settings::default(), None),
    };
    // The environment wins over the config: `loadgen --compare` gives both servers one
    // config, and wsgrace refuses a `[floor]` table.
    if let Ok(value) = std::env::var(FRAMES_PER_WRITE_ENV) {
        settings.frames_per_write = value
            .trim()
            .parse()
            .map_err(|e| format!("{FRAMES_PER_WRITE_ENV}={value}: {e}"))?;
    }
    if let Ok(value) = std::env::var(FLUSH_US_ENV) {
        let us: u64 = value
            .trim()
            .parse()
            .map_err(|e| format!("{FLUSH_US_ENV}={value}: {e}"))?;
        settings.flush_after = Duration::from_micros(us);
    }
    if settings.workers == 0 {
        settings.workers = std::thread::available_parallelism().map_or(1, usize::from);
    }
    let bind = cli
        .bind
        .or(config_bind)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let bind: SocketAddr = bind.parse().map_err(|e| format!("bind {bind}: {e}"))?;

    let mut inboxes = Vec::new();
    let mut outboxes = Vec::new();
    for _ in 0..settings.workers {
        let (tx, rx) = unbounded_channel();
        outboxes.push(tx);
        inboxes.push(rx);
    }
    let hub = Arc::new(Hub {
        order: Mutex::new(0),
        workers: outboxes,
    });
    let mut handoff = Vec::new();
    for (i, inbox) in inboxes.into_iter().enumerate() {
        let (tx, rx) = unbounded_channel();
        handoff.push(tx);
        let hub = hub.clone();
        std::thread::Builder::new()
            .name(format!("floor-worker-{i}"))
            .spawn(move || {
                if let Err(e) = run_worker(settings, hub, inbox, rx) {
                    eprintln!("floor_server: worker {i}: {e}");
                }
            })
            .map_err(|e| format!("spawning a worker: {e}"))?;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let socket = match bind {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .set_reuseaddr(true)
            .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
        socket.bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
        let listener = socket.listen(BACKLOG).map_err(|e| format!("listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("{e}"))?;
        println!("listening on {addr}");
        let mut next = 0usize;
        loop {
            // An accept error (e.g. out of descriptors) is the client's failure, not ours.
            let Ok((stream, _)) = listener.accept().await else {
                tokio::task::yield_now().await;
                continue;
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            tune(&stream, &settings);
            if let Some(worker) = handoff.get(next % handoff.len()) {
                let _ = worker.send(stream);
            }
            next = next.wrapping_add(1);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_wsgraces() {
        // wsgrace's MessageHead::finish for the same fields (src/protocol/frames.rs).
        let mut json = String::from(r#"{"type":"message","room":"#);
        push_json_string(&mut json, "lobby");
        json.push_str(r#","from":"#);
        push_json_string(&mut json, "ann");
        json.push_str(r#","text":"#);
        push_json_string(&mut json, "hi \"there\"\n");
        json.push_str(r#","seq":42,"ts":1700000000123}"#);
        assert_eq!(
            json,
            r#"{"type":"message","room":"lobby","from":"ann","text":"hi \"there\"\n","seq":42,"ts":1700000000123}"#
        );
        let framed = encode_text(&json);
        assert_eq!(framed[0], 0x81);
        assert_eq!(usize::from(framed[1]), json.len());
        assert_eq!(&framed[2..], json.as_bytes());
        let mut escaped = String::new();
        push_json_string(&mut escaped, "\u{1}\t\\");
        assert_eq!(escaped, r#""\u0001\t\\""#);
    }

    #[test]
    fn batches_are_cut_into_write_calls() {
        let batch = |per_write: usize, lens: &[usize]| {
            let mut b = Batch::new(per_write);
            for &len in lens {
                b.push(&vec![0u8; len]);
            }
            b
        };
        let cuts = |b: &Batch, flush: bool| {
            let mut cuts = Vec::new();
            b.cut(flush, &mut cuts);
            cuts
        };
        // (per_write, frame lengths, flush, calls' end offsets)
        let table: &[(usize, &[usize], bool, &[usize])] = &[
            (0, &[], false, &[]),
            (0, &[10, 20, 30], false, &[60]),
            (0, &[40_000, 40_000, 10], false, &[40_000, 80_010]),
            (0, &[70_000, 10], false, &[70_000, 70_010]),
            (2, &[10, 20, 30], false, &[30]),
            (2, &[10, 20, 30], true, &[30, 60]),
            (2, &[10, 20, 30, 40], false, &[30, 100]),
            (3, &[10], false, &[]),
            (3, &[10], true, &[10]),
            (2, &[40_000, 40_000], false, &[40_000]),
        ];
        for (per_write, lens, flush, expected) in table {
            let b = batch(*per_write, lens);
            assert_eq!(
                cuts(&b, *flush),
                expected.to_vec(),
                "{per_write} {lens:?} {flush}"
            );
        }
        let mut b = batch(2, &[10, 20, 30]);
        b.written(30);
        assert_eq!((b.bytes.len(), b.lens.len()), (30, 1));
        assert_eq!(cuts(&b, true), vec![30]);
        b.written(30);
        assert!(b.is_empty() && b.bytes.is_empty());
    }

    #[test]
    fn requests_and_settings() {
        let head = "GET /ws?room=fanout&name=m3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(
            parse_request(head),
            Ok(Request {
                room: "fanout".into(),
                name: "m3".into(),
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            })
        );
        assert!(parse_request("GET /other HTTP/1.1").is_err());
        assert!(parse_request(&format!("{head}\r\nSec-WebSocket-Protocol: wsgrace.v2")).is_err());
        assert!(parse_request("POST /ws?room=r&name=n HTTP/1.1").is_err());

        let (s, bind) = settings(
            "[server]\nworkers = 2\nbind = \"127.0.0.1:0\"\nmax_connections = 5\n\
             [floor]\nframes_per_write = 4\n",
        )
        .expect("valid");
        assert_eq!(
            (s.workers, s.frames_per_write, s.send_buffer),
            (2, 4, 262_144)
        );
        assert_eq!(bind.as_deref(), Some("127.0.0.1:0"));
        assert!(settings("[server]\nworkers = -1\n").is_err());
        assert!(settings("not toml [").is_err());
    }
}
