//! The actix-web application: routes, upgrade checks, and [`serve`], which runs the whole
//! server the binary runs.
//!
//! Every check that can refuse an upgrade happens before the handshake, in
//! [`super::admission`]. This module serves: it must not implement session or close behaviour:
//! an upgrade request is taken out of the HTTP dispatcher with its connection
//! ([`crate::connection::upgrade`]), and an accepted one goes to a session that owns the socket
//! ([`crate::connection::session::start_on_socket`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_http::body::BoxBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, Request, RequestHead, Response};
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse};
use log::warn;

use crate::broker::{self, BrokerStatus};
use crate::close::CloseStatus;
use crate::config::Config;
use crate::connection::linger::{LingerBounds, LingeringStream};
use crate::connection::request_deadline::HeadTimed;
use crate::connection::session::{self, SessionConfig};
use crate::connection::transport::{tune_socket, SocketTuning};
use crate::connection::upgrade::{self, UpgradeFailed, Upgrading};
use crate::metrics::{self, metrics};
use crate::rooms::drain::{DrainPlan, DrainReport};
use crate::rooms::supervisor::Supervisor;
use crate::service::admission::{admit, Attempt};
use crate::service::api::{self, ApiState};
use crate::service::auth::Verifier;
use crate::service::client_address::AddressLimit;
use crate::service::open_files;
use crate::service::shutdown::{self, Readiness, Signals};

/// What the routes share.
#[derive(Clone)]
pub struct AppState {
    pub(super) config: Arc<Config>,
    /// Checks the token of every upgrade; `None`: authentication is off.
    pub(super) auth: Option<Arc<Verifier>>,
    pub(super) supervisor: Addr<Supervisor>,
    pub(super) readiness: Readiness,
    pub(super) open: Arc<AtomicUsize>,
    /// Sessions admitted at once: `server.max_connections`, or fewer where the open-files
    /// limit does not allow it.
    pub(super) max_connections: usize,
    /// Whether the broker can be reached (upgrades and `/readyz` answer 503 while not).
    pub(super) broker: BrokerStatus,
    /// `server.trusted_proxies`, parsed.
    pub(super) trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Open WebSockets per client address (`server.max_connections_per_ip`).
    pub(super) per_address: AddressLimit,
}

impl AppState {
    /// State for routes served with `config`, sessions registered with `supervisor`.
    pub fn new(config: Arc<Config>, supervisor: Addr<Supervisor>, readiness: Readiness) -> Self {
        AppState {
            max_connections: config.server.max_connections,
            trusted_proxies: config.server.trusted_proxies().into(),
            per_address: AddressLimit::new(config.server.max_connections_per_ip),
            config,
            auth: None,
            supervisor,
            readiness,
            open: Arc::new(AtomicUsize::new(0)),
            broker: BrokerStatus::default(),
        }
    }

    /// Refuses upgrades, and answers `/readyz` 503, while `broker` is down.
    pub fn with_broker_status(mut self, broker: BrokerStatus) -> Self {
        self.broker = broker;
        self
    }

    /// Upgrades need a token that `verifier` accepts (see [`super::auth`]); `None`: no
    /// authentication.
    pub fn with_auth(mut self, verifier: Option<Verifier>) -> Self {
        self.auth = verifier.map(Arc::new);
        self
    }

    /// The session settings for a session in `room`.
    pub fn session_config(&self, room: &str) -> SessionConfig {
        let c = &self.config;
        SessionConfig {
            heartbeat_interval: Duration::from_millis(c.session.heartbeat_interval_ms),
            client_timeout: Duration::from_millis(c.session.client_timeout_ms),
            max_message_bytes: c.session.max_frame_bytes,
            outbound_queue: c.session.outbound_queue,
            close_timeout: Duration::from_millis(c.close.timeout_ms),
            close_mode: c.mode_for_room(room),
            max_messages_per_sec: c.session.max_messages_per_sec,
            permessage_deflate: c.session.permessage_deflate,
        }
    }
}

/// The chat page served at `/` (it imports `/wsgrace.js`).
const CHAT_PAGE: &str = include_str!("../../web/chat.html");

/// The browser client served at `/wsgrace.js`, a plain ES module.
const CLIENT_MODULE: &str = include_str!("../../web/wsgrace.js");

