//! The session actor: one per WebSocket connection.
//!
//! It feeds what happens (frames in, close requests, timers) to its [`CloseMachine`] and
//! carries out the machine's [`Action`]s (frames out, answers, the end of the connection). It
//! runs the heartbeat and the client timeout, bounds its outbound queue, and hands complete
//! text messages to the application's [`SessionHandler`]. It must not decide close semantics
//! itself (that is `close.rs`) nor touch bytes (that is `transport`).
//!
//! [`handle`]: what the rest of the program sees of a session; [`outbox`]: the fan-out's way
//! into its queue; `rate_limit`: its message rate.

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseFuture,
    StreamHandler, WrapFuture,
};
use actix_http::ws::{CloseCode, CloseReason, Message as Frame};
use actix_web::error::PayloadError;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use futures::channel::oneshot;
use log::{debug, info, warn};

use crate::close::{
    Action, CloseError, CloseMachine, CloseMode, CloseOutcome, CloseState, CloseStatus,
    DataVerdict, Initiator, Input, WaiterId,
};
use crate::connection::linger::{LingerSwitch, LingeringStream};
use crate::connection::transport::{
    self, Deflate, InFlight, Inbound, InboundError, InboundFrames, OutboundBody, OutboundQueue,
    Refused, SocketReader,
};
use crate::metrics::{metrics, DropReason};

pub mod handle;
pub mod outbox;
mod rate_limit;

use handle::state_to_u8;
pub use handle::{
    Abort, Close, CloseOutput, SendText, SessionConfig, SessionEnd, SessionHandle, SessionHandler,
    SessionId, Shutdown,
};
pub use outbox::{local_outbox, Outbox, ShutdownFrames};
use outbox::{Overflowed, ShutdownWritten};
// Where it was before 0.2 (see CHANGELOG.md).
#[doc(hidden)]
pub use crate::protocol::going_away_json;
use rate_limit::RateLimit;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Upgrades `req` to a WebSocket served by a new session actor, inside actix-web's HTTP
/// dispatcher (for apps that embed wsgrace in their own actix-web server).
///
/// Answers the handshake error as an HTTP error (400) when `req` is no valid upgrade, or one
/// framed as no upgrade may be ([`super::handshake::check_framing`]: HTTP/1.0, a body). With
/// [`SessionConfig::permessage_deflate`], a `permessage-deflate` offer is answered
/// ([`super::handshake::agree_deflate`]).
pub fn start(
    req: &HttpRequest,
    payload: web::Payload,
    handler: impl SessionHandler,
    config: SessionConfig,
) -> Result<(SessionHandle, HttpResponse), actix_web::Error> {
    crate::connection::handshake::check_framing(req.head()).map_err(|bad| {
        let answer = HttpResponse::BadRequest()
            .force_close()
            .body(format!("{bad}\n"));
        actix_web::error::InternalError::from_response(bad, answer)
    })?;
    let mut response = actix_web_actors::ws::handshake(req)?;
    let agreed = crate::connection::handshake::agree_deflate(req.head(), config.permessage_deflate);
    let deflate = agreed
        .as_ref()
        .map_or(Deflate::Off, |agreed| agreed.deflate);
    if let Some(agreed) = agreed {
        response.insert_header((
            actix_web::http::header::SEC_WEBSOCKET_EXTENSIONS,
            agreed.response,
        ));
    }
    // An app that serves through `linger::LingeringStream` puts the connection's switch into
    // the connection data (`on_connect_ext`), so that an aborted session skips the linger.
    let linger = req.conn_data::<LingerSwitch>().cloned();
    let (handle, body) = spawn(payload, linger, Weak::new(), handler, config, deflate);
    Ok((handle, response.streaming(body)))
}

/// Serves an upgraded connection the caller took from the HTTP dispatcher after writing the 101
/// response (the binary's server, [`crate::service::server`]): a new session actor reads `socket`,
/// starting with `leftover` (bytes read past the upgrade request), and the returned future writes
/// the session's frames until the session ends, then closes the connection. Neither holds a buffer
/// while the connection is idle. `deflate`: what the 101 answer agreed to for `permessage-deflate`.
pub fn start_on_socket(
    socket: LingeringStream,
    leftover: Bytes,
    handler: impl SessionHandler,
    config: SessionConfig,
    deflate: Deflate,
) -> (SessionHandle, impl std::future::Future<Output = ()>) {
    let socket = Rc::new(socket);
    let reader = SocketReader::new(socket.clone(), leftover);
    let switch = Some(socket.switch());
    let (handle, body) = spawn(
        reader,
        switch,
        Rc::downgrade(&socket),
        handler,
        config,
        deflate,
    );
    (handle, transport::write_out(socket, body))
}

