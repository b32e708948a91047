//! [`RawClient`]: a WebSocket client that writes any bytes and reads the server's frames one
//! by one, for what no well-behaved client sends (bad frames, early frames, resets, a client
//! that stops reading). Every read is bounded by [`DEADLINE`]; a broken expectation panics,
//! naming what was expected.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::frame::{
    close_payload, encode_frame, parse_server_frame, RawFrame, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
    RSV1,
};
use crate::handshake::{
    send_request, socket_for, upgrade_request, upgrade_request_with, SocketOptions,
};
use crate::DEADLINE;

/// A raw-frame client on an upgraded (or refused) connection.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and upgrades on `path`; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::connect_with_buffer(addr, path, None).await
    }

    /// Connects and upgrades on `path` offering the `Sec-WebSocket-Extensions` value
    /// `extensions` (e.g. [`crate::deflate::BROWSER_OFFER`]); panics unless the answer is 101.
    /// Returns the client and the answer's `Sec-WebSocket-Extensions`, if any.
    pub async fn connect_offering(
        addr: SocketAddr,
        path: &str,
        extensions: &str,
    ) -> (RawClient, Option<String>) {
        let request = upgrade_request_with(addr, path, None, Some(extensions));
        let (head, client) = Self::request(addr, request.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        (client, crate::deflate::extensions_answer(&head))
    }

    /// Connects with a small receive buffer, for a client that stops reading.
    pub async fn connect_with_buffer(
        addr: SocketAddr,
        path: &str,
        recv_buffer: Option<u32>,
    ) -> RawClient {
        let options = SocketOptions {
            recv_buffer,
            ..SocketOptions::default()
        };
        let socket = socket_for(addr, options).expect("a socket");
        let (head, client) =
            Self::request_on(socket, addr, upgrade_request(addr, path).as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        client
    }

    /// Connects and sends `bytes` in one write (an upgrade request and whatever a client sends
    /// before it has the answer), then reads the response head, whatever its status.
    pub async fn request(addr: SocketAddr, bytes: &[u8]) -> (String, RawClient) {
        Self::request_on(TcpSocket::new_v4().expect("socket"), addr, bytes).await
    }

    async fn request_on(socket: TcpSocket, addr: SocketAddr, bytes: &[u8]) -> (String, RawClient) {
        let answered = timeout(DEADLINE, send_request(socket, addr, bytes))
            .await
            .expect("no response head before the deadline")
            .unwrap_or_else(|err| panic!("the request to {addr} failed: {err}"));
        let client = RawClient {
            stream: answered.stream,
            buf: answered.rest,
        };
        (answered.head, client)
    }

    /// Reads until the server closes the connection; returns what was not parsed yet.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("no data from the server before the deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The socket and the bytes read past the last parsed frame, for a test that reads and
    /// writes at once from two tasks.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// The client's local port.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    /// Drops the connection with a TCP reset (SO_LINGER 0), as a vanishing client does.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; a write error is then expected.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&encode_frame(fin, 0, opcode, true, payload))
            .await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, OP_TEXT, text.as_bytes()).await;
    }

    /// Sends `text` as one compressed message (`permessage-deflate`: RSV1, one frame).
    pub async fn send_compressed_text(&mut self, text: &str) {
        let payload = crate::deflate::compress_message(text.as_bytes());
        self.send_raw(&encode_frame(true, RSV1, OP_TEXT, true, &payload))
            .await;
    }

    pub async fn send_close(&mut self, code: Option<u16>, reason: &str) {
        let payload = code
            .map(|c| close_payload(c, reason.as_bytes()))
            .unwrap_or_default();
        self.send_frame(true, OP_CLOSE, &payload).await;
    }

    /// The next frame, or `None` when the server closed the TCP connection.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                assert!(self.buf.is_empty(), "connection closed mid-frame");
                return None;
            }
        }
    }

    /// The next frame that is not a ping (pings are answered, as a browser would).
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            let frame = self.read_frame().await?;
            if frame.opcode == OP_PING {
                let payload = frame.payload.clone();
                self.send_frame(true, OP_PONG, &payload).await;
                continue;
            }
            return Some(frame);
        }
    }

    /// Reads until a close frame; panics on EOF first, or when none came by the deadline
    /// (pings keep arriving, so each read's own deadline is not enough).
    pub async fn expect_close(&mut self) -> RawFrame {
        let read = async {
            let mut skipped = 0usize;
            loop {
                match self.next_frame().await {
                    Some(frame) if frame.opcode == OP_CLOSE => return frame,
                    Some(_) => skipped += 1,
                    None => panic!("connection closed without a close frame ({skipped} frames)"),
                }
            }
        };
        timeout(DEADLINE * 3, read)
            .await
            .expect("no close frame before the deadline")
    }

    /// Asserts that the server closes the TCP connection (with no further frame but pings).
    pub async fn expect_eof(&mut self) {
        let read = async {
            while let Some(frame) = self.read_frame().await {
                assert_eq!(
                    frame.opcode, OP_PING,
                    "unexpected frame before EOF: {frame:?}"
                );
            }
        };
        timeout(DEADLINE, read)
            .await
            .expect("the server did not close the connection");
    }

    /// Reads until EOF; asserts that no close frame came. Other frames are skipped.
    pub async fn expect_eof_without_close(&mut self) {
        let read = async {
            while let Some(frame) = self.read_frame().await {
                assert_ne!(frame.opcode, OP_CLOSE, "a close frame came: {frame:?}");
            }
        };
        timeout(DEADLINE * 3, read)
            .await
            .expect("the server did not close the connection");
    }
}
