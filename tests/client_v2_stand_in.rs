//! The Rust client's `wsgrace.v2` side ([`RoomsClient`]) against a stand-in server, for the
//! frames the binary does not send on cue (SPEC "Many rooms over one connection", and the
//! library paragraph): the upgrade offers `wsgrace.v2` with only the name and token in its
//! query; the hello is followed by a join per room (`last` on a first join), each room's seqs
//! delivered once and in order; a publish's frame carries its id and its copy confirms it;
//! presence, signal, leave; a reconnect rejoins each room from its own position and resends
//! what was not confirmed with the same ids; a server that does not choose `wsgrace.v2` stops
//! the client; a close with an app code (4000–4999) is not followed by a reconnect; a refused
//! upgrade is read by its status. `tests/client_v2.rs` runs the client against the binary.
//! Every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;
use wsgrace::client::{
    Backoff, ClientConfig, ClientError, ConnectionState, JoinOptions, Member, RoomError, RoomEvent,
    RoomsClient, Step, StopReason,
};

/// Generous on a busy 2-core machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(20);

fn config(addr: SocketAddr, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.name = Some(name.to_owned());
    config.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    config
}

/// A v2 client and every event it gave so far.
struct Watched {
    client: RoomsClient,
    seen: Vec<RoomEvent>,
}

impl Watched {
    fn connect(config: ClientConfig) -> Watched {
        Watched {
            client: RoomsClient::connect(config).expect("a usable config"),
            seen: Vec::new(),
        }
    }

    fn recent(&self) -> &[RoomEvent] {
        &self.seen[self.seen.len().saturating_sub(20)..]
    }

    async fn next(&mut self, deadline: Instant, what: &str) -> Option<RoomEvent> {
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
    async fn until<T>(&mut self, what: &str, mut found: impl FnMut(&RoomEvent) -> Option<T>) -> T {
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

    /// Reads events until `room` is joined; its seq.
    async fn joined(&mut self, room: &str) -> Option<u64> {
        self.until(&format!("joined {room}"), |e| match e {
            RoomEvent::Joined { room: r, seq, .. } if r == room => Some(*seq),
            _ => None,
        })
        .await
    }

    /// Reads events until the message `text` in `room`; its seq.
    async fn message(&mut self, room: &str, text: &str) -> u64 {
        self.until(&format!("{text:?} in {room}"), |e| match e {
            RoomEvent::Message {
                room: r,
                text: t,
                seq,
                ..
            } if r == room && t == text => Some(*seq),
            _ => None,
        })
        .await
    }

    /// Reads to the end of the event stream; returns those events.
    async fn ended(&mut self) -> Vec<RoomEvent> {
        let deadline = Instant::now() + WAIT;
        let mut rest = Vec::new();
        while let Some(event) = self.next(deadline, "the end of the events").await {
            rest.push(event);
        }
        rest
    }

    /// The (seq, from, text) of the messages delivered in `room` so far.
    fn messages(&self, room: &str) -> Vec<(u64, String, String)> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                RoomEvent::Message {
                    room: r,
                    seq,
                    from,
                    text,
                    ..
                } if r == room => Some((*seq, from.clone(), text.clone())),
                _ => None,
            })
            .collect()
    }

    fn seqs(&self, room: &str) -> Vec<u64> {
        self.messages(room).into_iter().map(|m| m.0).collect()
    }

    fn count(&self, pick: impl Fn(&RoomEvent) -> bool) -> usize {
        self.seen.iter().filter(|e| pick(e)).count()
    }
}

type StandInSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// One accepted connection: its request URI, the subprotocol it offered, the socket.
struct Accepted {
    uri: String,
    offered: Option<String>,
    ws: StandInSocket,
}

