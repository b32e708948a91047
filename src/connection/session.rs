//! The session actor: one per WebSocket connection.
//!
//! It feeds what happens (frames in, close requests, timers) to its [`CloseMachine`] and
//! carries out the machine's [`Action`]s (frames out, answers, the end of the connection). It
//! runs the heartbeat and the client timeout, bounds its outbound queue, and hands complete
//! text messages to the application's [`SessionHandler`]. It must not decide close semantics
//! itself (that is `close.rs`) nor touch bytes (that is `transport.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    ResponseFuture, StreamHandler, WrapFuture,
};
use actix_http::ws::{CloseCode, CloseReason, Message as Frame};
use actix_web::error::PayloadError;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use futures::channel::oneshot;
use log::{debug, info, warn};
use tokio_util::sync::CancellationToken;

use crate::close::{
    Action, CloseError, CloseMachine, CloseMode, CloseOutcome, CloseRecord, CloseState,
    CloseStatus, DataVerdict, Initiator, Input, WaiterId,
};
use crate::connection::linger::{LingerSwitch, LingeringStream};
use crate::connection::transport::{
    self, InFlight, InFlightToken, Inbound, InboundError, InboundFrames, OutboundBody,
    OutboundQueue, Refused, SocketReader,
};
use crate::metrics::{metrics, DropReason};

/// A session's id, unique in the process.
pub type SessionId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The outboxes of the sessions running on this thread, for [`local_outbox`].
    /// Shared (`Rc`) with the shard that fans out to the session: one outbox per session,
    /// not a copy with its own actor address (each `Addr` clone allocates).
    static OUTBOXES: RefCell<HashMap<SessionId, Rc<Outbox>>> = RefCell::new(HashMap::new());
}

/// The direct way into a session's outbound queue, for code running on the session's own
/// thread (the fan-out shards): no actor message, no allocation per delivery. The queue
/// itself refuses data after the close frame and beyond `session.outbound_queue`; a full
/// queue makes the session close 1008 "slow consumer".
#[derive(Clone)]
pub struct Outbox {
    queue: OutboundQueue,
    limit: usize,
    session: Addr<Session>,
}

impl Outbox {
    /// Queues `text` for the peer, or says why not.
    pub fn offer(&self, text: ByteString) -> Result<(), Refused> {
        self.report(self.queue.offer_text(text, self.limit))
    }

    /// Queues a text frame encoded once for many peers ([`transport::encode_text`]).
    pub fn offer_encoded(&self, frame: std::rc::Rc<[u8]>) -> Result<(), Refused> {
        self.report(self.queue.offer_encoded(frame, self.limit))
    }

    /// Queues a replayed text (missed messages of a resume or a catch-up): not counted
    /// against `session.outbound_queue` (the replay is bounded by `history.size`).
    pub fn offer_replayed(&self, text: ByteString) -> Result<(), Refused> {
        self.queue.offer_text_replayed(text)
    }

    /// [`Outbox::offer_replayed`] for a frame encoded once for many sessions.
    pub fn offer_encoded_replayed(&self, frame: std::rc::Rc<[u8]>) -> Result<(), Refused> {
        self.queue.offer_encoded_replayed(frame)
    }

    /// Tells the session to close for shutdown ([`Shutdown`]), from its own thread: the
    /// drain's way in, with no actor address cloned and no other thread woken.
    pub fn shut_down(&self, status: Option<CloseStatus>, reconnect_after: Option<Duration>) {
        self.session.do_send(Shutdown {
            status,
            reconnect_after,
        });
    }

    fn report(&self, result: Result<(), Refused>) -> Result<(), Refused> {
        if let Err(Refused::Full { first: true }) = result {
            self.session.do_send(Overflowed);
        }
        result
    }
}

/// The outbox of session `id` if it runs on the calling thread.
pub fn local_outbox(id: SessionId) -> Option<Rc<Outbox>> {
    OUTBOXES.with(|outboxes| outboxes.borrow().get(&id).cloned())
}

/// The outbound queue overflowed: the session closes 1008 "slow consumer".
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct Overflowed;

