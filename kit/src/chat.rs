//! A chat member as the SPEC's "Chat protocol" and "Resume" describe one: it joins a room
//! (optionally resuming with `since` and `epoch`), reads the welcome, and reads the server's
//! JSON frames as typed [`Frame`]s, each read bounded by [`WAIT`]. Over tungstenite, whose
//! halves can be used from two tasks at once (a sender and a reader). It knows the wire
//! format, not the server's types.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::http::{http_get, UPGRADE};
use crate::server::ServerProcess;
use crate::ws::Ws;

/// How long one awaited event may take on a busy 2-core machine; reached only on failure.
pub const WAIT: Duration = Duration::from_secs(20);

/// A chat message as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub seq: u64,
    pub from: String,
    pub text: String,
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub room: String,
    pub name: String,
    pub epoch: String,
    pub seq: u64,
    /// Present when the upgrade had `since`.
    pub resumed: Option<bool>,
    /// Present when `resumed` is true.
    pub missed: Option<u64>,
}

impl Welcome {
    /// Asserts the resume outcome: `resumed` and `missed` as the welcome carries them.
    pub fn assert_resumed(&self, resumed: Option<bool>, missed: Option<u64>) {
        assert_eq!((self.resumed, self.missed), (resumed, missed), "{self:?}");
    }

    /// The resume was refused (`resumed: false`); the room is at `seq`.
    pub fn assert_not_resumed(&self, seq: u64) {
        assert_eq!((self.resumed, self.seq), (Some(false), seq), "{self:?}");
    }

    /// [`Welcome::assert_resumed`], and the room's seq and epoch.
    pub fn assert_resume(&self, resumed: Option<bool>, missed: Option<u64>, seq: u64, epoch: &str) {
        assert_eq!(
            (self.resumed, self.missed, self.seq, self.epoch.as_str()),
            (resumed, missed, seq, epoch),
            "{self:?}"
        );
    }
}

/// One thing the server sent, or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Welcome(Welcome),
    Message(Msg),
    Error {
        code: String,
        text: String,
    },
    GoingAway {
        reconnect_after_ms: u64,
    },
    Epoch {
        room: String,
        epoch: String,
        seq: u64,
    },
    /// A JSON frame of another type (presence and the like; clients ignore them).
    Other(Value),
    /// A close frame: its code (`None` without one) and reason.
    Close(Option<u16>, String),
    /// The stream ended without a close frame, or broke.
    Ended(String),
}

/// The query of an upgrade to `room` as `name`, resuming after `since` in `epoch` if given.
pub fn query(room: &str, name: &str, resume: Option<(u64, &str)>) -> String {
    match resume {
        Some((since, epoch)) => format!("?room={room}&name={name}&since={since}&epoch={epoch}"),
        None => format!("?room={room}&name={name}"),
    }
}

/// Joins `room` as `name` on `server`, resuming after `since` in `epoch` if `resume` is
/// given: the member past its welcome.
pub async fn join(
    server: &ServerProcess,
    room: &str,
    name: &str,
    resume: Option<(u64, &str)>,
) -> Member {
    Member::join(server.ws_url(&query(room, name, resume))).await
}

/// The status of a WebSocket upgrade to `/ws{query}` on `addr` (101 if accepted).
pub async fn upgrade_status(addr: SocketAddr, query: &str) -> u16 {
    http_get(addr, &format!("/ws{query}"), &UPGRADE).await
}

