//! What the rest of the program sees of a session: its [`SessionHandle`], the messages it
//! answers ([`Close`], [`CloseOutput`], [`Abort`], [`SendText`], [`Shutdown`]) with their
//! semantics, its [`SessionConfig`], the [`SessionHandler`] an application gives it, and how
//! it ended ([`SessionEnd`]). The actor itself is in the parent module.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Message};
use bytestring::ByteString;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::close::{CloseError, CloseMode, CloseOutcome, CloseRecord, CloseState, CloseStatus};
use crate::connection::transport::{InFlight, InFlightToken};

/// A session's id, unique in the process.
pub type SessionId = u64;

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
    /// Answer a client's RFC 7692 `permessage-deflate` offer (`session.permessage_deflate`):
    /// its compressed messages are inflated (bounded by `max_message_bytes`), and messages to it
    /// above a threshold go compressed, a room message compressed once for all its members.
    pub permessage_deflate: bool,
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
            permessage_deflate: crate::config::DEFAULT_PERMESSAGE_DEFLATE,
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

/// A boxed handler is a handler (the server picks the protocol's at the upgrade).
impl<H: SessionHandler + ?Sized> SessionHandler for Box<H> {
    fn on_start(&mut self, session: &SessionHandle) {
        (**self).on_start(session)
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        (**self).on_message(session, text)
    }

    fn shutdown_mode(&mut self, default: CloseMode) -> CloseMode {
        (**self).shutdown_mode(default)
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        (**self).on_end(session, end)
    }
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
    /// The code of the close frame this side sent: ours when we closed first, the peer's
    /// echoed when it did; `None` without one (an abort, a vanished peer, no code).
    pub close_code: Option<u16>,
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

/// A cheap, cloneable, thread-safe handle to a session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub(super) id: SessionId,
    pub(super) addr: Addr<Session>,
    pub(super) state: Arc<AtomicU8>,
    pub(super) in_flight: InFlight,
}

impl SessionHandle {
    /// Counts one of the session's messages as on its way through the application until the token
    /// is dropped: with [`crate::connection::transport::MAX_MESSAGES_IN_FLIGHT`] of them, the
    /// session reads nothing more from its peer (see [`InFlight`]). A handler that passes messages
    /// on (to another actor, a broker) holds one per message until it is done with it.
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

pub(super) fn state_to_u8(state: CloseState) -> u8 {
    match state {
        CloseState::Open => 0,
        CloseState::CloseSent => 1,
        CloseState::CloseReceived => 2,
        CloseState::Closed => 3,
        CloseState::Aborted => 4,
    }
}

pub(super) fn state_from_u8(value: u8) -> CloseState {
    match value {
        0 => CloseState::Open,
        1 => CloseState::CloseSent,
        2 => CloseState::CloseReceived,
        3 => CloseState::Closed,
        _ => CloseState::Aborted,
    }
}
