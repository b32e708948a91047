//! The actix-web application: routes, upgrade checks, and [`serve`], which runs the whole
//! server the binary runs.
//!
//! Every check that can refuse an upgrade happens here, before the handshake: draining (503),
//! origin (403), room and name (400), connection limit (503). It must not implement session
//! or close behaviour: accepted upgrades go to [`crate::session::start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use log::warn;
use serde::Deserialize;

use crate::close::{CloseMode, CloseStatus};
use crate::config::{is_valid_name, Config};
use crate::metrics::{self, metrics};
use crate::session::{self, SessionConfig, SessionEnd, SessionHandle, SessionHandler};
use crate::shutdown::{self, DrainPlan, Readiness, Signals};
use crate::supervisor::{ChatHandler, DrainReport, Supervisor};

/// What the routes share.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    supervisor: Addr<Supervisor>,
    readiness: Readiness,
    open: Arc<AtomicUsize>,
}

impl AppState {
    /// State for routes served with `config`, sessions registered with `supervisor`.
    pub fn new(config: Arc<Config>, supervisor: Addr<Supervisor>, readiness: Readiness) -> Self {
        AppState {
            config,
            supervisor,
            readiness,
            open: Arc::new(AtomicUsize::new(0)),
        }
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
        }
    }
}

/// The chat page served at `/`.
const CHAT_PAGE: &str = include_str!("chat.html");

/// Mounts `/`, `/ws`, `/healthz`, `/readyz` and `/metrics`.
pub fn routes(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state.clone()))
            .route("/ws", web::get().to(upgrade))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
            .route("/", web::get().to(chat_page));
    }
}

async fn chat_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(CHAT_PAGE)
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
    if state.readiness.is_ready() {
        HttpResponse::Ok().body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().body("draining\n")
    }
}

#[derive(Debug, Deserialize)]
struct JoinQuery {
    room: Option<String>,
    name: Option<String>,
}

async fn upgrade(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.readiness.is_ready() {
        metrics().refused("draining");
        return HttpResponse::ServiceUnavailable().body("draining\n");
    }
    if let Err(refusal) = check_origin(&req, &state.config.server.allowed_origins) {
        warn!("upgrade refused: {refusal}");
        metrics().refused("origin");
        return HttpResponse::Forbidden().body(format!("{refusal}\n"));
    }
    let query = match web::Query::<JoinQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(err) => {
            metrics().refused("bad_query");
            return HttpResponse::BadRequest().body(format!("bad query: {err}\n"));
        }
    };
    let room = query.room.unwrap_or_else(|| "lobby".to_owned());
    if !is_valid_name(&room) {
        metrics().refused("bad_room");
        return HttpResponse::BadRequest().body("room must be 1-64 characters of [A-Za-z0-9_.-]\n");
    }
    if let Some(name) = &query.name {
        if !is_valid_name(name) {
            metrics().refused("bad_name");
            return HttpResponse::BadRequest()
                .body("name must be 1-64 characters of [A-Za-z0-9_.-]\n");
        }
    }
    let open = state.open.fetch_add(1, Ordering::AcqRel);
    let guard = OpenGuard(state.open.clone());
    if open >= state.config.server.max_connections {
        warn!(
            "upgrade refused: {} connections open",
            state.config.server.max_connections
        );
        metrics().refused("max_connections");
        return HttpResponse::ServiceUnavailable().body("too many connections\n");
    }
    let config = state.session_config(&room);
    let handler = Counted {
        inner: ChatHandler::new(state.supervisor.clone(), room, query.name),
        _guard: guard,
    };
    match session::start(&req, payload, handler, config) {
        Ok((_, response)) => response,
        Err(err) => {
            metrics().refused("handshake");
            err.error_response()
        }
    }
}

/// Why an origin was refused.
#[derive(Debug, thiserror::Error)]
enum OriginRefused {
    #[error("origin {0:?} is not allowed")]
    NotAllowed(String),
    #[error("an Origin header is required")]
    Missing,
}

fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), OriginRefused> {
    if allowed.is_empty() {
        return Ok(());
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .ok_or(OriginRefused::Missing)?;
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(OriginRefused::NotAllowed(origin.to_owned()))
    }
}

/// Decrements the open-connection count when the session (and so its handler) is dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handler that holds an [`OpenGuard`] for its session's lifetime.
struct Counted<H> {
    inner: H,
    _guard: OpenGuard,
}

impl<H: SessionHandler> SessionHandler for Counted<H> {
    fn on_start(&mut self, session: &SessionHandle) {
        self.inner.on_start(session)
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.inner.on_message(session, text)
    }

    fn shutdown_mode(&mut self, default: CloseMode) -> CloseMode {
        self.inner.shutdown_mode(default)
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        self.inner.on_end(session, end)
    }
}

/// Runs the server of `config` until a signal's drain ends. `on_listening` gets the bound
/// address once the socket listens.
pub async fn serve(
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<DrainReport> {
    let signals = Signals::install().map_err(std::io::Error::other)?;
    let config = Arc::new(config);
    let supervisor = Supervisor::new().start();
    let readiness = Readiness::new();
    let state = AppState::new(config.clone(), supervisor.clone(), readiness.clone());
    let mut server = HttpServer::new(move || App::new().configure(routes(state.clone())))
        .disable_signals()
        .on_connect(crate::transport::on_connect(Duration::from_millis(
            config.session.client_timeout_ms,
        )))
        // Close right after the handshake instead of lingering for the client (RFC 6455 §7.1.1).
        .client_disconnect_timeout(Duration::ZERO)
        .client_request_timeout(Duration::from_millis(config.server.request_timeout_ms))
        .shutdown_timeout(1)
        .max_connections(config.server.max_connections.saturating_add(1024))
        .backlog(4096);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server.bind(config.server.bind.as_str())?;
    if let Some(addr) = server.addrs().first() {
        on_listening(*addr);
    }
    let server = server.run();
    let plan = DrainPlan {
        status: shutdown_status(&config),
        deadline: Duration::from_millis(config.shutdown.drain_timeout_ms),
        batch_size: config.shutdown.batch_size,
        batch_interval: Duration::from_millis(config.shutdown.batch_interval_ms),
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
