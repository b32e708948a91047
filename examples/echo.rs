//! An echo server on the real session actor and transport: every text message comes back to
//! its sender as one text frame. It exists so that a WebSocket conformance suite, which
//! expects an echo server, can test wsgrace's framing, UTF-8 and close handling
//! (`.ci/conformance` runs the Autobahn TestSuite against it; see `CONFORMANCE.md`).
//!
//! ```sh
//! cargo run --release --example echo -- 127.0.0.1:9001   # prints `listening on 127.0.0.1:9001`
//! ```
//!
//! Every path upgrades. The bind address is the first argument (port 0 picks a free port;
//! the real one is printed on stdout). What differs from a plain echo server is wsgrace's by
//! design: a binary message is refused with close 1003, not echoed. `permessage-deflate` is
//! answered (`SessionConfig::permessage_deflate`, off by default), so the suite's compression
//! cases run too. Messages up to 16 MiB are
//! accepted, and the heartbeat is slow (one ping a minute) so that the server's own pings do
//! not land in the middle of a test case that counts every frame it receives.

use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use wsgrace::{SessionConfig, SessionEnd, SessionHandle, SessionHandler};

/// Sends each text message back to the session it came from.
struct Echo;

impl SessionHandler for Echo {
    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        log::debug!("session {} message of {} bytes", session.id(), text.len());
        session.deliver(text);
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        log::debug!("session {} ended: {end:?}", session.id());
    }
}

/// The session settings of the echo server.
fn config() -> SessionConfig {
    SessionConfig {
        heartbeat_interval: Duration::from_secs(60),
        client_timeout: Duration::from_secs(180),
        max_message_bytes: 16 * 1024 * 1024,
        permessage_deflate: true,
        ..SessionConfig::default()
    }
}

async fn ws(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    let (_, response) = wsgrace::start(&req, payload, Echo, config())?;
    Ok(response)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let server = HttpServer::new(|| App::new().default_service(web::get().to(ws)))
        .on_connect(wsgrace::connection::transport::on_connect(
            wsgrace::connection::transport::SocketTuning {
                user_timeout: config().client_timeout,
                send_buffer: 0,
                no_delay: true,
            },
        ))
        .client_disconnect_timeout(Duration::ZERO)
        // An echo is written as soon as it is queued: without TCP_NODELAY the tail segment of a
        // large message (the compression cases echo 1,000 messages of up to 128 KiB) waits for
        // the client's delayed ACK, 40 ms a message.
        .tcp_nodelay(true)
        .bind(&bind)?;
    for addr in server.addrs() {
        println!("listening on {addr}");
    }
    server.run().await
}
