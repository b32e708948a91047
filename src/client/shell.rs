//! The tokio shell of the client: [`Client`], the app's handle, and the task it spawns,
//! which owns the socket (tokio-tungstenite) and the timers (the reconnect delay, the
//! connect, close and idle timeouts). The task hands each frame and the end of each socket to
//! the pure core (`wire.rs` parses, `seq_tracker.rs` decides what the app gets, `policy.rs`
//! decides whether and when to reconnect) and carries out what it answers: an event for the
//! app, a frame to write, a sleep, a new connection or the stop.
//!
//! It must not decide what the core decides (no close code, delay or seq rule here), queue
//! the app's messages while disconnected, print anything, or log the token.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use log::{debug, info};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

// The one import from the rest of the crate. `config` is on the ground floor (no actix, no
// sockets; it imports only the pure `close`), and this is the rule the server applies to
// `?room=` and `?name=`: a welcome name that fails it would be refused on the reconnect.
use crate::config::is_valid_name;

use super::policy::{backoff_delay, next_step, CloseInfo, ReconnectReason, Step, StepContext};
use super::seq_tracker::{SeqTracker, WelcomeOutcome};
use super::socket::{self, rearm, wait, Dial, WsStream};
use super::wire::{build_url, parse_frame, Frame, Resume};
use super::{check_close, ClientConfig, ClientError, ClientEvent, ConnectionState};

/// Events the app has not read yet; past this the task stops reading the socket (and the
/// server's slow-consumer rule applies).
const EVENT_QUEUE: usize = 1024;
/// Messages handed to [`Client::send`] and not yet written; past this `send` answers false.
const SEND_QUEUE: usize = 1024;

/// What the app's calls and the task share.
struct Inner {
    state: ConnectionState,
    app_closed: bool,
    close_request: Option<(u16, String)>,
    /// The open connection's writer, while one is open.
    outbound: Option<mpsc::Sender<String>>,
    epoch: Option<String>,
    last_seq: Option<u64>,
    name: Option<String>,
}

