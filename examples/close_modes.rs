//! The close API from application code: an awaited close and a fire-and-forget close on two
//! sessions of an in-process server, with a client that goes on talking for a while after the
//! server's close frame was sent.
//!
//! ```sh
//! cargo run --release --example close_modes
//! ```
//!
//! The awaited close answers only after the client's ack, and the late messages are dropped;
//! the fire-and-forget close answers at once, and the late messages still reach the app.

use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytestring::ByteString;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;
use wsgrace::{CloseStatus, SessionConfig, SessionEnd, SessionHandle, SessionHandler};

/// Hands each new session to `main` and prints what arrives.
struct Printer {
    sessions: UnboundedSender<SessionHandle>,
}

impl SessionHandler for Printer {
    fn on_start(&mut self, session: &SessionHandle) {
        let _ = self.sessions.send(session.clone());
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        println!("  app got from session {}: {text:?}", session.id());
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        println!(
            "  session {} ended {} (dropped {} late messages)",
            session.id(),
            end.state,
            end.dropped_after_close
        );
    }
}

async fn ws(
    req: HttpRequest,
    payload: web::Payload,
    sessions: web::Data<UnboundedSender<SessionHandle>>,
) -> Result<HttpResponse, actix_web::Error> {
    let handler = Printer {
        sessions: sessions.get_ref().clone(),
    };
    let (_, response) = wsgrace::start(&req, payload, handler, SessionConfig::default())?;
    Ok(response)
}

/// A client that keeps talking for 300 ms before it reads anything, so its messages reach
/// the server after the server's close frame; then it reads, and tungstenite acks the close.
async fn chatty_client(url: String) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    for n in 0..6 {
        if sink.send(Message::Text(format!("tick {n}"))).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Close(frame) = msg {
            println!("  client read the close frame {frame:?} and acks it");
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let (tx, mut sessions) = unbounded_channel::<SessionHandle>();
    let data = web::Data::new(tx);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/ws", web::get().to(ws))
    })
    .client_disconnect_timeout(Duration::ZERO)
    .workers(1)
    .bind("127.0.0.1:0")?;
    let url = format!("ws://{}/ws", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    for (label, awaited) in [
        ("awaited close (CloseAsync)", true),
        ("fire-and-forget close (CloseOutputAsync)", false),
    ] {
        println!("{label}:");
        actix_web::rt::spawn(chatty_client(url.clone()));
        let Some(session) = sessions.recv().await else {
            break;
        };
        let status = CloseStatus::new(1000, "done").ok();
        let started = std::time::Instant::now();
        let outcome = if awaited {
            session.close(status).await
        } else {
            session.close_output(status).await
        };
        println!("  answered after {:?}: {outcome:?}", started.elapsed());
        // A second close-output is refused: the close frame goes out once.
        println!(
            "  close_output again: {:?}",
            session.close_output(None).await
        );
        while session.state() == wsgrace::CloseState::CloseSent {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Invalid requests are refused before anything is sent.
    println!(
        "CloseStatus::new(1005, \"\"): {:?}",
        CloseStatus::new(1005, "")
    );
    handle.stop(true).await;
    Ok(())
}