/// A stand-in WebSocket server that answers with `wsgrace.v2` when `choose` is true.
async fn stand_in(choose: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut uri = String::new();
            let mut offered = None;
            // The signature is tungstenite's `Callback`, large error type included.
            #[allow(clippy::result_large_err)]
            let record = |request: &Request, mut response: Response| {
                uri = request.uri().to_string();
                offered = request
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if choose {
                    let chosen = "wsgrace.v2".parse().expect("a header value");
                    response
                        .headers_mut()
                        .insert("Sec-WebSocket-Protocol", chosen);
                }
                Ok(response)
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await {
                if tx.send(Accepted { uri, offered, ws }).is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

async fn next_connection(connections: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    timeout(WAIT, connections.recv())
        .await
        .expect("a connection within the deadline")
        .expect("the stand-in runs")
}

async fn send(ws: &mut StandInSocket, value: Value) {
    ws.send(Message::Text(value.to_string()))
        .await
        .expect("stand-in send");
}

/// The client's next frame, as JSON.
async fn receive(ws: &mut StandInSocket) -> Value {
    loop {
        let frame = timeout(WAIT, ws.next())
            .await
            .expect("a client frame within the deadline")
            .expect("the client is connected")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("the client sends JSON");
        }
    }
}

fn message(room: &str, from: &str, text: &str, seq: u64) -> Value {
    json!({"type":"message","room":room,"from":from,"text":text,"seq":seq,"ts":1_700_000_000_000u64 + seq})
}

#[tokio::test]
async fn the_client_offers_wsgrace_v2_and_joins_every_room_after_the_hello() {
    let (addr, mut connections) = stand_in(true).await;
    let mut config = config(addr, "ann");
    config.token = Some("t1".to_owned());
    let mut client = Watched::connect(config);
    let last = JoinOptions {
        last: Some(5),
        resume: None,
    };
    client.client.join("a", last).expect("join a");
    client
        .client
        .join("b", JoinOptions::default())
        .expect("join b");
    assert!(matches!(
        client.client.join("a", JoinOptions::default()),
        Err(RoomError::AlreadyJoined(_))
    ));

    let Accepted {
        uri,
        offered,
        mut ws,
    } = next_connection(&mut connections).await;
    assert_eq!(
        uri, "/ws?name=ann&token=t1",
        "no room, since or epoch in a v2 upgrade"
    );
    assert_eq!(offered.as_deref(), Some("wsgrace.v2"));
    send(&mut ws, json!({"type":"hello","name":"ann"})).await;
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"join","room":"a","last":5,"ref":"j1"})
    );
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"join","room":"b","ref":"j2"})
    );
    let frames = [
        json!({"type":"joined","room":"a","epoch":"e1","seq":10,"ref":"j1"}),
        message("a", "bob", "a6", 6),
        message("a", "bob", "a10", 10),
        json!({"type":"joined","room":"b","epoch":"e1","seq":3,"ref":"j2"}),
        message("b", "bob", "b3", 3),
        message("b", "bob", "b4", 4),
        message("a", "bob", "a10", 10),
        json!({"type":"presence_join","room":"a","name":"cy"}),
        message("a", "bob", "a11", 11),
    ];
    for frame in frames {
        send(&mut ws, frame).await;
    }
    client.message("a", "a11").await;
    assert_eq!(
        client.seqs("a"),
        [6, 10, 11],
        "the last 5, then live, each once"
    );
    assert_eq!(client.seqs("b"), [4]);
    assert_eq!(client.client.name().as_deref(), Some("ann"));
    assert_eq!(client.client.state(), ConnectionState::Open);
    let ts = client.seen.iter().find_map(|e| match e {
        RoomEvent::Message { ts, .. } => *ts,
        _ => None,
    });
    assert_eq!(ts, Some(1_700_000_000_006));

    // A publish: its frame with its id; its copy confirms it.
    let id = client.client.publish("b", "hi").expect("publish");
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"publish","room":"b","text":"hi","id":id})
    );
    let mut copy = message("b", "ann", "hi", 5);
    copy["id"] = json!(id);
    send(&mut ws, copy).await;
    let published = client
        .until("published", |e| match e {
            RoomEvent::Published { id, seq, .. } => Some((id.clone(), *seq)),
            _ => None,
        })
        .await;
    assert_eq!(published, (id.clone(), Some(5)));
    assert!(client.client.unconfirmed().is_empty());

    // Presence, signal, leave.
    client.client.presence("b").expect("presence");
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"presence","room":"b","ref":"p3"})
    );
    send(
        &mut ws,
        json!({"type":"presence","room":"b","members":[{"name":"ann","connections":1}],"ref":"p3"}),
    )
    .await;
    let members = client
        .until("presence", |e| match e {
            RoomEvent::Presence { members, .. } => Some(members.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        members,
        [Member {
            name: "ann".into(),
            connections: 1
        }]
    );
    client.client.signal("b", "typing").expect("signal");
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"signal","room":"b","text":"typing"})
    );
    client.client.leave("a").expect("leave");
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"leave","room":"a","ref":"l4"})
    );
    send(&mut ws, message("a", "bob", "after the leave", 12)).await;
    send(&mut ws, json!({"type":"left","room":"a","ref":"l4"})).await;
    client
        .until("left", |e| {
            matches!(e, RoomEvent::Left { room } if room == "a").then_some(())
        })
        .await;
    assert_eq!(
        client.seqs("a"),
        [6, 10, 11],
        "nothing of a after the leave"
    );
    assert_eq!(client.client.rooms(), ["b"]);
    assert_eq!(
        client.count(
            |e| matches!(e, RoomEvent::PresenceJoin { room, name } if room == "a" && name == "cy")
        ),
        1
    );

    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    client.client.close(1000, "bye").await.expect("close");
    client.ended().await;
    timeout(WAIT, reader)
        .await
        .expect("the stand-in's reader")
        .ok();
}