/// Starts a session actor reading `inbound`; returns its handle and the stream of bytes to
/// write to the peer. `socket`: the connection, when the session owns it (the reader and
/// the writer hold it; the session does not keep it open).
fn spawn<S>(
    inbound: S,
    linger: Option<LingerSwitch>,
    socket: Weak<LingeringStream>,
    handler: impl SessionHandler,
    config: SessionConfig,
    deflate: Deflate,
) -> (SessionHandle, OutboundBody)
where
    S: futures::Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    let (queue, body) = transport::outbound();
    let body = body.compressing(deflate.outbound());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let max_message_bytes = config.max_message_bytes;
    let max_messages_per_sec = config.max_messages_per_sec;
    let state = Arc::new(AtomicU8::new(state_to_u8(CloseState::Open)));
    let in_flight = InFlight::new(transport::MAX_MESSAGES_IN_FLIGHT);
    let handle_in_flight = in_flight.clone();
    let shared_state = state.clone();
    let addr = Session::create(move |ctx| {
        ctx.add_stream(
            InboundFrames::new(inbound, max_message_bytes, Some(in_flight.clone()))
                .inflating(deflate.inbound()),
        );
        Session {
            id,
            handle: SessionHandle {
                id,
                addr: ctx.address(),
                state: shared_state,
                in_flight,
            },
            handler: Box::new(handler),
            config,
            machine: CloseMachine::default(),
            queue,
            waiters: HashMap::new(),
            next_waiter: 0,
            last_seen: Instant::now(),
            last_ping: Instant::now(),
            rate: RateLimit::new(max_messages_per_sec),
            close_sent_at: None,
            close_code: None,
            handshake: None,
            dropped_after_close: 0,
            delivered_after_close: 0,
            dropped_slow_consumer: 0,
            linger,
            socket,
            deflate,
        }
    });
    let handle = SessionHandle {
        id,
        addr,
        state,
        in_flight: handle_in_flight,
    };
    (handle, body)
}

/// The session actor. Create it with [`start`].
pub struct Session {
    id: SessionId,
    handle: SessionHandle,
    handler: Box<dyn SessionHandler>,
    config: SessionConfig,
    machine: CloseMachine,
    queue: OutboundQueue,
    waiters: HashMap<WaiterId, oneshot::Sender<Result<CloseOutcome, CloseError>>>,
    next_waiter: WaiterId,
    last_seen: Instant,
    last_ping: Instant,
    rate: RateLimit,
    close_sent_at: Option<Instant>,
    /// The code of the close frame we sent, if we sent one with a code.
    close_code: Option<u16>,
    handshake: Option<Duration>,
    dropped_after_close: u64,
    delivered_after_close: u64,
    dropped_slow_consumer: u64,
    /// The connection's lingering close, when the server provides one ([`crate::service::server`]).
    linger: Option<LingerSwitch>,
    /// The connection, when the session owns it ([`start_on_socket`]), for its outbox.
    socket: Weak<LingeringStream>,
    /// What the upgrade agreed to for `permessage-deflate`.
    deflate: Deflate,
}

