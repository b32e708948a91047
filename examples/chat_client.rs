//! A terminal chat client for the wsgrace server, on top of `wsgrace::client`.
//!
//! ```sh
//! cargo run --release --example chat_client -- ws://127.0.0.1:8080/ws lobby ann
//! cargo run --release --example chat_client -- 'ws://127.0.0.1:8080/ws?room=lobby&name=ann'
//! cargo run --release --example chat_client -- ws://127.0.0.1:8080/ws lobby,ops ann   # wsgrace.v2
//! ```
//!
//! Arguments: the endpoint, then the room and the name (each optional; taken from the URL's
//! `room` (or `rooms`) and `name` when not given). Several rooms separated by commas use one
//! `wsgrace.v2` connection ([`RoomsClient`]): a stdin line `ROOM: TEXT` is published to ROOM
//! (a line without a known room goes to the first room), `/join ROOM`, `/leave ROOM` and
//! `/who ROOM` do what they say, and messages print as `ROOM #SEQ FROM: TEXT`; a publish is
//! resent after a reconnect until the room confirms it (`published ROOM ID #SEQ`). With one
//! room (v1), each stdin line is sent as a message; every room
//! message is printed as `#SEQ FROM: TEXT`; state changes, `going_away`, resumes, gaps and
//! the close code and reason of every connection are printed too. The client reconnects and
//! resumes by itself (the policy of `/wsgrace.js`); Ctrl-C closes with 1000 and waits for the
//! server's reply. Exit status 0 after Ctrl-C or a normal closure, 1 when the server refused
//! the client for good (e.g. 1008) or the URL is unusable. `RUST_LOG=debug` shows the
//! client's own log.

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};
use wsgrace::client::{
    Client, ClientConfig, ClientEvent, ConnectionState, JoinOptions, RoomEvent, RoomsClient, Step,
    StopReason, Welcome,
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

/// The endpoint, room and name from the command line (room and name also from the URL); the
/// rooms when more than one is asked (separated by commas, or the URL's `rooms`).
fn config_from_args() -> (ClientConfig, Vec<String>) {
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
    config.room = args
        .next()
        .or_else(|| from_query("room"))
        .or_else(|| from_query("rooms"));
    config.name = args.next().or_else(|| from_query("name"));
    let rooms: Vec<String> = match &config.room {
        Some(room) if room.contains(',') => room
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if !rooms.is_empty() {
        config.room = None;
        // A v2 upgrade carries only the name (and a token).
        if let Ok(mut parsed) = url::Url::parse(&config.url) {
            let kept: Vec<(String, String)> = parsed
                .query_pairs()
                .filter(|(k, _)| k != "room" && k != "rooms")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                parsed.set_query(None);
            } else {
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
            config.url = parsed.into();
        }
    }
    (config, rooms)
}

async fn chat() -> ExitCode {
    let (config, rooms) = config_from_args();
    if !rooms.is_empty() {
        return rooms_chat(config, rooms).await;
    }
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
            if refused_for_good(next) {
                return Some(ExitCode::FAILURE);
            }
        }
    }
    None
}

/// The client stopped because the server refused it (not the app's close, not a normal end).
fn refused_for_good(next: &Step) -> bool {
    matches!(
        next,
        Step::Stop(
            StopReason::Refused(_)
                | StopReason::Other(_)
                | StopReason::UpgradeRefused(_)
                | StopReason::TokenExpiredWithoutHook
        )
    )
}

/// Many rooms over one `wsgrace.v2` connection.
async fn rooms_chat(config: ClientConfig, rooms: Vec<String>) -> ExitCode {
    let url = config.url.clone();
    let mut client = match RoomsClient::connect(config) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("cannot connect to {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    for room in &rooms {
        let recent = JoinOptions {
            last: Some(10),
            ..JoinOptions::default()
        };
        if let Err(err) = client.join(room, recent) {
            eprintln!("join {room}: {err}");
        }
    }
    eprintln!(
        "connecting to {url} (wsgrace.v2, rooms {}); type `ROOM: TEXT`, /join, /leave, /who; \
         Ctrl-C to leave",
        rooms.join(",")
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut closing = false;
    let mut status = ExitCode::SUCCESS;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) if !line.is_empty() => rooms_command(&client, &line),
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
                    if let Some(failed) = print_room_event(&event) {
                        status = failed;
                    }
                }
                None => break,
            },
        }
    }
    status
}

