//! The chat page tells the truth (headless Chromium against the real binary, with the Redis
//! broker and a `redis-server` of the test's own): while Redis is down the page says it is
//! connected but cannot deliver (not a plain green "Connected"), and what the user typed is
//! kept, with its text and a Retry button; when Redis is back the page says so (it polls
//! `/readyz` while degraded), Retry delivers the message, and the lost history is told in
//! plain words ("The server restarted; messages from before may be missing."), never as
//! "epoch". Then the node is drained (SIGTERM): while the page waits to reconnect it offers
//! "Retry now", which reconnects at once to the node's replacement, and the status then
//! describes the new connection: no stale "code 1001" left over. Screenshots are saved under
//! `target/` (browser-outage-*.png). And a refused connection (a name the server refuses) is
//! said in plain words, and not retried.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::wsgrace;
use fantoccini::{Client, Locator};
use serde_json::Value;
use wsgrace_kit::browser::{save_screenshot, start_browser, wait_until};
use wsgrace_kit::http::try_get_status;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::{free_port, DEADLINE};

/// For what waits on Redis coming back and on the page's backed-off `/readyz` polls.
const LONG: Duration = Duration::from_secs(40);

/// What the one-room page shows, read through the DOM.
async fn view(client: &Client) -> Value {
    let script = r#"
      const status = document.querySelector('#status');
      const list = document.querySelector('#messages');
      return {
        state: status.dataset.state,
        degraded: status.dataset.degraded || null,
        status: document.querySelector('#status-text').innerText,
        retryNow: !document.querySelector('#retry-now').hidden,
        input: document.querySelector('#text').value,
        failed: [...list.querySelectorAll('li.failed')].map((li) => ({
          text: li.querySelector('.text').textContent,
          why: li.dataset.failed,
          retry: !!li.querySelector('button.retry'),
        })),
        pending: list.querySelectorAll('li.pending').length,
        delivered: [...list.querySelectorAll('li[data-seq] .text')].map((e) => e.textContent),
        list: list.innerText,
        lastClose: window.lastClose,
        failedAttempts: window.wsgraceCloses.filter((c) => !c.opened).length,
      };"#;
    client
        .execute(script, vec![])
        .await
        .unwrap_or_else(|err| panic!("reading the page failed: {err}"))
}

