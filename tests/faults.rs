//! Faults and abuse against the real binary (issue: reliability): clients that vanish in the
//! middle of a close, half-open clients, slowloris, a reader that stops while its room is
//! flooded, and a client over the message rate. Each ends with the right answer, and the
//! server releases what the connection held.

mod common;

use std::time::{Duration, Instant};

use common::wsgrace;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::wait::until_true;
use wsgrace_kit::ws::connect;
use wsgrace_kit::DEADLINE;

/// Sends `count` messages of `size` bytes to `room` from a client that reads its own copies
/// (so that it is no slow consumer itself), and returns once it has received all of them:
/// by then the server has fanned every message out to the room. Returns the client's sink.
async fn flood(
    server: &ServerProcess,
    room: &str,
    count: usize,
    size: usize,
) -> futures::stream::SplitSink<wsgrace_kit::ws::Ws, Message> {
    let (mut sink, mut stream) = connect(server.ws_url(&format!("?room={room}")))
        .await
        .split();
    let (all_seen, seen_all) = tokio::sync::oneshot::channel();
    // Reads on after the flood too, so that tungstenite keeps answering the server's pings.
    tokio::spawn(async move {
        let mut seen = 0;
        let mut all_seen = Some(all_seen);
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(&msg, Message::Text(text) if text.contains("\"message\"")) {
                seen += 1;
            }
            if seen == count {
                if let Some(tx) = all_seen.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let text = "f".repeat(size);
    for _ in 0..count {
        sink.send(Message::Text(text.clone())).await.expect("flood");
    }
    timeout(DEADLINE * 3, seen_all)
        .await
        .expect("the flood was not fanned out before the deadline")
        .expect("the flooder lost its connection");
    sink
}

/// Whether the kernel still has the server's end (`server_port`) of the connection from
/// `client_port` on loopback, in any state but TIME_WAIT (from /proc/net/tcp).
fn server_holds_connection(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{server_port:04X}");
    let remote = format!(":{client_port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, l, r, state, ..]
            if l.ends_with(&local) && r.ends_with(&remote) && *state != "06")
    })
}

#[tokio::test]
async fn a_client_that_resets_after_the_close_frame_is_aborted_without_waiting() {
    let mut server =
        wsgrace().start("[close]\ntimeout_ms = 20000\n[shutdown]\ndrain_timeout_ms = 30000\n");
    let mut client = server.join_raw("", None).await;
    let signalled = Instant::now();
    server.sigterm();
    assert_eq!(client.expect_close().await.close_code(), Some(1001));
    client.reset();
    assert!(server.wait_exit(DEADLINE).await.success());
    // Far below the 20 s close timeout: the reset ended the session at once.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let log = server.stderr();
    assert!(log.contains("aborted=1"), "{log}");
}

// Two runtime threads, so that the flooder's reader (which answers the server's pings and
// takes its own copies) keeps up while the flood is written, also on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_client_in_a_busy_room_is_cut_and_its_socket_released() {
    let server = wsgrace().start(
        "[session]\nheartbeat_interval_ms = 500\nclient_timeout_ms = 3000\noutbound_queue = 512\n",
    );
    // Never reads nor writes again after its welcome, with a tiny receive window; the room
    // gets more than any socket buffer holds, so the server's writes to it block.
    let half_open = server.join_raw("?room=busy", Some(4096)).await;
    let port = half_open.local_port();
    assert!(server_holds_connection(server.addr.port(), port));
    let mut flooder = flood(&server, "busy", 4000, 2048).await;
    // The half-open session ends (slow consumer or client timeout) and the server's side of
    // its TCP connection goes away although it cannot take the bytes queued for it.
    until_true("the half-open connection to be released", DEADLINE, || {
        !server_holds_connection(server.addr.port(), port)
    })
    .await;
    // The flooder is still served.
    flooder
        .send(Message::Text("still here".into()))
        .await
        .expect("the flooder was cut too");
    drop(half_open);
}

