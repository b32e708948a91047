//! The page and `/wsgrace.js` with `permessage-deflate` on (SPEC `session.permessage_deflate`):
//! headless Chromium offers the extension by itself; the server agrees (the browser's
//! `WebSocket.extensions` says so), and the chat works both ways through it: a long message
//! from the page arrives whole at another member, and a long room message, sent compressed to
//! every member that agreed, is shown by the page.

mod common;

use common::wsgrace;
use serde_json::Value;
use wsgrace_kit::browser::{start_browser, text_of, wait_until};
use wsgrace_kit::deflate::BROWSER_OFFER;
use wsgrace_kit::raw::RawClient;

/// A message long enough to be compressed (over 128 bytes).
const LONG: &str = "a long line from the raw client, long enough to be worth compressing: the \
                    room message carrying it is well over one hundred and twenty-eight bytes";

#[tokio::test]
async fn chromium_agrees_to_permessage_deflate_and_the_page_chats_through_it() {
    let server = wsgrace().start("[session]\npermessage_deflate = true\n");
    let (_driver, client) = start_browser().await;
    client
        .goto(&format!(
            "http://{}/?room=squeezed&name=chromium",
            server.addr
        ))
        .await
        .expect("open the chat page");
    wait_until("the welcome", || async {
        let status = text_of(&client, "#status-text").await;
        status.contains("as chromium").then_some(())
    })
    .await;

    // What the browser itself agreed to, on a socket of its own to the same server.
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
        const ws = new WebSocket("ws://{}/ws?room=probe");
        ws.onopen = () => {{ done(ws.extensions); ws.close(); }};
        ws.onerror = () => done("error");"#,
        server.addr
    );
    let extensions: Value = client
        .execute_async(&script, vec![])
        .await
        .expect("the probe socket");
    let extensions = extensions.as_str().unwrap_or_default().to_owned();
    assert!(
        extensions.starts_with("permessage-deflate")
            && extensions.contains("server_no_context_takeover")
            && extensions.contains("client_no_context_takeover"),
        "{extensions:?}"
    );

    // A raw member that agreed too: it sees what the page sends, and what it sends the page
    // shows.
    let (mut raw, answer) =
        RawClient::connect_offering(server.addr, "/ws?room=squeezed&name=raw", BROWSER_OFFER).await;
    assert!(answer.is_some());
    let from_page = format!("{LONG} (typed in the page)");
    let field = client
        .find(fantoccini::Locator::Id("text"))
        .await
        .expect("message field");
    field.send_keys(&from_page).await.expect("type");
    client
        .find(fantoccini::Locator::Id("send-button"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("click send");
    let compressed_seen = loop {
        let frame = raw.next_frame().await.expect("a frame");
        if frame.opcode != wsgrace_kit::frame::OP_TEXT {
            continue;
        }
        let event: Value = serde_json::from_str(&frame.text()).expect("JSON");
        if event["type"] == "message" && event["text"] == from_page.as_str() {
            break frame.compressed();
        }
    };
    assert!(compressed_seen, "the room message did not come compressed");

    raw.send_compressed_text(LONG).await;
    wait_until("the raw client's message in the page", || async {
        let list = text_of(&client, "#messages").await;
        list.contains(LONG).then_some(())
    })
    .await;
    client.close().await.expect("end the WebDriver session");
}