impl Session {
    /// Feeds the machine and carries out its actions; logs the transition.
    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) -> Result<(), CloseError> {
        let before = self.machine.state();
        let actions = self.machine.handle(input)?;
        let after = self.machine.state();
        if before != after {
            debug!("session={} {} -> {}", self.id, before, after);
            self.handle
                .state
                .store(state_to_u8(after), Ordering::Release);
        }
        for action in actions {
            self.carry_out(action, ctx);
        }
        Ok(())
    }

    fn carry_out(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            Action::SendClose(status) => {
                self.close_sent_at = Some(Instant::now());
                self.close_code = status.as_ref().map(CloseStatus::code);
                self.queue.push(Frame::Close(status.map(close_reason)));
            }
            Action::StartAckTimer => {
                ctx.run_later(self.config.close_timeout, |act, ctx| {
                    if act.machine.state() == CloseState::CloseSent {
                        info!(
                            "session={} no close ack within {:?}: aborting",
                            act.id, act.config.close_timeout
                        );
                    }
                    act.feed_infallible(Input::AckTimeout, ctx);
                });
            }
            Action::EndConnection => {
                // The handshake time is that of our close frame to the peer's ack: only for
                // closes we started.
                let server_initiated = self
                    .machine
                    .record()
                    .is_some_and(|r| r.initiator == Initiator::Server);
                if let (Some(sent), CloseState::Closed, true) =
                    (self.close_sent_at, self.machine.state(), server_initiated)
                {
                    self.handshake = Some(sent.elapsed());
                    // The peer's ack says it read our close frame, the last frame there is:
                    // nothing of ours is left for a reset to destroy, so the connection
                    // closes at once (RFC 6455 §7.1.1: the server closes TCP first) instead of
                    // lingering. A drain of thousands is spared a task and three system calls
                    // per connection.
                    if let Some(linger) = &self.linger {
                        linger.skip();
                    }
                }
                self.queue.end();
                ctx.stop();
            }
            Action::AbortConnection => {
                // Nothing is left to deliver: the socket closes without a lingering close.
                if let Some(linger) = &self.linger {
                    linger.skip();
                }
                self.queue.abort();
                ctx.stop();
            }
            Action::Answer { waiter, result } => {
                if let Some(tx) = self.waiters.remove(&waiter) {
                    // The caller may have stopped listening; nothing to do then.
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// Feeds an input that no state refuses (timers, peer events, aborts).
    fn feed_infallible(&mut self, input: Input, ctx: &mut Context<Self>) {
        if let Err(err) = self.feed(input, ctx) {
            log::error!("session={} internal: refused input: {err}", self.id);
        }
    }

    fn fail(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        metrics().protocol_error(code);
        match CloseStatus::new(code, reason) {
            Ok(status) => self.feed_infallible(Input::Fail(status), ctx),
            Err(err) => {
                log::error!("session={} internal: bad failure status: {err}", self.id);
                self.feed_infallible(Input::Abort, ctx);
            }
        }
    }

    fn send_text(&mut self, text: ByteString, ctx: &mut Context<Self>) -> Result<(), CloseError> {
        if let Err(err) = self.machine.check_send() {
            metrics().dropped(DropReason::OutputClosed, 1);
            return Err(err);
        }
        match self.queue.offer_text(text, self.config.outbound_queue) {
            Ok(()) => {
                metrics().messages_out.inc();
                Ok(())
            }
            Err(Refused::OutputClosed) => {
                metrics().dropped(DropReason::OutputClosed, 1);
                Err(CloseError::OutputClosed)
            }
            Err(Refused::Full { .. }) => {
                self.slow_consumer(1, ctx);
                Err(CloseError::OutputClosed)
            }
        }
    }

    /// Queues a ping or pong while output is open, against the same bound as texts
    /// (SPEC: pongs owed to a peer that does not read count against `session.outbound_queue`).
    fn send_control(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        if self.machine.check_send().is_err() {
            return;
        }
        if let Err(Refused::Full { .. }) =
            self.queue.offer_control(frame, self.config.outbound_queue)
        {
            self.slow_consumer(0, ctx);
        }
    }

    /// The peer does not read: drop what is queued (it would only delay the close frame)
    /// and close 1008. `refused` messages were already turned away.
    fn slow_consumer(&mut self, refused: u64, ctx: &mut Context<Self>) {
        if self.machine.check_send().is_err() {
            return;
        }
        let dropped = self.queue.discard() as u64 + refused;
        self.dropped_slow_consumer += dropped;
        metrics().dropped(DropReason::SlowConsumer, dropped);
        warn!(
            "session={} slow consumer: {} frames queued; closing 1008",
            self.id, self.config.outbound_queue
        );
        self.fail(1008, "slow consumer", ctx);
    }

    /// One timer per session drives both the heartbeat and the client timeout: it fires at
    /// the next ping or at the moment the peer's silence reaches the timeout, whichever comes
    /// first (a timer per duty would cost memory on every idle connection).
    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        let next_ping = self.last_ping + self.config.heartbeat_interval;
        let deadline = self.last_seen + self.config.client_timeout;
        let at = next_ping.min(deadline);
        ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            act.tick(ctx)
        });
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Once our close frame is out, the close timeout (armed with it) bounds the wait; the
        // silence timer would otherwise cut a close short and report it aborted, not timed out.
        if self.machine.state() != CloseState::Open {
            return;
        }
        let now = Instant::now();
        // While its messages wait for the application, the session is not reading: the peer's
        // silence is ours, not the peer's.
        if self.handle.in_flight.is_full() {
            self.last_seen = now;
        }
        if now.saturating_duration_since(self.last_seen) >= self.config.client_timeout {
            warn!(
                "session={} no frame for {:?}: aborting",
                self.id, self.config.client_timeout
            );
            self.feed_infallible(Input::Abort, ctx);
            return;
        }
        if now.saturating_duration_since(self.last_ping) >= self.config.heartbeat_interval {
            self.last_ping = now;
            self.send_control(Frame::Ping(Bytes::new()), ctx);
        }
        self.schedule_tick(ctx);
    }
}

