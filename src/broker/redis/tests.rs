//! Tests of the Redis broker against real `redis-server` processes that each test starts on
//! a free loopback port through the test kit (`wsgrace_kit::redis`): a temporary directory,
//! no persistence, killed on drop. Never a system daemon, never port 6379. A machine without
//! `redis-server` fails them with the command that installs it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::super::local::HistoryLimits;
use wsgrace_kit::redis::RedisServer;

use super::super::{
    Broker, BrokerEvent, BrokerEvents, BrokerHealth, Epoch, JoinRequest, Origin, Outgoing,
    Publication, Published, Resume, ResumeRequest, SentBy, Signal,
};
use super::{RedisBroker, RedisSettings};
use crate::config::{BrokerSettings, HistorySettings};

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn settings(url: &str, size: usize) -> RedisSettings {
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

pub(super) async fn next_event(events: &mut BrokerEvents) -> BrokerEvent {
    match tokio::time::timeout(WAIT, events.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no broker event within {WAIT:?}"),
    }
}

/// The next event that is not a health change.
pub(super) async fn next_room_event(events: &mut BrokerEvents) -> BrokerEvent {
    loop {
        match next_event(events).await {
            BrokerEvent::Health(_) => continue,
            event => return event,
        }
    }
}

pub(super) async fn next_message(events: &mut BrokerEvents) -> Published {
    match next_room_event(events).await {
        BrokerEvent::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

pub(super) async fn wait_health(broker: &RedisBroker, want: BrokerHealth) {
    let mut health = broker.health();
    let reached = tokio::time::timeout(WAIT, health.wait_for(|h| *h == want)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "broker not {want:?} within {WAIT:?}"
    );
}

pub(super) async fn started(server: &RedisServer, size: usize) -> (RedisBroker, BrokerEvents) {
    let (broker, events) = start(settings(&server.url(), size));
    wait_health(&broker, BrokerHealth::Up).await;
    (broker, events)
}

/// A started broker and its event stream.
pub(super) fn start(settings: RedisSettings) -> (RedisBroker, BrokerEvents) {
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

    server.restart();
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
    let mut server = RedisServer::stopped();
    let (broker, mut events) = start(settings(&server.url(), 10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!broker.is_up());
    assert!(broker.publish("r", "ann", "x").await.is_err());
    assert!(
        broker.subscribe("r").await.is_err(),
        "down: not subscribed yet"
    );
    server.restart();
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

#[tokio::test]
async fn a_dedupe_key_is_published_once_whichever_node_repeats_it() {
    let server = RedisServer::start();
    let (a, mut a_events) = started(&server, 100).await;
    let (b, _b_events) = started(&server, 100).await;
    a.subscribe("r").await.unwrap();
    let sent_by = SentBy {
        origin: Origin {
            node: a.node(),
            session: 7,
        },
        id: Arc::from("m-1"),
    };
    let message = |key| Outgoing {
        from: "ann",
        text: "hello",
        dedupe_key: Some(key),
        sent_by: Some(&sent_by),
    };
    let first = a.publish_message("r", message("n:ann:m-1")).await.unwrap();
    let Publication::New(first) = first else {
        panic!("the first publish was taken for a repeat: {first:?}");
    };
    assert_eq!(first.seq, 1);
    // The event carries the sender, for its own copy.
    let event = next_message(&mut a_events).await;
    assert_eq!(event.sent_by.as_ref(), Some(&sent_by));
    assert_eq!(event.json, first.json);
    // The same key from the other node: the first one's epoch and seq, nothing published.
    let again = b.publish_message("r", message("n:ann:m-1")).await.unwrap();
    assert_eq!(
        again,
        Publication::Repeat {
            epoch: first.epoch.clone(),
            seq: 1
        }
    );
    // Another key is another message, and nothing came in between.
    let other = a.publish_message("r", message("n:ann:m-2")).await.unwrap();
    assert!(
        matches!(other, Publication::New(ref p) if p.seq == 2),
        "{other:?}"
    );
    assert_eq!(next_message(&mut a_events).await.seq, 2);
}

#[tokio::test]
async fn a_join_may_ask_for_the_last_messages() {
    let server = RedisServer::start();
    let (broker, _events) = started(&server, 5).await;
    for n in 1..=8 {
        broker.publish("r", "ann", &format!("m{n}")).await.unwrap();
    }
    let recent = |last| broker.join_snapshot("r", JoinRequest { resume: None, last });
    let seqs = |snapshot: &super::super::JoinSnapshot| match &snapshot.resume {
        Resume::Recent(entries) => entries.iter().map(|p| p.seq).collect::<Vec<_>>(),
        other => panic!("not recent messages: {other:?}"),
    };
    assert_eq!(seqs(&recent(3).await.unwrap()), [6, 7, 8]);
    // More than is kept (history.size 5): what is kept.
    assert_eq!(seqs(&recent(100).await.unwrap()), [4, 5, 6, 7, 8]);
    let none = recent(0).await.unwrap();
    assert_eq!(none.resume, Resume::NotAsked);
}

#[tokio::test]
async fn a_signal_reaches_every_subscribed_node() {
    let server = RedisServer::start();
    let (a, _a_events) = started(&server, 10).await;
    let (b, mut b_events) = started(&server, 10).await;
    b.subscribe("r").await.unwrap();
    let signal = Signal {
        room: Arc::from("r"),
        json: bytestring::ByteString::from_static(r#"{"type":"signal"}"#),
        origin: Origin {
            node: a.node(),
            session: 3,
        },
    };
    a.send_signal(&signal).await.unwrap();
    match next_room_event(&mut b_events).await {
        BrokerEvent::Signal(received) => assert_eq!(received, signal),
        other => panic!("expected a signal, got {other:?}"),
    }
}
