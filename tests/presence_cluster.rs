//! Presence across nodes (SPEC "Presence" with `broker.kind = "redis"`, issue 22), against
//! real `wsgrace` binaries sharing a real `redis-server` (the kit's, on a free port, its own
//! key prefix per test):
//!
//! - a name's arrival on one node is told on the other, a `presence` request there lists it,
//!   a second tab (on either node) says nothing, the last leave is told;
//! - a rolling restart: 20 members of a drained node come back on the other, and an observer
//!   there sees no presence event for them (their kept connections end unseen, counted in
//!   `wsgrace_presence_kept_rejoined_total` on the node that swept them);
//! - a node killed with SIGKILL: its members are told gone within `ttl` + `grace`;
//! - Redis restarted empty, and Redis flushed under running nodes: presence comes back from
//!   the nodes' own sessions, no node restarted.
//!
//! Every wait has a generous deadline; time passing is observed through frames and metrics,
//! never slept away. Must not touch another test's Redis or prefix.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::wsgrace;
use serde_json::{json, Value};
use wsgrace_kit::chat::{join, query, Frame, Member};
use wsgrace_kit::chat_v2::V2Client;
use wsgrace_kit::child::Signal;
use wsgrace_kit::http::{metric, wait_status};
use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::wait::until;

/// Long enough for a busy machine; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(30);

/// A node's config: the Redis broker at `url` under a prefix of `test`'s, then `extra`.
fn config(url: &str, test: &str, extra: &str) -> String {
    let prefix = format!("wsgrace-presence-{}-{test}", std::process::id());
    format!("[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}")
}

async fn start_node(config: &str) -> ServerProcess {
    wsgrace().start_ready(config).await
}

/// A v2 member of `room` named `name` that sees presence events.
async fn observer(server: &ServerProcess, name: &str, room: &str) -> V2Client {
    let mut client = V2Client::connect(&server.ws_url(&format!("?name={name}"))).await;
    client.reader.keep_presence();
    client.join(room, json!({})).await;
    client
}

/// `client`'s `presence` answer for `room`, as (name, connections) pairs by name; presence
/// events read on the way are returned too.
async fn presence_of(client: &mut V2Client, room: &str) -> (Vec<(String, u64)>, Vec<Value>) {
    client
        .sender
        .send(json!({"type": "presence", "room": room, "ref": "who"}))
        .await;
    let frames = client
        .reader
        .read_until(|frame| frame["type"] == "presence" && frame["room"] == room)
        .await;
    let events = presence_events(&frames, room);
    let answer = frames.last().cloned().unwrap_or_default();
    assert_eq!(answer["ref"], "who", "{answer}");
    let mut members: Vec<(String, u64)> = answer["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {answer}"))
        .iter()
        .map(|member| {
            let name = member["name"].as_str().expect("a name").to_owned();
            (name, member["connections"].as_u64().expect("a count"))
        })
        .collect();
    members.sort();
    (members, events)
}

