//! SPEC "Cluster" (`broker.kind = "redis"`), "Resume" across nodes, "Shutdown" step 6 and
//! the `broker.*` and `history.*` keys, against real `wsgrace` binaries sharing a real
//! `redis-server`. Each test starts its own Redis on a free loopback port
//! (the kit's `redis` module) and uses its own `broker.key_prefix`. In order:
//!
//! - rooms span nodes: one seq order for every member on every node, concurrent senders on
//!   both nodes included; one epoch for a room however its first members arrive;
//! - resume on the same node and on the other, under traffic, beyond the history, with
//!   another epoch, without history, a replay longer than the outbound queue, a room
//!   expired by `history.ttl_ms` (with and without open sessions);
//! - a rolling restart: the drained node's clients are told `going_away`, wait the delay,
//!   and resume on the other node without a gap or a duplicate;
//! - the broker's outage, a node cut off from Redis (a TCP proxy), a join the broker cannot
//!   finish, a drain during an outage, a node started before its broker: readiness, 503,
//!   `error` `unavailable`, recovery without a restart, catching up, the `epoch` frame
//!   after Redis lost its data, one log line per change of state;
//! - the Redis password never reaches stderr; bad `broker.*` keys exit 2 naming the key.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::wsgrace;
use wsgrace_kit::chat::{assert_contiguous, join, query, upgrade_status, Frame, Member, Msg, WAIT};
use wsgrace_kit::frame::OP_CLOSE;
use wsgrace_kit::free_port;
use wsgrace_kit::http::{http_get, http_get_body, metric, wait_status};
use wsgrace_kit::proxy::TcpProxy;
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::traffic::{resume_rounds, spawn_talker};

/// A node's config: the Redis broker at `url` under `prefix`, then `extra` TOML tables.
fn config(url: &str, prefix: &str, extra: &str) -> String {
    format!("[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}")
}

/// A key prefix unique to this test run and `test`.
fn prefix(test: &str) -> String {
    format!("wsgrace-test-{}-{test}", std::process::id())
}

/// Starts a node with `config` and waits until it is ready: the broker connects in the
/// background, and until it has, upgrades get 503.
async fn start_node(config: &str) -> ServerProcess {
    wsgrace().start_ready(config).await
}

/// Polls `/metrics` until `sample` is at least `value`.
async fn wait_metric_at_least(addr: SocketAddr, sample: &str, value: f64) {
    let start = Instant::now();
    loop {
        let now = metric(addr, sample).await;
        if now >= value {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{sample} stayed at {now}, below {value}, for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stderr lines of `node` that contain `needle`.
fn log_lines(node: &ServerProcess, needle: &str) -> Vec<String> {
    node.stderr()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

const BROKER_REFUSED: &str = "wsgrace_upgrades_refused_total{reason=\"broker_unavailable\"}";

#[tokio::test]
async fn members_on_two_nodes_see_each_others_messages() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("two-nodes"), "");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    assert_eq!((ann.welcome.seq, bob.welcome.seq), (0, 0));
    assert_eq!(ann.welcome.epoch, bob.welcome.epoch, "one room, one epoch");

    ann.send("from A").await;
    let expected = Msg {
        seq: 1,
        from: "ann".into(),
        text: "from A".into(),
    };
    assert_eq!(ann.message().await, expected, "the sender's receipt");
    assert_eq!(bob.message().await, expected, "on the other node");
    bob.send("from B").await;
    let expected = Msg {
        seq: 2,
        from: "bob".into(),
        text: "from B".into(),
    };
    assert_eq!(bob.message().await, expected);
    assert_eq!(ann.message().await, expected);

    // Any text crosses the broker unchanged: quotes, colons, escapes, non-ASCII, and a
    // message close to session.max_frame_bytes (64 KiB).
    let tricky = "he said \"hi\": 1:2:3\n\tback\\slash \u{2713} \u{1F389} {\"type\":\"welcome\"}";
    let big = "z".repeat(60_000);
    for (seq, text) in [(3, tricky), (4, big.as_str())] {
        ann.send(text).await;
        for member in [&mut ann, &mut bob] {
            let msg = member.message().await;
            assert_eq!((msg.seq, msg.text.len()), (seq, text.len()));
            assert!(msg.text == text, "seq {seq} arrived changed");
        }
    }
    let epoch = bob.welcome.epoch.clone();
    let mut replayed = join(&b, "r", "late", Some((2, &epoch))).await;
    assert_eq!(replayed.welcome.missed, Some(2), "{:?}", replayed.welcome);
    assert!(replayed.message().await.text == tricky, "replayed changed");
    assert!(replayed.message().await.text == big, "replayed changed");

    // The same room name under another key prefix is another room.
    let c = start_node(&config(&redis.url(), &prefix("two-nodes-other"), "")).await;
    let mut cy = join(&c, "r", "cy", None).await;
    assert_eq!(cy.welcome.seq, 0, "{:?}", cy.welcome);
    assert_eq!(cy.say("elsewhere").await.last().map(|m| m.seq), Some(1));
    ann.send("last").await;
    for member in [&mut ann, &mut bob] {
        let msg = member.message().await;
        assert_eq!((msg.seq, msg.text.as_str()), (5, "last"), "{msg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_on_both_nodes_sees_one_order_under_concurrent_senders() {
    const SENDERS: usize = 4;
    const PER_SENDER: u64 = 200;
    const MEMBERS: usize = 6;
    const TOTAL: u64 = SENDERS as u64 * PER_SENDER;
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("order"), "");
    let nodes = [start_node(&cfg).await, start_node(&cfg).await];
    // Members alternate between the nodes; the first four send, two on each node.
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(join(&nodes[i % 2], "order", &format!("m{i}"), None).await);
    }
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (i, member) in members.into_iter().enumerate() {
        let Member { mut tx, mut rx, .. } = member;
        readers.push(tokio::spawn(
            async move { rx.messages_through(TOTAL).await },
        ));
        if i < SENDERS {
            senders.push(tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    tx.send(&format!("m{i}-{n}")).await;
                }
                tx
            }));
        }
    }
    let mut keep_open = Vec::new();
    for sender in senders {
        keep_open.push(sender.await.expect("sender task"));
    }
    let mut seen = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let messages = reader.await.expect("reader task");
        assert_contiguous(&format!("m{i}"), &messages, 1, TOTAL);
        seen.push(
            messages
                .into_iter()
                .map(|m| (m.from, m.text))
                .collect::<Vec<_>>(),
        );
    }
    for (i, order) in seen.iter().enumerate().skip(1) {
        if let Some(at) = order.iter().zip(&seen[0]).position(|(x, y)| x != y) {
            panic!(
                "m{i} (node {}) and m0 (node 0) disagree at seq {}: {:?} vs {:?}",
                i % 2,
                at + 1,
                order[at],
                seen[0][at]
            );
        }
    }
    // Every message was delivered once, and each sender's in the order it sent them.
    for i in 0..SENDERS {
        let own: Vec<&str> = seen[0]
            .iter()
            .filter(|(from, _)| *from == format!("m{i}"))
            .map(|(_, text)| text.as_str())
            .collect();
        let sent: Vec<String> = (0..PER_SENDER).map(|n| format!("m{i}-{n}")).collect();
        assert_eq!(own, sent, "m{i}'s messages as everyone saw them");
    }
}

