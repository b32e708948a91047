//! Tests of the Redis broker against real `redis-server` processes that each test starts on
//! a free loopback port, in a temporary directory, without persistence, and kills on drop.
//! Never a system daemon, never port 6379. A machine without `redis-server` fails them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::super::local::HistoryLimits;
use super::super::{
    Broker, BrokerEvent, BrokerEvents, BrokerHealth, Epoch, Published, Resume, ResumeRequest,
};
use super::{RedisBroker, RedisSettings};
use crate::config::{BrokerSettings, HistorySettings};

const WAIT: Duration = Duration::from_secs(10);

struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn start() -> RedisServer {
        let mut server = RedisServer::on_port(RedisServer::free_port());
        server.launch();
        server
    }

    /// A server not started yet.
    fn on_port(port: u16) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("wsgrace-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer {
            port,
            dir,
            child: None,
        }
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed: apt-get install -y redis-server")
            }
            Err(err) => panic!("starting redis-server failed: {err}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: it loses everything).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(url: &str, size: usize) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        key_prefix: "t".to_owned(),
        history: HistoryLimits {
            size,
            ..HistoryLimits::from(&HistorySettings::default())
        },
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        timeout: Duration::from_millis(500),
        ..RedisSettings::new(&BrokerSettings::default(), &HistorySettings::default())
    }
}

async fn next_event(events: &mut BrokerEvents) -> BrokerEvent {
    match tokio::time::timeout(WAIT, events.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no broker event within {WAIT:?}"),
    }
}

/// The next event that is not a health change.
async fn next_room_event(events: &mut BrokerEvents) -> BrokerEvent {
    loop {
        match next_event(events).await {
            BrokerEvent::Health(_) => continue,
            event => return event,
        }
    }
}