fn close_reason(status: CloseStatus) -> CloseReason {
    let code = CloseCode::from(status.code());
    let description = match status.reason() {
        "" => None,
        reason => Some(reason.to_owned()),
    };
    CloseReason { code, description }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let outbox = Outbox {
            queue: self.queue.clone(),
            limit: self.config.outbound_queue,
            session: ctx.address(),
            state: self.handle.state.clone(),
            socket: self.socket.clone(),
            compressed: self.deflate.outbound(),
        };
        outbox::register(self.id, outbox);
        metrics().connections_open.inc();
        metrics().connections_total.inc();
        self.handler.on_start(&self.handle);
        debug!("session={} started", self.id);
        self.last_ping = Instant::now();
        self.schedule_tick(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        // The actor stops only through the machine's end actions, or when its context is
        // dropped; make sure the machine, the connection and the callers agree.
        if !self.machine.state().is_terminal() {
            self.feed_infallible(Input::Abort, ctx);
        }
        for (_, tx) in self.waiters.drain() {
            let _ = tx.send(Err(CloseError::Aborted));
        }
        outbox::unregister(self.id);
        metrics().connections_open.dec();
        let state = self.machine.state();
        let Some(record) = self.machine.record() else {
            log::error!(
                "session={} internal: stopped without a close record",
                self.id
            );
            return;
        };
        metrics().record_close(&record);
        if let Some(handshake) = self.handshake {
            metrics()
                .close_handshake_seconds
                .observe(handshake.as_secs_f64());
        }
        let end = SessionEnd {
            state,
            record,
            dropped_after_close: self.dropped_after_close,
            delivered_after_close: self.delivered_after_close,
            dropped_slow_consumer: self.dropped_slow_consumer,
            handshake: self.handshake,
            close_code: self.close_code,
        };
        debug!(
            "session={} ended {} ({} {} {})",
            self.id,
            state,
            record.initiator.as_str(),
            record.mode,
            record.result.as_str()
        );
        self.handler.on_end(&self.handle, &end);
    }
}