/// A member that joins while messages flow (no resume) gets every message after its
/// welcome's seq, from seq+1 on, none twice, whichever node it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_under_traffic_get_every_message_after_their_welcome() {
    const LAST: u64 = 400;
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("join-traffic"), "");
    let nodes = [start_node(&cfg).await, start_node(&cfg).await];
    let talker = spawn_talker(
        join(&nodes[0], "r", "talker", None).await,
        "t",
        LAST,
        Duration::from_millis(2),
    );
    let mut progress = talker.progress.clone();
    let mut readers = Vec::new();
    for i in 0..16u64 {
        // Spread the joins over the traffic.
        let at = i * LAST / 20;
        tokio::time::timeout(WAIT, progress.wait_for(|seq| *seq >= at))
            .await
            .expect("the talker stalled")
            .expect("the talker stopped early");
        let member = join(&nodes[i as usize % 2], "r", &format!("m{i}"), None).await;
        readers.push(tokio::spawn(async move {
            let first = member.welcome.seq + 1;
            let Member { mut rx, .. } = member;
            let messages = if first <= LAST {
                rx.messages_through(LAST).await
            } else {
                Vec::new()
            };
            (first, messages)
        }));
    }
    for (i, reader) in readers.into_iter().enumerate() {
        let (first, messages) = reader.await.expect("reader task");
        assert_contiguous(&format!("m{i}"), &messages, first, LAST);
    }
    talker.task.await.expect("talker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_a_new_room_at_once_on_both_nodes_agree_on_its_epoch() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("first-join"), "");
    let nodes = [start_node(&cfg).await, start_node(&cfg).await];
    let joins: Vec<_> = (0..10)
        .map(|i| {
            let url = nodes[i % 2].ws_url(&query("fresh", &format!("m{i}"), None));
            tokio::spawn(Member::join(url))
        })
        .collect();
    let mut members = Vec::new();
    for join in joins {
        members.push(join.await.expect("join task"));
    }
    let epoch = members[0].welcome.epoch.clone();
    for member in &members {
        assert_eq!(
            (member.welcome.seq, member.welcome.epoch.as_str()),
            (0, epoch.as_str()),
            "{:?}",
            member.welcome
        );
    }
    members[1].send("first").await;
    for member in &mut members {
        assert_eq!(member.message().await.seq, 1);
    }
    // The epoch the welcomes named is the one a resume checks against.
    let back = join(&nodes[0], "fresh", "back", Some((0, &epoch))).await;
    back.welcome.assert_resumed(Some(true), Some(1));
}

