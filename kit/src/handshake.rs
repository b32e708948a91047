//! Connecting and the opening handshake (RFC 6455 section 4) on a plain TCP socket: the
//! upgrade request, sending it (or any bytes a test wants sent in its place), and reading the
//! response head. What follows the head is handed over with the stream, for whichever frame
//! reader comes next. Errors are `io::Error`s; the caller decides whether they are a failure.

use std::fmt::Display;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response head longer than this is not a WebSocket server's answer.
const MAX_HEAD: usize = 16 * 1024;

/// A valid upgrade request for `path` on `host`.
pub fn upgrade_request(host: impl Display, path: &str) -> String {
    upgrade_request_offering(host, path, None)
}

/// A valid upgrade request for `path` on `host` that offers `subprotocol`, if given.
pub fn upgrade_request_offering(
    host: impl Display,
    path: &str,
    subprotocol: Option<&str>,
) -> String {
    upgrade_request_with(host, path, subprotocol, None)
}

/// A valid upgrade request for `path` on `host` that offers `subprotocol` and the
/// `Sec-WebSocket-Extensions` value `extensions`, each if given.
pub fn upgrade_request_with(
    host: impl Display,
    path: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> String {
    let mut offer = subprotocol
        .map(|protocol| format!("Sec-WebSocket-Protocol: {protocol}\r\n"))
        .unwrap_or_default();
    if let Some(extensions) = extensions {
        offer.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
}

/// How a client's socket is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// Bind to this source address first (the bench spreads connections over 127.0.0.x).
    pub source: Option<IpAddr>,
    /// `SO_RCVBUF`, for a client that stops reading.
    pub recv_buffer: Option<u32>,
}

/// A TCP socket for `server`, as `options` say.
pub fn socket_for(server: SocketAddr, options: SocketOptions) -> io::Result<TcpSocket> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = options.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    Ok(socket)
}

/// A connection after the server's response head.
pub struct Answered {
    pub stream: TcpStream,
    /// The response head, without its blank line.
    pub head: String,
    /// Bytes read past the head (the first frames, if the server sent them at once).
    pub rest: Vec<u8>,
}

impl Answered {
    /// The status line's code.
    pub fn status(&self) -> Option<u16> {
        crate::http::status_of(&self.head)
    }
}

/// Connects `socket` to `server`, sends `bytes` in one write (an upgrade request and
/// whatever a client sends before it has the answer), and reads the response head, whatever
/// its status.
pub async fn send_request(
    socket: TcpSocket,
    server: SocketAddr,
    bytes: &[u8],
) -> io::Result<Answered> {
    let mut stream = socket.connect(server).await?;
    stream.write_all(bytes).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf.split_off(end + 4);
            return Ok(Answered { stream, head, rest });
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too long",
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during the upgrade",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to `server` and upgrades on `path`; any answer but 101 is an error naming the
/// status line.
pub async fn upgrade(
    server: SocketAddr,
    path: &str,
    options: SocketOptions,
) -> io::Result<Answered> {
    upgrade_offering(server, path, options, None).await
}

/// [`upgrade`], offering `subprotocol` if given (the answer's choice is the caller's to
/// check).
pub async fn upgrade_offering(
    server: SocketAddr,
    path: &str,
    options: SocketOptions,
    subprotocol: Option<&str>,
) -> io::Result<Answered> {
    upgrade_with(server, path, options, subprotocol, None).await
}

/// [`upgrade_offering`], also offering the `Sec-WebSocket-Extensions` value `extensions` if
/// given (e.g. [`crate::deflate::BROWSER_OFFER`]; the answer is the caller's to read).
pub async fn upgrade_with(
    server: SocketAddr,
    path: &str,
    options: SocketOptions,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> io::Result<Answered> {
    let socket = socket_for(server, options)?;
    let request = upgrade_request_with(server, path, subprotocol, extensions);
    let answered = send_request(socket, server, request.as_bytes()).await?;
    if answered.status() != Some(101) {
        let status = answered.head.lines().next().unwrap_or_default();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upgrade refused: {status}"),
        ));
    }
    Ok(answered)
}