async fn next_message(events: &mut BrokerEvents) -> Published {
    match next_room_event(events).await {
        BrokerEvent::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn wait_health(broker: &RedisBroker, want: BrokerHealth) {
    let mut health = broker.health();
    let reached = tokio::time::timeout(WAIT, health.wait_for(|h| *h == want)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "broker not {want:?} within {WAIT:?}"
    );
}

async fn started(server: &RedisServer, size: usize) -> (RedisBroker, BrokerEvents) {
    let (broker, events) = start(settings(&server.url(), size));
    wait_health(&broker, BrokerHealth::Up).await;
    (broker, events)
}

/// A started broker and its event stream.
fn start(settings: RedisSettings) -> (RedisBroker, BrokerEvents) {
    let mut broker = RedisBroker::start(settings).unwrap();
    let events = broker.take_event_stream().unwrap();
    (broker, events)
}

#[tokio::test]
async fn publish_gives_seq_1_to_n_in_order() {
    let server = RedisServer::start();
    let (broker, mut events) = started(&server, 100).await;
    broker.subscribe("lobby").await.unwrap();
    let pending: Vec<_> = (1..=50)
        .map(|i| broker.publish("lobby", "ann", &format!("m{i}")))
        .collect();
    let published = futures::future::join_all(pending).await;
    let mut epoch = None;
    for (i, result) in published.into_iter().enumerate() {
        let p = result.unwrap();
        assert_eq!(p.seq, i as u64 + 1);
        epoch.get_or_insert(p.epoch.clone());
    }
    for i in 1..=50u64 {
        let m = next_message(&mut events).await;
        assert_eq!(m.seq, i);
        assert_eq!(Some(&m.epoch), epoch.as_ref());
        // `ts` is Redis's clock when the message got its seq.
        let frame: serde_json::Value = serde_json::from_str(&m.json).unwrap();
        let ts = frame["ts"].as_u64().expect("a ts");
        assert!(ts > 1_600_000_000_000, "ts {ts}");
        assert_eq!(
            &*m.json,
            format!(
                r#"{{"type":"message","room":"lobby","from":"ann","text":"m{i}","seq":{i},"ts":{ts}}}"#
            )
        );
    }
}

#[tokio::test]
async fn two_nodes_see_every_message_once_in_seq_order() {
    let server = RedisServer::start();
    let (a, mut a_events) = started(&server, 1000).await;
    let (b, mut b_events) = started(&server, 1000).await;
    a.subscribe("r").await.unwrap();
    b.subscribe("r").await.unwrap();
    const EACH: usize = 200;
    let send = |broker: &RedisBroker, name: &'static str| {
        // Queued here, in order; answered in the spawned task.
        let pending: Vec<_> = (0..EACH)
            .map(|i| broker.publish("r", name, &i.to_string()))
            .collect();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for result in futures::future::join_all(pending).await {
                seqs.push(result.unwrap().seq);
            }
            seqs
        })
    };
    let (a_seqs, b_seqs) = tokio::join!(send(&a, "a"), send(&b, "b"));
    // Each node's messages executed in the order they were handed over.
    for seqs in [a_seqs.unwrap(), b_seqs.unwrap()] {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    for events in [&mut a_events, &mut b_events] {
        let mut next_text = [0usize; 2];
        for seq in 1..=2 * EACH as u64 {
            let m = next_message(events).await;
            assert_eq!(m.seq, seq);
            let value: serde_json::Value = serde_json::from_str(&m.json).unwrap();
            let from = usize::from(value["from"] == "b");
            assert_eq!(value["text"], next_text[from].to_string(), "per-node order");
            next_text[from] += 1;
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        assert!(extra.is_err(), "an extra event: {extra:?}");
    }
}

#[tokio::test]
async fn snapshots_apply_the_resume_rule() {
    let server = RedisServer::start();
    let (broker, _events) = started(&server, 5).await;
    let fresh = broker.snapshot("r", None).await.unwrap();
    assert_eq!(fresh.seq, 0);
    assert_eq!(fresh.resume, Resume::NotAsked);
    for i in 0..8 {
        broker.publish("r", "ann", &i.to_string()).await.unwrap();
    }
    let epoch = fresh.epoch.clone();
    let ask = |since, epoch: Option<&Epoch>| {
        Some(ResumeRequest {
            since,
            epoch: epoch.cloned(),
        })
    };
    let other = Epoch::new("other");
    let cases = [
        (ask(3, Some(&epoch)), Some(vec![4, 5, 6, 7, 8])),
        (ask(6, None), Some(vec![7, 8])),
        (ask(8, Some(&epoch)), Some(vec![])),
        (ask(2, Some(&epoch)), None), // trimmed by history.size
        (ask(0, None), None),
        (ask(9, None), None),         // ahead of the room
        (ask(5, Some(&other)), None), // another epoch
        (ask(u64::MAX / 2, None), None),
    ];
    for (request, expected) in cases {
        let snap = broker.snapshot("r", request.clone()).await.unwrap();
        assert_eq!(snap.seq, 8);
        assert_eq!(snap.epoch, epoch, "the room kept its epoch");
        let got = match &snap.resume {
            Resume::Resumed(entries) => Some(entries.iter().map(|p| p.seq).collect::<Vec<_>>()),
            Resume::NotResumed => None,
            Resume::NotAsked | Resume::Recent(_) => panic!("asked"),
        };
        assert_eq!(got, expected, "{request:?}");
        if let Resume::Resumed(entries) = &snap.resume {
            for p in entries {
                assert!(
                    p.json.contains(&format!(",\"seq\":{},\"ts\":", p.seq)),
                    "{}",
                    p.json
                );
            }
        }
    }

    // history.size = 0: no stream, nothing resumed.
    let (none, _events) = started(&server, 0).await;
    none.publish("z", "ann", "x").await.unwrap();
    let snap = none.snapshot("z", ask(1, None)).await.unwrap();
    assert_eq!(snap.seq, 1);
    assert_eq!(snap.resume, Resume::NotResumed);
}

#[tokio::test]
async fn a_redis_restarted_empty_is_a_new_epoch_told_before_its_messages() {
    let mut server = RedisServer::start();
    let (broker, mut events) = started(&server, 100).await;
    broker.subscribe("r").await.unwrap();
    let first = broker.publish("r", "ann", "before").await.unwrap();
    assert_eq!(next_message(&mut events).await.seq, 1);

    server.kill();
    wait_health(&broker, BrokerHealth::Down).await;
    assert_eq!(
        next_event(&mut events).await,
        BrokerEvent::Health(BrokerHealth::Down)
    );
    assert!(broker.publish("r", "ann", "during").await.is_err());

    server.launch();
    wait_health(&broker, BrokerHealth::Up).await;
    let change = match next_room_event(&mut events).await {
        BrokerEvent::EpochChanged(change) => change,
        other => panic!("expected an epoch change, got {other:?}"),
    };
    assert_eq!(&*change.room, "r");
    assert_ne!(change.epoch, first.epoch);
    assert_eq!(change.seq, 0);
    // Re-subscribed: messages of the new epoch arrive.
    let after = broker.publish("r", "ann", "after").await.unwrap();
    assert_eq!((after.epoch.clone(), after.seq), (change.epoch.clone(), 1));
    let m = next_message(&mut events).await;
    assert_eq!((m.epoch, m.seq), (change.epoch, 1));
}

#[tokio::test]
async fn a_new_epoch_published_by_another_node_is_told_first() {
    // Node b publishes into a room after Redis lost it while node a was connected: a sees
    // the epoch change before the message (the room expired, or another node got there
    // first after a restart).
    let server = RedisServer::start();
    let (a, mut a_events) = started(&server, 100).await;
    let (b, _b_events) = started(&server, 100).await;
    a.subscribe("r").await.unwrap();
    let first = b.publish("r", "bob", "1").await.unwrap();
    assert_eq!(next_message(&mut a_events).await.seq, 1);
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let second = b.publish("r", "bob", "2").await.unwrap();
    assert_ne!(second.epoch, first.epoch);
    match next_room_event(&mut a_events).await {
        BrokerEvent::EpochChanged(change) => {
            assert_eq!((change.epoch, change.seq), (second.epoch.clone(), 0));
        }
        other => panic!("expected an epoch change, got {other:?}"),
    }
    let m = next_message(&mut a_events).await;
    assert_eq!((m.epoch, m.seq), (second.epoch, 1));
}

#[tokio::test]
async fn starts_without_redis_then_comes_up() {
    let mut server = RedisServer::on_port(RedisServer::free_port());
    let (broker, mut events) = start(settings(&server.url(), 10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!broker.is_up());
    assert!(broker.publish("r", "ann", "x").await.is_err());
    assert!(
        broker.subscribe("r").await.is_err(),
        "down: not subscribed yet"
    );
    server.launch();
    wait_health(&broker, BrokerHealth::Up).await;
    assert_eq!(
        next_event(&mut events).await,
        BrokerEvent::Health(BrokerHealth::Up)
    );
    // The subscription counted while down was made on connect.
    let p = broker.publish("r", "ann", "x").await.unwrap();
    assert_eq!(p.seq, 1);
    assert_eq!(next_message(&mut events).await.seq, 1);
}

#[tokio::test]
async fn unsubscribing_the_last_member_stops_delivery() {
    let server = RedisServer::start();
    let (broker, mut events) = started(&server, 10).await;
    broker.subscribe("r").await.unwrap();
    broker.subscribe("r").await.unwrap();
    broker.unsubscribe("r");
    broker.publish("r", "ann", "1").await.unwrap();
    assert_eq!(next_message(&mut events).await.seq, 1);
    broker.unsubscribe("r");
    // A subscribe round-trip after the unsubscribe: the driver handled it.
    broker.subscribe("other").await.unwrap();
    broker.publish("r", "ann", "2").await.unwrap();
    let extra =
        tokio::time::timeout(Duration::from_millis(300), next_room_event(&mut events)).await;
    assert!(
        extra.is_err(),
        "delivered after the last unsubscribe: {extra:?}"
    );
}