/// The limits and timers of a session. Defaults are those of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// No frame at all for this long: the session is aborted.
    pub client_timeout: Duration,
    /// Largest accepted message (after reassembly); larger: close 1009.
    pub max_message_bytes: usize,
    /// Most frames queued for a client that does not read; more: close 1008.
    pub outbound_queue: usize,
    /// How long a close waits for the peer's ack before the session is aborted.
    pub close_timeout: Duration,
    /// The mode offered to [`SessionHandler::shutdown_mode`] when shutdown reaches the session.
    pub close_mode: CloseMode,
    /// Incoming messages per second, with bursts of one second's worth; more: close 1008.
    /// 0 = no limit.
    pub max_messages_per_sec: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_interval: Duration::from_millis(5000),
            client_timeout: Duration::from_millis(15000),
            max_message_bytes: 65536,
            outbound_queue: 1024,
            close_timeout: Duration::from_millis(5000),
            close_mode: CloseMode::Awaited,
            max_messages_per_sec: 0,
        }
    }
}

/// What the application does with a session's messages. One value per session; it lives on
/// the session's thread.
pub trait SessionHandler: 'static {
    /// The session started; `session` reaches it from anywhere.
    fn on_start(&mut self, _session: &SessionHandle) {}

    /// A complete text message from the peer. Called in `Open`, and in `CloseSent` after a
    /// fire-and-forget close; never after an awaited close or once the peer closed.
    fn on_message(&mut self, session: &SessionHandle, text: ByteString);

    /// Shutdown reached the session: how should it close? `default` is the session's
    /// configured [`SessionConfig::close_mode`].
    fn shutdown_mode(&mut self, default: CloseMode) -> CloseMode {
        default
    }

    /// The session ended (once, in `Closed` or `Aborted`).
    fn on_end(&mut self, _session: &SessionHandle, _end: &SessionEnd) {}
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// Closed or Aborted.
    pub state: CloseState,
    /// Who closed, in which mode, with what result.
    pub record: CloseRecord,
    /// Data messages from the peer not delivered because the session was closing.
    pub dropped_after_close: u64,
    /// Data messages from the peer delivered after our fire-and-forget close frame.
    pub delivered_after_close: u64,
    /// Outbound messages dropped because the client did not read.
    pub dropped_slow_consumer: u64,
    /// From our close frame to the peer's ack, for server-initiated closes that were acked.
    pub handshake: Option<Duration>,
}

/// Awaited close (`CloseAsync`). Valid in Open, CloseReceived and CloseSent. Answers once the
/// peer's close frame arrived ([`CloseOutcome::Acked`]) or after the close timeout
/// ([`CloseOutcome::TimedOut`], the connection aborted), or `Cancelled` when `cancel` fires.
#[derive(Debug, Clone)]
pub struct Close {
    /// What to send; `None`: a close frame without a code.
    pub status: Option<CloseStatus>,
    /// Cancels the wait (the close frame, once sent, stays sent).
    pub cancel: Option<CancellationToken>,
}

impl Message for Close {
    type Result = Result<CloseOutcome, CloseError>;
}

/// Fire-and-forget close (`CloseOutputAsync`). Valid in Open and CloseReceived; answers
/// [`CloseOutcome::Sent`] as soon as the frame is queued. The session keeps reading until the
/// peer's ack or the close timeout.
#[derive(Debug, Clone)]
pub struct CloseOutput {
    /// What to send; `None`: a close frame without a code.
    pub status: Option<CloseStatus>,
}

impl Message for CloseOutput {
    type Result = Result<CloseOutcome, CloseError>;
}

/// Drops the connection now, without a handshake. Waiting closers get `Aborted`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Abort;

/// Sends a text message. Valid in Open (and CloseReceived); `OutputClosed` once our close
/// frame is sent. A full outbound queue closes the session with 1008 "slow consumer".
#[derive(Debug, Clone)]
pub struct SendText(pub ByteString);

impl Message for SendText {
    type Result = Result<(), CloseError>;
}

/// Shutdown reached the session: it closes with `status` in the mode its handler chooses
/// ([`SessionHandler::shutdown_mode`]). Ignored once the close frame is sent or the session
/// ended; the end is reported through [`SessionHandler::on_end`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// The close status to send.
    pub status: Option<CloseStatus>,
    /// When set, `{"type":"going_away","reconnect_after_ms":D}` is queued right before the
    /// close frame (SPEC, Shutdown step 6): the delay the client should wait before it
    /// reconnects.
    pub reconnect_after: Option<Duration>,
}