#[tokio::test]
async fn a_client_resumes_on_the_same_node_and_on_the_other() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("resume"), "");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let epoch = ann.welcome.epoch.clone();
    for n in 1..=3 {
        talker.say(&format!("t-{n}")).await;
    }
    assert_contiguous("ann", &ann.rx.messages_through(3).await, 1, 3);
    ann.leave().await;
    for n in 4..=6 {
        talker.say(&format!("t-{n}")).await;
    }

    // The same node.
    let mut ann = join(&a, "r", "ann", Some((3, &epoch))).await;
    ann.welcome
        .assert_resume(Some(true), Some(3), 6, epoch.as_str());
    let replay = ann.rx.messages_through(6).await;
    assert_contiguous("replay on A", &replay, 4, 6);
    assert_eq!(replay[0].text, "t-4");
    talker.say("t-7").await;
    assert_eq!(ann.message().await.seq, 7);
    drop(ann); // a lost connection this time
    for n in 8..=10 {
        talker.say(&format!("t-{n}")).await;
    }

    // The other node.
    let mut ann = join(&b, "r", "ann", Some((7, &epoch))).await;
    ann.welcome
        .assert_resume(Some(true), Some(3), 10, epoch.as_str());
    let replay = ann.rx.messages_through(10).await;
    assert_contiguous("replay on B", &replay, 8, 10);
    assert_eq!(
        replay.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["t-8", "t-9", "t-10"]
    );
    talker.say("t-11").await;
    let live = ann.message().await;
    assert_eq!((live.seq, live.text.as_str()), (11, "t-11"), "{live:?}");

    // Up to date: resumed, nothing missed.
    let bob = join(&b, "r", "bob", Some((11, &epoch))).await;
    bob.welcome.assert_resumed(Some(true), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_on_the_other_node_while_messages_flow() {
    const LAST: u64 = 500;
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("traffic"), "");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let node = if i % 2 == 0 { &a } else { &b };
        clients.push(join(node, "busy", &format!("c{i}"), None).await);
    }
    let talker = spawn_talker(
        join(&b, "busy", "talker", None).await,
        "t",
        LAST,
        Duration::from_millis(2),
    );
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, member)| {
            // Each resume goes to the node the client was not on.
            let nodes = if i % 2 == 0 {
                vec![a.addr, b.addr]
            } else {
                vec![b.addr, a.addr]
            };
            tokio::spawn(resume_rounds(
                member,
                nodes,
                12,
                LAST,
                talker.progress.clone(),
                100 + i as u64,
            ))
        })
        .collect();
    let mut missed = 0;
    for (i, run) in runs.into_iter().enumerate() {
        let (seen, client_missed) = tokio::time::timeout(WAIT * 3, run)
            .await
            .expect("a client did not finish in time")
            .expect("client task");
        assert_contiguous(&format!("c{i}"), &seen, 1, LAST);
        missed += client_missed;
    }
    assert_contiguous("talker", &talker.task.await.expect("talker task"), 1, LAST);
    assert!(
        missed > 0,
        "no resume had anything to replay: the test tested nothing"
    );
}

#[tokio::test]
async fn beyond_the_history_or_in_another_epoch_nothing_is_resumed() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("history"), "[history]\nsize = 5\n");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    for n in 1..=10 {
        talker.say(&format!("t-{n}")).await;
    }
    // The stream holds 6..=10: after 5 everything is there, after 4 seq 5 is gone.
    let mut edge = join(&b, "r", "edge", Some((5, &epoch))).await;
    edge.welcome.assert_resume(Some(true), Some(5), 10, &epoch);
    assert_contiguous("edge", &edge.rx.messages_through(10).await, 6, 10);
    let mut late = join(&b, "r", "late", Some((4, &epoch))).await;
    late.welcome.assert_resume(Some(false), None, 10, &epoch);
    let mut wrong = join(&b, "r", "wrong", Some((8, "another-epoch"))).await;
    wrong.welcome.assert_not_resumed(10);
    let mut ahead = join(&b, "r", "ahead", Some((11, &epoch))).await;
    assert_eq!(ahead.welcome.resumed, Some(false), "{:?}", ahead.welcome);
    // The largest `since` there is (Lua's numbers are doubles: no rounding into range).
    let far = join(&a, "r", "far", Some((i64::MAX as u64, &epoch))).await;
    far.welcome.assert_not_resumed(10);
    far.leave().await;

    talker.say("live").await;
    for member in [&mut edge, &mut late, &mut wrong, &mut ahead] {
        let next = member.message().await;
        assert_eq!(
            (next.seq, next.text.as_str()),
            (11, "live"),
            "{}: replayed something, or missed the live message",
            member.welcome.name
        );
    }
}

/// Redis may lose a room's history stream alone (an operator's `maxmemory` policy that
/// evicts keys): a resume then cannot be given what it missed, and must say so.
#[tokio::test]
async fn a_history_stream_lost_alone_is_not_resumed() {
    let redis = RedisServer::start();
    let key_prefix = prefix("lost-stream");
    let a = start_node(&config(&redis.url(), &key_prefix, "")).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    for n in 1..=6 {
        talker.say(&format!("t-{n}")).await;
    }
    assert_eq!(
        redis.command(&format!("DEL {key_prefix}:{{r}}:history")),
        ":1"
    );
    let member = join(&a, "r", "m", Some((3, &epoch))).await;
    assert_eq!(
        member.welcome.resumed,
        Some(false),
        "a resume with nothing to replay it from: {:?}",
        member.welcome
    );
}

#[tokio::test]
async fn without_history_no_resume_succeeds_on_any_node() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("no-history"), "[history]\nsize = 0\n");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    talker.say("t-1").await;
    talker.say("t-2").await;
    for (node, since) in [(&a, 1), (&b, 1), (&b, 2)] {
        let member = join(node, "r", "m", Some((since, &epoch))).await;
        assert_eq!(
            (member.welcome.resumed, member.welcome.seq),
            (Some(false), 2),
            "since {since}: {:?}",
            member.welcome
        );
        member.leave().await;
    }
}

#[tokio::test]
async fn since_0_in_a_new_room_is_a_resume_with_nothing_missed() {
    let redis = RedisServer::start();
    let a = start_node(&config(&redis.url(), &prefix("since-0"), "")).await;
    let member = Member::join(a.ws_url("?room=brand-new&name=m&since=0")).await;
    member.welcome.assert_resumed(Some(true), Some(0));
    assert_eq!(member.welcome.seq, 0);
}

