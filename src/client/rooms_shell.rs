//! The tokio shell of the `wsgrace.v2` client: [`RoomsClient`], the app's handle, and the
//! task it spawns, which owns the socket (tokio-tungstenite, offering the subprotocol
//! `wsgrace.v2`) and the timers (the reconnect delay, the connect, close and idle timeouts,
//! the delays of retried joins and publishes). The app's calls and the server's frames go to
//! the pure `RoomsCore` (rooms, trackers, outbox); whether and when to reconnect is the pure
//! `policy.rs`; this file carries out what they answer: frames to write (in order, through
//! one queue), events for the app (in order, through one queue), timers to start.
//!
//! It must not decide what the cores decide (no room, seq, id, close code or delay rule
//! here), print anything, or log the token.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use log::{debug, info};
use tokio::sync::{mpsc, Notify};
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::is_valid_name;

use super::policy::{backoff_delay, next_step, CloseInfo, ReconnectReason, Step, StepContext};
use super::rooms::{JoinOptions, RoomError, RoomEvent, OUTBOX_CAPACITY};
use super::rooms_core::{Output, RoomsCore};
use super::socket::{self, rearm, wait, Dial, WsStream};
use super::wire::{build_url, Resume};
use super::wire_v2::{parse_rooms_frame, RoomsFrame, SUBPROTOCOL};
use super::{check_close, ClientConfig, ClientError, ConnectionState};

/// Events the app has not read yet; past this the task stops reading the socket.
const EVENT_QUEUE: usize = 1024;
/// Frames not yet written; past this the app's calls answer [`RoomError::QueueFull`].
const SEND_QUEUE: usize = 1024;
/// Characters of the random start of this client's publish ids.
const ID_PREFIX_LEN: usize = 12;

/// A retry delay the core asked for.
enum Timer {
    Join { room: String, attempt: u32 },
    Publish { id: String, attempt: u32 },
}

/// What the app's calls, the task and the retry timers share.
struct Inner {
    state: ConnectionState,
    app_closed: bool,
    close_request: Option<(u16, String)>,
    core: RoomsCore,
    /// Frames for the open connection, in the order the core gave them.
    outgoing: VecDeque<String>,
    /// Events for the app, in the order the core gave them.
    events: VecDeque<RoomEvent>,
    /// Retry delays to start.
    timers: Vec<(Duration, Timer)>,
    name: Option<String>,
}