async fn wait_view<F>(client: &Client, what: &str, deadline: Duration, mut ok: F) -> Value
where
    F: FnMut(&Value) -> bool,
{
    let start = Instant::now();
    loop {
        let v = view(client).await;
        if ok(&v) {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}; the page: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_readyz(addr: SocketAddr, status: u16) {
    wait_until(&format!("/readyz {status}"), || async {
        matches!(try_get_status(addr, "/readyz").await, Ok(s) if s == status).then_some(())
    })
    .await;
}

async fn send_from_page(client: &Client, text: &str) {
    let field = client
        .find(Locator::Id("text"))
        .await
        .expect("message field");
    field.send_keys(text).await.expect("type the message");
    client
        .find(Locator::Id("send-button"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("click send");
}

fn shot(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/browser-outage-{name}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_tells_the_truth_through_a_broker_outage_and_a_restart() {
    let mut redis = RedisServer::start();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"page-outage-{}\"\n\n\
         [shutdown]\nreconnect_spread_ms = 300\n",
        redis.url(),
        std::process::id()
    );
    let mut node_a = wsgrace().bind(addr).start(&config);
    node_a.wait_ready(LONG).await.expect("node A ready");

    let (_driver, page) = start_browser().await;
    page.goto(&format!("http://{addr}/?room=outage&name=ann"))
        .await
        .expect("open the chat page");
    wait_view(&page, "connected as ann", DEADLINE, |v| {
        v["state"] == "open" && v["status"].as_str().unwrap_or("").contains("as ann")
    })
    .await;
    send_from_page(&page, "hello before the outage").await;
    wait_view(&page, "the first message delivered", DEADLINE, |v| {
        v["delivered"] == serde_json::json!(["hello before the outage"]) && v["pending"] == 0
    })
    .await;

    // Redis goes away: the connection stays open, but the page must not claim all is well.
    redis.kill();
    wait_readyz(addr, 503).await;
    let typed = "said during the outage";
    send_from_page(&page, typed).await;
    let v = wait_view(&page, "the degraded state, the text kept", DEADLINE, |v| {
        v["degraded"] == "true" && v["failed"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    assert_eq!(
        v["state"], "open",
        "the connection itself stays open: {v:#}"
    );
    let status = v["status"].as_str().unwrap_or_default();
    assert!(
        status.contains("messages cannot be delivered right now"),
        "the status must say the server cannot deliver: {status:?}"
    );
    assert_eq!(
        v["failed"][0]["text"], typed,
        "the typed text is kept: {v:#}"
    );
    assert_eq!(v["failed"][0]["retry"], true, "with a Retry button: {v:#}");
    assert!(
        v["failed"][0]["why"]
            .as_str()
            .is_some_and(|why| why.contains("cannot be delivered")),
        "{v:#}"
    );
    let colour = page
        .execute(
            "return getComputedStyle(document.querySelector('#status .dot')).backgroundColor;",
            vec![],
        )
        .await
        .expect("the dot's colour");
    assert_ne!(
        colour, "rgb(21, 128, 61)",
        "not the green of a healthy connection"
    );
    save_screenshot(&page, &shot("degraded")).await;

    // Redis is back (empty: the room's history is lost): the page finds out by itself.
    redis.restart();
    wait_readyz(addr, 200).await;
    let v = wait_view(&page, "the degraded state left", LONG, |v| {
        v["degraded"] == "false"
    })
    .await;
    assert_eq!(v["state"], "open", "{v:#}");
    assert!(
        !v["status"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be delivered"),
        "{v:#}"
    );
    assert_eq!(
        v["failed"][0]["text"], typed,
        "still kept until retried: {v:#}"
    );

    page.find(Locator::Css("#messages li.failed button.retry"))
        .await
        .expect("the Retry button")
        .click()
        .await
        .expect("click Retry");
    let v = wait_view(&page, "the retried message delivered", DEADLINE, |v| {
        v["delivered"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t == typed))
            && v["failed"].as_array().is_some_and(Vec::is_empty)
            && v["pending"] == 0
    })
    .await;
    let list = v["list"].as_str().unwrap_or_default();
    assert!(
        list.contains("The server restarted; messages from before may be missing."),
        "the lost history, in plain words: {list}"
    );
    assert!(!list.to_lowercase().contains("epoch"), "no jargon: {list}");
    assert_eq!(v["degraded"], "false", "{v:#}");
    save_screenshot(&page, &shot("recovered")).await;

    // The node is drained: the page shows the 1001 close while it waits, with "Retry now".
    node_a.sigterm();
    let v = wait_view(
        &page,
        "the 1001 close, waiting to reconnect",
        DEADLINE,
        |v| v["lastClose"]["code"] == 1001 && v["state"] == "reconnecting" && v["retryNow"] == true,
    )
    .await;
    assert!(
        v["status"]
            .as_str()
            .unwrap_or_default()
            .contains("code 1001"),
        "{v:#}"
    );
    assert!(
        node_a.wait_exit(DEADLINE).await.success(),
        "{}",
        node_a.stderr()
    );
    // A few attempts fail while nothing listens: the backoff grows.
    wait_view(&page, "failed attempts while no node listens", LONG, |v| {
        v["failedAttempts"].as_u64().unwrap_or(0) >= 3 && v["retryNow"] == true
    })
    .await;
    save_screenshot(&page, &shot("reconnecting")).await;

    let mut node_b = wsgrace().bind(addr).start(&config);
    node_b.wait_ready(LONG).await.expect("node B ready");
    let clicked = page
        .execute(
            "const b = document.querySelector('#retry-now');\
             if (b.hidden) return false; b.click(); return true;",
            vec![],
        )
        .await
        .expect("click Retry now");
    let v = wait_view(&page, "open again, after Retry now", DEADLINE, |v| {
        v["state"] == "open"
    })
    .await;
    eprintln!("Retry now clicked: {clicked}");
    let status = v["status"].as_str().unwrap_or_default();
    assert!(status.contains("as ann"), "{status:?}");
    for stale in ["1001", "shutting down", "could not connect", "next attempt"] {
        assert!(
            !status.contains(stale),
            "the status describes an old connection ({stale:?}): {status:?}"
        );
    }
    assert_eq!(v["retryNow"], false, "no Retry now while connected: {v:#}");
    send_from_page(&page, "hello after the restart").await;
    let v = wait_view(&page, "a message on the new node", DEADLINE, |v| {
        v["delivered"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t == "hello after the restart"))
    })
    .await;
    let status = v["status"].as_str().unwrap_or_default();
    assert!(!status.contains("1001"), "{status:?}");
    save_screenshot(&page, &shot("reconnected")).await;

    node_b.sigterm();
    let _ = node_b.wait_exit(DEADLINE).await;
    page.close().await.expect("end the WebDriver session");
}

#[tokio::test]
async fn a_refused_connection_is_explained_in_plain_words_and_not_retried() {
    let server = wsgrace().start("");
    let (_driver, page) = start_browser().await;
    page.goto(&format!(
        "http://{}/?room=lobby&name=bad%20name",
        server.addr
    ))
    .await
    .expect("open the chat page");
    let v = wait_view(&page, "the refusal, stopped", DEADLINE, |v| {
        v["state"] == "closed"
            && v["status"]
                .as_str()
                .is_some_and(|s| s.contains("That name can't be used"))
    })
    .await;
    let status = v["status"].as_str().unwrap_or_default();
    assert!(status.contains("1-64 characters"), "the reason: {status:?}");
    assert!(
        !status.contains("1006"),
        "no code a user cannot read: {status:?}"
    );
    assert!(
        !status.contains("next attempt"),
        "it does not retry: {status:?}"
    );
    assert_eq!(v["retryNow"], false, "{v:#}");
    assert_eq!(
        v["failedAttempts"], 1,
        "one attempt, then it stopped: {v:#}"
    );
    save_screenshot(&page, &shot("refused-name")).await;
    page.close().await.expect("end the WebDriver session");
}
