//! A real browser against the real binary: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver) opens the chat page, joins, sends a message and
//! sees it listed; on SIGTERM the browser's own WebSocket `close` event must say 1001 and
//! `wasClean === true`, and the page must show it. A screenshot is saved under `target/`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::DEADLINE;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "\n\n*** tests/browser.rs needs {path}, which is missing. Install it with:\n***     {INSTALL}\n*** (.ci/run does this on a fresh machine)\n"
    );
}

/// chromedriver as a child, killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_browser() -> (Driver, Client) {
    require(CHROMIUM);
    require(CHROMEDRIVER);
    let port = free_port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = std::env::temp_dir().join(format!("wsgrace-chromium-{}", std::process::id()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=900,700",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(err) => {
                assert!(
                    start.elapsed() < DEADLINE * 3,
                    "no WebDriver session: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Polls `check` until it returns `Some`.
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn the_browser_sees_a_clean_1001_close_on_sigterm() {
    let mut server = ServerProcess::start("");
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

    let png = client.screenshot().await.expect("screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-chat.png");
    std::fs::write(&path, png).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());

    assert!(server.wait_exit(DEADLINE).await.success());
    client.close().await.expect("end the WebDriver session");
}
