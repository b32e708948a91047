//! Hostile frames against the real session actor (SPEC "Close behaviour" 4: bad input never
//! crashes the process or another session): a seeded generator (`generator.rs`) sends 300
//! connections' worth of malformed and random input to an in-process server on loopback, a
//! few at a time — bad lengths followed by silence, 64-bit lengths with the top bit set,
//! fragments interleaved with valid and invalid control frames, control frames over 125
//! bytes, continuations without a start, unmasked frames, reserved bits and opcodes,
//! truncated frames, random bytes, valid frames and valid closes mixed in.
//!
//! A reference decoder (`decoder.rs`) predicts, for every byte stream, how the server must end
//! the connection: a close frame with the failure's code (1002, 1003, 1007, 1009) then EOF —
//! at once when the frame's header shows a bad length, even if its payload never comes; its
//! echo of a valid client close then EOF; or, when the input stops before a frame can be
//! judged or goes silent, an abort (EOF without a close frame) after the client timeout. It
//! also predicts the pongs (exactly) and the echoed text messages (in order). Every connection
//! must end within a deadline: a hang is a failure. Meanwhile a well-behaved client stays
//! connected and must still get its echo at the end, the server must accept a fresh
//! connection, every session must have ended once with the matching result and delivered
//! exactly the predicted messages, nothing may panic and wsgrace may log no error.
//!
//! The seed is printed; `WSGRACE_FUZZ_SEED=N` replays a run and `WSGRACE_FUZZ_CASES=N` changes
//! the number of connections. The server bugs the fuzzer found have regression tests at the
//! end of the file.

mod common;
#[path = "hostile_frames/decoder.rs"]
mod decoder;
#[path = "hostile_frames/generator.rs"]
mod generator;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Event, TestServer};
use decoder::{predict, Ending, Frame, Len, Prediction};
use futures::{SinkExt, StreamExt};
use generator::{cases, Case};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use wsgrace::{CloseResult, SessionConfig};
use wsgrace_kit::frame::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use wsgrace_kit::DEADLINE;

/// The server's message limit: small, so that oversize messages are cheap to send.
const MAX: usize = 1024;
/// Short, so that input that stops mid-frame is aborted quickly.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_millis(100);
const DEFAULT_CASES: usize = 300;
/// Hostile connections open at once.
const CONCURRENCY: usize = 6;
/// From connect to EOF, for one connection; far above the client timeout, so only a hang
/// reaches it.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// An abort must not come much before the client timeout after our last byte.
const EARLIEST_ABORT: Duration = Duration::from_millis(300);

fn config() -> SessionConfig {
    SessionConfig {
        heartbeat_interval: HEARTBEAT,
        client_timeout: CLIENT_TIMEOUT,
        max_message_bytes: MAX,
        ..common::test_config()
    }
}

// ---------------------------------------------------------------------------------------------
// One hostile connection.

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerFrame {
    opcode: u8,
    payload: Vec<u8>,
}

/// What one connection saw.
#[derive(Debug)]
struct Observed {
    frames: Vec<ServerFrame>,
    /// EOF (or a reset) came; `false`: the deadline passed first.
    ended: bool,
    /// From our last byte to EOF.
    after_write: Duration,
    /// The server sent bytes that are no valid server frame.
    garbage: Option<String>,
}

/// Parses one server frame: unmasked, as RFC 6455 requires of a server.
fn parse_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame, usize)>, String> {
    let [first, second, rest @ ..] = buf else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        return Err("a masked server frame".into());
    }
    if first & 0x70 != 0 || first & 0x80 == 0 {
        return Err(format!("unexpected first byte {first:#04x}"));
    }
    let (len, header) = match second & 0x7f {
        126 => match rest.get(..2) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                (usize::try_from(len).map_err(|e| e.to_string())?, 10)
            }
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    let Some(payload) = buf.get(header..header + len) else {
        return Ok(None);
    };
    Ok(Some((
        ServerFrame {
            opcode: first & 0x0f,
            payload: payload.to_vec(),
        },
        header + len,
    )))
}

