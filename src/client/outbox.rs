//! The publishes of a `wsgrace.v2` client that the room has not confirmed yet, pure. Each
//! gets an `id` unique to this client (a random prefix drawn once, then a counter) and stays
//! here until its own copy (the room's `message` with that `id`) or an `ack` with that `id`
//! arrives. It says when each one goes out: at once when its room is joined on the
//! connection, else when the room's `joined` comes; again, with the same `id`, after every
//! reconnect (the server sends a repeated `id` to the room only once); after an `unavailable`
//! refusal, again after a backoff delay.
//!
//! It must not do I/O, read a clock, draw a random number (passed in), or know the rooms'
//! phases (the caller says whether a room is joined); the shell carries out what it answers.

use std::collections::VecDeque;
use std::time::Duration;

use super::policy::{backoff_delay, Backoff};
use super::wire_v2::ClientFrame;

/// How far one publish has come on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Goes out when its room is joined on a connection.
    Waiting,
    /// Sent on this connection; waits for its copy or ack.
    Sent,
    /// Refused with `unavailable`; goes out again when this retry's delay is over.
    Retrying { attempt: u32 },
}

/// A publish the room has not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub room: String,
    pub text: String,
    sending: Sending,
    /// `unavailable` refusals so far: the backoff attempt of the next one.
    refusals: u32,
}

impl Pending {
    fn frame(&self) -> ClientFrame {
        ClientFrame::Publish {
            room: self.room.clone(),
            text: self.text.clone(),
            id: self.id.clone(),
        }
    }
}

/// What a refused publish means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefusal {
    /// `unavailable` (the message reached nobody): sent again after `delay` (call
    /// [`Outbox::retry`] with `id` and `attempt` then).
    RetryAfter {
        id: String,
        attempt: u32,
        delay: Duration,
    },
    /// Any other code: the publish is given up.
    Failed(Pending),
}

/// The outbox is full: the app has this many publishes the room has not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxFull(pub usize);

/// The unconfirmed publishes of one client, in the order the app made them.
#[derive(Debug)]
pub struct Outbox {
    prefix: String,
    counter: u64,
    capacity: usize,
    entries: VecDeque<Pending>,
}

impl Outbox {
    /// An empty outbox whose ids are `<prefix>.<n>`. `prefix` should be random per client
    /// (the shell draws 12 characters of `[A-Za-z0-9]`), so that two clients of one name
    /// never share an id; with it an id is 1–64 characters of `[A-Za-z0-9_.-]`.
    pub fn new(prefix: &str, capacity: usize) -> Outbox {
        Outbox {
            prefix: prefix.to_owned(),
            counter: 0,
            capacity,
            entries: VecDeque::new(),
        }
    }

    /// The app publishes `text` to `room`: its new id, and the frame to send now when the
    /// room is joined on this connection (`room_joined`), else it waits for the room.
    pub fn publish(
        &mut self,
        room: &str,
        text: &str,
        room_joined: bool,
    ) -> Result<(String, Option<ClientFrame>), OutboxFull> {
        if self.entries.len() >= self.capacity {
            return Err(OutboxFull(self.entries.len()));
        }
        self.counter += 1;
        let pending = Pending {
            id: format!("{}.{}", self.prefix, self.counter),
            room: room.to_owned(),
            text: text.to_owned(),
            sending: if room_joined {
                Sending::Sent
            } else {
                Sending::Waiting
            },
            refusals: 0,
        };
        let frame = room_joined.then(|| pending.frame());
        let id = pending.id.clone();
        self.entries.push_back(pending);
        Ok((id, frame))
    }

    /// `room` is joined on this connection: its waiting publishes go out, in order.
    pub fn on_room_joined(&mut self, room: &str) -> Vec<ClientFrame> {
        self.entries
            .iter_mut()
            .filter(|p| p.room == room && p.sending == Sending::Waiting)
            .map(|p| {
                p.sending = Sending::Sent;
                p.frame()
            })
            .collect()
    }