impl StreamHandler<Result<Inbound, InboundError>> for Session {
    fn handle(&mut self, item: Result<Inbound, InboundError>, ctx: &mut Self::Context) {
        if self.machine.state().is_terminal() {
            return;
        }
        self.last_seen = Instant::now();
        if let Ok(Inbound::Text(_)) = &item {
            metrics().messages_in.inc();
            if !self.rate.allow(self.last_seen) {
                warn!("session={} over its message rate: closing 1008", self.id);
                self.fail(1008, "rate limit", ctx);
                return;
            }
        }
        match item {
            Ok(Inbound::Text(text)) => match self.machine.on_data() {
                DataVerdict::Deliver => {
                    if self.machine.state() == CloseState::CloseSent {
                        self.delivered_after_close += 1;
                    }
                    self.handler.on_message(&self.handle, text);
                }
                DataVerdict::Drop => {
                    self.dropped_after_close += 1;
                    metrics().dropped(DropReason::AfterClose, 1);
                    debug!(
                        "session={} dropped a message in {}",
                        self.id,
                        self.machine.state()
                    );
                }
            },
            Ok(Inbound::Ping(payload)) => self.send_control(Frame::Pong(payload), ctx),
            Ok(Inbound::Pong) => {}
            Ok(Inbound::Close(status)) => self.feed_infallible(Input::PeerClose(status), ctx),
            Err(err) => match err.close_code() {
                Some(code) => {
                    warn!("session={} bad input: {err}; closing {code}", self.id);
                    self.fail(code, err.close_reason(), ctx);
                }
                None => {
                    info!("session={} transport ended: {err}", self.id);
                    self.feed_infallible(Input::TransportEnded, ctx);
                }
            },
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.machine.state().is_terminal() {
            info!(
                "session={} connection ended in {}",
                self.id,
                self.machine.state()
            );
            self.feed_infallible(Input::TransportEnded, ctx);
        }
    }
}

impl Handler<Close> for Session {
    type Result = ResponseFuture<Result<CloseOutcome, CloseError>>;

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) -> Self::Result {
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(waiter, tx);
        let input = Input::Close {
            waiter,
            status: msg.status,
        };
        if let Err(err) = self.feed(input, ctx) {
            self.waiters.remove(&waiter);
            return Box::pin(async move { Err(err) });
        }
        if let Some(cancel) = msg.cancel {
            if self.waiters.contains_key(&waiter) {
                ctx.spawn(
                    cancel
                        .cancelled_owned()
                        .into_actor(self)
                        .map(move |(), act, ctx| act.feed_infallible(Input::Cancel(waiter), ctx)),
                );
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(CloseError::Aborted)) })
    }
}

impl Handler<CloseOutput> for Session {
    type Result = Result<CloseOutcome, CloseError>;

    fn handle(&mut self, msg: CloseOutput, ctx: &mut Self::Context) -> Self::Result {
        self.feed(Input::CloseOutput(msg.status), ctx)?;
        Ok(CloseOutcome::Sent)
    }
}

impl Handler<Abort> for Session {
    type Result = ();

    fn handle(&mut self, _: Abort, ctx: &mut Self::Context) {
        if !self.machine.state().is_terminal() {
            info!("session={} aborted by the application", self.id);
        }
        self.feed_infallible(Input::Abort, ctx);
    }
}

impl Session {
    /// Closes for shutdown with `status`, in the mode the handler chooses; `going_away`: the
    /// delay of the `going_away` text to queue first (the drain may have written it already).
    fn shut_down(
        &mut self,
        status: Option<CloseStatus>,
        going_away: Option<Duration>,
        ctx: &mut Context<Self>,
    ) {
        let mode = self.handler.shutdown_mode(self.config.close_mode);
        debug!("session={} shutting down, {mode}", self.id);
        if let Some(delay) = going_away {
            // A full outbox refuses it (the session is closing as a slow consumer anyway).
            let _ = self.send_text(going_away_json(delay), ctx);
        }
        let input = match mode {
            CloseMode::Awaited => {
                // Nobody waits on this close: the end is reported through the handler.
                let waiter = self.next_waiter;
                self.next_waiter += 1;
                Input::Close { waiter, status }
            }
            CloseMode::FireAndForget => Input::CloseOutput(status),
        };
        self.feed_infallible(input, ctx);
    }
}

impl Handler<Shutdown> for Session {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        if self.machine.state() != CloseState::Open {
            return;
        }
        self.shut_down(msg.status, msg.reconnect_after, ctx);
    }
}

impl Handler<ShutdownWritten> for Session {
    type Result = ();

    fn handle(&mut self, msg: ShutdownWritten, ctx: &mut Self::Context) {
        if msg.going_away {
            metrics().messages_out.inc();
        }
        // The frames are out (the queue holds what the socket did not take at once, and takes
        // nothing after it): the machine's close frame is not queued again. A close the peer
        // started meanwhile crossed ours (RFC 6455 allows both at once) and has ended the
        // session already.
        if self.machine.state() != CloseState::Open {
            debug!("session={} shutdown frames crossed a close", self.id);
            return;
        }
        self.shut_down(msg.status, None, ctx);
    }
}

impl Handler<Overflowed> for Session {
    type Result = ();

    fn handle(&mut self, _: Overflowed, ctx: &mut Self::Context) {
        self.slow_consumer(1, ctx);
    }
}

impl Handler<SendText> for Session {
    type Result = Result<(), CloseError>;

    fn handle(&mut self, msg: SendText, ctx: &mut Self::Context) -> Self::Result {
        self.send_text(msg.0, ctx)
    }
}