/// Mounts `/`, `/wsgrace.js`, `/ws`, `/healthz`, `/readyz` and `/metrics`.
pub fn routes(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state.clone()))
            .route("/ws", web::get().to(upgrade))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
            .route("/wsgrace.js", web::get().to(client_module))
            .route("/", web::get().to(chat_page));
    }
}

async fn chat_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CHAT_PAGE)
}

async fn client_module() -> HttpResponse {
    // Browsers run a module script only when it comes with a JavaScript MIME type.
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CLIENT_MODULE)
}

async fn metrics_text() -> HttpResponse {
    match metrics::encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(text),
        Err(err) => {
            log::error!("encoding metrics failed: {err}");
            HttpResponse::InternalServerError().finish()
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if !state.readiness.is_ready() {
        HttpResponse::ServiceUnavailable().body("draining\n")
    } else if !state.broker.is_up() {
        HttpResponse::ServiceUnavailable().body("broker unavailable\n")
    } else {
        HttpResponse::Ok().body("ready\n")
    }
}

/// Whether `head` asks for a WebSocket upgrade (`Upgrade: websocket`).
fn asks_for_upgrade(head: &RequestHead) -> bool {
    head.headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("websocket"))
}

/// `/ws` through the HTTP routes: a plain `GET` (no `Upgrade: websocket`) asks why an upgrade
/// would be refused, and gets the refusal an upgrade would get, or 426 when it would be
/// accepted ([`Attempt::Probe`]); an upgrade that reaches the routes (one with a body) gets
/// the handshake's refusal. (An upgrade request goes to [`upgrade_connection`] instead.)
async fn upgrade(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let attempt = if asks_for_upgrade(req.head()) {
        Attempt::Upgrade
    } else {
        Attempt::Probe
    };
    let admitted = match admit(&state, req.head(), attempt) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    if attempt == Attempt::Probe {
        // The checks let it through: an upgrade would be accepted.
        return HttpResponse::build(actix_web::http::StatusCode::UPGRADE_REQUIRED)
            .insert_header((header::UPGRADE, "websocket"))
            .body("upgrade required: this request would be accepted as a websocket upgrade\n");
    }
    match session::start(&req, payload, admitted.handler, admitted.config) {
        Ok((_, response)) => response,
        Err(err) => {
            metrics().refused("handshake");
            err.error_response()
        }
    }
}

/// Serves a request with `Upgrade: websocket`, taken from the HTTP dispatcher together with its
/// connection ([`crate::connection::upgrade`]): the checks of [`admit`] and the handshake; then the
/// session owns the socket, and what is returned writes to it. A refusal is answered and the
/// connection closed.
async fn upgrade_connection(
    state: AppState,
    req: Request,
    connection: Upgrading,
) -> Option<upgrade::Writing> {
    let refusal: Response<BoxBody> = if req.path() != "/ws" {
        HttpResponse::NotFound().finish().into()
    } else {
        match admit(&state, req.head(), Attempt::Upgrade) {
            Err(refused) => (*refused).into(),
            Ok(admitted) => {
                let accepted = upgrade::accept_subprotocol(
                    req,
                    connection,
                    admitted.handler,
                    admitted.config,
                    admitted.subprotocol,
                );
                return match accepted.await {
                    Ok((_, writing)) => Some(writing),
                    Err(err @ (UpgradeFailed::Handshake(_) | UpgradeFailed::Framing(_))) => {
                        metrics().refused("handshake");
                        log::debug!("upgrade refused: {err}");
                        None
                    }
                    Err(err) => {
                        log::debug!("upgrade failed: {err}");
                        None
                    }
                };
            }
        }
    };
    drop(req);
    if let Err(err) = upgrade::refuse(connection, refusal).await {
        log::debug!("answering a refused upgrade failed: {err}");
    }
    None
}

