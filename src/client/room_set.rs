//! The rooms of a `wsgrace.v2` client, pure: which rooms the app is in, where each one is
//! (a [`SeqTracker`] per room: epoch, last seq, dedupe), and how far each one's join has
//! come on the current connection (waiting for the next connection, join sent, joined,
//! waiting to retry a join the broker could not take). It says which `join` frame each room
//! needs after a hello (its own `since`/`epoch`, or `last` on a first join), which `message`
//! the app gets (each seq once, in order, per room, and only from a joined room), what a
//! `joined` means (resumed, or a gap), and matches `left` and refusals to the requests they
//! answer by `ref`.
//!
//! It must not do I/O, read a clock, draw a random number (passed in) or know the
//! unacknowledged publishes (that is the [`Outbox`](super::outbox::Outbox)); the
//! `rooms_core` combines the two and the shell carries out what they answer.

use std::time::Duration;

use super::policy::{backoff_delay, Backoff};
use super::seq_tracker::{SeqTracker, WelcomeOutcome};
use super::wire::Resume;
use super::wire_v2::{ClientFrame, JoinStart, Joined, RoomMessage};
use super::{JoinOptions, RoomError, MAX_LAST};
use crate::config::is_valid_name;

/// How far a room's join has come on the current connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Joined on the next connection, after its hello.
    Waiting,
    /// The join was sent on this connection with this `ref`.
    Joining { reference: String, start: JoinStart },
    /// Joined on this connection: its messages are delivered.
    Joined,
    /// The broker could not take the join (`unavailable`): sent again after a delay.
    RetryingJoin { attempt: u32 },
}

#[derive(Debug, Clone)]
struct RoomEntry {
    room: String,
    phase: Phase,
    tracker: SeqTracker,
    /// `last` of the app's join: used until the room has a position.
    last: Option<u32>,
    /// Joins refused with `unavailable` since the last `joined`.
    refused_joins: u32,
}

impl RoomEntry {
    /// Where this room's next join starts: after its position, or its last K, or now.
    fn start(&self) -> JoinStart {
        match (self.tracker.resume_params(), self.last) {
            (Some(resume), _) => JoinStart::Since(resume),
            (None, Some(last)) => JoinStart::Last(last),
            (None, None) => JoinStart::Present,
        }
    }
}

/// What a `joined` frame meant for its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedRoom {
    pub room: String,
    pub outcome: WelcomeOutcome,
}

/// What a refused join means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefusal {
    /// `unavailable`: the join is sent again after `delay` (call
    /// [`RoomSet::retry_join`] with `room` and `attempt` then).
    RetryAfter {
        room: String,
        attempt: u32,
        delay: Duration,
    },
    /// Any other code: the room is no longer in the set.
    Refused { room: String },
}

/// The rooms of one v2 client across its connections.
#[derive(Debug, Default)]
pub struct RoomSet {
    /// In the order the app joined them; a room at most once.
    entries: Vec<RoomEntry>,
    /// Leaves sent on this connection whose `left` has not come: (room, ref).
    leaving: Vec<(String, String)>,
    /// A hello came on the current connection.
    connected: bool,
    next_reference: u64,
}

impl RoomSet {
    pub fn new() -> RoomSet {
        RoomSet::default()
    }

    fn reference(&mut self, kind: char) -> String {
        self.next_reference += 1;
        format!("{kind}{}", self.next_reference)
    }

    fn entry(&self, room: &str) -> Option<&RoomEntry> {
        self.entries.iter().find(|e| e.room == room)
    }

    fn entry_mut(&mut self, room: &str) -> Option<&mut RoomEntry> {
        self.entries.iter_mut().find(|e| e.room == room)
    }

    /// A join frame for the entry at `index`, which becomes Joining.
    fn send_join(&mut self, index: usize) -> Option<ClientFrame> {
        let reference = self.reference('j');
        let entry = self.entries.get_mut(index)?;
        let start = entry.start();
        entry.phase = Phase::Joining {
            reference: reference.clone(),
            start: start.clone(),
        };
        Some(ClientFrame::Join {
            room: entry.room.clone(),
            start,
            reference,
        })
    }

