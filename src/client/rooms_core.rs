//! The decisions of a `wsgrace.v2` client, pure: [`RoomsCore`] takes the app's calls (join,
//! leave, publish, signal, presence), the server's frames (as `wire_v2.rs` parsed them), the
//! end of a connection and the end of a retry delay, and answers with [`Output`]s: frames to
//! send, events for the app, delays to wait before a retry. It routes each input to the
//! [`RoomSet`] (which rooms, where each one is) and the [`Outbox`] (unconfirmed publishes)
//! and ties them together: a room's `joined` lets its waiting publishes go; a publish's copy
//! or `ack` confirms it; a refusal goes to the join, leave or publish its `ref` or `id` names.
//!
//! It must not do I/O, sleep, read a clock or draw a random number (passed in): the shell
//! feeds it and carries out its outputs, so every rule is a unit test below. Whether and when
//! to reconnect is the policy's (`policy.rs`), not this.

use std::time::Duration;

use super::outbox::{Outbox, PublishRefusal};
use super::policy::Backoff;
use super::room_set::{JoinRefusal, JoinedRoom, RoomSet};
use super::rooms::{JoinOptions, PublishFailure, RoomError, RoomEvent};
use super::seq_tracker::{JoinPosition, WelcomeOutcome};
use super::wire::Resume;
use super::wire_v2::{ClientFrame, ErrorCode, Refusal, RoomsFrame};

/// What the shell does for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this frame on the open connection (in order with the others).
    Send(ClientFrame),
    /// Hand this event to the app (in order).
    Emit(RoomEvent),
    /// After `after`, call [`RoomsCore::retry_join`] with `room` and `attempt`.
    RetryJoin {
        room: String,
        attempt: u32,
        after: Duration,
    },
    /// After `after`, call [`RoomsCore::retry_publish`] with `id` and `attempt`.
    RetryPublish {
        id: String,
        attempt: u32,
        after: Duration,
    },
}

/// The rooms and the unconfirmed publishes of one v2 client, across its connections.
#[derive(Debug)]
pub struct RoomsCore {
    rooms: RoomSet,
    outbox: Outbox,
    backoff: Backoff,
}

impl RoomsCore {
    /// `id_prefix`: the random start of this client's publish ids (see [`Outbox::new`]);
    /// `backoff`: the delays of retried joins and publishes.
    pub fn new(id_prefix: &str, outbox_capacity: usize, backoff: Backoff) -> RoomsCore {
        RoomsCore {
            rooms: RoomSet::new(),
            outbox: Outbox::new(id_prefix, outbox_capacity),
            backoff,
        }
    }

    /// The app joins `room`: now when connected, else after the next hello.
    pub fn join(&mut self, room: &str, options: &JoinOptions) -> Result<Vec<Output>, RoomError> {
        let frame = self.rooms.join(room, options)?;
        Ok(frame.into_iter().map(Output::Send).collect())
    }

    /// The app leaves `room`: its unconfirmed publishes fail ([`PublishFailure::Left`]), and
    /// [`RoomEvent::Left`] comes with the server's `left` (at once when nothing was joined on
    /// this connection).
    pub fn leave(&mut self, room: &str) -> Result<Vec<Output>, RoomError> {
        let frame = self.rooms.leave(room)?;
        let mut out = self.fail_room(room, &PublishFailure::Left);
        match frame {
            Some(frame) => out.push(Output::Send(frame)),
            None => out.push(Output::Emit(RoomEvent::Left {
                room: room.to_owned(),
            })),
        }
        Ok(out)
    }

    /// The app publishes `text` to `room` (joined, or to be joined): its id, and the frame
    /// to send now when the room is joined on this connection. It is resent until confirmed.
    pub fn publish(&mut self, room: &str, text: &str) -> Result<(String, Vec<Output>), RoomError> {
        if !self.rooms.contains(room) {
            return Err(RoomError::NotJoined(room.to_owned()));
        }
        let joined = self.rooms.is_joined(room);
        let (id, frame) = self
            .outbox
            .publish(room, text, joined)
            .map_err(|full| RoomError::OutboxFull(full.0))?;
        Ok((id, frame.into_iter().map(Output::Send).collect()))
    }

    /// A signal to `room`'s other members, now (never queued).
    pub fn signal(&mut self, room: &str, text: &str) -> Result<Vec<Output>, RoomError> {
        Ok(vec![Output::Send(self.rooms.signal(room, text)?)])
    }