/// As in tests/resume.rs: a replay longer than `session.outbound_queue` is what the client
/// asked for, and must arrive whole, here from the Redis stream on the other node.
#[tokio::test]
async fn a_replay_longer_than_the_outbound_queue_arrives_whole_on_the_other_node() {
    let redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        &prefix("long-replay"),
        "[session]\noutbound_queue = 64\n",
    );
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    for n in 1..=300 {
        talker.say(&format!("t-{n}")).await;
    }
    let mut late = join(&b, "r", "late", Some((0, &epoch))).await;
    late.welcome.assert_resumed(Some(true), Some(300));
    let replay = late.rx.messages_through(300).await;
    assert_contiguous("the replay", &replay, 1, 300);
}

#[tokio::test]
async fn a_room_idle_past_the_ttl_is_not_resumed_and_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let key_prefix = prefix("ttl");
    let cfg = config(&redis.url(), &key_prefix, "[history]\nttl_ms = 1000\n");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut talker = join(&a, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    talker.say("t-1").await;
    talker.say("t-2").await;
    talker.leave().await;
    let said = Instant::now();
    let fresh = join(&b, "r", "fresh", Some((1, &epoch))).await;
    assert_eq!(fresh.welcome.resumed, Some(true), "{:?}", fresh.welcome);
    fresh.leave().await;
    // Redis drops the room's keys a second after its last message.
    let key = format!("EXISTS {key_prefix}:{{r}}:room");
    let start = Instant::now();
    while redis.command(&key) != ":0" {
        assert!(start.elapsed() < WAIT, "the room's hash never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        said.elapsed() >= Duration::from_millis(900),
        "expired too early"
    );
    let late = join(&b, "r", "late", Some((1, &epoch))).await;
    late.welcome.assert_not_resumed(0);
    assert_ne!(
        late.welcome.epoch, epoch,
        "an expired room starts a new epoch"
    );
}

/// Redis drops a room idle past `history.ttl_ms` even while members are connected (they
/// just had nothing to say): its next message starts a new epoch, and the open sessions on
/// every node must be told (`epoch` frame) before it, or they would see seqs jump back.
#[tokio::test]
async fn a_room_that_expires_under_open_sessions_tells_them_the_new_epoch() {
    let redis = RedisServer::start();
    let key_prefix = prefix("ttl-open");
    let cfg = config(&redis.url(), &key_prefix, "[history]\nttl_ms = 1000\n");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    let old_epoch = ann.welcome.epoch.clone();
    ann.send("t-1").await;
    ann.send("t-2").await;
    for member in [&mut ann, &mut bob] {
        assert_contiguous("before", &member.rx.messages_through(2).await, 1, 2);
    }
    let key = format!("EXISTS {key_prefix}:{{r}}:room");
    let start = Instant::now();
    while redis.command(&key) != ":0" {
        assert!(start.elapsed() < WAIT, "the room's hash never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.send("after").await;
    let mut epochs = Vec::new();
    for member in [&mut ann, &mut bob] {
        let name = member.welcome.name.clone();
        let (epoch, seq) = match member.next().await {
            Frame::Epoch { epoch, seq, .. } => (epoch, seq),
            other => panic!("{name}: expected an epoch frame before the new epoch, got {other:?}"),
        };
        assert_ne!(epoch, old_epoch, "{name}");
        let msg = member.message().await;
        assert_eq!((msg.seq, msg.text.as_str()), (seq + 1, "after"), "{name}");
        epochs.push(epoch);
    }
    assert_eq!(epochs[0], epochs[1], "the nodes disagree on the new epoch");
}

/// What one client of the drained node went through.
struct Moved {
    messages: Vec<Msg>,
    close: Option<u16>,
    delay_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_moves_clients_to_the_other_node_without_a_gap() {
    const LAST: u64 = 300;
    const SPREAD_MS: u64 = 500;
    let redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        &prefix("rolling"),
        &format!("[shutdown]\nreconnect_spread_ms = {SPREAD_MS}\n"),
    );
    let mut a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let observer = join(&b, "r", "observer", None).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(join(&a, "r", &format!("c{i}"), None).await);
    }
    let talker = spawn_talker(
        join(&b, "r", "talker", None).await,
        "t",
        LAST,
        Duration::from_millis(4),
    );
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(4);
    let b_addr = b.addr;
    let moves: Vec<_> = clients
        .into_iter()
        .map(|mut member| {
            let started = started_tx.clone();
            tokio::spawn(async move {
                let name = member.welcome.name.clone();
                let epoch = member.welcome.epoch.clone();
                let mut messages: Vec<Msg> = Vec::new();
                let delay_ms = loop {
                    match member.next().await {
                        Frame::Message(msg) => {
                            messages.push(msg);
                            if messages.len() == 10 {
                                let _ = started.send(()).await;
                            }
                        }
                        Frame::GoingAway { reconnect_after_ms } => break reconnect_after_ms,
                        other => panic!("{name}: {other:?} before going_away"),
                    }
                };
                let close = match member.next().await {
                    Frame::Close(code, _) => code,
                    other => panic!("{name}: after going_away came {other:?}, not the close"),
                };
                assert!(member.rx.finish().await, "{name}: the close was not clean");
                drop(member);
                assert!(
                    delay_ms <= SPREAD_MS,
                    "{name}: reconnect_after_ms {delay_ms} > {SPREAD_MS}"
                );
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let since = messages.last().map_or(0, |m| m.seq);
                let url = format!(
                    "ws://{b_addr}/ws{}",
                    query("r", &name, Some((since, &epoch)))
                );
                let mut member = Member::join(url).await;
                let welcome = member.welcome.clone();
                assert_eq!(
                    (welcome.resumed, welcome.epoch.as_str()),
                    (Some(true), epoch.as_str()),
                    "{name}: resume after {since}: {welcome:?}"
                );
                assert_eq!(welcome.missed, Some(welcome.seq - since), "{welcome:?}");
                if since < LAST {
                    messages.extend(member.rx.messages_through(LAST).await);
                }
                member.leave().await;
                Moved {
                    messages,
                    close,
                    delay_ms,
                }
            })
        })
        .collect();
    drop(started_tx);
    for _ in 0..4 {
        tokio::time::timeout(WAIT, started_rx.recv())
            .await
            .expect("the clients on A got no traffic")
            .expect("a client task ended before the traffic");
    }
    a.sigterm();
    let status = a.wait_exit(WAIT).await;
    assert!(status.success(), "node A exited with {status:?}");
    let mut delays = Vec::new();
    for (i, moved) in moves.into_iter().enumerate() {
        let moved = tokio::time::timeout(WAIT * 2, moved)
            .await
            .expect("a client did not finish in time")
            .expect("client task");
        assert_eq!(moved.close, Some(1001), "c{i}'s close code");
        assert_contiguous(&format!("c{i}"), &moved.messages, 1, LAST);
        let wrong = moved
            .messages
            .iter()
            .find(|m| m.text != format!("t-{}", m.seq));
        assert!(
            wrong.is_none(),
            "c{i}: {wrong:?} is not the talker's message of that seq"
        );
        delays.push(moved.delay_ms);
    }
    // Draining A did not disturb B.
    let Member { mut rx, .. } = observer;
    assert_contiguous("observer on B", &rx.messages_through(LAST).await, 1, LAST);
    assert_contiguous("talker on B", &talker.task.await.expect("talker"), 1, LAST);
    // Drawn at random: four equal draws from 0..=500 would be a one-in-10^8 chance.
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "every client was told the same delay: {delays:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_refuses_messages_and_the_nodes_recover_in_one_new_epoch() {
    let mut redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("outage"), "");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    let old_epoch = ann.welcome.epoch.clone();
    ann.send("before").await;
    for member in [&mut ann, &mut bob] {
        assert_eq!(member.message().await.seq, 1);
    }
    assert_eq!(metric(a.addr, "wsgrace_broker_up").await, 1.0);

    redis.kill();
    for node in [&a, &b] {
        let body = wait_status(node.addr, "/readyz", 503, WAIT).await;
        assert!(body.contains("broker unavailable"), "/readyz body {body:?}");
        assert_eq!(http_get(node.addr, "/healthz", &[]).await, 200);
        assert_eq!(
            upgrade_status(node.addr, &query("r", "carl", None)).await,
            503
        );
        assert!(metric(node.addr, BROKER_REFUSED).await >= 1.0);
        assert_eq!(metric(node.addr, "wsgrace_broker_up").await, 0.0);
    }
    // Open sessions stay open; what they say is refused to them alone.
    for member in [&mut ann, &mut bob] {
        member.send("lost in the outage").await;
        match member.next().await {
            Frame::Error { code, .. } => assert_eq!(code, "unavailable"),
            other => panic!("expected an `unavailable` error, got {other:?}"),
        }
    }

    redis.restart();
    for node in [&a, &b] {
        wait_status(node.addr, "/readyz", 200, WAIT).await;
        assert_eq!(metric(node.addr, "wsgrace_broker_up").await, 1.0);
    }
    ann.send("after").await;
    let mut new_epoch = None;
    for member in [&mut ann, &mut bob] {
        let name = member.welcome.name.clone();
        let mut frames = Vec::new();
        let live = loop {
            let frame = member.next().await;
            match &frame {
                Frame::Message(msg) if msg.text == "after" => break msg.clone(),
                Frame::Message(msg) => panic!("{name}: {msg:?} before the live message"),
                Frame::Epoch { .. } => frames.push(frame),
                other => panic!("{name}: {other:?} before the live message ({frames:?})"),
            }
            assert!(frames.len() < 10, "{name}: {frames:?}");
        };
        let [Frame::Epoch { room, epoch, seq }] = frames.as_slice() else {
            panic!(
                "{name}: not exactly one epoch frame before the new epoch's message: {frames:?}"
            );
        };
        assert_eq!(room, "r");
        assert_ne!(
            *epoch, old_epoch,
            "{name}: the epoch frame names the old epoch"
        );
        assert_eq!(
            live.seq,
            seq + 1,
            "{name}: {live:?} after the epoch frame at {seq}"
        );
        let first = new_epoch.get_or_insert_with(|| epoch.clone());
        assert_eq!(first, epoch, "the nodes disagree on the new epoch");
    }
    let new_epoch = new_epoch.expect("an epoch");
    // A client that resumes with the old epoch, on either node, is told it cannot.
    for node in [&a, &b] {
        let carl = join(node, "r", "carl", Some((1, &old_epoch))).await;
        assert_eq!(
            (carl.welcome.resumed, carl.welcome.epoch.as_str()),
            (Some(false), new_epoch.as_str()),
            "{:?}",
            carl.welcome
        );
        carl.leave().await;
    }
    // One line per change of state.
    for node in [&a, &b] {
        let down = log_lines(node, "broker down");
        let up = log_lines(node, "broker up");
        assert_eq!(down.len(), 1, "broker down lines: {down:#?}");
        assert_eq!(up.len(), 2, "broker up lines (start, recovery): {up:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_every_room_on_every_node_gets_its_epoch_frame() {
    const ROOMS: usize = 12;
    let mut redis = RedisServer::start();
    let cfg = config(&redis.url(), &prefix("many-rooms"), "");
    let nodes = [start_node(&cfg).await, start_node(&cfg).await];
    // Per room: a member on each node; the one on the first node speaks.
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = format!("room{r}");
        let mut pair = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            pair.push(join(node, &room, &format!("m{n}"), None).await);
        }
        let old_epoch = pair[0].welcome.epoch.clone();
        // Rooms of different lengths, so that the new seqs cannot all be guessed.
        for k in 0..=(r % 3) {
            pair[0].send(&format!("before-{k}")).await;
        }
        for member in &mut pair {
            member.rx.messages_through(1 + (r % 3) as u64).await;
        }
        rooms.push((room, old_epoch, pair));
    }
    redis.kill();
    for node in &nodes {
        wait_status(node.addr, "/readyz", 503, WAIT).await;
    }
    redis.restart();
    for node in &nodes {
        wait_status(node.addr, "/readyz", 200, WAIT).await;
    }
    for (room, old_epoch, pair) in &mut rooms {
        pair[0].send("after").await;
        let mut epochs = Vec::new();
        for member in pair.iter_mut() {
            let who = format!("{} in {room}", member.welcome.name);
            let (epoch, seq) = match member.next().await {
                Frame::Epoch {
                    room: named,
                    epoch,
                    seq,
                } => {
                    assert_eq!(named, *room, "{who}");
                    (epoch, seq)
                }
                other => panic!("{who}: expected an epoch frame, got {other:?}"),
            };
            assert_ne!(epoch, *old_epoch, "{who}");
            let msg = member.message().await;
            assert_eq!((msg.seq, msg.text.as_str()), (seq + 1, "after"), "{who}");
            epochs.push(epoch);
        }
        assert_eq!(epochs[0], epochs[1], "the nodes disagree on {room}'s epoch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_catches_up_when_it_is_back() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let key_prefix = prefix("partition");
    let a = start_node(&config(&proxy.redis_url(), &key_prefix, "")).await;
    let b = start_node(&config(&redis.url(), &key_prefix, "")).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut talker = join(&b, "r", "talker", None).await;
    for n in 1..=3 {
        talker.say(&format!("t-{n}")).await;
    }
    let mut seen = ann.rx.messages_through(3).await;

    proxy.cut();
    wait_status(a.addr, "/readyz", 503, WAIT).await;
    // B carries on meanwhile.
    for n in 4..=8 {
        talker.say(&format!("t-{n}")).await;
    }
    ann.send("from the cut-off node").await;
    match ann.next().await {
        Frame::Error { code, .. } => assert_eq!(code, "unavailable"),
        other => panic!("expected an `unavailable` error, got {other:?}"),
    }
    proxy.restore();
    wait_status(a.addr, "/readyz", 200, WAIT).await;
    talker.say("t-9").await;
    seen.extend(ann.rx.messages_through(9).await);
    assert_contiguous("ann on the node that was cut off", &seen, 1, 9);
    let texts: Vec<&str> = seen.iter().map(|m| m.text.as_str()).collect();
    let expected: Vec<String> = (1..=9).map(|n| format!("t-{n}")).collect();
    assert_eq!(texts, expected);
    let down = log_lines(&a, "broker down");
    assert_eq!(down.len(), 1, "broker down lines: {down:#?}");
}

/// The catch-up after a cut is, like a replay, what the members are owed: a catch-up
/// longer than `session.outbound_queue` must arrive whole, not end in 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_longer_than_the_outbound_queue_arrives_whole() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let key_prefix = prefix("long-catch-up");
    let small_queue = "[session]\noutbound_queue = 64\n";
    let a = start_node(&config(&proxy.redis_url(), &key_prefix, small_queue)).await;
    let b = start_node(&config(&redis.url(), &key_prefix, small_queue)).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut talker = join(&b, "r", "talker", None).await;
    proxy.cut();
    wait_status(a.addr, "/readyz", 503, WAIT).await;
    for n in 1..=200 {
        talker.say(&format!("t-{n}")).await;
    }
    proxy.restore();
    wait_status(a.addr, "/readyz", 200, WAIT).await;
    talker.say("t-201").await;
    let seen = ann.rx.messages_through(201).await;
    assert_contiguous("ann", &seen, 1, 201);
}

#[tokio::test]
async fn a_node_cut_off_longer_than_the_history_closes_its_sessions_1013() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let key_prefix = prefix("partition-trimmed");
    let small = "[history]\nsize = 3\n";
    let a = start_node(&config(&proxy.redis_url(), &key_prefix, small)).await;
    let b = start_node(&config(&redis.url(), &key_prefix, small)).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let epoch = ann.welcome.epoch.clone();
    let mut talker = join(&b, "r", "talker", None).await;
    talker.say("t-1").await;
    assert_eq!(ann.message().await.seq, 1);

    proxy.cut();
    wait_status(a.addr, "/readyz", 503, WAIT).await;
    for n in 2..=10 {
        talker.say(&format!("t-{n}")).await;
    }
    proxy.restore();
    wait_status(a.addr, "/readyz", 200, WAIT).await;
    // Seqs 2..=6 are gone from the history: ann cannot be given every seq, so she must not
    // be given a gap either; her session ends and her client resumes.
    match ann.next().await {
        Frame::Close(code, reason) => assert_eq!(code, Some(1013), "{reason}"),
        other => panic!("expected a 1013 close, got {other:?}"),
    }
    ann.rx.finish().await;
    let back = join(&a, "r", "ann", Some((1, &epoch))).await;
    back.welcome.assert_not_resumed(10);
}

/// Redis restarts empty and the room's new epoch gets messages from one node while the
/// other is still cut off. When that node is back, its open sessions are told the new epoch
/// and then given the new epoch's messages from its history, from seq 1, then live ones:
/// the messages are in the history, so nobody has to miss them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_redis_restarted_empty_gets_the_new_epochs_messages() {
    let mut redis = RedisServer::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let key_prefix = prefix("late-epoch");
    let a = start_node(&config(&proxy.redis_url(), &key_prefix, "")).await;
    let b = start_node(&config(&redis.url(), &key_prefix, "")).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    let old_epoch = ann.welcome.epoch.clone();
    bob.say("old-1").await;
    assert_eq!(ann.message().await.text, "old-1");

    proxy.cut();
    redis.kill();
    wait_status(a.addr, "/readyz", 503, WAIT).await;
    wait_status(b.addr, "/readyz", 503, WAIT).await;
    redis.restart();
    wait_status(b.addr, "/readyz", 200, WAIT).await;
    bob.send("new-1").await;
    bob.send("new-2").await;
    let mut bob_saw = Vec::new();
    while bob_saw.len() < 3 {
        bob_saw.push(bob.next().await);
    }
    let Frame::Epoch {
        epoch: new_epoch, ..
    } = &bob_saw[0]
    else {
        panic!("bob: no epoch frame first: {bob_saw:?}");
    };
    assert_ne!(*new_epoch, old_epoch);

    proxy.restore();
    wait_status(a.addr, "/readyz", 200, WAIT).await;
    bob.send("live").await;
    let mut ann_saw = Vec::new();
    loop {
        let frame = ann.next().await;
        let done = matches!(&frame, Frame::Message(m) if m.text == "live")
            || matches!(frame, Frame::Close(..) | Frame::Ended(_));
        ann_saw.push(frame);
        if done || ann_saw.len() > 10 {
            break;
        }
    }
    // Exactly what bob saw of the new epoch, then the live message.
    let mut expected = bob_saw.clone();
    expected.push(bob.next().await);
    assert_eq!(ann_saw, expected, "ann on the node that came back late");
}