    /// The app joins `room`: a join frame now when connected, else after the next hello.
    pub fn join(
        &mut self,
        room: &str,
        options: &JoinOptions,
    ) -> Result<Option<ClientFrame>, RoomError> {
        if !is_valid_name(room) {
            return Err(RoomError::BadRoom(room.to_owned()));
        }
        if let Some(last) = options.last.filter(|last| *last > MAX_LAST) {
            return Err(RoomError::LastOutOfRange(last));
        }
        if self.entry(room).is_some() {
            return Err(RoomError::AlreadyJoined(room.to_owned()));
        }
        let tracker = options
            .resume
            .as_ref()
            .map_or_else(SeqTracker::new, SeqTracker::resuming);
        self.entries.push(RoomEntry {
            room: room.to_owned(),
            phase: Phase::Waiting,
            tracker,
            last: options.last,
            refused_joins: 0,
        });
        if !self.connected {
            return Ok(None);
        }
        Ok(self.send_join(self.entries.len() - 1))
    }

    /// The app leaves `room`: it is out of the set at once (nothing of it is delivered from
    /// now on). `Some(frame)`: a leave to send (its `left` completes it, see
    /// [`on_left`](Self::on_left)); `None`: nothing was joined on this connection, so the
    /// room is left already.
    pub fn leave(&mut self, room: &str) -> Result<Option<ClientFrame>, RoomError> {
        let Some(index) = self.entries.iter().position(|e| e.room == room) else {
            return Err(RoomError::NotJoined(room.to_owned()));
        };
        let entry = self.entries.remove(index);
        let sent = matches!(entry.phase, Phase::Joining { .. } | Phase::Joined);
        if !(self.connected && sent) {
            return Ok(None);
        }
        let reference = self.reference('l');
        self.leaving.push((room.to_owned(), reference.clone()));
        Ok(Some(ClientFrame::Leave {
            room: room.to_owned(),
            reference,
        }))
    }

    /// A hello on a new connection: a join for every room, each from its own position.
    pub fn on_hello(&mut self) -> Vec<ClientFrame> {
        if self.connected {
            return Vec::new(); // once per connection
        }
        self.connected = true;
        (0..self.entries.len())
            .filter_map(|index| self.send_join(index))
            .collect()
    }

    /// The connection ended: every room waits for the next hello; the leaves on their way
    /// are done (the server's session is gone). Returns the rooms those leaves were for.
    pub fn on_connection_lost(&mut self) -> Vec<String> {
        self.connected = false;
        for entry in &mut self.entries {
            entry.phase = Phase::Waiting;
        }
        self.leaving.drain(..).map(|(room, _)| room).collect()
    }

    /// A `joined` frame: the room is joined (when it answers the join on its way; a
    /// `joined` with another `ref` is stale and ignored).
    pub fn on_joined(&mut self, joined: &Joined) -> Option<JoinedRoom> {
        let entry = self.entry_mut(&joined.room)?;
        let Phase::Joining { reference, start } = &entry.phase else {
            return None;
        };
        if joined.reference.as_ref().is_some_and(|r| r != reference) {
            return None;
        }
        let start = start.clone();
        let asked_resume = matches!(start, JoinStart::Since(_));
        let outcome = entry.tracker.on_join(&joined.position, asked_resume);
        if let (WelcomeOutcome::Fresh, JoinStart::Last(last)) = (&outcome, start) {
            entry.tracker.replay_last(u64::from(last));
        }
        entry.phase = Phase::Joined;
        entry.refused_joins = 0;
        Some(JoinedRoom {
            room: joined.room.clone(),
            outcome,
        })
    }

    /// A `left` frame: the room of the leave it answers (by `ref`, else by room).
    pub fn on_left(&mut self, room: &str, reference: Option<&str>) -> Option<String> {
        let index = self
            .leaving
            .iter()
            .position(|(r, reference_sent)| match reference {
                Some(reference) => reference == reference_sent,
                None => r == room,
            })?;
        Some(self.leaving.remove(index).0)
    }

