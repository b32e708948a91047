//! The resume merge for one joining session: replayed history and live messages, each seq
//! delivered once, in order, with no gap.
//!
//! A joining session attaches to the room's live messages first (with the Redis broker: its
//! SUBSCRIBE is confirmed) and then reads the [`JoinSnapshot`]. Live messages that arrive
//! before the snapshot are buffered; the snapshot releases its replay (the messages after
//! `since`) and then the buffered ones newer than the snapshot; after that live messages pass
//! through, and any seq at or below the last one delivered is dropped.
//!
//! Epochs: a live message of another epoch than the one delivered so far means the room's
//! history was lost; the merge answers with a [`Delivery::Epoch`] (the `epoch` frame) before
//! it. Buffered messages of another epoch that precede the snapshot's epoch in the buffer are
//! older than the snapshot and dropped; those after it are newer.
//!
//! [`ResumeMerge`] is a pure state machine: no actix, no I/O, no clock. It must not decide
//! anything about rooms or sessions beyond which of these messages to send, in which order.

use crate::broker::Epoch;
use crate::broker::{EpochChange, JoinSnapshot, Published, Resume};

/// One thing to send to the session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A `message` frame.
    Message(Published),
    /// An `epoch` frame: the room's history was lost; seqs continue in the new epoch.
    Epoch(EpochChange),
}

/// More live messages arrived before the snapshot than the merge may buffer: the session
/// cannot be given every seq and should be closed (its client reconnects and resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {0} live messages arrived before the join snapshot")]
pub struct BufferFull(pub usize);

enum Phase {
    /// Before the snapshot: live messages and epoch changes in arrival order.
    Waiting(Vec<Published>),
    /// After it: the epoch and seq delivered last.
    Live { epoch: Epoch, last: u64 },
    /// The buffer overflowed; nothing more is delivered.
    Failed,
}

/// The merge state of one joining session. See the module doc.
pub struct ResumeMerge {
    phase: Phase,
    max_buffer: usize,
}

impl ResumeMerge {
    /// A merge that buffers at most `max_buffer` live messages before the snapshot.
    pub fn new(max_buffer: usize) -> Self {
        ResumeMerge {
            phase: Phase::Waiting(Vec::new()),
            max_buffer,
        }
    }

    /// A merge already live at `epoch` and `seq`: it passes on every later message once, in
    /// order (the supervisor keeps one per room for the sessions it fans out to together).
    pub fn live_at(epoch: Epoch, seq: u64) -> Self {
        ResumeMerge {
            phase: Phase::Live { epoch, last: seq },
            max_buffer: 0,
        }
    }

    /// Whether the snapshot has been merged.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live { .. })
    }

    /// The epoch and seq delivered last (the snapshot's, before any message), once live.
    pub fn last_delivered(&self) -> Option<(&Epoch, u64)> {
        match &self.phase {
            Phase::Live { epoch, last } => Some((epoch, *last)),
            Phase::Waiting(_) | Phase::Failed => None,
        }
    }

    /// A live message of the session's room: buffered before the snapshot; afterwards
    /// appended to `out` (after an epoch frame if its epoch is new) unless already delivered.
    pub fn live(&mut self, message: Published, out: &mut Vec<Delivery>) -> Result<(), BufferFull> {
        match &mut self.phase {
            Phase::Waiting(buffer) => {
                if buffer.len() >= self.max_buffer {
                    self.phase = Phase::Failed;
                    return Err(BufferFull(self.max_buffer));
                }
                buffer.push(message);
                Ok(())
            }
            Phase::Live { epoch, last } => {
                pass(epoch, last, message, out);
                Ok(())
            }
            Phase::Failed => Err(BufferFull(self.max_buffer)),
        }
    }

    /// The broker reports that the room's epoch changed (e.g. Redis came back empty). Once
    /// live, appends the epoch frame to `out` unless that epoch is already the current one;
    /// before the snapshot it is ignored (the snapshot or the messages carry the epoch).
    pub fn epoch_changed(&mut self, change: &EpochChange, out: &mut Vec<Delivery>) {
        if let Phase::Live { epoch, last } = &mut self.phase {
            if *epoch != change.epoch {
                *epoch = change.epoch.clone();
                *last = change.seq;
                out.push(Delivery::Epoch(change.clone()));
            }
        }
    }

    /// The join snapshot: appends the replay (a resume's missed messages, or the last K a
    /// join asked for), then the buffered live messages newer than it, to `out`, and passes live messages through from now on. A second snapshot is
    /// ignored.
    pub fn snapshot(
        &mut self,
        snapshot: &JoinSnapshot,
        out: &mut Vec<Delivery>,
    ) -> Result<(), BufferFull> {
        let buffer = match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Waiting(buffer) => buffer,
            Phase::Failed => return Err(BufferFull(self.max_buffer)),
            live @ Phase::Live { .. } => {
                self.phase = live;
                return Ok(());
            }
        };
        let mut epoch = snapshot.epoch.clone();
        let mut last = snapshot.seq;
        if let Resume::Resumed(replay) | Resume::Recent(replay) = &snapshot.resume {
            for message in replay {
                out.push(Delivery::Message(message.clone()));
            }
        }
        // Buffered messages before the last one of the snapshot's epoch predate the snapshot
        // when their epoch differs: a room cannot go back to an epoch it left.
        let start = buffer
            .iter()
            .rposition(|message| message.epoch == snapshot.epoch)
            .unwrap_or(0);
        for (index, message) in buffer.into_iter().enumerate() {
            if index < start && message.epoch != snapshot.epoch {
                continue;
            }
            pass(&mut epoch, &mut last, message, out);
        }
        self.phase = Phase::Live { epoch, last };
        Ok(())
    }
}

