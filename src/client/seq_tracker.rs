//! Where the app is in one room, pure: the [`SeqTracker`] remembers the epoch and the last
//! seq handed to the app, decides for each `message` whether the app gets it (each seq once,
//! in increasing order), tells what a v1 `welcome` or a v2 `joined` means after a resume
//! ([`WelcomeOutcome`]: resumed, refused with a gap, ...), and gives the `since`/`epoch` of
//! the next connection (v1) or join (v2: one tracker per room).
//!
//! It must not do I/O, know tokio, or read frames: the shell hands it what `wire.rs` parsed
//! and carries out its answers (deliver or drop, report a gap), so every rule is a unit test
//! below.

use super::wire::{Resume, Welcome};

/// Where a room is as a v1 `welcome` or a v2 `joined` says: its epoch, its latest seq, and
/// (when the connection or join asked `since`) whether the resume succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinPosition {
    pub epoch: Option<String>,
    pub seq: Option<u64>,
    pub resumed: Option<bool>,
    /// With `resumed: true`: how many messages are replayed next.
    pub missed: Option<u64>,
}

impl Welcome {
    /// The room's position as this welcome tells it.
    pub fn position(&self) -> JoinPosition {
        JoinPosition {
            epoch: self.epoch.clone(),
            seq: self.seq,
            resumed: self.resumed,
            missed: self.missed,
        }
    }
}

/// What a welcome means for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WelcomeOutcome {
    /// No resume was asked (or nothing to resume from): delivery starts after its seq.
    Fresh,
    /// The resume succeeded: `missed` messages are replayed next.
    Resumed { missed: u64 },
    /// The resume was refused: messages after `previous_seq` may be lost; delivery
    /// continues after `seq`.
    Gap {
        previous_epoch: Option<String>,
        previous_seq: u64,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    /// The resume was refused, but the welcome proves nothing was missed.
    NotResumed,
}

/// Remembers where the app is in the room (epoch + last seq) and decides, for each frame
/// that carries a seq, whether the app gets it. Pure: no socket, no timer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// The epoch `seq` belongs to.
    epoch: Option<String>,
    /// The last seq handed to the app, or the welcome's seq if later; `None`: none yet.
    seq: Option<u64>,
}

impl SeqTracker {
    pub fn new() -> SeqTracker {
        SeqTracker::default()
    }

