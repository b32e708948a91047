//! Table tests of [`Room`]: sequences of inputs (joins, snapshots, live messages, epoch
//! changes, leaves, a broker that reconnects) and the actions each step produces, written
//! compactly. They cover the interleavings the Redis-backed integration tests reach only
//! through real timing: live before snapshot, snapshot before live, a snapshot ahead of the
//! line, the broker lost mid-join, a join buffer that overflows, a catch-up that works, one
//! that cannot, and a stale catch-up answer.

use std::sync::Arc;

use super::*;
use crate::broker::MessageHead;

/// One input, with the members as small numbers and shards as letters' numbers.
#[derive(Debug, Clone)]
enum Step {
    /// Member joins on shard.
    Join(SessionId, u8),
    /// Member's snapshot: (asked to resume, epoch, seq, replayed seqs if resumed).
    Snap(SessionId, bool, &'static str, u64, Option<(u64, u64)>),
    /// Member's snapshot failed.
    SnapErr(SessionId),
    /// A live message (epoch, seq).
    Live(&'static str, u64),
    /// The room's epoch changed (epoch, seq).
    Epoch(&'static str, u64),
    /// Member leaves.
    Leave(SessionId),
    /// The broker is back: catch-up number.
    Reconnected(u64),
    /// A catch-up's answer: (attempt, epoch, seq, replayed seqs or None when not resumed).
    CaughtUp(u64, &'static str, u64, Option<(u64, u64)>),
    /// A catch-up that failed.
    CaughtUpErr(u64),
}

fn published(epoch: &str, seq: u64) -> Published {
    Published {
        room: Arc::from("r"),
        epoch: Epoch::new(epoch.to_owned()),
        seq,
        json: MessageHead::new("r", "ann", "x")
            .expect("a head")
            .finish(seq, 0),
        sent_by: None,
    }
}

fn snapshot(epoch: &str, seq: u64, replay: Option<(u64, u64)>, asked: bool) -> JoinSnapshot {
    let resume = match (asked, replay) {
        (false, _) => Resume::NotAsked,
        (true, None) => Resume::NotResumed,
        (true, Some((from, to))) => {
            Resume::Resumed((from..=to).map(|seq| published(epoch, seq)).collect())
        }
    };
    JoinSnapshot {
        room: Arc::from("r"),
        epoch: Epoch::new(epoch.to_owned()),
        seq,
        resume,
    }
}

/// A delivery as `a5` (message) or `E:b0` (epoch frame).
fn shown(delivery: &Delivery) -> String {
    match delivery {
        Delivery::Message(p) => format!("{}{}", p.epoch, p.seq),
        Delivery::Epoch(c) => format!("E:{}{}", c.epoch, c.seq),
    }
}

/// An action as one line, e.g. `admit 1@1 [a:5 resumed 2] a4 a5 +enroll*`.
fn line(action: &Action<u8>) -> String {
    match action {
        Action::Admit {
            member,
            shard,
            answer,
            deliveries,
            enroll,
            replayed,
        } => {
            let mut text = format!("admit {member}@{shard}");
            if let Some(answer) = answer {
                text.push_str(&format!(" [{}:{}", answer.epoch, answer.seq));
                match (answer.resumed, answer.missed) {
                    (Some(true), Some(missed)) => text.push_str(&format!(" resumed {missed}")),
                    (Some(false), _) => text.push_str(" not resumed"),
                    _ => {}
                }
                text.push(']');
            }
            for delivery in deliveries {
                text.push(' ');
                text.push_str(&shown(delivery));
            }
            if *enroll {
                text.push_str(" +enroll");
            }
            if *replayed {
                text.push('*');
            }
            text
        }
        Action::FanOut { delivery, replayed } => {
            format!(
                "fanout {}{}",
                shown(delivery),
                if *replayed { "*" } else { "" }
            )
        }
        Action::Retry { member, .. } => format!("retry {member}"),
        Action::Unanswered { member, .. } => format!("unanswered {member}"),
        Action::RetryEnrolled { members, .. } => {
            let mut members = members.clone();
            members.sort_unstable();
            format!("retry enrolled {members:?}")
        }
        Action::Remove { member, shard } => format!("remove {member}@{shard}"),
        Action::ReadSince { request, attempt } => format!(
            "read since {}:{} #{attempt}",
            request
                .epoch
                .as_ref()
                .map(Epoch::as_str)
                .unwrap_or_default(),
            request.since
        ),
    }
}

/// Runs `steps` on a room whose join buffer holds `buffer`; returns each step's actions.
fn run(buffer: usize, steps: &[Step]) -> (Room<u8>, Vec<Vec<String>>) {
    let mut room = Room::new(buffer);
    let mut per_step = Vec::new();
    for step in steps {
        let mut actions = Vec::new();
        match step.clone() {
            Step::Join(member, shard) => room.join(member, shard),
            Step::Snap(member, asked, epoch, seq, replay) => room.snapshot(
                member,
                asked,
                Ok(snapshot(epoch, seq, replay, asked)),
                &mut actions,
            ),
            Step::SnapErr(member) => {
                room.snapshot(member, false, Err(BrokerError::Unavailable), &mut actions)
            }
            Step::Live(epoch, seq) => room.live(published(epoch, seq), &mut actions),
            Step::Epoch(epoch, seq) => room.epoch_changed(
                &EpochChange {
                    room: Arc::from("r"),
                    epoch: Epoch::new(epoch.to_owned()),
                    seq,
                },
                &mut actions,
            ),
            Step::Leave(member) => room.leave(member, &mut actions),
            Step::Reconnected(attempt) => room.reconnected(attempt, &mut actions),
            Step::CaughtUp(attempt, epoch, seq, replay) => room.caught_up(
                attempt,
                Ok(snapshot(epoch, seq, replay, true)),
                &mut actions,
            ),
            Step::CaughtUpErr(attempt) => {
                room.caught_up(attempt, Err(BrokerError::Unavailable), &mut actions)
            }
        }
        per_step.push(actions.iter().map(line).collect());
    }
    (room, per_step)
}

#[test]
fn table() {
    use Step::*;
    // (case, join buffer, steps with the actions each must produce)
    type Case = (&'static str, usize, Vec<(Step, Vec<&'static str>)>);
    let cases: Vec<Case> =
        vec![
        (
            "a join in a quiet room is enrolled at once",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 0, None), vec!["admit 1@1 [a:0] +enroll*"]),
                (Live("a", 1), vec!["fanout a1"]),
                (Live("a", 1), vec![]), // a late copy
                (Live("a", 2), vec!["fanout a2"]),
            ],
        ),
        (
            "live before the snapshot (Redis: subscribed first) is merged after the replay",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Live("a", 5), vec![]),
                (Live("a", 6), vec![]),
                (
                    Snap(1, true, "a", 5, Some((3, 5))),
                    vec!["admit 1@1 [a:5 resumed 3] a3 a4 a5 a6 +enroll*"],
                ),
                (Live("a", 6), vec![]),
                (Live("a", 7), vec!["fanout a7"]),
            ],
        ),
        (
            "a second member joins a busy room: buffered live newer than its snapshot",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Join(2, 2), vec![]),
                (Live("a", 6), vec!["fanout a6"]),
                (Snap(2, false, "a", 5, None), vec!["admit 2@2 [a:5] a6 +enroll*"]),
                (Live("a", 7), vec!["fanout a7"]),
            ],
        ),
        (
            "a snapshot ahead of the line: one by one until the line catches up",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Join(2, 1), vec![]),
                (Snap(2, true, "a", 7, Some((7, 7))), vec!["admit 2@1 [a:7 resumed 1] a7*"]),
                (Live("a", 6), vec!["fanout a6"]),
                (Live("a", 7), vec!["fanout a7", "admit 2@1 +enroll"]),
                (Live("a", 8), vec!["fanout a8"]),
            ],
        ),
        (
            "the broker lost mid-join: the join is unanswered, the member out of the room",
            8,
            vec![
                (Join(1, 1), vec![]),
                (SnapErr(1), vec!["unanswered 1"]),
                (Live("a", 1), vec![]),
                (Leave(1), vec![]),
            ],
        ),
        (
            "the join buffer overflows: retried once, the room goes on",
            2,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 0, None), vec!["admit 1@1 [a:0] +enroll*"]),
                (Join(2, 2), vec![]),
                (Live("a", 1), vec!["fanout a1"]),
                (Live("a", 2), vec!["fanout a2"]),
                (Live("a", 3), vec!["fanout a3", "retry 2"]),
                (Live("a", 4), vec!["fanout a4"]),
                (Snap(2, false, "a", 3, None), vec![]),
            ],
        ),
        (
            "a snapshot in another epoch than buffered older messages",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Live("a", 9), vec![]),
                (Live("b", 1), vec![]),
                (Snap(1, false, "b", 0, None), vec!["admit 1@1 [b:0] b1 +enroll*"]),
                (Live("b", 2), vec!["fanout b2"]),
            ],
        ),
        (
            "an epoch change reaches enrolled and joining members before the next message",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Join(2, 2), vec![]),
                (Snap(2, false, "a", 7, None), vec!["admit 2@2 [a:7]*"]),
                (Epoch("b", 0), vec!["admit 2@2 E:b0", "fanout E:b0"]),
                (Live("b", 1), vec!["admit 2@2 b1", "fanout b1", "admit 2@2 +enroll"]),
                (Live("b", 2), vec!["fanout b2"]),
            ],
        ),
        (
            "the broker reconnects: catch-up, then the live messages buffered meanwhile",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (Live("a", 8), vec![]),
                (
                    CaughtUp(1, "a", 7, Some((6, 7))),
                    vec!["fanout a6*", "fanout a7*", "fanout a8*"],
                ),
                (Live("a", 9), vec!["fanout a9"]),
            ],
        ),
        (
            "a member joining during a catch-up waits for it",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (Join(2, 2), vec![]),
                (Snap(2, false, "a", 7, None), vec!["admit 2@2 [a:7]*"]),
                (Live("a", 8), vec!["admit 2@2 a8"]),
                (
                    CaughtUp(1, "a", 7, Some((6, 7))),
                    vec!["fanout a6*", "fanout a7*", "fanout a8*", "admit 2@2 +enroll"],
                ),
            ],
        ),
        (
            "history gone while cut off: the enrolled members retry",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Join(2, 2), vec![]),
                (Snap(2, false, "a", 5, None), vec!["admit 2@2 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (CaughtUp(1, "a", 9, None), vec!["retry enrolled [1, 2]"]),
            ],
        ),
        (
            "a catch-up that fails: the enrolled members retry",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (CaughtUpErr(1), vec!["retry enrolled [1]"]),
            ],
        ),
        (
            "too many live messages while catching up",
            2,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (Live("a", 8), vec![]),
                (Live("a", 9), vec![]),
                (Live("a", 10), vec!["retry enrolled [1]"]),
                (CaughtUp(1, "a", 7, Some((6, 7))), vec![]),
            ],
        ),
        (
            "a stale catch-up answer is ignored; the second reconnect starts where the first did",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Reconnected(1), vec!["read since a:5 #1"]),
                (Reconnected(2), vec!["read since a:5 #2"]),
                (CaughtUp(1, "a", 6, Some((6, 6))), vec![]),
                (CaughtUp(2, "a", 7, Some((6, 7))), vec!["fanout a6*", "fanout a7*"]),
            ],
        ),
        (
            "a member still catching up one by one resumes when the broker reconnects",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 5, None), vec!["admit 1@1 [a:5] +enroll*"]),
                (Join(2, 2), vec![]),
                (Snap(2, false, "a", 7, None), vec!["admit 2@2 [a:7]*"]),
                (Reconnected(1), vec!["read since a:5 #1", "retry 2"]),
                (CaughtUp(1, "a", 7, Some((6, 7))), vec!["fanout a6*", "fanout a7*"]),
            ],
        ),
        (
            "leaves take enrolled members out of their shard's fan-out",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Snap(1, false, "a", 0, None), vec!["admit 1@1 [a:0] +enroll*"]),
                (Join(2, 1), vec![]),
                (Snap(2, false, "a", 0, None), vec!["admit 2@1 [a:0] +enroll*"]),
                (Join(3, 2), vec![]),
                (Leave(3), vec![]),
                (Leave(1), vec!["remove 1@1"]),
                (Leave(2), vec!["remove 2@1"]),
                (Leave(2), vec![]),
            ],
        ),
        (
            "a snapshot for a member that left is dropped",
            8,
            vec![
                (Join(1, 1), vec![]),
                (Leave(1), vec![]),
                (Snap(1, false, "a", 0, None), vec![]),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (case, buffer, steps) in cases {
        let inputs: Vec<Step> = steps.iter().map(|(step, _)| step.clone()).collect();
        let (_, seen) = run(buffer, &inputs);
        for ((step, expected), seen) in steps.iter().zip(seen) {
            if seen != *expected {
                failures.push(format!(
                    "{case}: after {step:?}\n  expected {expected:?}\n  seen     {seen:?}"
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn shards_follow_the_enrolled_members() {
    use Step::*;
    let (room, _) = run(
        8,
        &[
            Join(1, 1),
            Snap(1, false, "a", 0, None),
            Join(2, 2),
            Snap(2, false, "a", 0, None),
            Join(3, 2),
            Snap(3, false, "a", 0, None),
            Join(4, 3),
            Leave(2),
        ],
    );
    let mut shards: Vec<u8> = room.shards().copied().collect();
    shards.sort_unstable();
    assert_eq!(shards, vec![1, 2]);
    assert_eq!(room.members(), 3);
    assert!(room.is_enrolled(3));
    assert!(!room.is_enrolled(4));
    assert!(!room.is_empty());
}
