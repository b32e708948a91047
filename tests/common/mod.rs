//! What the tests share that needs the library's own types, beside the kit
//! (`wsgrace-kit`, which has everything else: processes, the raw-frame client, the chat
//! member): an in-process server running the session actor on `127.0.0.1:0` and recording
//! what its handler sees, and the binary under test as the kit starts it.
#![allow(dead_code)]

pub mod failover;

use std::net::SocketAddr;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{Extensions, HttpService, Request, Response};
use actix_service::{fn_service, ServiceFactoryExt};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::timeout;
use wsgrace::linger::{LingerBounds, LingeringStream};
use wsgrace::request_deadline::HeadTimed;
use wsgrace::transport::InFlightToken;
use wsgrace::upgrade::Upgrading;
use wsgrace::{SessionConfig, SessionEnd, SessionHandle, SessionHandler};
use wsgrace_kit::server::ServerCommand;
use wsgrace_kit::DEADLINE;

/// The `wsgrace` binary cargo built for this test run, as the kit starts it (on
/// `127.0.0.1:0`, `RUST_LOG=info`, its stderr echoed and kept).
pub fn wsgrace() -> ServerCommand {
    ServerCommand::new(env!("CARGO_BIN_EXE_wsgrace"))
}

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
    no_delay: true,
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
