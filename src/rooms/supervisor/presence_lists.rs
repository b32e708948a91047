//! The rooms' presence lists the supervisor sends to members that were behind on reading
//! (their presence events were held back, see [`crate::rooms::fanout`]): one read of a room's
//! list at a time, shared by every member waiting for it, kept until the room's next change,
//! and never older than an event already passed on.
//!
//! With Redis the list is read on one connection while the events come over pub/sub on
//! another: a change that lands in Redis just after the read can reach this process, and the
//! members, before the read's answer does, which would then undo it. So the events that arrive
//! while a room's list is read are kept with the read; an answer that came with such events is
//! read again (a few times), then sent followed by those events, which, applied after it in
//! order, leave the client's list right whichever side of the read they were. An event that
//! arrived before a read was sent is in what it reads: Redis changed the book, then published,
//! then this process sent the read.
//!
//! This file decides only what to send and when to read; the reading and the sending are the
//! supervisor's ([`super::presence`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytestring::ByteString;

use crate::connection::session::SessionId;

/// How many times a list is read again because its room changed while it was read; after
/// that the last answer goes out followed by the events that came during its read.
pub(super) const LIST_REREADS: u32 = 3;

/// Events kept per room while its list is read; past this the answer is read again as if
/// the changes were unknown.
const WINDOW_EVENTS: usize = 1_024;

/// Reads of a list that failed (the broker unreachable or busy) are tried again, this many
/// times at most, waiting twice as long each time from [`RETRY_FIRST_MS`].
pub(super) const READ_RETRIES: u32 = 8;
/// The wait before the first retry of a failed read, in milliseconds.
pub(super) const RETRY_FIRST_MS: u64 = 50;

#[derive(Default)]
pub(super) struct Lists {
    rooms: HashMap<Arc<str>, List>,
    /// Numbers the reads, so that an answer is matched with the read that asked.
    reads: u64,
}

enum List {
    /// Being read.
    Reading(Read),
    /// The frame; `None`: the room has more names than `presence.events_max_members`, so
    /// nobody in it is told of changes and no list is sent either.
    Ready(Option<ByteString>),
}

/// A read of a room's list on its way (or waiting to be retried).
struct Read {
    /// Its number; `None` while waiting to be retried.
    number: Option<u64>,
    /// The members waiting for the list.
    waiters: Vec<SessionId>,
    /// The room's events since the read was sent.
    events: Vec<(ByteString, Option<SessionId>)>,
    /// Changes came since the read was sent that are not all in `events`.
    lost: bool,
    rereads_left: u32,
    retries_left: u32,
}

/// What [`Lists::wait_for`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Send this list now.
    Ready(Option<ByteString>),
    /// Read the list, with this number.
    Read(u64),
    /// Nothing: a read already on its way answers this member too.
    Joined,
}

/// What [`Lists::answered`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// Send `list` (if any) to these members, each followed by `events` (but those marked as
    /// not for it).
    Send {
        list: Option<ByteString>,
        waiters: Vec<SessionId>,
        events: Vec<(ByteString, Option<SessionId>)>,
    },
    /// Read it again now, with this number.
    ReadAgain(u64),
    /// Read it again after this many milliseconds ([`Lists::retry`]).
    RetryAfter(u64),
    /// Nothing (the answer is not for a read on its way, or a failed read's tries are used up).
    Nothing,
}

impl Lists {
    /// Member `session` waits for `room`'s list.
    pub(super) fn wait_for(&mut self, room: &Arc<str>, session: SessionId) -> Wait {
        match self.rooms.get_mut(room) {
            Some(List::Ready(list)) => Wait::Ready(list.clone()),
            Some(List::Reading(read)) => {
                if !read.waiters.contains(&session) {
                    read.waiters.push(session);
                }
                Wait::Joined
            }
            None => {
                self.reads += 1;
                self.rooms.insert(
                    room.clone(),
                    List::Reading(Read {
                        number: Some(self.reads),
                        waiters: vec![session],
                        events: Vec::new(),
                        lost: false,
                        rereads_left: LIST_REREADS,
                        retries_left: READ_RETRIES,
                    }),
                );
                Wait::Read(self.reads)
            }
        }
    }

    /// The room changed (`event`: the frame that tells it, and the session it is not for; no
    /// event: the room went from here): its list is no longer current, and a read on its way
    /// may be older than the change.
    pub(super) fn changed(&mut self, room: &str, event: Option<(ByteString, Option<SessionId>)>) {
        match self.rooms.get_mut(room) {
            Some(List::Ready(_)) => {
                self.rooms.remove(room);
            }
            Some(List::Reading(read)) if read.number.is_some() => match event {
                Some(event) if read.events.len() < WINDOW_EVENTS => read.events.push(event),
                _ => {
                    read.events.clear();
                    read.lost = true;
                }
            },
            _ => {}
        }
    }

    /// Every room may have changed unseen (the broker was away).
    pub(super) fn forget_all(&mut self) {
        self.rooms.retain(|_, list| match list {
            List::Ready(_) => false,
            List::Reading(read) => {
                read.events.clear();
                read.lost = true;
                true
            }
        });
    }

