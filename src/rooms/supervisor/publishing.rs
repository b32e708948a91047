//! A message's way from its sender to the broker, and what its sender is told: nothing for a
//! new message (its own copy is the receipt), `ack` for a repeat of a v2 `id`, `error`
//! `unavailable` when it reached nobody. It must not deliver to the room: the broker's
//! answer comes back as an event like every other message.

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use bytestring::ByteString;

use super::*;

impl Supervisor {
    /// A message of session `from` to `room`, through the broker; `in_flight` is dropped once
    /// the message is done with (published, or refused). A v2 message with an `id` carries it
    /// to the broker's dedupe and to its sender's own copy; a repeat is answered `ack`. A
    /// refusal reaches the sender as an `error` frame (v1's without a room).
    pub(super) fn publish(&mut self, request: PublishRequest, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(&request.from) else {
            return;
        };
        let room = request.room;
        let sender = member.session.clone();
        let shard = member.shard.clone();
        let dedupe_key = request
            .id
            .as_ref()
            .map(|id| format!("n:{}:{id}", member.name));
        let sent_by = request.id.as_ref().map(|id| SentBy {
            origin: Origin {
                node: self.broker.node(),
                session: request.from,
            },
            id: Arc::from(id.as_str()),
        });
        let message = Outgoing {
            from: &member.name,
            text: &request.text,
            dedupe_key: dedupe_key.as_deref(),
            sent_by: sent_by.as_ref(),
        };
        let pending = self.broker.publish(&room, message);
        let answer = PublishAnswer {
            sender,
            shard,
            room,
            id: request.id,
            reference: request.reference,
            v2: request.v2,
        };
        match pending {
            Pending::Ready(published) => {
                answer.tell(published);
                drop(request.in_flight);
                self.take_ready_events(ctx);
            }
            Pending::Later(published) => {
                self.publishing += 1;
                let in_flight = request.in_flight;
                ctx.spawn(
                    async move {
                        answer.tell(published.await);
                        drop(in_flight);
                    }
                    .into_actor(self)
                    .map(|(), act, ctx| {
                        act.publishing = act.publishing.saturating_sub(1);
                        act.finish_drain_if_done(ctx);
                    }),
                );
            }
        }
    }
}

/// A publish as the supervisor takes it, from either protocol.
pub(super) struct PublishRequest {
    pub(super) from: SessionId,
    /// One of the sender's rooms.
    pub(super) room: Arc<str>,
    pub(super) text: ByteString,
    pub(super) id: Option<String>,
    pub(super) reference: Option<String>,
    pub(super) in_flight: Option<InFlightToken>,
    /// Whether the sender speaks v2 (its refusals name the room).
    pub(super) v2: bool,
}

/// Who is told what a publish came to.
struct PublishAnswer {
    sender: SessionHandle,
    /// The sender's shard, which its answer goes through.
    shard: ShardRef,
    room: Arc<str>,
    id: Option<String>,
    reference: Option<String>,
    v2: bool,
}

impl PublishAnswer {
    /// A new message needs no answer (its copy is the receipt); a repeat is answered `ack`;
    /// a refusal `error` `unavailable`: it reached nobody.
    fn tell(self, published: Result<Publication, BrokerError>) {
        match published {
            Ok(Publication::New(_)) => {}
            Ok(Publication::Repeat { seq, .. }) => {
                metrics().publishes_deduplicated.inc();
                let id = self.id.as_deref().unwrap_or_default();
                tell(
                    &self.shard,
                    &self.sender,
                    ack_json(&self.room, id, seq, self.reference.as_deref()),
                );
            }
            Err(err) => self.refuse(&err),
        }
    }

    fn refuse(self, err: &BrokerError) {
        let text = match err {
            BrokerError::Interrupted => {
                "the broker connection broke while sending: the message may not have been sent"
            }
            BrokerError::Encode(_) => "the message could not be encoded",
            _ => "the broker is unavailable: the message was not sent",
        };
        debug!("session={}: message refused: {err}", self.sender.id());
        metrics().dropped(DropReason::BrokerUnavailable, 1);
        if self.v2 {
            let mut refusal = Refusal::new(ErrorCode::Unavailable, text)
                .about(Some(&self.room), self.reference.as_deref());
            refusal.id = self.id;
            tell(&self.shard, &self.sender, refusal.to_json());
        } else {
            tell(&self.shard, &self.sender, error_json("unavailable", text));
        }
    }
}

impl Handler<Broadcast> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, ctx: &mut Self::Context) {
        // A v1 session has one room.
        let Some(room) = self
            .members
            .get(&msg.from)
            .and_then(|member| member.rooms.first())
            .map(|membership| membership.room.clone())
        else {
            return;
        };
        let request = PublishRequest {
            from: msg.from,
            room,
            text: msg.text,
            id: None,
            reference: None,
            in_flight: msg.in_flight,
            v2: false,
        };
        self.publish(request, ctx);
    }
}
