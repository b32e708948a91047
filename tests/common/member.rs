//! A chat member as the SPEC's "Chat protocol" and "Resume" describe one: it joins a room
//! (optionally resuming with `since` and `epoch`), reads the welcome, and reads the server's
//! JSON frames as typed [`Frame`]s, each read bounded by [`WAIT`]. Over tungstenite, whose
//! halves can be used from two tasks at once (a sender and a reader).

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::process::{http_get, Ws, UPGRADE};

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

/// The reading half of a member.
pub struct Reader {
    stream: SplitStream<Ws>,
    ended: bool,
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
                Some(Ok(Message::Text(text))) => parse(&text),
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

/// A talker running in the background: its task (whose output is every message it received)
/// and the seq of its latest receipt, which is how far the room has got.
pub struct Talker {
    pub task: tokio::task::JoinHandle<Vec<Msg>>,
    pub progress: tokio::sync::watch::Receiver<u64>,
}

/// Sends `count` messages `"{prefix}-{n}"` from `member`, `pause` apart (traffic for the
/// others to join and resume under), while reading its own receipts (so that its outbound
/// queue stays short, and to publish how far the room has got).
pub fn spawn_talker(member: Member, prefix: &'static str, count: u64, pause: Duration) -> Talker {
    let base = member.welcome.seq;
    let Member { mut tx, mut rx, .. } = member;
    let (progress_tx, progress) = tokio::sync::watch::channel(base);
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.last().map_or(base, |m: &Msg| m.seq) < base + count {
            let msg = rx.message().await;
            progress_tx.send_replace(msg.seq);
            received.push(msg);
        }
        received
    });
    let task = tokio::spawn(async move {
        for n in 1..=count {
            tx.send(&format!("{prefix}-{n}")).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let received = reader.await.expect("the talker's reader panicked");
        tx.close().await;
        received
    });
    Talker { task, progress }
}

/// One client of a resume-under-traffic run. `member` joined its room before the traffic
/// started. `rounds` times it reads a few messages, leaves (alternately with a close
/// handshake and by dropping the TCP connection), waits until the room (`progress`, the
/// talker's latest seq) has got a few messages past it, or none, and resumes at the next
/// address of `nodes` with `since` = the last seq it saw and the welcome's epoch; every
/// resume must answer `resumed: true` with the right `missed`. The counts are drawn from
/// `seed`. Then it reads through seq `last`. Returns every message it took in, in order,
/// and the sum of `missed`.
pub async fn resume_rounds(
    mut member: Member,
    nodes: Vec<SocketAddr>,
    rounds: usize,
    last: u64,
    mut progress: tokio::sync::watch::Receiver<u64>,
    seed: u64,
) -> (Vec<Msg>, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let room = member.welcome.room.clone();
    let name = member.welcome.name.clone();
    let epoch = member.welcome.epoch.clone();
    let mut seen: Vec<Msg> = Vec::new();
    let mut missed_total = 0;
    for round in 0..rounds {
        let mut seq = seen.last().map_or(member.welcome.seq, |m| m.seq);
        let take = rng.gen_range(1..=25).min(last - seq);
        for _ in 0..take {
            let msg = member.message().await;
            assert_eq!(
                msg.seq,
                seq + 1,
                "{name} round {round}: seq {} after {seq}",
                msg.seq
            );
            seq = msg.seq;
            seen.push(msg);
        }
        if round % 2 == 0 {
            member.leave().await;
        } else {
            drop(member);
        }
        let behind = (seq + rng.gen_range(0..=5)).min(last);
        timeout(WAIT, progress.wait_for(|room| *room >= behind))
            .await
            .expect("the room did not move on")
            .expect("the talker stopped early");
        let node = nodes[(round + 1) % nodes.len()];
        let url = format!("ws://{node}/ws{}", query(&room, &name, Some((seq, &epoch))));
        member = Member::join(url).await;
        let welcome = &member.welcome;
        assert_eq!(
            (welcome.resumed, welcome.epoch.as_str()),
            (Some(true), epoch.as_str()),
            "{name} round {round}: resume after {seq} on {node}: {welcome:?}"
        );
        assert!(
            welcome.seq >= seq,
            "{name}: welcome {welcome:?} after {seq}"
        );
        assert_eq!(
            welcome.missed,
            Some(welcome.seq - seq),
            "{name} round {round}: {welcome:?} after {seq}"
        );
        missed_total += welcome.seq - seq;
    }
    let seq = seen.last().map_or(member.welcome.seq, |m| m.seq);
    if seq < last {
        seen.extend(member.rx.messages_through(last).await);
    }
    member.leave().await;
    (seen, missed_total)
}