    /// A tracker that goes on from `resume` (the app has every message through
    /// `resume.since` of `resume.epoch`).
    pub fn resuming(resume: &Resume) -> SeqTracker {
        SeqTracker {
            epoch: resume.epoch.clone(),
            seq: Some(resume.since),
        }
    }

    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.seq
    }

    /// `since`/`epoch` for the next connection, or `None` before the first welcome.
    pub fn resume_params(&self) -> Option<Resume> {
        self.seq.map(|since| Resume {
            since,
            epoch: self.epoch.clone(),
        })
    }

    /// A welcome arrived; `asked_resume`: this connection's URL carried `since`.
    pub fn on_welcome(&mut self, welcome: &Welcome, asked_resume: bool) -> WelcomeOutcome {
        self.on_join(&welcome.position(), asked_resume)
    }

    /// The room's position as a v1 `welcome` or a v2 `joined` tells it; `asked_resume`: the
    /// connection (v1) or the join (v2) carried `since`.
    pub fn on_join(&mut self, joined: &JoinPosition, asked_resume: bool) -> WelcomeOutcome {
        if asked_resume && joined.resumed == Some(true) {
            // The replay (since+1 … joined.seq) follows: keep `seq` so that it is delivered.
            if joined.epoch.is_some() {
                self.epoch.clone_from(&joined.epoch);
            }
            return WelcomeOutcome::Resumed {
                missed: joined.missed.unwrap_or(0),
            };
        }
        let previous_epoch = std::mem::replace(&mut self.epoch, joined.epoch.clone());
        let previous_seq = std::mem::replace(&mut self.seq, joined.seq);
        let Some(previous_seq) = previous_seq.filter(|_| asked_resume) else {
            return WelcomeOutcome::Fresh;
        };
        if previous_epoch == joined.epoch && Some(previous_seq) == joined.seq {
            return WelcomeOutcome::NotResumed;
        }
        WelcomeOutcome::Gap {
            previous_epoch,
            previous_seq,
            epoch: joined.epoch.clone(),
            seq: joined.seq,
        }
    }

    /// After a fresh v2 join that asked `"last":K`: the room's last K messages (up to the
    /// join's seq) follow the `joined` frame and are delivered, each once, in order. Until
    /// the first of them, a reconnect resumes from K before the join's seq (and may report a
    /// gap when fewer were kept, which is then true of the resume, not of the app).
    pub fn replay_last(&mut self, last: u64) {
        self.seq = self.seq.map(|seq| seq.saturating_sub(last));
    }

    /// A `message` frame with this seq: true if the app gets it (past the last one
    /// delivered). A message without a usable seq cannot be deduplicated and is dropped.
    pub fn on_message(&mut self, seq: Option<u64>) -> bool {
        let Some(seq) = seq else {
            return false;
        };
        if self.seq.is_some_and(|last| seq <= last) {
            return false;
        }
        self.seq = Some(seq);
        true
    }

    /// An `epoch` frame: the room's history restarted; seqs continue after `seq`.
    pub fn on_epoch(&mut self, epoch: Option<String>, seq: Option<u64>) {
        self.epoch = epoch;
        self.seq = Some(seq.unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(epoch: &str, seq: u64, resumed: Option<bool>, missed: Option<u64>) -> Welcome {
        Welcome {
            room: "r".into(),
            name: "n".into(),
            epoch: Some(epoch.into()),
            seq: Some(seq),
            resumed,
            missed,
        }
    }

    fn resume(since: u64, epoch: &str) -> Option<Resume> {
        Some(Resume {
            since,
            epoch: Some(epoch.into()),
        })
    }

    #[test]
    fn seq_tracker_fresh_join_then_dedupes_and_resumes() {
        let mut t = SeqTracker::new();
        assert_eq!(t.resume_params(), None);
        assert_eq!(
            t.on_welcome(&welcome("e1", 5, None, None), false),
            WelcomeOutcome::Fresh
        );
        assert_eq!(t.resume_params(), resume(5, "e1"));
        // Messages: each seq once, increasing.
        let table: &[(Option<u64>, bool)] = &[
            (Some(4), false), // before the welcome's seq
            (Some(5), false),
            (Some(6), true),
            (Some(6), false), // duplicate
            (Some(8), true),  // a jump is delivered (seqs have no gap on the wire)
            (Some(7), false), // out of order
            (None, false),    // no usable seq
            (Some(9), true),
        ];
        for &(seq, delivered) in table {
            assert_eq!(t.on_message(seq), delivered, "{seq:?}");
        }
        assert_eq!(t.last_seq(), Some(9));
        assert_eq!(t.resume_params(), resume(9, "e1"));
    }

    #[test]
    fn seq_tracker_welcome_outcomes() {
        // (name, before: (epoch, seq) or none, asked_resume, welcome, outcome, after)
        type Before = Option<(&'static str, u64)>;
        type Row = (
            &'static str,
            Before,
            bool,
            Welcome,
            WelcomeOutcome,
            Option<Resume>,
        );
        let table: Vec<Row> = vec![
            (
                "first welcome",
                None,
                false,
                welcome("e1", 3, None, None),
                WelcomeOutcome::Fresh,
                resume(3, "e1"),
            ),
            (
                "resumed: the replay follows, seq kept",
                Some(("e1", 3)),
                true,
                welcome("e1", 7, Some(true), Some(4)),
                WelcomeOutcome::Resumed { missed: 4 },
                resume(3, "e1"),
            ),
            (
                "resumed without missed",
                Some(("e1", 3)),
                true,
                welcome("e1", 3, Some(true), None),
                WelcomeOutcome::Resumed { missed: 0 },
                resume(3, "e1"),
            ),
            (
                "refused, another epoch: gap",
                Some(("e1", 3)),
                true,
                welcome("e2", 0, Some(false), None),
                WelcomeOutcome::Gap {
                    previous_epoch: Some("e1".into()),
                    previous_seq: 3,
                    epoch: Some("e2".into()),
                    seq: Some(0),
                },
                resume(0, "e2"),
            ),
            (
                "refused, trimmed history: gap",
                Some(("e1", 3)),
                true,
                welcome("e1", 2000, Some(false), None),
                WelcomeOutcome::Gap {
                    previous_epoch: Some("e1".into()),
                    previous_seq: 3,
                    epoch: Some("e1".into()),
                    seq: Some(2000),
                },
                resume(2000, "e1"),
            ),
            (
                "refused but nothing missed",
                Some(("e1", 3)),
                true,
                welcome("e1", 3, Some(false), None),
                WelcomeOutcome::NotResumed,
                resume(3, "e1"),
            ),
            (
                "no resume asked although a position is known: fresh",
                Some(("e1", 3)),
                false,
                welcome("e1", 9, None, None),
                WelcomeOutcome::Fresh,
                resume(9, "e1"),
            ),
            (
                "resumed: true but not asked: fresh",
                Some(("e1", 3)),
                false,
                welcome("e1", 9, Some(true), Some(6)),
                WelcomeOutcome::Fresh,
                resume(9, "e1"),
            ),
        ];
        for (name, before, asked, w, outcome, after) in table {
            let mut t = SeqTracker::new();
            if let Some((epoch, seq)) = before {
                t.on_welcome(&welcome(epoch, seq, None, None), false);
            }
            assert_eq!(t.on_welcome(&w, asked), outcome, "{name}");
            assert_eq!(t.resume_params(), after, "{name}");
        }
    }

    #[test]
    fn seq_tracker_replay_after_resume_is_delivered_once() {
        let mut t = SeqTracker::new();
        t.on_welcome(&welcome("e1", 2, None, None), false);
        assert!(t.on_message(Some(3)));
        let outcome = t.on_welcome(&welcome("e1", 6, Some(true), Some(3)), true);
        assert_eq!(outcome, WelcomeOutcome::Resumed { missed: 3 });
        let delivered: Vec<u64> = [3, 4, 5, 6, 5, 7]
            .into_iter()
            .filter(|seq| t.on_message(Some(*seq)))
            .collect();
        assert_eq!(delivered, [4, 5, 6, 7]);
    }

    #[test]
    fn seq_tracker_replays_the_last_k_of_a_fresh_join() {
        let joined = |seq| JoinPosition {
            epoch: Some("e1".into()),
            seq: Some(seq),
            resumed: None,
            missed: None,
        };
        // (join's seq, last K, messages that follow, delivered, resume point after)
        type Row = (u64, u64, Vec<u64>, Vec<u64>, u64);
        let table: Vec<Row> = vec![
            (10, 3, vec![8, 9, 10, 11], vec![8, 9, 10, 11], 11),
            (10, 3, vec![9, 10, 11], vec![9, 10, 11], 11), // fewer kept than asked
            (10, 3, vec![8, 8, 7, 9], vec![8, 9], 9),      // each once, in order
            (2, 50, vec![1, 2, 3], vec![1, 2, 3], 3),      // more asked than the room has
            (10, 0, vec![10, 11], vec![11], 11),           // last 0: live only
            (10, 3, vec![], vec![], 7),                    // reconnect before any: since 7
        ];
        for (seq, last, messages, delivered, after) in table {
            let mut t = SeqTracker::new();
            assert_eq!(t.on_join(&joined(seq), false), WelcomeOutcome::Fresh);
            t.replay_last(last);
            let got: Vec<u64> = messages
                .iter()
                .copied()
                .filter(|seq| t.on_message(Some(*seq)))
                .collect();
            assert_eq!(got, delivered, "join at {seq}, last {last}");
            assert_eq!(t.resume_params(), resume(after, "e1"));
        }
    }

    #[test]
    fn seq_tracker_epoch_frame_resets() {
        let mut t = SeqTracker::new();
        t.on_welcome(&welcome("e1", 40, None, None), false);
        assert!(t.on_message(Some(41)));
        t.on_epoch(Some("e2".into()), Some(0));
        assert_eq!(t.resume_params(), resume(0, "e2"));
        assert!(t.on_message(Some(1)), "seqs start again from 1");
        assert!(!t.on_message(Some(1)));
        t.on_epoch(None, None);
        assert_eq!(
            t.resume_params(),
            Some(Resume {
                since: 0,
                epoch: None
            })
        );
    }
}