/// The `going_away` frame that precedes a shutdown close.
pub fn going_away_json(reconnect_after: Duration) -> ByteString {
    ByteString::from(format!(
        "{{\"type\":\"going_away\",\"reconnect_after_ms\":{}}}",
        reconnect_after.as_millis()
    ))
}

/// A cheap, cloneable, thread-safe handle to a session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    id: SessionId,
    addr: Addr<Session>,
    state: Arc<AtomicU8>,
    in_flight: InFlight,
}

impl SessionHandle {
    /// Counts one of the session's messages as on its way through the application until the
    /// token is dropped: with [`transport::MAX_MESSAGES_IN_FLIGHT`] of them, the session reads
    /// nothing more from its peer (see [`InFlight`]). A handler that passes messages on
    /// (to another actor, a broker) holds one per message until it is done with it.
    pub fn hold_inbound(&self) -> InFlightToken {
        self.in_flight.hold()
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The actor's address, for messages not wrapped here.
    pub fn addr(&self) -> &Addr<Session> {
        &self.addr
    }

    /// The session's close state, as of its last transition.
    pub fn state(&self) -> CloseState {
        state_from_u8(self.state.load(Ordering::Acquire))
    }

    /// The error for a request that reached no session: it ended, closed or aborted.
    fn gone(&self) -> CloseError {
        match self.state() {
            CloseState::Aborted => CloseError::Aborted,
            _ => CloseError::AlreadyClosed,
        }
    }

    /// Awaited close; see [`Close`]. A session that is gone answers `AlreadyClosed`, or
    /// `Aborted` if it ended that way.
    pub async fn close(&self, status: Option<CloseStatus>) -> Result<CloseOutcome, CloseError> {
        self.close_with_cancel(status, None).await
    }

    /// Awaited close that `cancel` can cancel; see [`Close`].
    pub async fn close_with_cancel(
        &self,
        status: Option<CloseStatus>,
        cancel: Option<CancellationToken>,
    ) -> Result<CloseOutcome, CloseError> {
        let msg = Close { status, cancel };
        self.addr
            .send(msg)
            .await
            .unwrap_or_else(|_| Err(self.gone()))
    }

    /// Fire-and-forget close; see [`CloseOutput`].
    pub async fn close_output(
        &self,
        status: Option<CloseStatus>,
    ) -> Result<CloseOutcome, CloseError> {
        self.addr
            .send(CloseOutput { status })
            .await
            .unwrap_or_else(|_| Err(self.gone()))
    }

    /// Sends a text message and waits until it is queued; see [`SendText`].
    pub async fn send_text(&self, text: impl Into<ByteString>) -> Result<(), CloseError> {
        self.addr
            .send(SendText(text.into()))
            .await
            .unwrap_or_else(|_| Err(self.gone()))
    }

    /// Queues a text message without waiting for an answer (the fan-out path).
    pub fn deliver(&self, text: ByteString) {
        self.addr.do_send(SendText(text));
    }

    /// Aborts the session.
    pub fn abort(&self) {
        self.addr.do_send(Abort);
    }

    /// Tells the session to close for shutdown; see [`Shutdown`].
    pub fn shutdown(&self, status: Option<CloseStatus>) {
        self.addr.do_send(Shutdown {
            status,
            reconnect_after: None,
        });
    }

    /// Tells the session to close for shutdown after a `going_away` that suggests
    /// `reconnect_after`; see [`Shutdown`].
    pub fn shutdown_going_away(&self, status: Option<CloseStatus>, reconnect_after: Duration) {
        self.addr.do_send(Shutdown {
            status,
            reconnect_after: Some(reconnect_after),
        });
    }
}

/// Upgrades `req` to a WebSocket served by a new session actor, inside actix-web's HTTP
/// dispatcher (for apps that embed wsgrace in their own actix-web server).
///
/// Answers the handshake error as an HTTP error (400) when `req` is no valid upgrade, or one
/// framed as no upgrade may be ([`super::handshake::check_framing`]: HTTP/1.0, a body).
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
    // An app that serves through `linger::LingeringStream` puts the connection's switch into
    // the connection data (`on_connect_ext`), so that an aborted session skips the linger.
    let linger = req.conn_data::<LingerSwitch>().cloned();
    let (handle, body) = spawn(payload, linger, handler, config);
    Ok((handle, response.streaming(body)))
}