    /// The publish's copy or ack arrived: it is in the room, once. The publish, if it was
    /// still waiting for that.
    pub fn confirm(&mut self, room: &str, id: &str) -> Option<Pending> {
        let index = self
            .entries
            .iter()
            .position(|p| p.id == id && p.room == room)?;
        self.entries.remove(index)
    }

    /// The connection ended: whatever was sent may not have arrived, and what waited to be
    /// retried goes out with the rest once its room is joined again.
    pub fn on_connection_lost(&mut self) {
        for pending in &mut self.entries {
            pending.sending = Sending::Waiting;
        }
    }

    /// The server refused the publish `id`: `unavailable` is retried after a backoff delay
    /// (`random` in `[0, 1)` for its jitter); any other code gives it up.
    pub fn on_refused(
        &mut self,
        id: &str,
        unavailable: bool,
        backoff: Backoff,
        random: f64,
    ) -> Option<PublishRefusal> {
        let index = self.entries.iter().position(|p| p.id == id)?;
        if !unavailable {
            return self.entries.remove(index).map(PublishRefusal::Failed);
        }
        let pending = self.entries.get_mut(index)?;
        let attempt = pending.refusals;
        pending.refusals = attempt.saturating_add(1);
        pending.sending = Sending::Retrying { attempt };
        Some(PublishRefusal::RetryAfter {
            id: pending.id.clone(),
            attempt,
            delay: backoff_delay(attempt, backoff, random),
        })
    }

    /// The delay of a refused publish is over: the publish again when its room is joined
    /// (else it waits for the room), if it still waits for this retry.
    pub fn retry(&mut self, id: &str, attempt: u32, room_joined: bool) -> Option<ClientFrame> {
        let pending = self
            .entries
            .iter_mut()
            .find(|p| p.id == id && p.sending == Sending::Retrying { attempt })?;
        if !room_joined {
            pending.sending = Sending::Waiting;
            return None;
        }
        pending.sending = Sending::Sent;
        Some(pending.frame())
    }

    /// Gives up every publish to `room` (the app left it, or its join was refused).
    pub fn fail_room(&mut self, room: &str) -> Vec<Pending> {
        let (failed, kept): (VecDeque<Pending>, VecDeque<Pending>) =
            self.entries.drain(..).partition(|p| p.room == room);
        self.entries = kept;
        failed.into()
    }