    /// Asks who is in `room`; the answer is [`RoomEvent::Presence`].
    pub fn presence(&mut self, room: &str) -> Result<Vec<Output>, RoomError> {
        Ok(vec![Output::Send(self.rooms.presence(room)?)])
    }

    /// One server frame. `random` in `[0, 1)` is the jitter of a retry it may start.
    /// `going_away` is the shell's (the policy reads it): nothing here.
    pub fn on_frame(&mut self, frame: RoomsFrame, random: f64) -> Vec<Output> {
        match frame {
            RoomsFrame::Hello { name } => {
                if self.rooms.is_connected() {
                    return Vec::new(); // once per connection
                }
                let mut out = vec![Output::Emit(RoomEvent::Hello { name })];
                out.extend(self.rooms.on_hello().into_iter().map(Output::Send));
                out
            }
            RoomsFrame::Joined(joined) => match self.rooms.on_joined(&joined) {
                Some(room) => self.on_joined(room, joined.position),
                None => Vec::new(),
            },
            RoomsFrame::Left { room, reference } => self
                .rooms
                .on_left(&room, reference.as_deref())
                .map(|room| Output::Emit(RoomEvent::Left { room }))
                .into_iter()
                .collect(),
            RoomsFrame::Message(message) => {
                let mut out = Vec::new();
                if let (true, Some(seq)) = (self.rooms.on_message(&message), message.seq) {
                    out.push(Output::Emit(RoomEvent::Message {
                        room: message.room.clone(),
                        from: message.from,
                        text: message.text,
                        seq,
                        ts: message.ts,
                        id: message.id.clone(),
                    }));
                }
                // A copy confirms its publish also when its seq was delivered before (a
                // replay after a resume).
                if let Some(id) = message.id {
                    out.extend(self.confirm(&message.room, &id, message.seq));
                }
                out
            }
            RoomsFrame::Ack { room, id, seq } => {
                self.confirm(&room, &id, seq).into_iter().collect()
            }
            RoomsFrame::Signal { room, from, text } => {
                self.emit_if_joined(&room.clone(), RoomEvent::Signal { room, from, text })
            }
            RoomsFrame::Presence { room, members, .. } => {
                if !self.rooms.contains(&room) {
                    return Vec::new();
                }
                vec![Output::Emit(RoomEvent::Presence { room, members })]
            }
            RoomsFrame::PresenceJoin { room, name } => {
                self.emit_if_joined(&room.clone(), RoomEvent::PresenceJoin { room, name })
            }
            RoomsFrame::PresenceLeave { room, name } => {
                self.emit_if_joined(&room.clone(), RoomEvent::PresenceLeave { room, name })
            }
            RoomsFrame::Epoch { room, epoch, seq } => {
                if !self.rooms.on_epoch(&room, epoch.clone(), seq) {
                    return Vec::new();
                }
                vec![Output::Emit(RoomEvent::Epoch { room, epoch, seq })]
            }
            RoomsFrame::Error(refusal) => self.on_refusal(refusal, random),
            RoomsFrame::GoingAway { .. } | RoomsFrame::Ignored => Vec::new(),
        }
    }

    /// The connection ended: every room and every unconfirmed publish waits for the next
    /// connection; the leaves on their way are done.
    pub fn on_connection_lost(&mut self) -> Vec<Output> {
        self.outbox.on_connection_lost();
        self.rooms
            .on_connection_lost()
            .into_iter()
            .map(|room| Output::Emit(RoomEvent::Left { room }))
            .collect()
    }

    /// The delay of a join refused as `unavailable` is over.
    pub fn retry_join(&mut self, room: &str, attempt: u32) -> Vec<Output> {
        self.rooms
            .retry_join(room, attempt)
            .map(Output::Send)
            .into_iter()
            .collect()
    }

    /// The delay of a publish refused as `unavailable` is over.
    pub fn retry_publish(&mut self, id: &str, attempt: u32) -> Vec<Output> {
        let joined = self
            .outbox
            .room_of(id)
            .is_some_and(|room| self.rooms.is_joined(room));
        self.outbox
            .retry(id, attempt, joined)
            .map(Output::Send)
            .into_iter()
            .collect()
    }