#[tokio::test]
async fn a_reconnect_rejoins_each_room_from_its_own_position_and_resends_what_was_not_confirmed() {
    let (addr, mut connections) = stand_in(true).await;
    let mut client = Watched::connect(config(addr, "ann"));
    client
        .client
        .join("a", JoinOptions::default())
        .expect("join a");
    client
        .client
        .join("b", JoinOptions::default())
        .expect("join b");

    // First connection: both joined, one message each, a publish whose copy never comes.
    let Accepted { mut ws, .. } = next_connection(&mut connections).await;
    send(&mut ws, json!({"type":"hello","name":"ann"})).await;
    receive(&mut ws).await;
    receive(&mut ws).await;
    for frame in [
        json!({"type":"joined","room":"a","epoch":"e1","seq":5,"ref":"j1"}),
        json!({"type":"joined","room":"b","epoch":"e1","seq":7,"ref":"j2"}),
        message("a", "bob", "a6", 6),
        message("b", "bob", "b8", 8),
    ] {
        send(&mut ws, frame).await;
    }
    client.message("b", "b8").await;
    let lost = client.client.publish("b", "lost").expect("publish");
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"publish","room":"b","text":"lost","id":lost})
    );
    drop(ws); // no close frame: 1006, retried
    client
        .until("the end of the first connection", |e| match e {
            RoomEvent::Closed { code: 1006, .. } => Some(()),
            _ => None,
        })
        .await;
    // While disconnected a publish waits.
    let queued = client.client.publish("a", "queued").expect("publish");
    assert_eq!(client.client.unconfirmed().len(), 2);

    // Second connection: each room from its own position; the unconfirmed ones again.
    let Accepted { uri, mut ws, .. } = next_connection(&mut connections).await;
    assert_eq!(uri, "/ws?name=ann");
    send(&mut ws, json!({"type":"hello","name":"ann"})).await;
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"join","room":"a","since":6,"epoch":"e1","ref":"j3"})
    );
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"join","room":"b","since":8,"epoch":"e1","ref":"j4"})
    );
    send(
        &mut ws,
        json!({"type":"joined","room":"a","epoch":"e1","seq":6,"resumed":true,"missed":0,"ref":"j3"}),
    )
    .await;
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"publish","room":"a","text":"queued","id":queued})
    );
    send(
        &mut ws,
        json!({"type":"joined","room":"b","epoch":"e1","seq":9,"resumed":true,"missed":1,"ref":"j4"}),
    )
    .await;
    assert_eq!(
        receive(&mut ws).await,
        json!({"type":"publish","room":"b","text":"lost","id":lost}),
        "the same id"
    );
    // The replay brings the lost copy; the resend is answered with an ack.
    for frame in [
        message("b", "bob", "b8", 8),
        message("b", "ann", "lost", 9),
        json!({"type":"ack","room":"b","id":lost,"seq":9}),
        json!({"type":"message","room":"a","from":"ann","text":"queued","seq":7,"id":queued}),
    ] {
        send(&mut ws, frame).await;
    }
    client.message("a", "queued").await;
    client
        .until("queued's confirmation", |e| {
            matches!(e, RoomEvent::Published { id, .. } if *id == queued).then_some(())
        })
        .await;
    assert_eq!(client.seqs("a"), [6, 7]);
    assert_eq!(client.seqs("b"), [8, 9], "each seq once");
    let published: Vec<(String, Option<u64>)> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Published { id, seq, .. } => Some((id.clone(), *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(published, [(lost, Some(9)), (queued, Some(7))]);
    assert!(client.client.unconfirmed().is_empty());
    assert_eq!(client.count(|e| matches!(e, RoomEvent::Gap { .. })), 0);
    let resumed = client.count(|e| {
        matches!(
            e,
            RoomEvent::Joined {
                resumed: Some(true),
                ..
            }
        )
    });
    assert_eq!(resumed, 2);

    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    client.client.close(1000, "").await.expect("close");
    client.ended().await;
    timeout(WAIT, reader)
        .await
        .expect("the stand-in's reader")
        .ok();
}

#[tokio::test]
async fn a_server_that_does_not_choose_wsgrace_v2_stops_the_client() {
    let (addr, mut connections) = stand_in(false).await;
    let mut client = Watched::connect(config(addr, "ann"));
    let Accepted { offered, ws, .. } = next_connection(&mut connections).await;
    assert_eq!(offered.as_deref(), Some("wsgrace.v2"));
    drop(ws);
    let rest = client.ended().await;
    assert!(
        rest.iter()
            .any(|e| matches!(e, RoomEvent::Error { code, .. } if code == "connect")),
        "{rest:?}"
    );
    assert_eq!(client.client.state(), ConnectionState::Closed);
    // A one-room option is refused before anything starts.
    let mut one_room = config(addr, "ann");
    one_room.room = Some("lobby".into());
    assert!(matches!(
        RoomsClient::connect(one_room),
        Err(ClientError::OneRoomOption("room"))
    ));
}

#[tokio::test]
async fn a_close_with_an_app_code_4000_to_4999_is_not_followed_by_a_reconnect() {
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let (addr, mut connections) = stand_in(true).await;
    let mut client = Watched::connect(config(addr, "ann"));
    client
        .client
        .join("a", JoinOptions::default())
        .expect("join");
    let Accepted { mut ws, .. } = next_connection(&mut connections).await;
    send(&mut ws, json!({"type":"hello","name":"ann"})).await;
    receive(&mut ws).await;
    send(
        &mut ws,
        json!({"type":"joined","room":"a","epoch":"e1","seq":0,"ref":"j1"}),
    )
    .await;
    client.joined("a").await;
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "kicked".into(),
    };
    ws.send(Message::Close(Some(frame)))
        .await
        .expect("close 4001");
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    let rest = client.ended().await;
    assert!(
        rest.iter().any(|e| matches!(
            e,
            RoomEvent::Closed {
                code: 4001,
                next: Step::Stop(StopReason::Other(4001)),
                ..
            }
        )),
        "{rest:?}"
    );
    assert_eq!(client.count(|e| matches!(e, RoomEvent::Hello { .. })), 1);
    assert!(connections.try_recv().is_err(), "no second connection");
    timeout(WAIT, reader)
        .await
        .expect("the stand-in's reader")
        .ok();
}

#[tokio::test]
async fn a_refused_upgrade_403_stops_the_client_with_the_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = "room not granted\n";
            let response = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    let mut client = Watched::connect(config(addr, "ann"));
    client.ended().await;
    let closes: Vec<(String, Step)> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Closed { reason, next, .. } => Some((reason.clone(), *next)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        [(
            "HTTP 403: room not granted".to_owned(),
            Step::Stop(StopReason::UpgradeRefused(403))
        )]
    );
}
