//! SPEC "Redis high availability", Redis Cluster part (issue 24, items 3 and 4): real
//! `wsgrace` binaries on a real Redis Cluster (three masters, started by the kit's
//! `redis_cluster` module on free loopback ports below 55536, node timeout 1 s), through
//! `broker.redis_url = "redis+cluster://..."`. In order:
//!
//! - 12 rooms over the cluster through two nodes: members on both, one seq order for all,
//!   resume from the other node; on the Redis side every room channel is a sharded channel
//!   subscribed on its room's master (`PUBSUB SHARDNUMSUB`, `SHARDCHANNELS`) and never a
//!   classic one (`PUBSUB NUMSUB`, `CHANNELS`), and the rooms' keys live on at least two
//!   masters;
//! - SIGKILL of a master (one replica each) under steady traffic in rooms on every shard,
//!   `broker.wait_replicas = 0`: both nodes follow the failover without a restart; no seq
//!   names two messages within one epoch, no open session has a hole within an epoch, every
//!   session in a room of the killed shard ends in a new epoch (it got an `epoch` frame) or
//!   is closed with a retryable code, and a resume with the old epoch is refused while one
//!   with the new epoch replays; the rooms on the other shards keep their epoch and go on.
//!   The time from the SIGKILL to the first message delivered again is printed;
//! - the same with `broker.wait_replicas = 1` (two replicas per master): no room changes its
//!   epoch, nobody is closed, and every message a sender saw acknowledged reached every
//!   member.
//!
//! It owns these tests only; the processes are the kit's.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::failover::{
    assert_one_message_per_seq_and_no_hole, config, prefix, retryable, watch_member, Seen,
};
use common::wsgrace;
use wsgrace_kit::chat::{assert_contiguous, join, Msg, Sender, WAIT};
use wsgrace_kit::http::wait_status;
use wsgrace_kit::redis_cluster::RedisCluster;

/// A room's hash and its (sharded) channel: `PREFIX:{ROOM}:room`.
fn room_key(prefix: &str, room: &str) -> String {
    format!("{prefix}:{{{room}}}:room")
}

/// A failover takes a few seconds (node timeout 1 s, the vote, the promotion), then each
/// node reconnects; this bounds every wait for it (reached only on failure).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the kit's blocking Redis calls (`redis-cli`) off the runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `redis-cli ARGS` on `port` of `cluster`, or a panic with the reason.
fn ask(cluster: &RedisCluster, port: u16, args: &[&str]) -> String {
    blocking(|| cluster.command(port, args)).unwrap_or_else(|err| panic!("{err}"))
}

