//! SPEC "Redis high availability", Sentinel part (issue 24, items 2 and 4): real `wsgrace`
//! binaries on a real Sentinel set (a master, a replica and three sentinels, started by
//! the kit's `sentinel` module on free loopback ports, down-after 1 s). In order:
//!
//! - a room works through Sentinel across two nodes, and the node logs the master's
//!   address (never a password);
//! - SIGKILL of the master under steady traffic with `broker.wait_replicas = 0`: both nodes
//!   follow the failover without a restart; no seq names two messages within one epoch, no
//!   open session has a hole within an epoch, every session ends in the new epoch (it got an
//!   `epoch` frame) or is closed with a retryable code. The time from the SIGKILL to the
//!   first message delivered again is printed (docs/redis-ha.md quotes it).
//!
//! It owns these tests only; the processes are the kit's.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::failover::{
    assert_one_message_per_seq_and_no_hole, config, prefix, retryable, watch_member, Seen,
};
use common::wsgrace;
use wsgrace_kit::chat::{join, Frame, Member, WAIT};
use wsgrace_kit::http::wait_status;
use wsgrace_kit::sentinel::SentinelSet;
use wsgrace_kit::server::ServerProcess;

/// A failover takes a few seconds (down-after 1 s, the vote, the promotion); this bounds
/// every wait for it (reached only on failure).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_works_through_sentinel_across_two_nodes() {
    // The master and its replica require a password: it reaches them, never the logs.
    const PASSWORD: &str = "s3cret-for-sentinel-test";
    let set = tokio::task::block_in_place(|| {
        SentinelSet::try_start_with("wsg-a", 1, Some(PASSWORD))
            .unwrap_or_else(|err| panic!("{err}"))
    });
    assert!(set.url().contains(PASSWORD));
    let cfg = config(&set.url(), &prefix("sentinel-room"));
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    assert_eq!(ann.welcome.epoch, bob.welcome.epoch, "one room, one epoch");
    ann.send("through sentinel").await;
    for member in [&mut ann, &mut bob] {
        let msg = member.message().await;
        assert_eq!((msg.seq, msg.text.as_str()), (1, "through sentinel"));
    }
    bob.send("back").await;
    for member in [&mut ann, &mut bob] {
        assert_eq!(member.message().await.seq, 2);
    }
    let master = format!("master 127.0.0.1:{}", set.master.port());
    for node in [&a, &b] {
        let stderr = node.stderr();
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("broker up") && l.contains(&master)),
            "the node does not log the master it found ({master}):\n{stderr}"
        );
        assert!(
            !stderr.contains(PASSWORD),
            "the password reached the log:\n{stderr}"
        );
    }
}

/// A failover under traffic, and what everyone saw.
struct Failover {
    /// sam (the sender, on node a), ann (a), bob and cid (b).
    names: Vec<String>,
    seen: Vec<Seen>,
    first_epoch: String,
    new_master: u16,
    nodes: [ServerProcess; 2],
    /// SIGKILL to the sentinels naming the new master.
    named: Duration,
    /// SIGKILL to the first message sent after it delivered.
    back: Option<Duration>,
    sent: u64,
    _set: SentinelSet,
}

