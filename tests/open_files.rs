//! Thousands of connections out of the box, and a quick 503 beyond what the open-files limit
//! allows (SPEC `server.max_connections`): the server raises its soft limit to the hard one,
//! and when the configured maximum does not fit it says so once and refuses the excess at
//! once instead of leaving clients in the accept backlog.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::wsgrace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use wsgrace_kit::DEADLINE;

/// Sends an upgrade request and returns the status code and the open socket (kept open by the
/// caller, so that an admitted session stays admitted).
async fn upgrade(addr: SocketAddr) -> Result<(u16, TcpStream), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /ws?room=many HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return Err("closed before a status line".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    Ok((code, stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_limit_the_excess_gets_503_at_once() {
    // 512 open files, 2 workers: 512 - (64 + 2 * 8) = 432 for connections, of which 32 stay
    // free for refusals and lingering closes: 400 sessions.
    let server = wsgrace().ulimit("-n 512").start("[server]\nworkers = 2\n");
    let log = server
        .wait_for_log("does not fit under the open-files limit")
        .await;
    assert!(log.contains("admitting 400 sessions"), "{log}");

    let started = Instant::now();
    let attempts: Vec<_> = (0..700)
        .map(|_| tokio::spawn(timeout(DEADLINE, upgrade(server.addr))))
        .collect();
    let mut admitted = Vec::new();
    let (mut refused, mut failed) = (0, Vec::new());
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(Ok((101, stream))) => admitted.push(stream),
            Ok(Ok((503, _))) => refused += 1,
            Ok(Ok((code, _))) => failed.push(format!("HTTP {code}")),
            Ok(Err(err)) => failed.push(err),
            Err(_) => failed.push("no answer before the deadline".into()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} clients had no answer: {failed:?}",
        failed.len()
    );
    assert_eq!((admitted.len(), refused), (400, 300));
    // Every client was answered, none left in the backlog until its own timeout.
    assert!(started.elapsed() < DEADLINE, "took {:?}", started.elapsed());
    // The server still serves: its health answers while 400 sessions are open.
    let health = wsgrace_kit::http::http_get(server.addr, "/healthz", &[]).await;
    assert_eq!(health, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_limit_is_raised_to_the_hard_one() {
    let hard = rlimit_hard();
    let server = wsgrace().ulimit("-S -n 256").start("");
    server
        .wait_for_log(&format!("open-files limit raised from 256 to {hard}"))
        .await;
    // More sessions than the soft limit it started with.
    let mut open = Vec::new();
    for _ in 0..300 {
        let (code, stream) = timeout(DEADLINE, upgrade(server.addr))
            .await
            .expect("no answer")
            .expect("upgrade");
        assert_eq!(code, 101);
        open.push(stream);
    }
    assert_eq!(open.len(), 300);
}

/// This process's hard open-files limit (the child inherits it).
fn rlimit_hard() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("a hard limit")
}