    /// Read `number` of `room` answered: `list`, or `None` if it failed.
    pub(super) fn answered(
        &mut self,
        room: &Arc<str>,
        number: u64,
        list: Option<Option<ByteString>>,
    ) -> Then {
        let Some(List::Reading(read)) = self.rooms.get_mut(room) else {
            return Then::Nothing;
        };
        if read.number != Some(number) {
            return Then::Nothing;
        }
        let Some(list) = list else {
            read.number = None;
            if read.retries_left == 0 {
                self.rooms.remove(room);
                return Then::Nothing;
            }
            let tries = READ_RETRIES - read.retries_left;
            read.retries_left -= 1;
            return Then::RetryAfter(RETRY_FIRST_MS << tries);
        };
        let current = !read.lost && read.events.is_empty();
        if !current && read.rereads_left > 0 {
            read.rereads_left -= 1;
            self.reads += 1;
            read.number = Some(self.reads);
            read.events.clear();
            read.lost = false;
            return Then::ReadAgain(self.reads);
        }
        let events = std::mem::take(&mut read.events);
        let waiters = std::mem::take(&mut read.waiters);
        if current {
            self.rooms.insert(room.clone(), List::Ready(list.clone()));
        } else {
            self.rooms.remove(room);
        }
        Then::Send {
            list,
            waiters,
            events,
        }
    }

    /// The wait after a failed read of `room` is over: the number to read it with, unless
    /// nobody waits for it any more.
    pub(super) fn retry(&mut self, room: &Arc<str>) -> Option<u64> {
        let Some(List::Reading(read)) = self.rooms.get_mut(room) else {
            return None;
        };
        if read.number.is_some() {
            return None;
        }
        self.reads += 1;
        read.number = Some(self.reads);
        read.events.clear();
        read.lost = false;
        Some(self.reads)
    }

    /// The room went from here: nobody here waits for its list.
    pub(super) fn remove(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The list kept for `room`, if any.
    #[cfg(test)]
    fn ready(&self, room: &str) -> Option<&Option<ByteString>> {
        match self.rooms.get(room) {
            Some(List::Ready(list)) => Some(list),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Option<ByteString> {
        Some(ByteString::from_static("{\"type\":\"presence\"}"))
    }

    fn event(text: &'static str) -> (ByteString, Option<SessionId>) {
        (ByteString::from_static(text), None)
    }

    #[test]
    fn one_read_answers_every_member_waiting_and_is_kept_until_the_next_change() {
        let room: Arc<str> = Arc::from("r");
        let mut lists = Lists::default();
        let Wait::Read(read) = lists.wait_for(&room, 1) else {
            panic!("the first member's wait starts a read");
        };
        assert_eq!(lists.wait_for(&room, 2), Wait::Joined);
        assert_eq!(lists.wait_for(&room, 2), Wait::Joined);
        assert_eq!(
            lists.answered(&room, read, Some(list())),
            Then::Send {
                list: list(),
                waiters: vec![1, 2],
                events: Vec::new()
            }
        );
        assert_eq!(lists.wait_for(&room, 3), Wait::Ready(list()));
        lists.changed(&room, Some(event("a")));
        assert!(matches!(lists.wait_for(&room, 3), Wait::Read(_)));
        assert_eq!(lists.answered(&room, 12345, Some(list())), Then::Nothing);
    }

    #[test]
    fn a_read_the_room_changed_during_is_read_again_then_sent_with_those_events() {
        let room: Arc<str> = Arc::from("r");
        let other: Arc<str> = Arc::from("other");
        let mut lists = Lists::default();
        // A change before the read starts is in what it reads; another room's is not its.
        lists.changed(&room, Some(event("before")));
        let Wait::Read(mut read) = lists.wait_for(&room, 1) else {
            panic!("a read");
        };
        lists.changed(&other, Some(event("o")));
        for _ in 0..LIST_REREADS {
            lists.changed(&room, Some(event("a")));
            let Then::ReadAgain(again) = lists.answered(&room, read, Some(list())) else {
                panic!("read again");
            };
            assert_eq!(lists.answered(&room, read, Some(list())), Then::Nothing);
            read = again;
        }
        lists.changed(&room, Some(event("b")));
        lists.changed(&room, Some((ByteString::from_static("c"), Some(7))));
        assert_eq!(
            lists.answered(&room, read, Some(list())),
            Then::Send {
                list: list(),
                waiters: vec![1],
                events: vec![event("b"), (ByteString::from_static("c"), Some(7))]
            }
        );
        assert!(lists.ready(&room).is_none(), "not kept: it may be older");
    }

    #[test]
    fn changes_not_known_one_by_one_make_a_read_again() {
        let room: Arc<str> = Arc::from("r");
        let mut lists = Lists::default();
        let Wait::Read(read) = lists.wait_for(&room, 1) else {
            panic!("a read");
        };
        for _ in 0..=WINDOW_EVENTS {
            lists.changed(&room, Some(event("x")));
        }
        let Then::ReadAgain(read) = lists.answered(&room, read, Some(list())) else {
            panic!("too many events: read again");
        };
        lists.forget_all();
        assert!(matches!(
            lists.answered(&room, read, Some(list())),
            Then::ReadAgain(_)
        ));
    }

    #[test]
    fn a_failed_read_is_tried_again_later_a_bounded_number_of_times() {
        let room: Arc<str> = Arc::from("r");
        let mut lists = Lists::default();
        let Wait::Read(mut read) = lists.wait_for(&room, 1) else {
            panic!("a read");
        };
        let mut waits = Vec::new();
        loop {
            match lists.answered(&room, read, None) {
                Then::RetryAfter(ms) => waits.push(ms),
                Then::Nothing => break,
                other => panic!("{other:?}"),
            }
            assert_eq!(
                lists.wait_for(&room, 2),
                Wait::Joined,
                "waits with the retry"
            );
            read = lists.retry(&room).expect("a retry");
            assert_eq!(lists.retry(&room), None, "one read at a time");
        }
        assert_eq!(waits.len(), READ_RETRIES as usize);
        assert_eq!(waits[0], RETRY_FIRST_MS);
        assert_eq!(waits[1], 2 * RETRY_FIRST_MS);
        assert!(
            matches!(lists.wait_for(&room, 1), Wait::Read(_)),
            "given up: a new read"
        );
    }
}
