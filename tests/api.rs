//! The server API on one node with the local broker (SPEC "Server API"), against the real
//! binary: the key (401 without it or with another, never in a log line even at trace), a
//! publish that reaches v1 and v2 members with its `from` and is sent once per idempotency
//! key, history pages, presence, a disconnect by name (limited to a room, in each close mode),
//! and every bad input answered with its status and a JSON error. The cluster cases are in
//! `tests/api_cluster.rs`.

mod common;

use common::wsgrace;
use serde_json::{json, Value};
use wsgrace_kit::api::Api;
use wsgrace_kit::chat::{join, Frame};
use wsgrace_kit::chat_v2::{Event, V2Client};
use wsgrace_kit::http::metric;
use wsgrace_kit::server::ServerProcess;

const KEY: &str = "test-api-key-0123456789";

fn config() -> String {
    format!("[api]\nbind = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n")
}

fn api_of(server: &ServerProcess) -> Api {
    Api::new(server.api_addr(), KEY)
}

async fn publish(api: &Api, body: Value) -> Value {
    let answer = api.post("/api/publish", &body).await;
    assert_eq!(answer.status, 200, "{body} → {}", answer.raw);
    answer.body
}

#[tokio::test]
async fn the_key_is_required_and_never_logged() {
    let server = wsgrace().rust_log(Some("trace")).start(&config());
    let api = api_of(&server);
    let wrong = format!("Bearer {KEY}x");
    let basic = format!("Basic {KEY}");
    let body = json!({"room": "r", "text": "hi"}).to_string();
    for headers in [
        vec![],
        vec![("Authorization", wrong.as_str())],
        vec![("Authorization", basic.as_str())],
        vec![("Authorization", "Bearer ")],
    ] {
        let answer = api
            .request("POST", "/api/publish", &headers, body.as_bytes())
            .await;
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.raw);
        assert!(answer.body["error"].is_string(), "{}", answer.raw);
    }
    let answer = api.request("GET", "/api/rooms/r/presence", &[], b"").await;
    assert_eq!(answer.status, 401);
    // With the key: answered.
    let answer = api.get("/api/rooms/r/presence").await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    assert_eq!(answer.body, json!({"room": "r", "members": []}));
    let answer = api.get("/api/nothing").await;
    assert_eq!(answer.status, 404, "{}", answer.raw);
    // Another method on an endpoint: 405, with the method to use (and 401 without the key).
    let answer = api.get("/api/publish").await;
    assert_eq!(answer.status, 405, "{}", answer.raw);
    assert_eq!(answer.header("allow"), Some("POST"), "{}", answer.head);
    let answer = api.post("/api/rooms/r/history", &json!({})).await;
    assert_eq!(answer.status, 405, "{}", answer.raw);
    assert_eq!(answer.header("allow"), Some("GET"), "{}", answer.head);
    let answer = api.request("DELETE", "/api/publish", &[], b"").await;
    assert_eq!(answer.status, 401, "{}", answer.raw);
    assert_eq!(
        metric(
            server.addr,
            "wsgrace_api_requests_total{endpoint=\"publish\",status=\"401\"}"
        )
        .await,
        4.0
    );
    assert_eq!(
        metric(
            server.addr,
            "wsgrace_api_requests_total{endpoint=\"presence\",status=\"200\"}"
        )
        .await,
        1.0
    );
    publish(&api, json!({"room": "r", "text": "logged?"})).await;
    let stderr = server.stderr();
    assert!(stderr.contains("TRACE"), "trace logging is on");
    assert!(!stderr.contains(KEY), "the key is in the log:\n{stderr}");
    assert!(
        !stderr.contains("logged?"),
        "no line per publish names the text"
    );
}

