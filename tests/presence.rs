//! Presence on one node (SPEC "Presence"), against the real binary with the local broker:
//! `presence_join` for a name's first connection and `presence_leave` after its last, to the
//! room's other members, v1 members included; a second tab says nothing; a `presence` request
//! lists names with their connections; a normal close or a v2 `leave` leaves at once; a
//! dropped connection stays present for `presence.grace_ms`, and a rejoin in that time says
//! nothing at all; `presence.events = false` and `events_max_members` send no events but
//! presence is still listed; `presence.enabled = false` lists nobody. Every wait has a
//! deadline; time passing is observed through the server's metrics, never slept away.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::wsgrace;
use serde_json::{json, Value};
use wsgrace_kit::chat::join;
use wsgrace_kit::chat_v2::V2Client;
use wsgrace_kit::http::metric;
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::wait::until;

/// Long enough for a busy machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(20);

fn v2_url(server: &ServerProcess, name: &str) -> String {
    server.ws_url(&format!("?name={name}"))
}

/// A v2 member of `room` named `name` that sees presence events.
async fn observer(server: &ServerProcess, name: &str, room: &str) -> V2Client {
    let mut client = V2Client::connect(&v2_url(server, name)).await;
    client.reader.keep_presence();
    client.join(room, json!({})).await;
    client
}

/// `client`'s `presence` answer for `room`, as (name, connections) pairs.
async fn presence_of(client: &mut V2Client, room: &str) -> Vec<(String, u64)> {
    client
        .sender
        .send(json!({"type": "presence", "room": room, "ref": "who"}))
        .await;
    let answer = client.reader.next_of("presence", Some(room)).await;
    assert_eq!(answer["ref"], "who", "{answer}");
    answer["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {answer}"))
        .iter()
        .map(|member| {
            let name = member["name"].as_str().expect("a name").to_owned();
            (name, member["connections"].as_u64().expect("a count"))
        })
        .collect()
}

fn names(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Reads `client`'s frames until its copy of a message saying `text` in `room`; returns the
/// presence events read on the way.
async fn presence_before(client: &mut V2Client, room: &str, text: &str) -> Vec<Value> {
    let frames = client
        .reader
        .read_until(|frame| frame["type"] == "message" && frame["text"] == text)
        .await;
    frames
        .into_iter()
        .filter(|frame| {
            frame["room"] == room
                && matches!(
                    frame["type"].as_str(),
                    Some("presence_join" | "presence_leave")
                )
        })
        .collect()
}

fn event(kind: &str, room: &str, name: &str) -> Value {
    json!({"type": kind, "room": room, "name": name})
}

/// Waits until the sample `sample` in `/metrics` is `value`.
async fn metric_reaches(addr: SocketAddr, sample: &str, value: f64) {
    until(&format!("{sample} = {value}"), WAIT, || async move {
        (metric(addr, sample).await == value).then_some(())
    })
    .await;
}

#[tokio::test]
async fn arrivals_and_departures_are_told_once_and_a_second_tab_says_nothing() {
    let server = wsgrace().start("");
    let mut ann = observer(&server, "ann", "r").await;
    // A v1 member gets the events too.
    let mut vic = join(&server, "r", "vic", None).await;
    assert_eq!(
        ann.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "vic")
    );
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    bob.join("r", json!({})).await;
    assert_eq!(
        ann.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "bob")
    );
    assert_eq!(
        presence_of(&mut bob, "r").await,
        names(&[("ann", 1), ("bob", 1), ("vic", 1)])
    );
    // bob's second tab, over v1: nobody is told.
    let mut tab = join(&server, "r", "bob", None).await;
    bob.say("r", "two tabs").await;
    assert_eq!(
        presence_before(&mut ann, "r", "two tabs").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        presence_of(&mut ann, "r").await,
        names(&[("ann", 1), ("bob", 2), ("vic", 1)])
    );
    // The tab closes normally: bob is still there.
    tab.tx.close().await;
    metric_reaches(server.addr, "wsgrace_presence_members", 3.0).await;
    bob.say("r", "one tab").await;
    assert_eq!(
        presence_before(&mut ann, "r", "one tab").await,
        Vec::<Value>::new()
    );
    // bob leaves the room: gone at once.
    bob.sender.leave("r").await;
    assert_eq!(
        ann.reader.next_of("presence_leave", Some("r")).await,
        event("presence_leave", "r", "bob")
    );
    vic.tx.send("vic here").await;
    let seen = vic
        .rx
        .read_until(|frame| match frame {
            wsgrace_kit::chat::Frame::Message(message) => {
                (message.text == "vic here").then_some(())
            }
            _ => None,
        })
        .await;
    drop(seen);
    assert_eq!(
        vic.rx.presence_seen(),
        [
            event("presence_join", "r", "bob"),
            event("presence_leave", "r", "bob")
        ]
    );
    assert_eq!(
        metric(server.addr, "wsgrace_presence_kept_total").await,
        0.0
    );
    assert_eq!(
        metric(
            server.addr,
            "wsgrace_presence_events_total{kind=\"presence_join\"}"
        )
        .await,
        // vic's arrival and bob's, each told once to this node's members.
        2.0
    );
}

