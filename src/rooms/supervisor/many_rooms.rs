//! The supervisor's `wsgrace.v2` requests: a session registers once ([`Connect`]) and joins,
//! leaves, publishes and signals per room (presence: `presence.rs`). The session's handler has already
//! refused what it can tell alone (a bad frame, a room not granted); the session's rooms are
//! known here, so `already_joined`, `too_many_rooms` and `not_joined` are answered here,
//! before the rooms and the broker are asked.

use std::sync::Arc;

use actix::{Context, Handler};

use super::publishing::PublishRequest;
use super::{tell, Answer, Supervisor};
use super::{Connect, JoinRoom, LeaveRoom, Publish, SendSignal};
use crate::broker::{Departure, Origin, Signal};
use crate::connection::session::SessionId;
use crate::metrics::metrics;
use crate::protocol::v2::{left_json, signal_json};
use crate::protocol::v2::{ErrorCode, Refusal};
use crate::rooms::fanout::Admit;

impl Handler<Connect> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        self.register(msg.session, msg.name, msg.shard, msg.max_rooms);
    }
}

impl Supervisor {
    /// The room of session `id` named `room`, or the `not_joined` refusal told to the
    /// session (with the request's `reference` and a publish's `message_id`).
    pub(super) fn joined_room(
        &self,
        id: SessionId,
        room: &str,
        reference: Option<&str>,
        message_id: Option<&str>,
    ) -> Option<Arc<str>> {
        let member = self.members.get(&id)?;
        if let Some(membership) = member.membership(room) {
            return Some(membership.room.clone());
        }
        let mut refusal =
            Refusal::new(ErrorCode::NotJoined, "join the room first").about(Some(room), reference);
        refusal.id = message_id.map(str::to_owned);
        tell(&member.shard, &member.session, refusal.to_json());
        None
    }
}

impl Handler<JoinRoom> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(&msg.session) else {
            return;
        };
        let refusal = if member.membership(&msg.room).is_some() {
            Some((ErrorCode::AlreadyJoined, "the room is joined already"))
        } else if member.rooms.len() >= member.max_rooms {
            Some((
                ErrorCode::TooManyRooms,
                "this connection has joined as many rooms as it may (session.max_rooms)",
            ))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            let refusal = Refusal::new(code, text).about(Some(&msg.room), msg.reference.as_deref());
            tell(&member.shard, &member.session, refusal.to_json());
            return;
        }
        let answer = Answer::Joined {
            reference: msg.reference,
        };
        self.join(msg.session, &msg.room, msg.request, answer, ctx);
    }
}

impl Handler<LeaveRoom> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get_mut(&msg.session) else {
            return;
        };
        let Some(position) = member
            .rooms
            .iter()
            .position(|membership| *membership.room == *msg.room)
        else {
            let refusal = Refusal::new(ErrorCode::NotJoined, "join the room first")
                .about(Some(&msg.room), msg.reference.as_deref());
            tell(&member.shard, &member.session, refusal.to_json());
            return;
        };
        let membership = member.rooms.remove(position);
        let (room, present) = (membership.room, membership.present);
        let (shard, name) = (member.shard.clone(), member.name.clone());
        self.leave_room(msg.session, &room, ctx);
        // The shard takes the session out of the room's fan-out first, then queues `left`:
        // nothing of the room reaches it after that (its own `presence_leave` included).
        self.send_removals();
        if present {
            self.absent(msg.session, &name, &room, Departure::Now, ctx);
        }
        match left_json(&room, msg.reference.as_deref()) {
            Ok(left) => shard.do_send(Admit {
                room,
                id: msg.session,
                frames: vec![left],
                enroll: false,
                replayed: false,
            }),
            Err(err) => log::error!("serializing a left frame failed: {err}"),
        }
    }
}

impl Handler<Publish> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let Some(room) = self.joined_room(
            msg.session,
            &msg.room,
            msg.reference.as_deref(),
            msg.id.as_deref(),
        ) else {
            return;
        };
        let request = PublishRequest {
            from: msg.session,
            room,
            text: msg.text.into(),
            id: msg.id,
            reference: msg.reference,
            in_flight: msg.in_flight,
            v2: true,
        };
        self.publish(request, ctx);
    }
}

impl Handler<SendSignal> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SendSignal, ctx: &mut Context<Self>) {
        let Some(room) = self.joined_room(msg.session, &msg.room, msg.reference.as_deref(), None)
        else {
            return;
        };
        let Some(member) = self.members.get(&msg.session) else {
            return;
        };
        let json = match signal_json(&room, &member.name, &msg.text) {
            Ok(json) => json,
            Err(err) => {
                log::error!("serializing a signal failed: {err}");
                return;
            }
        };
        metrics().signals.inc();
        let signal = Signal {
            room,
            json,
            origin: Origin {
                node: self.broker.node(),
                session: msg.session,
            },
        };
        let pending = self.broker.signal(signal);
        let in_flight = msg.in_flight;
        let session = msg.session;
        self.when_answered(pending, ctx, move |act, sent, ctx| {
            // At most once: a signal the broker could not take is gone.
            if let Err(err) = sent {
                log::debug!("session={session}: a signal was not sent: {err}");
            }
            drop(in_flight);
            act.take_ready_events(ctx);
        });
    }
}