#[tokio::test]
async fn a_publish_reaches_v1_and_v2_members_once_per_idempotency_key() {
    let server = wsgrace().start(&config());
    let api = api_of(&server);
    let mut vic = join(&server, "r", "vic", None).await;
    let mut ann = V2Client::connect(&server.ws_url("?name=ann")).await;
    ann.join("r", json!({})).await;

    let answer = publish(
        &api,
        json!({"room": "r", "text": "from the backend", "from": "bot", "idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!(answer["room"], "r");
    assert_eq!(answer["seq"], 1);
    assert_eq!(answer["epoch"], vic.welcome.epoch.as_str());
    assert!(answer.get("duplicate").is_none(), "{answer}");
    let message = vic.rx.message().await;
    assert_eq!(
        (message.seq, message.from.as_str(), message.text.as_str()),
        (1, "bot", "from the backend")
    );
    let frame = ann.reader.next_of("message", Some("r")).await;
    assert_eq!(
        (&frame["from"], &frame["text"], &frame["seq"]),
        (&json!("bot"), &json!("from the backend"), &json!(1))
    );

    // The same key again: the first answer, and nothing sent.
    let repeat = publish(
        &api,
        json!({"room": "r", "text": "from the backend", "from": "bot", "idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!(repeat["seq"], 1, "{repeat}");
    assert_eq!(repeat["epoch"], answer["epoch"]);
    assert_eq!(repeat["duplicate"], true);
    assert_eq!(
        metric(server.addr, "wsgrace_publishes_deduplicated_total").await,
        1.0
    );
    // Without `from`: the server speaks. The next message the members get is this one.
    let next = publish(&api, json!({"room": "r", "text": "notice"})).await;
    assert_eq!(next["seq"], 2, "{next}");
    let message = vic.rx.message().await;
    assert_eq!((message.seq, message.from.as_str()), (2, "server"));
    let frame = ann.reader.next_of("message", Some("r")).await;
    assert_eq!(
        (&frame["seq"], &frame["from"]),
        (&json!(2), &json!("server"))
    );
    // A room nobody is in takes messages too (its history keeps them).
    let empty = publish(&api, json!({"room": "nobody-here", "text": "kept"})).await;
    assert_eq!(empty["seq"], 1);
}

#[tokio::test]
async fn history_pages_and_presence() {
    let server = wsgrace().start(&config());
    let api = api_of(&server);
    for i in 1..=5 {
        publish(
            &api,
            json!({"room": "h", "text": format!("m{i}"), "from": "ann"}),
        )
        .await;
    }
    let texts = |page: &Value| -> Vec<(u64, String)> {
        page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages: {page}"))
            .iter()
            .map(|m| {
                assert_eq!(m["from"], "ann", "{m}");
                assert!(m["ts"].as_u64().is_some(), "{m}");
                (
                    m["seq"].as_u64().unwrap_or_default(),
                    m["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let page = api.get("/api/rooms/h/history").await;
    assert_eq!(page.status, 200, "{}", page.raw);
    assert_eq!(page.body["seq"], 5);
    assert_eq!(page.body["room"], "h");
    assert!(page.body["epoch"].is_string());
    assert_eq!(texts(&page.body).len(), 5);
    let first = api.get("/api/rooms/h/history?limit=2").await.body;
    assert_eq!(texts(&first), [(1, "m1".into()), (2, "m2".into())]);
    let second = api.get("/api/rooms/h/history?since=2&limit=2").await.body;
    assert_eq!(texts(&second), [(3, "m3".into()), (4, "m4".into())]);
    let last = api.get("/api/rooms/h/history?since=4").await.body;
    assert_eq!(texts(&last), [(5, "m5".into())]);
    let none = api.get("/api/rooms/h/history?since=5").await.body;
    assert_eq!(texts(&none), []);

    // Presence: two connections of ann, one of bob.
    let _ann_1 = join(&server, "p", "ann", None).await;
    let mut ann_2 = V2Client::connect(&server.ws_url("?name=ann")).await;
    ann_2.join("p", json!({})).await;
    let _bob = join(&server, "p", "bob", None).await;
    let answer = api.get("/api/rooms/p/presence").await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let mut members = answer.body["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    members.sort_by_key(|m| m["name"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        members,
        [
            json!({"name": "ann", "connections": 2}),
            json!({"name": "bob", "connections": 1})
        ]
    );
}

#[tokio::test]
async fn a_disconnect_closes_a_names_connections_as_asked() {
    let server = wsgrace().start(&config());
    let api = api_of(&server);
    let mut ann_v1 = join(&server, "a", "ann", None).await;
    let mut ann_v2 = V2Client::connect(&server.ws_url("?name=ann")).await;
    ann_v2.join("a", json!({})).await;
    ann_v2.join("b", json!({})).await;
    let mut bob = join(&server, "b", "bob", None).await;

    // Only ann's connections that joined b: her v2 one. Default code 4000.
    let answer = api
        .post("/api/disconnect", &json!({"name": "ann", "room": "b"}))
        .await;
    assert_eq!((answer.status, &answer.body), (200, &json!({"ok": true})));
    let close = loop {
        match ann_v2.reader.next().await {
            Event::Frame(_) => continue,
            other => break other,
        }
    };
    assert_eq!(close, Event::Close(Some(4000), String::new()));

    // Every connection of ann, awaited, with a code and a reason.
    let answer = api
        .post(
            "/api/disconnect",
            &json!({"name": "ann", "code": 4001, "reason": "banned", "mode": "awaited"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let (_, close) = ann_v1
        .rx
        .read_until(|frame| match frame {
            Frame::Close(code, reason) => Some((*code, reason.clone())),
            _ => None,
        })
        .await;
    assert_eq!(close, (Some(4001), "banned".to_owned()));
    ann_v1.tx.close().await;
    // bob carries on.
    bob.tx.send("still here").await;
    assert_eq!(bob.rx.message().await.text, "still here");
    wsgrace_kit::wait::until("ann's closes counted", wsgrace_kit::DEADLINE, || async {
        let awaited = metric(
            server.addr,
            "wsgrace_closes_total{initiator=\"server\",mode=\"awaited\",outcome=\"acked\"}",
        )
        .await;
        (awaited >= 1.0).then_some(())
    })
    .await;
    // A name with no connection: fine, nothing closes.
    let answer = api
        .post("/api/disconnect", &json!({"name": "nobody"}))
        .await;
    assert_eq!(answer.status, 200);
    assert!(server
        .find_log_line("api disconnect: name=nobody", wsgrace_kit::DEADLINE)
        .await
        .is_some_and(|line| line.contains("0 sessions closed here")));
}

#[tokio::test]
async fn bad_input_gets_its_status_and_a_json_error() {
    let server = wsgrace().start(&config());
    let api = api_of(&server);
    let auth = format!("Bearer {KEY}");
    let post = |path: &'static str, body: Vec<u8>| {
        let api = api.clone();
        let auth = auth.clone();
        async move {
            api.request("POST", path, &[("Authorization", &auth)], &body)
                .await
        }
    };
    for (path, body) in [
        ("/api/publish", b"{not json".to_vec()),
        ("/api/publish", br#"{"room":"r"}"#.to_vec()),
        ("/api/publish", br#"{"room":"r","text":5}"#.to_vec()),
        ("/api/publish", br#"{"room":"a room","text":"x"}"#.to_vec()),
        (
            "/api/publish",
            br#"{"room":"r","text":"x","from":""}"#.to_vec(),
        ),
        (
            "/api/publish",
            br#"{"room":"r","text":"x","idempotency_key":"a b"}"#.to_vec(),
        ),
        (
            "/api/publish",
            br#"{"room":"r","text":"x","color":"red"}"#.to_vec(),
        ),
        ("/api/disconnect", br#"{}"#.to_vec()),
        ("/api/disconnect", br#"{"name":"ann","code":1001}"#.to_vec()),
        (
            "/api/disconnect",
            br#"{"name":"ann","code":"4000"}"#.to_vec(),
        ),
        (
            "/api/disconnect",
            br#"{"name":"ann","mode":"politely"}"#.to_vec(),
        ),
        (
            "/api/disconnect",
            format!(r#"{{"name":"ann","reason":"{}"}}"#, "x".repeat(124)).into_bytes(),
        ),
    ] {
        let answer = post(path, body.clone()).await;
        assert_eq!(
            answer.status,
            400,
            "{path} {}: {}",
            String::from_utf8_lossy(&body),
            answer.raw
        );
        assert!(answer.body["error"].is_string(), "{}", answer.raw);
    }
    for query in ["limit=0", "limit=1001", "since=abc", "since=-1", "page=2"] {
        let answer = api.get(&format!("/api/rooms/h/history?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.raw);
    }
    let answer = api.get("/api/rooms/a%20b/presence").await;
    assert_eq!(answer.status, 400, "{}", answer.raw);
    // Over 1 MiB: 413.
    let big = format!(r#"{{"room":"r","text":"{}"}}"#, "x".repeat(1 << 20));
    let answer = post("/api/publish", big.into_bytes()).await;
    assert_eq!(answer.status, 413, "{}", answer.raw);
    // Nothing was published.
    let page = api.get("/api/rooms/r/history").await;
    assert_eq!(page.body["seq"], 0, "{}", page.raw);
}