#[tokio::test]
async fn a_join_the_broker_cannot_finish_is_closed_1013() {
    let mut redis = RedisServer::start();
    let a = start_node(&config(&redis.url(), &prefix("lost-join"), "")).await;
    // Redis holds every command from now on: the join's SUBSCRIBE and history read wait.
    assert_eq!(redis.command("CLIENT PAUSE 15000 ALL"), "+OK");
    let mut client = RawClient::connect(a.addr, &format!("/ws{}", query("new", "x", None))).await;
    redis.kill();
    let frame = client.next_frame().await.expect("a frame, not the end");
    assert_eq!(
        frame.opcode,
        OP_CLOSE,
        "not a close but {:?}",
        String::from_utf8_lossy(&frame.payload)
    );
    assert_eq!(frame.close_code(), Some(1013), "{}", frame.close_reason());
}

#[tokio::test]
async fn a_node_drains_promptly_during_an_outage() {
    let mut redis = RedisServer::start();
    let mut a = start_node(&config(&redis.url(), &prefix("drain-outage"), "")).await;
    let mut ann = join(&a, "r", "ann", None).await;
    ann.say("before").await;
    redis.kill();
    wait_status(a.addr, "/readyz", 503, WAIT).await;
    ann.send("refused").await;
    match ann.next().await {
        Frame::Error { code, .. } => assert_eq!(code, "unavailable"),
        other => panic!("expected an `unavailable` error, got {other:?}"),
    }
    let signalled = Instant::now();
    a.sigterm();
    assert!(
        matches!(ann.next().await, Frame::GoingAway { .. }),
        "no going_away"
    );
    match ann.next().await {
        Frame::Close(code, _) => assert_eq!(code, Some(1001)),
        other => panic!("expected the shutdown close, got {other:?}"),
    }
    assert!(ann.rx.finish().await, "the close was not clean");
    let status = a.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
    // Nothing was waiting for Redis: the drain is over once its one client acked.
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the drain took {:?} with Redis down",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn a_node_started_before_its_broker_becomes_ready_when_the_broker_comes() {
    let mut redis = RedisServer::stopped();
    let a = wsgrace().start(&config(&redis.url(), &prefix("late-broker"), ""));
    assert_eq!(http_get(a.addr, "/healthz", &[]).await, 200);
    let (status, body) = http_get_body(a.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("broker unavailable"), "/readyz body {body:?}");
    assert_eq!(upgrade_status(a.addr, &query("r", "ann", None)).await, 503);
    assert_eq!(metric(a.addr, BROKER_REFUSED).await, 1.0);
    assert_eq!(metric(a.addr, "wsgrace_broker_up").await, 0.0);
    // Several failed attempts.
    wait_metric_at_least(a.addr, "wsgrace_broker_errors_total", 3.0).await;
    assert_eq!(http_get_body(a.addr, "/readyz").await.0, 503);

    redis.restart();
    wait_status(a.addr, "/readyz", 200, WAIT).await;
    let mut ann = join(&a, "r", "ann", None).await;
    assert_eq!(ann.say("hello").await.last().map(|m| m.seq), Some(1));
    let down = log_lines(&a, "broker down");
    let up = log_lines(&a, "broker up");
    assert_eq!(down.len(), 1, "broker down lines: {down:#?}");
    assert_eq!(up.len(), 1, "broker up lines: {up:#?}");
    let port = redis.port().to_string();
    assert!(up[0].contains(&port), "{up:?}");
}

