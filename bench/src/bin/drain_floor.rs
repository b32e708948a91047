//! `drain_floor`: the floor of a drain (issue 26, item 4). It does only the writes, reads and
//! closes a drain must do, so that `loadgen drain` can measure how far wsgrace's drain is
//! above it, in the same invocation (`--compare`).
//!
//! What it keeps of wsgrace, so that the work on the wire is the same:
//! - the sockets: accepted on one thread and handed round robin to `server.workers` worker
//!   threads (one per core when 0), with `SO_SNDBUF` = `session.send_buffer_bytes` (262,144
//!   unless set) and `TCP_USER_TIMEOUT` = `session.client_timeout_ms` (15 s unless set), as
//!   wsgrace sets them;
//! - the frames: on SIGTERM each connection gets `{"type":"going_away","reconnect_after_ms":D}`
//!   (D uniform in 0..=`shutdown.reconnect_spread_ms`, 5,000 unless set; none when 0) and a
//!   close frame with `shutdown.code` and `shutdown.reason`, the two in one write call, as
//!   wsgrace writes them;
//! - the end: the peer's close frame read, then the socket closed at once (wsgrace closes an
//!   acknowledged close without lingering), and the process exits once every connection is
//!   closed, with a `drain finished:` line on stderr.
//!
//! What it leaves out, which is the point: no actors, no messages between threads during the
//! drain (each worker writes its connections' frames in one loop and then reads its epoll set),
//! no task per connection, no close state, no timers (no close timeout: a client that never
//! answers keeps it running), no rooms, no presence, no metrics, no report beyond the count.
//!
//! It speaks to `loadgen` as the wsgrace binary does: `--config FILE` (the keys above; every
//! other key is ignored), `--bind ADDR`, one `listening on IP:PORT` line on stdout, a 101 and a
//! `welcome` for every `GET /ws?...` upgrade. Before SIGTERM it reads and discards what clients
//! send. It must not grow into a server: what a drain does not need, it does not do.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_http::ws::{hash_key, CloseCode, CloseReason, OpCode, Parser as FrameWriter};
use bytes::BytesMut;
use clap::Parser;

/// A request head longer than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// The accept queue's length, as wsgrace's (`BACKLOG` in src/service/server.rs).
const BACKLOG: i32 = 4096;
/// The epoll key of a worker's wake-up eventfd (connections are keyed by their fd).
const WAKE_KEY: u64 = u64::MAX;

#[derive(Debug, Parser)]
#[command(about = "The floor of a drain: only its writes, reads and closes")]
struct Cli {
    /// TOML config; see the file's doc comment for the keys read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (overrides `server.bind`).
    #[arg(long)]
    bind: Option<String>,
}

/// What the floor reads from the config.
#[derive(Debug, Clone)]
struct Settings {
    bind: String,
    workers: usize,
    send_buffer: usize,
    user_timeout: Duration,
    code: u16,
    reason: String,
    spread_ms: u64,
}

fn settings(cli: &Cli) -> Result<Settings, String> {
    let table = match &cli.config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .parse::<toml::Table>()
            .map_err(|e| format!("parsing {}: {e}", path.display()))?,
        None => toml::Table::new(),
    };
    let get = |section: &str, key: &str| table.get(section).and_then(|t| t.get(key)).cloned();
    let int = |section: &str, key: &str, default: i64| {
        get(section, key)
            .and_then(|v| v.as_integer())
            .unwrap_or(default)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = usize::try_from(int("server", "workers", 0)).unwrap_or(0);
    Ok(Settings {
        bind: cli
            .bind
            .clone()
            .or_else(|| get("server", "bind").and_then(|v| v.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        workers: if workers == 0 { cores } else { workers },
        send_buffer: usize::try_from(int("session", "send_buffer_bytes", 262_144)).unwrap_or(0),
        user_timeout: Duration::from_millis(
            u64::try_from(int("session", "client_timeout_ms", 15_000)).unwrap_or(15_000),
        ),
        code: u16::try_from(int("shutdown", "code", 1001)).unwrap_or(1001),
        reason: get("shutdown", "reason")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "server shutting down".into()),
        spread_ms: u64::try_from(int("shutdown", "reconnect_spread_ms", 5000)).unwrap_or(5000),
    })
}

/// A worker's inbox: accepted connections, and the drain's start.
struct Inbox {
    new: Mutex<Vec<TcpStream>>,
    wake: RawFd,
}

impl Inbox {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
        unsafe { libc::write(self.wake, (&one as *const u64).cast(), 8) };
    }
}

fn main() {
    let cli = Cli::parse();
    let settings = match settings(&cli) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("drain_floor: {err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = run(settings) {
        eprintln!("drain_floor: {err}");
        std::process::exit(1);
    }
}

