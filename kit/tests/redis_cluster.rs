//! The kit's own test of `wsgrace_kit::redis_cluster`: a real Redis Cluster formed on free
//! loopback ports, its slots, a key's master, and a master's failover as the cluster tests
//! and the benchmarks use them. It owns this test only; the processes are the kit's.

use std::time::{Duration, Instant};

use wsgrace_kit::redis_cluster::{RedisCluster, SLOTS};

/// A failover takes a few seconds (node timeout 1 s, the vote, the promotion); reached only
/// on failure.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn three_masters_with_a_replica_each_cover_every_slot_and_follow_a_killed_master() {
    let mut cluster = RedisCluster::start(3, 1);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    for port in &ports {
        assert!(
            *port < 55_536,
            "port {port}: its cluster bus would be past 65535"
        );
    }
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let view = cluster.view().unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(view.covered_slots(), SLOTS);
    let hosts: Vec<String> = masters.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://{}", hosts.join(","))
    );
    for master in &masters {
        assert_eq!(cluster.replicas_of(*master).len(), 1, "master {master}");
    }

    // A hash-tagged key lives on its slot's master; the others redirect.
    let key = "kit-test:{room-1}:room";
    let owner = cluster.master_of(key).expect("the key's master");
    assert_eq!(
        cluster.keyslot(key),
        cluster.keyslot("{room-1}"),
        "the hash tag decides the slot"
    );
    let answer = cluster
        .command(owner, &["SET", key, "1"])
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(answer.trim(), "OK");
    let other = *masters
        .iter()
        .find(|p| **p != owner)
        .expect("another master");
    let moved = cluster
        .command(other, &["GET", key])
        .expect_err("another master serves the key");
    assert!(moved.to_string().contains("MOVED"), "{moved}");

    // SIGKILL of that master: its replica takes its slots, the cluster is ok again.
    let replica = cluster.replicas_of(owner)[0];
    let killed = Instant::now();
    cluster.kill(owner);
    let new = cluster
        .wait_failover(owner, FAILOVER_DEADLINE)
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!(
        "failover: SIGKILL of {owner} to {new} serving its slots on every node: {:?}",
        killed.elapsed()
    );
    assert_eq!(new, replica);
    assert_eq!(cluster.master_of(key), Some(new));
    let masters_after = cluster.master_ports();
    assert_eq!(masters_after.len(), 3, "{masters_after:?}");
    assert!(!masters_after.contains(&owner));
    let answer = cluster
        .command(new, &["SET", key, "2"])
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(answer.trim(), "OK");
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://{}", hosts.join(",")),
        "the URL stays the seeds it was"
    );

    // The killed master, restarted, rejoins as a replica of the new one.
    cluster
        .server_mut(owner)
        .expect("the killed node")
        .restart();
    let view = cluster
        .wait_stable(FAILOVER_DEADLINE)
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(view.replicas_of(new), vec![owner]);
}

#[test]
fn a_cluster_with_a_password_and_no_replicas() {
    const PASSWORD: &str = "kit-cluster-secret";
    let cluster = RedisCluster::builder(3, 0).password(PASSWORD).start();
    assert!(cluster
        .url()
        .starts_with(&format!("redis+cluster://:{PASSWORD}@127.0.0.1:")));
    assert_eq!(cluster.master_ports().len(), 3);
    let port = cluster.ports()[0];
    let refused = wsgrace_kit::redis::cli(port, &["PING"]).expect_err("a password is required");
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
    assert!(
        !refused.to_string().contains(PASSWORD),
        "the password reached an error: {refused}"
    );
}