fn parse(text: &str) -> Frame {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("the server sent a frame that is not JSON ({err}): {text}"));
    let str_field = |key: &str| {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {value}"))
            .to_owned()
    };
    let u64_field = |key: &str| {
        value[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer {key:?} in {value}"))
    };
    match value["type"].as_str() {
        Some("welcome") => Frame::Welcome(Welcome {
            room: str_field("room"),
            name: str_field("name"),
            epoch: str_field("epoch"),
            seq: u64_field("seq"),
            resumed: value
                .get("resumed")
                .map(|v| v.as_bool().unwrap_or_else(|| panic!("resumed: {value}"))),
            missed: value
                .get("missed")
                .map(|v| v.as_u64().unwrap_or_else(|| panic!("missed: {value}"))),
        }),
        Some("message") => Frame::Message(Msg {
            seq: u64_field("seq"),
            from: str_field("from"),
            text: str_field("text"),
        }),
        Some("error") => Frame::Error {
            code: str_field("code"),
            text: str_field("text"),
        },
        Some("going_away") => Frame::GoingAway {
            reconnect_after_ms: u64_field("reconnect_after_ms"),
        },
        Some("epoch") => Frame::Epoch {
            room: str_field("room"),
            epoch: str_field("epoch"),
            seq: u64_field("seq"),
        },
        Some(_) => Frame::Other(value),
        None => panic!("a frame without a type: {text}"),
    }
}

/// Whether `frame` is a presence event (`presence_join`, `presence_leave`): frames a client
/// that does not show presence ignores (SPEC: "presence or other event types may exist").
pub fn is_presence_event(frame: &Value) -> bool {
    matches!(
        frame.get("type").and_then(Value::as_str),
        Some("presence_join" | "presence_leave")
    )
}

/// The reading half of a member. Presence events are set aside, not returned by
/// [`Reader::next`] ([`Reader::presence_seen`] lists them): tests of other things read on as
/// a client that does not show presence would.
pub struct Reader {
    stream: SplitStream<Ws>,
    ended: bool,
    presence: Vec<Value>,
}

impl Reader {
    /// The next frame; panics when none comes within [`WAIT`]. After `Close` or `Ended`,
    /// keeps answering `Ended`.
    pub async fn next(&mut self) -> Frame {
        if self.ended {
            return Frame::Ended("read after the end".to_owned());
        }
        loop {
            let next = timeout(WAIT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no frame from the server within {WAIT:?}"));
            let frame = match next {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Frame::Other(value) if is_presence_event(&value) => {
                        self.presence.push(value);
                        continue;
                    }
                    frame => frame,
                },
                Some(Ok(Message::Close(close))) => Frame::Close(
                    close.as_ref().map(|c| u16::from(c.code)),
                    close.map(|c| c.reason.into_owned()).unwrap_or_default(),
                ),
                Some(Ok(_)) => continue,
                Some(Err(err)) => Frame::Ended(err.to_string()),
                None => Frame::Ended("end of stream".to_owned()),
            };
            if matches!(frame, Frame::Ended(_)) {
                self.ended = true;
            }
            return frame;
        }
    }

    /// The presence events read so far (set aside by [`Reader::next`]), oldest first.
    pub fn presence_seen(&self) -> &[Value] {
        &self.presence
    }