impl Inner {
    /// Queues what the core answered; the task carries it out (see [`Driver::pump`]).
    fn apply(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send(frame) => self.outgoing.push_back(frame.to_json()),
                Output::Emit(event) => self.events.push_back(event),
                Output::RetryJoin {
                    room,
                    attempt,
                    after,
                } => self.timers.push((after, Timer::Join { room, attempt })),
                Output::RetryPublish { id, attempt, after } => {
                    self.timers.push((after, Timer::Publish { id, attempt }))
                }
            }
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Something was queued for the task.
    queued: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A reconnecting connection that carries many rooms (`wsgrace.v2`): join and leave while
/// connected, each room resumed on its own after a reconnect, publishes resent until the
/// room confirms them. See the [module docs](crate::client). Dropping it closes with 1000.
pub struct RoomsClient {
    events: mpsc::Receiver<RoomEvent>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    done: CancellationToken,
    close_timeout: Duration,
}

impl RoomsClient {
    /// Starts the client: a task on the current Tokio runtime connects at once to
    /// `config.url` with `?name=` (and `?token=`), offering `wsgrace.v2`, and keeps the
    /// connection up by the policy in the [module docs](crate::client). `config.room` and
    /// `config.resume` are the one-room client's: a room is joined with
    /// [`join`](Self::join). Fails only on such a config, a URL that cannot be used, or
    /// outside a runtime; connection failures are events.
    pub fn connect(config: ClientConfig) -> Result<RoomsClient, ClientError> {
        if config.room.is_some() {
            return Err(ClientError::OneRoomOption("room"));
        }
        if config.resume.is_some() {
            return Err(ClientError::OneRoomOption("resume"));
        }
        build_url(&config.url, None, config.name.as_deref(), None, None)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let prefix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(ID_PREFIX_LEN)
            .collect();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state: ConnectionState::Connecting,
                app_closed: false,
                close_request: None,
                core: RoomsCore::new(&prefix, OUTBOX_CAPACITY, config.backoff),
                outgoing: VecDeque::new(),
                events: VecDeque::new(),
                timers: Vec::new(),
                name: None,
            }),
            queued: Notify::new(),
        });
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let close_timeout = config.close_timeout;
        let driver = Driver {
            config,
            attempt: 0,
            asked_token_after_401: false,
            token_for_401: false,
            hello_name: None,
            state: ConnectionState::Connecting,
            events: events_tx,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let finished = done.clone();
        runtime.spawn(async move {
            driver.run().await;
            finished.cancel();
        });
        Ok(RoomsClient {
            events,
            shared,
            stop,
            done,
            close_timeout,
        })
    }

    /// The next event; `None` once the client has stopped and every event was read. Events
    /// wait in a queue of 1024; while it is full the client stops reading the socket.
    pub async fn next_event(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    /// Runs one call of the app on the core and queues what it answers.
    fn call<T>(
        &self,
        call: impl FnOnce(&mut RoomsCore) -> Result<(T, Vec<Output>), RoomError>,
    ) -> Result<T, RoomError> {
        let mut inner = self.shared.lock();
        if inner.app_closed {
            return Err(RoomError::Closed);
        }
        if inner.outgoing.len() >= SEND_QUEUE {
            return Err(RoomError::QueueFull);
        }
        let (value, outputs) = call(&mut inner.core)?;
        inner.apply(outputs);
        drop(inner);
        self.shared.queued.notify_one();
        Ok(value)
    }

    /// Joins `room`: at once when connected, else once the connection is up; after every
    /// reconnect again, resuming from the room's last seq. [`RoomEvent::Joined`] (or
    /// `JoinRefused`) answers. Fails on a bad name, `last` over 1000, or a room joined
    /// already.
    pub fn join(&self, room: &str, options: JoinOptions) -> Result<(), RoomError> {
        self.call(|core| core.join(room, &options).map(|out| ((), out)))
    }

    /// Leaves `room`: nothing of it is delivered from now on, it is not joined again, and
    /// its unconfirmed publishes fail ([`PublishFailure::Left`](super::PublishFailure::Left));
    /// [`RoomEvent::Left`] follows. Fails for a room not joined.
    pub fn leave(&self, room: &str) -> Result<(), RoomError> {
        self.call(|core| core.leave(room).map(|out| ((), out)))
    }

    /// Publishes `text` to `room` (joined, or to be joined) and returns its id (unique to
    /// this client). The message is kept, and sent again with the same id after every
    /// reconnect (and after an `unavailable` refusal, after a delay), until its copy or an
    /// `ack` arrives: [`RoomEvent::Published`]; the room gets it exactly once. While
    /// disconnected it waits. Fails for a room not joined, or with 1024 publishes waiting.
    pub fn publish(&self, room: &str, text: &str) -> Result<String, RoomError> {
        self.call(|core| core.publish(room, text))
    }

    /// Sends a signal (typing, a read receipt) to the room's other members: now, at most
    /// once, never queued. Fails unless the room is joined on an open connection.
    pub fn signal(&self, room: &str, text: &str) -> Result<(), RoomError> {
        self.call(|core| core.signal(room, text).map(|out| ((), out)))
    }

    /// Asks who is in `room`; [`RoomEvent::Presence`] answers. Fails unless the room is
    /// joined on an open connection.
    pub fn presence(&self, room: &str) -> Result<(), RoomError> {
        self.call(|core| core.presence(room).map(|out| ((), out)))
    }

    /// Stops for good, as [`Client::close`](super::Client::close) does: state Closed at once,
    /// no reconnect; an open connection is closed with `code` and `reason` (the frames the
    /// app queued before go out first), waiting for the server's close frame up to
    /// [`ClientConfig::close_timeout`]. Unconfirmed publishes stay in
    /// [`unconfirmed`](Self::unconfirmed).
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        check_close(code, reason)?;
        {
            let mut inner = self.shared.lock();
            if !inner.app_closed {
                inner.app_closed = true;
                inner.close_request = Some((code, reason.to_owned()));
                inner.state = ConnectionState::Closed;
            }
        }
        self.stop.cancel();
        let bound = self.close_timeout.saturating_add(Duration::from_secs(1));
        tokio::time::timeout(bound, self.done.cancelled())
            .await
            .map_err(|_| ClientError::CloseTimeout(bound))
    }

    pub fn state(&self) -> ConnectionState {
        self.shared.lock().state
    }

    /// The name of the last hello.
    pub fn name(&self) -> Option<String> {
        self.shared.lock().name.clone()
    }

    /// The rooms the app is in (joined, or to be joined), in the order it joined them.
    pub fn rooms(&self) -> Vec<String> {
        self.shared.lock().core.rooms()
    }

    /// The room's last seq handed to the app (or its join's seq if later) and the epoch it
    /// belongs to: what the room resumes from, and what [`JoinOptions::resume`] of another
    /// client takes. `None` for a room not joined yet (or not in the set).
    pub fn position(&self, room: &str) -> Option<Resume> {
        self.shared.lock().core.position(room)
    }

    /// The publishes the rooms have not confirmed yet, oldest first: (room, id, text).
    pub fn unconfirmed(&self) -> Vec<(String, String, String)> {
        self.shared.lock().core.unconfirmed()
    }
}

