//! A real browser against the real binary: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver) opens the chat page, joins, sends a message and
//! sees it listed; on SIGTERM the browser's own WebSocket `close` event must say 1001 and
//! `wasClean === true`, and the page must show it. And the page with several rooms over one
//! `wsgrace.v2` connection, in two browsers: the recent conversation on opening a room, each
//! message's time, the unread count of a room not in view, the typing indicator, who is in
//! the room (asked on joining, then kept live by presence events). Screenshots
//! are saved under `target/`.

mod common;

use std::path::Path;

use common::wsgrace;
use fantoccini::Locator;
use serde_json::Value;
use wsgrace_kit::browser::{save_screenshot, start_browser, text_of, wait_until};
use wsgrace_kit::chat_v2::V2Client;
use wsgrace_kit::DEADLINE;

#[tokio::test]
async fn the_browser_sees_a_clean_1001_close_on_sigterm() {
    let mut server = wsgrace().start("");
    let (_driver, client) = start_browser().await;
    client
        .goto(&format!("http://{}/", server.addr))
        .await
        .expect("open the chat page");

    let room = client.find(Locator::Id("room")).await.expect("room field");
    room.clear().await.expect("clear");
    room.send_keys("browsers").await.expect("type room");
    client
        .find(Locator::Id("name"))
        .await
        .expect("name field")
        .send_keys("chromium")
        .await
        .expect("type name");
    client
        .find(Locator::Id("join-button"))
        .await
        .expect("join button")
        .click()
        .await
        .expect("click join");
    wait_until("the welcome", || async {
        let status = text_of(&client, "#status-text").await;
        status.contains("as chromium").then_some(())
    })
    .await;

    client
        .find(Locator::Id("text"))
        .await
        .expect("message field")
        .send_keys("hello from a real browser")
        .await
        .expect("type message");
    client
        .find(Locator::Id("send-button"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("click send");
    wait_until("the message in the list", || async {
        let list = text_of(&client, "#messages").await;
        list.contains("hello from a real browser").then_some(())
    })
    .await;

    server.sigterm();
    let close: Value = wait_until("the browser's close event", || async {
        match client
            .execute("return window.lastClose || null;", vec![])
            .await
        {
            Ok(Value::Null) | Err(_) => None,
            Ok(value) => Some(value),
        }
    })
    .await;
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(close["wasClean"], true, "{close}");
    assert_eq!(close["reason"], "server shutting down", "{close}");
    let status = text_of(&client, "#status-text").await;
    assert!(status.contains("code 1001"), "{status}");
    assert!(status.contains("wasClean true"), "{status}");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-chat.png");
    save_screenshot(&client, &path).await;

    assert!(server.wait_exit(DEADLINE).await.success());
    client.close().await.expect("end the WebDriver session");
}

/// Runs `script` in the page (a function body that returns JSON) and returns its value.
async fn eval(client: &fantoccini::Client, script: &str) -> Value {
    client
        .execute(script, vec![])
        .await
        .unwrap_or_else(|err| panic!("script failed: {err}\n{script}"))
}

/// What the several-rooms page shows of room `room`, read through the DOM (a room not in view
/// is hidden, and WebDriver gives no text of hidden elements).
async fn room_view(client: &fantoccini::Client, room: &str) -> Value {
    let script = format!(
        r#"const panel = document.querySelector('.room[data-room="{room}"]');
        const unread = document.querySelector('.tab[data-room="{room}"] .unread');
        if (!panel || !unread) return null;
        const items = [...panel.querySelectorAll('li[data-seq]')];
        return {{
          state: panel.dataset.state,
          texts: items.map((li) => li.textContent),
          times: items.map((li) => {{
            const t = li.querySelector('time.time');
            if (!t) return null;
            const shown = new Date(Number(li.dataset.ts)).toLocaleTimeString([], {{ hour: '2-digit', minute: '2-digit' }});
            return {{ text: t.textContent, shown, ageMs: Date.now() - Date.parse(t.dateTime) }};
          }}),
          unread: Number(unread.dataset.count),
          typing: panel.querySelector('.typing').textContent,
          members: [...panel.querySelectorAll('.presence li[data-name]')].map((li) => li.dataset.name),
          active: document.querySelector('#rooms-view').dataset.active,
        }};"#
    );
    eval(client, &script).await
}

#[tokio::test]
async fn the_page_holds_two_rooms_with_unread_counts_typing_and_times() {
    let server = wsgrace().start("");
    let (_bob_driver, bob) = start_browser().await;
    let (_ann_driver, ann) = start_browser().await;

    // bob, in b only, says something before ann comes.
    bob.goto(&format!("http://{}/?rooms=b&name=bob", server.addr))
        .await
        .expect("open bob's page");
    wait_until("bob joined b", || async {
        (room_view(&bob, "b").await["state"] == "joined").then_some(())
    })
    .await;
    let text = bob
        .find(Locator::Id("room-text"))
        .await
        .expect("bob's message field");
    text.send_keys("before ann came").await.expect("type");
    bob.find(Locator::Id("room-send-button"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("send");
    wait_until("bob's own copy", || async {
        let b = room_view(&bob, "b").await;
        (b["texts"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;

    // ann opens a and b over one connection: b opens with its recent conversation.
    ann.goto(&format!("http://{}/?rooms=a,b&name=ann", server.addr))
        .await
        .expect("open ann's page");
    let b = wait_until("ann joined a and b, b with its recent message", || async {
        let a = room_view(&ann, "a").await;
        let b = room_view(&ann, "b").await;
        (a["state"] == "joined"
            && b["state"] == "joined"
            && b["texts"].as_array().map_or(0, Vec::len) == 1)
            .then_some(b)
    })
    .await;
    assert!(
        b["texts"][0]
            .as_str()
            .unwrap_or_default()
            .contains("before ann came"),
        "{b}"
    );
    assert_eq!(b["unread"], 0, "the recent conversation is not unread: {b}");
    assert_eq!(b["active"], "a", "{b}");
    let status = text_of(&ann, "#status-text").await;
    assert!(status.contains("as ann"), "{status}");

    // Who is in b: ann's page asked on joining; bob's page was told of her arrival.
    wait_until("ann's b lists ann and bob", || async {
        (room_view(&ann, "b").await["members"] == serde_json::json!(["ann", "bob"])).then_some(())
    })
    .await;
    wait_until("bob's b lists ann, live", || async {
        (room_view(&bob, "b").await["members"] == serde_json::json!(["ann", "bob"])).then_some(())
    })
    .await;

    // bob types in b: ann, viewing a, sees him typing in b (a signal), not in a.
    let text = bob
        .find(Locator::Id("room-text"))
        .await
        .expect("bob's message field");
    text.send_keys("hello ann, this is bob in b")
        .await
        .expect("type");
    wait_until("bob is typing, in ann's b", || async {
        let b = room_view(&ann, "b").await;
        (b["typing"] == "bob is typing…").then_some(())
    })
    .await;
    assert_eq!(room_view(&ann, "a").await["typing"], "");

    // bob sends: ann sees it in b's list with its time; b's unread count rises while ann
    // views a.
    bob.find(Locator::Id("room-send-button"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("send");
    let b = wait_until("bob's message in ann's b", || async {
        let b = room_view(&ann, "b").await;
        (b["texts"].as_array().map_or(0, Vec::len) == 2).then_some(b)
    })
    .await;
    assert!(
        b["texts"][1]
            .as_str()
            .unwrap_or_default()
            .contains("hello ann, this is bob in b"),
        "{b}"
    );
    let time = &b["times"][1];
    assert!(!time.is_null(), "no time shown: {b}");
    assert_eq!(time["text"], time["shown"], "the local time of its ts: {b}");
    assert!(
        time["ageMs"]
            .as_f64()
            .is_some_and(|age| age.abs() < 60_000.0),
        "{b}"
    );
    assert_eq!(b["unread"], 1, "{b}");
    assert_eq!(b["active"], "a", "{b}");
    assert_eq!(room_view(&ann, "a").await["unread"], 0);

    // Opening b clears its count.
    ann.find(Locator::Css(r#".tab[data-room="b"]"#))
        .await
        .expect("b's tab")
        .click()
        .await
        .expect("open b");
    let b = room_view(&ann, "b").await;
    assert_eq!(b["unread"], 0, "{b}");
    assert_eq!(b["active"], "b", "{b}");

    // cat comes into b and leaves it: ann's list follows.
    let mut cat = V2Client::connect(&server.ws_url("?name=cat")).await;
    cat.join("b", serde_json::json!({})).await;
    wait_until("cat listed in ann's b", || async {
        (room_view(&ann, "b").await["members"] == serde_json::json!(["ann", "bob", "cat"]))
            .then_some(())
    })
    .await;
    cat.sender.leave("b").await;
    wait_until("cat gone from ann's b", || async {
        (room_view(&ann, "b").await["members"] == serde_json::json!(["ann", "bob"])).then_some(())
    })
    .await;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    save_screenshot(&ann, &dir.join("browser-rooms-ann.png")).await;
    save_screenshot(&bob, &dir.join("browser-rooms-bob.png")).await;
    ann.close().await.expect("end ann's WebDriver session");
    bob.close().await.expect("end bob's WebDriver session");
}