#[tokio::test]
async fn the_redis_password_never_reaches_stderr() {
    const PASSWORD: &str = "s3cret-Pa55word-7f1e";
    const WRONG: &str = "wr0ng-Pa55word-c29a";
    let mut redis = RedisServer::start_with_password(PASSWORD);
    let port = redis.port();
    let with_password = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let user_and_password = format!("redis://default:{PASSWORD}@127.0.0.1:{port}/0");
    let wrong = format!("redis://default:{WRONG}@127.0.0.1:{port}/0");
    let key_prefix = prefix("password");
    let mut a = wsgrace().start(&config(&with_password, &key_prefix, ""));
    // The environment variable overrides the file (which names a port nobody listens on).
    let mut b = wsgrace()
        .env("WSGRACE_REDIS_URL", &user_and_password)
        .start(&config("redis://127.0.0.1:1/0", &key_prefix, ""));
    // ... or stands in for a URL the file does not give.
    let mut d = wsgrace()
        .env("WSGRACE_REDIS_URL", &with_password)
        .start(&format!(
            "[broker]\nkind = \"redis\"\nkey_prefix = \"{key_prefix}\"\n"
        ));
    let mut c = wsgrace().start(&config(&wrong, &key_prefix, ""));
    for node in [&a, &b, &d] {
        wait_status(node.addr, "/readyz", 200, WAIT).await;
    }
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    let mut dan = join(&d, "r", "dan", None).await;
    ann.send("through the same Redis").await;
    for member in [&mut ann, &mut bob, &mut dan] {
        assert_eq!(member.message().await.text, "through the same Redis");
    }
    c.wait_for_log("broker down").await;
    assert_eq!(http_get_body(c.addr, "/readyz").await.0, 503);
    ann.leave().await;
    bob.leave().await;
    dan.leave().await;

    // An outage: the errors of losing Redis and of reconnecting (with AUTH again) are
    // logged too.
    redis.kill();
    for node in [&a, &b, &d] {
        wait_status(node.addr, "/readyz", 503, WAIT).await;
    }
    redis.restart();
    for node in [&a, &b, &d] {
        wait_status(node.addr, "/readyz", 200, WAIT).await;
    }

    // The drain and its report are logged too.
    for node in [&mut a, &mut b, &mut c, &mut d] {
        node.sigterm();
        let status = node.wait_exit(WAIT).await;
        assert!(status.success(), "{status:?}");
    }
    for (name, node) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        let stderr = node.stderr();
        for secret in [PASSWORD, WRONG] {
            assert!(
                !stderr.contains(secret),
                "node {name} logged a password:\n{stderr}"
            );
        }
    }
    let up = log_lines(&a, "broker up");
    assert!(
        up.iter()
            .any(|l| l.contains("***") && l.contains(&port.to_string())),
        "the redacted URL is named: {up:?}"
    );
}