/// One stdin line of the rooms chat: a command, or a message for a room.
fn rooms_command(client: &RoomsClient, line: &str) {
    let done = if let Some(room) = line.strip_prefix("/join ") {
        client.join(room.trim(), JoinOptions::default())
    } else if let Some(room) = line.strip_prefix("/leave ") {
        client.leave(room.trim())
    } else if let Some(room) = line.strip_prefix("/who ") {
        client.presence(room.trim())
    } else {
        let rooms = client.rooms();
        let (room, text) = match line.split_once(':') {
            Some((room, text)) if rooms.iter().any(|r| r == room.trim()) => {
                (room.trim().to_owned(), text.trim())
            }
            _ => match rooms.first() {
                Some(room) => (room.clone(), line),
                None => {
                    eprintln!("no room: /join one first");
                    return;
                }
            },
        };
        client.publish(&room, text).map(|_| ())
    };
    if let Err(err) = done {
        eprintln!("{err}");
    }
}

/// Prints one event of the rooms chat; returns a failure status when the client stopped
/// because the server refused it.
fn print_room_event(event: &RoomEvent) -> Option<ExitCode> {
    match event {
        RoomEvent::State(state) => println!("state: {}", state_name(*state)),
        RoomEvent::Hello { name } => println!("connected as {name}"),
        RoomEvent::Joined {
            room,
            seq,
            resumed,
            missed,
            ..
        } => match resumed {
            Some(true) => println!("{room}: resumed, {} missed", missed.unwrap_or(0)),
            _ => println!("{room}: joined at #{}", seq.unwrap_or(0)),
        },
        RoomEvent::Gap {
            room, previous_seq, ..
        } => println!("{room}: gap: messages after #{previous_seq} could not be recovered"),
        RoomEvent::JoinRefused { room, code, text } => {
            println!("{room}: join refused: {}: {text}", code.as_str())
        }
        RoomEvent::Left { room } => println!("{room}: left"),
        RoomEvent::Message {
            room,
            from,
            text,
            seq,
            ..
        } => println!("{room} #{seq} {from}: {text}"),
        RoomEvent::Published { room, id, seq } => println!(
            "published {room} {id} #{}",
            seq.map_or_else(|| "?".to_owned(), |s| s.to_string())
        ),
        RoomEvent::PublishFailed {
            room, id, reason, ..
        } => println!("{room}: publish {id} failed: {reason:?}"),
        RoomEvent::Signal { room, from, text } => println!("{room}: {from} signals {text}"),
        RoomEvent::Presence { room, members } => {
            let names: Vec<String> = members
                .iter()
                .map(|m| format!("{} ({})", m.name, m.connections))
                .collect();
            println!("{room}: here: {}", names.join(", "));
        }
        RoomEvent::PresenceJoin { room, name } => println!("{room}: {name} joined"),
        RoomEvent::PresenceLeave { room, name } => println!("{room}: {name} left"),
        RoomEvent::Epoch { room, .. } => println!("{room}: the room's history was reset"),
        RoomEvent::Refused { code, room, text } => println!(
            "refused ({}): {}: {text}",
            room.as_deref().unwrap_or("-"),
            code.as_str()
        ),
        RoomEvent::GoingAway { reconnect_after } => println!(
            "going away: the server asks to reconnect in {} ms",
            reconnect_after.as_millis()
        ),
        RoomEvent::Error { code, text } => {
            println!("error: {code}: {text}");
            if code == "connect" {
                return Some(ExitCode::FAILURE);
            }
        }
        RoomEvent::Closed {
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
            if refused_for_good(next) {
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
