//! The Rust client (`wsgrace::client`) against the real binary: it survives a drain and a
//! restart on the same port and resumes with every seq exactly once (Redis keeps the
//! history); a refused resume is a `Gap`; the server's refusals (1008, 1009) and the app's
//! close stop it; a server that is down at first is retried with backoff until it is up.
//! (`tests/client_refused.rs`: refused upgrades.)
//! Every wait has a deadline; nothing sleeps and hopes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::wsgrace;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};
use wsgrace::client::{
    Backoff, Client, ClientConfig, ClientError, ClientEvent, ConnectionState, ReconnectReason,
    Step, StopReason,
};
use wsgrace::CancellationToken;
use wsgrace_kit::child::Signal;
use wsgrace_kit::free_port;
use wsgrace_kit::http::http_get;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;

/// Generous on a busy 2-core machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(20);

/// Short delays so that the tests run fast; the policy is the same.
fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    }
}

fn config(addr: SocketAddr, room: &str, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.room = Some(room.to_owned());
    config.name = Some(name.to_owned());
    config.backoff = fast_backoff();
    config
}

/// A loopback address nobody listens on at the moment.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A client and every event it gave so far.
struct Watched {
    client: Client,
    seen: Vec<ClientEvent>,
}

impl Watched {
    fn connect(config: ClientConfig) -> Watched {
        Watched {
            client: Client::connect(config).expect("a usable config"),
            seen: Vec::new(),
        }
    }

    fn recent(&self) -> &[ClientEvent] {
        &self.seen[self.seen.len().saturating_sub(20)..]
    }

    /// The next event, within the deadline; `None` when the client has stopped.
    async fn next(&mut self, deadline: Instant, what: &str) -> Option<ClientEvent> {
        let event = timeout_at(deadline, self.client.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!("no {what} within {WAIT:?}; last events {:?}", self.recent())
            });
        if let Some(event) = &event {
            self.seen.push(event.clone());
        }
        event
    }

    /// Reads events until `found` picks one.
    async fn until<T>(
        &mut self,
        what: &str,
        mut found: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let Some(event) = self.next(deadline, what).await else {
                panic!(
                    "the client stopped before {what}; last events {:?}",
                    self.recent()
                );
            };
            if let Some(value) = found(&event) {
                return value;
            }
        }
    }

    /// Reads events until the message `text`.
    async fn message(&mut self, text: &str) {
        self.until(text, |e| match e {
            ClientEvent::Message { text: got, .. } if got == text => Some(()),
            _ => None,
        })
        .await
    }

    /// Reads events until the resume succeeded; its `missed`. A refused resume fails.
    async fn resumed(&mut self, what: &str) -> u64 {
        self.until(what, |e| match e {
            ClientEvent::Resumed { missed } => Some(*missed),
            ClientEvent::Gap { .. } => panic!("the resume was refused: {e:?}"),
            _ => None,
        })
        .await
    }

    async fn open(&mut self) {
        self.until("state Open", |e| {
            matches!(e, ClientEvent::State(ConnectionState::Open)).then_some(())
        })
        .await
    }

    /// Reads to the end of the event stream (the client stopped); returns those events.
    async fn ended(&mut self) -> Vec<ClientEvent> {
        let deadline = Instant::now() + WAIT;
        let mut rest = Vec::new();
        while let Some(event) = self.next(deadline, "the end of the events").await {
            rest.push(event);
        }
        rest
    }

    /// The seqs of the messages delivered so far.
    fn seqs(&self) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    fn count(&self, pick: impl Fn(&ClientEvent) -> bool) -> usize {
        self.seen.iter().filter(|e| pick(e)).count()
    }
}