    /// A `message` frame: true if the app gets it (its room is joined on this connection and
    /// its seq is past the room's last one).
    pub fn on_message(&mut self, message: &RoomMessage) -> bool {
        match self.entry_mut(&message.room) {
            Some(entry) if entry.phase == Phase::Joined => entry.tracker.on_message(message.seq),
            _ => false,
        }
    }

    /// An `epoch` frame: the room's history restarted; true if the room is joined.
    pub fn on_epoch(&mut self, room: &str, epoch: Option<String>, seq: Option<u64>) -> bool {
        match self.entry_mut(room) {
            Some(entry) if entry.phase == Phase::Joined => {
                entry.tracker.on_epoch(epoch, seq);
                true
            }
            _ => false,
        }
    }

    /// A hello came on the current connection.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The room whose join on its way has this `ref`.
    #[cfg(test)]
    pub fn joining(&self, reference: &str) -> Option<&str> {
        self.entries.iter().find_map(|entry| match &entry.phase {
            Phase::Joining { reference: r, .. } if r == reference => Some(entry.room.as_str()),
            _ => None,
        })
    }

    /// The server refused the join with this `ref`: `unavailable` is retried after a
    /// backoff delay (`random` in `[0, 1)` for its jitter); any other code takes the room
    /// out of the set.
    pub fn on_join_refused(
        &mut self,
        reference: &str,
        unavailable: bool,
        backoff: Backoff,
        random: f64,
    ) -> Option<JoinRefusal> {
        let index = self.entries.iter().position(
            |entry| matches!(&entry.phase, Phase::Joining { reference: r, .. } if r == reference),
        )?;
        if !unavailable {
            let entry = self.entries.remove(index);
            return Some(JoinRefusal::Refused { room: entry.room });
        }
        let entry = self.entries.get_mut(index)?;
        let attempt = entry.refused_joins;
        entry.refused_joins = attempt.saturating_add(1);
        entry.phase = Phase::RetryingJoin { attempt };
        Some(JoinRefusal::RetryAfter {
            room: entry.room.clone(),
            attempt,
            delay: backoff_delay(attempt, backoff, random),
        })
    }

    /// The delay of a refused join is over: the join again, if the room still waits for
    /// this retry on a connection.
    pub fn retry_join(&mut self, room: &str, attempt: u32) -> Option<ClientFrame> {
        let index = self.entries.iter().position(|entry| {
            entry.room == room && entry.phase == Phase::RetryingJoin { attempt }
        })?;
        if !self.connected {
            return None;
        }
        self.send_join(index)
    }

    /// The server refused the leave with this `ref` (e.g. `not_joined`): the room is left
    /// all the same; its name.
    pub fn on_leave_refused(&mut self, reference: &str) -> Option<String> {
        let index = self.leaving.iter().position(|(_, r)| r == reference)?;
        Some(self.leaving.remove(index).0)
    }

    /// A frame for a joined room on the open connection (signal, presence): checks both.
    fn ready(&self, room: &str) -> Result<(), RoomError> {
        match self.entry(room) {
            None => Err(RoomError::NotJoined(room.to_owned())),
            Some(entry) if self.connected && entry.phase == Phase::Joined => Ok(()),
            Some(_) => Err(RoomError::NotReady(room.to_owned())),
        }
    }

    /// A presence request for `room` (joined on this connection).
    pub fn presence(&mut self, room: &str) -> Result<ClientFrame, RoomError> {
        self.ready(room)?;
        Ok(ClientFrame::Presence {
            room: room.to_owned(),
            reference: self.reference('p'),
        })
    }

