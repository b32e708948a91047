//! `wsgrace.v2` across nodes (SPEC "Many rooms over one connection" with "Cluster"): real
//! `wsgrace` binaries on a real `redis-server` of the test's own. A publish resent after a
//! reconnect to the other node is in the room once, also when the same id reaches both nodes
//! at the same moment; a reconnect resumes two busy rooms, each without a gap or a duplicate;
//! a signal crosses nodes; while Redis is down a join and a publish are refused
//! `unavailable` and the connection stays.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::wsgrace;
use serde_json::json;
use wsgrace_kit::chat::{join, WAIT};
use wsgrace_kit::chat_v2::V2Client;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::traffic::spawn_talker;

/// A node's config on the Redis at `url`, under a prefix unique to `test`.
fn config(url: &str, test: &str) -> String {
    format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"wsgrace-test-{}-{test}\"\n",
        std::process::id()
    )
}

async fn two_nodes(redis: &RedisServer, test: &str) -> (ServerProcess, ServerProcess) {
    let config = config(&redis.url(), test);
    let a = wsgrace().start_ready(&config).await;
    let b = wsgrace().start_ready(&config).await;
    (a, b)
}

fn url(node: &ServerProcess, name: &str) -> String {
    node.ws_url(&format!("?name={name}"))
}

#[tokio::test]
async fn a_publish_resent_to_the_other_node_is_in_the_room_once() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "resend").await;
    let mut bob = V2Client::connect(&url(&b, "bob")).await;
    bob.join("r", json!({})).await;
    let mut ann = V2Client::connect(&url(&a, "ann")).await;
    ann.join("r", json!({})).await;
    ann.sender.publish("r", "hello", Some("m-1")).await;
    let own = ann.reader.next_of("message", Some("r")).await;
    assert_eq!(
        (own["seq"].clone(), own["id"].clone()),
        (json!(1), json!("m-1"))
    );
    // The client lost its connection before it saw that copy (as far as it knows): it
    // reconnects to the other node and sends the message again with the same id.
    drop(ann);
    let mut again = V2Client::connect(&url(&b, "ann")).await;
    again.join("r", json!({"since": 0})).await;
    again.sender.publish("r", "hello", Some("m-1")).await;
    let answers = again
        .reader
        .read_until(|frame| frame["type"] == "ack")
        .await;
    let ack = answers.last().cloned().unwrap_or_default();
    assert_eq!(
        ack,
        json!({"type": "ack", "room": "r", "id": "m-1", "seq": 1})
    );
    // The room has it once: the next message is seq 2 at bob, after seq 1.
    again.say("r", "next").await;
    let seqs: Vec<u64> = bob
        .reader
        .messages_through("r", 2)
        .await
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn the_same_id_at_both_nodes_at_once_is_published_once() {
    // Two connections of one user, one per node, send the same 40 ids at the same moments:
    // the dedupe decision is atomic with the seq in Redis, so each id is in the room once,
    // and each sender gets its copy or an ack for every id.
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "race").await;
    let mut watcher = V2Client::connect(&url(&a, "watcher")).await;
    watcher.join("r", json!({})).await;
    let mut on_a = V2Client::connect(&url(&a, "ann")).await;
    let mut on_b = V2Client::connect(&url(&b, "ann")).await;
    on_a.join("r", json!({})).await;
    on_b.join("r", json!({})).await;
    const IDS: u64 = 40;
    for n in 0..IDS {
        let id = format!("id-{n}");
        let text = format!("text-{n}");
        tokio::join!(
            on_a.sender.publish("r", &text, Some(&id)),
            on_b.sender.publish("r", &text, Some(&id)),
        );
    }
    let seen = watcher.reader.messages_through("r", IDS).await;
    let mut texts: Vec<&str> = seen.iter().filter_map(|m| m["text"].as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len() as u64, IDS, "each id once: {seen:?}");
    assert_eq!(seen.len() as u64, IDS);
    for sender in [&mut on_a, &mut on_b] {
        // Every id answered: its own copy (with the id) or an ack.
        let mut answered = BTreeMap::new();
        while answered.len() < IDS as usize {
            let frame = sender.reader.next().await.frame();
            let answer = match frame["type"].as_str() {
                Some("ack") => "ack",
                Some("message") if frame.get("id").is_some() => "copy",
                _ => continue,
            };
            let id = frame["id"].as_str().unwrap_or_default().to_owned();
            assert!(
                answered.insert(id, answer).is_none(),
                "answered twice: {frame}"
            );
        }
    }
}

/// Reads the client's frames until every room of `positions` reached `through` (each at
/// most 300), noting each (room, seq) in `seen` and moving the room's position; a seq seen
/// twice fails the test. Frames of every room are kept, whichever the wait is for.
async fn read_rooms(
    client: &mut V2Client,
    seen: &mut BTreeMap<String, Vec<u64>>,
    positions: &mut BTreeMap<&'static str, (u64, String)>,
    ahead: u64,
) {
    let targets: BTreeMap<&str, u64> = positions
        .iter()
        .map(|(room, (seq, _))| (*room, (seq + ahead).min(300)))
        .collect();
    while positions
        .iter()
        .any(|(room, (seq, _))| *seq < targets[room])
    {
        let frame = client.reader.next().await.frame();
        if frame["type"] == "message" {
            note(seen, positions, &frame);
        }
    }
}