fn run(settings: Settings) -> io::Result<()> {
    // SIGTERM is taken by `sigwait` below, in every thread: block it before any thread starts.
    // SAFETY: plain libc signal-set calls on a local set.
    let mut term: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut term);
        libc::sigaddset(&mut term, libc::SIGTERM);
        libc::sigaddset(&mut term, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &term, std::ptr::null_mut());
    }
    let addr: SocketAddr = settings
        .bind
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bind: {e}")))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    let listener: TcpListener = socket.into();
    println!("listening on {}", listener.local_addr()?);

    let draining = Arc::new(AtomicBool::new(false));
    let mut inboxes = Vec::new();
    let mut workers = Vec::new();
    for index in 0..settings.workers {
        // SAFETY: creating an eventfd has no preconditions.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let inbox = Arc::new(Inbox {
            new: Mutex::new(Vec::new()),
            wake,
        });
        inboxes.push(inbox.clone());
        let worker = Worker::new(inbox, draining.clone(), &settings, index as u64)?;
        workers.push(std::thread::spawn(move || worker.run()));
    }
    {
        let inboxes = inboxes.clone();
        let tuning = (settings.send_buffer, settings.user_timeout);
        std::thread::spawn(move || accept_loop(listener, inboxes, tuning));
    }
    let mut signal = 0;
    // SAFETY: waiting on the blocked signals of a valid set.
    unsafe { libc::sigwait(&term, &mut signal) };
    let started = Instant::now();
    draining.store(true, Ordering::Release);
    for inbox in &inboxes {
        inbox.wake();
    }
    let mut sessions = 0;
    for worker in workers {
        sessions += worker.join().unwrap_or(0);
    }
    eprintln!(
        "drain finished: sessions={sessions} duration_ms={}",
        started.elapsed().as_millis()
    );
    std::process::exit(0);
}

fn accept_loop(listener: TcpListener, inboxes: Vec<Arc<Inbox>>, tuning: (usize, Duration)) {
    let mut next = 0usize;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_tcp_user_timeout(Some(tuning.1));
        if tuning.0 > 0 {
            let _ = sock.set_send_buffer_size(tuning.0);
        }
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let Some(inbox) = inboxes.get(next % inboxes.len().max(1)) else {
            return;
        };
        next = next.wrapping_add(1);
        if let Ok(mut new) = inbox.new.lock() {
            new.push(stream);
        }
        inbox.wake();
    }
}

/// Where a connection is.
enum State {
    /// Reading the upgrade request.
    Handshake(Vec<u8>),
    /// Upgraded; what the client sends is discarded.
    Open,
    /// Our close frame is written (or `pending` of it still is): waiting for the peer's.
    Closing { pending: Vec<u8> },
}

struct Connection {
    stream: TcpStream,
    state: State,
}

struct Worker {
    epoll: RawFd,
    inbox: Arc<Inbox>,
    draining: Arc<AtomicBool>,
    connections: HashMap<RawFd, Connection>,
    close_frame: Vec<u8>,
    spread_ms: u64,
    random: u64,
    drained: usize,
}

impl Worker {
    fn new(
        inbox: Arc<Inbox>,
        draining: Arc<AtomicBool>,
        settings: &Settings,
        seed: u64,
    ) -> io::Result<Worker> {
        // SAFETY: creating an epoll set has no preconditions.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut close = BytesMut::new();
        FrameWriter::write_close(
            &mut close,
            Some(CloseReason {
                code: CloseCode::from(settings.code),
                description: (!settings.reason.is_empty()).then(|| settings.reason.clone()),
            }),
            false,
        );
        let worker = Worker {
            epoll,
            inbox,
            draining,
            connections: HashMap::new(),
            close_frame: close.to_vec(),
            spread_ms: settings.spread_ms,
            random: 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1,
            drained: 0,
        };
        worker.register(worker.inbox.wake, WAKE_KEY)?;
        Ok(worker)
    }