#[test]
fn bad_broker_keys_exit_2_naming_the_key() {
    const SECRET: &str = "top-5ecret-in-url";
    // No server runs there: a config that slipped through would fail to connect, not reach a
    // Redis of the machine.
    let port = free_port();
    let mut cases = vec![
        (
            "[broker]\nkind = \"redis\"\n".to_owned(),
            vec![],
            "broker.redis_url",
        ),
        (config("", "p", ""), vec![], "broker.redis_url"),
        (
            config(&format!("http://127.0.0.1:{port}/0"), "p", ""),
            vec![],
            "broker.redis_url",
        ),
        (
            config(&format!("ftp://user:{SECRET}@127.0.0.1/0"), "p", ""),
            vec![],
            "broker.redis_url",
        ),
        (
            config(&format!("redis://127.0.0.1:{port}/0"), "p", ""),
            vec![(
                "WSGRACE_REDIS_URL",
                format!("http://:{SECRET}@127.0.0.1:{port}/0"),
            )],
            "broker.redis_url",
        ),
        (
            "[broker]\nkind = \"zookeeper\"\n".to_owned(),
            vec![],
            "broker.kind",
        ),
    ];
    // TLS needs the `redis-tls` feature; without it a rediss:// URL is a config error.
    if cfg!(not(feature = "redis-tls")) {
        cases.push((
            config(&format!("rediss://:{SECRET}@127.0.0.1:{port}/0"), "p", ""),
            vec![],
            "broker.redis_url",
        ));
    }
    for (text, env, key) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let exit = wsgrace().envs(&env).run_to_exit(&text);
        assert_eq!(
            exit.status.code(),
            Some(2),
            "config {text:?} env {env:?}: stderr {}",
            exit.stderr
        );
        assert_eq!(
            exit.stdout, "",
            "a refused config must not start the server"
        );
        assert!(
            exit.stderr.contains(key),
            "config {text:?} env {env:?}: stderr names no {key}: {}",
            exit.stderr
        );
        assert!(
            !exit.stderr.contains(SECRET),
            "the password reached stderr: {}",
            exit.stderr
        );
    }
}
