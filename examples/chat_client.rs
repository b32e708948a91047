//! A terminal chat client for the wsgrace server.
//!
//! ```sh
//! cargo run --example chat_client -- 'ws://127.0.0.1:8080/ws?room=lobby&name=ann'
//! ```
//!
//! Each stdin line is sent as a message; every room message is printed as
//! `#SEQ FROM: TEXT`. When the server closes, it prints the close code and reason; Ctrl-C
//! closes with 1000 and waits for the server's reply.

use std::process::ExitCode;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(chat());
    // Stdin is read on a blocking thread that would hold a plain shutdown forever.
    runtime.shutdown_background();
    code
}

async fn chat() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_owned());
    let (ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("cannot connect to {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("connected to {url}; type a message and press Enter, Ctrl-C to leave");
    let (mut sink, mut stream) = ws.split();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut closing = false;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if !line.is_empty() => {
                    if sink.send(Message::Text(line)).await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = &mut ctrl_c, if !closing => {
                closing = true;
                let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
                if sink.send(Message::Close(Some(frame))).await.is_err() {
                    break;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => print_event(&text),
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(f) => println!("closed: code {} reason {:?}", u16::from(f.code), f.reason.as_ref()),
                        None => println!("closed: no code"),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    println!("connection failed: {err}");
                    return ExitCode::FAILURE;
                }
                None => break,
            },
        }
    }
    ExitCode::SUCCESS
}

fn print_event(text: &str) {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    match event["type"].as_str() {
        Some("message") => println!(
            "#{} {}: {}",
            event["seq"],
            event["from"].as_str().unwrap_or("?"),
            event["text"].as_str().unwrap_or("")
        ),
        Some("welcome") => println!(
            "joined room {} as {}",
            event["room"].as_str().unwrap_or("?"),
            event["name"].as_str().unwrap_or("?")
        ),
        _ => {}
    }
}