/// Two nodes with `broker.wait_replicas = wait_replicas` on a Sentinel set with `replicas`
/// replicas; sam sends ~100 messages a second: 100, then the master is SIGKILLed, then on
/// until 100 past the first message delivered through the new master (at most 1500 in all:
/// bounded); then "end" once both nodes are ready.
async fn failover_under_traffic(name: &str, wait_replicas: u8, replicas: usize) -> Failover {
    let mut set = tokio::task::block_in_place(|| SentinelSet::start_with_replicas(name, replicas));
    let old_master = set.master.port();
    let cfg = format!(
        "{}wait_replicas = {wait_replicas}\n",
        config(&set.url(), &prefix(name))
    );
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;

    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let recovered = Arc::new(AtomicBool::new(false));
    let sam = join(&a, "r", "sam", None).await;
    let first_epoch = sam.welcome.epoch.clone();
    let watch = |rx| {
        let killed_at = killed_at.clone();
        // "s-N" sent after the kill: N above the count at the kill.
        let after_kill = move |text: &str| {
            text.strip_prefix("s-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > killed_at.load(Ordering::SeqCst))
        };
        tokio::spawn(watch_member(
            rx,
            first_epoch.clone(),
            after_kill,
            recovered.clone(),
            Arc::new(AtomicBool::new(false)),
        ))
    };
    let mut watchers = vec![watch(sam.rx)];
    let mut names = vec!["sam".to_owned()];
    let mut kept = Vec::new();
    for (node, name) in [(&a, "ann"), (&b, "bob"), (&b, "cid")] {
        let member = join(node, "r", name, None).await;
        assert_eq!(member.welcome.epoch, first_epoch);
        watchers.push(watch(member.rx));
        // The sending half stays open until the end of the test.
        kept.push(member.tx);
        names.push(name.to_owned());
    }
    let mut sam_tx = sam.tx;
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (sent, recovered) = (sent.clone(), recovered.clone());
        tokio::spawn(async move {
            let mut after = 0;
            for n in 1..=1500u64 {
                sam_tx.send(&format!("s-{n}")).await;
                sent.store(n, Ordering::SeqCst);
                if recovered.load(Ordering::SeqCst) {
                    after += 1;
                    if after >= 100 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sam_tx
        })
    };
    let start = Instant::now();
    while sent.load(Ordering::SeqCst) < 100 {
        assert!(start.elapsed() < WAIT, "the sender is stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed_at.store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
    set.master.kill();
    let killed = Instant::now();
    let new_master =
        tokio::task::block_in_place(|| set.wait_failover(old_master, FAILOVER_DEADLINE))
            .unwrap_or_else(|err| panic!("{err}"));
    let named = killed.elapsed();
    let mut sam_tx = tokio::time::timeout(FAILOVER_DEADLINE, sender)
        .await
        .expect("the sender did not finish: nothing sent after the kill was delivered")
        .expect("the sender panicked");
    for node in [&a, &b] {
        wait_status(node.addr, "/readyz", 200, FAILOVER_DEADLINE).await;
    }
    // "end" until every member has one: a refused one (`unavailable`) is sent again, and
    // with wait_replicas a held one may come later; every member stops at the first.
    let start = Instant::now();
    while !watchers.iter().all(|w| w.is_finished()) {
        assert!(
            start.elapsed() < FAILOVER_DEADLINE,
            "a member never got an end"
        );
        sam_tx.send("end").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut seen = Vec::new();
    for watcher in watchers {
        seen.push(watcher.await.expect("a member's reader panicked"));
    }
    drop(kept);
    let back = seen
        .iter()
        .filter_map(|member| member.first_after_kill)
        .min()
        .map(|at| at.duration_since(killed));
    Failover {
        names,
        seen,
        first_epoch,
        new_master,
        nodes: [a, b],
        named,
        back,
        sent: sent.load(Ordering::SeqCst),
        _set: set,
    }
}

impl Failover {
    /// No seq names two messages within one epoch, whoever saw them, on either node; no
    /// member has a hole or a repeat within an epoch (each epoch's seqs are consecutive from
    /// where it began).
    fn assert_one_message_per_seq_and_no_hole(&self) {
        assert_one_message_per_seq_and_no_hole("r", &self.first_epoch, &self.names, &self.seen);
    }

    /// Each node followed the failover without a restart, and says where it went.
    fn assert_nodes_on_the_new_master(&self) {
        let master = format!("master 127.0.0.1:{}", self.new_master);
        for node in &self.nodes {
            let stderr = node.stderr();
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains("broker up") && l.contains(&master)),
                "a node does not log the new master ({master}):\n{stderr}"
            );
        }
    }

    fn report(&self, what: &str) {
        let sam = &self.seen[0];
        let kept = sam
            .messages
            .iter()
            .filter(|(epoch, _, _)| *epoch == self.first_epoch)
            .count();
        eprintln!(
            "failover ({what}): SIGKILL to the sentinels naming the new master {:?}, to the \
             first message delivered again {:?}; the sender sent {} messages, {} refused \
             (unavailable) meanwhile, {kept} delivered in the first epoch, {} in another",
            self.named,
            self.back,
            self.sent,
            sam.refused,
            sam.messages.len() - kept,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_killed_under_traffic_the_nodes_follow_and_no_seq_names_two_messages() {
    let run = failover_under_traffic("wsg-b", 0, 1).await;
    run.report("wait_replicas = 0");
    run.assert_one_message_per_seq_and_no_hole();
    let mut new_epochs = Vec::new();
    for (name, member) in run.names.iter().zip(&run.seen) {
        match member.closed {
            Some(code) => assert!(retryable(code), "{name} closed with {code:?}"),
            None => {
                let Some((epoch, _)) = member.epochs.last() else {
                    panic!("{name}: no epoch frame after the failover: {member:?}");
                };
                assert_ne!(*epoch, run.first_epoch, "{name}");
                let last = member.messages.last().map(|(e, _, _)| e);
                assert_eq!(last, Some(epoch), "{name}");
                new_epochs.push(epoch.clone());
            }
        }
    }
    new_epochs.dedup();
    assert_eq!(new_epochs.len(), 1, "the nodes disagree on the new epoch");
    run.assert_nodes_on_the_new_master();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_1_a_killed_master_loses_no_acknowledged_message_and_keeps_the_epoch() {
    // Two replicas: the one promoted must have a replica of its own for WAIT 1 to confirm.
    let run = failover_under_traffic("wsg-d", 1, 2).await;
    run.report("wait_replicas = 1");
    run.assert_one_message_per_seq_and_no_hole();
    for (name, member) in run.names.iter().zip(&run.seen) {
        assert_eq!(member.closed, None, "{name} was closed");
        assert!(
            member.epochs.is_empty(),
            "{name}: the epoch changed: {:?}",
            member.epochs
        );
    }
    // sam's own copies are its acknowledgements: every member got each of them.
    let acknowledged: Vec<&String> = run.seen[0].messages.iter().map(|(_, _, t)| t).collect();
    for (name, member) in run.names.iter().zip(&run.seen).skip(1) {
        let got: std::collections::HashSet<&String> =
            member.messages.iter().map(|(_, _, t)| t).collect();
        let missing: Vec<&&String> = acknowledged.iter().filter(|t| !got.contains(**t)).collect();
        assert!(
            missing.is_empty(),
            "{name} lacks acknowledged messages {missing:?}"
        );
    }
    run.assert_nodes_on_the_new_master();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_with_the_old_master_alive_is_followed() {
    // `SENTINEL FAILOVER`: the old master lives on as a replica, so the node may hold a
    // connection that still answers PING; a write there is refused READONLY, which makes
    // the node ask the sentinels again.
    let set = tokio::task::block_in_place(|| SentinelSet::start("wsg-c"));
    let old_master = set.master.port();
    let cfg = config(&set.url(), &prefix("sentinel-manual"));
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;
    let mut ann = join(&a, "r", "ann", None).await;
    let mut bob = join(&b, "r", "bob", None).await;
    ann.send("before").await;
    for member in [&mut ann, &mut bob] {
        assert_eq!(member.message().await.seq, 1);
    }
    let answer = wsgrace_kit::sentinel::cli(
        set.sentinels[0].port(),
        &["SENTINEL", "FAILOVER", set.name()],
    )
    .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        answer.contains("OK"),
        "SENTINEL FAILOVER answered {answer:?}"
    );
    let new_master =
        tokio::task::block_in_place(|| set.wait_failover(old_master, FAILOVER_DEADLINE))
            .unwrap_or_else(|err| panic!("{err}"));
    // Each node sends until it has followed the failover (it logs the new master: after a
    // READONLY, or a broken connection) and one of its messages is delivered; refusals
    // meanwhile are `unavailable`, never a close. Writes the old master took before it was
    // demoted are lost with its data: the room's new epoch tells so.
    let master = format!("master 127.0.0.1:{new_master}");
    deliver_after_failover(&a, &mut ann, &mut bob, &master).await;
    deliver_after_failover(&b, &mut bob, &mut ann, &master).await;
}

/// `sender` (on `node`) sends "after-N" until `node` logs `master` and a message sent after
/// that is delivered (its own copy); then `other` must get it under the same seq, after an
/// epoch frame.
async fn deliver_after_failover(
    node: &ServerProcess,
    sender: &mut Member,
    other: &mut Member,
    master: &str,
) {
    let start = Instant::now();
    let mut n = 0;
    let msg = loop {
        assert!(
            start.elapsed() < FAILOVER_DEADLINE,
            "the node never followed the failover:\n{}",
            node.stderr()
        );
        let followed = node
            .stderr()
            .lines()
            .any(|l| l.contains("broker up") && l.contains(master));
        n += 1;
        let text = format!("after-{}-{n}", sender.welcome.name);
        sender.send(&text).await;
        let (_, delivered) = sender
            .read_until(|frame| match frame {
                Frame::Message(msg) if msg.text == text => Some(Some(msg.clone())),
                Frame::Error { code, .. } if code == "unavailable" => Some(None),
                Frame::Close(..) | Frame::Ended(_) => panic!("closed: {frame:?}"),
                _ => None,
            })
            .await;
        match delivered {
            Some(msg) if followed => break msg,
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let (_, seen) = other
        .read_until(|frame| match frame {
            Frame::Message(m) if m.text == msg.text => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(seen, msg);
}
