//! `baseline`: the chat server written the way actix's own `websockets/chat` example
//! writes one, to measure wsgrace against. A `ChatServer` actor holds the sessions
//! (`HashMap<usize, Recipient<Message>>`) and the rooms; every connection is a
//! `WsChatSession` actor on actix-web-actors' `WebsocketContext` with a heartbeat; sessions
//! tell the server `Connect` / `Disconnect` / `ClientMessage`, and the server sends each
//! member of the room its own clone of the message `String`, which the session writes with
//! `ctx.text`. Shutdown is actix-web's default: it handles SIGTERM itself (stop accepting,
//! wait up to its 30 s `shutdown_timeout` for connections to end, then drop them); there is
//! no drain logic here. A client's close frame is answered as the example does:
//! `ctx.close(reason); ctx.stop()`.
//!
//! It speaks wsgrace's chat protocol so that `loadgen` drives both unchanged:
//! `GET /ws?room=R&name=N`, a `welcome` first, then every text frame becomes a `message`
//! with a per-room `seq` sent to every member of the room, the sender included. It prints
//! `listening on IP:PORT` once bound, takes `--config FILE` (only `server.workers` and
//! `server.bind` are read; every other key is ignored) and `--bind ADDR`.
//!
//! Deliberately not here (the example does not have them either): bounded outbound
//! queues, room/name validation, readiness, metrics, close timeouts. The example's
//! `/join`, `/list` and `/name` commands and its "Someone joined" notices are left out
//! because wsgrace's protocol has no such thing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, Error, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use clap::Parser;
use serde::{Deserialize, Serialize};

/// How often heartbeat pings are sent.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long before lack of client response causes a timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The chat server actor.

/// Chat server sends this message to a session.
#[derive(Message)]
#[rtype(result = "()")]
struct Message(String);

/// New chat session is created.
#[derive(Message)]
#[rtype(usize)]
struct Connect {
    addr: Recipient<Message>,
    room: String,
}

/// Session is disconnected.
#[derive(Message)]
#[rtype(result = "()")]
struct Disconnect {
    id: usize,
}

/// Send message to a room.
#[derive(Message)]
#[rtype(result = "()")]
struct ClientMessage {
    /// Id of the client session.
    #[allow(dead_code)]
    id: usize,
    room: String,
    from: String,
    text: String,
}

#[derive(Serialize)]
struct ChatOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    text: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    name: &'a str,
}

/// Manages chat rooms and is responsible for coordinating chat sessions.
#[derive(Default)]
struct ChatServer {
    sessions: HashMap<usize, Recipient<Message>>,
    rooms: HashMap<String, HashSet<usize>>,
    /// The last `seq` of each room.
    seqs: HashMap<String, u64>,
    next_id: usize,
}

impl ChatServer {
    /// Send message to all users in the room.
    fn send_message(&self, room: &str, message: &str) {
        if let Some(sessions) = self.rooms.get(room) {
            for id in sessions {
                if let Some(addr) = self.sessions.get(id) {
                    addr.do_send(Message(message.to_owned()));
                }
            }
        }
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;
}

impl Handler<Connect> for ChatServer {
    type Result = usize;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        self.next_id += 1;
        let id = self.next_id;
        self.sessions.insert(id, msg.addr);
        self.rooms.entry(msg.room).or_default().insert(id);
        id
    }
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        if self.sessions.remove(&msg.id).is_some() {
            for sessions in self.rooms.values_mut() {
                sessions.remove(&msg.id);
            }
        }
    }
}