/// Serves an upgraded connection the caller took from the HTTP dispatcher after writing the 101
/// response (the binary's server, [`crate::service::server`]): a new session actor reads `socket`,
/// starting with `leftover` (bytes read past the upgrade request), and the returned future writes
/// the session's frames until the session ends, then closes the connection. Neither holds a buffer
/// while the connection is idle.
pub fn start_on_socket(
    socket: LingeringStream,
    leftover: Bytes,
    handler: impl SessionHandler,
    config: SessionConfig,
) -> (SessionHandle, impl std::future::Future<Output = ()>) {
    let socket = Rc::new(socket);
    let reader = SocketReader::new(socket.clone(), leftover);
    let (handle, body) = spawn(reader, Some(socket.switch()), handler, config);
    (handle, transport::write_out(socket, body))
}

/// Starts a session actor reading `inbound`; returns its handle and the stream of bytes to
/// write to the peer.
fn spawn<S>(
    inbound: S,
    linger: Option<LingerSwitch>,
    handler: impl SessionHandler,
    config: SessionConfig,
) -> (SessionHandle, OutboundBody)
where
    S: futures::Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    let (queue, body) = transport::outbound();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let max_message_bytes = config.max_message_bytes;
    let max_messages_per_sec = config.max_messages_per_sec;
    let state = Arc::new(AtomicU8::new(state_to_u8(CloseState::Open)));
    let in_flight = InFlight::new(transport::MAX_MESSAGES_IN_FLIGHT);
    let handle_in_flight = in_flight.clone();
    let shared_state = state.clone();
    let addr = Session::create(move |ctx| {
        ctx.add_stream(InboundFrames::new(
            inbound,
            max_message_bytes,
            Some(in_flight.clone()),
        ));
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
            handshake: None,
            dropped_after_close: 0,
            delivered_after_close: 0,
            dropped_slow_consumer: 0,
            linger,
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
    handshake: Option<Duration>,
    dropped_after_close: u64,
    delivered_after_close: u64,
    dropped_slow_consumer: u64,
    /// The connection's lingering close, when the server provides one ([`crate::service::server`]).
    linger: Option<LingerSwitch>,
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

/// A token bucket: `per_sec` tokens a second, holding at most one second's worth.
#[derive(Debug)]
struct RateLimit {
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    fn new(per_sec: u32) -> Self {
        RateLimit {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            refilled: Instant::now(),
        }
    }

    /// Takes a token for a message that arrived at `now`; false when none is left. A limit of
    /// 0 allows everything.
    fn allow(&mut self, now: Instant) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn state_to_u8(state: CloseState) -> u8 {
    match state {
        CloseState::Open => 0,
        CloseState::CloseSent => 1,
        CloseState::CloseReceived => 2,
        CloseState::Closed => 3,
        CloseState::Aborted => 4,
    }
}

fn state_from_u8(value: u8) -> CloseState {
    match value {
        0 => CloseState::Open,
        1 => CloseState::CloseSent,
        2 => CloseState::CloseReceived,
        3 => CloseState::Closed,
        _ => CloseState::Aborted,
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
        };
        OUTBOXES.with(|outboxes| outboxes.borrow_mut().insert(self.id, Rc::new(outbox)));
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
        OUTBOXES.with(|outboxes| outboxes.borrow_mut().remove(&self.id));
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

impl Handler<Shutdown> for Session {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        if self.machine.state() != CloseState::Open {
            return;
        }
        let mode = self.handler.shutdown_mode(self.config.close_mode);
        debug!("session={} shutting down, {mode}", self.id);
        if let Some(delay) = msg.reconnect_after {
            // A full outbox refuses it (the session is closing as a slow consumer anyway).
            let _ = self.send_text(going_away_json(delay), ctx);
        }
        let input = match mode {
            CloseMode::Awaited => {
                // Nobody waits on this close: the end is reported through the handler.
                let waiter = self.next_waiter;
                self.next_waiter += 1;
                Input::Close {
                    waiter,
                    status: msg.status,
                }
            }
            CloseMode::FireAndForget => Input::CloseOutput(msg.status),
        };
        self.feed_infallible(input, ctx);
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