#[tokio::test]
async fn a_dropped_connection_stays_present_for_the_grace_and_a_rejoin_in_time_says_nothing() {
    // A grace long enough for cat to come back in it on a busy machine.
    let server = wsgrace().start("[presence]\ngrace_ms = 5000\n");
    let mut ann = observer(&server, "ann", "r").await;
    let cat = RawClient::connect(server.addr, "/ws?room=r&name=cat").await;
    assert_eq!(
        ann.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "cat")
    );
    // cat's connection drops (no close frame) and cat comes back at once: nothing is said,
    // also when its kept connection's time runs out.
    cat.reset();
    metric_reaches(server.addr, "wsgrace_presence_kept_total", 1.0).await;
    let mut cat = join(&server, "r", "cat", None).await;
    metric_reaches(server.addr, "wsgrace_presence_kept_rejoined_total", 1.0).await;
    cat.tx.send("cat is back").await;
    assert_eq!(
        presence_before(&mut ann, "r", "cat is back").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        presence_of(&mut ann, "r").await,
        names(&[("ann", 1), ("cat", 1)])
    );
    // dog drops and does not come back: still present at first, gone after the grace.
    let dog = RawClient::connect(server.addr, "/ws?room=r&name=dog").await;
    assert_eq!(
        ann.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "dog")
    );
    dog.reset();
    metric_reaches(server.addr, "wsgrace_presence_kept_total", 2.0).await;
    cat.tx.send("dog dropped").await;
    assert_eq!(
        presence_before(&mut ann, "r", "dog dropped").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        presence_of(&mut ann, "r").await,
        names(&[("ann", 1), ("cat", 1), ("dog", 1)])
    );
    assert_eq!(
        ann.reader.next_of("presence_leave", Some("r")).await,
        event("presence_leave", "r", "dog")
    );
    assert_eq!(
        presence_of(&mut ann, "r").await,
        names(&[("ann", 1), ("cat", 1)])
    );
    assert_eq!(
        metric(server.addr, "wsgrace_presence_kept_rejoined_total").await,
        1.0
    );
}

#[tokio::test]
async fn without_events_or_in_a_big_room_nothing_is_told_but_presence_is_listed() {
    for config in [
        "[presence]\nevents = false\n",
        "[presence]\nevents_max_members = 1\n",
    ] {
        let server = wsgrace().start(config);
        let mut ann = observer(&server, "ann", "r").await;
        let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
        bob.join("r", json!({})).await;
        bob.say("r", "hello").await;
        assert_eq!(
            presence_before(&mut ann, "r", "hello").await,
            Vec::<Value>::new(),
            "{config}"
        );
        assert_eq!(
            presence_of(&mut ann, "r").await,
            names(&[("ann", 1), ("bob", 1)]),
            "{config}"
        );
        bob.sender.leave("r").await;
        bob.reader.next_of("left", Some("r")).await;
        ann.sender.publish("r", "bye", None).await;
        assert_eq!(
            presence_before(&mut ann, "r", "bye").await,
            Vec::<Value>::new()
        );
        assert_eq!(
            presence_of(&mut ann, "r").await,
            names(&[("ann", 1)]),
            "{config}"
        );
    }
}

