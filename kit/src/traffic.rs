//! Chat traffic that tests of resume run under: a talker that sends a numbered series while
//! reading its receipts (publishing how far the room has got), and a member that leaves and
//! resumes again and again, on one node or across several, checking every welcome. Built on
//! [`crate::chat`]; seeded, so that a failing run can be replayed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;

use crate::chat::{query, Member, Msg, WAIT};

/// A talker running in the background: its task (whose output is every message it received)
/// and the seq of its latest receipt, which is how far the room has got.
pub struct Talker {
    pub task: tokio::task::JoinHandle<Vec<Msg>>,
    pub progress: tokio::sync::watch::Receiver<u64>,
}

/// Sends `count` messages `"{prefix}-{n}"` from `member`, `pause` apart (traffic for the
/// others to join and resume under), while reading its own receipts (so that its outbound
/// queue stays short, and to publish how far the room has got).
pub fn spawn_talker(member: Member, prefix: &'static str, count: u64, pause: Duration) -> Talker {
    let base = member.welcome.seq;
    let Member { mut tx, mut rx, .. } = member;
    let (progress_tx, progress) = tokio::sync::watch::channel(base);
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.last().map_or(base, |m: &Msg| m.seq) < base + count {
            let msg = rx.message().await;
            progress_tx.send_replace(msg.seq);
            received.push(msg);
        }
        received
    });
    let task = tokio::spawn(async move {
        for n in 1..=count {
            tx.send(&format!("{prefix}-{n}")).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let received = reader.await.expect("the talker's reader panicked");
        tx.close().await;
        received
    });
    Talker { task, progress }
}

/// One client of a resume-under-traffic run. `member` joined its room before the traffic
/// started. `rounds` times it reads a few messages, leaves (alternately with a close
/// handshake and by dropping the TCP connection), waits until the room (`progress`, the
/// talker's latest seq) has got a few messages past it, or none, and resumes at the next
/// address of `nodes` with `since` = the last seq it saw and the welcome's epoch; every
/// resume must answer `resumed: true` with the right `missed`. The counts are drawn from
/// `seed`. Then it reads through seq `last`. Returns every message it took in, in order,
/// and the sum of `missed`.
pub async fn resume_rounds(
    mut member: Member,
    nodes: Vec<SocketAddr>,
    rounds: usize,
    last: u64,
    mut progress: tokio::sync::watch::Receiver<u64>,
    seed: u64,
) -> (Vec<Msg>, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let room = member.welcome.room.clone();
    let name = member.welcome.name.clone();
    let epoch = member.welcome.epoch.clone();
    let mut seen: Vec<Msg> = Vec::new();
    let mut missed_total = 0;
    for round in 0..rounds {
        let mut seq = seen.last().map_or(member.welcome.seq, |m| m.seq);
        let take = rng.gen_range(1..=25).min(last - seq);
        for _ in 0..take {
            let msg = member.message().await;
            assert_eq!(
                msg.seq,
                seq + 1,
                "{name} round {round}: seq {} after {seq}",
                msg.seq
            );
            seq = msg.seq;
            seen.push(msg);
        }
        if round % 2 == 0 {
            member.leave().await;
        } else {
            drop(member);
        }
        let behind = (seq + rng.gen_range(0..=5)).min(last);
        timeout(WAIT, progress.wait_for(|room| *room >= behind))
            .await
            .expect("the room did not move on")
            .expect("the talker stopped early");
        let node = nodes[(round + 1) % nodes.len()];
        let url = format!("ws://{node}/ws{}", query(&room, &name, Some((seq, &epoch))));
        member = Member::join(url).await;
        let welcome = &member.welcome;
        assert_eq!(
            (welcome.resumed, welcome.epoch.as_str()),
            (Some(true), epoch.as_str()),
            "{name} round {round}: resume after {seq} on {node}: {welcome:?}"
        );
        assert!(
            welcome.seq >= seq,
            "{name}: welcome {welcome:?} after {seq}"
        );
        assert_eq!(
            welcome.missed,
            Some(welcome.seq - seq),
            "{name} round {round}: {welcome:?} after {seq}"
        );
        missed_total += welcome.seq - seq;
    }
    let seq = seen.last().map_or(member.welcome.seq, |m| m.seq);
    if seq < last {
        seen.extend(member.rx.messages_through(last).await);
    }
    member.leave().await;
    (seen, missed_total)
}
