//! The Rust client's `wsgrace.v2` side ([`RoomsClient`]) against the real binary, as the
//! SPEC's "Many rooms over one connection" and the library paragraph describe it: a client in
//! three rooms over one connection; join and leave while connected; a restart (SIGTERM, then
//! a new process on the same address and Redis) while two rooms are busy, with no gap and no
//! duplicate per room and every publish in its room once; a publish whose copy was lost to a
//! reconnect sent again with its `id` and in the room exactly once.
//! `tests/client_v2_stand_in.rs` has what needs a stand-in server. Every wait has a deadline.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::wsgrace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};
use wsgrace::client::{
    Backoff, ClientConfig, ConnectionState, JoinOptions, RoomError, RoomEvent, RoomsClient,
};
use wsgrace_kit::free_port;
use wsgrace_kit::http::{http_get, metric};
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;

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

async fn drain(server: &mut ServerProcess) {
    server.sigterm();
    assert!(
        server.wait_exit(WAIT).await.success(),
        "{}",
        server.stderr()
    );
}

#[tokio::test]
async fn a_client_in_three_rooms() {
    let mut server = wsgrace().start("");
    let mut ann = Watched::connect(config(server.addr, "ann"));
    let mut bob = Watched::connect(config(server.addr, "bob"));
    for room in ["a", "b", "c"] {
        ann.client.join(room, JoinOptions::default()).expect("join");
        ann.joined(room).await;
    }
    for room in ["a", "b", "c"] {
        bob.client.join(room, JoinOptions::default()).expect("join");
        bob.joined(room).await;
    }
    let mut ids = BTreeMap::new();
    for room in ["a", "b", "c"] {
        let id = ann
            .client
            .publish(room, &format!("hello {room}"))
            .expect("publish");
        ids.insert(room, id);
    }
    for room in ["a", "b", "c"] {
        bob.message(room, &format!("hello {room}")).await;
        let id = ids[room].clone();
        let seq = ann
            .until("the copy", |e| match e {
                RoomEvent::Published { id: got, seq, .. } if *got == id => Some(*seq),
                _ => None,
            })
            .await;
        assert_eq!(seq, Some(1), "{room}: the room's first message");
    }
    // Each copy carries its id and ts; every room has its own seqs.
    for room in ["a", "b", "c"] {
        let copy = ann.seen.iter().find_map(|e| match e {
            RoomEvent::Message {
                room: r,
                id,
                ts,
                seq,
                ..
            } if r == room => Some((id.clone(), *ts, *seq)),
            _ => None,
        });
        let (id, ts, seq) = copy.expect("ann's copy");
        assert_eq!((id.as_deref(), seq), (Some(ids[room].as_str()), 1));
        assert!(ts.is_some_and(|ts| ts > 1_600_000_000_000), "{ts:?}");
        assert_eq!(ann.client.position(room).map(|p| p.since), Some(1));
    }
    bob.client.signal("b", "typing").expect("signal");
    let signal = ann
        .until("bob's signal", |e| match e {
            RoomEvent::Signal { room, from, text } => {
                Some((room.clone(), from.clone(), text.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(signal, ("b".into(), "bob".into(), "typing".into()));
    // A presence request is answered for its room (who is listed is the presence issue's).
    ann.client.presence("c").expect("presence");
    ann.until("presence", |e| match e {
        RoomEvent::Presence { room, .. } if room == "c" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(ann.client.state(), ConnectionState::Open);
    assert_eq!(ann.count(|e| matches!(e, RoomEvent::Hello { .. })), 1);

    ann.client.close(1000, "").await.expect("close");
    bob.client.close(1000, "").await.expect("close");
    drain(&mut server).await;
}

#[tokio::test]
async fn join_and_leave_while_connected() {
    let mut server = wsgrace().start("");
    let mut ann = Watched::connect(config(server.addr, "ann"));
    let mut bob = Watched::connect(config(server.addr, "bob"));
    ann.client.join("a", JoinOptions::default()).expect("join");
    bob.client.join("a", JoinOptions::default()).expect("join");
    ann.joined("a").await;
    bob.joined("a").await;
    for text in ["m1", "m2", "m3"] {
        bob.client.publish("a", text).expect("publish");
    }
    ann.message("a", "m3").await;

    ann.client.leave("a").expect("leave");
    ann.until("left", |e| {
        matches!(e, RoomEvent::Left { room } if room == "a").then_some(())
    })
    .await;
    let left_at = ann.seen.len();
    assert!(matches!(
        ann.client.publish("a", "not joined"),
        Err(RoomError::NotJoined(_))
    ));
    bob.client.publish("a", "m4").expect("publish");
    bob.message("a", "m4").await;
    // Another room while connected, and the first one again with its last 10 messages.
    ann.client
        .join("b", JoinOptions::default())
        .expect("join b");
    ann.joined("b").await;
    let last = JoinOptions {
        last: Some(10),
        resume: None,
    };
    ann.client.join("a", last).expect("join a again");
    assert_eq!(ann.joined("a").await, Some(4));
    ann.message("a", "m4").await;
    let between: Vec<&RoomEvent> = ann.seen[left_at..]
        .iter()
        .take_while(|e| !matches!(e, RoomEvent::Joined { room, .. } if room == "a"))
        .filter(|e| matches!(e, RoomEvent::Message { room, .. } if room == "a"))
        .collect();
    assert!(
        between.is_empty(),
        "a message of a between leave and join: {between:?}"
    );
    let texts: Vec<String> = ann.messages("a").into_iter().map(|m| m.2).collect();
    assert_eq!(
        texts,
        ["m1", "m2", "m3", "m1", "m2", "m3", "m4"],
        "the rejoin's last 10"
    );
    assert_eq!(ann.client.rooms(), ["b", "a"]);

    ann.client.close(1000, "").await.expect("close");
    bob.client.close(1000, "").await.expect("close");
    drain(&mut server).await;
}

/// Joins `room` and publishes `m0`, `m1`, ... every 10 ms (also while disconnected: they
/// wait in the outbox) until `stop`, then `end`; waits until every publish is confirmed.
/// Returns the texts it published.
async fn talker(
    config: ClientConfig,
    room: &'static str,
    stop: watch::Receiver<bool>,
) -> Vec<String> {
    let mut talker = Watched::connect(config);
    talker
        .client
        .join(room, JoinOptions::default())
        .expect("join");
    talker.joined(room).await;
    let mut texts = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut stop = stop;
    let deadline = Instant::now() + WAIT * 4;
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {
                let text = format!("m{}", texts.len());
                talker.client.publish(room, &text).expect("publish");
                texts.push(text);
            }
            _ = stop.changed() => {}
            event = talker.next(deadline, "a talker event") => {
                assert!(event.is_some(), "the talker stopped: {:?}", talker.recent());
            }
        }
    }
    talker.client.publish(room, "end").expect("publish end");
    texts.push("end".into());
    while !talker.client.unconfirmed().is_empty() {
        talker.next(deadline, "the talker's confirmations").await;
    }
    let failed = talker.count(|e| matches!(e, RoomEvent::PublishFailed { .. }));
    assert_eq!(failed, 0, "{:?}", talker.recent());
    talker.client.close(1000, "").await.expect("close");
    texts
}

#[tokio::test]
async fn a_restart_while_two_rooms_are_busy_loses_nothing_and_repeats_nothing() {
    let redis = RedisServer::start();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\n\n[shutdown]\nreconnect_spread_ms = 300\n",
        redis.url()
    );
    let mut a = wsgrace().bind(addr).start(&toml);
    ready(addr).await;
    let mut reader = Watched::connect(config(addr, "reader"));
    for room in ["busy1", "busy2", "quiet"] {
        reader
            .client
            .join(room, JoinOptions::default())
            .expect("join");
        reader.joined(room).await;
    }
    let (stop_tx, stop) = watch::channel(false);
    let one = tokio::spawn(talker(config(addr, "t1"), "busy1", stop.clone()));
    let two = tokio::spawn(talker(config(addr, "t2"), "busy2", stop));
    for room in ["busy1", "busy2"] {
        reader
            .until("10 messages", |e| match e {
                RoomEvent::Message { room: r, seq, .. } if r == room && *seq >= 10 => Some(()),
                _ => None,
            })
            .await;
    }

    // A drains while both rooms are busy; B comes up on the same address and Redis.
    a.sigterm();
    assert!(a.wait_exit(WAIT).await.success(), "{}", a.stderr());
    let before: Vec<u64> = ["busy1", "busy2"]
        .iter()
        .map(|room| reader.seqs(room).last().copied().unwrap_or(0))
        .collect();
    let mut b = wsgrace().bind(addr).start(&toml);
    ready(addr).await;
    for (room, before) in ["busy1", "busy2"].into_iter().zip(before) {
        reader
            .until("20 messages after the restart", |e| match e {
                RoomEvent::Message { room: r, seq, .. } if r == room && *seq >= before + 20 => {
                    Some(())
                }
                _ => None,
            })
            .await;
    }
    stop_tx.send_replace(true);
    let sent = [
        timeout(WAIT * 2, one)
            .await
            .expect("talker 1 ends")
            .expect("talker 1"),
        timeout(WAIT * 2, two)
            .await
            .expect("talker 2 ends")
            .expect("talker 2"),
    ];
    for room in ["busy1", "busy2"] {
        // The other room's `end` may have come first and been read already.
        if !reader.messages(room).iter().any(|m| m.2 == "end") {
            reader.message(room, "end").await;
        }
    }
    for ((room, from), sent) in [("busy1", "t1"), ("busy2", "t2")].into_iter().zip(sent) {
        let messages = reader.messages(room);
        let seqs: Vec<u64> = messages.iter().map(|m| m.0).collect();
        let first = seqs.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{room}: no gap, no duplicate");
        let texts: Vec<String> = messages
            .into_iter()
            .filter(|m| m.1 == from)
            .map(|m| m.2)
            .collect();
        assert_eq!(texts, sent, "{room}: every publish once, in order");
    }
    assert_eq!(reader.count(|e| matches!(e, RoomEvent::Gap { .. })), 0);
    for room in ["busy1", "busy2", "quiet"] {
        let rejoins = reader.count(
            |e| matches!(e, RoomEvent::Joined { room: r, resumed: Some(true), .. } if r == room),
        );
        assert_eq!(rejoins, 1, "{room} resumed once");
    }
    reader.client.close(1000, "").await.expect("close");
    drain(&mut b).await;
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

/// A TCP proxy that can mute the server's direction (what the server sends is read and
/// dropped: a copy that never reaches the client) and cut every connection.
struct MutingProxy {
    addr: SocketAddr,
    muted: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl MutingProxy {
    async fn start(target: SocketAddr) -> MutingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let muted = Arc::new(AtomicBool::new(false));
        let (cut, generation) = watch::channel(0u64);
        let mute = muted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let mute = mute.clone();
                let mut cut = generation.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let (mut client_rd, mut client_wr) = client.into_split();
                    let (mut server_rd, mut server_wr) = server.into_split();
                    let up = tokio::io::copy(&mut client_rd, &mut server_wr);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match server_rd.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if !mute.load(Ordering::SeqCst)
                                && client_wr.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        MutingProxy { addr, muted, cut }
    }

    fn mute(&self, muted: bool) {
        self.muted.store(muted, Ordering::SeqCst);
    }

    /// Closes every connection open now; new ones are proxied as before.
    fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

#[tokio::test]
async fn a_publish_whose_copy_was_lost_to_a_reconnect_is_resent_and_in_the_room_once() {
    let mut server = wsgrace().start("");
    let proxy = MutingProxy::start(server.addr).await;
    let mut ann = Watched::connect(config(proxy.addr, "ann"));
    let mut bob = Watched::connect(config(server.addr, "bob"));
    ann.client.join("r", JoinOptions::default()).expect("join");
    bob.client.join("r", JoinOptions::default()).expect("join");
    ann.joined("r").await;
    bob.joined("r").await;

    // The server gets the publish and sends it to the room; ann's copy is lost.
    proxy.mute(true);
    let id = ann.client.publish("r", "once").expect("publish");
    bob.message("r", "once").await;
    proxy.cut();
    proxy.mute(false);
    ann.until("the end of the muted connection", |e| match e {
        RoomEvent::Closed { opened: true, .. } => Some(()),
        _ => None,
    })
    .await;
    // The reconnect resumes r (the copy comes in the replay) and resends the publish with
    // its id: the server has it already and answers an ack.
    let seq = ann
        .until("the confirmation", |e| match e {
            RoomEvent::Published { id: got, seq, .. } if *got == id => Some(*seq),
            _ => None,
        })
        .await;
    assert_eq!(seq, Some(1));
    let after = ann.client.publish("r", "after").expect("publish");
    bob.message("r", "after").await;
    // Its copy, then its confirmation.
    ann.until("the confirmation of after", |e| {
        matches!(e, RoomEvent::Published { id, .. } if *id == after).then_some(())
    })
    .await;
    let texts = |w: &Watched| -> Vec<String> { w.messages("r").into_iter().map(|m| m.2).collect() };
    assert_eq!(texts(&bob), ["once", "after"], "the room has it once");
    assert_eq!(texts(&ann), ["once", "after"]);
    assert_eq!(ann.seqs("r"), [1, 2]);
    assert_eq!(ann.count(|e| matches!(e, RoomEvent::Published { .. })), 2);
    assert!(metric(server.addr, "wsgrace_publishes_deduplicated_total").await >= 1.0);

    ann.client.close(1000, "").await.expect("close");
    bob.client.close(1000, "").await.expect("close");
    drain(&mut server).await;
}