impl Handler<ClientMessage> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: ClientMessage, _: &mut Context<Self>) {
        let seq = self.seqs.entry(msg.room.clone()).or_insert(0);
        *seq += 1;
        let out = ChatOut {
            kind: "message",
            room: &msg.room,
            from: &msg.from,
            text: &msg.text,
            seq: *seq,
        };
        match serde_json::to_string(&out) {
            Ok(json) => self.send_message(&msg.room, &json),
            Err(e) => log::error!("serializing a message: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The session actor.

struct WsChatSession {
    /// Unique session id, given by the chat server.
    id: usize,
    /// Client must send ping at least once per CLIENT_TIMEOUT, otherwise we drop the
    /// connection.
    hb: Instant,
    room: String,
    name: Option<String>,
    addr: Addr<ChatServer>,
}

impl WsChatSession {
    /// Sends a ping every HEARTBEAT_INTERVAL and checks the client's heartbeat.
    fn hb(&self, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if Instant::now().duration_since(act.hb) > CLIENT_TIMEOUT {
                log::info!("websocket client heartbeat failed, disconnecting");
                act.addr.do_send(Disconnect { id: act.id });
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }
}

impl Actor for WsChatSession {
    type Context = ws::WebsocketContext<Self>;

    /// Registers with the chat server; the session handles nothing else until the
    /// server answers (`wait`), so the welcome goes out before any room message.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.hb(ctx);
        let addr = ctx.address();
        self.addr
            .send(Connect {
                addr: addr.recipient(),
                room: self.room.clone(),
            })
            .into_actor(self)
            .then(|res, act, ctx| {
                match res {
                    Ok(id) => {
                        act.id = id;
                        let name = act.name.get_or_insert_with(|| format!("guest-{id}"));
                        let welcome = Welcome {
                            kind: "welcome",
                            room: &act.room,
                            name,
                        };
                        match serde_json::to_string(&welcome) {
                            Ok(json) => ctx.text(json),
                            Err(_) => ctx.stop(),
                        }
                    }
                    // Something is wrong with the chat server.
                    _ => ctx.stop(),
                }
                fut::ready(())
            })
            .wait(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.addr.do_send(Disconnect { id: self.id });
        Running::Stop
    }
}

/// A message from the chat server: write it to the client.
impl Handler<Message> for WsChatSession {
    type Result = ();

    fn handle(&mut self, msg: Message, ctx: &mut Self::Context) {
        ctx.text(msg.0);
    }
}

/// WebSocket frames from the client.
impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsChatSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Err(_) => {
                ctx.stop();
                return;
            }
            Ok(msg) => msg,
        };
        log::debug!("websocket message: {msg:?}");
        match msg {
            ws::Message::Ping(msg) => {
                self.hb = Instant::now();
                ctx.pong(&msg);
            }
            ws::Message::Pong(_) => {
                self.hb = Instant::now();
            }
            ws::Message::Text(text) => {
                self.addr.do_send(ClientMessage {
                    id: self.id,
                    room: self.room.clone(),
                    from: self.name.clone().unwrap_or_default(),
                    text: text.to_string(),
                });
            }
            ws::Message::Binary(_) => log::warn!("unexpected binary"),
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(_) => {
                ctx.stop();
            }
            ws::Message::Nop => (),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP.

#[derive(Deserialize)]
struct JoinQuery {
    room: Option<String>,
    name: Option<String>,
}

/// Entry point for our websocket route.
async fn chat_route(
    req: HttpRequest,
    stream: web::Payload,
    query: web::Query<JoinQuery>,
    srv: web::Data<Addr<ChatServer>>,
) -> Result<HttpResponse, Error> {
    let query = query.into_inner();
    ws::start(
        WsChatSession {
            id: 0,
            hb: Instant::now(),
            room: query.room.unwrap_or_else(|| "lobby".to_owned()),
            name: query.name,
            addr: srv.get_ref().clone(),
        },
        &req,
        stream,
    )
}

/// The baseline chat server (actix's websockets/chat pattern), for loadgen's comparisons.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file; only `server.workers` and `server.bind` are read.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Listen address; overrides `server.bind`.
    #[arg(long)]
    bind: Option<String>,
}

/// `server.workers` and `server.bind` from the config file, when it has them.
fn read_config(path: &PathBuf) -> (usize, Option<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        log::warn!("{}: cannot read it; using the defaults", path.display());
        return (0, None);
    };
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            log::warn!("{}: {e}; using the defaults", path.display());
            return (0, None);
        }
    };
    let server = table.get("server").and_then(|s| s.as_table());
    let workers = server
        .and_then(|s| s.get("workers"))
        .and_then(|w| w.as_integer())
        .and_then(|w| usize::try_from(w).ok())
        .unwrap_or(0);
    let bind = server
        .and_then(|s| s.get("bind"))
        .and_then(|b| b.as_str())
        .map(str::to_owned);
    (workers, bind)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::init_from_env(env_logger::Env::new().default_filter_or("info"));
    let cli = Cli::parse();
    let (workers, bind) = read_config(&cli.config);
    let bind = cli
        .bind
        .or(bind)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());

    // Start the chat server actor.
    let server = ChatServer::default().start();

    let mut http = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(server.clone()))
            .route("/ws", web::get().to(chat_route))
    });
    // 0 = actix-web's default, one worker per core (as wsgrace's `server.workers = 0`).
    if workers > 0 {
        http = http.workers(workers);
    }
    let http = http.bind(bind.as_str())?;
    if let Some(addr) = http.addrs().first() {
        println!("listening on {addr}");
    }
    http.run().await
}
