//! Headless Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver, for
//! tests that open the chat page: chromedriver as a child stopped whole on drop (with every
//! Chromium process it started), a session with a throwaway profile, and polling of the page
//! with a deadline. Behind the kit's `browser` feature.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::child::{ChildProcess, Stop};
use crate::temp::temp_path;
use crate::{free_port, DEADLINE};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// Fails (never skips) when `path` is missing, naming the install command.
pub fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "\n\n*** this test needs {path}, which is missing. Install it with:\n***     {INSTALL}\n*** (scripts/test.sh does this on a fresh machine)\n"
    );
}

/// chromedriver as a child, killed on drop with every Chromium process it started; its
/// throwaway profile is removed then.
pub struct Driver {
    child: ChildProcess,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub async fn start_browser() -> (Driver, Client) {
    require(CHROMIUM);
    require(CHROMEDRIVER);
    let port = free_port();
    let mut command = Command::new(CHROMEDRIVER);
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = ChildProcess::spawn(&mut command, Stop::Kill, Some(INSTALL))
        .unwrap_or_else(|err| panic!("{err}"));
    let profile = temp_path(&format!("chromium-{port}"));
    let driver = Driver {
        child,
        profile: profile.clone(),
    };
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

/// Polls `check` until it returns `Some`; panics naming `what` after [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::wait::until(what, DEADLINE, check).await
}

pub async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Saves a screenshot of the page at `path`, making its directory first (`target/` need not
/// exist when cargo builds elsewhere, under `CARGO_TARGET_DIR`).
pub async fn save_screenshot(client: &Client, path: &Path) {
    let png = client.screenshot().await.expect("screenshot");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("make the screenshot's directory");
    }
    std::fs::write(path, png).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());
}