    fn register(&self, fd: RawFd, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: registering a valid fd in our epoll set.
        if unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn watch_writable(&self, fd: RawFd) {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            u64: fd as u64,
        };
        // SAFETY: modifying a registered fd of our epoll set.
        unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_MOD, fd, &mut event) };
    }

    /// Runs until every connection is closed after the drain started; returns how many were
    /// drained.
    fn run(mut self) -> usize {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut drain_started = false;
        loop {
            if drain_started && self.connections.is_empty() {
                return self.drained;
            }
            // SAFETY: `events` is a valid buffer of its length.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1)
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return self.drained;
            }
            for event in events.iter().take(n as usize) {
                let key = event.u64;
                if key == WAKE_KEY {
                    let mut buf = [0u8; 8];
                    // SAFETY: reading 8 bytes into a valid buffer from our eventfd.
                    unsafe { libc::read(self.inbox.wake, buf.as_mut_ptr().cast(), 8) };
                    self.take_new();
                    if !drain_started && self.draining.load(Ordering::Acquire) {
                        drain_started = true;
                        self.drain();
                    }
                    continue;
                }
                let fd = key as RawFd;
                if event.events & libc::EPOLLOUT as u32 != 0 {
                    self.flush(fd);
                }
                if event.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.readable(fd);
                }
            }
        }
    }

    fn take_new(&mut self) {
        let new = match self.inbox.new.lock() {
            Ok(mut new) => std::mem::take(&mut *new),
            Err(_) => return,
        };
        for stream in new {
            let fd = stream.as_raw_fd();
            if self.register(fd, fd as u64).is_ok() {
                self.connections.insert(
                    fd,
                    Connection {
                        stream,
                        state: State::Handshake(Vec::new()),
                    },
                );
            }
        }
    }

    /// The drain: each open connection's `going_away` and close frame, one write each, in one
    /// loop.
    fn drain(&mut self) {
        let mut frames = BytesMut::new();
        let mut text = String::new();
        let fds: Vec<RawFd> = self.connections.keys().copied().collect();
        for fd in fds {
            frames.clear();
            if self.spread_ms > 0 {
                let delay = self.next_random() % (self.spread_ms + 1);
                text.clear();
                text.push_str("{\"type\":\"going_away\",\"reconnect_after_ms\":");
                text.push_str(&delay.to_string());
                text.push('}');
                FrameWriter::write_message(&mut frames, &text, OpCode::Text, true, false);
            }
            frames.extend_from_slice(&self.close_frame);
            let Some(connection) = self.connections.get_mut(&fd) else {
                continue;
            };
            if !matches!(connection.state, State::Open) {
                // Not upgraded yet: dropped, as wsgrace refuses an upgrade while draining.
                self.connections.remove(&fd);
                continue;
            }
            self.drained += 1;
            let written = match connection.stream.write(&frames) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    self.connections.remove(&fd);
                    continue;
                }
            };
            let pending = frames.get(written..).unwrap_or_default().to_vec();
            let partial = !pending.is_empty();
            connection.state = State::Closing { pending };
            if partial {
                self.watch_writable(fd);
            }
        }
    }

    fn flush(&mut self, fd: RawFd) {
        let Some(connection) = self.connections.get_mut(&fd) else {
            return;
        };
        if let State::Closing { pending } = &mut connection.state {
            match connection.stream.write(pending) {
                Ok(n) => {
                    pending.drain(..n.min(pending.len()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.connections.remove(&fd);
                }
            }
        }
    }

    fn readable(&mut self, fd: RawFd) {
        let mut buf = [0u8; 4096];
        let Some(connection) = self.connections.get_mut(&fd) else {
            return;
        };
        let n = match connection.stream.read(&mut buf) {
            Ok(0) => {
                self.connections.remove(&fd);
                return;
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.connections.remove(&fd);
                return;
            }
        };
        let read = buf.get(..n).unwrap_or_default();
        match &mut connection.state {
            State::Handshake(head) => {
                head.extend_from_slice(read);
                let done = head.windows(4).any(|w| w == b"\r\n\r\n");
                if head.len() > MAX_HEAD {
                    self.connections.remove(&fd);
                } else if done {
                    let answer = upgrade_answer(head);
                    let ok = answer
                        .and_then(|answer| connection.stream.write_all(&answer).ok())
                        .is_some();
                    if ok {
                        connection.state = State::Open;
                    } else {
                        self.connections.remove(&fd);
                    }
                }
            }
            State::Open => {}
            State::Closing { pending } => {
                // The client's close frame (its first byte: FIN and opcode 8) ends it; wsgrace
                // closes an acknowledged close at once, without lingering.
                let ack = read.first().is_some_and(|b| b & 0x0f == 0x8);
                if ack && pending.is_empty() {
                    self.connections.remove(&fd);
                }
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: uniform enough for a reconnect delay.
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The 101 answer and the `welcome` to an upgrade request `head`, or `None` when it is none.
fn upgrade_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?;
    if !path.starts_with("/ws") {
        return None;
    }
    let key = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    let accept = hash_key(key.as_bytes());
    let accept = std::str::from_utf8(&accept).ok()?;
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    let mut welcome = BytesMut::new();
    FrameWriter::write_message(
        &mut welcome,
        r#"{"type":"welcome","room":"drain","epoch":"floor","seq":0}"#,
        OpCode::Text,
        true,
        false,
    );
    answer.extend_from_slice(&welcome);
    Some(answer)
}