struct Shared(Mutex<Inner>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A reconnecting, resuming connection to one room. Dropping it closes with 1000.
pub struct Client {
    events: mpsc::Receiver<ClientEvent>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    done: CancellationToken,
    room: Option<String>,
    close_timeout: Duration,
}

impl Client {
    /// Starts the client: a task on the current Tokio runtime connects at once and keeps
    /// the connection up by the policy in the [module docs](crate::client). Fails only on a
    /// URL that cannot be used or outside a runtime; connection failures are events.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        build_url(
            &config.url,
            config.room.as_deref(),
            config.name.as_deref(),
            None,
            None,
        )?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared(Mutex::new(Inner {
            state: ConnectionState::Connecting,
            app_closed: false,
            close_request: None,
            outbound: None,
            epoch: config
                .resume
                .as_ref()
                .and_then(|resume| resume.epoch.clone()),
            last_seq: config.resume.as_ref().map(|resume| resume.since),
            name: None,
        })));
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let room = config.room.clone();
        let close_timeout = config.close_timeout;
        let tracker = config
            .resume
            .as_ref()
            .map_or_else(SeqTracker::new, SeqTracker::resuming);
        let driver = Driver {
            config,
            tracker,
            attempt: 0,
            asked_token_after_401: false,
            token_for_401: false,
            welcome_name: None,
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
        Ok(Client {
            events,
            shared,
            stop,
            done,
            room,
            close_timeout,
        })
    }

    /// The next event; `None` once the client has stopped and every event was read.
    /// Events wait for the app in a queue of 1024; while it is full the client stops reading
    /// the socket (so a server's slow-consumer rule, not this process's memory, bounds an app
    /// that does not read). After [`close`](Self::close), events that do not fit are dropped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Hands `text` to the open connection: true if it was taken, false when the client is
    /// not open (nothing is queued while disconnected: the app decides what to do) or its
    /// send queue (1024 messages not yet written) is full. A message taken here may still be lost if the connection drops
    /// before the server has it; its receipt is the room's copy, with a seq.
    pub fn send(&self, text: impl Into<String>) -> bool {
        let inner = self.shared.lock();
        if inner.app_closed || inner.state != ConnectionState::Open {
            return false;
        }
        match &inner.outbound {
            Some(outbound) => outbound.try_send(text.into()).is_ok(),
            None => false,
        }
    }

    /// Stops for good: state Closed at once, no reconnect. An open connection is closed
    /// with `code` and `reason`, and this waits for the server's close frame (up to
    /// [`ClientConfig::close_timeout`]); the socket's end is still reported as
    /// [`ClientEvent::Closed`]. A code the client may not send or a reason over 123 bytes is
    /// an error and nothing happens. Calling it again waits for the same end.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        check_close(code, reason)?;
        {
            let mut inner = self.shared.lock();
            if !inner.app_closed {
                inner.app_closed = true;
                inner.close_request = Some((code, reason.to_owned()));
                inner.state = ConnectionState::Closed;
                inner.outbound = None;
            }
        }
        self.stop.cancel();
        // The task's own wait is bounded by close_timeout; this bound is a backstop.
        let bound = self.close_timeout.saturating_add(Duration::from_secs(1));
        tokio::time::timeout(bound, self.done.cancelled())
            .await
            .map_err(|_| ClientError::CloseTimeout(bound))
    }

    pub fn state(&self) -> ConnectionState {
        self.shared.lock().state
    }

    /// The room asked for (`None`: the server's default).
    pub fn room(&self) -> Option<&str> {
        self.room.as_deref()
    }

    /// The name of the last welcome.
    pub fn name(&self) -> Option<String> {
        self.shared.lock().name.clone()
    }

    /// The epoch [`last_seq`](Self::last_seq) belongs to.
    pub fn epoch(&self) -> Option<String> {
        self.shared.lock().epoch.clone()
    }

    /// The last seq handed to the app, or the welcome's seq if later.
    pub fn last_seq(&self) -> Option<u64> {
        self.shared.lock().last_seq
    }

    /// Where a new client goes on from this one ([`ClientConfig::resume`]): after the last
    /// message handed to the app (or the config's own `resume` before any); also after this
    /// client stopped. `None` before the first welcome of a client that did not resume.
    pub fn resume_point(&self) -> Option<Resume> {
        let inner = self.shared.lock();
        inner.last_seq.map(|since| Resume {
            since,
            epoch: inner.epoch.clone(),
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.app_closed = true;
            inner.outbound = None;
        }
        self.stop.cancel();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.room)
            .field("state", &self.state())
            .finish()
    }
}

/// What the task knows of the current socket.
#[derive(Debug, Default)]
struct Connection {
    asked_resume: bool,
    opened: bool,
    welcomed: bool,
    going_away: Option<Duration>,
}

/// What to do after an attempt.
enum Flow {
    Stop,
    Retry { delay: Duration, fresh_token: bool },
}