/// Live delivery after the snapshot: new epoch → epoch frame first; same epoch → only seqs
/// above the last delivered.
fn pass(epoch: &mut Epoch, last: &mut u64, message: Published, out: &mut Vec<Delivery>) {
    if message.epoch != *epoch {
        *epoch = message.epoch.clone();
        out.push(Delivery::Epoch(EpochChange {
            room: message.room.clone(),
            epoch: message.epoch.clone(),
            seq: message.seq.saturating_sub(1),
        }));
    } else if message.seq <= *last {
        return;
    }
    *last = message.seq;
    out.push(Delivery::Message(message));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::broker::MessageHead;

    fn msg(epoch: &str, seq: u64) -> Published {
        Published {
            room: Arc::from("r"),
            epoch: Epoch::new(epoch.to_owned()),
            seq,
            json: MessageHead::new("r", "ann", "x").unwrap().finish(seq, 0),
            sent_by: None,
        }
    }

    fn snap(epoch: &str, seq: u64, resume: Resume) -> JoinSnapshot {
        JoinSnapshot {
            room: Arc::from("r"),
            epoch: Epoch::new(epoch.to_owned()),
            seq,
            resume,
        }
    }

    fn replay(epoch: &str, seqs: std::ops::RangeInclusive<u64>) -> Resume {
        Resume::Resumed(seqs.map(|seq| msg(epoch, seq)).collect())
    }

    /// `E` = epoch frame (epoch, seq), `M` = message (epoch, seq).
    fn shown(out: &[Delivery]) -> Vec<String> {
        out.iter()
            .map(|d| match d {
                Delivery::Message(p) => format!("{}{}", p.epoch, p.seq),
                Delivery::Epoch(c) => format!("E:{}{}", c.epoch, c.seq),
            })
            .collect()
    }

    enum Step {
        Live(&'static str, u64),
        Snap(JoinSnapshot),
    }

    fn run(steps: Vec<Step>) -> Vec<String> {
        let mut merge = ResumeMerge::new(100);
        let mut out = Vec::new();
        for step in steps {
            match step {
                Step::Live(e, s) => merge.live(msg(e, s), &mut out).unwrap(),
                Step::Snap(snapshot) => merge.snapshot(&snapshot, &mut out).unwrap(),
            }
        }
        shown(&out)
    }

    #[test]
    fn table() {
        use Step::{Live, Snap};
        let cases: Vec<(&str, Vec<Step>, Vec<&str>)> = vec![
            (
                "the last K of a join, then the live messages newer than them",
                vec![
                    Live("a", 6),
                    Snap(snap("a", 5, Resume::Recent(vec![msg("a", 4), msg("a", 5)]))),
                    Live("a", 7),
                ],
                vec!["a4", "a5", "a6", "a7"],
            ),
            (
                "resumed, nothing live",
                vec![Snap(snap("a", 5, replay("a", 3..=5)))],
                vec!["a3", "a4", "a5"],
            ),
            (
                "live before the snapshot overlaps the replay",
                vec![
                    Live("a", 5),
                    Live("a", 6),
                    Snap(snap("a", 5, replay("a", 3..=5))),
                    Live("a", 7),
                ],
                vec!["a3", "a4", "a5", "a6", "a7"],
            ),
            (
                "live after the snapshot repeats what it held",
                vec![
                    Snap(snap("a", 5, replay("a", 4..=5))),
                    Live("a", 5),
                    Live("a", 6),
                    Live("a", 6),
                ],
                vec!["a4", "a5", "a6"],
            ),
            (
                "not resumed: live from N+1 only",
                vec![
                    Live("a", 9),
                    Live("a", 10),
                    Snap(snap("a", 9, Resume::NotResumed)),
                    Live("a", 11),
                ],
                vec!["a10", "a11"],
            ),
            (
                "not asked",
                vec![Snap(snap("a", 0, Resume::NotAsked)), Live("a", 1)],
                vec!["a1"],
            ),
            (
                "resumed with 0",
                vec![
                    Snap(snap("a", 4, Resume::Resumed(Vec::new()))),
                    Live("a", 5),
                ],
                vec!["a5"],
            ),
            (
                "a new epoch after the snapshot",
                vec![
                    Snap(snap("a", 4, Resume::NotResumed)),
                    Live("a", 5),
                    Live("b", 1),
                    Live("b", 2),
                ],
                vec!["a5", "E:b0", "b1", "b2"],
            ),
            (
                "a new epoch buffered after the snapshot's",
                vec![
                    Live("a", 5),
                    Live("b", 1),
                    Snap(snap("a", 4, Resume::NotResumed)),
                    Live("b", 2),
                ],
                vec!["a5", "E:b0", "b1", "b2"],
            ),
            (
                "an old epoch buffered before the snapshot's is dropped",
                vec![
                    Live("z", 7),
                    Live("a", 1),
                    Snap(snap("a", 0, Resume::NotResumed)),
                    Live("a", 2),
                ],
                vec!["a1", "a2"],
            ),
        ];
        for (name, steps, expected) in cases {
            assert_eq!(run(steps), expected, "{name}");
        }
    }

    #[test]
    fn epoch_changed_events() {
        let mut merge = ResumeMerge::new(10);
        let mut out = Vec::new();
        let change = EpochChange {
            room: Arc::from("r"),
            epoch: Epoch::new("b"),
            seq: 0,
        };
        merge.epoch_changed(&change, &mut out); // before the snapshot: ignored
        merge
            .snapshot(&snap("a", 3, Resume::NotAsked), &mut out)
            .unwrap();
        merge.epoch_changed(&change, &mut out);
        merge.epoch_changed(&change, &mut out); // reported twice: told once
        merge.live(msg("b", 1), &mut out).unwrap();
        assert_eq!(shown(&out), ["E:b0", "b1"]);
        assert_eq!(merge.last_delivered(), Some((&Epoch::new("b"), 1)));
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut merge = ResumeMerge::new(2);
        let mut out = Vec::new();
        merge.live(msg("a", 1), &mut out).unwrap();
        merge.live(msg("a", 2), &mut out).unwrap();
        assert_eq!(merge.live(msg("a", 3), &mut out), Err(BufferFull(2)));
        assert_eq!(
            merge.snapshot(&snap("a", 0, Resume::NotAsked), &mut out),
            Err(BufferFull(2))
        );
        assert!(out.is_empty());
        assert!(!merge.is_live());
    }

    /// A room with messages 1..=n. The session resumes from `since`; the snapshot is read at
    /// `snap_at` (messages 1..=snap_at exist then). Live delivery starts at `attach` ≤
    /// `snap_at` (the subscription came first: it sees every message after `attach`, and
    /// possibly some before, as `extra_before`), and the snapshot's answer reaches the merge
    /// after `arrive` live messages were handed over.
    fn check(
        n: u64,
        history: u64,
        since: u64,
        attach: u64,
        extra: u64,
        snap_at: u64,
        arrive: usize,
    ) {
        let oldest = snap_at.saturating_sub(history) + 1;
        let resume = if since <= snap_at && (since == snap_at || oldest <= since + 1) {
            replay("a", since + 1..=snap_at)
        } else {
            Resume::NotResumed
        };
        let resumed = matches!(resume, Resume::Resumed(_));
        let snapshot = snap("a", snap_at, resume);
        let first_live = attach.saturating_sub(extra) + 1;
        let live: Vec<u64> = (first_live..=n).collect();
        let arrive = arrive.min(live.len());

        let mut merge = ResumeMerge::new(1_000);
        let mut out = Vec::new();
        for &seq in &live[..arrive] {
            merge.live(msg("a", seq), &mut out).unwrap();
        }
        merge.snapshot(&snapshot, &mut out).unwrap();
        for &seq in &live[arrive..] {
            merge.live(msg("a", seq), &mut out).unwrap();
        }
        let got: Vec<u64> = out
            .iter()
            .map(|d| match d {
                Delivery::Message(p) => p.seq,
                Delivery::Epoch(_) => panic!("no epoch change here"),
            })
            .collect();
        let from = if resumed { since + 1 } else { snap_at + 1 };
        let expected: Vec<u64> = (from..=n).collect();
        assert_eq!(
            got, expected,
            "n={n} history={history} since={since} attach={attach} extra={extra} \
             snap_at={snap_at} arrive={arrive}"
        );
    }

    #[test]
    fn every_small_interleaving() {
        for n in 0..=6 {
            for snap_at in 0..=n {
                for attach in 0..=snap_at {
                    for extra in 0..=attach {
                        for since in 0..=n + 1 {
                            for history in [0, 1, 3, 10] {
                                for arrive in 0..=(n as usize + 1) {
                                    check(n, history, since, attach, extra, snap_at, arrive);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_interleaving(
            n in 0u64..200,
            history in 0u64..50,
            since_frac in 0.0f64..1.2,
            snap_frac in 0.0f64..=1.0,
            attach_frac in 0.0f64..=1.0,
            extra_frac in 0.0f64..=1.0,
            arrive in 0usize..220,
        ) {
            let snap_at = (n as f64 * snap_frac) as u64;
            let attach = (snap_at as f64 * attach_frac) as u64;
            let extra = (attach as f64 * extra_frac) as u64;
            let since = (n as f64 * since_frac) as u64;
            check(n, history, since, attach, extra, snap_at, arrive);
        }
    }
}