    /// The room of the publish `id`, while it is unconfirmed.
    pub fn room_of(&self, id: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.room.as_str())
    }

    /// The unconfirmed publishes, oldest first: (room, id, text).
    pub fn unconfirmed(&self) -> Vec<(String, String, String)> {
        self.entries
            .iter()
            .map(|p| (p.room.clone(), p.id.clone(), p.text.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(10),
    };

    fn publish(room: &str, text: &str, id: &str) -> ClientFrame {
        ClientFrame::Publish {
            room: room.into(),
            text: text.into(),
            id: id.into(),
        }
    }

    #[test]
    fn ids_are_the_prefix_and_a_counter_and_valid_on_the_wire() {
        let mut outbox = Outbox::new("Xy7", 10);
        let ids: Vec<String> = (0..3)
            .filter_map(|_| outbox.publish("a", "t", false).ok())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, ["Xy7.1", "Xy7.2", "Xy7.3"]);
        let mut long = Outbox::new(&"p".repeat(12), 1);
        long.counter = u64::MAX - 1;
        let (id, _) = long.publish("a", "t", false).expect("room in the outbox");
        assert!(crate::config::is_valid_name(&id), "{id}");
    }

    #[test]
    fn a_publish_waits_for_its_room_and_goes_again_after_every_reconnect_until_confirmed() {
        let mut outbox = Outbox::new("p", 10);
        // Joined: sent at once. Not joined: waits.
        let (one, frame) = outbox.publish("a", "one", true).expect("room");
        assert_eq!(frame, Some(publish("a", "one", "p.1")));
        let (two, frame) = outbox.publish("b", "two", false).expect("room");
        assert_eq!(frame, None);
        let (three, _) = outbox.publish("a", "three", false).expect("room");
        // b joined: two goes; a joined again: only three (one is on its way).
        assert_eq!(outbox.on_room_joined("b"), [publish("b", "two", "p.2")]);
        assert_eq!(outbox.on_room_joined("a"), [publish("a", "three", "p.3")]);
        assert!(
            outbox.on_room_joined("a").is_empty(),
            "sent once per connection"
        );
        // one's copy arrives; the connection drops before the others' did.
        assert_eq!(
            outbox.confirm("a", &one).map(|p| p.text),
            Some("one".into())
        );
        assert_eq!(outbox.confirm("a", &one), None, "once");
        assert_eq!(outbox.confirm("a", &two), None, "another room's id");
        outbox.on_connection_lost();
        // The next connection: each room's unconfirmed ones again, same ids.
        assert_eq!(outbox.on_room_joined("a"), [publish("a", "three", "p.3")]);
        assert_eq!(outbox.on_room_joined("b"), [publish("b", "two", "p.2")]);
        // An ack confirms like a copy.
        assert!(outbox.confirm("b", &two).is_some());
        assert!(outbox.confirm("a", &three).is_some());
        assert!(outbox.is_empty());
    }

    #[test]
    fn unavailable_is_retried_after_backoff_other_refusals_give_up() {
        let mut outbox = Outbox::new("p", 10);
        let (id, _) = outbox.publish("a", "t", true).expect("room");
        // (random, the retry's attempt, its delay in ms)
        let table = [(0.5, 0, 250), (0.5, 1, 500), (0.0, 2, 0), (0.5, 3, 2000)];
        for (random, attempt, delay) in table {
            assert_eq!(
                outbox.on_refused(&id, true, BACKOFF, random),
                Some(PublishRefusal::RetryAfter {
                    id: id.clone(),
                    attempt,
                    delay: Duration::from_millis(delay)
                })
            );
            assert_eq!(outbox.retry(&id, attempt + 1, true), None, "another timer");
            assert_eq!(
                outbox.retry(&id, attempt, true),
                Some(publish("a", "t", "p.1"))
            );
            assert_eq!(outbox.retry(&id, attempt, true), None, "retried once");
        }
        // A retry whose room is not joined (the connection dropped) waits for the room.
        outbox.on_refused(&id, true, BACKOFF, 0.5);
        assert_eq!(outbox.retry(&id, 4, false), None);
        assert_eq!(outbox.on_room_joined("a"), [publish("a", "t", "p.1")]);
        // A reconnect while a retry waits: it goes with the room's join, the timer is stale.
        outbox.on_refused(&id, true, BACKOFF, 0.5);
        outbox.on_connection_lost();
        assert_eq!(outbox.on_room_joined("a"), [publish("a", "t", "p.1")]);
        assert_eq!(outbox.retry(&id, 5, true), None);
        // Any other refusal gives up.
        let failed = outbox.on_refused(&id, false, BACKOFF, 0.5);
        assert!(
            matches!(&failed, Some(PublishRefusal::Failed(p)) if p.id == id),
            "{failed:?}"
        );
        assert!(outbox.is_empty());
        assert_eq!(outbox.on_refused(&id, true, BACKOFF, 0.5), None);
    }

    #[test]
    fn the_outbox_is_bounded_and_a_room_can_be_given_up() {
        let mut outbox = Outbox::new("p", 3);
        for (room, text) in [("a", "1"), ("b", "2"), ("a", "3")] {
            assert!(outbox.publish(room, text, false).is_ok());
        }
        assert_eq!(outbox.publish("a", "4", false), Err(OutboxFull(3)));
        let failed: Vec<String> = outbox.fail_room("a").into_iter().map(|p| p.text).collect();
        assert_eq!(failed, ["1", "3"]);
        assert_eq!(
            outbox.unconfirmed(),
            [("b".to_owned(), "p.2".to_owned(), "2".to_owned())]
        );
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.room_of("p.2"), Some("b"));
        assert_eq!(outbox.room_of("p.1"), None);
        assert!(outbox.publish("a", "5", false).is_ok());
    }
}
