//! The supervisor's part of the server API: a publish that takes a member's path without a
//! member (seq, history, every node; deduplicated by its idempotency key), a disconnect given
//! to every node through the broker and carried out here on this node's sessions of the name,
//! a page of history and the presence list, each answered on the request's own channel.
//!
//! It must not parse HTTP or check the API key (`crate::service::api` does), nor decide how a
//! session closes beyond the mode it is given: the session's close machine does.

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use futures::channel::oneshot;
use log::info;

use super::Supervisor;
use crate::broker::{
    BrokerError, Control, Disconnect, Epoch, HistoryPage, Outgoing, Pending, PresentName,
    Publication,
};
use crate::close::{CloseMode, CloseStatus};
use crate::connection::session::{Close, CloseOutput};
use crate::metrics::metrics;

/// How a request's answer comes back.
pub type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

/// `POST /api/publish`: a message from the app's backend to `room`, as `from`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApiPublish {
    /// The room.
    pub room: String,
    /// The sender's name the message carries.
    pub from: String,
    /// The text.
    pub text: String,
    /// A repeat of this key in the room within `publish.dedupe_ms` is not published again.
    pub idempotency_key: Option<String>,
    /// The answer.
    pub reply: Reply<ApiPublished>,
}

/// What an API publish came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPublished {
    /// The room.
    pub room: Arc<str>,
    /// Its seq (the first one's, for a repeat).
    pub seq: u64,
    /// Its epoch.
    pub epoch: Epoch,
    /// A repeat of an idempotency key: nothing was sent.
    pub duplicate: bool,
}

/// `POST /api/disconnect`: the order, to every node.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApiDisconnect {
    /// Whom to close, and how.
    pub disconnect: Disconnect,
    /// Answered once the broker took the order.
    pub reply: Reply<()>,
}

/// `GET /api/rooms/R/history`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApiHistory {
    /// The room.
    pub room: String,
    /// After this seq (`None`: from the oldest kept).
    pub since: Option<u64>,
    /// At most this many.
    pub limit: usize,
    /// The page.
    pub reply: Reply<HistoryPage>,
}

/// `GET /api/rooms/R/presence`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ApiPresence {
    /// The room.
    pub room: String,
    /// Who is there.
    pub reply: Reply<Vec<PresentName>>,
}

/// The prefix of an API idempotency key among the dedupe keys (a v2 client's are `n:NAME:ID`).
const API_KEY_PREFIX: &str = "a:";

impl Supervisor {
    /// Carries out a disconnect order on this node's sessions of the name, and logs how many
    /// were told to close.
    pub(super) fn on_control(&mut self, control: Control) {
        let Control::Disconnect(order) = control;
        let status = match CloseStatus::new(order.code, order.reason.clone()) {
            Ok(status) => status,
            Err(err) => {
                // The API checked it; another node's order is refused whole.
                log::warn!("disconnect order with a bad close status ignored: {err}");
                return;
            }
        };
        let mut closed = 0usize;
        for member in self.members.values() {
            if member.name != order.name {
                continue;
            }
            if let Some(room) = &order.room {
                if member.membership(room).is_none() {
                    continue;
                }
            }
            let session = &member.session;
            match order.mode {
                None => session.shutdown(Some(status.clone())),
                Some(CloseMode::Awaited) => session.addr().do_send(Close {
                    status: Some(status.clone()),
                    cancel: None,
                }),
                Some(CloseMode::FireAndForget) => session.addr().do_send(CloseOutput {
                    status: Some(status.clone()),
                }),
            }
            closed += 1;
        }
        let mode = order.mode.map_or("the session's own", CloseMode::as_str);
        match &order.room {
            Some(room) => info!(
                "api disconnect: name={} room={room} code={} mode={mode}: {closed} sessions closed here",
                order.name, order.code
            ),
            None => info!(
                "api disconnect: name={} code={} mode={mode}: {closed} sessions closed here",
                order.name, order.code
            ),
        }
    }
}

/// Sends `answer` to whoever asked (who may have given up: then nobody hears it).
fn answer<T>(reply: Reply<T>, answer: Result<T, BrokerError>) {
    let _ = reply.send(answer);
}

impl Handler<ApiPublish> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ApiPublish, ctx: &mut Context<Self>) {
        let room: Arc<str> = Arc::from(msg.room.as_str());
        let dedupe_key = msg
            .idempotency_key
            .as_ref()
            .map(|key| format!("{API_KEY_PREFIX}{key}"));
        let message = Outgoing {
            from: &msg.from,
            text: &msg.text,
            dedupe_key: dedupe_key.as_deref(),
            sent_by: None,
        };
        let pending = self.broker.publish(&room, message);
        let reply = msg.reply;
        let to_answer = move |published: Result<Publication, BrokerError>| {
            published.map(|publication| match publication {
                Publication::New(message) => ApiPublished {
                    room: room.clone(),
                    seq: message.seq,
                    epoch: message.epoch,
                    duplicate: false,
                },
                Publication::Repeat { epoch, seq } => {
                    metrics().publishes_deduplicated.inc();
                    ApiPublished {
                        room: room.clone(),
                        seq,
                        epoch,
                        duplicate: true,
                    }
                }
            })
        };
        match pending {
            Pending::Ready(published) => {
                answer(reply, to_answer(published));
                self.take_ready_events(ctx);
            }
            Pending::Later(published) => {
                self.publishing += 1;
                ctx.spawn(
                    async move { answer(reply, to_answer(published.await)) }
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

impl Handler<ApiDisconnect> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ApiDisconnect, ctx: &mut Context<Self>) {
        let pending = self.broker.control(Control::Disconnect(msg.disconnect));
        let reply = msg.reply;
        self.when_answered(pending, ctx, move |act, taken, ctx| {
            answer(reply, taken);
            act.take_ready_events(ctx);
        });
    }
}

impl Handler<ApiHistory> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ApiHistory, ctx: &mut Context<Self>) {
        let room: Arc<str> = Arc::from(msg.room.as_str());
        let pending = self.broker.history(&room, msg.since, msg.limit);
        let reply = msg.reply;
        self.when_answered(pending, ctx, move |act, page, ctx| {
            answer(reply, page);
            act.take_ready_events(ctx);
        });
    }
}

impl Handler<ApiPresence> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ApiPresence, ctx: &mut Context<Self>) {
        let room: Arc<str> = Arc::from(msg.room.as_str());
        let pending = self.broker.presence(&room);
        let reply = msg.reply;
        self.when_answered(pending, ctx, move |act, members, ctx| {
            answer(reply, members);
            act.take_ready_events(ctx);
        });
    }
}