/// The task: carries out what the core decides.
struct Driver {
    config: ClientConfig,
    tracker: SeqTracker,
    attempt: u32,
    /// An HTTP 401 made this client ask the token hook since the last welcome.
    asked_token_after_401: bool,
    /// The next call of the token hook answers an HTTP 401: no token then stops.
    token_for_401: bool,
    welcome_name: Option<String>,
    state: ConnectionState,
    events: mpsc::Sender<ClientEvent>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        self.emit(ClientEvent::State(ConnectionState::Connecting))
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
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
            }
        }
        self.set_state(ConnectionState::Closed).await;
        debug!("client for room {:?} stopped", self.config.room);
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
        let resume = self.tracker.resume_params();
        let name = self.config.name.as_deref().or(self.welcome_name.as_deref());
        let url = match build_url(
            &self.config.url,
            self.config.room.as_deref(),
            name,
            self.config.token.as_deref(),
            resume.as_ref(),
        ) {
            Ok(url) => url,
            Err(err) => return self.cannot_connect(err.to_string()).await,
        };
        debug!(
            "client connecting to {} room {:?} (resume {resume:?})",
            self.config.url, self.config.room
        );
        let mut conn = Connection {
            asked_resume: resume.is_some(),
            ..Connection::default()
        };
        let request = match socket::request(&url, None) {
            Ok(request) => request,
            Err(err) => return self.cannot_connect(err).await,
        };
        let dialed = tokio::select! {
            dialed = socket::dial(request, self.config.connect_timeout) => dialed,
            _ = self.stop.cancelled() => return Flow::Stop,
        };
        let close = match dialed {
            Dial::Failed(close) => close,
            Dial::Unusable(err) => return self.cannot_connect(err).await,
            Dial::Opened(ws, _) => {
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
                self.emit(ClientEvent::Error {
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
                self.emit(ClientEvent::Error {
                    code: "token".to_owned(),
                    text: err.to_string(),
                })
                .await;
                // No socket was opened: a failed attempt, tried again later.
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

    /// A URL that will not get better by retrying: `Error {code: "connect"}`, stop.
    async fn cannot_connect(&mut self, text: String) -> Flow {
        self.emit(ClientEvent::Error {
            code: "connect".to_owned(),
            text,
        })
        .await;
        Flow::Stop
    }

    /// Reads and writes one socket until it ends; returns how it ended.
    async fn run_socket(&mut self, ws: WsStream, conn: &mut Connection) -> CloseInfo {
        let (outbound_tx, mut outbound) = mpsc::channel::<String>(SEND_QUEUE);
        {
            let mut inner = self.shared.lock();
            if !inner.app_closed {
                inner.outbound = Some(outbound_tx);
            }
        }
        let (mut sink, mut stream) = ws.split();
        // Set once we sent our close frame or received the server's: the bound on the rest.
        let mut deadline: Option<Pin<Box<Sleep>>> = None;
        let mut closing = false;
        let mut received: Option<CloseInfo> = None;
        // No frame at all (the server's pings included) for this long: the server is gone.
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
                    debug!("client closing with {code}");
                    self.set_state(ConnectionState::Closed).await;
                    deadline = Some(Box::pin(tokio::time::sleep(self.config.close_timeout)));
                    // What the app handed over before its close goes out before the close
                    // frame, as a browser's send-then-close does.
                    while let Ok(text) = outbound.try_recv() {
                        if let Err(err) = sink.feed(Message::Text(text)).await {
                            debug!("client send failed: {err}");
                            break;
                        }
                    }
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    if let Err(err) = sink.send(Message::Close(Some(frame))).await {
                        debug!("client close frame not sent: {err}");
                    }
                }
                _ = wait(&mut deadline) => {
                    break received.unwrap_or_else(|| CloseInfo::abnormal("close timeout"));
                }
                text = outbound.recv(), if !closing => {
                    if let Some(text) = text {
                        if let Err(err) = sink.send(Message::Text(text)).await {
                            // The read side reports how the connection ended.
                            debug!("client send failed: {err}");
                        }
                    }
                }
                _ = wait(&mut idle), if !closing => {
                    debug!("client: no frame for {idle_timeout:?}: the connection is dropped");
                    break CloseInfo::abnormal("idle timeout");
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        rearm(&mut idle, idle_timeout);
                        self.on_frame(&text, conn).await;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        received = Some(socket::close_info(frame));
                        // Closing: nothing more is taken from the app (a browser's socket
                        // refuses sends once it is CLOSING, too).
                        self.shared.lock().outbound = None;
                        // tungstenite answers on the next read; the server then ends the TCP
                        // connection, which ends this loop.
                        if deadline.is_none() {
                            deadline = Some(Box::pin(tokio::time::sleep(self.config.close_timeout)));
                        }
                        closing = true;
                    }
                    // Pings are answered by tungstenite; binary frames are not ours.
                    Some(Ok(_)) => rearm(&mut idle, idle_timeout),
                    Some(Err(err)) => {
                        break received.unwrap_or_else(|| CloseInfo::abnormal(err.to_string()));
                    }
                    None => break received.unwrap_or_else(|| CloseInfo::abnormal("")),
                }
            }
        };
        self.shared.lock().outbound = None;
        end
    }

    /// One text frame from the server.
    async fn on_frame(&mut self, text: &str, conn: &mut Connection) {
        match parse_frame(text) {
            Frame::Welcome(welcome) => {
                if conn.welcomed {
                    return; // once per connection
                }
                conn.welcomed = true;
                self.attempt = 0;
                self.asked_token_after_401 = false;
                if is_valid_name(&welcome.name) {
                    self.welcome_name = Some(welcome.name.clone());
                }
                let outcome = self.tracker.on_welcome(&welcome, conn.asked_resume);
                self.publish_position();
                info!(
                    "client joined room {} as {} at {:?}:{:?} ({outcome:?})",
                    welcome.room, welcome.name, welcome.epoch, welcome.seq
                );
                self.set_state(ConnectionState::Open).await;
                self.emit(ClientEvent::Welcome(welcome)).await;
                match outcome {
                    WelcomeOutcome::Resumed { missed } => {
                        self.emit(ClientEvent::Resumed { missed }).await
                    }
                    WelcomeOutcome::Gap {
                        previous_epoch,
                        previous_seq,
                        epoch,
                        seq,
                    } => {
                        self.emit(ClientEvent::Gap {
                            previous_epoch,
                            previous_seq,
                            epoch,
                            seq,
                        })
                        .await
                    }
                    WelcomeOutcome::Fresh | WelcomeOutcome::NotResumed => {}
                }
            }
            Frame::Message {
                room,
                from,
                text,
                seq,
                ts,
            } => {
                if let (true, Some(seq)) = (self.tracker.on_message(seq), seq) {
                    self.publish_position();
                    self.emit(ClientEvent::Message {
                        room,
                        from,
                        text,
                        seq,
                        ts,
                    })
                    .await;
                }
            }
            Frame::Epoch { room, epoch, seq } => {
                self.tracker.on_epoch(epoch.clone(), seq);
                self.publish_position();
                self.emit(ClientEvent::Epoch { room, epoch, seq }).await;
            }
            Frame::GoingAway { reconnect_after } => {
                conn.going_away = Some(reconnect_after);
                self.emit(ClientEvent::GoingAway { reconnect_after }).await;
            }
            Frame::Error { code, text } => self.emit(ClientEvent::Error { code, text }).await,
            Frame::Ignored => {}
        }
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
            "client connection ended: {} {:?} (opened {}): {next}",
            close.code, close.reason, conn.opened
        );
        match next {
            Step::Reconnect { attempt, .. } => {
                self.attempt = attempt;
                self.set_state(ConnectionState::Reconnecting).await;
            }
            Step::Stop(_) => self.set_state(ConnectionState::Closed).await,
        }
        self.emit(ClientEvent::Closed {
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

    /// Copies the tracker's position and the name for the accessors.
    fn publish_position(&self) {
        let mut inner = self.shared.lock();
        inner.epoch = self.tracker.epoch().map(str::to_owned);
        inner.last_seq = self.tracker.last_seq();
        inner.name.clone_from(&self.welcome_name);
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
        self.emit(ClientEvent::State(state)).await;
    }

    /// Hands an event to the app; waits while its queue is full, unless the app closed (then
    /// an event that does not fit is dropped: the app may no longer be reading).
    async fn emit(&mut self, event: ClientEvent) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_server() {
        for (name, valid) in [
            ("ann", true),
            ("a-b_c.d9", true),
            ("", false),
            ("a b", false),
            ("é", false),
            (&"x".repeat(64), true),
            (&"x".repeat(65), false),
        ] {
            assert_eq!(is_valid_name(name), valid, "{name:?}");
        }
    }
}