    /// The rooms the app is in (joined, or to be joined), in the order it joined them.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.rooms()
    }

    /// The room's last seq and its epoch (what its next join resumes from).
    pub fn position(&self, room: &str) -> Option<Resume> {
        self.rooms.position(room)
    }

    /// The unconfirmed publishes, oldest first: (room, id, text).
    pub fn unconfirmed(&self) -> Vec<(String, String, String)> {
        self.outbox.unconfirmed()
    }

    fn on_joined(&mut self, joined: JoinedRoom, position: JoinPosition) -> Vec<Output> {
        let room = joined.room;
        let mut out = vec![Output::Emit(RoomEvent::Joined {
            room: room.clone(),
            epoch: position.epoch,
            seq: position.seq,
            resumed: position.resumed,
            missed: position.missed,
        })];
        if let WelcomeOutcome::Gap {
            previous_epoch,
            previous_seq,
            epoch,
            seq,
        } = joined.outcome
        {
            out.push(Output::Emit(RoomEvent::Gap {
                room: room.clone(),
                previous_epoch,
                previous_seq,
                epoch,
                seq,
            }));
        }
        out.extend(
            self.outbox
                .on_room_joined(&room)
                .into_iter()
                .map(Output::Send),
        );
        out
    }

    fn confirm(&mut self, room: &str, id: &str, seq: Option<u64>) -> Option<Output> {
        let pending = self.outbox.confirm(room, id)?;
        Some(Output::Emit(RoomEvent::Published {
            room: pending.room,
            id: pending.id,
            seq,
        }))
    }

    fn emit_if_joined(&self, room: &str, event: RoomEvent) -> Vec<Output> {
        if self.rooms.is_joined(room) {
            vec![Output::Emit(event)]
        } else {
            Vec::new()
        }
    }

    /// An `error` frame: to the publish its `id` names, else to the join or leave its `ref`
    /// names, else an event for the app.
    fn on_refusal(&mut self, refusal: Refusal, random: f64) -> Vec<Output> {
        let unavailable = refusal.code == ErrorCode::Unavailable;
        if let Some(id) = refusal.id.as_deref() {
            match self
                .outbox
                .on_refused(id, unavailable, self.backoff, random)
            {
                Some(PublishRefusal::RetryAfter { id, attempt, delay }) => {
                    return vec![Output::RetryPublish {
                        id,
                        attempt,
                        after: delay,
                    }];
                }
                Some(PublishRefusal::Failed(pending)) => {
                    return vec![Output::Emit(RoomEvent::PublishFailed {
                        room: pending.room,
                        id: pending.id,
                        text: pending.text,
                        reason: PublishFailure::Refused {
                            code: refusal.code,
                            text: refusal.text,
                        },
                    })];
                }
                None => {}
            }
        }
        if let Some(reference) = refusal.reference.as_deref() {
            let refused_join =
                self.rooms
                    .on_join_refused(reference, unavailable, self.backoff, random);
            match refused_join {
                Some(JoinRefusal::RetryAfter {
                    room,
                    attempt,
                    delay,
                }) => {
                    return vec![Output::RetryJoin {
                        room,
                        attempt,
                        after: delay,
                    }];
                }
                Some(JoinRefusal::Refused { room }) => {
                    let reason = PublishFailure::Refused {
                        code: refusal.code.clone(),
                        text: refusal.text.clone(),
                    };
                    let mut out = vec![Output::Emit(RoomEvent::JoinRefused {
                        room: room.clone(),
                        code: refusal.code,
                        text: refusal.text,
                    })];
                    out.extend(self.fail_room(&room, &reason));
                    return out;
                }
                None => {}
            }
            if let Some(room) = self.rooms.on_leave_refused(reference) {
                return vec![Output::Emit(RoomEvent::Left { room })];
            }
        }
        vec![Output::Emit(RoomEvent::Refused {
            code: refusal.code,
            room: refusal.room,
            text: refusal.text,
        })]
    }

    fn fail_room(&mut self, room: &str, reason: &PublishFailure) -> Vec<Output> {
        self.outbox
            .fail_room(room)
            .into_iter()
            .map(|pending| {
                Output::Emit(RoomEvent::PublishFailed {
                    room: pending.room,
                    id: pending.id,
                    text: pending.text,
                    reason: reason.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "rooms_core_tests.rs"]
mod tests;