/// Polls `client`'s `presence` of `room` until it is `want`.
async fn presence_becomes(client: &mut V2Client, room: &str, want: &[(String, u64)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (members, _) = presence_of(client, room).await;
        if members == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence of {room} stayed {members:?}, not {want:?}, for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

fn presence_events(frames: &[Value], room: &str) -> Vec<Value> {
    frames
        .iter()
        .filter(|frame| {
            frame["room"] == room
                && matches!(
                    frame["type"].as_str(),
                    Some("presence_join" | "presence_leave")
                )
        })
        .cloned()
        .collect()
}

/// Reads `client`'s frames until its copy of a message saying `text` in `room`; returns the
/// presence events read on the way.
async fn presence_before(client: &mut V2Client, room: &str, text: &str) -> Vec<Value> {
    let frames = client
        .reader
        .read_until(|frame| frame["type"] == "message" && frame["text"] == text)
        .await;
    presence_events(&frames, room)
}

fn event(kind: &str, room: &str, name: &str) -> Value {
    json!({"type": kind, "room": room, "name": name})
}

/// Waits until the sample `sample` in `/metrics` is `value`.
async fn metric_reaches(addr: SocketAddr, sample: &str, value: f64) {
    until(&format!("{sample} = {value}"), WAIT, || async move {
        (metric(addr, sample).await == value).then_some(())
    })
    .await;
}

#[tokio::test]
async fn presence_spans_nodes_and_a_second_tab_says_nothing() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "two-nodes", "");
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut obs = observer(&b, "obs", "r").await;
    let mut ann = observer(&a, "ann", "r").await;
    assert_eq!(
        obs.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "ann")
    );
    // bob arrives on B: ann, on A, is told.
    let mut bob = V2Client::connect(&b.ws_url("?name=bob")).await;
    bob.join("r", json!({})).await;
    assert_eq!(
        ann.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "bob")
    );
    assert_eq!(
        obs.reader.next_of("presence_join", Some("r")).await,
        event("presence_join", "r", "bob")
    );
    let (members, _) = presence_of(&mut obs, "r").await;
    assert_eq!(members, names(&[("ann", 1), ("bob", 1), ("obs", 1)]));
    // Second tabs of ann, over v1, on both nodes: nobody is told.
    let tab_a = join(&a, "r", "ann", None).await;
    let tab_b = join(&b, "r", "ann", None).await;
    ann.say("r", "three tabs").await;
    assert_eq!(
        presence_before(&mut obs, "r", "three tabs").await,
        Vec::<Value>::new()
    );
    let (members, _) = presence_of(&mut bob, "r").await;
    assert_eq!(members, names(&[("ann", 3), ("bob", 1), ("obs", 1)]));
    // Two tabs close normally, ann's v2 connection leaves the room: still one tab.
    tab_a.leave().await;
    ann.sender.leave("r").await;
    ann.reader.next_of("left", Some("r")).await;
    bob.say("r", "one tab").await;
    assert_eq!(
        presence_before(&mut obs, "r", "one tab").await,
        Vec::<Value>::new()
    );
    presence_becomes(&mut obs, "r", &names(&[("ann", 1), ("bob", 1), ("obs", 1)])).await;
    // The last one goes: told on both nodes.
    tab_b.leave().await;
    assert_eq!(
        obs.reader.next_of("presence_leave", Some("r")).await,
        event("presence_leave", "r", "ann")
    );
    bob.say("r", "after ann").await;
    assert_eq!(
        presence_before(&mut obs, "r", "after ann").await,
        Vec::<Value>::new(),
        "ann's departure was told once"
    );
    for node in [&a, &b] {
        assert!(
            metric(node.addr, "wsgrace_presence_redis_ops_total{op=\"join\"}").await >= 1.0,
            "no presence join sent to Redis"
        );
    }
    assert!(metric(b.addr, "wsgrace_presence_redis_ops_total{op=\"read\"}").await >= 1.0);
}

#[tokio::test]
async fn a_rolling_restart_does_not_flap_presence() {
    const MEMBERS: usize = 20;
    let redis = RedisServer::start();
    // A grace long enough for every member to come back in it on a busy machine.
    let cfg = config(
        &redis.url(),
        "rolling",
        "[shutdown]\nreconnect_spread_ms = 500\n[presence]\ngrace_ms = 8000\nttl_ms = 3000\n",
    );
    let mut a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut obs = observer(&b, "obs", "r").await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(join(&a, "r", &format!("m{i}"), None).await);
    }
    for _ in 0..MEMBERS {
        obs.reader.next_of("presence_join", Some("r")).await;
    }
    let b_addr = b.addr;
    let moves: Vec<_> = members
        .into_iter()
        .map(|mut member| {
            tokio::spawn(async move {
                let name = member.welcome.name.clone();
                let delay = loop {
                    match member.next().await {
                        Frame::GoingAway { reconnect_after_ms } => break reconnect_after_ms,
                        Frame::Message(_) | Frame::Other(_) => continue,
                        other => panic!("{name}: {other:?} before going_away"),
                    }
                };
                match member.next().await {
                    Frame::Close(..) => {}
                    other => panic!("{name}: after going_away came {other:?}, not the close"),
                }
                assert!(member.rx.finish().await, "{name}: the close was not clean");
                drop(member);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Member::join(format!("ws://{b_addr}/ws{}", query("r", &name, None))).await
            })
        })
        .collect();
    a.sigterm();
    let status = a.wait_exit(WAIT).await;
    assert!(status.success(), "node A exited with {status:?}");
    let mut back = Vec::new();
    for moved in moves {
        back.push(
            tokio::time::timeout(WAIT, moved)
                .await
                .expect("a member did not come back in time")
                .expect("member task"),
        );
    }
    // Every kept connection of A's ends unseen: B swept them with their names present.
    metric_reaches(
        b.addr,
        "wsgrace_presence_kept_rejoined_total",
        MEMBERS as f64,
    )
    .await;
    // Whatever the sweeps told came before this message: nothing.
    obs.sender.publish("r", "after the restart", None).await;
    assert_eq!(
        presence_before(&mut obs, "r", "after the restart").await,
        Vec::<Value>::new(),
        "an observer saw the restart"
    );
    let mut want = vec![("obs".to_owned(), 1)];
    want.extend((0..MEMBERS).map(|i| (format!("m{i}"), 1)));
    want.sort();
    let (listed, events) = presence_of(&mut obs, "r").await;
    assert_eq!(listed, want);
    assert_eq!(events, Vec::<Value>::new());
    drop(back);
}