impl Drop for RoomsClient {
    fn drop(&mut self) {
        self.shared.lock().app_closed = true;
        self.stop.cancel();
    }
}

impl fmt::Debug for RoomsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomsClient")
            .field("state", &self.state())
            .field("rooms", &self.rooms())
            .finish()
    }
}

/// What the task knows of the current socket.
#[derive(Debug, Default)]
struct Connection {
    opened: bool,
    /// Its hello came.
    welcomed: bool,
    going_away: Option<Duration>,
}

/// What to do after an attempt.
enum Flow {
    Stop,
    Retry { delay: Duration, fresh_token: bool },
}

type Sink = SplitSink<WsStream, Message>;

/// The task: carries out what the cores decide.
struct Driver {
    config: ClientConfig,
    attempt: u32,
    /// An HTTP 401 made this client ask the token hook since the last welcome.
    asked_token_after_401: bool,
    /// The next call of the token hook answers an HTTP 401: no token then stops.
    token_for_401: bool,
    hello_name: Option<String>,
    state: ConnectionState,
    events: mpsc::Sender<RoomEvent>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        self.emit(RoomEvent::State(ConnectionState::Connecting))
            .await;
        let mut fresh_token = self.config.token.is_none() && self.config.token_hook.is_some();
        loop {
            match self.attempt(fresh_token).await {
                Flow::Stop => break,
                Flow::Retry {
                    delay,
                    fresh_token: fresh,
                } => {
                    fresh_token = fresh;
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    // Events of the app's calls (a leave while disconnected) still go out.
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = self.shared.queued.notified() => self.pump(None).await,
                            _ = self.stop.cancelled() => break,
                        }
                    }
                    if self.stop.is_cancelled() {
                        break;
                    }
                }
            }
        }
        self.pump(None).await;
        self.set_state(ConnectionState::Closed).await;
        debug!("rooms client stopped");
    }

    /// One connection: token, URL, upgrade, frames until it ends; then the decision.
    async fn attempt(&mut self, fresh_token: bool) -> Flow {
        if self.stop.is_cancelled() {
            return Flow::Stop;
        }
        if fresh_token {
            if let Some(flow) = self.refresh_token().await {
                return flow;
            }
        }
        let name = self.config.name.as_deref().or(self.hello_name.as_deref());
        let token = self.config.token.as_deref();
        let request = match build_url(&self.config.url, None, name, token, None) {
            Ok(url) => socket::request(&url, Some(SUBPROTOCOL)),
            Err(err) => Err(err.to_string()),
        };
        let request = match request {
            Ok(request) => request,
            Err(err) => return self.cannot_connect(err).await,
        };
        debug!("rooms client connecting to {}", self.config.url);
        let mut conn = Connection::default();
        let dial = socket::dial(request, self.config.connect_timeout);
        tokio::pin!(dial);
        let dialed = loop {
            tokio::select! {
                dialed = &mut dial => break dialed,
                _ = self.shared.queued.notified() => self.pump(None).await,
                _ = self.stop.cancelled() => return Flow::Stop,
            }
        };
        let close = match dialed {
            Dial::Failed(close) => close,
            Dial::Unusable(err) => return self.cannot_connect(err).await,
            Dial::Opened(ws, response) => {
                let chosen = response
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|value| value.to_str().ok());
                if chosen != Some(SUBPROTOCOL) {
                    let text =
                        format!("the server chose subprotocol {chosen:?}, not {SUBPROTOCOL}");
                    return self.cannot_connect(text).await;
                }
                conn.opened = true;
                self.run_socket(*ws, &mut conn).await
            }
        };
        self.after_close(close, &conn).await
    }

    /// Calls the token hook; `Some(flow)` when it failed (or the app closed meanwhile).
    async fn refresh_token(&mut self) -> Option<Flow> {
        let for_401 = std::mem::take(&mut self.token_for_401);
        let hook = self.config.token_hook.as_mut()?;
        let fetched = tokio::select! {
            fetched = hook() => fetched,
            _ = self.stop.cancelled() => return Some(Flow::Stop),
        };
        match fetched {
            Ok(token) if token.is_empty() && for_401 => {
                // The upgrade was refused with 401 and the hook has no token: stop.
                self.emit(RoomEvent::Error {
                    code: "token".to_owned(),
                    text: "HTTP 401, and the token hook gave no token".to_owned(),
                })
                .await;
                Some(Flow::Stop)
            }
            Ok(token) => {
                self.config.token = Some(token);
                None
            }
            Err(err) => {
                self.emit(RoomEvent::Error {
                    code: "token".to_owned(),
                    text: err.to_string(),
                })
                .await;
                let delay = backoff_delay(self.attempt, self.config.backoff, fastrand::f64());
                self.attempt = self.attempt.saturating_add(1);
                self.set_state(ConnectionState::Reconnecting).await;
                Some(Flow::Retry {
                    delay,
                    fresh_token: true,
                })
            }
        }
    }

    /// A URL, or a server, that will not get better by retrying: `Error {code: "connect"}`.
    async fn cannot_connect(&mut self, text: String) -> Flow {
        self.emit(RoomEvent::Error {
            code: "connect".to_owned(),
            text,
        })
        .await;
        Flow::Stop
    }

    /// Reads and writes one socket until it ends; returns how it ended.
    async fn run_socket(&mut self, ws: WsStream, conn: &mut Connection) -> CloseInfo {
        let (mut sink, mut stream) = ws.split();
        let mut deadline: Option<Pin<Box<Sleep>>> = None;
        let mut closing = false;
        let mut received: Option<CloseInfo> = None;
        let idle_timeout = self.config.idle_timeout;
        let mut idle: Option<Pin<Box<Sleep>>> =
            idle_timeout.map(|timeout| Box::pin(tokio::time::sleep(timeout)));
        let end = loop {
            tokio::select! {
                _ = self.stop.cancelled(), if !closing => {
                    closing = true;
                    let (code, reason) = self
                        .shared
                        .lock()
                        .close_request
                        .take()
                        .unwrap_or((1000, String::new()));
                    debug!("rooms client closing with {code}");
                    // What the app queued before its close goes out before the close frame.
                    self.pump(Some(&mut sink)).await;
                    self.set_state(ConnectionState::Closed).await;
                    deadline = Some(Box::pin(tokio::time::sleep(self.config.close_timeout)));
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    if let Err(err) = sink.send(Message::Close(Some(frame))).await {
                        debug!("rooms client close frame not sent: {err}");
                    }
                }
                _ = wait(&mut deadline) => {
                    break received.unwrap_or_else(|| CloseInfo::abnormal("close timeout"));
                }
                _ = self.shared.queued.notified(), if !closing => {
                    self.pump(Some(&mut sink)).await;
                }
                _ = wait(&mut idle), if !closing => {
                    debug!("rooms client: no frame for {idle_timeout:?}: the connection is dropped");
                    break CloseInfo::abnormal("idle timeout");
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        rearm(&mut idle, idle_timeout);
                        if !closing {
                            self.on_frame(&text, conn, &mut sink).await;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        received = Some(socket::close_info(frame));
                        if deadline.is_none() {
                            deadline = Some(Box::pin(tokio::time::sleep(self.config.close_timeout)));
                        }
                        closing = true;
                    }
                    Some(Ok(_)) => rearm(&mut idle, idle_timeout),
                    Some(Err(err)) => {
                        break received.unwrap_or_else(|| CloseInfo::abnormal(err.to_string()));
                    }
                    None => break received.unwrap_or_else(|| CloseInfo::abnormal("")),
                }
            }
        };
        {
            // Frames queued for this connection are void: the core sends again what needs it.
            let mut inner = self.shared.lock();
            inner.outgoing.clear();
            let outputs = inner.core.on_connection_lost();
            inner.apply(outputs);
        }
        self.pump(None).await;
        end
    }

    /// One text frame from the server.
    async fn on_frame(&mut self, text: &str, conn: &mut Connection, sink: &mut Sink) {
        let frame = parse_rooms_frame(text);
        match &frame {
            RoomsFrame::GoingAway { reconnect_after } => {
                conn.going_away = Some(*reconnect_after);
                self.pump(Some(sink)).await;
                let reconnect_after = *reconnect_after;
                self.emit(RoomEvent::GoingAway { reconnect_after }).await;
                return;
            }
            RoomsFrame::Hello { name } if !conn.welcomed => {
                conn.welcomed = true;
                self.attempt = 0;
                self.asked_token_after_401 = false;
                if is_valid_name(name) {
                    self.hello_name = Some(name.clone());
                }
                self.shared.lock().name.clone_from(&self.hello_name);
                info!("rooms client connected as {name}");
                // The app's earlier events first, then the state, then the rooms' joins.
                self.pump(Some(sink)).await;
                self.set_state(ConnectionState::Open).await;
            }
            _ => {}
        }
        {
            let mut inner = self.shared.lock();
            let outputs = inner.core.on_frame(frame, fastrand::f64());
            inner.apply(outputs);
        }
        self.pump(Some(sink)).await;
    }

    /// Carries out what is queued: writes the frames (when a socket is given; else they are
    /// void), starts the timers, hands the events to the app.
    async fn pump(&mut self, sink: Option<&mut Sink>) {
        let (frames, timers, events) = {
            let mut inner = self.shared.lock();
            let frames: Vec<String> = inner.outgoing.drain(..).collect();
            let timers: Vec<(Duration, Timer)> = inner.timers.drain(..).collect();
            let events: Vec<RoomEvent> = inner.events.drain(..).collect();
            (frames, timers, events)
        };
        if let Some(sink) = sink {
            if !frames.is_empty() {
                for frame in frames {
                    if let Err(err) = sink.feed(Message::Text(frame)).await {
                        // The read side reports how the connection ended.
                        debug!("rooms client send failed: {err}");
                        break;
                    }
                }
                if let Err(err) = sink.flush().await {
                    debug!("rooms client flush failed: {err}");
                }
            }
        }
        for (after, timer) in timers {
            self.start_timer(after, timer);
        }
        for event in events {
            self.emit(event).await;
        }
    }

    /// After `after`, the core's retry; ends with the client.
    fn start_timer(&self, after: Duration, timer: Timer) {
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    {
                        let mut inner = shared.lock();
                        let outputs = match &timer {
                            Timer::Join { room, attempt } => inner.core.retry_join(room, *attempt),
                            Timer::Publish { id, attempt } => inner.core.retry_publish(id, *attempt),
                        };
                        inner.apply(outputs);
                    }
                    shared.queued.notify_one();
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// The end of one socket (or of an attempt): decide, report, and say what comes next.
    async fn after_close(&mut self, close: CloseInfo, conn: &Connection) -> Flow {
        let next = next_step(
            &close,
            &StepContext {
                app_closed: self.stop.is_cancelled(),
                going_away: conn.going_away,
                welcomed: conn.welcomed,
                attempt: self.attempt,
                can_refresh_token: self.config.token_hook.is_some(),
                asked_token_after_401: self.asked_token_after_401,
                backoff: self.config.backoff,
                random: fastrand::f64(),
            },
        );
        if let Step::Reconnect {
            why: ReconnectReason::Unauthorized,
            ..
        } = next
        {
            self.asked_token_after_401 = true;
            self.token_for_401 = true;
        }
        debug!(
            "rooms client connection ended: {} {:?} (opened {}): {next}",
            close.code, close.reason, conn.opened
        );
        match next {
            Step::Reconnect { attempt, .. } => {
                self.attempt = attempt;
                self.set_state(ConnectionState::Reconnecting).await;
            }
            Step::Stop(_) => self.set_state(ConnectionState::Closed).await,
        }
        self.emit(RoomEvent::Closed {
            code: close.code,
            reason: close.reason,
            clean: close.clean,
            opened: conn.opened,
            welcomed: conn.welcomed,
            next,
        })
        .await;
        match next {
            Step::Reconnect {
                delay, fresh_token, ..
            } => Flow::Retry {
                delay,
                fresh_token: fresh_token || self.config.token_hook.is_some(),
            },
            Step::Stop(_) => Flow::Stop,
        }
    }

    async fn set_state(&mut self, state: ConnectionState) {
        if state == self.state {
            return;
        }
        {
            let mut inner = self.shared.lock();
            // After the app's close only Closed may follow.
            if inner.app_closed && state != ConnectionState::Closed {
                return;
            }
            inner.state = state;
        }
        self.state = state;
        self.emit(RoomEvent::State(state)).await;
    }

    /// Hands an event to the app; waits while its queue is full, unless the app closed (then
    /// an event that does not fit is dropped: the app may no longer be reading).
    async fn emit(&mut self, event: RoomEvent) {
        if self.stop.is_cancelled() {
            let _ = self.events.try_send(event);
            return;
        }
        tokio::select! {
            _ = self.events.send(event) => {}
            _ = self.stop.cancelled() => {}
        }
    }
}