/// Waits until `/readyz` answers 200 (a Redis node connects to its broker in the background).
async fn ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while http_get(addr, "/readyz", &[]).await != 200 {
        assert!(
            Instant::now() < deadline,
            "{addr} not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then the exit, which must be clean.
async fn drain(server: &mut ServerProcess) {
    server.sigterm();
    assert!(
        server.wait_exit(WAIT).await.success(),
        "{}",
        server.stderr()
    );
}

fn broker_toml(redis: &RedisServer) -> String {
    format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\n\n[shutdown]\nreconnect_spread_ms = 300\n",
        redis.url()
    )
}

/// Sends `m0`, `m1`, ... every 10 ms while open until `stop`, publishing the seq of each
/// receipt on `receipts`, then `end`; returns the seq of `end`'s receipt and how many
/// messages were handed to the client.
async fn talker(
    config: ClientConfig,
    stop: CancellationToken,
    receipts: watch::Sender<u64>,
) -> (u64, u32) {
    let mut writer = Watched::connect(config);
    writer.open().await;
    let mut sent = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // Bounded by the test: `stop` comes within a few deadlines, or the test has failed.
    let deadline = Instant::now() + WAIT * 4;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if writer.client.send(format!("m{sent}")) {
                    sent += 1;
                }
            }
            event = writer.next(deadline, "a writer event") => match event {
                Some(ClientEvent::Message { seq, .. }) => {
                    receipts.send_replace(seq);
                }
                Some(_) => {}
                None => panic!("the writer stopped: {:?}", writer.recent()),
            }
        }
    }
    if writer.client.state() != ConnectionState::Open {
        writer.open().await;
    }
    assert!(writer.client.send("end"), "the writer cannot send `end`");
    let end = writer
        .until("the receipt of `end`", |e| match e {
            ClientEvent::Message { text, seq, .. } if text == "end" => Some(*seq),
            _ => None,
        })
        .await;
    writer
        .client
        .close(1000, "done")
        .await
        .expect("writer close");
    (end, sent)
}

