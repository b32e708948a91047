//! The Rust client (`wsgrace::client`) and a refused upgrade, as SPEC "HTTP endpoints" asks
//! of it: it reads the HTTP status directly; 400 and 403 stop with the server's one-line
//! reason, 401 asks the token hook once (a second 401, or no token from the hook, stops), 429
//! and 503 back off and retry.
//! Against a stand-in that refuses every upgrade, and the real binary's 400 for a bad name.
//! (The v2 client follows the same policy: `tests/client_v2_stand_in.rs`.) Every wait has a
//! deadline.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::wsgrace;
use tokio::time::{timeout_at, Instant};
use wsgrace::client::{
    Backoff, Client, ClientConfig, ClientEvent, ConnectionState, ReconnectReason, Step, StopReason,
};

/// Generous on a busy 2-core machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(20);

fn config(addr: SocketAddr, room: &str, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(format!("ws://{addr}/ws"));
    config.room = Some(room.to_owned());
    config.name = Some(name.to_owned());
    config.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    config
}

/// A client and every event it gave so far.
struct Watched {
    client: Client,
    seen: Vec<ClientEvent>,
}

impl Watched {
    fn connect(config: ClientConfig) -> Watched {
        Watched {
            client: Client::connect(config).expect("a usable config"),
            seen: Vec::new(),
        }
    }

    async fn next(&mut self, deadline: Instant) -> Option<ClientEvent> {
        let event = timeout_at(deadline, self.client.next_event())
            .await
            .unwrap_or_else(|_| panic!("no event within {WAIT:?}; events {:?}", self.seen));
        if let Some(event) = &event {
            self.seen.push(event.clone());
        }
        event
    }

    /// Reads events until `found` picks one.
    async fn until<T>(&mut self, mut found: impl FnMut(&ClientEvent) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let Some(event) = self.next(deadline).await else {
                panic!("the client stopped; events {:?}", self.seen);
            };
            if let Some(value) = found(&event) {
                return value;
            }
        }
    }

    /// Reads to the end of the event stream (the client stopped).
    async fn ended(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.next(deadline).await.is_some() {}
    }
}

/// A stand-in that refuses every upgrade with the next status of `statuses` (the last one
/// repeats) and a one-line body; sends each request's path on the channel.
async fn refuser(
    statuses: Vec<(u16, &'static str)>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut answers = statuses.into_iter().peekable();
        let mut answer = (500, "");
        while let Ok((mut stream, _)) = listener.accept().await {
            if let Some(next) = answers.next() {
                answer = next;
            }
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            let (status, body) = answer;
            let response = format!(
                "HTTP/1.1 {status} Refused\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            if tx.send(path).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn refused_upgrades_400_and_403_stop_with_the_reason() {
    for (status, body) in [
        (400, "name must be 1-64 characters\n"),
        (403, "room not granted\n"),
    ] {
        let (addr, _paths) = refuser(vec![(status, body)]).await;
        let mut client = Watched::connect(config(addr, "r", "ann"));
        client.ended().await;
        let closes: Vec<(u16, String, bool, Step)> = client
            .seen
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Closed {
                    code,
                    reason,
                    opened,
                    next,
                    ..
                } => Some((*code, reason.clone(), *opened, *next)),
                _ => None,
            })
            .collect();
        let reason = format!("HTTP {status}: {}", body.trim());
        assert_eq!(
            closes,
            [(
                1006,
                reason,
                false,
                Step::Stop(StopReason::UpgradeRefused(status))
            )],
            "{:?}",
            client.seen
        );
        assert_eq!(client.client.state(), ConnectionState::Closed);
    }
}

#[tokio::test]
async fn a_refused_upgrade_401_asks_the_token_hook_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let (addr, mut paths) = refuser(vec![(401, "token expired\n")]).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let mut config = config(addr, "r", "ann");
    config.token = Some("old".to_owned());
    config.token_hook = Some(Box::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move { Ok(format!("fresh-{n}")) })
    }));
    let mut client = Watched::connect(config);
    client.ended().await;
    let nexts: Vec<Step> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Closed { next, .. } => Some(*next),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            nexts.as_slice(),
            [
                Step::Reconnect {
                    fresh_token: true,
                    why: ReconnectReason::Unauthorized,
                    ..
                },
                Step::Stop(StopReason::UpgradeRefused(401))
            ]
        ),
        "{nexts:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let first = paths.recv().await.expect("the first attempt");
    let second = paths.recv().await.expect("the second attempt");
    assert_eq!(first, "/ws?room=r&name=ann&token=old");
    assert_eq!(second, "/ws?room=r&name=ann&token=fresh-1");
}

#[tokio::test]
async fn refused_upgrades_429_and_503_back_off_and_retry() {
    let (addr, _paths) = refuser(vec![(429, "too many\n"), (503, "draining\n")]).await;
    let mut client = Watched::connect(config(addr, "r", "ann"));
    let mut whys = Vec::new();
    while whys.len() < 3 {
        let next = client
            .until(|e| match e {
                ClientEvent::Closed {
                    opened: false,
                    next,
                    ..
                } => Some(*next),
                _ => None,
            })
            .await;
        match next {
            Step::Reconnect { why, .. } => whys.push(why),
            other => panic!("429 and 503 are retried: {other:?}"),
        }
    }
    assert_eq!(
        whys,
        [
            ReconnectReason::HttpStatus(429),
            ReconnectReason::HttpStatus(503),
            ReconnectReason::HttpStatus(503)
        ]
    );
    assert_eq!(client.client.state(), ConnectionState::Reconnecting);
    client.client.close(1000, "").await.expect("close");
    client.ended().await;
}

#[tokio::test]
async fn the_real_server_refuses_a_bad_name_with_400_and_the_client_stops() {
    let mut server = wsgrace().start("");
    let mut client = Watched::connect(config(server.addr, "r", "not a name"));
    client.ended().await;
    let reason = client
        .seen
        .iter()
        .find_map(|e| match e {
            ClientEvent::Closed {
                reason,
                next: Step::Stop(StopReason::UpgradeRefused(400)),
                ..
            } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no stop on 400: {:?}", client.seen));
    // tungstenite hands over only the body bytes that arrived with the response head: the
    // first line of the body is shown when it came in the same read (nearly always on
    // loopback), never anything else.
    assert!(
        reason == "HTTP 400" || reason.starts_with("HTTP 400: name must be"),
        "{reason}"
    );
    server.sigterm();
    assert!(
        server.wait_exit(WAIT).await.success(),
        "{}",
        server.stderr()
    );
}

#[tokio::test]
async fn a_refused_upgrade_401_stops_when_the_token_hook_has_no_token() {
    let (addr, mut paths) = refuser(vec![(401, "token expired\n")]).await;
    let mut config = config(addr, "r", "ann");
    config.token = Some("old".to_owned());
    config.token_hook = Some(Box::new(|| Box::pin(async { Ok(String::new()) })));
    let mut client = Watched::connect(config);
    client.ended().await;
    let errors: Vec<(String, String)> = client
        .seen
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Error { code, text } => Some((code.clone(), text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [(
            "token".to_owned(),
            "HTTP 401, and the token hook gave no token".to_owned()
        )]
    );
    assert_eq!(client.client.state(), ConnectionState::Closed);
    assert_eq!(
        paths.recv().await.as_deref(),
        Some("/ws?room=r&name=ann&token=old")
    );
    assert!(paths.try_recv().is_err(), "no second attempt");
}
