//! The server API across two nodes on one real `redis-server` (SPEC "Server API": "with
//! Redis, the API of any node acts on the whole cluster"): an idempotency key sent to node A
//! and then to node B publishes once; a disconnect given to one node closes the name's
//! connections on both, in each close mode, and only those in the room when one is named;
//! history and presence read through either node; 503 while Redis is down, and the API works
//! again once it is back, no node restarted. Every wait has a generous deadline.

mod common;

use common::wsgrace;
use serde_json::{json, Value};
use wsgrace_kit::api::Api;
use wsgrace_kit::chat::{join, Frame, Member};
use wsgrace_kit::chat_v2::{Event, V2Client};
use wsgrace_kit::http::wait_status;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::DEADLINE;

const KEY: &str = "cluster-api-key-0123456789";

fn config(url: &str, test: &str) -> String {
    let prefix = format!("wsgrace-api-{}-{test}", std::process::id());
    format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n\n\
         [api]\nbind = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n"
    )
}

async fn two_nodes(redis: &RedisServer, test: &str) -> (ServerProcess, ServerProcess) {
    let cfg = config(&redis.url(), test);
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;
    (a, b)
}

fn api(node: &ServerProcess) -> Api {
    Api::new(node.api_addr(), KEY)
}

/// The close a v1 member gets next (frames before it are skipped).
async fn close_of(member: &mut Member) -> (Option<u16>, String) {
    let (_, close) = member
        .rx
        .read_until(|frame| match frame {
            Frame::Close(code, reason) => Some((*code, reason.clone())),
            _ => None,
        })
        .await;
    close
}

/// The close a v2 client gets next.
async fn v2_close_of(client: &mut V2Client) -> Event {
    loop {
        match client.reader.next().await {
            Event::Frame(_) => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_across_nodes() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "idem").await;
    let mut on_a = join(&a, "r", "ann", None).await;
    let mut on_b = join(&b, "r", "bob", None).await;
    let body = json!({"room": "r", "text": "once", "from": "bot", "idempotency_key": "order-17"});
    let first = api(&a).post("/api/publish", &body).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    assert_eq!(first.body["seq"], 1);
    let again = api(&b).post("/api/publish", &body).await;
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_eq!(
        (
            &again.body["seq"],
            &again.body["epoch"],
            &again.body["duplicate"]
        ),
        (&json!(1), &first.body["epoch"], &json!(true))
    );
    let next = api(&b)
        .post("/api/publish", &json!({"room": "r", "text": "next"}))
        .await;
    assert_eq!(next.body["seq"], 2, "{}", next.raw);
    // Both nodes' members get "once" and then "next": nothing in between.
    for member in [&mut on_a, &mut on_b] {
        let first = member.rx.message().await;
        assert_eq!((first.seq, first.text.as_str()), (1, "once"));
        let second = member.rx.message().await;
        assert_eq!((second.seq, second.text.as_str()), (2, "next"));
    }
    // History through either node.
    for node in [&a, &b] {
        let page = api(node).get("/api/rooms/r/history").await;
        assert_eq!(page.status, 200, "{}", page.raw);
        let texts: Vec<&str> = page.body["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["text"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(texts, ["once", "next"], "{}", page.raw);
        assert_eq!(page.body["epoch"], first.body["epoch"]);
    }
}

#[tokio::test]
async fn a_disconnect_reaches_every_node_in_the_mode_asked() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "kick").await;
    let mut ann_a = join(&a, "x", "ann", None).await;
    let mut ann_b = V2Client::connect(&b.ws_url("?name=ann")).await;
    ann_b.join("y", json!({})).await;
    let mut bob = join(&b, "y", "bob", None).await;

    // Limited to room x: only ann's connection on A, through B's API.
    let answer = api(&b)
        .post(
            "/api/disconnect",
            &json!({"name": "ann", "room": "x", "code": 4003, "reason": "moved", "mode": "fire_and_forget"}),
        )
        .await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"ok": true})));
    assert_eq!(close_of(&mut ann_a).await, (Some(4003), "moved".to_owned()));
    ann_a.tx.close().await;
    // Presence through A's API: ann is still in y (on B).
    let presence = api(&a).get("/api/rooms/y/presence").await;
    let mut names: Vec<String> = presence.body["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    assert_eq!(names, ["ann", "bob"], "{}", presence.raw);

    // Everywhere, awaited, through A's API: ann's connection on B closes; bob stays.
    let mut ann_a2 = join(&a, "z", "ann", None).await;
    let answer = api(&a)
        .post(
            "/api/disconnect",
            &json!({"name": "ann", "code": 4004, "mode": "awaited"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    assert_eq!(
        v2_close_of(&mut ann_b).await,
        Event::Close(Some(4004), String::new())
    );
    assert_eq!(close_of(&mut ann_a2).await, (Some(4004), String::new()));
    ann_a2.tx.close().await;
    bob.tx.send("bob stays").await;
    assert_eq!(bob.rx.message().await.text, "bob stays");
    for node in [&a, &b] {
        assert!(
            node.find_log_line("api disconnect: name=ann code=4004", DEADLINE)
                .await
                .is_some(),
            "{}",
            node.stderr()
        );
    }
}

#[tokio::test]
async fn the_api_answers_503_while_redis_is_down_and_works_again_after() {
    let mut redis = RedisServer::start();
    let (a, _b) = two_nodes(&redis, "outage").await;
    redis.kill();
    wait_status(a.addr, "/readyz", 503, DEADLINE).await;
    let publish = json!({"room": "r", "text": "while down"});
    for answer in [
        api(&a).post("/api/publish", &publish).await,
        api(&a)
            .post("/api/disconnect", &json!({"name": "ann"}))
            .await,
        api(&a).get("/api/rooms/r/history").await,
        api(&a).get("/api/rooms/r/presence").await,
    ] {
        assert_eq!(answer.status, 503, "{}", answer.raw);
        assert!(answer.body["error"].is_string(), "{}", answer.raw);
    }
    redis.restart();
    wait_status(a.addr, "/readyz", 200, DEADLINE).await;
    let answer = api(&a).post("/api/publish", &publish).await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let seq: Value = answer.body["seq"].clone();
    assert_eq!(
        seq, 1,
        "a new epoch after the empty restart: {}",
        answer.raw
    );
}