#[tokio::test]
async fn the_client_survives_a_drain_and_resumes_every_seq_exactly_once() {
    let redis = RedisServer::start();
    let addr = free_addr();
    let toml = broker_toml(&redis);
    let mut a = wsgrace().bind(addr).start(&toml);
    ready(addr).await;

    // The reader's token hook (called before every reconnect; the server has no auth and
    // ignores the token) holds its reconnect until the writer has talked on B, so that the
    // resume has something to replay.
    let gate = CancellationToken::new();
    let mut reader_config = config(addr, "drain", "reader");
    reader_config.token = Some("first".to_owned());
    let hook_gate = gate.clone();
    reader_config.token_hook = Some(Box::new(move || {
        let gate = hook_gate.clone();
        Box::pin(async move {
            gate.cancelled().await;
            Ok("fresh".to_owned())
        })
    }));
    let mut reader = Watched::connect(reader_config);
    let welcome = reader
        .until("the welcome", |e| match e {
            ClientEvent::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await;
    assert_eq!(welcome.seq, Some(0), "a new room");
    let epoch = welcome.epoch.clone().expect("an epoch");

    let stop = CancellationToken::new();
    let (receipts_tx, mut receipts) = watch::channel(0);
    let writer = tokio::spawn(talker(
        config(addr, "drain", "writer"),
        stop.clone(),
        receipts_tx,
    ));
    reader
        .until("seq 10 before the drain", |e| match e {
            ClientEvent::Message { seq, .. } if *seq >= 10 => Some(()),
            _ => None,
        })
        .await;

    // Drain A while the writer keeps talking; B comes up on the same port and Redis.
    a.sigterm();
    let delay = reader
        .until("going_away", |e| match e {
            ClientEvent::GoingAway { reconnect_after } => Some(*reconnect_after),
            _ => None,
        })
        .await;
    assert!(delay <= Duration::from_millis(300), "{delay:?}");
    let (code, next) = reader
        .until("the close of A", |e| match e {
            ClientEvent::Closed {
                code,
                opened: true,
                next,
                ..
            } => Some((*code, *next)),
            _ => None,
        })
        .await;
    assert_eq!(code, 1001);
    assert!(
        matches!(next, Step::Reconnect { delay: d, why: ReconnectReason::GoingAway, .. } if d == delay),
        "{next:?}"
    );
    let before = reader.client.last_seq().expect("a last seq");
    assert!(a.wait_exit(WAIT).await.success(), "{}", a.stderr());
    let mut b = wsgrace().bind(addr).start(&toml);
    ready(addr).await;
    tokio::time::timeout(WAIT, receipts.wait_for(|seq| *seq >= before + 5))
        .await
        .expect("the writer talks on B")
        .expect("the writer is running");
    assert_eq!(reader.client.state(), ConnectionState::Reconnecting);
    gate.cancel();

    let missed = reader.resumed("the resume on B").await;
    assert!(missed >= 5, "missed {missed}");
    assert_eq!(reader.client.epoch().as_deref(), Some(epoch.as_str()));
    reader
        .until("10 live messages on B", |e| match e {
            ClientEvent::Message { seq, .. } if *seq >= before + missed + 10 => Some(()),
            _ => None,
        })
        .await;

    stop.cancel();
    let (end, sent) = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer finished")
        .expect("the writer did not panic");
    reader.message("end").await;
    let seqs = reader.seqs();
    let expected: Vec<u64> = (1..=end).collect();
    assert_eq!(seqs, expected, "every seq once, in order, none missing");
    assert!(u64::from(sent) + 1 >= end, "sent {sent}, end at {end}");
    assert_eq!(reader.count(|e| matches!(e, ClientEvent::Welcome(_))), 2);
    assert_eq!(reader.count(|e| matches!(e, ClientEvent::Gap { .. })), 0);

    reader.client.close(1000, "bye").await.expect("close");
    reader.ended().await;
    drain(&mut b).await;
}

#[tokio::test]
async fn a_refused_resume_is_a_gap() {
    // The local broker keeps history in the process: a restart is a new epoch.
    let addr = free_addr();
    let toml = "[shutdown]\nreconnect_spread_ms = 300\n";
    let mut a = wsgrace().bind(addr).start(toml);
    let mut client = Watched::connect(config(addr, "gap", "ann"));
    client.open().await;
    let first_epoch = client.client.epoch().expect("an epoch");
    for text in ["one", "two", "three"] {
        assert!(client.client.send(text));
    }
    client
        .until("seq 3", |e| match e {
            ClientEvent::Message { seq: 3, .. } => Some(()),
            _ => None,
        })
        .await;

    a.sigterm();
    assert!(a.wait_exit(WAIT).await.success());
    let mut b = wsgrace().bind(addr).start(toml);
    let gap = client
        .until("the gap", |e| match e {
            ClientEvent::Gap {
                previous_epoch,
                previous_seq,
                epoch,
                seq,
            } => Some((previous_epoch.clone(), *previous_seq, epoch.clone(), *seq)),
            ClientEvent::Resumed { .. } => panic!("resumed across a restart of the local broker"),
            _ => None,
        })
        .await;
    let (previous_epoch, previous_seq, epoch, seq) = gap;
    assert_eq!(previous_epoch.as_deref(), Some(first_epoch.as_str()));
    assert_eq!(previous_seq, 3);
    assert_ne!(epoch, previous_epoch, "a new epoch");
    assert_eq!(seq, Some(0));
    // Delivery continues after the welcome's seq: seq 1 of the new epoch is delivered.
    if client.client.state() != ConnectionState::Open {
        client.open().await;
    }
    assert!(client.client.send("after"));
    let (seq, text) = client
        .until("the first message of the new epoch", |e| match e {
            ClientEvent::Message { seq, text, .. } => Some((*seq, text.clone())),
            _ => None,
        })
        .await;
    assert_eq!((seq, text.as_str()), (1, "after"));
    assert_eq!(client.client.epoch(), epoch);

    client.client.close(1000, "").await.expect("close");
    client.ended().await;
    drain(&mut b).await;
}

/// Opens a client on `server`, makes the server refuse it with `send`, and checks that the
/// client stops for good after `code`.
async fn refused(server_toml: &str, code: u16, send: &[String]) {
    let mut server = wsgrace().start(server_toml);
    let mut client = Watched::connect(config(server.addr, "refuse", "ann"));
    client.open().await;
    for text in send {
        // Until the server's close arrives, every message is taken.
        client.client.send(text.clone());
    }
    let (got, next, opened) = client
        .until("the server's close", |e| match e {
            ClientEvent::Closed {
                code, next, opened, ..
            } => Some((*code, *next, *opened)),
            _ => None,
        })
        .await;
    assert_eq!(got, code);
    assert!(opened);
    assert_eq!(next, Step::Stop(StopReason::Refused(code)));
    assert_eq!(client.client.state(), ConnectionState::Closed);
    assert!(!client.client.send("more"), "closed: nothing is taken");
    let rest = client.ended().await;
    assert!(
        rest.iter().all(|e| !matches!(
            e,
            ClientEvent::Welcome(_) | ClientEvent::State(ConnectionState::Reconnecting)
        )),
        "reconnected after {code}: {rest:?}"
    );
    assert_eq!(
        client.count(|e| matches!(e, ClientEvent::State(ConnectionState::Closed))),
        1
    );
    drain(&mut server).await;
}

#[tokio::test]
async fn a_rate_limit_close_1008_stops_the_client() {
    let burst: Vec<String> = (0..50).map(|i| format!("flood {i}")).collect();
    refused("[session]\nmax_messages_per_sec = 2\n", 1008, &burst).await;
}

#[tokio::test]
async fn a_message_too_big_1009_stops_the_client() {
    refused(
        "[session]\nmax_frame_bytes = 1024\n",
        1009,
        &["x".repeat(2000)],
    )
    .await;
}

#[tokio::test]
async fn the_apps_close_stops_reconnecting() {
    let mut server = wsgrace().start("");
    let mut observer = Watched::connect(config(server.addr, "bye", "bob"));
    observer.open().await;
    let mut client = Watched::connect(config(server.addr, "bye", "ann"));
    client.open().await;
    // A close the client may not send is an error, and nothing happens.
    assert!(matches!(
        client.client.close(1006, "").await,
        Err(ClientError::InvalidCloseCode(1006))
    ));
    assert!(matches!(
        client.client.close(1000, &"r".repeat(124)).await,
        Err(ClientError::ReasonTooLong(124))
    ));
    assert_eq!(client.client.state(), ConnectionState::Open);
    assert!(client.client.send("still open"));

    client.client.close(4000, "leaving").await.expect("close");
    assert_eq!(client.client.state(), ConnectionState::Closed);
    assert!(!client.client.send("after close"));
    let rest = client.ended().await;
    let closes: Vec<(u16, Step)> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Closed { code, next, .. } => Some((*code, *next)),
            _ => None,
        })
        .collect();
    // The server echoes the code; the decision is the app's: stop.
    assert_eq!(closes, [(4000, Step::Stop(StopReason::AppClosed))]);
    assert_eq!(
        client.count(|e| matches!(e, ClientEvent::Welcome(_))),
        1,
        "{rest:?}"
    );
    // What was sent before the close went out before the close frame: the room has it.
    let text = observer
        .until("the message sent before the close", |e| match e {
            ClientEvent::Message { from, text, .. } if from == "ann" => Some(text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(text, "still open");
    observer.client.close(1000, "").await.expect("close");
    observer.ended().await;
    // Both sessions end on the server (the client saw the close handshake; the server drops
    // the session after the TCP close): then a drain finds nobody.
    wsgrace_kit::wait::until("no session open", WAIT, || async {
        (wsgrace_kit::http::metric(server.addr, "wsgrace_connections_open").await == 0.0)
            .then_some(())
    })
    .await;
    drain(&mut server).await;
    assert!(
        server.stderr().contains("sessions=0"),
        "{}",
        server.stderr()
    );
}

#[tokio::test]
async fn the_apps_close_while_reconnecting_stops_at_once() {
    let addr = free_addr(); // nobody listens
    let mut client = Watched::connect(config(addr, "lobby", "ann"));
    client
        .until("a failed attempt", |e| match e {
            ClientEvent::Closed { opened: false, .. } => Some(()),
            _ => None,
        })
        .await;
    let started = Instant::now();
    client.client.close(1000, "").await.expect("close");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    client.ended().await;
    assert_eq!(client.client.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn a_server_down_at_first_is_retried_with_backoff_until_it_is_up() {
    let addr = free_addr();
    let mut client = Watched::connect(config(addr, "late", "ann"));
    // Three failed attempts, each counted.
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        let next = client
            .until("a failed attempt", |e| match e {
                ClientEvent::Closed {
                    opened: false,
                    code,
                    next,
                    ..
                } => Some((*code, *next)),
                _ => None,
            })
            .await;
        match next {
            (
                1006,
                Step::Reconnect {
                    attempt,
                    delay,
                    why,
                    ..
                },
            ) => {
                assert_eq!(why, ReconnectReason::Retry(1006));
                assert!(delay < fast_backoff().cap);
                attempts.push(attempt);
            }
            other => panic!("a failed attempt must be retried: {other:?}"),
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(client.client.state(), ConnectionState::Reconnecting);
    assert!(!client.client.send("nobody listens"));

    let mut server = wsgrace().bind(addr).start("");
    let welcome = client
        .until("the welcome once the server is up", |e| match e {
            ClientEvent::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (welcome.room.as_str(), welcome.name.as_str()),
        ("late", "ann")
    );
    assert_eq!(client.client.state(), ConnectionState::Open);
    let states: Vec<ConnectionState> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::State(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            ConnectionState::Connecting,
            ConnectionState::Reconnecting,
            ConnectionState::Open
        ]
    );
    client.client.close(1000, "").await.expect("close");
    client.ended().await;
    drain(&mut server).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_is_noticed_by_the_idle_timeout() {
    // Pings every 100 ms; a stopped process sends nothing but keeps the TCP connection.
    let mut server =
        wsgrace().start("[session]\nheartbeat_interval_ms = 100\nclient_timeout_ms = 60000\n");
    let mut config = config(server.addr, "idle", "ann");
    config.idle_timeout = Some(Duration::from_secs(1));
    config.connect_timeout = Duration::from_secs(1);
    let mut client = Watched::connect(config);
    client.open().await;
    // Pings keep it open past the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.client.state(), ConnectionState::Open);

    server.signal(Signal::Stop);
    let (code, reason, next) = client
        .until("the idle timeout", |e| match e {
            ClientEvent::Closed {
                code,
                reason,
                opened: true,
                next,
                ..
            } => Some((*code, reason.clone(), *next)),
            _ => None,
        })
        .await;
    assert_eq!((code, reason.as_str()), (1006, "idle timeout"));
    assert!(
        matches!(
            next,
            Step::Reconnect {
                why: ReconnectReason::Retry(1006),
                ..
            }
        ),
        "{next:?}"
    );
    // The kernel still accepts connections for the stopped process; nobody answers them.
    let reason = client
        .until("a failed attempt", |e| match e {
            ClientEvent::Closed {
                opened: false,
                reason,
                ..
            } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason, "connect timeout");

    server.signal(Signal::Cont);
    let missed = client.resumed("the resume").await;
    assert_eq!(missed, 0);
    client.client.close(1000, "").await.expect("close");
    client.ended().await;
    drain(&mut server).await;
}

// ---------------------------------------------------------------------------------------
// Against a stand-in server (frames the binary does not send on cue): the token hook, the
// resume URL, dedupe over the wire, the epoch frame. tests/auth.rs has the real expiry.
// ---------------------------------------------------------------------------------------

type StandInSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A stand-in WebSocket server: each accepted connection with its request URI.
async fn stand_in() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, StandInSocket)>,
) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut uri = String::new();
            // The signature is tungstenite's `Callback`, large error type included.
            #[allow(clippy::result_large_err)]
            let record = |request: &Request, response: Response| {
                uri = request.uri().to_string();
                Ok(response)
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await {
                if tx.send((uri, ws)).is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

async fn next_connection(
    connections: &mut tokio::sync::mpsc::UnboundedReceiver<(String, StandInSocket)>,
) -> (String, StandInSocket) {
    tokio::time::timeout(WAIT, connections.recv())
        .await
        .expect("a connection within the deadline")
        .expect("the stand-in runs")
}

async fn send_json(ws: &mut StandInSocket, value: serde_json::Value) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        value.to_string(),
    ))
    .await
    .expect("stand-in send");
}

/// Reads (answering the client's close) until the client is gone, in the background.
fn drive(mut ws: StandInSocket) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    })
}

#[tokio::test]
async fn close_3000_gets_a_fresh_token_from_the_hook_and_resumes() {
    use serde_json::json;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let (addr, mut connections) = stand_in().await;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let mut config = config(addr, "r", "ann");
    config.token = Some("initial".to_owned());
    config.token_hook = Some(Box::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n == 1 {
                Err("the vault is sealed".into())
            } else {
                Ok(format!("fresh-{n}"))
            }
        })
    }));
    let mut client = Watched::connect(config);

    // First connection: the configured token, no resume.
    let (uri, mut ws) = next_connection(&mut connections).await;
    assert_eq!(uri, "/ws?room=r&name=ann&token=initial");
    let welcome = json!({"type":"welcome","room":"r","name":"ann","epoch":"e1","seq":0});
    send_json(&mut ws, welcome).await;
    for seq in [1, 1] {
        let message = json!({"type":"message","room":"r","from":"bob","text":"hi","seq":seq});
        send_json(&mut ws, message).await;
    }
    client
        .until("seq 1", |e| {
            matches!(e, ClientEvent::Message { seq: 1, .. }).then_some(())
        })
        .await;
    {
        use futures::SinkExt;
        let frame = CloseFrame {
            code: CloseCode::from(3000),
            reason: "token expired".into(),
        };
        ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))
            .await
            .expect("close 3000");
    }
    let _first = drive(ws);
    let next = client
        .until("close 3000", |e| match e {
            ClientEvent::Closed {
                code: 3000, next, ..
            } => Some(*next),
            _ => None,
        })
        .await;
    assert!(
        matches!(
            next,
            Step::Reconnect {
                fresh_token: true,
                why: ReconnectReason::TokenExpired,
                ..
            }
        ),
        "{next:?}"
    );
    // The hook fails once: reported, retried after backoff.
    let text = client
        .until("the hook's error", |e| match e {
            ClientEvent::Error { code, text } if code == "token" => Some(text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(text, "the vault is sealed");

    // Second connection: the fresh token, resuming after seq 1 of epoch e1.
    let (uri, mut ws) = next_connection(&mut connections).await;
    assert_eq!(uri, "/ws?room=r&name=ann&token=fresh-2&since=1&epoch=e1");
    let frames = [
        json!({"type":"welcome","room":"r","name":"ann","epoch":"e1","seq":3,"resumed":true,"missed":2}),
        json!({"type":"message","room":"r","from":"bob","text":"again","seq":1}),
        json!({"type":"message","room":"r","from":"bob","text":"two","seq":2}),
        json!({"type":"presence","who":["bob"]}),
        json!({"type":"message","room":"r","from":"bob","text":"three","seq":3}),
        json!({"type":"epoch","room":"r","epoch":"e2","seq":0}),
        json!({"type":"message","room":"r","from":"bob","text":"new one","seq":1}),
    ];
    for frame in frames {
        send_json(&mut ws, frame).await;
    }
    let missed = client
        .until("the resume", |e| match e {
            ClientEvent::Resumed { missed } => Some(*missed),
            _ => None,
        })
        .await;
    assert_eq!(missed, 2);
    client.message("new one").await;
    assert_eq!(client.seqs(), [1, 2, 3, 1], "each seq once per epoch");
    assert_eq!(client.client.epoch().as_deref(), Some("e2"));
    assert_eq!(client.client.last_seq(), Some(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let second = drive(ws);
    client.client.close(1000, "bye").await.expect("close");
    let closed = client.ended().await;
    assert!(
        closed.iter().any(|e| matches!(
            e,
            ClientEvent::Closed {
                code: 1000,
                next: Step::Stop(StopReason::AppClosed),
                ..
            }
        )),
        "{closed:?}"
    );
    second.await.expect("the stand-in's reader");
}

#[tokio::test]
async fn close_3000_without_a_hook_stops() {
    use futures::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let (addr, mut connections) = stand_in().await;
    let mut client = Watched::connect(config(addr, "r", "ann"));
    let (_, mut ws) = next_connection(&mut connections).await;
    let welcome = json!({"type":"welcome","room":"r","name":"ann","epoch":"e1","seq":0});
    send_json(&mut ws, welcome).await;
    client.open().await;
    let frame = CloseFrame {
        code: CloseCode::from(3000),
        reason: "token expired".into(),
    };
    ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))
        .await
        .expect("close 3000");
    let _reader = drive(ws);
    let rest = client.ended().await;
    assert!(
        rest.iter().any(|e| matches!(
            e,
            ClientEvent::Closed {
                code: 3000,
                next: Step::Stop(StopReason::TokenExpiredWithoutHook),
                ..
            }
        )),
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_new_client_goes_on_from_where_a_stopped_one_left() {
    let mut server = wsgrace().start("");
    let mut talker = Watched::connect(config(server.addr, "cont", "tom"));
    talker.open().await;
    let mut first = Watched::connect(config(server.addr, "cont", "ann"));
    first.open().await;
    for i in 1..=5 {
        assert!(talker.client.send(format!("m{i}")));
    }
    first.message("m5").await;
    first.client.close(1000, "done").await.expect("close");
    first.ended().await;
    let resume = first.client.resume_point().expect("a resume point");
    for i in 6..=10 {
        assert!(talker.client.send(format!("m{i}")));
    }
    talker.message("m10").await;

    let mut next_config = config(server.addr, "cont", "ann");
    next_config.resume = Some(resume);
    let mut next = Watched::connect(next_config);
    let missed = next.resumed("the resume").await;
    assert_eq!(missed, 5);
    assert!(next.client.send("m11"));
    next.message("m11").await;
    // Between them, the two clients saw every message once, in order.
    let mut seqs = first.seqs();
    seqs.extend(next.seqs());
    let talker_seqs = talker.seqs();
    let first_seq = talker_seqs[0];
    assert_eq!(seqs, (first_seq..first_seq + 11).collect::<Vec<_>>());
    next.client.close(1000, "").await.expect("close");
    talker.client.close(1000, "").await.expect("close");
    drain(&mut server).await;
}
