//! A rolling deploy end to end, through a real load balancer: nginx (the checked-in
//! `deploy/nginx/wsgrace.conf`) in front of two nodes sharing one `redis-server`; the chat
//! page open in headless Chromium and several Rust clients ([`wsgrace::client`]), all through
//! nginx; a talker keeps sending. Node A is drained and started again, then node B is drained
//! (and started again). Every client, the page included, must end with seqs 1..N exactly
//! once, the same text for each seq, and in state `open`. The screenshot lands in
//! `target/rolling-deploy.png`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wsgrace;
use serde_json::Value;
use tokio::task::JoinHandle;
use wsgrace::client::{Client, ClientConfig, ClientEvent, ConnectionState};
use wsgrace_kit::browser::{save_screenshot, start_browser, wait_until};
use wsgrace_kit::http::http_get;
use wsgrace_kit::nginx::{render_deploy_conf, Nginx};
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::{free_port, DEADLINE};

const ROOM: &str = "deploy";
const RUST_CLIENTS: usize = 4;
/// Messages the talker sends in all: enough to span both drains.
const MESSAGES: usize = 400;

fn node_config(redis: &RedisServer) -> String {
    format!(
        "[shutdown]\nreconnect_spread_ms = 1000\ndrain_timeout_ms = 10000\n\
         [broker]\nkind = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"rolling\"\n",
        redis.url()
    )
}

/// A node on a fixed port (nginx names it), ready once `/readyz` says 200.
async fn start_node(config: &str, addr: SocketAddr) -> ServerProcess {
    let node = wsgrace().bind(addr).start(config);
    let started = Instant::now();
    while http_get(addr, "/readyz", &[]).await != 200 {
        assert!(
            started.elapsed() < DEADLINE,
            "node {addr} not ready: {}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

/// SIGTERM, then a clean exit within the drain's bound.
async fn drain(node: &mut ServerProcess) {
    node.sigterm();
    let status = node.wait_exit(DEADLINE * 2).await;
    assert!(
        status.success(),
        "drain exit: {status:?}\n{}",
        node.stderr()
    );
}

/// What one Rust client saw: seq → text, duplicates, reorderings, closes.
#[derive(Debug, Default)]
struct Seen {
    messages: BTreeMap<u64, String>,
    duplicates: Vec<u64>,
    out_of_order: Vec<(u64, u64)>,
    close_codes: Vec<u16>,
    gaps: usize,
    last: u64,
    state: Option<ConnectionState>,
    /// Messages the talker had handed to an open connection.
    sent: usize,
    /// The seq of the first welcome (the room's seq when this client first joined).
    first_welcome_seq: Option<u64>,
}

impl Seen {
    fn record(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Message { seq, text, .. } => {
                if self.messages.insert(seq, text).is_some() {
                    self.duplicates.push(seq);
                }
                if seq <= self.last {
                    self.out_of_order.push((self.last, seq));
                }
                self.last = seq;
            }
            ClientEvent::Closed { code, .. } => self.close_codes.push(code),
            ClientEvent::Gap { .. } => self.gaps += 1,
            ClientEvent::State(state) => self.state = Some(state),
            ClientEvent::Welcome(welcome) => {
                self.first_welcome_seq = self.first_welcome_seq.or(welcome.seq);
            }
            _ => {}
        }
    }
}

/// A Rust client in the room through nginx, owned by a task that records what it sees; a
/// talker also sends `MESSAGES` texts, one every `pace`, each once it is accepted by an open
/// connection (a send refused while reconnecting is tried again).
fn rust_client(
    lb: SocketAddr,
    name: &str,
    talk: Option<Duration>,
) -> (Arc<Mutex<Seen>>, JoinHandle<()>) {
    let mut config = ClientConfig::new(format!("ws://{lb}/ws"));
    config.room = Some(ROOM.to_owned());
    config.name = Some(name.to_owned());
    let mut client = Client::connect(config).expect("a client");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(talk.unwrap_or(Duration::from_secs(3600)));
        let mut next = 0;
        loop {
            tokio::select! {
                event = client.next_event() => match event {
                    Some(event) => record.lock().expect("seen").record(event),
                    None => return,
                },
                _ = tick.tick(), if talk.is_some() && next < MESSAGES => {
                    if client.send(format!("m{next}")) {
                        next += 1;
                        record.lock().expect("seen").sent = next;
                    }
                }
            }
        }
    });
    (seen, task)
}

fn snapshot<T>(seen: &Arc<Mutex<Seen>>, f: impl FnOnce(&Seen) -> T) -> T {
    f(&seen.lock().expect("seen"))
}