/// Notes the message `frame` in `seen` (a seq seen twice fails the test) and moves its room's
/// position.
fn note(
    seen: &mut BTreeMap<String, Vec<u64>>,
    positions: &mut BTreeMap<&'static str, (u64, String)>,
    frame: &serde_json::Value,
) {
    let room = frame["room"].as_str().unwrap_or_default().to_owned();
    let seq = frame["seq"].as_u64().expect("a seq");
    let seqs = seen.entry(room.clone()).or_default();
    assert!(!seqs.contains(&seq), "room {room}: seq {seq} twice");
    seqs.push(seq);
    if let Some(position) = positions.get_mut(room.as_str()) {
        position.0 = seq;
    }
}

#[tokio::test]
async fn a_reconnect_resumes_two_busy_rooms_each_without_a_gap_or_a_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "busy").await;
    // Traffic in both rooms from the other node: 300 messages each, 10 ms apart.
    let pause = Duration::from_millis(10);
    let talker_1 = spawn_talker(join(&b, "r1", "t1", None).await, "one", 300, pause);
    let talker_2 = spawn_talker(join(&b, "r2", "t2", None).await, "two", 300, pause);
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut positions: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut client = V2Client::connect(&url(&a, "x")).await;
    for room in ["r1", "r2"] {
        let joined = client.join(room, json!({})).await;
        positions.insert(
            room,
            (
                joined["seq"].as_u64().unwrap_or_default(),
                joined["epoch"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    // Four rounds: read a little of both rooms, drop the connection, reconnect to the other
    // node while the rooms go on, resume each room from where it was.
    for round in 0..4 {
        read_rooms(&mut client, &mut seen, &mut positions, 20).await;
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let node = if round % 2 == 0 { &b } else { &a };
        client = V2Client::connect(&url(node, "x")).await;
        for room in ["r1", "r2"] {
            let (since, epoch) = positions[room].clone();
            client
                .sender
                .join(room, json!({"since": since, "epoch": epoch}))
                .await;
        }
        // Each room's answer comes before its replay (another room's frames may come
        // between): read up to both answers, noting the first room's replay.
        let mut answered = Vec::new();
        while answered.len() < 2 {
            let frame = client.reader.next().await.frame();
            let room = frame["room"].as_str().unwrap_or_default().to_owned();
            match frame["type"].as_str() {
                Some("joined") => {
                    assert_eq!(frame["resumed"], true, "round {round}: {frame}");
                    answered.push(room);
                }
                Some("message") => {
                    assert!(
                        answered.contains(&room),
                        "before its room's answer: {frame}"
                    );
                    note(&mut seen, &mut positions, &frame);
                }
                _ => {}
            }
        }
    }
    // The rest: everything up to 300 in each room.
    read_rooms(&mut client, &mut seen, &mut positions, 300).await;
    for (room, seqs) in &seen {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(&sorted, seqs, "{room}: out of order");
        let first = sorted[0];
        assert_eq!(sorted, (first..=300).collect::<Vec<_>>(), "{room}: a gap");
    }
    for talker in [talker_1, talker_2] {
        let _ = tokio::time::timeout(WAIT, talker.task).await;
    }
}

#[tokio::test]
async fn a_signal_crosses_nodes_and_skips_its_sender() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "signal").await;
    let mut ann = V2Client::connect(&url(&a, "ann")).await;
    let mut bob = V2Client::connect(&url(&b, "bob")).await;
    ann.join("r", json!({})).await;
    bob.join("r", json!({})).await;
    ann.sender.signal("r", "typing").await;
    let signal = bob.reader.next_of("signal", Some("r")).await;
    assert_eq!(
        signal,
        json!({"type": "signal", "room": "r", "from": "ann", "text": "typing"})
    );
    let seq = ann.say("r", "done typing").await;
    // ann's next frame after its signal was its own message: no signal came back.
    assert_eq!(seq, 1);
    let next = bob.reader.next_of("message", Some("r")).await;
    assert_eq!(next["seq"], 1);
}

#[tokio::test]
async fn while_redis_is_down_joins_and_publishes_are_unavailable_and_the_connection_stays() {
    let mut redis = RedisServer::start();
    let config = config(&redis.url(), "down");
    let node = wsgrace().start_ready(&config).await;
    let mut ann = V2Client::connect(&url(&node, "ann")).await;
    ann.join("r", json!({})).await;
    redis.kill();
    ann.sender
        .send(json!({"type": "publish", "room": "r", "text": "x", "id": "i1", "ref": "p"}))
        .await;
    let refused = ann.reader.next_of("error", Some("r")).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(
        (refused["id"].clone(), refused["ref"].clone()),
        (json!("i1"), json!("p"))
    );
    ann.sender
        .send(json!({"type": "join", "room": "s", "ref": "j"}))
        .await;
    let refused = ann.reader.next_of("error", Some("s")).await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(refused["ref"], "j", "{refused}");
    // Back: the same connection joins and publishes (the refused join left no trace, and
    // the id that reached nobody is published now).
    redis.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    let joined = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no join after Redis came back"
        );
        ann.sender.send(json!({"type": "join", "room": "s"})).await;
        let frame = ann
            .reader
            .read_until(|frame| matches!(frame["type"].as_str(), Some("joined" | "error")))
            .await
            .pop()
            .unwrap_or_default();
        if frame["type"] == "joined" {
            break frame;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(joined["room"], "s");
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish after Redis came back"
        );
        ann.sender.publish("r", "x", Some("i1")).await;
        let frame = ann
            .reader
            .read_until(|frame| {
                frame["type"] == "error" || (frame["type"] == "message" && frame["id"] == "i1")
            })
            .await
            .pop()
            .unwrap_or_default();
        if frame["type"] == "message" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
