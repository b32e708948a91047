//! A `wsgrace.v2` client as the SPEC's "Many rooms over one connection" describes one: it
//! upgrades offering the subprotocol, reads `hello`, and then sends JSON frames (join,
//! leave, publish, signal, presence) and reads the server's frames as JSON values, each read
//! bounded by [`WAIT`]. Over tungstenite, split so that a sender and a reader can run in two
//! tasks. It knows the wire format, not the server's types.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::chat::{is_presence_event, WAIT};
use crate::ws::Ws;

/// The subprotocol of many rooms over one connection.
pub const SUBPROTOCOL: &str = "wsgrace.v2";

/// One thing the server sent: a JSON frame, or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame: its code (`None` without one) and reason.
    Close(Option<u16>, String),
    /// The stream ended without a close frame, or broke.
    Ended(String),
}

impl Event {
    /// The frame, or a panic naming what came instead.
    pub fn frame(self) -> Value {
        match self {
            Event::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// The sending half.
pub struct V2Sender {
    sink: SplitSink<Ws, Message>,
}

impl V2Sender {
    /// Sends `frame` as one text message.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Sends any text (a test of bad frames).
    pub async fn send_text(&mut self, text: String) {
        timeout(WAIT, self.sink.send(Message::Text(text)))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// `{"type":"join","room":R,...}` with `extra` fields (since, epoch, last, ref).
    pub async fn join(&mut self, room: &str, extra: Value) {
        self.send(with(json!({"type": "join", "room": room}), extra))
            .await;
    }

    /// `{"type":"leave","room":R}`.
    pub async fn leave(&mut self, room: &str) {
        self.send(json!({"type": "leave", "room": room})).await;
    }

    /// `{"type":"publish","room":R,"text":T}`, with `"id":I` when given.
    pub async fn publish(&mut self, room: &str, text: &str, id: Option<&str>) {
        let mut frame = json!({"type": "publish", "room": room, "text": text});
        if let Some(id) = id {
            frame["id"] = json!(id);
        }
        self.send(frame).await;
    }

    /// `{"type":"signal","room":R,"text":T}`.
    pub async fn signal(&mut self, room: &str, text: &str) {
        self.send(json!({"type": "signal", "room": room, "text": text}))
            .await;
    }

    /// Sends a close frame with 1000.
    pub async fn close(&mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }
}

/// `base` with the fields of `extra` (an object) added.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// The reading half. Presence events are set aside unless asked for
/// ([`V2Reader::keep_presence`]), as a client that does not show presence ignores them;
/// [`V2Reader::presence_seen`] lists them.
pub struct V2Reader {
    stream: SplitStream<Ws>,
    keep_presence: bool,
    presence: Vec<Value>,
}

impl V2Reader {
    /// From now on [`V2Reader::next`] returns presence events too.
    pub fn keep_presence(&mut self) {
        self.keep_presence = true;
    }

    /// The presence events set aside so far, oldest first.
    pub fn presence_seen(&self) -> &[Value] {
        &self.presence
    }

    /// The next thing the server sent (pings are answered by tungstenite and skipped;
    /// presence events too, unless kept).
    pub async fn next(&mut self) -> Event {
        // One deadline for the whole wait: the server's pings must not renew it.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"));
            return match next {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                    Ok(value) if !self.keep_presence && is_presence_event(&value) => {
                        self.presence.push(value);
                        continue;
                    }
                    Ok(value) => Event::Frame(value),
                    Err(err) => panic!("the server sent a frame that is not JSON ({err}): {text}"),
                },
                Some(Ok(Message::Close(close))) => Event::Close(
                    close.as_ref().map(|close| u16::from(close.code)),
                    close
                        .map(|close| close.reason.to_string())
                        .unwrap_or_default(),
                ),
                Some(Ok(_)) => continue,
                Some(Err(err)) => Event::Ended(err.to_string()),
                None => Event::Ended("end of stream".to_owned()),
            };
        }
    }

    /// The next frame whose `type` is `kind` (and, when `room` is given, of that room),
    /// skipping others; panics if the connection ends first.
    pub async fn next_of(&mut self, kind: &str, room: Option<&str>) -> Value {
        loop {
            let frame = self.next().await.frame();
            if frame["type"] == kind && room.map_or(true, |room| frame["room"] == room) {
                return frame;
            }
        }
    }

    /// Reads until `done` says a frame ends the wait; returns every frame read, that one
    /// included.
    pub async fn read_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await.frame();
            let last = done(&frame);
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }

    /// Reads the `message` frames of `room` until the one with seq `through`; panics on any
    /// other frame of that room but `epoch`.
    pub async fn messages_through(&mut self, room: &str, through: u64) -> Vec<Value> {
        let mut messages = Vec::new();
        loop {
            let frame = self.next().await.frame();
            if frame["room"] != room {
                continue;
            }
            match frame["type"].as_str() {
                Some("message") => {
                    let seq = frame["seq"].as_u64().expect("a seq");
                    messages.push(frame);
                    if seq >= through {
                        return messages;
                    }
                }
                Some("signal") | Some("presence_join") | Some("presence_leave") => {}
                _ => panic!("unexpected frame in {room}: {frame}"),
            }
        }
    }
}

/// A v2 connection, past its `hello`.
pub struct V2Client {
    /// The `hello` frame.
    pub hello: Value,
    pub sender: V2Sender,
    pub reader: V2Reader,
}

impl V2Client {
    /// Connects to `url` (`ws://HOST/ws?name=N...`) offering `wsgrace.v2`; checks the 101
    /// chose it and reads `hello`.
    pub async fn connect(url: &str) -> V2Client {
        let mut request = url.into_client_request().expect("a websocket URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, response) = timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|value| value.to_str().ok()),
            Some(SUBPROTOCOL),
            "the server did not choose {SUBPROTOCOL}"
        );
        let (sink, stream) = ws.split();
        let mut reader = V2Reader {
            stream,
            keep_presence: false,
            presence: Vec::new(),
        };
        let hello = reader.next().await.frame();
        assert_eq!(hello["type"], "hello", "{hello}");
        V2Client {
            hello,
            sender: V2Sender { sink },
            reader,
        }
    }

    /// Joins `room` with `extra` fields and reads until its `joined` (frames of other rooms
    /// read meanwhile are dropped); returns it.
    pub async fn join(&mut self, room: &str, extra: Value) -> Value {
        self.sender.join(room, extra).await;
        self.reader.next_of("joined", Some(room)).await
    }

    /// Publishes and reads until the message's own copy in `room`; returns its seq.
    pub async fn say(&mut self, room: &str, text: &str) -> u64 {
        self.sender.publish(room, text, None).await;
        loop {
            let frame = self.reader.next_of("message", Some(room)).await;
            if frame["text"] == text {
                return frame["seq"].as_u64().expect("a seq");
            }
        }
    }
}