#[tokio::test]
async fn with_presence_off_nobody_is_listed_or_told() {
    let server = wsgrace().start("[presence]\nenabled = false\n");
    let mut ann = observer(&server, "ann", "r").await;
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    bob.join("r", json!({})).await;
    bob.say("r", "hello").await;
    assert_eq!(
        presence_before(&mut ann, "r", "hello").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        presence_of(&mut ann, "r").await,
        Vec::<(String, u64)>::new()
    );
}

/// What a v1 client that keeps a room's member list makes of the frames it reads: a
/// `presence` list replaces it, `presence_join` adds a name, `presence_leave` removes one.
#[derive(Default)]
struct ListKeeper {
    names: std::collections::BTreeSet<String>,
    lists: usize,
    messages: usize,
    ended: bool,
}

impl ListKeeper {
    fn read(&mut self, frame: &Value) {
        let name = || frame["name"].as_str().expect("a name").to_owned();
        match frame["type"].as_str() {
            Some("presence") => {
                self.lists += 1;
                self.names = frame["members"]
                    .as_array()
                    .expect("members")
                    .iter()
                    .map(|member| member["name"].as_str().expect("a name").to_owned())
                    .collect();
            }
            Some("presence_join") => {
                self.names.insert(name());
            }
            Some("presence_leave") => {
                self.names.remove(&name());
            }
            Some("message") if frame["text"] == "end" => self.ended = true,
            Some("message") => self.messages += 1,
            _ => {}
        }
    }
}

/// A join storm does not close a member that reads slower than the server writes as a slow
/// consumer: presence events are not queued for a member whose queue is half full; once it
/// has caught up it gets the room's list (`presence`, no `ref`), and the events after it.
/// Members keep arriving and leaving while it catches up: the list it ends with is the room's.
/// Without the deferral the member is closed 1008 (its queue of 64 overflows).
#[tokio::test]
async fn a_member_behind_on_reading_gets_the_rooms_list_instead_of_a_storm_of_events() {
    let server = wsgrace().start(STORM_CONFIG);
    storm_then_catch_up(&server, 1, 20, 10).await;
}

/// The same on a node whose broker is Redis, where a list is read from Redis (on one
/// connection, through the broker's job queue) while the events come over pub/sub (on
/// another): five members catch up at once while 60 names arrive and 30 leave. Every one of
/// them ends with exactly the room's names. Before one read per room was shared by every
/// member waiting for it and a failed read was tried again, a member could end the storm with
/// no list at all (knowing only the slow members: 1 run in 20 failed so); a list read
/// while its room changes is read again (`wsgrace_presence_list_rereads_total`), then sent
/// followed by the events that came during the read.
#[tokio::test]
async fn with_redis_a_list_read_while_the_room_changes_is_not_older_than_the_events_sent() {
    let redis = RedisServer::start();
    let prefix = format!("wsgrace-presence-storm-{}", std::process::id());
    let server = wsgrace()
        .start_ready(&format!(
            "{STORM_CONFIG}[broker]\nkind = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n",
            redis.url()
        ))
        .await;
    storm_then_catch_up(&server, 5, 60, 30).await;
}

/// A small outbound queue and send buffer, so that a member that does not read falls behind.
const STORM_CONFIG: &str = "[session]\noutbound_queue = 64\nsend_buffer_bytes = 4096\n";

