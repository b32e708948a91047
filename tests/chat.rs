//! The chat server binary: rooms, fan-out order, upgrade checks (SPEC "HTTP endpoints" and
//! "Chat protocol").

mod common;

use common::wsgrace;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsgrace_kit::chat::is_presence_event;
use wsgrace_kit::http::{http_get, http_get_response, UPGRADE};
use wsgrace_kit::ws::{connect, Ws};
use wsgrace_kit::DEADLINE;

/// The next JSON event from the server (pings are answered by tungstenite; presence events
/// are ignored, as a client that does not show presence does).
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = timeout(DEADLINE, ws.next())
            .await
            .expect("no message before the deadline")
            .expect("stream ended")
            .expect("websocket error");
        if let Message::Text(text) = msg {
            let event: Value = serde_json::from_str(&text).expect("a JSON object");
            if !is_presence_event(&event) {
                return event;
            }
        }
    }
}

/// Waits for the welcome; returns the name the server gave.
async fn welcomed(ws: &mut Ws) -> String {
    let event = next_event(ws).await;
    assert_eq!(event["type"], "welcome", "{event}");
    event["name"].as_str().expect("name").to_owned()
}

#[tokio::test]
async fn every_member_gets_every_message_in_the_same_order_and_other_rooms_get_none() {
    let server = wsgrace().start("");
    let mut members = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let mut ws = connect(server.ws_url(&format!("?room=blue&name={name}"))).await;
        assert_eq!(welcomed(&mut ws).await, name);
        members.push(ws);
    }
    let mut outsider = connect(server.ws_url("?room=green")).await;
    let outsider_name = welcomed(&mut outsider).await;
    assert!(outsider_name.starts_with("guest-"), "{outsider_name}");

    // Everyone sends at once.
    for (i, ws) in members.iter_mut().enumerate() {
        for n in 0..5 {
            ws.send(Message::Text(format!("m{i}-{n}")))
                .await
                .expect("send");
        }
    }
    let mut seen = Vec::new();
    for ws in members.iter_mut() {
        let mut events = Vec::new();
        for _ in 0..15 {
            let event = next_event(ws).await;
            assert_eq!(event["type"], "message");
            assert_eq!(event["room"], "blue");
            events.push((
                event["seq"].as_u64().expect("seq"),
                event["from"].as_str().expect("from").to_owned(),
                event["text"].as_str().expect("text").to_owned(),
            ));
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        seen.push(events);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    // Each sender's own messages are in its sending order.
    for (i, name) in ["ann", "bob", "cy"].iter().enumerate() {
        let own: Vec<&str> = seen[0]
            .iter()
            .filter(|e| e.1 == *name)
            .map(|e| e.2.as_str())
            .collect();
        let expected: Vec<String> = (0..5).map(|n| format!("m{i}-{n}")).collect();
        assert_eq!(own, expected);
    }

    // The outsider's first message event is its own, seq 1 of its room: it got none of blue's.
    outsider
        .send(Message::Text("hi".into()))
        .await
        .expect("send");
    let event = next_event(&mut outsider).await;
    assert_eq!(event["room"], "green");
    assert_eq!(event["seq"], 1);
    assert_eq!(event["text"], "hi");
    assert_eq!(event["from"], outsider_name.as_str());
}

#[tokio::test]
async fn bad_room_or_name_gets_400_before_any_upgrade() {
    let server = wsgrace().start("");
    let long = "a".repeat(65);
    for query in [
        "?room=".to_owned(),
        "?room=no%20spaces".to_owned(),
        "?room=sl/ash".to_owned(),
        format!("?room={long}"),
        "?name=".to_owned(),
        "?name=%C3%A9".to_owned(),
        format!("?room=ok&name={long}"),
    ] {
        let status = http_get(server.addr, &format!("/ws{query}"), &UPGRADE).await;
        assert_eq!(status, 400, "query {query}");
    }
    let ok = "a".repeat(64);
    let status = http_get(
        server.addr,
        &format!("/ws?room={ok}&name=x.y_z-1"),
        &UPGRADE,
    )
    .await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn a_disallowed_origin_gets_403() {
    let server = wsgrace().start("[server]\nallowed_origins = [\"https://chat.example\"]\n");
    let mut headers = UPGRADE.to_vec();
    headers.push(("Origin", "https://evil.example"));
    assert_eq!(http_get(server.addr, "/ws", &headers).await, 403);
    assert_eq!(
        http_get(server.addr, "/ws", &UPGRADE).await,
        403,
        "no Origin"
    );
    headers.pop();
    headers.push(("Origin", "https://chat.example"));
    assert_eq!(http_get(server.addr, "/ws", &headers).await, 101);
}

#[tokio::test]
async fn upgrades_beyond_max_connections_get_503() {
    let server = wsgrace().start("[server]\nmax_connections = 2\n");
    let mut first = connect(server.ws_url("")).await;
    welcomed(&mut first).await;
    let mut second = connect(server.ws_url("")).await;
    welcomed(&mut second).await;
    assert_eq!(http_get(server.addr, "/ws", &UPGRADE).await, 503);
    // A closed connection frees its place.
    first.close(None).await.expect("close");
    while let Some(Ok(_)) = timeout(DEADLINE, first.next()).await.expect("no end") {}
    let start = std::time::Instant::now();
    loop {
        match http_get(server.addr, "/ws", &UPGRADE).await {
            101 => break,
            503 => assert!(start.elapsed() < DEADLINE, "the place was never freed"),
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_and_readiness_answer_200_while_running() {
    let server = wsgrace().start("");
    assert_eq!(http_get(server.addr, "/healthz", &[]).await, 200);
    assert_eq!(http_get(server.addr, "/readyz", &[]).await, 200);
    assert_eq!(http_get(server.addr, "/nope", &[]).await, 404);
}

#[tokio::test]
async fn the_page_and_the_client_module_are_served_with_their_types() {
    let server = wsgrace().start("");
    let page = http_get_response(server.addr, "/").await;
    let module = http_get_response(server.addr, "/wsgrace.js").await;
    let head = |response: &str| {
        response
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert!(page.starts_with("HTTP/1.1 200"), "{page:.200}");
    assert!(
        head(&page).contains("content-type: text/html; charset=utf-8"),
        "{}",
        head(&page)
    );
    assert!(
        page.contains(r#"from "/wsgrace.js""#),
        "the page imports the module"
    );
    assert!(module.starts_with("HTTP/1.1 200"), "{module:.200}");
    // Browsers refuse a module script served with another MIME type.
    assert!(
        head(&module).contains("content-type: text/javascript; charset=utf-8"),
        "{}",
        head(&module)
    );
    assert!(module.contains("export function connect("), "{module:.300}");
}

#[tokio::test]
async fn a_plain_get_without_an_origin_is_not_refused_for_it() {
    // With allowed_origins set, an upgrade needs an allowed Origin (403 otherwise); a
    // same-origin fetch sends none, so the plain GET that asks why is judged on the rest.
    let server = wsgrace().start("[server]\nallowed_origins = [\"https://chat.example\"]\n");
    assert_eq!(http_get(server.addr, "/ws?room=a", &[]).await, 426);
    let wrong = [("Origin", "https://evil.example")];
    assert_eq!(http_get(server.addr, "/ws?room=a", &wrong).await, 403);
    assert_eq!(http_get(server.addr, "/ws?room=a%20b", &[]).await, 400);
    // The upgrade without an Origin is still refused.
    assert_eq!(http_get(server.addr, "/ws?room=a", &UPGRADE).await, 403);
}