/// The master of `key` now, or a panic.
fn master_of(cluster: &RedisCluster, key: &str) -> u16 {
    blocking(|| cluster.master_of(key)).unwrap_or_else(|| panic!("no master serves {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_rooms_over_three_masters_use_sharded_channels_and_two_shards_at_least() {
    let cluster = blocking(|| RedisCluster::start(3, 0));
    let prefix = prefix("cluster-rooms");
    let cfg = config(&cluster.url(), &prefix);
    let a = wsgrace().start_ready(&cfg).await;
    let b = wsgrace().start_ready(&cfg).await;
    let rooms: Vec<String> = (0..12).map(|n| format!("room-{n}")).collect();

    let mut epochs = HashMap::new();
    // Every member stays in its room to the end: its node keeps the room subscribed.
    let mut members = Vec::new();
    for room in &rooms {
        let mut ann = join(&a, room, "ann", None).await;
        let mut bob = join(&b, room, "bob", None).await;
        assert_eq!(
            ann.welcome.epoch, bob.welcome.epoch,
            "{room}: one room, one epoch"
        );
        // Turns from both nodes; both members see each seq once, in one order.
        ann.send(&format!("{room} 1 from a")).await;
        bob.send(&format!("{room} 2 from b")).await;
        ann.send(&format!("{room} 3 from a")).await;
        bob.send(&format!("{room} 4 from b")).await;
        let seen_a = ann.rx.messages_through(4).await;
        let seen_b = bob.rx.messages_through(4).await;
        assert_contiguous(&format!("ann in {room}"), &seen_a, 1, 4);
        assert_eq!(seen_a, seen_b, "{room}: the nodes disagree on the order");
        // The texts sent from one member keep their order (the other's may interleave).
        let from_ann: Vec<&str> = seen_a
            .iter()
            .filter(|m| m.from == "ann")
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(
            from_ann,
            [format!("{room} 1 from a"), format!("{room} 3 from a")]
        );
        epochs.insert(room.clone(), (ann.welcome.epoch.clone(), seen_a));
        members.extend([ann, bob]);
    }

    // Every room resumes from the node its resumer did not start on.
    for (n, room) in rooms.iter().enumerate() {
        let (epoch, seen) = &epochs[room];
        let node = if n % 2 == 0 { &b } else { &a };
        let mut cid = join(node, room, "cid", Some((1, epoch))).await;
        cid.welcome.assert_resume(Some(true), Some(3), 4, epoch);
        let replayed = cid.rx.messages_through(4).await;
        assert_eq!(replayed.as_slice(), &seen[1..], "{room}: the replay");
        members.push(cid);
    }

    // The Redis side: each room's channel is a sharded channel on the room's master,
    // subscribed there by both nodes, and never a classic channel on any node.
    let masters = blocking(|| cluster.master_ports());
    assert_eq!(masters.len(), 3, "{masters:?}");
    let mut rooms_of: BTreeMap<u16, HashSet<String>> =
        masters.iter().map(|m| (*m, HashSet::new())).collect();
    for room in &rooms {
        let channel = room_key(&prefix, room);
        let owner = master_of(&cluster, &channel);
        let answer = ask(&cluster, owner, &["PUBSUB", "SHARDNUMSUB", &channel]);
        let subscribers = subscriber_count(&answer, &channel);
        assert!(
            subscribers >= 2,
            "{channel}: {subscribers} sharded subscribers on its master {owner}, not one per \
             node with members ({answer:?})"
        );
        assert_eq!(
            ask(&cluster, owner, &["EXISTS", &channel]).trim(),
            "1",
            "{channel}: the room's key is not on its master {owner}"
        );
        for port in cluster.ports() {
            let answer = ask(&cluster, port, &["PUBSUB", "NUMSUB", &channel]);
            assert_eq!(
                subscriber_count(&answer, &channel),
                0,
                "{channel} is a classic channel on {port}"
            );
        }
        rooms_of.entry(owner).or_default().insert(channel);
    }
    let pattern = format!("{prefix}:*");
    let room_channel = format!("{prefix}:{{");
    for port in cluster.ports() {
        let classic = ask(&cluster, port, &["PUBSUB", "CHANNELS", &pattern]);
        let rooms_there: Vec<&str> = classic
            .lines()
            .filter(|c| c.starts_with(&room_channel))
            .collect();
        assert!(
            rooms_there.is_empty(),
            "classic room channels on {port}: {rooms_there:?}"
        );
        if !classic.trim().is_empty() {
            eprintln!("classic channels of the prefix on {port}: {classic:?}");
        }
    }
    for (master, expected) in &rooms_of {
        let sharded = ask(&cluster, *master, &["PUBSUB", "SHARDCHANNELS", &pattern]);
        let there: HashSet<String> = sharded
            .lines()
            .filter(|c| c.starts_with(&room_channel))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            &there, expected,
            "the room channels subscribed on master {master} are not its rooms'"
        );
    }
    let used: Vec<u16> = rooms_of
        .iter()
        .filter(|(_, rooms)| !rooms.is_empty())
        .map(|(master, _)| *master)
        .collect();
    assert!(
        used.len() >= 2,
        "the rooms' keys are on {used:?} only: {rooms_of:?}"
    );
    eprintln!(
        "12 rooms over the masters: {:?}",
        rooms_of
            .iter()
            .map(|(m, rooms)| (*m, rooms.len()))
            .collect::<Vec<_>>()
    );
}

/// The count `PUBSUB NUMSUB`/`SHARDNUMSUB CHANNEL` answers (raw: the channel, then its
/// count, a line each).
fn subscriber_count(answer: &str, channel: &str) -> u64 {
    let lines: Vec<&str> = answer.lines().map(str::trim).collect();
    match lines.as_slice() {
        [name, count] if *name == channel => count
            .parse()
            .unwrap_or_else(|_| panic!("a count: {answer:?}")),
        _ => panic!("an answer about {channel}: {answer:?}"),
    }
}

/// One room under traffic: its sender (`sam`, on node a or b) and two more members, one on
/// each node.
struct Room {
    name: String,
    master: u16,
    sender_node: usize,
    first_epoch: String,
    names: Vec<String>,
    watchers: Vec<tokio::task::JoinHandle<Seen>>,
    sender: tokio::task::JoinHandle<Sender>,
    sent: Arc<AtomicU64>,
    /// The members' sending halves, open until the end, in the order of `names` (the
    /// sender's once it is done), and whether each was closed.
    kept: Vec<Option<Sender>>,
    closed: Vec<Arc<AtomicBool>>,
}

/// What one room's members saw, after the run.
struct RoomRun {
    name: String,
    master: u16,
    sender_node: usize,
    first_epoch: String,
    names: Vec<String>,
    seen: Vec<Seen>,
    sent: u64,
}

/// Two names per master among `room-0`, `room-1`, ...: the rooms of the failover test,
/// with the master of each.
fn rooms_on_every_shard(cluster: &RedisCluster, prefix: &str) -> Vec<(String, u16)> {
    let masters = blocking(|| cluster.master_ports());
    let mut picked: Vec<(String, u16)> = Vec::new();
    for n in 0..500 {
        let room = format!("room-{n}");
        let master = master_of(cluster, &room_key(prefix, &room));
        if picked.iter().filter(|(_, m)| *m == master).count() < 2 {
            picked.push((room, master));
        }
        if picked.len() == 2 * masters.len() {
            // The first room's shard is the one killed: its two rooms first, then each
            // shard's two side by side.
            let first = picked[0].1;
            picked.sort_by_key(|(_, m)| (*m != first, *m));
            return picked;
        }
    }
    panic!("500 room names do not give two rooms on each of the masters {masters:?}: {picked:?}");
}

/// Two nodes on a 3-master cluster (`replicas_per_master` replicas each) with
/// `broker.wait_replicas`, a sender and two members in two rooms per shard; the master of the
/// first room's shard gets SIGKILL under the traffic. Returns what every member saw, once
/// every sender is done, both nodes are ready again and every member has an "end"; no seq
/// names two messages and no member has a hole within an epoch (checked here).
async fn failover_under_traffic(
    test: &str,
    wait_replicas: u8,
    replicas_per_master: usize,
) -> ClusterFailover {
    let mut cluster = blocking(|| RedisCluster::start(3, replicas_per_master));
    let prefix = prefix(test);
    let cfg = format!(
        "{}wait_replicas = {wait_replicas}\n",
        config(&cluster.url(), &prefix)
    );
    let nodes = [
        wsgrace().start_ready(&cfg).await,
        wsgrace().start_ready(&cfg).await,
    ];
    let pids = [nodes[0].pid(), nodes[1].pid()];
    let placed = rooms_on_every_shard(&cluster, &prefix);
    let victim = placed[0].1;

    // Senders send ~50 messages a second in each room ("s-N" before the kill, "k-N" after):
    // on until 100 past the first "k-" message delivered in their room, at most 3000 (so
    // bounded); then "end" once both nodes are ready again.
    let killed = Arc::new(AtomicBool::new(false));
    let mut rooms = Vec::new();
    for (n, (name, master)) in placed.iter().enumerate() {
        // Both nodes send on every shard: a room of each pair has its sender on a, the other
        // on b.
        let sender_node = n % 2;
        let sam = join(&nodes[sender_node], name, "sam", None).await;
        let first_epoch = sam.welcome.epoch.clone();
        let recovered = Arc::new(AtomicBool::new(false));
        // "k-N": sent after the kill, so delivered through the cluster after it.
        let after_kill = |text: &str| text.starts_with("k-");
        let sam_closed = Arc::new(AtomicBool::new(false));
        let mut watchers = vec![tokio::spawn(watch_member(
            sam.rx,
            first_epoch.clone(),
            after_kill,
            recovered.clone(),
            sam_closed.clone(),
        ))];
        let mut names = vec!["sam".to_owned()];
        let mut kept = vec![None];
        let mut closed = vec![sam_closed.clone()];
        for (node, member) in [(0, "ann"), (1, "bob")] {
            let joined = join(&nodes[node], name, member, None).await;
            assert_eq!(joined.welcome.epoch, first_epoch, "{name}");
            let member_closed = Arc::new(AtomicBool::new(false));
            watchers.push(tokio::spawn(watch_member(
                joined.rx,
                first_epoch.clone(),
                after_kill,
                recovered.clone(),
                member_closed.clone(),
            )));
            kept.push(Some(joined.tx));
            closed.push(member_closed);
            names.push(member.to_owned());
        }
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (sent, recovered, killed) = (sent.clone(), recovered.clone(), killed.clone());
            let mut tx = sam.tx;
            tokio::spawn(async move {
                let mut after = 0;
                for n in 1..=3000u64 {
                    if sam_closed.load(Ordering::SeqCst) {
                        break;
                    }
                    let tag = if killed.load(Ordering::SeqCst) {
                        "k"
                    } else {
                        "s"
                    };
                    tx.send(&format!("{tag}-{n}")).await;
                    sent.store(n, Ordering::SeqCst);
                    if recovered.load(Ordering::SeqCst) {
                        after += 1;
                        if after >= 100 {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tx
            })
        };
        rooms.push(Room {
            name: name.clone(),
            master: *master,
            sender_node,
            first_epoch,
            names,
            watchers,
            sender,
            sent,
            kept,
            closed,
        });
    }
    let start = Instant::now();
    while rooms.iter().any(|r| r.sent.load(Ordering::SeqCst) < 100) {
        assert!(start.elapsed() < WAIT, "a sender is stuck before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let victim_replica = blocking(|| cluster.replicas_of(victim));
    assert_eq!(
        victim_replica.len(),
        replicas_per_master,
        "the master {victim}'s replicas"
    );
    blocking(|| cluster.kill(victim));
    let kill_at = Instant::now();
    killed.store(true, Ordering::SeqCst);
    let new_master = blocking(|| cluster.wait_failover(victim, FAILOVER_DEADLINE))
        .unwrap_or_else(|err| panic!("{err}"));
    let agreed = kill_at.elapsed();
    assert!(
        victim_replica.contains(&new_master),
        "{new_master} was not a replica of {victim}"
    );

    let mut runs = Vec::new();
    for room in &mut rooms {
        let sender = &mut room.sender;
        let tx = tokio::time::timeout(FAILOVER_DEADLINE, sender)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: the sender did not finish: nothing sent after the kill was delivered",
                    room.name
                )
            })
            .expect("a sender panicked");
        room.kept[0] = Some(tx);
    }
    for node in &nodes {
        wait_status(node.addr, "/readyz", 200, FAILOVER_DEADLINE).await;
    }
    // "end" until every member of the room has one (a refused one is sent again), from the
    // first member not closed; every member stops at the first.
    for mut room in rooms {
        let start = Instant::now();
        while !room.watchers.iter().all(|w| w.is_finished()) {
            assert!(
                start.elapsed() < FAILOVER_DEADLINE,
                "{}: a member never got an end",
                room.name
            );
            let open = room
                .closed
                .iter()
                .position(|closed| !closed.load(Ordering::SeqCst));
            let Some(tx) = open
                .and_then(|n| room.kept.get_mut(n))
                .and_then(Option::as_mut)
            else {
                break;
            };
            tx.send("end").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut seen = Vec::new();
        for watcher in room.watchers {
            let member = tokio::time::timeout(FAILOVER_DEADLINE, watcher)
                .await
                .unwrap_or_else(|_| panic!("{}: a member never finished", room.name))
                .expect("a member's reader panicked");
            seen.push(member);
        }
        runs.push(RoomRun {
            name: room.name,
            master: room.master,
            sender_node: room.sender_node,
            first_epoch: room.first_epoch,
            names: room.names,
            seen,
            sent: room.sent.load(Ordering::SeqCst),
        });
    }

    for run in &runs {
        let back = run
            .seen
            .iter()
            .filter_map(|member| member.first_after_kill)
            .min()
            .map(|at| at.duration_since(kill_at));
        eprintln!(
            "cluster failover, room {} on master {}{} (sender on node {}): SIGKILL of master \
             {victim} to every node seeing {new_master} serve its slots {agreed:?}, to the \
             first message sent after the kill delivered {back:?}; {} sent, {} refused \
             (unavailable), epochs seen {:?}",
            run.name,
            run.master,
            if run.master == victim {
                " (killed)"
            } else {
                ""
            },
            run.sender_node,
            run.sent,
            run.seen[0].refused,
            run.seen[0].epochs,
        );
        run.assert_one_message_per_seq_and_no_hole();
    }
    ClusterFailover {
        _cluster: cluster,
        nodes,
        pids,
        victim,
        runs,
    }
}

/// What [`failover_under_traffic`] leaves for a test to check.
struct ClusterFailover {
    _cluster: RedisCluster,
    nodes: [wsgrace_kit::server::ServerProcess; 2],
    pids: [u32; 2],
    victim: u16,
    runs: Vec<RoomRun>,
}

impl ClusterFailover {
    /// Both nodes followed the failover without a restart.
    async fn assert_nodes_followed(&mut self) {
        for (node, pid) in self.nodes.iter_mut().zip(self.pids) {
            assert_eq!(node.pid(), pid);
            assert!(
                node.try_wait_exit(Duration::ZERO).await.is_none(),
                "a node exited:\n{}",
                node.stderr()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_traffic_is_followed_and_no_seq_names_two_messages() {
    let mut failover = failover_under_traffic("cluster-failover", 0, 1).await;
    failover.assert_nodes_followed().await;
    let (victim, runs, nodes) = (failover.victim, &failover.runs, &failover.nodes);

    // The killed shard's rooms: every session in a new epoch, or closed to be retried; the
    // nodes agree on the new epoch.
    for run in runs.iter().filter(|run| run.master == victim) {
        let mut new_epochs = HashSet::new();
        for (name, member) in run.names.iter().zip(&run.seen) {
            match member.closed {
                Some(code) => assert!(retryable(code), "{}: {name} closed with {code:?}", run.name),
                None => {
                    let Some((epoch, _)) = member.epochs.last() else {
                        panic!(
                            "{}: {name}: no epoch frame after the failover: {member:?}",
                            run.name
                        );
                    };
                    assert_ne!(*epoch, run.first_epoch, "{}: {name}", run.name);
                    let last = member.messages.last().map(|(e, _, _)| e);
                    assert_eq!(last, Some(epoch), "{}: {name}", run.name);
                    new_epochs.insert(epoch.clone());
                }
            }
        }
        assert!(
            new_epochs.len() <= 1,
            "{}: the nodes disagree on the new epoch: {new_epochs:?}",
            run.name
        );
    }
    // The other shards' rooms lost nothing: the same epoch, nobody closed.
    for run in runs.iter().filter(|run| run.master != victim) {
        for (name, member) in run.names.iter().zip(&run.seen) {
            assert_eq!(member.closed, None, "{}: {name} was closed", run.name);
            assert!(
                member.epochs.is_empty(),
                "{}: {name}: the epoch changed, its shard did not fail over: {:?}",
                run.name,
                member.epochs
            );
        }
    }

    // A resume in a room of the killed shard: with the old epoch, refused; with the new one
    // from where it began, every message of it replayed, as its members saw them; from the
    // node its sender is not on.
    let run = &runs[0];
    let bob = &run.seen[2];
    if bob.closed.is_none() {
        let (new_epoch, base) = bob.epochs.last().cloned().expect("bob's new epoch");
        let last_old = bob
            .messages
            .iter()
            .filter(|(e, _, _)| *e == run.first_epoch)
            .map(|(_, seq, _)| *seq)
            .next_back()
            .unwrap_or(0);
        let other = &nodes[1 - run.sender_node];
        let old = join(other, &run.name, "late", Some((last_old, &run.first_epoch))).await;
        assert_eq!(old.welcome.resumed, Some(false), "{:?}", old.welcome);
        assert_eq!(old.welcome.epoch, new_epoch);
        let mut new = join(other, &run.name, "later", Some((base, &new_epoch))).await;
        let latest = new.welcome.seq;
        new.welcome
            .assert_resume(Some(true), Some(latest - base), latest, &new_epoch);
        let replayed: Vec<Msg> = new.rx.messages_through(latest).await;
        let seen_by_bob: Vec<(u64, &str)> = bob
            .messages
            .iter()
            .filter(|(e, _, _)| *e == new_epoch)
            .map(|(_, seq, text)| (*seq, text.as_str()))
            .collect();
        let replayed: Vec<(u64, &str)> = replayed
            .iter()
            .map(|m| (m.seq, m.text.as_str()))
            .take(seen_by_bob.len())
            .collect();
        assert_eq!(
            replayed, seen_by_bob,
            "{}: the new epoch's replay",
            run.name
        );
    }
}

/// `broker.wait_replicas = 1` (two replicas per master, so that the promoted one has a
/// replica left to confirm with): after the SIGKILL of a master, the rooms of its shard keep
/// their epoch like the others, nobody is closed, and every message a sender saw
/// acknowledged (its own copy) reached every member of its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_1_a_killed_master_loses_no_acknowledged_message_and_keeps_the_epoch() {
    let mut failover = failover_under_traffic("cluster-wait", 1, 2).await;
    failover.assert_nodes_followed().await;
    for run in &failover.runs {
        for (name, member) in run.names.iter().zip(&run.seen) {
            assert_eq!(member.closed, None, "{}: {name} was closed", run.name);
            assert!(
                member.epochs.is_empty(),
                "{}: {name}: the epoch changed: {:?}",
                run.name,
                member.epochs
            );
        }
        // The sender's own copies are its acknowledgements.
        let acknowledged: Vec<&String> = run.seen[0].messages.iter().map(|(_, _, t)| t).collect();
        for (name, member) in run.names.iter().zip(&run.seen).skip(1) {
            let got: HashSet<&String> = member.messages.iter().map(|(_, _, t)| t).collect();
            let missing: Vec<&&String> = acknowledged
                .iter()
                .filter(|text| !got.contains(**text))
                .collect();
            assert!(
                missing.is_empty(),
                "{}: {name} lacks acknowledged messages {missing:?}",
                run.name
            );
        }
    }
}

impl RoomRun {
    /// No seq names two messages within one epoch, whoever saw them, on either node; no
    /// member has a hole or a repeat within an epoch (each epoch's seqs are consecutive from
    /// where it began).
    fn assert_one_message_per_seq_and_no_hole(&self) {
        assert_one_message_per_seq_and_no_hole(
            &self.name,
            &self.first_epoch,
            &self.names,
            &self.seen,
        );
    }
}