/// `slow_members` members of room `storm` read nothing while 150 names arrive and 50 leave;
/// then they read again while `late` more arrive and `leave` of the others leave. None is
/// closed, each gets every room message, and each ends with exactly the room's names.
async fn storm_then_catch_up(
    server: &ServerProcess,
    slow_members: usize,
    late: usize,
    leave: usize,
) {
    use wsgrace_kit::frame::{OP_CLOSE, OP_TEXT};

    // The slow members read nothing until the storm is over; their sockets' buffers are small.
    let mut slow = Vec::new();
    for i in 0..slow_members {
        let path = format!("/ws?room=storm&name=slow{i}");
        slow.push(RawClient::connect_with_buffer(server.addr, &path, Some(4096)).await);
    }
    let mut talker = join(server, "storm", "talker", None).await;
    // Messages that fill the slow members' socket buffers: what follows waits in their queues.
    let big = "x".repeat(16 * 1024);
    for _ in 0..8 {
        talker.tx.send(&big).await;
    }
    talker.rx.messages_through(8).await;

    // The storm: 150 names arrive, at once; 50 of them leave again.
    let names: Vec<String> = (0..150).map(|i| format!("j{i}")).collect();
    let arrivals = names.iter().map(|name| join(server, "storm", name, None));
    let mut joiners: Vec<_> = futures::future::join_all(arrivals).await;
    let leaving: Vec<_> = joiners.drain(..50).collect();
    futures::future::join_all(leaving.into_iter().map(|member| member.leave())).await;
    until("presence events deferred", WAIT, || async {
        (metric(server.addr, "wsgrace_presence_deferred_total").await > 0.0).then_some(())
    })
    .await;

    // What the room holds at the end.
    let late_names: Vec<String> = (0..late).map(|i| format!("k{i}")).collect();
    let mut expected: std::collections::BTreeSet<String> =
        (0..slow_members).map(|i| format!("slow{i}")).collect();
    expected.insert("talker".to_owned());
    expected.extend((50..150).skip(leave).map(|i| format!("j{i}")));
    expected.extend(late_names.iter().cloned());

    // The slow members read again while members keep coming and going: the race between
    // their lists and the events of the moment. Each reads until it has the last message and
    // the room's names (a member behind again after the last message is sent its list later),
    // or until nothing more comes: then the assertion below shows what it ended with.
    let readers: Vec<_> = slow
        .into_iter()
        .map(|mut client| {
            let expected = expected.clone();
            tokio::spawn(async move {
                let mut keeper = ListKeeper::default();
                while !(keeper.ended && keeper.lists > 0 && keeper.names == expected) {
                    let Ok(frame) = tokio::time::timeout(WAIT, client.next_frame()).await else {
                        break;
                    };
                    let frame = frame.expect("a slow member's connection is open");
                    assert_ne!(
                        frame.opcode, OP_CLOSE,
                        "a slow member was closed: {:?}",
                        frame.payload
                    );
                    if frame.opcode == OP_TEXT {
                        let text: Value = serde_json::from_slice(&frame.payload).expect("JSON");
                        keeper.read(&text);
                    }
                }
                keeper
            })
        })
        .collect();
    let arrivals = late_names
        .iter()
        .map(|name| join(server, "storm", name, None));
    let (late_members, ()) = tokio::join!(futures::future::join_all(arrivals), async {
        let leaving: Vec<_> = joiners.drain(..leave).collect();
        futures::future::join_all(leaving.into_iter().map(|member| member.leave())).await;
    });
    // Every arrival and departure is counted in presence before the last message.
    let present = slow_members + 1 + 100 - leave + late;
    metric_reaches(server.addr, "wsgrace_presence_members", present as f64).await;
    talker.tx.send("end").await;

    for (i, reader) in readers.into_iter().enumerate() {
        let keeper = reader.await.expect("a reader");
        assert!(keeper.ended, "slow{i} got the last message");
        assert_eq!(keeper.names, expected, "slow{i}'s list");
        assert_eq!(keeper.messages, 8, "every message reached slow{i}");
    }
    assert!(metric(server.addr, "wsgrace_presence_resyncs_total").await >= 1.0);
    drop((late_members, joiners, talker));
}
