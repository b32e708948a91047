//! Tests of seq safety across a failover, against real `redis-server` processes started
//! through the test kit: the scripts start a new epoch in a room last written by another
//! Redis process (its `run_id`), going on from the seq it has, and the broker tells its
//! rooms' new epochs, from that seq, before any message of them. (A Sentinel failover with
//! wsgrace nodes is `tests/sentinel.rs`.) It owns these tests only: no helper of the broker.

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use wsgrace_kit::redis::{RedisNode, RedisServer};

use super::super::{BrokerEvent, BrokerEvents};
use super::keys::{snapshot_base, snapshot_head, PUBLISH_SCRIPT, RELEASE_SCRIPT, SNAPSHOT_SCRIPT};
use super::tests::{next_message, next_room_event, settings, start, wait_health};
use crate::broker::BrokerHealth;

async fn connect(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The publish script for one message of room `r` with `run` as the master's run_id:
/// `(epoch, seq)`.
async fn publish(con: &mut MultiplexedConnection, run: &str, epoch: &str) -> (String, u64) {
    publish_as(con, run, epoch, "0", "x").await
}

/// [`publish`], holding the message if `hold` is `1`, saying `text`.
async fn publish_as(
    con: &mut MultiplexedConnection,
    run: &str,
    epoch: &str,
    hold: &str,
    text: &str,
) -> (String, u64) {
    let head = format!(r#"{{"type":"message","room":"r","from":"a","text":"{text}","seq":"#);
    let value: Value = Script::new(PUBLISH_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:history")
        .key("t:{r}:pending")
        .arg("t:{r}:room")
        .arg(head)
        .arg(epoch)
        .arg(100)
        .arg(60_000)
        .arg("")
        .arg(0)
        .arg(run)
        .arg(hold)
        .arg(3)
        .invoke_async(con)
        .await
        .unwrap();
    snapshot_head(&value).unwrap()
}

/// The snapshot script for room `r`: `(epoch, seq, base)`.
async fn snapshot(con: &mut MultiplexedConnection, run: &str, epoch: &str) -> (String, u64, u64) {
    snapshot_as(con, run, epoch, "0").await
}

/// [`snapshot`] of a node that holds messages if `hold` is `1`.
async fn snapshot_as(
    con: &mut MultiplexedConnection,
    run: &str,
    epoch: &str,
    hold: &str,
) -> (String, u64, u64) {
    let value: Value = Script::new(SNAPSHOT_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:history")
        .key("t:{r}:pending")
        .arg(epoch)
        .arg(60_000)
        .arg(run)
        .arg(hold)
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

/// On a Redis Cluster the broker passes `?`: the scripts read the run_id of the master they
/// run on (each shard has its own), with the same rules.
#[tokio::test]
async fn a_run_id_of_question_mark_is_the_run_id_of_the_redis_that_runs_the_script() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    assert_eq!(publish(&mut con, "?", "e1").await, ("e1".to_owned(), 1));
    assert_eq!(publish(&mut con, "?", "xx").await, ("e1".to_owned(), 2));
    assert_eq!(snapshot(&mut con, "?", "xx").await, ("e1".to_owned(), 2, 0));
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .unwrap();
    let run = super::target::run_id(&info).unwrap();
    let stored: String = redis::cmd("HGET")
        .arg("t:{r}:room")
        .arg("run")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stored, run);
    // Its own run_id passed explicitly is the same process: no new epoch.
    assert_eq!(publish(&mut con, &run, "xx").await, ("e1".to_owned(), 3));
    // A room another process wrote last (as after a failover): a new epoch from its seq.
    let _: () = redis::cmd("HSET")
        .arg("t:{r}:room")
        .arg("run")
        .arg("another")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(publish(&mut con, "?", "e2").await, ("e2".to_owned(), 4));
    assert_eq!(snapshot(&mut con, "?", "xx").await, ("e2".to_owned(), 4, 3));
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

/// The release script for room `r` up to `upto`: the last seq released.
async fn release(con: &mut MultiplexedConnection, upto: u64) -> u64 {
    Script::new(RELEASE_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:pending")
        .arg("t:{r}:room")
        .arg(upto)
        .invoke_async(con)
        .await
        .unwrap()
}

#[tokio::test]
async fn held_messages_are_released_once_in_seq_order_whichever_node_releases() {
    let server = RedisServer::start();
    let mut con = connect(&server).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("t:{r}:room").await.unwrap();
    let mut published = pubsub.into_on_message();
    // Held: a seq each, not published, not in a holding node's snapshot yet.
    for (n, text) in [(1, "a1"), (2, "b2"), (3, "a3")] {
        assert_eq!(
            publish_as(&mut con, "", "e1", "1", text).await,
            ("e1".to_owned(), n)
        );
    }
    assert_eq!(
        snapshot_as(&mut con, "", "xx", "1").await,
        ("e1".to_owned(), 0, 0)
    );
    assert_eq!(
        snapshot_as(&mut con, "", "xx", "0").await,
        ("e1".to_owned(), 3, 0)
    );
    // A room holding the most it may refuses the next one (`repeat` 2).
    let value: Value = Script::new(PUBLISH_SCRIPT)
        .key("t:{r}:room")
        .key("t:{r}:history")
        .key("t:{r}:pending")
        .arg("t:{r}:room")
        .arg("{")
        .arg("e1")
        .arg(100)
        .arg(60_000)
        .arg("")
        .arg(0)
        .arg("")
        .arg("1")
        .arg(3)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert!(
        matches!(&value, Value::Array(parts) if parts.get(3) == Some(&Value::Int(2))),
        "{value:?}"
    );
    // Node b's WAIT confirmed seq 2: 1 and 2 go out, in order; node a's release of 1 later
    // is a no-op; a's release of 3 sends 3.
    assert_eq!(release(&mut con, 2).await, 2);
    assert_eq!(release(&mut con, 1).await, 2);
    assert_eq!(
        snapshot_as(&mut con, "", "xx", "1").await,
        ("e1".to_owned(), 2, 0)
    );
    assert_eq!(release(&mut con, 3).await, 3);
    assert_eq!(release(&mut con, 3).await, 3);
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures::StreamExt::next(&mut published),
        )
        .await
        .unwrap()
        .unwrap();
        let payload: String = msg.get_payload().unwrap();
        seqs.push(payload.split(':').nth(1).unwrap().to_owned());
    }
    assert_eq!(seqs, ["1", "2", "3"]);
    let extra = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        futures::StreamExt::next(&mut published),
    )
    .await;
    assert!(extra.is_err(), "published twice: {extra:?}");
    // Holding nodes check no run_id: another master keeps the epoch.
    assert_eq!(
        publish_as(&mut con, "", "e9", "1", "c").await,
        ("e1".to_owned(), 4)
    );
}

/// A master, its replica not started yet, and a broker with `wait_replicas = 1` whose
/// room `r` is subscribed.
async fn held_room() -> (RedisServer, RedisServer, super::RedisBroker, BrokerEvents) {
    let master = RedisServer::start();
    let replica = RedisNode::new()
        .args(["--replicaof", "127.0.0.1", &master.port().to_string()])
        .stopped();
    let (broker, events) = start(super::RedisSettings {
        wait_replicas: 1,
        ..settings(&master.url(), 100)
    });
    wait_health(&broker, BrokerHealth::Up).await;
    broker.subscribe("r").await.unwrap();
    (master, replica, broker, events)
}

#[tokio::test]
async fn with_wait_replicas_a_message_is_sent_once_a_replica_has_it() {
    let (_master, mut replica, broker, mut events) = held_room().await;
    // No replica: WAIT does not confirm; the sender is told its fate is unknown, and the
    // message is held, not delivered.
    let refused = broker.publish("r", "ann", "held").await;
    assert_eq!(refused.err(), Some(crate::broker::BrokerError::Interrupted));
    let quiet = tokio::time::sleep(std::time::Duration::from_millis(300));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            event = futures::StreamExt::next(&mut events) => match event {
                Some(BrokerEvent::Health(_)) => {}
                other => panic!("delivered before a replica had it: {other:?}"),
            },
        }
    }
    // A replica: the publisher's retry confirms the held message and releases it, with
    // nobody publishing; then messages are sent at once.
    replica.restart();
    let held = next_message(&mut events).await;
    assert_eq!(held.seq, 1);
    assert!(held.json.contains(r#""text":"held""#), "{}", held.json);
    // (A WAIT may still time out while the new replica settles: then the message is held
    // and released by the retry; its sender tries again.)
    let start = std::time::Instant::now();
    let sent = loop {
        match broker.publish("r", "ann", "sent").await {
            Ok(sent) => break sent,
            Err(_) => assert!(start.elapsed() < super::tests::WAIT, "never confirmed"),
        }
    };
    for seq in 2..=sent.seq {
        assert_eq!(next_message(&mut events).await.seq, seq);
    }
}

#[tokio::test]
async fn with_wait_replicas_a_repeat_is_acknowledged_only_once_its_first_message_went_out() {
    use crate::broker::{BrokerError, Outgoing, Publication};
    let (_master, mut replica, broker, mut events) = held_room().await;
    let once = || Outgoing {
        from: "ann",
        text: "once",
        dedupe_key: Some("k1"),
        sent_by: None,
    };
    // No replica: the first is held, its fate unknown to its sender...
    let first = broker.publish_message("r", once()).await;
    assert_eq!(first.err(), Some(BrokerError::Interrupted));
    // ...and the sender's retry (a repeat of the key) is not acknowledged either while that
    // first message is still held and delivered to nobody.
    let repeat = broker.publish_message("r", once()).await;
    assert_eq!(
        repeat.err(),
        Some(BrokerError::Interrupted),
        "a repeat was acknowledged before its first message went out"
    );
    // A replica: the held message goes out (once), then a repeat is acknowledged with it.
    replica.restart();
    let held = next_message(&mut events).await;
    assert_eq!(held.seq, 1);
    assert!(held.json.contains(r#""text":"once""#), "{}", held.json);
    let start = std::time::Instant::now();
    let answer = loop {
        match broker.publish_message("r", once()).await {
            Ok(answer) => break answer,
            Err(_) => assert!(start.elapsed() < super::tests::WAIT, "never confirmed"),
        }
    };
    assert!(
        matches!(answer, Publication::Repeat { seq: 1, .. }),
        "{answer:?}"
    );
}

/// On a Redis Cluster the scripts get `MYID:RUN_ID` of the master the broker knows for the
/// room's slot: run there, they behave as with one Redis; run on another node (a failover the
/// broker has not followed yet), they refuse with READONLY before writing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_script_run_by_another_master_than_the_one_named_refuses() {
    let cluster =
        tokio::task::block_in_place(|| wsgrace_kit::redis_cluster::RedisCluster::start(3, 0));
    let port = tokio::task::block_in_place(|| cluster.master_of("t:{r}:room")).unwrap();
    let other = cluster
        .master_ports()
        .into_iter()
        .find(|p| *p != port)
        .unwrap();
    let cli = |port: u16, args: &[&str]| {
        tokio::task::block_in_place(|| cluster.command(port, args)).unwrap()
    };
    let myid = cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
    let other_id = cli(other, &["CLUSTER", "MYID"]).trim().to_owned();
    let info = cli(port, &["INFO", "server"]);
    let run = super::target::run_id(&info).unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let named = format!("{myid}:{run}");
    assert_eq!(publish(&mut con, &named, "e1").await, ("e1".to_owned(), 1));
    assert_eq!(publish(&mut con, &named, "xx").await, ("e1".to_owned(), 2));
    assert_eq!(publish(&mut con, "?", "xx").await, ("e1".to_owned(), 3));
    assert_eq!(
        snapshot(&mut con, &named, "xx").await,
        ("e1".to_owned(), 3, 0)
    );
    // The broker's map names another node for this slot: refused, nothing written.
    for script in [PUBLISH_SCRIPT, SNAPSHOT_SCRIPT] {
        let wrong = format!("{other_id}:{run}");
        let script_object = Script::new(script);
        let mut invocation = script_object.prepare_invoke();
        if script == PUBLISH_SCRIPT {
            invocation
                .key("t:{r}:room")
                .key("t:{r}:history")
                .key("t:{r}:pending")
                .arg("t:{r}:room")
                .arg("{")
                .arg("e9")
                .arg(100)
                .arg(60_000)
                .arg("")
                .arg(0)
                .arg(&wrong)
                .arg("0")
                .arg(3);
        } else {
            invocation
                .key("t:{r}:room")
                .key("t:{r}:history")
                .key("t:{r}:pending")
                .arg("e9")
                .arg(60_000)
                .arg(&wrong)
                .arg("0");
        }
        let refused = invocation.invoke_async::<Value>(&mut con).await;
        let err = refused.expect_err("a script run by another master than the one named");
        assert!(super::keys::is_readonly(&err), "{err}");
    }
    assert_eq!(
        snapshot(&mut con, &named, "xx").await,
        ("e1".to_owned(), 3, 0)
    );
}
