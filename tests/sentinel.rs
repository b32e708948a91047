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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wsgrace;
use wsgrace_kit::chat::{join, Frame, Member, Reader, WAIT};
use wsgrace_kit::http::wait_status;
use wsgrace_kit::sentinel::SentinelSet;
use wsgrace_kit::server::ServerProcess;

/// A node's config: the Redis broker at `url` under `prefix`.
fn config(url: &str, prefix: &str) -> String {
    format!("[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n")
}

fn prefix(test: &str) -> String {
    format!("wsgrace-test-{}-{test}", std::process::id())
}

/// A failover takes a few seconds (down-after 1 s, the vote, the promotion); this bounds
/// every wait for it (reached only on failure).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_works_through_sentinel_across_two_nodes() {
    let set = tokio::task::block_in_place(|| SentinelSet::start("wsg-a"));
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
    }
}

/// What one member saw: every message as (epoch, seq, text) in arrival order, the `epoch`
/// frames, when the first message of another epoch than the first arrived, and how it ended.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<(String, u64, String)>,
    epochs: Vec<(String, u64)>,
    first_new_epoch_message: Option<Instant>,
    refused: usize,
    closed: Option<Option<u16>>,
}

/// Reads `rx` until the message `end` (or a close), tracking the epoch from `epoch` on.
/// The first message of a new epoch raises `recovered`.
async fn watch_member(mut rx: Reader, epoch: String, recovered: Arc<AtomicBool>) -> Seen {
    let first_epoch = epoch.clone();
    let mut epoch = epoch;
    let mut seen = Seen::default();
    loop {
        match rx.next().await {
            Frame::Message(msg) => {
                if epoch != first_epoch && seen.first_new_epoch_message.is_none() {
                    seen.first_new_epoch_message = Some(Instant::now());
                    recovered.store(true, Ordering::SeqCst);
                }
                let end = msg.text == "end";
                seen.messages.push((epoch.clone(), msg.seq, msg.text));
                if end {
                    return seen;
                }
            }
            Frame::Epoch {
                epoch: new, seq, ..
            } => {
                seen.epochs.push((new.clone(), seq));
                epoch = new;
            }
            Frame::Error { code, .. } if code == "unavailable" => seen.refused += 1,
            Frame::Close(code, _) => {
                seen.closed = Some(code);
                return seen;
            }
            Frame::Ended(why) => panic!("a session ended without a close frame: {why}"),
            _ => {}
        }
    }
}