/// The page's messages as seq → text, read from its `data-seq` elements.
async fn page_messages(browser: &fantoccini::Client) -> Vec<(u64, String)> {
    let script = "return [...document.querySelectorAll('#messages [data-seq]')]\
                  .map(e => [Number(e.dataset.seq), e.textContent]);";
    match browser.execute(script, vec![]).await {
        Ok(Value::Array(items)) => items
            .iter()
            .filter_map(|item| Some((item[0].as_u64()?, item[1].as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    }
}

async fn page_state(browser: &fantoccini::Client) -> String {
    match browser
        .execute(
            "return document.getElementById('status').dataset.state;",
            vec![],
        )
        .await
    {
        Ok(Value::String(state)) => state,
        _ => String::new(),
    }
}

/// Waits until the talker has had `count` texts accepted.
async fn talker_reaches(talker: &Arc<Mutex<Seen>>, count: usize) {
    let deadline = DEADLINE * 3;
    let started = Instant::now();
    while snapshot(talker, |seen| seen.sent) < count {
        assert!(
            started.elapsed() < deadline,
            "the talker got stuck at {} sent",
            snapshot(talker, |seen| seen.sent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_through_nginx_loses_and_doubles_nothing() {
    let redis = RedisServer::start();
    let config = node_config(&redis);
    let a_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let b_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut node_a = start_node(&config, a_addr).await;
    let mut node_b = start_node(&config, b_addr).await;
    let lb_port = free_port();
    let nginx = Nginx::start(
        &render_deploy_conf(lb_port, [a_addr.port(), b_addr.port()]),
        lb_port,
    );
    let lb = nginx.addr;

    // The page first, so that nginx spreads the clients over both nodes after it.
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("http://{lb}/?room={ROOM}&name=page"))
        .await
        .expect("open the page through nginx");
    wait_until("the page to be open", || async {
        (page_state(&browser).await == "open").then_some(())
    })
    .await;

    let mut clients = Vec::new();
    for i in 0..RUST_CLIENTS {
        clients.push(rust_client(lb, &format!("reader{i}"), None));
    }
    // Everyone is in the room before the first message, so that everyone's history is 1..N.
    for (seen, _) in &clients {
        let started = Instant::now();
        while snapshot(seen, |seen| seen.state) != Some(ConnectionState::Open) {
            assert!(started.elapsed() < DEADLINE, "a reader did not open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            snapshot(seen, |seen| seen.first_welcome_seq),
            Some(0),
            "a reader joined a room that had messages"
        );
    }
    let (talker, talker_task) = rust_client(lb, "talker", Some(Duration::from_millis(15)));

    talker_reaches(&talker, MESSAGES / 4).await;
    drain(&mut node_a).await;
    node_a = start_node(&config, a_addr).await;
    talker_reaches(&talker, MESSAGES * 5 / 8).await;
    drain(&mut node_b).await;
    node_b = start_node(&config, b_addr).await;
    talker_reaches(&talker, MESSAGES).await;

    // The room's last seq: the talker's receipt of its last text.
    let last_text = format!("m{}", MESSAGES - 1);
    let started = Instant::now();
    let n = loop {
        let found = snapshot(&talker, |seen| {
            seen.messages
                .iter()
                .find(|(_, text)| **text == last_text)
                .map(|(seq, _)| *seq)
        });
        if let Some(n) = found {
            break n;
        }
        assert!(
            started.elapsed() < DEADLINE * 2,
            "the talker never got its last text back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let everyone: Vec<(&str, &Arc<Mutex<Seen>>)> = std::iter::once(("talker", &talker))
        .chain(clients.iter().map(|(seen, _)| ("reader", seen)))
        .collect();
    for (who, seen) in &everyone {
        let started = Instant::now();
        while snapshot(seen, |seen| seen.last) < n {
            assert!(
                started.elapsed() < DEADLINE * 2,
                "{who} stuck at seq {} of {n}",
                snapshot(seen, |seen| seen.last)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let page = wait_until("the page to show every seq", || async {
        let messages = page_messages(&browser).await;
        (messages.iter().map(|(seq, _)| *seq).max() >= Some(n)).then_some(messages)
    })
    .await;

    // One history for all: the talker's view is the reference.
    let reference = snapshot(&talker, |seen| seen.messages.clone());
    let expected: Vec<u64> = (1..=n).collect();
    assert_eq!(
        reference.keys().copied().collect::<Vec<_>>(),
        expected,
        "the talker's seqs"
    );
    for (who, seen) in &everyone {
        snapshot(seen, |seen| {
            assert!(
                seen.duplicates.is_empty(),
                "{who} doubled {:?}",
                seen.duplicates
            );
            assert!(
                seen.out_of_order.is_empty(),
                "{who} reordered {:?}",
                seen.out_of_order
            );
            assert_eq!(seen.gaps, 0, "{who} was told of a gap");
            assert_eq!(seen.messages, reference, "{who} saw another history");
            assert_eq!(seen.state, Some(ConnectionState::Open), "{who} state");
            assert!(
                seen.close_codes.iter().all(|code| *code == 1001),
                "{who} closes: {:?}",
                seen.close_codes
            );
        });
    }
    // Each reader went through at least one drain (the nodes were drained in turn).
    for (seen, _) in &clients {
        assert!(
            snapshot(seen, |seen| seen.close_codes.contains(&1001)),
            "a reader never saw a drain"
        );
    }
    // Texts the talker handed to a connection that was closing (awaited close mode drops
    // data that arrives after its close frame; SPEC) never got a seq: informational.
    eprintln!(
        "talker: {MESSAGES} texts accepted by a connection, {n} got a seq; the rest arrived \
         after a drain's close frame"
    );
    let page_seqs: Vec<u64> = page.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(page_seqs, expected, "the page's seqs, in order, once each");
    for (seq, text) in &page {
        assert!(
            text.contains(&reference[seq]),
            "page seq {seq}: {text:?} lacks {:?}",
            reference[seq]
        );
    }
    assert_eq!(page_state(&browser).await, "open");
    let closes = browser
        .execute("return window.wsgraceCloses || [];", vec![])
        .await
        .expect("the page's closes");
    for close in closes.as_array().into_iter().flatten() {
        if close["opened"] == true {
            assert_eq!(close["code"], 1001, "the page's close {close}");
            assert_eq!(close["wasClean"], true, "the page's close {close}");
        }
    }

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/rolling-deploy.png");
    save_screenshot(&browser, &path).await;

    talker_task.abort();
    for (_, task) in clients {
        task.abort();
    }
    browser.close().await.expect("end the WebDriver session");
    drop((node_a, node_b, nginx));
}