/// Trickles `request` a byte every 100 ms on `stream` until the server cuts the connection
/// off; returns what the server answered and how long the trickle lasted. Panics if the whole
/// request went in.
async fn trickle_until_cut(
    stream: &mut tokio::net::TcpStream,
    request: &str,
) -> (String, Duration) {
    let started = Instant::now();
    let (mut read, mut write) = stream.split();
    let trickle = async {
        for byte in request.as_bytes() {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut answer = Vec::new();
    let cut = async {
        let _ = read.read_to_end(&mut answer).await;
    };
    tokio::select! {
        _ = cut => {}
        _ = trickle => panic!("the whole request was trickled in without being cut off"),
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_request_timeout() {
    let server = wsgrace().start("[server]\nrequest_timeout_ms = 500\n");
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = wsgrace_kit::handshake::upgrade_request(server.addr, "/ws");
    let (answer, took) = trickle_until_cut(&mut stream, &request).await;
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "unexpected answer {answer:?}"
    );
}

#[tokio::test]
async fn slowloris_after_a_first_quick_request_is_cut_off_too() {
    // actix-http times only a connection's first request head: after one quick request on a
    // keep-alive connection the next could be trickled for ever (still open after 25 s with a
    // 1.5 s timeout). SPEC: the timeout applies to every request head.
    let server = wsgrace().start("[server]\nrequest_timeout_ms = 500\n");
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let quick = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream.write_all(quick.as_bytes()).await.expect("request");
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).ends_with("ok\n") {
        let mut chunk = [0u8; 1024];
        let n = timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("no answer to the quick request")
            .expect("read");
        assert!(n > 0, "closed after the first request");
        first.extend_from_slice(&chunk[..n]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    // The same connection, kept alive: the second head trickles in.
    let request = wsgrace_kit::handshake::upgrade_request(server.addr, "/ws");
    let (answer, took) = trickle_until_cut(&mut stream, &request).await;
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "unexpected answer {answer:?}"
    );
    let timeouts = wsgrace_kit::http::metric(server.addr, "wsgrace_request_timeouts_total").await;
    assert!(timeouts >= 1.0, "{timeouts} request timeouts counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_in_a_flooded_room_is_closed_1008_with_memory_bounded() {
    let server = wsgrace().start("[session]\noutbound_queue = 256\n");
    let mut stopped = server.join_raw("?room=flood", Some(4096)).await;
    let rss_before = server.rss_bytes();
    // 3000 × 4 KiB = 12 MiB through the room while one member reads nothing.
    let _flooder = flood(&server, "flood", 3000, 4096).await;
    let rss_after = server.rss_bytes();
    let close = stopped.expect_close().await;
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(close.close_reason(), "slow consumer");
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024 * 1024,
        "server RSS grew by {grown} bytes while one reader stopped"
    );
}

#[tokio::test]
async fn a_client_over_the_message_rate_is_closed_1008() {
    let server = wsgrace().start("[session]\nmax_messages_per_sec = 20\n");
    let mut calm = connect(server.ws_url("?room=rate")).await;
    let mut noisy = connect(server.ws_url("?room=rate")).await;
    for n in 0..200 {
        if noisy
            .send(Message::Text(format!("spam {n}")))
            .await
            .is_err()
        {
            break;
        }
    }
    let close = loop {
        match timeout(DEADLINE, noisy.next()).await.expect("no close") {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason, "rate limit");
    // A client under the rate is untouched.
    calm.send(Message::Text("hello".into()))
        .await
        .expect("send");
    loop {
        match timeout(DEADLINE, calm.next()).await.expect("no message") {
            Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => break,
            Some(Ok(_)) => continue,
            other => panic!("calm client lost: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_flood_without_a_rate_limit_are_slowed_not_queued() {
    // No rate limit (the default): four clients, each alone in its room, send 2,500 messages
    // of 8 KiB each (80 MiB in all) as fast as their sockets take them. Each session stops
    // reading while 64 of its messages are on their way to the supervisor, so the flood waits
    // in TCP, not in the server's memory; every message still arrives, in order.
    let server = wsgrace().start("[history]\nsize = 10\n");
    let rss_before = server.rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampling = {
        let peak = peak.clone();
        let pid_rss = server.rss_reader();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(pid_rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let floods: Vec<_> = (0..4)
        .map(|i| {
            let room = format!("flood{i}");
            let server = &server;
            async move { flood(server, &room, 2500, 8192).await }
        })
        .collect();
    futures::future::join_all(floods).await;
    sampling.abort();
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(rss_before);
    eprintln!("server RSS grew by at most {grown} bytes during the flood");
    assert!(
        grown < 32 * 1024 * 1024,
        "server RSS grew by {grown} bytes during the flood"
    );
}

/// Samples the server's RSS every 10 ms until dropped; [`PeakRss::grown`] is the most it grew.
struct PeakRss {
    before: u64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampling: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn start(server: &ServerProcess) -> PeakRss {
        let before = server.rss_bytes();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
        let rss = server.rss_reader();
        let sampled = peak.clone();
        let sampling = tokio::spawn(async move {
            loop {
                sampled.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        PeakRss {
            before,
            peak,
            sampling,
        }
    }

    fn grown(&self) -> u64 {
        self.peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.before)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.sampling.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_pings_and_reads_nothing_is_closed_1008_with_memory_bounded() {
    // The case: 48 MiB of empty pings from a client that reads nothing. Each ping owes
    // a pong; the pongs count against the outbound queue like texts, so the queue fills and the
    // session closes 1008 instead of growing by ~40 bytes a ping (314 MiB before the fix). The
    // close timeout is long so that the session still waits for the ack when the client, done
    // sending, reads.
    let server = wsgrace().start(
        "[session]\nheartbeat_interval_ms = 60000\nclient_timeout_ms = 120000\n\
         [close]\ntimeout_ms = 60000\n",
    );
    let client = server.join_raw("?room=pings", Some(4096)).await;
    let rss = PeakRss::start(&server);
    let (stream, mut unread) = client.into_parts();
    let (mut read, mut write) = stream.into_split();
    let ping = wsgrace_kit::frame::encode_frame(true, 0, wsgrace_kit::frame::OP_PING, true, b"");
    let chunk = ping.repeat(64 * 1024 / ping.len());
    let mut sent = 0usize;
    while sent < 48 << 20 {
        // Once the session closed, nobody reads until the client has read the close frame:
        // TCP holds the writes back.
        match timeout(Duration::from_secs(3), write.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    let grown = rss.grown();
    eprintln!("{sent} bytes of pings; server RSS grew by at most {grown} bytes");
    assert!(
        grown < 8 * 1024 * 1024,
        "server RSS grew by {grown} bytes during a ping flood"
    );
    // Behind the pongs it could queue: the close frame.
    let deadline = Instant::now() + DEADLINE;
    let close = loop {
        if let Some((frame, used)) = wsgrace_kit::frame::parse_server_frame(&unread) {
            unread.drain(..used);
            if frame.opcode == wsgrace_kit::frame::OP_CLOSE {
                break frame;
            }
            continue;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = timeout(
            deadline.saturating_duration_since(Instant::now()),
            read.read(&mut buf),
        )
        .await
        .expect("no close frame before the deadline")
        .expect("reading the close frame");
        assert!(n > 0, "EOF without a close frame");
        unread.extend_from_slice(&buf[..n]);
    };
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(close.close_reason(), "slow consumer");
}