    /// A signal for `room` (joined on this connection): at most once, never queued.
    pub fn signal(&self, room: &str, text: &str) -> Result<ClientFrame, RoomError> {
        self.ready(room)?;
        Ok(ClientFrame::Signal {
            room: room.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The room is in the set (joined, or to be joined).
    pub fn contains(&self, room: &str) -> bool {
        self.entry(room).is_some()
    }

    /// The room is joined on the current connection: its publishes may go out.
    pub fn is_joined(&self, room: &str) -> bool {
        self.connected && self.entry(room).is_some_and(|e| e.phase == Phase::Joined)
    }

    /// The rooms in the set, in the order the app joined them.
    pub fn rooms(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.room.clone()).collect()
    }

    /// The room's position: the last seq handed to the app (or its join's seq if later)
    /// and the epoch it belongs to; what its next join resumes from.
    pub fn position(&self, room: &str) -> Option<Resume> {
        self.entry(room)?.tracker.resume_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::seq_tracker::JoinPosition;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(10),
    };

    fn joined(room: &str, seq: u64, resumed: Option<bool>, reference: Option<&str>) -> Joined {
        Joined {
            room: room.into(),
            position: JoinPosition {
                epoch: Some("e1".into()),
                seq: Some(seq),
                resumed,
                missed: resumed.filter(|r| *r).map(|_| 0),
            },
            reference: reference.map(str::to_owned),
        }
    }

    fn message(room: &str, seq: u64) -> RoomMessage {
        RoomMessage {
            room: room.into(),
            from: "bob".into(),
            text: "t".into(),
            seq: Some(seq),
            ts: None,
            id: None,
        }
    }

    fn join_frame(room: &str, start: JoinStart, reference: &str) -> ClientFrame {
        ClientFrame::Join {
            room: room.into(),
            start,
            reference: reference.into(),
        }
    }

    fn since(seq: u64) -> JoinStart {
        JoinStart::Since(Resume {
            since: seq,
            epoch: Some("e1".into()),
        })
    }

    fn last(k: u32) -> JoinOptions {
        JoinOptions {
            last: Some(k),
            resume: None,
        }
    }

    #[test]
    fn joins_wait_for_the_hello_and_each_room_resumes_from_its_own_position() {
        let mut set = RoomSet::new();
        // Disconnected: queued.
        assert_eq!(set.join("a", &JoinOptions::default()), Ok(None));
        assert_eq!(set.join("b", &last(5)), Ok(None));
        assert_eq!(
            set.on_hello(),
            [
                join_frame("a", JoinStart::Present, "j1"),
                join_frame("b", JoinStart::Last(5), "j2")
            ]
        );
        assert!(set.on_hello().is_empty(), "a second hello changes nothing");
        // Connected: at once.
        assert_eq!(
            set.join("c", &JoinOptions::default()),
            Ok(Some(join_frame("c", JoinStart::Present, "j3")))
        );
        let a = set.on_joined(&joined("a", 10, None, Some("j1")));
        assert_eq!(
            a,
            Some(JoinedRoom {
                room: "a".into(),
                outcome: WelcomeOutcome::Fresh
            })
        );
        set.on_joined(&joined("b", 20, None, Some("j2")));
        // c's join is lost with the connection; a and b each go on from where they are.
        assert!(set.on_message(&message("a", 11)));
        assert!(
            set.on_message(&message("b", 16)),
            "b's last 5 start after 15"
        );
        assert!(set.on_message(&message("b", 21)));
        assert!(!set.on_message(&message("c", 1)), "c is not joined yet");
        assert_eq!(set.on_connection_lost(), Vec::<String>::new());
        assert!(
            !set.on_message(&message("a", 12)),
            "nothing between connections"
        );
        assert_eq!(
            set.on_hello(),
            [
                join_frame("a", since(11), "j4"),
                join_frame("b", since(21), "j5"),
                join_frame("c", JoinStart::Present, "j6"),
            ]
        );
        assert_eq!(
            set.position("a"),
            Some(Resume {
                since: 11,
                epoch: Some("e1".into())
            })
        );
        assert_eq!(set.rooms(), ["a", "b", "c"]);
    }

    #[test]
    fn a_rejoin_is_resumed_or_a_gap_per_room() {
        let mut set = RoomSet::new();
        set.on_hello();
        set.join("a", &JoinOptions::default()).ok();
        set.join("b", &JoinOptions::default()).ok();
        set.on_joined(&joined("a", 3, None, Some("j1")));
        set.on_joined(&joined("b", 7, None, Some("j2")));
        set.on_connection_lost();
        set.on_hello();
        // (joined frame, outcome)
        let table = [
            (
                joined("a", 9, Some(true), Some("j3")),
                WelcomeOutcome::Resumed { missed: 0 },
            ),
            (
                joined("b", 900, Some(false), Some("j4")),
                WelcomeOutcome::Gap {
                    previous_epoch: Some("e1".into()),
                    previous_seq: 7,
                    epoch: Some("e1".into()),
                    seq: Some(900),
                },
            ),
        ];
        for (frame, outcome) in table {
            let got = set.on_joined(&frame).map(|j| j.outcome);
            assert_eq!(got, Some(outcome), "{}", frame.room);
        }
        // a: the replay after 3 is delivered; b: live from 901.
        assert!(set.on_message(&message("a", 4)));
        assert!(!set.on_message(&message("b", 900)));
        assert!(set.on_message(&message("b", 901)));
    }

    #[test]
    fn a_stale_or_unknown_joined_is_ignored() {
        let mut set = RoomSet::new();
        set.on_hello();
        set.join("a", &JoinOptions::default()).ok();
        let table = [
            (joined("a", 1, None, Some("j0")), None), // another ref
            (joined("z", 1, None, Some("j1")), None), // another room
        ];
        for (frame, expected) in table {
            assert_eq!(set.on_joined(&frame), expected, "{frame:?}");
        }
        // No ref echoed: taken for the join on its way.
        assert!(set.on_joined(&joined("a", 1, None, None)).is_some());
        assert!(set.on_joined(&joined("a", 1, None, None)).is_none(), "once");
    }

    #[test]
    fn the_apps_calls_are_checked() {
        let mut set = RoomSet::new();
        type Row = (
            &'static str,
            JoinOptions,
            Result<Option<ClientFrame>, RoomError>,
        );
        let table: Vec<Row> = vec![
            (
                "a b",
                JoinOptions::default(),
                Err(RoomError::BadRoom("a b".into())),
            ),
            (
                "",
                JoinOptions::default(),
                Err(RoomError::BadRoom(String::new())),
            ),
            ("a", last(1001), Err(RoomError::LastOutOfRange(1001))),
            ("a", last(1000), Ok(None)),
            (
                "a",
                JoinOptions::default(),
                Err(RoomError::AlreadyJoined("a".into())),
            ),
        ];
        for (room, options, expected) in table {
            assert_eq!(set.join(room, &options), expected, "{room:?} {options:?}");
        }
        assert_eq!(set.leave("z"), Err(RoomError::NotJoined("z".into())));
        assert_eq!(set.presence("z"), Err(RoomError::NotJoined("z".into())));
        assert_eq!(set.presence("a"), Err(RoomError::NotReady("a".into())));
        assert_eq!(set.signal("a", "x"), Err(RoomError::NotReady("a".into())));
        set.on_hello();
        assert_eq!(set.signal("a", "x"), Err(RoomError::NotReady("a".into())));
        set.on_joined(&joined("a", 0, None, None));
        assert_eq!(
            set.presence("a"),
            Ok(ClientFrame::Presence {
                room: "a".into(),
                reference: "p2".into()
            })
        );
        assert!(set.signal("a", "typing").is_ok());
        assert!(set.is_joined("a"));
        set.on_connection_lost();
        assert!(!set.is_joined("a"));
        assert!(set.contains("a"));
    }

    #[test]
    fn leaves_complete_on_left_a_refusal_or_the_end_of_the_connection() {
        let mut set = RoomSet::new();
        // Disconnected: left at once, nothing to send.
        set.join("a", &JoinOptions::default()).ok();
        assert_eq!(set.leave("a"), Ok(None));
        assert!(!set.contains("a"));
        set.on_hello();
        for room in ["a", "b", "c", "d"] {
            set.join(room, &JoinOptions::default()).ok();
        }
        set.on_joined(&joined("a", 0, None, Some("j1")));
        let leave = |room: &str, reference: &str| ClientFrame::Leave {
            room: room.into(),
            reference: reference.into(),
        };
        assert_eq!(set.leave("a"), Ok(Some(leave("a", "l5"))));
        assert_eq!(
            set.leave("b"),
            Ok(Some(leave("b", "l6"))),
            "its join is on its way"
        );
        assert_eq!(set.leave("c"), Ok(Some(leave("c", "l7"))));
        assert!(
            !set.on_message(&message("a", 1)),
            "nothing of a after the leave"
        );
        // a rejoin while the leave is on its way is a new join.
        assert!(matches!(
            set.join("a", &JoinOptions::default()),
            Ok(Some(_))
        ));
        assert_eq!(set.on_left("a", Some("l5")), Some("a".into()));
        assert_eq!(set.on_left("a", Some("l5")), None, "once");
        assert_eq!(set.on_leave_refused("l6"), Some("b".into()));
        assert_eq!(set.on_connection_lost(), ["c"]);
        assert_eq!(set.rooms(), ["d", "a"]);
    }

    #[test]
    fn a_join_refused_as_unavailable_is_retried_after_backoff_others_end_the_room() {
        let mut set = RoomSet::new();
        set.on_hello();
        set.join("a", &JoinOptions::default()).ok();
        set.join("b", &JoinOptions::default()).ok();
        assert_eq!(set.joining("j1"), Some("a"));
        assert_eq!(
            set.on_join_refused("j1", true, BACKOFF, 0.5),
            Some(JoinRefusal::RetryAfter {
                room: "a".into(),
                attempt: 0,
                delay: Duration::from_millis(250)
            })
        );
        assert_eq!(set.retry_join("a", 7), None, "another attempt's timer");
        assert_eq!(
            set.retry_join("a", 0),
            Some(join_frame("a", JoinStart::Present, "j3"))
        );
        assert_eq!(
            set.on_join_refused("j3", true, BACKOFF, 0.5),
            Some(JoinRefusal::RetryAfter {
                room: "a".into(),
                attempt: 1,
                delay: Duration::from_millis(500)
            })
        );
        // The connection ends before the retry: the hello rejoins; the old timer is stale.
        set.on_connection_lost();
        assert_eq!(set.retry_join("a", 1), None);
        set.on_hello();
        set.on_joined(&joined("a", 0, None, Some("j4")));
        assert_eq!(set.joining("j5"), Some("b"));
        assert_eq!(
            set.on_join_refused("j5", false, BACKOFF, 0.5),
            Some(JoinRefusal::Refused { room: "b".into() })
        );
        assert!(!set.contains("b"));
        assert_eq!(set.on_join_refused("j5", false, BACKOFF, 0.5), None);
        assert_eq!(set.on_join_refused("nope", true, BACKOFF, 0.5), None);
    }

    #[test]
    fn a_join_with_a_resume_point_resumes_from_it() {
        let mut set = RoomSet::new();
        let options = JoinOptions {
            last: Some(10),
            resume: Some(Resume {
                since: 41,
                epoch: Some("e1".into()),
            }),
        };
        set.join("a", &options).ok();
        assert_eq!(set.on_hello(), [join_frame("a", since(41), "j1")]);
        let outcome = set.on_joined(&joined("a", 45, Some(true), Some("j1")));
        assert_eq!(
            outcome.map(|j| j.outcome),
            Some(WelcomeOutcome::Resumed { missed: 0 })
        );
        assert!(set.on_message(&message("a", 42)));
    }

    #[test]
    fn an_epoch_frame_resets_a_joined_room() {
        let mut set = RoomSet::new();
        set.on_hello();
        set.join("a", &JoinOptions::default()).ok();
        assert!(
            !set.on_epoch("a", Some("e2".into()), Some(0)),
            "not joined yet"
        );
        set.on_joined(&joined("a", 40, None, None));
        assert!(set.on_epoch("a", Some("e2".into()), Some(0)));
        assert!(set.on_message(&message("a", 1)));
        assert_eq!(
            set.position("a"),
            Some(Resume {
                since: 1,
                epoch: Some("e2".into())
            })
        );
    }
}
