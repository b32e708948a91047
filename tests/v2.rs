//! Many rooms over one connection (SPEC "Many rooms over one connection (subprotocol
//! `wsgrace.v2`)"), against the real binary with the local broker: the negotiation, `hello`,
//! join (with resume or `last`), leave, publish with an `id` exactly once, signal, presence,
//! every refusal (the connection stays open), the per-connection rules, v1 and v2 members in
//! the same rooms, `ts` on every message, and random frames.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::wsgrace;
use serde_json::{json, Value};
use wsgrace_kit::chat::{join, Frame};
use wsgrace_kit::chat_v2::{Event, V2Client};
use wsgrace_kit::http::http_get_response;
use wsgrace_kit::server::ServerProcess;

fn v2_url(server: &ServerProcess, name: &str) -> String {
    server.ws_url(&format!("?name={name}"))
}

/// The raw answer to an upgrade of `/ws{query}` offering `protocols`.
async fn upgrade_answer(server: &ServerProcess, query: &str, protocols: &str) -> String {
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n",
        server.addr
    );
    let (head, _) = wsgrace_kit::raw::RawClient::request(server.addr, request.as_bytes()).await;
    head
}

#[tokio::test]
async fn the_subprotocol_chooses_the_protocol() {
    let server = wsgrace().start("");
    // Offered among others: chosen, and said so in the 101.
    let head = upgrade_answer(&server, "?name=ann", "chat.other, wsgrace.v2").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: wsgrace.v2"),
        "{head}"
    );
    // Only unknown ones: 400 before any 101.
    let head = upgrade_answer(&server, "?name=ann", "chat.other").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // A v2 upgrade names no room, since or epoch.
    for query in ["?name=ann&room=a", "?since=1", "?epoch=e1"] {
        let head = upgrade_answer(&server, query, "wsgrace.v2").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{query}: {head}");
    }
    // None offered: the one-room protocol, unchanged.
    let mut member = join(&server, "lobby", "bob", None).await;
    member.send("hi").await;
    assert!(matches!(member.message().await.text.as_str(), "hi"));
    // The refusals are counted.
    let metrics = http_get_response(server.addr, "/metrics").await;
    assert!(
        metrics.contains("wsgrace_upgrades_refused_total{reason=\"bad_subprotocol\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn hello_join_publish_leave() {
    let server = wsgrace().start("");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    assert_eq!(ann.hello, json!({"type": "hello", "name": "ann"}));
    let joined = ann.join("a", json!({"ref": "j1"})).await;
    assert_eq!(joined["seq"], 0, "{joined}");
    assert_eq!(joined["ref"], "j1", "{joined}");
    assert!(joined["epoch"].is_string(), "{joined}");
    assert!(joined.get("resumed").is_none(), "{joined}");
    let joined_b = ann.join("b", json!({})).await;
    assert!(joined_b.get("ref").is_none(), "{joined_b}");
    // A message of each room, each room counting its own seqs.
    ann.sender.publish("a", "one", None).await;
    ann.sender.publish("b", "two", None).await;
    let one = ann.reader.next_of("message", Some("a")).await;
    let two = ann.reader.next_of("message", Some("b")).await;
    for (frame, text) in [(&one, "one"), (&two, "two")] {
        assert_eq!(frame["seq"], 1, "{frame}");
        assert_eq!(frame["text"], text, "{frame}");
        assert_eq!(frame["from"], "ann", "{frame}");
        assert!(
            frame["ts"]
                .as_u64()
                .is_some_and(|ts| ts > 1_600_000_000_000),
            "{frame}"
        );
    }
    // Leave: answered, and nothing of the room after it.
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    bob.join("a", json!({})).await;
    ann.sender
        .send(json!({"type": "leave", "room": "a", "ref": "l1"}))
        .await;
    let left = ann.reader.next().await.frame();
    assert_eq!(left, json!({"type": "left", "room": "a", "ref": "l1"}));
    bob.say("a", "after ann left").await;
    ann.sender.publish("b", "still here", None).await;
    let next = ann.reader.next().await.frame();
    assert_eq!(next["room"], "b", "a frame of a room left: {next}");
    assert_eq!(next["text"], "still here", "{next}");
}

#[tokio::test]
async fn a_publish_with_an_id_is_in_the_room_exactly_once() {
    let server = wsgrace().start("");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    ann.join("a", json!({})).await;
    bob.join("a", json!({})).await;
    ann.sender.publish("a", "hello", Some("m-1")).await;
    // The sender's own copy carries its id; the others' do not.
    let own = ann.reader.next_of("message", Some("a")).await;
    assert_eq!(
        (own["seq"].clone(), own["id"].clone()),
        (json!(1), json!("m-1"))
    );
    let seen = bob.reader.next_of("message", Some("a")).await;
    assert_eq!(seen["seq"], 1);
    assert!(seen.get("id").is_none(), "{seen}");
    // The same id again: not published, answered ack with the first one's seq.
    ann.sender
        .send(json!({"type": "publish", "room": "a", "text": "hello", "id": "m-1", "ref": "p2"}))
        .await;
    let ack = ann.reader.next().await.frame();
    assert_eq!(
        ack,
        json!({"type": "ack", "room": "a", "id": "m-1", "seq": 1, "ref": "p2"})
    );
    // Another sender's same id is another message.
    bob.sender.publish("a", "mine", Some("m-1")).await;
    let next = ann.reader.next_of("message", Some("a")).await;
    assert_eq!(
        (next["seq"].clone(), next["from"].clone()),
        (json!(2), json!("bob"))
    );
    // Nobody got a second copy of seq 1.
    let at_bob = bob.reader.next_of("message", Some("a")).await;
    assert_eq!(at_bob["seq"], 2, "{at_bob}");
    let metrics = http_get_response(server.addr, "/metrics").await;
    assert!(
        metrics.contains("wsgrace_publishes_deduplicated_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_join_resumes_or_asks_for_the_last_messages() {
    let server = wsgrace().start("[history]\nsize = 10\n");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    let joined = ann.join("a", json!({})).await;
    let epoch = joined["epoch"].as_str().expect("an epoch").to_owned();
    for n in 1..=15 {
        ann.say("a", &format!("m{n}")).await;
    }
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    // Resumed after 12: 13..15 follow the answer.
    let joined = bob
        .join("a", json!({"since": 12, "epoch": epoch, "ref": "r"}))
        .await;
    assert_eq!(
        (
            joined["resumed"].clone(),
            joined["missed"].clone(),
            joined["seq"].clone()
        ),
        (json!(true), json!(3), json!(15)),
        "{joined}"
    );
    let seqs: Vec<u64> = bob
        .reader
        .messages_through("a", 15)
        .await
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [13, 14, 15]);
    // Past the history (10 kept): not resumed, nothing replayed.
    let mut cy = V2Client::connect(&v2_url(&server, "cy")).await;
    let joined = cy.join("a", json!({"since": 2})).await;
    assert_eq!(joined["resumed"], false, "{joined}");
    // Another epoch: not resumed.
    let mut dee = V2Client::connect(&v2_url(&server, "dee")).await;
    let joined = dee.join("a", json!({"since": 14, "epoch": "other"})).await;
    assert_eq!(joined["resumed"], false, "{joined}");
    // The last 4, oldest first, then live.
    let mut eve = V2Client::connect(&v2_url(&server, "eve")).await;
    let joined = eve.join("a", json!({"last": 4})).await;
    assert!(joined.get("resumed").is_none(), "{joined}");
    let recent = eve.reader.messages_through("a", 15).await;
    let texts: Vec<&str> = recent.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["m12", "m13", "m14", "m15"]);
    ann.say("a", "live").await;
    let live = eve.reader.next_of("message", Some("a")).await;
    assert_eq!(
        (live["seq"].clone(), live["text"].clone()),
        (json!(16), json!("live"))
    );
    // More than is kept: what is kept.
    let mut fay = V2Client::connect(&v2_url(&server, "fay")).await;
    fay.join("a", json!({"last": 1000})).await;
    let kept = fay.reader.messages_through("a", 16).await;
    assert_eq!(kept.len(), 10, "{kept:?}");
    // A replayed message keeps its ts.
    let first_ts = recent[0]["ts"].clone();
    let again = kept.iter().find(|m| m["seq"] == 12).expect("seq 12 kept");
    assert_eq!(again["ts"], first_ts);
}

#[tokio::test]
async fn a_signal_reaches_the_others_once_and_is_not_kept() {
    let server = wsgrace().start("");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    ann.join("a", json!({})).await;
    bob.join("a", json!({})).await;
    ann.sender.signal("a", "typing").await;
    let signal = bob.reader.next().await.frame();
    assert_eq!(
        signal,
        json!({"type": "signal", "room": "a", "from": "ann", "text": "typing"})
    );
    // Not to its sender, no seq: the next message is seq 1 and the first frame ann reads.
    ann.say("a", "after").await;
    let message = bob.reader.next().await.frame();
    assert_eq!(message["seq"], 1, "{message}");
    // Not kept: a later join with last gets the message only.
    let mut cy = V2Client::connect(&v2_url(&server, "cy")).await;
    cy.join("a", json!({"last": 10})).await;
    let replay = cy.reader.messages_through("a", 1).await;
    assert_eq!(replay.len(), 1);
    let metrics = http_get_response(server.addr, "/metrics").await;
    assert!(metrics.contains("wsgrace_signals_total 1"), "{metrics}");
}

#[tokio::test]
async fn refusals_answer_the_frame_and_keep_the_connection() {
    let server = wsgrace().start("[session]\nmax_rooms = 2\n");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    let refused = |code: &str, extra: Value| with_code(code, extra);
    let cases: Vec<(String, Value)> = vec![
        ("not json".into(), refused("bad_request", json!({}))),
        (
            r#"{"type":"dance","room":"a","ref":"x"}"#.into(),
            refused("bad_request", json!({"ref": "x"})),
        ),
        (
            r#"{"type":"join"}"#.into(),
            refused("bad_request", json!({})),
        ),
        (
            r#"{"type":"join","room":"a b","ref":"x"}"#.into(),
            refused("bad_room", json!({"room": "a b", "ref": "x"})),
        ),
        (
            r#"{"type":"join","room":"a","since":-1}"#.into(),
            refused("bad_request", json!({"room": "a"})),
        ),
        (
            r#"{"type":"leave","room":"a","ref":"l"}"#.into(),
            refused("not_joined", json!({"room": "a", "ref": "l"})),
        ),
        (
            r#"{"type":"publish","room":"a","text":"x","id":"i1"}"#.into(),
            refused("not_joined", json!({"room": "a", "id": "i1"})),
        ),
        (
            r#"{"type":"signal","room":"a","text":"x"}"#.into(),
            refused("not_joined", json!({"room": "a"})),
        ),
        (
            r#"{"type":"presence","room":"a"}"#.into(),
            refused("not_joined", json!({"room": "a"})),
        ),
    ];
    for (frame, expected) in cases {
        ann.sender.send_text(frame.clone()).await;
        let mut answer = ann.reader.next().await.frame();
        answer.as_object_mut().map(|fields| fields.remove("text"));
        assert_eq!(answer, expected, "{frame}");
    }
    ann.join("a", json!({})).await;
    ann.sender
        .send(json!({"type": "join", "room": "a", "ref": "again"}))
        .await;
    let mut answer = ann.reader.next().await.frame();
    answer.as_object_mut().map(|fields| fields.remove("text"));
    assert_eq!(
        answer,
        with_code("already_joined", json!({"room": "a", "ref": "again"}))
    );
    ann.join("b", json!({})).await;
    ann.sender.send(json!({"type": "join", "room": "c"})).await;
    let answer = ann.reader.next().await.frame();
    assert_eq!(answer["code"], "too_many_rooms", "{answer}");
    // After a leave there is room again; the connection served all along.
    ann.sender.leave("b").await;
    ann.reader.next_of("left", Some("b")).await;
    let joined = ann.join("c", json!({})).await;
    assert_eq!(joined["room"], "c");
    assert_eq!(ann.say("a", "still open").await, 1);
}

/// An `error` frame with `code` and `extra`'s fields (its text left out).
fn with_code(code: &str, extra: Value) -> Value {
    let mut frame = json!({"type": "error", "code": code});
    if let (Some(frame), Value::Object(extra)) = (frame.as_object_mut(), extra) {
        frame.extend(extra);
    }
    frame
}

#[tokio::test]
async fn presence_answers_until_presence_is_built() {
    let server = wsgrace().start("");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    ann.join("a", json!({})).await;
    ann.sender
        .send(json!({"type": "presence", "room": "a", "ref": "p"}))
        .await;
    let answer = ann.reader.next_of("presence", Some("a")).await;
    assert_eq!(answer["ref"], "p", "{answer}");
    assert!(answer["members"].is_array(), "{answer}");
}

#[tokio::test]
async fn a_v2_client_in_three_rooms_with_v1_members_in_two() {
    let server = wsgrace().start("");
    let mut v2 = V2Client::connect(&v2_url(&server, "multi")).await;
    for room in ["a", "b", "c"] {
        v2.join(room, json!({})).await;
    }
    let mut in_a = join(&server, "a", "va", None).await;
    let mut in_b = join(&server, "b", "vb", None).await;
    // Every member sees each room's messages with the same seqs, whoever sends them.
    in_a.send("from v1 in a").await;
    v2.sender.publish("b", "from v2 in b", None).await;
    v2.sender.publish("c", "from v2 in c", None).await;
    in_b.send("from v1 in b").await;
    let mut at_v2: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    while at_v2.values().map(Vec::len).sum::<usize>() < 4 {
        let frame = v2.reader.next_of("message", None).await;
        at_v2
            .entry(frame["room"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((
                frame["seq"].as_u64().unwrap_or_default(),
                frame["text"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    let a = in_a.message().await;
    assert_eq!((a.seq, a.text.as_str()), (1, "from v1 in a"));
    let b1 = in_b.message().await;
    let b2 = in_b.message().await;
    assert_eq!(at_v2["a"], [(1, "from v1 in a".to_owned())]);
    assert_eq!(
        at_v2["b"],
        [(b1.seq, b1.text.clone()), (b2.seq, b2.text.clone())]
    );
    assert_eq!(at_v2["c"], [(1, "from v2 in c".to_owned())]);
    // v1 messages carry ts too.
    in_a.send("ts?").await;
    let frame = v2.reader.next_of("message", Some("a")).await;
    assert!(frame["ts"].as_u64().is_some(), "{frame}");
    let metrics = http_get_response(server.addr, "/metrics").await;
    for line in [
        "wsgrace_connections_by_protocol{protocol=\"v2\"} 1",
        "wsgrace_connections_by_protocol{protocol=\"v1\"} 2",
        "wsgrace_room_joins_open 5",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn the_drain_is_one_going_away_and_one_close_frame_per_connection() {
    let mut server = wsgrace().start("[shutdown]\nreconnect_spread_ms = 100\n");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    for room in ["a", "b", "c"] {
        ann.join(room, json!({})).await;
    }
    server.sigterm();
    let going_away = ann.reader.next().await.frame();
    assert_eq!(going_away["type"], "going_away", "{going_away}");
    match ann.reader.next().await {
        Event::Close(Some(1001), _) => {}
        other => panic!("expected one close frame, got {other:?}"),
    }
    ann.sender.close().await;
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn per_connection_rules_hold_for_all_rooms_together() {
    // Binary frames: 1003. A frame over max_frame_bytes (the whole JSON): 1009. The rate limit
    // counts frames of any type.
    let server = wsgrace().start("[session]\nmax_frame_bytes = 1000\nmax_messages_per_sec = 20\n");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    ann.join("a", json!({})).await;
    ann.sender.send_text("x".repeat(2000)).await;
    match ann.reader.next().await {
        Event::Close(Some(1009), _) => {}
        other => panic!("expected 1009, got {other:?}"),
    }
    let mut bob = V2Client::connect(&v2_url(&server, "bob")).await;
    for _ in 0..100 {
        bob.sender
            .send(json!({"type": "presence", "room": "a"}))
            .await;
    }
    let closed = loop {
        match bob.reader.next().await {
            Event::Frame(_) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&closed, Event::Close(Some(1008), reason) if reason == "rate limit"),
        "{closed:?}"
    );
}

#[tokio::test]
async fn random_frames_get_the_specs_answers_only() {
    // 1,000 frames from a small generator of JSON shapes and plain noise: every answer is a
    // frame of the SPEC (joined, left, message, ack, presence, signal, error with a SPEC
    // code), the connection stays open, and no error code outside the SPEC appears.
    let server = wsgrace().start("[session]\nmax_rooms = 5\n");
    let mut ann = V2Client::connect(&v2_url(&server, "ann")).await;
    let mut rng = fastrand_like(7);
    let kinds = ["join", "leave", "publish", "signal", "presence", "nope"];
    let rooms = ["a", "b", "c", "d", "e", "f", "bad room", ""];
    for n in 0..1000u32 {
        let frame = match rng.next() % 5 {
            0 => format!("noise {n} {{\"type\""),
            1 => json!({"type": kinds[rng.next() as usize % kinds.len()]}).to_string(),
            _ => {
                let mut frame = json!({
                    "type": kinds[rng.next() as usize % kinds.len()],
                    "room": rooms[rng.next() as usize % rooms.len()],
                    "text": format!("t{n}"),
                    "ref": format!("r{n}"),
                });
                match rng.next() % 4 {
                    0 => frame["since"] = json!(rng.next() % 3),
                    1 => frame["last"] = json!(rng.next() % 2000),
                    2 => frame["id"] = json!(format!("id{}", rng.next() % 20)),
                    _ => frame["since"] = json!("x"),
                }
                frame.to_string()
            }
        };
        ann.sender.send_text(frame).await;
    }
    ann.sender
        .send(json!({"type": "join", "room": "last-one", "ref": "end"}))
        .await;
    let known_codes = [
        "bad_request",
        "bad_room",
        "not_joined",
        "already_joined",
        "too_many_rooms",
    ];
    loop {
        let frame = match ann.reader.next().await {
            Event::Frame(frame) => frame,
            other => panic!("the connection ended: {other:?}"),
        };
        match frame["type"].as_str() {
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or_default();
                assert!(known_codes.contains(&code), "{frame}");
            }
            Some("joined") if frame["ref"] == "end" => break,
            Some("joined" | "left" | "message" | "ack" | "presence" | "signal") => {}
            _ => panic!("not a SPEC answer: {frame}"),
        }
    }
}

/// A tiny deterministic generator (xorshift), so that a failure repeats.
struct XorShift(u64);

fn fastrand_like(seed: u64) -> XorShift {
    XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn a_v1_member_shares_the_room_and_may_ignore_what_it_does_not_know() {
    // A v1 member is a member like any: it gets a v2 member's signal (a type it may ignore)
    // and its messages, with the same seqs.
    let server = wsgrace().start("");
    let mut v1 = join(&server, "a", "old", None).await;
    let mut v2 = V2Client::connect(&v2_url(&server, "new")).await;
    v2.join("a", json!({})).await;
    v2.sender.signal("a", "typing").await;
    let seq = v2.say("a", "hello").await;
    match v1.next().await {
        Frame::Other(frame) => assert_eq!(frame["type"], "signal", "{frame}"),
        other => panic!("{other:?}"),
    }
    match v1.next().await {
        Frame::Message(message) => assert_eq!((message.seq, message.text.as_str()), (seq, "hello")),
        other => panic!("{other:?}"),
    }
}
