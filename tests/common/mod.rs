//! Shared test helpers: an in-process server running the session actor on `127.0.0.1:0`, a
//! raw-frame WebSocket client for what no well-behaved client sends, and waiting for events
//! with deadlines (never a fixed sleep for an effect).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{Extensions, HttpService, Request, Response};
use actix_service::{fn_service, ServiceFactoryExt};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::timeout;
use wsgrace::linger::{LingerBounds, LingeringStream};
use wsgrace::request_deadline::HeadTimed;
use wsgrace::transport::InFlightToken;
use wsgrace::upgrade::Upgrading;
use wsgrace::{SessionConfig, SessionEnd, SessionHandle, SessionHandler};

/// A free loopback port (bound and released: good enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Long enough for a busy 2-core machine; only reached when a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// What the test handler saw.
#[derive(Debug)]
pub enum Event {
    Started(SessionHandle),
    Message(u64, String),
    Ended(u64, SessionEnd),
    /// A message starting with `hold ` came: the token counts it as on its way until dropped.
    Held(u64, InFlightToken),
}

/// Records every event and echoes each text message back to its sender; holds a message
/// starting with `hold ` as on its way (see [`Event::Held`]).
struct Recorder {
    events: UnboundedSender<Event>,
}

impl SessionHandler for Recorder {
    fn on_start(&mut self, session: &SessionHandle) {
        let _ = self.events.send(Event::Started(session.clone()));
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        if text.starts_with("hold ") {
            let _ = self
                .events
                .send(Event::Held(session.id(), session.hold_inbound()));
        }
        let _ = self
            .events
            .send(Event::Message(session.id(), text.to_string()));
        session.deliver(text);
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        let _ = self.events.send(Event::Ended(session.id(), end.clone()));
    }
}

/// A server with one worker serving `/ws` with the [`Recorder`] handler, the way the binary
/// serves it: the session owns the upgraded socket ([`wsgrace::upgrade`]). (The other way in,
/// [`wsgrace::start`] inside actix-web's dispatcher, is what `examples/echo` runs for the
/// Autobahn suite.)
pub struct TestServer {
    pub addr: SocketAddr,
    pub events: UnboundedReceiver<Event>,
}

/// How the test server's connections linger: for longer than any deadline, so that a test
/// sees whether a connection lingers at all.
const LINGER: LingerBounds = LingerBounds {
    time: Duration::from_secs(60),
    bytes: 16 * 1024 * 1024,
    max_lingering: 1024,
};

async fn serve_upgrade(
    req: Request,
    connection: Upgrading,
    events: UnboundedSender<Event>,
    config: SessionConfig,
) {
    if req.path() != "/ws" {
        let _ = wsgrace::upgrade::refuse(connection, Response::not_found()).await;
        return;
    }
    match wsgrace::upgrade::accept(req, connection, Recorder { events }, config).await {
        Ok((_, writing)) => writing.await,
        Err(err) => eprintln!("test server: {err}"),
    }
}

async fn embedded_route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<(UnboundedSender<Event>, SessionConfig)>,
) -> Result<HttpResponse, actix_web::Error> {
    let (events, config) = state.get_ref().clone();
    let (_, response) = wsgrace::start(&req, payload, Recorder { events }, config)?;
    Ok(response)
}

/// How long the test server waits for a request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Socket options of the test servers' connections.
const TUNING: wsgrace::transport::SocketTuning = wsgrace::transport::SocketTuning {
    user_timeout: Duration::from_secs(15),
    send_buffer: 0,
};

/// Runs `serve` on a thread of its own, in an actix system; `serve` sends the address it
/// listens on, then runs until the test process ends. Returns that address.
fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Err(err) = actix::System::new().block_on(serve(addr_tx)) {
            eprintln!("test server failed: {err}");
        }
    });
    addr_rx
        .recv_timeout(DEADLINE)
        .expect("test server did not bind")
}

