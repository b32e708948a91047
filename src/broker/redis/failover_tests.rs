//! Tests of seq safety across a failover, against real `redis-server` processes started
//! through the test kit: the scripts start a new epoch in a room last written by another
//! Redis process (its `run_id`), going on from the seq it has, and the broker tells its
//! rooms' new epochs, from that seq, before any message of them. (A Sentinel failover with
//! wsgrace nodes is `tests/sentinel.rs`.) It owns these tests only: no helper of the broker.

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use wsgrace_kit::redis::{RedisNode, RedisServer};

use super::super::BrokerEvent;
use super::keys::{snapshot_base, snapshot_head, PUBLISH_SCRIPT, SNAPSHOT_SCRIPT};
use super::tests::{next_message, next_room_event, settings, start, wait_health};
use crate::broker::BrokerHealth;

async fn connect(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The publish script for one message of room `r` with `run` as the master's run_id:
/// `(epoch, seq)`.
async fn publish(con: &mut MultiplexedConnection, run: &str, epoch: &str) -> (String, u64) {
    let value: Value = Script::new(PUBLISH_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:history")
        .arg("t:{r}:room")
        .arg(r#"{"type":"message","room":"r","from":"a","text":"x","seq":"#)
        .arg(epoch)
        .arg(100)
        .arg(60_000)
        .arg("")
        .arg(0)
        .arg(run)
        .invoke_async(con)
        .await
        .unwrap();
    snapshot_head(&value).unwrap()
}

/// The snapshot script for room `r`: `(epoch, seq, base)`.
async fn snapshot(con: &mut MultiplexedConnection, run: &str, epoch: &str) -> (String, u64, u64) {
    let value: Value = Script::new(SNAPSHOT_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:history")
        .arg(epoch)
        .arg(60_000)
        .arg(run)
        .invoke_async(con)
        .await
        .unwrap();
    let (epoch, seq) = snapshot_head(&value).unwrap();
    (epoch, seq, snapshot_base(&value))
}

async fn stream_ids(con: &mut MultiplexedConnection) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("t:{r}:history")
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn a_room_last_written_by_another_redis_starts_a_new_epoch_from_its_seq() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    for seq in 1..=3 {
        assert_eq!(publish(&mut con, "A", "e1").await, ("e1".to_owned(), seq));
    }
    assert_eq!(snapshot(&mut con, "A", "xx").await, ("e1".to_owned(), 3, 0));
    // Another master (a promoted replica): a new epoch before anything else, the seq goes
    // on, the stream holds the new epoch only.
    assert_eq!(publish(&mut con, "B", "e2").await, ("e2".to_owned(), 4));
    assert_eq!(stream_ids(&mut con).await, ["4-0"]);
    assert_eq!(snapshot(&mut con, "B", "xx").await, ("e2".to_owned(), 4, 3));
    assert_eq!(publish(&mut con, "B", "xx").await, ("e2".to_owned(), 5));
    // A join on a third master starts the epoch itself, from the seq it finds.
    assert_eq!(snapshot(&mut con, "C", "e3").await, ("e3".to_owned(), 5, 5));
    assert!(stream_ids(&mut con).await.is_empty());
    assert_eq!(snapshot(&mut con, "C", "xx").await, ("e3".to_owned(), 5, 5));
    assert_eq!(publish(&mut con, "C", "xx").await, ("e3".to_owned(), 6));
    // A room Redis lost is new, from seq 0.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    assert_eq!(snapshot(&mut con, "C", "e4").await, ("e4".to_owned(), 0, 0));
}

#[tokio::test]
async fn a_redis_restarted_with_its_data_is_a_new_epoch_told_from_its_seq() {
    // A restart that keeps the data (AOF, fsync always) is a new Redis process, as a
    // promoted replica is: its last writes may be missing, so the room starts a new epoch.
    let mut server = RedisNode::new()
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .start();
    let (broker, mut events) = start(settings(&server.url(), 100));
    wait_health(&broker, BrokerHealth::Up).await;
    broker.subscribe("r").await.unwrap();
    let mut last = None;
    for _ in 0..3 {
        last = Some(broker.publish("r", "ann", "before").await.unwrap());
        next_message(&mut events).await;
    }
    let last = last.unwrap();
    assert_eq!(last.seq, 3);

    server.kill();
    wait_health(&broker, BrokerHealth::Down).await;
    server.restart();
    wait_health(&broker, BrokerHealth::Up).await;
    let change = match next_room_event(&mut events).await {
        BrokerEvent::EpochChanged(change) => change,
        other => panic!("expected an epoch change, got {other:?}"),
    };
    assert_ne!(change.epoch, last.epoch);
    assert_eq!(
        change.seq, 3,
        "the new epoch goes on from the seq Redis had"
    );
    let after = broker.publish("r", "ann", "after").await.unwrap();
    assert_eq!((after.epoch.clone(), after.seq), (change.epoch.clone(), 4));
    let m = next_message(&mut events).await;
    assert_eq!((m.epoch, m.seq), (change.epoch, 4));
}
