//! A terminal chat client for the wsgrace server, on top of `wsgrace::client`.
//!
//! ```sh
//! cargo run --example chat_client -- ws://127.0.0.1:8080/ws lobby ann
//! cargo run --example chat_client -- 'ws://127.0.0.1:8080/ws?room=lobby&name=ann'
//! ```
//!
//! Arguments: the endpoint, then the room and the name (each optional; taken from the URL's
//! `room` and `name` when not given). Each stdin line is sent as a message; every room
//! message is printed as `#SEQ FROM: TEXT`; state changes, `going_away`, resumes, gaps and
//! the close code and reason of every connection are printed too. The client reconnects and
//! resumes by itself (the policy of `/wsgrace.js`); Ctrl-C closes with 1000 and waits for the
//! server's reply. Exit status 0 after Ctrl-C or a normal closure, 1 when the server refused
//! the client for good (e.g. 1008) or the URL is unusable. `RUST_LOG=debug` shows the
//! client's own log.

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};
use wsgrace::client::{
    Client, ClientConfig, ClientEvent, ConnectionState, Step, StopReason, Welcome,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
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

/// The endpoint, room and name from the command line (room and name also from the URL).
fn config_from_args() -> ClientConfig {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".to_owned());
    let from_query = |key: &str| {
        url::Url::parse(&url).ok().and_then(|parsed| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        })
    };
    let mut config = ClientConfig::new(url.clone());
    config.room = args.next().or_else(|| from_query("room"));
    config.name = args.next().or_else(|| from_query("name"));
    config
}

async fn chat() -> ExitCode {
    let config = config_from_args();
    let url = config.url.clone();
    let mut client = match Client::connect(config) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("cannot connect to {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("connecting to {url}; type a message and press Enter, Ctrl-C to leave");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut closing = false;
    let mut status = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if !line.is_empty() => {
                    if !client.send(line) {
                        eprintln!("not connected: message not sent");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => stdin_open = false,
            },
            _ = &mut ctrl_c, if !closing => {
                closing = true;
                if let Err(err) = client.close(1000, "bye").await {
                    eprintln!("close: {err}");
                }
            }
            event = client.next_event() => match event {
                Some(event) => {
                    if let Some(failed) = print_event(&event) {
                        status = failed;
                    }
                }
                None => break,
            },
        }
    }
    status
}

/// Prints one event; returns a failure status when the client stopped because the server
/// refused it.
fn print_event(event: &ClientEvent) -> Option<ExitCode> {
    match event {
        ClientEvent::State(state) => println!("state: {}", state_name(*state)),
        ClientEvent::Welcome(Welcome {
            room, name, epoch, ..
        }) => println!(
            "joined room {room} as {name} (epoch {})",
            epoch.as_deref().unwrap_or("?")
        ),
        ClientEvent::Message {
            from, text, seq, ..
        } => println!("#{seq} {from}: {text}"),
        ClientEvent::Resumed { missed } => println!("resumed: {missed} messages replayed"),
        ClientEvent::Gap {
            previous_epoch,
            previous_seq,
            epoch,
            seq,
        } => println!(
            "gap: messages after #{previous_seq} (epoch {}) could not be recovered; \
             continuing after #{} (epoch {})",
            previous_epoch.as_deref().unwrap_or("?"),
            seq.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            epoch.as_deref().unwrap_or("?")
        ),
        ClientEvent::Epoch { epoch, seq, .. } => println!(
            "epoch: the room's history was reset (epoch {}, seq {})",
            epoch.as_deref().unwrap_or("?"),
            seq.unwrap_or(0)
        ),
        ClientEvent::GoingAway { reconnect_after } => println!(
            "going away: the server asks to reconnect in {} ms",
            reconnect_after.as_millis()
        ),
        ClientEvent::Error { code, text } => {
            println!("error: {code}: {text}");
            if code == "connect" {
                return Some(ExitCode::FAILURE);
            }
        }
        ClientEvent::Closed {
            code,
            reason,
            opened,
            next,
            ..
        } => {
            if *opened {
                println!("closed: code {code} reason {reason:?}");
            } else {
                println!("connect failed: {reason}");
            }
            println!("next: {next}");
            if let Step::Stop(StopReason::Refused(_) | StopReason::Other(_)) = next {
                return Some(ExitCode::FAILURE);
            }
            if let Step::Stop(StopReason::TokenExpiredWithoutHook) = next {
                return Some(ExitCode::FAILURE);
            }
        }
    }
    None
}

fn state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Open => "open",
        ConnectionState::Reconnecting => "reconnecting",
        ConnectionState::Closed => "closed",
    }
}