/// Close codes a client retries after (a reconnect and a resume).
fn retryable(code: Option<u16>) -> bool {
    matches!(code, Some(1001 | 1011 | 1012 | 1013))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_killed_under_traffic_the_nodes_follow_and_no_seq_names_two_messages() {
    let mut set = tokio::task::block_in_place(|| SentinelSet::start("wsg-b"));
    let old_master = set.master.port();
    let cfg = config(&set.url(), &prefix("sentinel-kill"));
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;
    let nodes: [&ServerProcess; 2] = [&a, &b];

    let recovered = Arc::new(AtomicBool::new(false));
    let sam = join(&a, "r", "sam", None).await;
    let first_epoch = sam.welcome.epoch.clone();
    let mut watchers = Vec::new();
    let mut names = vec!["sam".to_owned()];
    for (node, name) in [(&a, "ann"), (&b, "bob"), (&b, "cid")] {
        let member = join(node, "r", name, None).await;
        assert_eq!(member.welcome.epoch, first_epoch);
        let rx = member.rx;
        // The sending half stays open (dropped at the end of the test).
        std::mem::forget(member.tx);
        watchers.push(tokio::spawn(watch_member(
            rx,
            first_epoch.clone(),
            recovered.clone(),
        )));
        names.push(name.to_owned());
    }
    let mut sam_tx = sam.tx;
    watchers.insert(
        0,
        tokio::spawn(watch_member(sam.rx, first_epoch.clone(), recovered.clone())),
    );

    // The sender: ~100 messages a second; 100 before the kill, then on until 100 past the
    // first message of the new epoch (at most 1500 in all: bounded).
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
    set.master.kill();
    let killed = Instant::now();
    let new_master =
        tokio::task::block_in_place(|| set.wait_failover(old_master, FAILOVER_DEADLINE))
            .unwrap_or_else(|err| panic!("{err}"));
    let named = killed.elapsed();
    let mut sam_tx = tokio::time::timeout(FAILOVER_DEADLINE, sender)
        .await
        .expect("the sender did not finish: the nodes never delivered a new-epoch message")
        .expect("the sender panicked");
    for node in nodes {
        wait_status(node.addr, "/readyz", 200, FAILOVER_DEADLINE).await;
    }
    sam_tx.send("end").await;

    let mut seen = Vec::new();
    for watcher in watchers {
        seen.push(
            tokio::time::timeout(FAILOVER_DEADLINE, watcher)
                .await
                .expect("a member never got the end")
                .expect("a member's reader panicked"),
        );
    }

    // No seq names two messages within one epoch, whoever saw them, on either node.
    let mut named_by: HashMap<(String, u64), String> = HashMap::new();
    for (name, member) in names.iter().zip(&seen) {
        for (epoch, seq, text) in &member.messages {
            let first = named_by
                .entry((epoch.clone(), *seq))
                .or_insert_with(|| text.clone());
            assert_eq!(
                first, text,
                "{name}: epoch {epoch} seq {seq} names two messages"
            );
        }
    }
    let mut new_epochs = Vec::new();
    for (name, member) in names.iter().zip(&seen) {
        // No hole within an epoch: each epoch's seqs are consecutive, from where it began.
        let mut begins: HashMap<String, u64> = HashMap::from([(first_epoch.clone(), 0)]);
        begins.extend(member.epochs.iter().cloned());
        let mut last: Option<(String, u64)> = None;
        for (epoch, seq, text) in &member.messages {
            let expected = match &last {
                Some((last_epoch, last_seq)) if last_epoch == epoch => last_seq + 1,
                _ => begins[epoch] + 1,
            };
            assert_eq!(
                *seq, expected,
                "{name}: a hole or a repeat in epoch {epoch} at {text:?}"
            );
            last = Some((epoch.clone(), *seq));
        }
        match member.closed {
            Some(code) => assert!(retryable(code), "{name} closed with {code:?}"),
            None => {
                let Some((epoch, _)) = member.epochs.last() else {
                    panic!("{name}: no epoch frame after the failover: {member:?}");
                };
                assert_ne!(*epoch, first_epoch, "{name}");
                assert_eq!(last.map(|(e, _)| e).as_ref(), Some(epoch), "{name}");
                new_epochs.push(epoch.clone());
            }
        }
    }
    new_epochs.dedup();
    assert_eq!(new_epochs.len(), 1, "the nodes disagree on the new epoch");
    // Each node followed the failover without a restart, and says where it went.
    let master = format!("master 127.0.0.1:{new_master}");
    for node in nodes {
        let stderr = node.stderr();
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("broker up") && l.contains(&master)),
            "a node does not log the new master ({master}):\n{stderr}"
        );
    }
    let back = seen
        .iter()
        .filter_map(|member| member.first_new_epoch_message)
        .min()
        .map(|at| at.duration_since(killed));
    let kept: usize = seen[0]
        .messages
        .iter()
        .filter(|(epoch, _, _)| *epoch == first_epoch)
        .count();
    eprintln!(
        "failover (wait_replicas = 0): SIGKILL to the sentinels naming the new master {named:?}, \
         to the first message delivered again {back:?}; the sender sent {} messages, {} refused \
         (unavailable) meanwhile, {kept} delivered in the old epoch, {} in the new one",
        sent.load(Ordering::SeqCst),
        seen[0].refused,
        seen[0].messages.len() - kept,
    );
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