async fn attack(addr: SocketAddr, bytes: &[u8]) -> Result<Observed, String> {
    let deadline = tokio::time::Instant::now() + CONNECTION_DEADLINE;
    let mut stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write the upgrade: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| "no upgrade response")?
            .map_err(|e| format!("read the upgrade: {e}"))?;
        if n == 0 {
            return Err("closed during the upgrade".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&buf[..head_end])
        ));
    }
    buf.drain(..head_end);

    // All at once; the server may close before reading it all, so a write error is expected.
    let _ = stream.write_all(bytes).await;
    let written = Instant::now();

    let mut observed = Observed {
        frames: Vec::new(),
        ended: false,
        after_write: Duration::ZERO,
        garbage: None,
    };
    loop {
        match parse_server_frame(&buf) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                observed.frames.push(frame);
                continue;
            }
            Ok(None) => {}
            Err(err) => {
                observed.garbage = Some(err);
                buf.clear();
            }
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Ok(observed),
            // A reset after the server closed counts as the end of the connection.
            Ok(Ok(0) | Err(_)) => {
                observed.ended = true;
                observed.after_write = written.elapsed();
                if !buf.is_empty() && observed.garbage.is_none() {
                    observed.garbage = Some(format!("EOF inside a frame: {buf:02x?}"));
                }
                return Ok(observed);
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How a connection ended, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Failed(u16),
    Clean(Option<u16>),
    Aborted,
}

impl Outcome {
    fn result(self) -> CloseResult {
        match self {
            Outcome::Failed(_) => CloseResult::Error,
            Outcome::Clean(_) => CloseResult::Acked,
            Outcome::Aborted => CloseResult::Aborted,
        }
    }
}

