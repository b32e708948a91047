//! Every close the server decides on reaches a peer that is still sending (SPEC, Close
//! behaviour 4: lingering close). For each code the server chooses (1002, 1003, 1007, 1008
//! slow consumer, 1008 rate limit, 1009) a peer keeps writing while the server closes it, and
//! must still read the close frame with that code, not a reset (a browser's 1006).
//!
//! The race is between the server's close and the peer's unread bytes: a server that closes its
//! socket while the peer's data is still arriving makes the kernel send a reset, and the peer's
//! kernel then throws away the close frame it had not read yet. Each case therefore runs many
//! times, with a raw-frame peer and with tokio-tungstenite, against the real binary.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::{encode_frame, parse_server_frame, RawClient, DEADLINE, OP_BINARY, OP_CLOSE, OP_TEXT};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// Connections per case and client kind: enough that a race lost one time in ten shows.
const ROUNDS: usize = 12;

/// How long a peer keeps writing at most; it stops earlier once it read the close frame.
const FLOOD_FOR: Duration = Duration::from_secs(6);

/// The close a peer saw: code and reason, or what it saw instead.
type Seen = Result<(u16, String), String>;

/// A server with small limits, so that every case triggers quickly.
fn server(extra: &str) -> ServerProcess {
    ServerProcess::start(&format!(
        "[session]\nheartbeat_interval_ms = 60000\nclient_timeout_ms = 120000\n{extra}"
    ))
}

/// What a member sends once the room is parked, before it goes on chatting.
#[derive(Clone)]
enum Trigger {
    /// Nothing: the chatter itself is the offence (the rate limit).
    None,
    /// These bytes, from a raw peer.
    Raw(Vec<u8>),
    /// This message, from tokio-tungstenite.
    Ws(Message),
}

/// What a member does: its trigger, then chatter; it reads after `read_after` chatter messages.
#[derive(Clone)]
struct Flood {
    trigger: Trigger,
    read_after: usize,
}

impl Flood {
    fn after(trigger: Trigger) -> Flood {
        Flood {
            trigger,
            read_after: 50,
        }
    }
}

/// Chatter messages a member sends at most.
const MAX_CHATTER: usize = 20_000;