    /// Reads frames until one for which `pick` answers `Some`; returns the frames read on the
    /// way and that answer. Panics if the connection ends first (or a read passes [`WAIT`]).
    pub async fn read_until<T>(
        &mut self,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> (Vec<Frame>, T) {
        let mut before = Vec::new();
        loop {
            let frame = self.next().await;
            if let Some(found) = pick(&frame) {
                return (before, found);
            }
            if matches!(frame, Frame::Ended(_)) {
                panic!("the connection ended before the awaited frame; read before: {before:?}");
            }
            before.push(frame);
        }
    }

    /// The next frame, which must be a message.
    pub async fn message(&mut self) -> Msg {
        match self.next().await {
            Frame::Message(msg) => msg,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads frames until the message with seq `last`; every frame on the way must be a
    /// message. Returns the messages, that one included.
    pub async fn messages_through(&mut self, last: u64) -> Vec<Msg> {
        let mut messages = Vec::new();
        loop {
            let msg = self.message().await;
            assert!(
                msg.seq <= last,
                "seq {} came while waiting for {last}; before it: {:?}",
                msg.seq,
                messages.last()
            );
            let done = msg.seq == last;
            messages.push(msg);
            if done {
                return messages;
            }
        }
    }

    /// After a close frame: reads on until the stream ends, which lets tungstenite send its
    /// reply and see the server close the TCP connection. Returns whether the end was clean
    /// (no error).
    pub async fn finish(&mut self) -> bool {
        loop {
            if self.ended {
                return true;
            }
            let next = timeout(WAIT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("the connection did not end within {WAIT:?}"));
            match next {
                None => {
                    self.ended = true;
                    return true;
                }
                Some(Err(_)) => {
                    self.ended = true;
                    return false;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The sending half of a member.
pub struct Sender {
    sink: SplitSink<Ws, Message>,
}

impl Sender {
    /// Sends one chat message; a broken connection is the test's failure.
    pub async fn send(&mut self, text: &str) {
        timeout(WAIT, self.sink.send(Message::Text(text.to_owned())))
            .await
            .expect("sending took longer than the deadline")
            .expect("send a chat message");
    }

    /// Starts a client close handshake (1000).
    pub async fn close(&mut self) {
        let _ = timeout(WAIT, self.sink.close()).await;
    }
}

/// A joined member: both halves, and the welcome it got.
pub struct Member {
    pub tx: Sender,
    pub rx: Reader,
    pub welcome: Welcome,
}

impl Member {
    /// Connects to `url` and reads the welcome, which must be the first frame.
    pub async fn join(url: String) -> Member {
        let connected = timeout(WAIT, tokio_tungstenite::connect_async(url.as_str())).await;
        let Ok(connected) = connected else {
            panic!("the upgrade to {url} took longer than {WAIT:?}");
        };
        let (ws, _) = connected.unwrap_or_else(|err| panic!("the upgrade to {url} failed: {err}"));
        let (sink, stream) = ws.split();
        let mut rx = Reader {
            stream,
            ended: false,
            presence: Vec::new(),
        };
        let welcome = match rx.next().await {
            Frame::Welcome(welcome) => welcome,
            other => panic!("the first frame from {url} was not a welcome: {other:?}"),
        };
        Member {
            tx: Sender { sink },
            rx,
            welcome,
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.tx.send(text).await;
    }

    pub async fn next(&mut self) -> Frame {
        self.rx.next().await
    }

    pub async fn message(&mut self) -> Msg {
        self.rx.message().await
    }

    /// [`Reader::read_until`] on this member.
    pub async fn read_until<T>(
        &mut self,
        pick: impl FnMut(&Frame) -> Option<T>,
    ) -> (Vec<Frame>, T) {
        self.rx.read_until(pick).await
    }

    /// Sends `text` and reads up to its own receipt; the messages read on the way (other
    /// members') are returned too, the receipt last.
    pub async fn say(&mut self, text: &str) -> Vec<Msg> {
        self.tx.send(text).await;
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let msg = self.rx.message().await;
            let done = msg.text == text && msg.from == self.welcome.name;
            seen.push(msg);
            if done {
                return seen;
            }
        }
        panic!("no receipt for {text:?} among 10000 messages");
    }

    /// Client close (1000) and the rest of the handshake.
    pub async fn leave(mut self) {
        self.tx.close().await;
        self.rx.finish().await;
    }
}

/// Asserts that `messages` hold each seq of `first..=last` exactly once, in order.
pub fn assert_contiguous(who: &str, messages: &[Msg], first: u64, last: u64) {
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    if seqs != (first..=last).collect::<Vec<_>>() {
        let mut problems = Vec::new();
        let mut expected = first;
        for (i, seq) in seqs.iter().enumerate() {
            if *seq != expected {
                problems.push(format!("at index {i}: got seq {seq}, expected {expected}"));
                if problems.len() == 10 {
                    break;
                }
            }
            expected = seq + 1;
        }
        panic!(
            "{who}: not every seq of {first}..={last} exactly once, in order ({} messages): {}",
            seqs.len(),
            if problems.is_empty() {
                format!("ends at {:?}", seqs.last())
            } else {
                problems.join("; ")
            }
        );
    }
}