/// Frames by kind, for failure messages: "3 ping, 1 text".
fn summary(frames: &[ServerFrame]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for frame in frames {
        let kind = match frame.opcode {
            OP_TEXT => "text",
            OP_PING => "ping",
            OP_PONG => "pong",
            OP_CLOSE => "close",
            _ => "other",
        };
        *counts.entry(kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if parts.is_empty() {
        "no frame".into()
    } else {
        parts.join(", ")
    }
}

/// Checks one connection against its prediction.
fn judge(prediction: &Prediction, observed: &Observed) -> Result<Outcome, String> {
    if !observed.ended {
        return Err(format!(
            "HANG: the server did not close the connection within {CONNECTION_DEADLINE:?}; \
             got {}",
            summary(&observed.frames)
        ));
    }
    if let Some(garbage) = &observed.garbage {
        return Err(format!("the server sent no valid frame: {garbage}"));
    }
    let closes: Vec<usize> = (0..observed.frames.len())
        .filter(|&i| observed.frames[i].opcode == OP_CLOSE)
        .collect();
    let outcome = match closes.as_slice() {
        [] => Outcome::Aborted,
        [i] if *i + 1 == observed.frames.len() => {
            let payload = &observed.frames[*i].payload;
            let code = match payload.as_slice() {
                [] => None,
                [a, b, reason @ ..] => {
                    std::str::from_utf8(reason)
                        .map_err(|_| "the server's close reason is not UTF-8".to_string())?;
                    Some(u16::from_be_bytes([*a, *b]))
                }
                [_] => return Err("a 1-byte close payload from the server".into()),
            };
            match (&prediction.ending, code) {
                (Ending::Clean(_), code) => Outcome::Clean(code),
                (_, Some(code)) => Outcome::Failed(code),
                (_, None) => Outcome::Clean(None),
            }
        }
        [i] => {
            return Err(format!(
                "frames after the close frame: {}",
                summary(&observed.frames[*i..])
            ))
        }
        _ => return Err(format!("{} close frames", closes.len())),
    };
    let expected = match &prediction.ending {
        Ending::Fail(codes) => codes.iter().any(|c| outcome == Outcome::Failed(*c)),
        Ending::Clean(code) => outcome == Outcome::Clean(*code),
        Ending::Abort => outcome == Outcome::Aborted,
        Ending::FailOrAbort(code) => {
            outcome == Outcome::Aborted || outcome == Outcome::Failed(*code)
        }
    };
    if !expected {
        return Err(format!("expected {:?}, got {outcome:?}", prediction.ending));
    }
    if outcome == Outcome::Aborted && observed.after_write < EARLIEST_ABORT {
        return Err(format!(
            "aborted {:?} after the last byte, before the client timeout of {CLIENT_TIMEOUT:?}",
            observed.after_write
        ));
    }

    let pongs: Vec<&Vec<u8>> = observed
        .frames
        .iter()
        .filter(|f| f.opcode == OP_PONG)
        .map(|f| &f.payload)
        .collect();
    let expected_pongs: Vec<&Vec<u8>> = prediction.pongs.iter().collect();
    if pongs != expected_pongs {
        return Err(format!(
            "pongs {pongs:02x?}, expected {expected_pongs:02x?}"
        ));
    }
    let mut texts = Vec::new();
    for frame in observed.frames.iter().filter(|f| f.opcode == OP_TEXT) {
        texts.push(
            String::from_utf8(frame.payload.clone())
                .map_err(|_| "the server sent a text frame that is not UTF-8".to_string())?,
        );
    }
    // Echoes go through the session's mailbox: a failure or a close handled first may refuse
    // the last ones. A connection that went silent has had all of them.
    let all_echoes = outcome == Outcome::Aborted;
    if !prediction.texts.starts_with(&texts) || (all_echoes && texts != prediction.texts) {
        return Err(format!(
            "echoes {texts:?}, expected {}{:?}",
            if all_echoes { "" } else { "a prefix of " },
            prediction.texts
        ));
    }
    for frame in &observed.frames {
        if !matches!(frame.opcode, OP_TEXT | OP_PING | OP_PONG | OP_CLOSE) {
            return Err(format!("unexpected frame {frame:?}"));
        }
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Panics anywhere in the process (the in-process server included), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// wsgrace's error-level log records: it logs at error level only when its own invariant
/// broke (STYLE "Logging"), so none may appear whatever the input. Error records of the
/// libraries underneath (actix-http logs one for every aborted response) are only counted.
struct ErrorLog {
    ours: Mutex<Vec<String>>,
    theirs: Mutex<BTreeMap<String, usize>>,
}

impl log::Log for ErrorLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("{}: {}", record.target(), record.args());
        if record.target().starts_with("wsgrace") {
            eprintln!("ERROR {line}");
            self.ours.lock().expect("log lock").push(line);
        } else {
            *self
                .theirs
                .lock()
                .expect("log lock")
                .entry(line)
                .or_default() += 1;
        }
    }

    fn flush(&self) {}
}

static ERRORS: ErrorLog = ErrorLog {
    ours: Mutex::new(Vec::new()),
    theirs: Mutex::new(BTreeMap::new()),
};

fn count_error_logs() {
    if log::set_logger(&ERRORS).is_ok() {
        log::set_max_level(log::LevelFilter::Error);
    }
}

fn seed() -> u64 {
    match std::env::var("WSGRACE_FUZZ_SEED") {
        Ok(seed) => seed.trim().parse().expect("WSGRACE_FUZZ_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(6),
    }
}

fn case_count() -> usize {
    std::env::var("WSGRACE_FUZZ_CASES")
        .ok()
        .map(|n| n.trim().parse().expect("WSGRACE_FUZZ_CASES: a count"))
        .unwrap_or(DEFAULT_CASES)
}

/// One finished connection.
struct Verdict {
    case: Case,
    prediction: Prediction,
    result: Result<Outcome, String>,
}

async fn run_cases(addr: SocketAddr, cases: Vec<Case>) -> Vec<Verdict> {
    let queue = Arc::new(Mutex::new(VecDeque::from(cases)));
    let verdicts = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let queue = queue.clone();
        let verdicts = verdicts.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let Some(case) = queue.lock().expect("queue").pop_front() else {
                    return;
                };
                let prediction = predict(&case.bytes);
                let result = match attack(addr, &case.bytes).await {
                    Ok(observed) => judge(&prediction, &observed),
                    Err(err) => Err(err),
                };
                verdicts.lock().expect("verdicts").push(Verdict {
                    case,
                    prediction,
                    result,
                });
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let mut verdicts = std::mem::take(&mut *verdicts.lock().expect("verdicts"));
    verdicts.sort_by_key(|v| v.case.index);
    verdicts
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_always_ends_the_connection_properly_and_hurts_no_one() {
    count_panics();
    count_error_logs();
    let seed = seed();
    let count = case_count();
    eprintln!(
        "hostile_frames: seed {seed} ({count} connections); replay with WSGRACE_FUZZ_SEED={seed}"
    );
    let started = Instant::now();
    let mut server = TestServer::start(config());

    // A well-behaved client, connected throughout; reading answers the server's pings.
    let (healthy, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let healthy_id = server.next_session().await.id();
    let (mut healthy_tx, mut healthy_rx) = healthy.split();
    let (echo_tx, mut echoes) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = healthy_rx.next().await {
            if let Message::Text(text) = message {
                let _ = echo_tx.send(text);
            }
        }
    });

    let verdicts = run_cases(server.addr, cases(seed, count)).await;

    // Statistics, then every failure with its input.
    let mut by_kind: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    for verdict in &verdicts {
        let label = match (&verdict.result, &verdict.prediction.ending) {
            (Ok(Outcome::Aborted), Ending::FailOrAbort(_)) => {
                "Aborted (waited for a frame the header showed bad)".to_string()
            }
            (Ok(outcome), _) => format!("{outcome:?}"),
            (Err(_), _) => "FAILED".to_string(),
        };
        *by_kind
            .entry(verdict.case.kind)
            .or_default()
            .entry(label)
            .or_default() += 1;
        if let Err(err) = &verdict.result {
            failures.push(format!(
                "case {} ({}): {err}\n  predicted {:?}\n  bytes {}",
                verdict.case.index,
                verdict.case.kind,
                verdict.prediction,
                hex(&verdict.case.bytes)
            ));
        }
    }
    for (kind, outcomes) in &by_kind {
        eprintln!("  {kind:<45} {outcomes:?}");
    }
    eprintln!(
        "hostile_frames: {count} connections in {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {count} connections misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every hostile session ended exactly once, with the result its connection showed, and
    // delivered exactly the messages predicted.
    let mut expected_results: BTreeMap<String, usize> = BTreeMap::new();
    for verdict in &verdicts {
        if let Ok(outcome) = verdict.result {
            *expected_results
                .entry(format!("{:?}", outcome.result()))
                .or_default() += 1;
        }
    }
    let expected_messages: usize = verdicts.iter().map(|v| v.prediction.texts.len()).sum();
    let (mut started_sessions, mut messages) = (0, 0);
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    let mut ended = std::collections::HashSet::new();
    while ended.len() < count || started_sessions < count {
        match server.next_event().await {
            Event::Started(_) => started_sessions += 1,
            Event::Message(id, _) if id != healthy_id => messages += 1,
            Event::Message(..) | Event::Held(..) => {}
            Event::Ended(id, end) => {
                assert_ne!(
                    id, healthy_id,
                    "the well-behaved client's session ended: {end:?}"
                );
                assert!(ended.insert(id), "session {id} ended twice");
                assert!(end.state.is_terminal(), "{end:?}");
                *results
                    .entry(format!("{:?}", end.record.result))
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(started_sessions, count, "sessions started");
    assert_eq!(results, expected_results, "how the sessions ended");
    assert_eq!(
        messages, expected_messages,
        "messages delivered to the handler"
    );

    // The well-behaved client is still served, and so is a new one.
    healthy_tx
        .send(Message::Text("still here".into()))
        .await
        .expect("the well-behaved client was disconnected");
    let echo = timeout(DEADLINE, echoes.recv())
        .await
        .expect("no echo for the well-behaved client")
        .expect("the well-behaved client's connection ended");
    assert_eq!(echo, "still here");
    let (mut fresh, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("connect timed out")
        .expect("the server accepts no new connection");
    fresh.send(Message::Text("new".into())).await.expect("send");
    let echo = timeout(DEADLINE, fresh.next())
        .await
        .expect("no echo for a new client")
        .expect("stream ended")
        .expect("ws error");
    assert_eq!(echo, Message::Text("new".into()));
    reader.abort();

    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    for (line, n) in ERRORS.theirs.lock().expect("log lock").iter() {
        eprintln!("  {n:>4} x error logged by a library: {line}");
    }
    let errors = ERRORS.ours.lock().expect("log lock").clone();
    assert!(errors.is_empty(), "wsgrace logged errors: {errors:#?}");
    eprintln!("hostile_frames: done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Regression tests for the server bugs the fuzzer found: each sends one input to a fresh server
// and asserts what the SPEC requires.

/// Sends `bytes` on a fresh connection to a fresh server; the code of the close frame it got
/// (`None`: no close frame) and how long after our last byte the connection ended.
async fn send_alone(bytes: &[u8]) -> (Option<u16>, Duration) {
    let server = TestServer::start(config());
    let observed = attack(server.addr, bytes).await.expect("connect");
    assert!(observed.ended, "HANG: {observed:?}");
    let code = observed
        .frames
        .iter()
        .find(|f| f.opcode == OP_CLOSE)
        .and_then(|f| f.payload.get(..2))
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    (code, observed.after_write)
}

/// A control frame over 125 bytes is closed 1002 (SPEC "Close behaviour" 4) even when it is
/// over `max_message_bytes` as well, whether it comes whole or as a header only. Guards
/// against the server answering 1009 because actix-http checked its size limit first.
#[tokio::test]
async fn a_control_frame_over_the_message_limit_is_refused_with_1002() {
    let whole = Frame::new(true, OP_PING, vec![b'p'; MAX + 1]).encode();
    assert_eq!(send_alone(&whole).await.0, Some(1002), "the whole frame");
    let (code, after) = send_alone(&whole[..4]).await;
    assert_eq!(code, Some(1002), "its header only; ended after {after:?}");
}

/// A frame over the limit is closed 1009 whatever follows it. Guards against
/// `transport::classify` inspecting the buffer after the codec had consumed the oversize
/// frame: it read the next frame's header, a 64-bit length with the top bit set, and answered
/// 1002.
#[tokio::test]
async fn an_oversize_frame_followed_by_a_top_bit_length_is_refused_with_1009() {
    let mut bytes = Frame::new(true, OP_TEXT, vec![b'a'; MAX + 1]).encode();
    bytes.extend_from_slice(&[0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(send_alone(&bytes).await.0, Some(1009));
}

/// A header that declares more than the limit is closed 1009 at once, before its payload
/// arrives. Guards against the server waiting for (and buffering) the payload, so that a
/// client that then went silent was aborted after the client timeout instead.
#[tokio::test]
async fn a_length_over_the_limit_is_refused_before_its_payload_arrives() {
    let mut frame = Frame::new(true, OP_TEXT, vec![b'a'; 16]);
    frame.len = Len::Declared(1 << 40);
    let (code, after) = send_alone(&frame.encode()).await;
    assert_eq!(code, Some(1009), "the connection ended after {after:?}");
    assert!(
        after < EARLIEST_ABORT,
        "refused only {after:?} after the header"
    );
}

/// One client that declares a 1 TiB message and streams 256 MiB of it to the real binary with
/// its defaults (`max_frame_bytes` 64 KiB, client timeout 15 s) barely moves the server's
/// memory: it refuses the frame from its header and stops reading. Guards against the server
/// buffering a declared payload without bound until it was complete.
#[tokio::test]
async fn a_length_over_the_limit_does_not_make_the_server_buffer_the_payload() {
    let server = common::wsgrace().start("");
    let before = server.rss_bytes();
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let n = timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("no upgrade response")
            .expect("read the upgrade response");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head)
    );
    let mut frame = Frame::new(true, OP_TEXT, Vec::new());
    frame.len = Len::Declared(1 << 40);
    stream.write_all(&frame.encode()).await.expect("header");
    let chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    let refused = timeout(Duration::from_secs(10), async {
        for _ in 0..256 {
            if stream.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    })
    .await
    .expect("the server neither read the payload nor closed the connection within 10 s");
    let grown_mib = server.rss_bytes().saturating_sub(before) >> 20;
    assert!(
        grown_mib < 32,
        "the server's memory grew by {grown_mib} MiB for one message over a 64 KiB limit"
    );
    assert!(
        refused,
        "the server read all 256 MiB of a message over its 64 KiB limit ({:?})",
        started.elapsed()
    );
}