/// Runs the server of `config` until a signal's drain ends. `on_listening` gets the bound
/// address once the socket listens. With `auth.*` set, the key file is read here (an
/// unusable one is an `InvalidInput` error); the binary checks it first, to exit 2, and calls
/// [`serve_with_auth`].
pub async fn serve(
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<DrainReport> {
    let verifier = Verifier::from_config(&config.auth, std::path::Path::new("config"))
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    serve_with_auth(config, verifier, on_listening).await
}

/// [`serve`] with the token verifier already built from `config.auth`
/// ([`Verifier::from_config`]); `None`: no authentication.
///
/// The HTTP stack is actix-web's, assembled here from actix-server and actix-http (as
/// `HttpServer` does) so that every accepted socket is a [`LingeringStream`]: a close the
/// server decides on reaches a peer that is still sending.
pub async fn serve_with_auth(
    config: Config,
    verifier: Option<Verifier>,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<DrainReport> {
    serve_listening(config, verifier, |listening| on_listening(listening.addr)).await
}

/// Where the server listens, once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The WebSocket and HTTP listener (`server.bind`).
    pub addr: SocketAddr,
    /// The server API's listener (`api.bind`), when it is on.
    pub api: Option<SocketAddr>,
}

/// [`serve_with_auth`] that also says where the server API listens.
pub async fn serve_listening(
    config: Config,
    verifier: Option<Verifier>,
    on_listening: impl FnOnce(Listening),
) -> std::io::Result<DrainReport> {
    let signals = Signals::install().map_err(std::io::Error::other)?;
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let budget = open_files::budget(
        config.server.max_connections,
        open_files::raise_limit(),
        workers,
    );
    if let Some(fits) = budget.shortfall {
        warn!(
            "server.max_connections = {} does not fit under the open-files limit: admitting {fits} \
             sessions, the excess gets 503 (raise `ulimit -n` or systemd's LimitNOFILE to serve more)",
            config.server.max_connections
        );
    }
    // The listeners first: a port in use or not allowed ends the start before any actor or
    // broker task exists, with one line naming the key.
    let api_listener = if config.api.enabled() {
        Some(
            listen(&config.api.bind, API_BACKLOG)
                .map_err(|err| bind_error("api.bind", &config.api.bind, err))?,
        )
    } else {
        None
    };
    let listener = listen(&config.server.bind, BACKLOG)
        .map_err(|err| bind_error("server.bind", &config.server.bind, err))?;
    let config = Arc::new(config);
    let broker = broker::from_config(&config).map_err(|err| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("broker: {err}"))
    })?;
    let broker_status = broker.status();
    let grace = Duration::from_millis(config.presence.grace_ms);
    let supervisor = Supervisor::with_broker(broker)
        .with_presence_grace(grace)
        .start();
    let readiness = Readiness::new();
    let mut state = AppState::new(config.clone(), supervisor.clone(), readiness.clone())
        .with_broker_status(broker_status)
        .with_auth(verifier);
    state.max_connections = budget.max_connections;

    let api = api_listener.map(|listener| {
        let state = ApiState::new(
            supervisor.clone(),
            &config.api.key,
            state.broker.clone(),
            config.session.max_frame_bytes,
        );
        (listener, state)
    });
    let addr = listener.local_addr()?;
    let connection = ConnectionSettings {
        tuning: SocketTuning {
            user_timeout: Duration::from_millis(config.session.client_timeout_ms),
            send_buffer: config.session.send_buffer_bytes,
            no_delay: config.session.tcp_nodelay,
        },
        linger: LingerBounds {
            time: Duration::from_millis(config.close.linger_ms),
            bytes: config.close.linger_bytes,
            max_lingering: budget.max_lingering,
        },
        request_timeout: Duration::from_millis(config.server.request_timeout_ms),
        local_addr: addr,
    };
    let mut builder = actix_server::Server::build()
        .workers(workers)
        .max_concurrent_connections(budget.per_worker_accept)
        .disable_signals()
        .shutdown_timeout(1)
        .listen("wsgrace", listener, move || {
            http_service(state.clone(), connection)
        })?;
    let mut api_addr = None;
    if let Some((listener, api_state)) = api {
        api_addr = Some(listener.local_addr()?);
        let request_timeout = connection.request_timeout;
        builder = builder.listen("wsgrace-api", listener, move || {
            api_service(api_state.clone(), request_timeout)
        })?;
    }
    let server = builder.run();
    on_listening(Listening {
        addr,
        api: api_addr,
    });
    let plan = DrainPlan {
        status: shutdown_status(&config),
        deadline: Duration::from_millis(config.shutdown.drain_timeout_ms),
        close_timeout: Duration::from_millis(config.close.timeout_ms),
        batch_size: config.shutdown.batch_size,
        batch_interval: Duration::from_millis(config.shutdown.batch_interval_ms),
        reconnect_spread: Some(Duration::from_millis(config.shutdown.reconnect_spread_ms)),
    };
    let drain = actix_rt::spawn(shutdown::drain_on_signal(
        signals,
        supervisor,
        readiness,
        plan,
        server.handle(),
    ));
    server.await?;
    drain.await.map_err(std::io::Error::other)
}

