//! Mounting wsgrace in an existing actix-web app.
//!
//! ```sh
//! cargo run --release --example embed            # then: websocat ws://127.0.0.1:8081/ws
//! curl -X POST http://127.0.0.1:8081/admin/drain
//! ```
//!
//! The app has its own routes (`/hello`), its own message handler (it answers each message
//! to its sender instead of broadcasting), its own close-mode rule (a session that sent a
//! message in the last second closes awaited, an idle one fire-and-forget), and its own
//! shutdown trigger (`POST /admin/drain`) instead of a signal. wsgrace's supervisor keeps the
//! registry so the drain reaches every session.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use wsgrace::rooms::drain::DrainPlan;
use wsgrace::rooms::supervisor::{Join, Leave};
use wsgrace::service::shutdown;
use wsgrace::{
    CloseMode, CloseStatus, Readiness, SessionConfig, SessionEnd, SessionHandle, SessionHandler,
    Supervisor,
};

/// Answers each message to its sender and remembers when it last heard from it.
struct Echo {
    supervisor: Addr<Supervisor>,
    last_message: Option<Instant>,
}

impl SessionHandler for Echo {
    fn on_start(&mut self, session: &SessionHandle) {
        // Registered with the supervisor so that the drain reaches this session.
        self.supervisor.do_send(Join {
            session: session.clone(),
            room: "echo".into(),
            name: format!("user-{}", session.id()),
            shard: wsgrace::rooms::fanout::local_shard(),
            resume: None,
        });
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.last_message = Some(Instant::now());
        session.deliver(format!("you said: {text}").into());
    }

    fn shutdown_mode(&mut self, _default: CloseMode) -> CloseMode {
        // Busy sessions get the handshake awaited (their last messages are answered before
        // the close); idle ones are closed fire-and-forget.
        match self.last_message {
            Some(at) if at.elapsed() < Duration::from_secs(1) => CloseMode::Awaited,
            _ => CloseMode::FireAndForget,
        }
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        log::info!("session {} ended: {:?}", session.id(), end.record);
        self.supervisor.do_send(Leave {
            id: session.id(),
            end: end.clone(),
        });
    }
}

#[derive(Clone)]
struct AppState {
    supervisor: Addr<Supervisor>,
    readiness: Readiness,
    server: Arc<OnceLock<ServerHandle>>,
}

async fn hello() -> &'static str {
    "hello from my own app\n"
}

async fn ws(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !state.readiness.is_ready() {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    let handler = Echo {
        supervisor: state.supervisor.clone(),
        last_message: None,
    };
    let config = SessionConfig {
        close_timeout: Duration::from_secs(2),
        ..SessionConfig::default()
    };
    let (_, response) = wsgrace::start(&req, payload, handler, config)?;
    Ok(response)
}

async fn drain(state: web::Data<AppState>) -> HttpResponse {
    let plan = DrainPlan {
        status: CloseStatus::new(1012, "service restart").ok(),
        deadline: Duration::from_secs(5),
        close_timeout: Duration::from_secs(2),
        batch_size: 0,
        batch_interval: Duration::ZERO,
        reconnect_spread: Some(Duration::from_secs(2)),
    };
    let report = shutdown::drain(
        state.supervisor.clone(),
        state.readiness.clone(),
        plan,
        std::future::pending(),
    )
    .await;
    if let Some(server) = state.server.get().cloned() {
        // Stop after this response is written.
        actix_web::rt::spawn(async move { server.stop(true).await });
    }
    HttpResponse::Ok().body(format!("{report}\n"))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let state = AppState {
        supervisor: Supervisor::new().start(),
        readiness: Readiness::new(),
        server: Arc::new(OnceLock::new()),
    };
    let shared = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(shared.clone()))
            .route("/hello", web::get().to(hello))
            .route("/ws", web::get().to(ws))
            .route("/admin/drain", web::post().to(drain))
    })
    .client_disconnect_timeout(Duration::ZERO)
    .bind(bind.as_str())?;
    for addr in server.addrs() {
        println!("listening on {addr}");
    }
    let server = server.run();
    let _ = state.server.set(server.handle());
    server.await
}
