//! The Rust client of a wsgrace chat server, in two shapes that survive the server going
//! away alike: [`Client`], one logical connection to one room (the one-room protocol, v1),
//! and [`RoomsClient`], one logical connection that carries many rooms (the subprotocol
//! `wsgrace.v2`). Both reconnect with jittered backoff, honour `going_away`, resume with
//! `since`/`epoch` (v2: every room with its own), and hand the app each chat message once
//! and in seq order — the same policy as the browser module `/wsgrace.js`
//! (`web/wsgrace.js`).
//!
//! What it owns: the WebSocket (tokio-tungstenite), the reconnect timer, the remembered
//! epoch and last seq (per room), and for v2 the publishes not yet confirmed. What it must
//! not touch: the server side of this crate (no actix; of the other modules it imports only
//! the name rule of the ground-floor `config`, so that a name is checked as the server checks
//! it: it speaks only the wire protocol of the SPEC). What it must not do: queue a v1 app's
//! messages while disconnected (a v2 publish waits in the outbox, bounded, because it carries
//! an `id` that makes a resend safe), guess past what the server said, print anything (it
//! logs with `log`), or log the token (only the base URL is logged; tungstenite's own `trace`
//! level prints the whole upgrade request, `?token=` included, so keep `tungstenite=trace`
//! off where tokens matter).
//!
//! Shape, as in `wsgrace.js`: a pure core, unit-tested without a socket — `policy.rs`
//! ([`backoff_delay`], [`next_step`]), `seq_tracker.rs` ([`SeqTracker`]), `wire.rs`
//! ([`build_url`], [`parse_frame`]), and for v2 `wire_v2.rs` ([`parse_rooms_frame`],
//! [`ClientFrame`]), `room_set.rs` ([`RoomSet`]), `outbox.rs` ([`Outbox`]) and
//! `rooms_core.rs` ([`RoomsCore`], which ties them) — and thin shells, `shell.rs`
//! ([`Client`]) and `rooms_shell.rs` ([`RoomsClient`]), whose tasks own the socket and the
//! timers (with `socket.rs`, what both do with a socket) and only carry out what the core
//! decides. This file holds the public types they share (config, events, states, errors,
//! the check of the app's close request; `rooms.rs` has the v2 app's types) and re-exports
//! the rest, so that every item is `wsgrace::client::X`; it does no I/O and decides nothing
//! about reconnecting.
//!
//! ## Reconnect policy (decided by [`next_step`] for the end of each underlying socket; the same for both clients)
//!
//! The table is the one in the header of `web/wsgrace.js`, plus the rows for a refused
//! upgrade, whose HTTP status a browser cannot read (the browser module asks the server with a
//! plain `GET`; this client reads the status of the answer, and the first line of its body):
//!
//! | how the connection ended                          | what the client does                 |
//! |---------------------------------------------------|--------------------------------------|
//! | the app called [`Client::close`] (or dropped it)  | stop (state Closed)                  |
//! | a `going_away` came before the close, any code    | reconnect after its `reconnect_after_ms` (3000 without a token hook: stop) |
//! | the upgrade refused with HTTP 400 (bad name, room or query) or 403 (room not granted) | stop, with the status and the server's one-line reason in the `Closed` event's reason |
//! | the upgrade refused with HTTP 401                 | the token hook once since the last welcome, reconnect at once; stop without a hook, when the hook gives an empty token (`Error {code: "token"}`), or on another 401 |
//! | the upgrade refused with HTTP 429, 503 or another status | reconnect after backoff        |
//! | 1006: network drop, server gone, connect timeout  | reconnect after backoff              |
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
//! 10 s; `attempt` counts reconnects since the last welcome (v2: hello), which resets it; no
//! limit on the number of retries.
//!
//! Resume: every reconnect asks `since` = the last seq handed to the app (or the welcome's
//! seq if later) and `epoch` = the epoch that seq belongs to. A `message` whose seq is not
//! above the last one delivered is dropped. A welcome with `resumed: false` after a resume
//! was asked gives [`ClientEvent::Gap`] (unless it proves nothing was missed). An `epoch`
//! frame resets the remembered epoch and seq. (v2: the same per room, with the `since` and
//! `epoch` of each room's `join` frame and its `joined` answer.)
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
//!
//! ## Many rooms over one connection (`wsgrace.v2`)
//!
//! [`RoomsClient::connect`] takes the same [`ClientConfig`] without `room` and `resume`. It
//! connects to `url?name=N` (and `&token=T`) offering the subprotocol `wsgrace.v2`, and stops
//! with `Error {code: "connect"}` if the server does not choose it (a server without v2).
//!
//! - Rooms: [`join`](RoomsClient::join) and [`leave`](RoomsClient::leave) at any time; while
//!   disconnected they wait for the next connection. After every hello the client joins each
//!   of its rooms again with that room's own last seq and epoch (`since`/`epoch`); each room
//!   resumes on its own ([`RoomEvent::Joined`] with `resumed`), and a refused resume is that
//!   room's [`RoomEvent::Gap`]. Each room's messages reach the app once and in seq order; a
//!   room's [`position`](RoomsClient::position) is its last seq and epoch. A join with
//!   [`JoinOptions::last`] starts with the room's recent messages; one with
//!   [`JoinOptions::resume`] goes on from another client's position. A join the broker
//!   cannot take (`unavailable`) is retried after a backoff delay; any other refusal is
//!   [`RoomEvent::JoinRefused`] and the room is dropped.
//! - Publishes: [`publish`](RoomsClient::publish) returns the message's `id`
//!   (`<12 random characters>.<counter>`, unique to this client) and keeps the message in an
//!   outbox (at most [`OUTBOX_CAPACITY`]) until its own copy (the `message` with that `id`) or
//!   an `ack` with that `id` arrives: [`RoomEvent::Published`]. It goes out when its room is
//!   joined (at once, or after the room's `joined`), again with the same `id` after every
//!   reconnect and, after an `unavailable` refusal, after a backoff delay. The server sends a
//!   repeated `id` to the room only once (`publish.dedupe_ms`), so a message the user sent is
//!   in the room exactly once. Another refusal, or leaving the room first, is
//!   [`RoomEvent::PublishFailed`].
//! - [`signal`](RoomsClient::signal) and [`presence`](RoomsClient::presence) need the room
//!   joined on an open connection (never queued); presence is answered by
//!   [`RoomEvent::Presence`]. Other refusals are [`RoomEvent::Refused`]; the connection
//!   stays open.
//!
//! ```no_run
//! use wsgrace::client::{ClientConfig, JoinOptions, RoomEvent, RoomsClient};
//!
//! # async fn chat() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new("ws://127.0.0.1:8080/ws");
//! config.name = Some("ann".into());
//! let mut client = RoomsClient::connect(config)?;
//! client.join("lobby", JoinOptions { last: Some(20), ..JoinOptions::default() })?;
//! client.join("ops", JoinOptions::default())?;
//! let id = client.publish("lobby", "hello")?; // sent once the room is joined
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         RoomEvent::Message { room, from, text, seq, .. } => {
//!             log::info!("{room} #{seq} {from}: {text}")
//!         }
//!         RoomEvent::Published { id: done, seq, .. } if done == id => {
//!             log::info!("hello is in the lobby at {seq:?}")
//!         }
//!         RoomEvent::Gap { room, previous_seq, .. } => {
//!             log::warn!("{room}: messages after {previous_seq} may be lost")
//!         }
//!         _ => {}
//!     }
//!     # break;
//! }
//! client.leave("ops")?;
//! client.close(1000, "bye").await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;

mod outbox;
mod policy;
mod room_set;
mod rooms;
mod rooms_core;
mod rooms_shell;
mod seq_tracker;
mod shell;
mod socket;
mod wire;
mod wire_v2;

pub use outbox::{Outbox, OutboxFull, Pending, PublishRefusal};
pub use policy::{
    backoff_delay, next_step, Backoff, CloseInfo, ReconnectReason, Step, StepContext, StopReason,
    REFUSED_CODES, RETRY_CODES, TOKEN_EXPIRED,
};
pub use room_set::{JoinRefusal, JoinedRoom, RoomSet};
pub use rooms::{JoinOptions, PublishFailure, RoomError, RoomEvent, MAX_LAST, OUTBOX_CAPACITY};
pub use rooms_core::{Output, RoomsCore};
pub use rooms_shell::RoomsClient;
pub use seq_tracker::{JoinPosition, SeqTracker, WelcomeOutcome};
pub use shell::Client;
pub use wire::{build_url, parse_frame, Frame, Resume, UrlError, Welcome};
pub use wire_v2::{
    parse_rooms_frame, ClientFrame, ErrorCode, JoinStart, Joined, Member, Refusal, RoomMessage,
    RoomsFrame, SUBPROTOCOL,
};

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
    /// A [`RoomsClient`] was given an option of the one-room [`Client`] (`room`,
    /// `resume`): it joins rooms with [`RoomsClient::join`] (a room's resume point goes in
    /// [`JoinOptions::resume`]).
    #[error("ClientConfig::{0} is for the one-room Client; a RoomsClient joins rooms with join()")]
    OneRoomOption(&'static str),
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
        /// When the message got its seq, ms since the Unix epoch (server clock; a replayed
        /// message carries its original time); `None` from a server that does not send it.
        ts: Option<u64>,
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
}