/// A listener that could not be opened, as one line naming the config key and the address.
fn bind_error(key: &str, bind: &str, err: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        err.kind(),
        format!("cannot listen on {bind} ({key}): {err}"),
    )
}

/// The accept queue's length: a burst of connects waits there, not in SYN retries.
const BACKLOG: i32 = 4096;

/// A listening socket on `bind`, as actix-server makes one (address reuse, `backlog`).
fn listen(bind: &str, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let addr: SocketAddr = bind
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// What every accepted connection gets.
#[derive(Debug, Clone, Copy)]
struct ConnectionSettings {
    tuning: SocketTuning,
    linger: LingerBounds,
    request_timeout: Duration,
    local_addr: SocketAddr,
}

/// One worker's HTTP/1 service over lingering sockets, serving `routes`.
fn http_service(
    state: AppState,
    settings: ConnectionSettings,
) -> impl ServiceFactory<
    actix_rt::net::TcpStream,
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
> {
    let app = App::new()
        .configure(routes(state.clone()))
        .into_factory()
        .map_err(|err: actix_web::Error| err.error_response());
    let http = HttpService::build()
        // Every request head's deadline is the connection's own (`HeadTimed`): actix-http's
        // would cover the first request only.
        .client_request_timeout(Duration::ZERO)
        // The connection ends right after the close handshake (RFC 6455 §7.1.1); the lingering
        // stream then reads what the peer still sends, for a bounded time.
        .client_disconnect_timeout(Duration::ZERO)
        .local_addr(settings.local_addr)
        .on_connect_ext(
            move |io: &HeadTimed<LingeringStream>, _: &mut actix_http::Extensions| {
                if let Some(tcp) = io.get_ref().tcp() {
                    tune_socket(tcp, settings.tuning);
                }
            },
        )
        // The handshake runs in a box of its own, freed once it is done: a session's
        // connection then keeps only the small writing future (the dispatcher's task holds it
        // in place of its own state).
        .upgrade(fn_service(
            move |(req, connection): (Request, Upgrading)| {
                let accepting = Box::pin(upgrade_connection(state.clone(), req, connection));
                async move {
                    if let Some(writing) = accepting.await {
                        writing.await;
                    }
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        ))
        .h1(map_config(app, |()| AppConfig::default()));
    fn_service(move |tcp: actix_rt::net::TcpStream| {
        let peer = tcp.peer_addr().ok();
        std::future::ready(Ok::<_, DispatchError>((
            HeadTimed::new(
                LingeringStream::new(tcp, settings.linger),
                settings.request_timeout,
            ),
            peer,
        )))
    })
    .and_then(http)
}

/// The accept queue of the API's listener.
const API_BACKLOG: i32 = 256;

/// One worker's HTTP/1 service of the server API: plain sockets, no upgrades.
fn api_service(
    state: ApiState,
    request_timeout: Duration,
) -> impl ServiceFactory<
    actix_rt::net::TcpStream,
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
> {
    let app = App::new()
        .configure(api::routes(state))
        .into_factory()
        .map_err(|err: actix_web::Error| err.error_response());
    HttpService::build()
        .client_request_timeout(request_timeout)
        .finish(map_config(app, |()| AppConfig::default()))
        .tcp()
}

fn shutdown_status(config: &Config) -> Option<CloseStatus> {
    match CloseStatus::new(config.shutdown.code, config.shutdown.reason.clone()) {
        Ok(status) => Some(status),
        Err(err) => {
            // Validated with the config; reaching this is a bug, not bad input.
            log::error!("shutdown status invalid after validation: {err}");
            None
        }
    }
}
