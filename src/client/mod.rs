//! The Rust client of a wsgrace chat server: one logical connection to one room that
//! survives the server going away. It reconnects with jittered backoff, honours
//! `going_away`, resumes with `since`/`epoch`, and hands the app each chat message once and
//! in seq order — the same policy as the browser module `/wsgrace.js` (`web/wsgrace.js`).
//!
//! What it owns: the WebSocket (tokio-tungstenite), the reconnect timer, the remembered
//! epoch and last seq. What it must not touch: the server side of this crate (no actix; of
//! the other modules it imports only the name rule of the ground-floor `config`, so that a
//! name is checked as the server checks it: it speaks only the wire protocol of the SPEC).
//! What it must not do: queue the app's messages while disconnected, guess past what the
//! server said, print anything (it logs with `log`), or log the token (only the base URL is
//! logged; tungstenite's own `trace` level prints the whole upgrade request, `?token=`
//! included, so keep `tungstenite=trace` off where tokens matter).
//!
//! Shape, as in `wsgrace.js`: a pure core — [`backoff_delay`], [`next_step`],
//! [`SeqTracker`], [`build_url`], [`parse_frame`] — unit-tested below without a socket, and a
//! thin shell — [`Client`] — whose task owns the socket and the timers and only carries out
//! what the core decides.
//!
//! ## Reconnect policy (decided by [`next_step`] for the end of each underlying socket)
//!
//! The table is the one in the header of `web/wsgrace.js`:
//!
//! | how the connection ended                          | what the client does                 |
//! |---------------------------------------------------|--------------------------------------|
//! | the app called [`Client::close`] (or dropped it)  | stop (state Closed)                  |
//! | a `going_away` came before the close, any code    | reconnect after its `reconnect_after_ms` (3000 without a token hook: stop) |
//! | 1006: network drop, server gone, or the upgrade refused (HTTP 401/403/429/503; the status is in the `Closed` event's reason) | reconnect after backoff |
//! | 1001, 1005 (no status), 1011, 1012, 1013, 1014    | reconnect after backoff              |
//! | 3000 token expired                                | token hook, reconnect after `random(0, base)`; stop without a hook |
//! | the token hook fails (no socket was opened)       | `Error {code: "token"}`, retry after backoff |
//! | 1000 normal closure                               | stop                                 |
//! | 1002, 1003, 1007, 1008 (rate limit, slow consumer), 1009, 1010 | stop: the server refused what this client sends; a retry would repeat it |
//! | 1015, 3001–4999, any other code                   | stop                                 |
//!
//! The token hook, when given, is called before every reconnect (and before the first connect
//! when no token is given), so a token that expired during a long outage is replaced too.
//!
//! Backoff: full jitter, `delay = random(0, min(cap, base · 2^attempt))`, base 500 ms, cap
//! 10 s; `attempt` counts reconnects since the last welcome, which resets it; no limit on
//! the number of retries.
//!
//! Resume: every reconnect asks `since` = the last seq handed to the app (or the welcome's
//! seq if later) and `epoch` = the epoch that seq belongs to. A `message` whose seq is not
//! above the last one delivered is dropped. A welcome with `resumed: false` after a resume
//! was asked gives [`ClientEvent::Gap`] (unless it proves nothing was missed). An `epoch`
//! frame resets the remembered epoch and seq.
//!
//! ## Usage
//!
//! ```no_run
//! use wsgrace::client::{Client, ClientConfig, ClientEvent, ConnectionState};
//!
//! # async fn chat() -> Result<(), wsgrace::client::ClientError> {
//! let mut config = ClientConfig::new("ws://127.0.0.1:8080/ws");
//! config.room = Some("lobby".into());
//! config.name = Some("ann".into());
//! let mut client = Client::connect(config)?;
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         ClientEvent::State(ConnectionState::Open) => {
//!             client.send("hello"); // false when not open: nothing is queued
//!         }
//!         ClientEvent::Message { from, text, seq, .. } => log::info!("#{seq} {from}: {text}"),
//!         ClientEvent::Gap { previous_seq, seq, .. } => {
//!             log::warn!("messages after {previous_seq} up to {seq:?} may be lost")
//!         }
//!         _ => {}
//!     }
//!     # break;
//! }
//! client.close(1000, "bye").await?; // stop for good; waits for the close handshake
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use log::{debug, info};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

// The one import from the rest of the crate. `config` is on the ground floor (no actix, no
// sockets; it imports only the pure `close`), and this is the rule the server applies to
// `?room=` and `?name=`: a welcome name that fails it would be refused on the reconnect.
use crate::config::is_valid_name;

mod policy;
mod seq_tracker;
mod wire;

pub use policy::{
    backoff_delay, next_step, Backoff, CloseInfo, ReconnectReason, Step, StepContext, StopReason,
    REFUSED_CODES, RETRY_CODES, TOKEN_EXPIRED,
};
pub use seq_tracker::{SeqTracker, WelcomeOutcome};
pub use wire::{build_url, parse_frame, Frame, Resume, UrlError, Welcome};

// ---------------------------------------------------------------------------------------
// Pure core
// ---------------------------------------------------------------------------------------

/// The largest close reason, in bytes (RFC 6455: a control frame carries at most 125).
pub const MAX_CLOSE_REASON: usize = 123;

/// Checks an app's close request: a code the client may send (1000–1003, 1007–1014,
/// 3000–4999) and a reason of at most 123 bytes.
pub fn check_close(code: u16, reason: &str) -> Result<(), ClientError> {
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Err(ClientError::InvalidCloseCode(code));
    }
    if reason.len() > MAX_CLOSE_REASON {
        return Err(ClientError::ReasonTooLong(reason.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shell: the task that owns the socket and the timers
// ---------------------------------------------------------------------------------------

/// What the client's calls can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bad url: {0}")]
    BadUrl(#[from] UrlError),
    #[error("Client::connect must be called inside a Tokio runtime")]
    NoRuntime,
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    #[error("close reason is {0} bytes, more than 123")]
    ReasonTooLong(usize),
    #[error("the close handshake did not finish within {0:?}")]
    CloseTimeout(Duration),
}

/// What a token hook may fail with; the client reports it as `Error {code: "token"}`.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;
/// A token hook: called before every reconnect (and before the first connect when
/// [`ClientConfig::token`] is `None`); its token replaces the old one.
pub type TokenHook = Box<dyn FnMut() -> BoxFuture<'static, Result<String, TokenError>> + Send>;

/// How to reach the room and how to behave.
pub struct ClientConfig {
    /// WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws` (http(s) becomes ws(s)).
    pub url: String,
    /// Room name; `None`: the server's default (`lobby`).
    pub room: Option<String>,
    /// Nickname; `None`: the server picks one, and reconnects keep that one.
    pub name: Option<String>,
    /// JWT for `?token=`.
    pub token: Option<String>,
    /// Required to survive close 3000 ("token expired").
    pub token_hook: Option<TokenHook>,
    pub backoff: Backoff,
    /// An upgrade that takes longer counts as a failed attempt (1006). Default 10 s.
    pub connect_timeout: Duration,
    /// How long [`Client::close`] waits for the server's close frame. Default 5 s.
    pub close_timeout: Duration,
    /// No frame at all from the server for this long (its pings included) ends the
    /// connection as 1006, which the policy retries: how a server that vanished without a
    /// TCP reset is noticed. Set it well above the server's `session.heartbeat_interval_ms`
    /// (e.g. three times). Default `None`: no timeout, like the browser module.
    pub idle_timeout: Option<Duration>,
    /// Where to resume from on the first connection: another client's
    /// [`Client::resume_point`], to go on after it stopped (a 1008, the app's own close)
    /// without losing or repeating a message. Default `None`: start at the room's present.
    pub resume: Option<Resume>,
}

impl ClientConfig {
    /// Defaults for `url`: no room, name or token; the default backoff.
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            room: None,
            name: None,
            token: None,
            token_hook: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            idle_timeout: None,
            resume: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is never shown.
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("room", &self.room)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("token_hook", &self.token_hook.is_some())
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("resume", &self.resume)
            .finish()
    }
}

/// The client's state: Connecting (the first attempt) → Open (welcome received) →
/// Reconnecting (dropped; until the next welcome) → Closed (no more reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Open,
    Reconnecting,
    Closed,
}

/// What the client tells the app, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A new state (the first event is `State(Connecting)`).
    State(ConnectionState),
    /// Once per connection, first.
    Welcome(Welcome),
    /// A chat message: each seq once, in increasing order (per epoch).
    Message {
        room: String,
        from: String,
        text: String,
        seq: u64,
    },
    /// A resume succeeded; `missed` messages are replayed next.
    Resumed { missed: u64 },
    /// A resume was refused: messages after `previous_seq` may be lost; delivery continues
    /// after `seq`.
    Gap {
        previous_epoch: Option<String>,
        previous_seq: u64,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    /// The room's history was reset; seqs continue from `seq + 1`.
    Epoch {
        room: String,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    /// The server is about to close this connection; the client reconnects after this.
    GoingAway { reconnect_after: Duration },
    /// The server refused a message of ours (e.g. `unavailable`); or from the client itself:
    /// `token` (the hook failed: retried after backoff), `connect` (the URL cannot be
    /// connected to: state Closed).
    Error { code: String, text: String },
    /// An underlying socket ended, or an attempt to open one failed (`opened: false`);
    /// `next` is the decision.
    Closed {
        code: u16,
        reason: String,
        clean: bool,
        opened: bool,
        welcomed: bool,
        next: Step,
    },
}

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
    /// the connection up by the policy in the module docs. Fails only on a URL that cannot
    /// be used or outside a runtime; connection failures are events.
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

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The task: carries out what the core decides.
struct Driver {
    config: ClientConfig,
    tracker: SeqTracker,
    attempt: u32,
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
        let connecting = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async(url),
        );
        let connected = tokio::select! {
            connected = connecting => connected,
            _ = self.stop.cancelled() => return Flow::Stop,
        };
        let close = match connected {
            Err(_) => CloseInfo::abnormal("connect timeout"),
            Ok(Err(WsError::Url(err))) => return self.cannot_connect(err.to_string()).await,
            Ok(Err(WsError::Http(response))) => {
                CloseInfo::abnormal(format!("HTTP {}", response.status().as_u16()))
            }
            Ok(Err(err)) => CloseInfo::abnormal(err.to_string()),
            Ok(Ok((ws, _))) => {
                conn.opened = true;
                self.run_socket(ws, &mut conn).await
            }
        };
        self.after_close(close, &conn).await
    }

    /// Calls the token hook; `Some(flow)` when it failed (or the app closed meanwhile).
    async fn refresh_token(&mut self) -> Option<Flow> {
        let hook = self.config.token_hook.as_mut()?;
        let fetched = tokio::select! {
            fetched = hook() => fetched,
            _ = self.stop.cancelled() => return Some(Flow::Stop),
        };
        match fetched {
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
                        let close = match frame {
                            Some(frame) => CloseInfo {
                                code: u16::from(frame.code),
                                reason: frame.reason.into_owned(),
                                clean: true,
                            },
                            None => CloseInfo { code: 1005, reason: String::new(), clean: true },
                        };
                        received = Some(close);
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
            } => {
                if let (true, Some(seq)) = (self.tracker.on_message(seq), seq) {
                    self.publish_position();
                    self.emit(ClientEvent::Message {
                        room,
                        from,
                        text,
                        seq,
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
                backoff: self.config.backoff,
                random: fastrand::f64(),
            },
        );
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

/// Pushes the idle deadline `timeout` into the future (a frame came).
fn rearm(idle: &mut Option<Pin<Box<Sleep>>>, timeout: Option<Duration>) {
    let at = timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
    if let (Some(sleep), Some(at)) = (idle.as_mut(), at) {
        sleep.as_mut().reset(at);
    }
}

/// Waits for the deadline if there is one, forever otherwise.
async fn wait(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_close_allows_only_sendable_codes_and_short_reasons() {
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
            assert!(check_close(code, "").is_ok(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(
                matches!(check_close(code, ""), Err(ClientError::InvalidCloseCode(c)) if c == code),
                "{code}"
            );
        }
        assert!(check_close(1000, &"x".repeat(123)).is_ok());
        assert!(matches!(
            check_close(1000, &"x".repeat(124)),
            Err(ClientError::ReasonTooLong(124))
        ));
    }

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