#[tokio::test]
async fn a_killed_nodes_members_leave_within_ttl_and_grace() {
    let redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        "killed",
        "[presence]\nttl_ms = 1500\ngrace_ms = 500\n",
    );
    let mut a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut obs = observer(&b, "obs", "r").await;
    let mut doomed = Vec::new();
    for i in 0..3 {
        doomed.push(join(&a, "r", &format!("k{i}"), None).await);
    }
    for _ in 0..3 {
        obs.reader.next_of("presence_join", Some("r")).await;
    }
    let (members, _) = presence_of(&mut obs, "r").await;
    assert_eq!(
        members,
        names(&[("k0", 1), ("k1", 1), ("k2", 1), ("obs", 1)])
    );
    a.signal(Signal::Kill);
    a.wait_exit(WAIT).await;
    let mut gone = Vec::new();
    for _ in 0..3 {
        let leave = obs.reader.next_of("presence_leave", Some("r")).await;
        gone.push(leave["name"].as_str().unwrap_or_default().to_owned());
    }
    gone.sort();
    assert_eq!(gone, ["k0", "k1", "k2"]);
    let (members, _) = presence_of(&mut obs, "r").await;
    assert_eq!(members, names(&[("obs", 1)]));
    drop(doomed);
}

#[tokio::test]
async fn presence_is_rebuilt_after_redis_loses_it() {
    let mut redis = RedisServer::start();
    let cfg = config(
        &redis.url(),
        "lost",
        "[presence]\nttl_ms = 1500\ngrace_ms = 500\n",
    );
    let a = start_node(&cfg).await;
    let b = start_node(&cfg).await;
    let mut obs = observer(&b, "obs", "r").await;
    let _ann = join(&a, "r", "ann", None).await;
    let _ann_tab = join(&b, "r", "ann", None).await;
    let _bob = join(&a, "r", "bob", None).await;
    let want = names(&[("ann", 2), ("bob", 1), ("obs", 1)]);
    presence_becomes(&mut obs, "r", &want).await;

    // Restarted empty: the nodes tell it again when they reconnect.
    redis.kill();
    for node in [&a, &b] {
        wait_status(node.addr, "/readyz", 503, WAIT).await;
    }
    redis.restart();
    for node in [&a, &b] {
        wait_status(node.addr, "/readyz", 200, WAIT).await;
    }
    presence_becomes(&mut obs, "r", &want).await;

    // Flushed under running nodes (no reconnect): each node's heartbeat finds its members
    // gone and restores them.
    const RESTORES: &str = "wsgrace_presence_redis_ops_total{op=\"restore\"}";
    let before = [
        metric(a.addr, RESTORES).await,
        metric(b.addr, RESTORES).await,
    ];
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    presence_becomes(&mut obs, "r", &want).await;
    for (node, before) in [&a, &b].into_iter().zip(before) {
        let addr = node.addr;
        until("a restore after the flush", WAIT, || async move {
            (metric(addr, RESTORES).await > before).then_some(())
        })
        .await;
    }
}