/// A raw member (small receive buffer, reads nothing until told): joins, says `joined`, waits
/// for `parked`, sends as `flood` says and reads; returns the close it saw.
async fn raw_peer(
    server: &ServerProcess,
    query: &str,
    flood: Flood,
    parked: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let client = server.join_raw(query, Some(16 * 1024)).await;
    let (stream, mut buf) = client.into_parts();
    let (mut read, mut write) = stream.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let may_read = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (stop, may_read) = (stop.clone(), may_read.clone());
        tokio::spawn(async move {
            let _ = parked.await;
            if let Trigger::Raw(bytes) = &flood.trigger {
                let _ = write.write_all(bytes).await;
            }
            let chatter = masked(OP_TEXT, &[b'c'; 1000]);
            let started = Instant::now();
            let mut count = 0usize;
            while !stop.load(Ordering::Acquire)
                && started.elapsed() < FLOOD_FOR
                && count < MAX_CHATTER
            {
                if write.write_all(&chatter).await.is_err() {
                    break;
                }
                count += 1;
                if count == flood.read_after {
                    may_read.notify_one();
                }
            }
            // A reader waiting for a flood that ended early may start now.
            may_read.notify_one();
            // Dropping the write half would send a FIN: the peer stays open until it has read.
            write
        })
    };
    may_read.notified().await;
    let mut frames = 0usize;
    let seen = 'read: loop {
        while let Some((frame, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            frames += 1;
            if frame.opcode == OP_CLOSE {
                let code = frame.close_code().unwrap_or(0);
                break 'read Ok((code, frame.close_reason()));
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        match read.read(&mut chunk).await {
            Ok(0) => break Err(format!("EOF without a close frame after {frames} frames")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) => break Err(format!("{err} after {frames} frames")),
        }
    };
    stop.store(true, Ordering::Release);
    let _write = writer.await;
    seen
}

/// [`raw_peer`] with tokio-tungstenite.
async fn tungstenite_peer(
    server: &ServerProcess,
    query: &str,
    flood: Flood,
    parked: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let stream = timeout(DEADLINE, socket.connect(server.addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (ws, _) = timeout(
        DEADLINE,
        tokio_tungstenite::client_async(server.ws_url(query), stream),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake");
    let (mut sink, mut stream) = ws.split();
    // The welcome: the member is registered in its room.
    let welcome = timeout(DEADLINE, stream.next()).await.expect("no welcome");
    assert!(matches!(welcome, Some(Ok(Message::Text(_)))), "{welcome:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let may_read = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (stop, may_read) = (stop.clone(), may_read.clone());
        tokio::spawn(async move {
            let _ = parked.await;
            if let Trigger::Ws(message) = flood.trigger {
                let _ = sink.send(message).await;
            }
            let started = Instant::now();
            let mut count = 0usize;
            while !stop.load(Ordering::Acquire)
                && started.elapsed() < FLOOD_FOR
                && count < MAX_CHATTER
            {
                if sink.send(Message::Text("c".repeat(1000))).await.is_err() {
                    break;
                }
                count += 1;
                if count == flood.read_after {
                    may_read.notify_one();
                }
            }
            may_read.notify_one();
            sink
        })
    };
    may_read.notified().await;
    let mut frames = 0usize;
    let seen = loop {
        match stream.next().await {
            Some(Ok(Message::Close(Some(close)))) => {
                break Ok((u16::from(close.code), close.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) => break Ok((0, String::new())),
            Some(Ok(_)) => frames += 1,
            Some(Err(err)) => break Err(format!("{err} after {frames} frames")),
            None => {
                break Err(format!(
                    "end of stream without a close after {frames} frames"
                ))
            }
        }
    };
    stop.store(true, Ordering::Release);
    let _sink = writer.await;
    seen
}

/// Runs every round and asserts that each saw `code` with `reason`.
async fn every_round_sees<Fut>(
    case: &str,
    code: u16,
    reason: &str,
    rounds: impl Iterator<Item = Fut>,
) where
    Fut: std::future::Future<Output = Seen>,
{
    let mut failures = Vec::new();
    let mut count = 0;
    for (i, round) in rounds.enumerate() {
        count += 1;
        let seen = timeout(DEADLINE * 3, round)
            .await
            .unwrap_or_else(|_| Err("no answer before the deadline".into()));
        match seen {
            Ok((c, r)) if c == code && r.contains(reason) => {}
            other => failures.push(format!("round {i}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{case}: {} of {count} peers did not see {code} {reason:?}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, true, payload)
}

/// Messages of 8,000 bytes parked ahead of the close frame: more than the peer's receive
/// buffer, so that they wait in the server's send queue, fewer than its outbound queue.
const PARKED: usize = 300;

/// One round: a member that reads nothing joins `room`, a flooder parks [`PARKED`] messages
/// in its path, then the member sends what `flood` says and reads only after it went on
/// sending for a while. Returns the close it saw.
async fn parked_round(server: &ServerProcess, room: String, raw: bool, flood: Flood) -> Seen {
    let room = room.as_str();
    let query = format!("?room={room}");
    let (parked_tx, parked) = tokio::sync::oneshot::channel::<()>();
    let member = async {
        if raw {
            raw_peer(server, &query, flood, parked).await
        } else {
            tungstenite_peer(server, &query, flood, parked).await
        }
    };
    let park = async {
        // The member joins before the flood: it waits for its welcome, and the flooder's
        // first message needs a whole handshake more.
        fill_room(server, room, PARKED).await;
        let _ = parked_tx.send(());
    };
    let (seen, ()) = tokio::join!(member, park);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_answered_with_their_code_while_the_peer_keeps_sending() {
    let server = server("max_frame_bytes = 10000");
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "unmasked frame",
            encode_frame(true, 0, OP_TEXT, false, b"hi"),
            1002,
        ),
        ("binary frame", masked(OP_BINARY, b"bin"), 1003),
        ("invalid utf-8", masked(OP_TEXT, &[0xff, 0xfe, 0xfd]), 1007),
        ("message too big", masked(OP_TEXT, &[b'y'; 12_000]), 1009),
    ];
    for (case, trigger, code) in cases {
        let rounds = (0..ROUNDS).map(|round| {
            let trigger = Trigger::Raw(trigger.clone());
            parked_round(
                &server,
                format!("raw-{code}-{round}"),
                true,
                Flood::after(trigger),
            )
        });
        every_round_sees(case, code, "", rounds).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tungstenite_peer_sees_1003_and_1009_while_it_keeps_sending() {
    let server = server("max_frame_bytes = 10000");
    let cases = [
        ("binary message", Message::Binary(b"bin".to_vec()), 1003),
        ("message too big", Message::Text("y".repeat(12_000)), 1009),
    ];
    for (case, trigger, code) in cases {
        let rounds = (0..ROUNDS).map(|round| {
            let trigger = Trigger::Ws(trigger.clone());
            parked_round(
                &server,
                format!("ws-{code}-{round}"),
                false,
                Flood::after(trigger),
            )
        });
        every_round_sees(case, code, "", rounds).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_the_rate_limit_sees_1008_while_it_keeps_sending() {
    let server = server("max_messages_per_sec = 20");
    for raw in [true, false] {
        let rounds = (0..ROUNDS).map(|round| {
            parked_round(
                &server,
                format!("rate-{raw}-{round}"),
                raw,
                Flood::after(Trigger::None),
            )
        });
        every_round_sees("rate limit", 1008, "rate limit", rounds).await;
    }
}

/// Sends `count` messages of 8,000 bytes into `room` from a client that discards its own
/// copies unparsed (so that it never falls behind and is no slow consumer itself).
async fn fill_room(server: &ServerProcess, room: &str, count: usize) {
    let client = RawClient::connect(server.addr, &format!("/ws?room={room}")).await;
    let (stream, _) = client.into_parts();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut chunk = vec![0u8; 256 * 1024];
        while let Ok(n) = read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    });
    let frame = masked(OP_TEXT, &[b'f'; 8000]);
    for _ in 0..count {
        if write.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = write
        .write_all(&masked(OP_CLOSE, &1000u16.to_be_bytes()))
        .await;
    let _ = timeout(DEADLINE, reader).await;
}

/// Waits until the server has logged `count` slow-consumer closes.
async fn slow_consumers_logged(server: &ServerProcess, count: usize) {
    let deadline = Instant::now() + DEADLINE * 3;
    while server.stderr().matches("slow consumer").count() < count {
        assert!(Instant::now() < deadline, "no slow-consumer close #{count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_keeps_sending_sees_1008() {
    // A member floods its own room with 8,000-byte messages and reads nothing (the issue's
    // scenario): its outbound queue overflows while it is still sending. It starts to read once
    // the server has cut it off, and must find the close frame behind whatever the kernel
    // buffers hold.
    let server = server("outbound_queue = 64");
    for (kind, round) in (0..ROUNDS).map(|r| (r % 2, r)) {
        let room = format!("slow-{round}");
        let query = format!("?room={room}");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let victim = async {
            if kind == 0 {
                raw_peer_reading_on(&server, &query, rx).await
            } else {
                tungstenite_peer_reading_on(&server, &query, rx).await
            }
        };
        let cut_off = async {
            slow_consumers_logged(&server, round + 1).await;
            let _ = tx.send(());
        };
        let (seen, ()) = tokio::join!(timeout(DEADLINE * 3, victim), cut_off);
        match seen {
            Ok(Ok((1008, reason))) if reason == "slow consumer" => {}
            other => panic!(
                "round {round} ({}): {other:?}",
                ["raw", "tungstenite"][kind]
            ),
        }
    }
}

/// Messages of 8,000 bytes a slow consumer sends into its own room (the 3,000): far
/// more than the kernel buffers and the outbound queue hold together.
const SELF_FLOOD: usize = 3000;

/// After its flood, small messages every few milliseconds: it keeps talking until it reads.
const CHATTER_EVERY: Duration = Duration::from_millis(2);

/// A raw member that keeps sending small messages and reads only once `go` fires.
async fn raw_peer_reading_on(
    server: &ServerProcess,
    query: &str,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let client = server.join_raw(query, Some(16 * 1024)).await;
    let (stream, mut buf) = client.into_parts();
    let (mut read, mut write) = stream.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let flood = masked(OP_TEXT, &[b's'; 8000]);
            let chatter = masked(OP_TEXT, &[b'c'; 200]);
            let mut count = 0usize;
            while !stop.load(Ordering::Acquire) && started.elapsed() < DEADLINE * 3 {
                let (frame, pause) = if count < SELF_FLOOD {
                    (&flood, Duration::ZERO)
                } else {
                    (&chatter, CHATTER_EVERY)
                };
                if write.write_all(frame).await.is_err() {
                    break;
                }
                count += 1;
                tokio::time::sleep(pause).await;
            }
            write
        })
    };
    let _ = go.await;
    let mut frames = 0usize;
    let seen = 'read: loop {
        while let Some((frame, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            frames += 1;
            if frame.opcode == OP_CLOSE {
                break 'read Ok((frame.close_code().unwrap_or(0), frame.close_reason()));
            }
        }
        let mut chunk = [0u8; 64 * 1024];
        match read.read(&mut chunk).await {
            Ok(0) => break Err(format!("EOF without a close frame after {frames} frames")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) => break Err(format!("{err} after {frames} frames")),
        }
    };
    stop.store(true, Ordering::Release);
    let _write = writer.await;
    seen
}

/// A tokio-tungstenite member that keeps sending small messages and reads only once `go`
/// fires.
async fn tungstenite_peer_reading_on(
    server: &ServerProcess,
    query: &str,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let stream = timeout(DEADLINE, socket.connect(server.addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (ws, _) = timeout(
        DEADLINE,
        tokio_tungstenite::client_async(server.ws_url(query), stream),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake");
    let (mut sink, mut stream) = ws.split();
    let welcome = timeout(DEADLINE, stream.next()).await.expect("no welcome");
    assert!(matches!(welcome, Some(Ok(Message::Text(_)))), "{welcome:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut count = 0usize;
            while !stop.load(Ordering::Acquire) && started.elapsed() < DEADLINE * 3 {
                let (text, pause) = if count < SELF_FLOOD {
                    ("s".repeat(8000), Duration::ZERO)
                } else {
                    ("c".repeat(200), CHATTER_EVERY)
                };
                if sink.send(Message::Text(text)).await.is_err() {
                    break;
                }
                count += 1;
                tokio::time::sleep(pause).await;
            }
        })
    };
    let _ = go.await;
    let mut frames = 0usize;
    let seen = loop {
        match stream.next().await {
            Some(Ok(Message::Close(Some(close)))) => {
                break Ok((u16::from(close.code), close.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) => break Ok((0, String::new())),
            Some(Ok(_)) => frames += 1,
            Some(Err(err)) => break Err(format!("{err} after {frames} frames")),
            None => {
                break Err(format!(
                    "end of stream without a close after {frames} frames"
                ))
            }
        }
    };
    stop.store(true, Ordering::Release);
    let _ = writer.await;
    seen
}
