//! A real browser against the real binary: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver) opens the chat page, joins, sends a message and
//! sees it listed; on SIGTERM the browser's own WebSocket `close` event must say 1001 and
//! `wasClean === true`, and the page must show it. A screenshot is saved under `target/`.

mod common;

use std::path::Path;

use common::wsgrace;
use fantoccini::Locator;
use serde_json::Value;
use wsgrace_kit::browser::{save_screenshot, start_browser, text_of, wait_until};
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
