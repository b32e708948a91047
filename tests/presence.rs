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
    use wsgrace_kit::frame::{OP_CLOSE, OP_TEXT};

    let server = wsgrace().start("[session]\noutbound_queue = 64\nsend_buffer_bytes = 4096\n");
    // `slow` reads nothing until the storm is over; its socket's buffers are small.
    let mut slow =
        RawClient::connect_with_buffer(server.addr, "/ws?room=storm&name=slow", Some(4096)).await;
    let mut talker = join(&server, "storm", "talker", None).await;
    // Messages that fill slow's socket buffers: what follows waits in its queue.
    let big = "x".repeat(16 * 1024);
    for _ in 0..8 {
        talker.tx.send(&big).await;
    }
    talker.rx.messages_through(8).await;

    // The storm: 150 names arrive, at once; 50 of them leave again.
    let names: Vec<String> = (0..150).map(|i| format!("j{i}")).collect();
    let arrivals = names.iter().map(|name| join(&server, "storm", name, None));
    let mut joiners: Vec<_> = futures::future::join_all(arrivals).await;
    let leaving: Vec<_> = joiners.drain(..50).collect();
    futures::future::join_all(leaving.into_iter().map(|member| member.leave())).await;
    until("presence events deferred", WAIT, || async {
        (metric(server.addr, "wsgrace_presence_deferred_total").await > 0.0).then_some(())
    })
    .await;

    // slow reads again while members keep coming and going: the race between its list and
    // the events of the moment.
    let reading = tokio::spawn(async move {
        let mut keeper = ListKeeper::default();
        while !(keeper.ended && keeper.lists > 0) {
            let frame = tokio::time::timeout(WAIT, slow.next_frame())
                .await
                .expect("slow is not starved")
                .expect("slow's connection is open");
            assert_ne!(
                frame.opcode, OP_CLOSE,
                "slow was closed: {:?}",
                frame.payload
            );
            if frame.opcode == OP_TEXT {
                let text: Value = serde_json::from_slice(&frame.payload).expect("JSON");
                keeper.read(&text);
            }
        }
        keeper
    });
    let late_names: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let late = late_names
        .iter()
        .map(|name| join(&server, "storm", name, None));
    let (late, ()) = tokio::join!(futures::future::join_all(late), async {
        let leaving: Vec<_> = joiners.drain(..10).collect();
        futures::future::join_all(leaving.into_iter().map(|member| member.leave())).await;
    });
    // Every arrival and departure is counted in presence before the last message.
    metric_reaches(server.addr, "wsgrace_presence_members", 2.0 + 90.0 + 20.0).await;
    talker.tx.send("end").await;
    let keeper = reading.await.expect("the reader");

    let mut expected: std::collections::BTreeSet<String> =
        ["slow", "talker"].iter().map(|n| n.to_string()).collect();
    expected.extend((50..150).skip(10).map(|i| format!("j{i}")));
    expected.extend((0..20).map(|i| format!("k{i}")));
    assert_eq!(keeper.names, expected);
    assert_eq!(keeper.messages, 8, "every message reached slow");
    assert!(metric(server.addr, "wsgrace_presence_resyncs_total").await >= 1.0);
    drop((late, joiners, talker));
}
