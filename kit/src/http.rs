//! Plain HTTP/1.1 by hand on a fresh connection: a GET's status (with any headers, e.g. an
//! upgrade's), a whole response, its body, one sample of `/metrics`, and polling a path until
//! it answers a status. Each read is bounded by [`DEADLINE`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::DEADLINE;

/// The headers of a WebSocket upgrade, for [`http_get`].
pub const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// A GET request for `path` with `headers` (and `Connection: close` unless they name a
/// `Connection`).
fn get_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// The status code of a GET, or why there is none (no deadline: the caller bounds it).
pub async fn try_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(get_request(addr, path, &[]).as_bytes())
        .await?;
    let line = read_status_line(&mut stream).await?;
    status_of(&line).ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

async fn read_status_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of an HTTP status line (or of a response head starting with one).
pub fn status_of(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1)?.parse().ok()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// A plain HTTP/1.1 GET; returns the status code.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut stream = connect(addr).await;
    stream
        .write_all(get_request(addr, path, headers).as_bytes())
        .await
        .expect("write");
    let line = timeout(DEADLINE, read_status_line(&mut stream))
        .await
        .expect("no response")
        .expect("a status line");
    status_of(&line).unwrap_or_else(|| panic!("bad status line {line:?}"))
}

/// A plain HTTP/1.1 GET read to the end (`Connection: close`): the whole response, head and
/// body.
pub async fn http_get_response(addr: SocketAddr, path: &str) -> String {
    let mut stream = connect(addr).await;
    stream
        .write_all(get_request(addr, path, &[]).as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("no complete response before the deadline")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// [`http_get_response`] split: the status code and the body.
pub async fn http_get_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_get_response(addr, path).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = status_of(head).unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

/// The value of the sample `sample` (with its labels as exposed, e.g.
/// `wsgrace_upgrades_refused_total{reason="broker_unavailable"}`) in `/metrics`, 0 if absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (status, body) = http_get_body(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `GET path` on `addr` until it answers `status`; returns the body then. Panics
/// after `deadline`, with the last answer.
pub async fn wait_status(addr: SocketAddr, path: &str, status: u16, deadline: Duration) -> String {
    let start = Instant::now();
    let mut last = (0, String::new());
    while start.elapsed() < deadline {
        last = http_get_body(addr, path).await;
        if last.0 == status {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never answered {status} within {deadline:?}; last: {last:?}");
}