impl TestServer {
    pub fn start(config: SessionConfig) -> TestServer {
        let (events_tx, events) = unbounded_channel();
        let addr = spawn_server(move |addr_tx| async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let server = actix_server::Server::build()
                .workers(1)
                .disable_signals()
                .listen("test", listener, move || {
                    let events = events_tx.clone();
                    let config = config.clone();
                    let http = HttpService::build()
                        .client_disconnect_timeout(Duration::ZERO)
                        .on_connect_ext(|io: &HeadTimed<LingeringStream>, _: &mut Extensions| {
                            if let Some(tcp) = io.get_ref().tcp() {
                                wsgrace::transport::tune_socket(tcp, TUNING);
                            }
                        })
                        .upgrade(fn_service(move |(req, connection)| {
                            let served =
                                serve_upgrade(req, connection, events.clone(), config.clone());
                            async move {
                                served.await;
                                Ok::<(), std::convert::Infallible>(())
                            }
                        }))
                        .h1(|_req: Request| async {
                            Ok::<_, std::convert::Infallible>(Response::not_found())
                        });
                    fn_service(|tcp: actix_rt::net::TcpStream| {
                        let peer = tcp.peer_addr().ok();
                        std::future::ready(Ok::<_, DispatchError>((
                            HeadTimed::new(LingeringStream::new(tcp, LINGER), REQUEST_TIMEOUT),
                            peer,
                        )))
                    })
                    .and_then(http)
                })?
                .run();
            let _ = addr_tx.send(addr);
            server.await
        });
        TestServer { addr, events }
    }

    /// The same server on the other way in: `wsgrace::start` inside actix-web's own
    /// `HttpServer` and its HTTP dispatcher, as an app embeds the session (no lingering close,
    /// which `HttpServer` cannot give).
    pub fn start_embedded(config: SessionConfig) -> TestServer {
        let (events_tx, events) = unbounded_channel();
        let addr = spawn_server(move |addr_tx| async move {
            let state = web::Data::new((events_tx, config));
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .route("/ws", web::get().to(embedded_route))
            })
            .workers(1)
            .disable_signals()
            .on_connect(wsgrace::transport::on_connect(TUNING))
            .client_disconnect_timeout(Duration::ZERO)
            .bind("127.0.0.1:0")?;
            let addr = server.addrs()[0];
            let running = server.run();
            let _ = addr_tx.send(addr);
            running.await
        });
        TestServer { addr, events }
    }

    /// The next event, or a panic after the deadline.
    pub async fn next_event(&mut self) -> Event {
        timeout(DEADLINE, self.events.recv())
            .await
            .expect("no server event before the deadline")
            .expect("server event channel closed")
    }

    /// The next session that starts.
    pub async fn next_session(&mut self) -> SessionHandle {
        loop {
            if let Event::Started(handle) = self.next_event().await {
                return handle;
            }
        }
    }

    /// Waits for the end of session `id`; collects the messages delivered before it.
    pub async fn ended(&mut self, id: u64) -> (SessionEnd, Vec<String>) {
        let mut messages = Vec::new();
        loop {
            match self.next_event().await {
                Event::Ended(ended, end) if ended == id => return (end, messages),
                Event::Message(from, text) if from == id => messages.push(text),
                _ => {}
            }
        }
    }

    /// Waits for a message delivered to the handler from session `id`.
    pub async fn message_from(&mut self, id: u64) -> String {
        loop {
            match self.next_event().await {
                Event::Message(from, text) if from == id => return text,
                Event::Ended(ended, end) if ended == id => {
                    panic!("session {id} ended ({end:?}) before delivering a message")
                }
                _ => {}
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// Session settings for tests: defaults, with a short close timeout.
pub fn test_config() -> SessionConfig {
    SessionConfig {
        close_timeout: Duration::from_millis(500),
        ..SessionConfig::default()
    }
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame, `None` for an empty payload.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }

    pub fn text(&self) -> String {
        assert_eq!(self.opcode, OP_TEXT, "not a text frame: {self:?}");
        String::from_utf8(self.payload.clone()).expect("server sent invalid UTF-8")
    }
}

/// Encodes a frame as a client would (masked unless `masked` is false).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A WebSocket client that writes any bytes and reads frames one by one.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::connect_with_buffer(addr, path, None).await
    }

    /// Connects with a small receive buffer, for a client that stops reading.
    pub async fn connect_with_buffer(
        addr: SocketAddr,
        path: &str,
        recv_buffer: Option<u32>,
    ) -> RawClient {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
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
        let stream = timeout(DEADLINE, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        client.send_raw(bytes).await;
        let head = client.read_http_head().await;
        (head, client)
    }

    /// Reads until the server closes the connection; returns what was not parsed yet.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            assert!(
                self.fill().await > 0,
                "connection closed during the upgrade"
            );
        }
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

/// Parses one unmasked server frame from `buf`: the frame and the bytes it used.
pub fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let [first, second, rest @ ..] = buf else {
        return None;
    };
    assert_eq!(second & 0x80, 0, "server frames must not be masked");
    let (len, header) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(header..header + len)?.to_vec();
    Some((
        RawFrame {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            payload,
        },
        header + len,
    ))
}

pub mod browser;
pub mod member;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod redis;
