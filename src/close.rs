//! The close-state machine of one WebSocket session, free of actix and of I/O.
//!
//! It owns the rules of RFC 6455 §7 and of .NET's `WebSocket.CloseAsync` (awaited close) and
//! `CloseOutputAsync` (fire-and-forget close): which requests are valid in which state, what
//! is sent, which data frames are still delivered, who is answered and when the connection
//! ends. It returns [`Action`]s and never performs them; the session actor carries them out.
//! It must not learn about sockets, timers or actors: every transition is a unit test here.
//!
//! It also owns the validation of close codes and reasons ([`CloseStatus::new`]), so that an
//! invalid close request is refused before anything is sent.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest close reason RFC 6455 allows: a control frame carries at most 125 bytes, two of
/// which are the status code.
pub const MAX_REASON_BYTES: usize = 123;

/// Where a session is in its close handshake.
///
/// `Open → CloseSent | CloseReceived → Closed`, and `Aborted` from any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseState {
    /// Both directions open.
    Open,
    /// Our close frame is sent; we wait for the peer's.
    CloseSent,
    /// The peer's close frame arrived; ours is not sent yet.
    CloseReceived,
    /// Both close frames were exchanged: a clean end.
    Closed,
    /// The connection ended without a completed handshake.
    Aborted,
}

impl CloseState {
    /// Closed or Aborted: nothing more happens to the session.
    pub fn is_terminal(self) -> bool {
        matches!(self, CloseState::Closed | CloseState::Aborted)
    }
}

impl fmt::Display for CloseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseState::Open => "Open",
            CloseState::CloseSent => "CloseSent",
            CloseState::CloseReceived => "CloseReceived",
            CloseState::Closed => "Closed",
            CloseState::Aborted => "Aborted",
        })
    }
}

/// How a server-initiated close behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseMode {
    /// `CloseAsync`: send the close frame, answer after the peer's ack; data arriving
    /// meanwhile is dropped.
    Awaited,
    /// `CloseOutputAsync`: send the close frame, answer at once; data arriving before the ack
    /// is still delivered.
    FireAndForget,
}

impl CloseMode {
    /// The label used in config files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseMode::Awaited => "awaited",
            CloseMode::FireAndForget => "fire_and_forget",
        }
    }
}

impl fmt::Display for CloseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a close request, or a send, was refused. The cases mirror the exceptions .NET raises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    /// The session already completed its close handshake or is gone (.NET: disposed).
    #[error("the session is already closed")]
    AlreadyClosed,
    /// The session was aborted (.NET: aborted).
    #[error("the session was aborted")]
    Aborted,
    /// Our close frame was already sent (.NET: sending unavailable).
    #[error("the close frame was already sent: output is closed")]
    OutputClosed,
    /// The caller cancelled its awaited close; the close frame, if sent, stays sent.
    #[error("the close was cancelled")]
    Cancelled,
    /// The code may not be sent on the wire.
    #[error("close code {0} may not be sent (allowed: 1000-1003, 1007-1014, 3000-4999)")]
    InvalidCode(u16),
    /// The reason is longer than [`MAX_REASON_BYTES`].
    #[error("close reason is {0} bytes of UTF-8; at most 123 are allowed")]
    ReasonTooLong(usize),
    /// A reason was given without a code, which the wire format cannot carry.
    #[error("a close reason needs a close code")]
    ReasonWithoutCode,
}

/// A validated close status: a sendable code and a reason of at most 123 bytes.
///
/// "No status" (an empty close payload) is `Option::<CloseStatus>::None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseStatus {
    code: u16,
    reason: String,
}

impl CloseStatus {
    /// Validates `code` and `reason` for sending.
    ///
    /// ```
    /// use wsgrace::{CloseError, CloseStatus};
    ///
    /// let status = CloseStatus::new(4000, "kicked").unwrap();
    /// assert_eq!((status.code(), status.reason()), (4000, "kicked"));
    /// // 1005 and 1006 only exist inside APIs; they may never be sent.
    /// assert_eq!(CloseStatus::new(1005, ""), Err(CloseError::InvalidCode(1005)));
    /// assert_eq!(CloseStatus::new(1000, "x".repeat(124)), Err(CloseError::ReasonTooLong(124)));
    /// ```
    pub fn new(code: u16, reason: impl Into<String>) -> Result<Self, CloseError> {
        if !is_sendable_code(code) {
            return Err(CloseError::InvalidCode(code));
        }
        let reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            return Err(CloseError::ReasonTooLong(reason.len()));
        }
        Ok(CloseStatus { code, reason })
    }

    /// Validates an optional code with a reason, as an API caller gives them: no code and an
    /// empty reason is "no status"; a reason without a code is an error.
    pub fn optional(code: Option<u16>, reason: &str) -> Result<Option<Self>, CloseError> {
        match code {
            Some(code) => CloseStatus::new(code, reason).map(Some),
            None if reason.is_empty() => Ok(None),
            None => Err(CloseError::ReasonWithoutCode),
        }
    }

    /// The status code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The reason, possibly empty.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for CloseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.code, self.reason)
    }
}

/// Codes that may appear in a close frame on the wire (RFC 6455 §7.4, IANA registry).
pub fn is_sendable_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What an answered close request reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The handshake completed; the peer's close status (`None`: it sent no code).
    Acked(Option<CloseStatus>),
    /// Fire-and-forget: our close frame is queued; the session goes on reading.
    Sent,
    /// No ack within the close timeout; the connection was aborted.
    TimedOut,
}

/// Identifies one caller waiting on an awaited close.
pub type WaiterId = u64;

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Awaited close (`CloseAsync`) by the caller `waiter`.
    Close {
        /// Who is answered once the handshake ends.
        waiter: WaiterId,
        /// What to send.
        status: Option<CloseStatus>,
    },
    /// Fire-and-forget close (`CloseOutputAsync`).
    CloseOutput(Option<CloseStatus>),
    /// A valid close frame from the peer.
    PeerClose(Option<CloseStatus>),
    /// The close timeout, armed when our close frame was sent, fired.
    AckTimeout,
    /// The caller `waiter` gives up waiting.
    Cancel(WaiterId),
    /// The peer broke the protocol: fail the connection with this status (RFC 6455 §7.1.7).
    Fail(CloseStatus),
    /// Drop the connection now, without a handshake.
    Abort,
    /// The transport ended by itself (peer vanished, I/O error).
    TransportEnded,
}

/// What the session must do. Carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue our close frame (at most once per session).
    SendClose(Option<CloseStatus>),
    /// Arm the close timeout; when it fires, feed [`Input::AckTimeout`].
    StartAckTimer,
    /// Flush what is queued, then close the TCP connection.
    EndConnection,
    /// Close the TCP connection now, discarding what is queued.
    AbortConnection,
    /// Answer a waiting awaited-close caller.
    Answer {
        /// The caller.
        waiter: WaiterId,
        /// Its answer.
        result: Result<CloseOutcome, CloseError>,
    },
}

/// What to do with a data message that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataVerdict {
    /// Hand it to the application.
    Deliver,
    /// Drop it (and count it): the session is closing and may not deliver it.
    Drop,
}

/// Who sent the first close frame. A close the server decides on because of the peer's input
/// (a protocol error, a slow consumer, a rate limit) is the server's: its frame came first.
/// Without any close frame, an abort is the server's and a vanished transport the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// The peer.
    Client,
    /// This server.
    Server,
}

impl Initiator {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Server => "server",
        }
    }
}

/// How a session's close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseResult {
    /// The handshake completed.
    Acked,
    /// Our close was not acknowledged in time.
    Timeout,
    /// Dropped without a handshake (abort, vanished peer).
    Aborted,
    /// Failed because of bad input from the peer.
    Error,
}

impl CloseResult {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseResult::Acked => "acked",
            CloseResult::Timeout => "timeout",
            CloseResult::Aborted => "aborted",
            CloseResult::Error => "error",
        }
    }
}

/// The record of a finished session's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRecord {
    /// Who closed first; for an abort, the server, and for a vanished peer, the client.
    pub initiator: Initiator,
    /// The mode of our close frame; for client-initiated closes, the reply is sent at once
    /// and this is [`CloseMode::FireAndForget`].
    pub mode: CloseMode,
    /// How it ended.
    pub result: CloseResult,
}

/// What the machine does with a peer's close frame in `Open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyPolicy {
    /// Reply at once with the peer's code (no code in, no code out) and end: the server's rule.
    Echo,
    /// Stay in `CloseReceived` until the application closes (the .NET client's rule).
    Manual,
}

/// The close-state machine of one session.
///
/// ```
/// use wsgrace::close::{Action, CloseMachine, CloseOutcome, CloseState, CloseStatus, Input};
///
/// let mut machine = CloseMachine::default();
/// let status = CloseStatus::new(1001, "going away").ok();
/// // An awaited close sends the frame and arms the ack timer; caller 7 waits.
/// let actions = machine.handle(Input::Close { waiter: 7, status: status.clone() }).unwrap();
/// assert_eq!(actions, vec![Action::SendClose(status), Action::StartAckTimer]);
/// assert_eq!(machine.state(), CloseState::CloseSent);
/// // The peer's close frame is the ack: caller 7 is answered and the connection ends.
/// let actions = machine.handle(Input::PeerClose(None)).unwrap();
/// assert_eq!(
///     actions,
///     vec![
///         Action::Answer { waiter: 7, result: Ok(CloseOutcome::Acked(None)) },
///         Action::EndConnection,
///     ]
/// );
/// assert_eq!(machine.state(), CloseState::Closed);
/// ```
#[derive(Debug, Clone)]
pub struct CloseMachine {
    state: CloseState,
    policy: ReplyPolicy,
    /// Mode of our close frame, once sent.
    sent_mode: Option<CloseMode>,
    /// An awaited closer waits: data is no longer delivered, whatever the frame's mode.
    awaiting: bool,
    initiator: Option<Initiator>,
    peer_status: Option<CloseStatus>,
    waiters: Vec<WaiterId>,
    result: Option<CloseResult>,
}

impl Default for CloseMachine {
    fn default() -> Self {
        CloseMachine::new(ReplyPolicy::Echo)
    }
}

impl CloseMachine {
    /// A machine in `Open`.
    pub fn new(policy: ReplyPolicy) -> Self {
        CloseMachine {
            state: CloseState::Open,
            policy,
            sent_mode: None,
            awaiting: false,
            initiator: None,
            peer_status: None,
            waiters: Vec::new(),
            result: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> CloseState {
        self.state
    }

    /// Awaited-close callers not answered yet.
    pub fn waiting(&self) -> &[WaiterId] {
        &self.waiters
    }

    /// Once terminal: who closed, in which mode, and how it ended.
    pub fn record(&self) -> Option<CloseRecord> {
        let result = self.result?;
        Some(CloseRecord {
            initiator: self.initiator.unwrap_or(Initiator::Server),
            mode: self.sent_mode.unwrap_or(CloseMode::FireAndForget),
            result,
        })
    }

    /// Whether an outgoing data frame may be sent now: only before our close frame.
    pub fn check_send(&self) -> Result<(), CloseError> {
        match self.state {
            CloseState::Open | CloseState::CloseReceived => Ok(()),
            CloseState::CloseSent => Err(CloseError::OutputClosed),
            CloseState::Closed => Err(CloseError::AlreadyClosed),
            CloseState::Aborted => Err(CloseError::Aborted),
        }
    }

    /// What to do with an incoming data message. After an awaited close, or once the peer
    /// closed, data is dropped; after a fire-and-forget close it is still delivered.
    pub fn on_data(&self) -> DataVerdict {
        match (self.state, self.sent_mode, self.awaiting) {
            (CloseState::Open, _, _) => DataVerdict::Deliver,
            (CloseState::CloseSent, Some(CloseMode::FireAndForget), false) => DataVerdict::Deliver,
            _ => DataVerdict::Drop,
        }
    }

    /// Feeds one input. An `Err` means the request was refused and nothing changed.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Action>, CloseError> {
        use CloseState::*;
        match (self.state, input) {
            (Closed, Input::Close { .. } | Input::CloseOutput(_)) => Err(CloseError::AlreadyClosed),
            (Aborted, Input::Close { .. } | Input::CloseOutput(_)) => Err(CloseError::Aborted),

            (Open, Input::Close { waiter, status }) => {
                self.waiters.push(waiter);
                Ok(self.send_close(status, CloseMode::Awaited))
            }
            (Open, Input::CloseOutput(status)) => {
                Ok(self.send_close(status, CloseMode::FireAndForget))
            }
            (CloseSent, Input::Close { waiter, .. }) => {
                // After a close-output, an awaited close waits for the same ack; from now on
                // data is not delivered any more.
                self.waiters.push(waiter);
                self.awaiting = true;
                Ok(Vec::new())
            }
            (CloseSent, Input::CloseOutput(_)) => Err(CloseError::OutputClosed),
            (CloseReceived, Input::Close { waiter, status }) => {
                let mut actions = self.reply_close(status, CloseMode::Awaited);
                actions.push(Action::Answer {
                    waiter,
                    result: Ok(CloseOutcome::Acked(self.peer_status.clone())),
                });
                Ok(actions)
            }
            (CloseReceived, Input::CloseOutput(status)) => {
                Ok(self.reply_close(status, CloseMode::FireAndForget))
            }

            (Open, Input::PeerClose(status)) => {
                self.state = CloseReceived;
                self.initiator = Some(Initiator::Client);
                let echo = status.as_ref().map(|s| CloseStatus {
                    code: s.code,
                    reason: String::new(),
                });
                self.peer_status = status;
                Ok(match self.policy {
                    ReplyPolicy::Echo => self.reply_close(echo, CloseMode::FireAndForget),
                    ReplyPolicy::Manual => Vec::new(),
                })
            }
            (CloseSent, Input::PeerClose(status)) => {
                self.peer_status = status.clone();
                let mut actions =
                    self.finish(Closed, CloseResult::Acked, Ok(CloseOutcome::Acked(status)));
                actions.push(Action::EndConnection);
                Ok(actions)
            }
            // A second close frame from the peer, or one after the end: frames are no longer
            // handled.
            (CloseReceived | Closed | Aborted, Input::PeerClose(_)) => Ok(Vec::new()),

            (CloseSent, Input::AckTimeout) => {
                let mut actions =
                    self.finish(Aborted, CloseResult::Timeout, Ok(CloseOutcome::TimedOut));
                actions.push(Action::AbortConnection);
                Ok(actions)
            }
            // A timer armed by an earlier state: stale.
            (Open | CloseReceived | Closed | Aborted, Input::AckTimeout) => Ok(Vec::new()),

            (_, Input::Cancel(waiter)) => Ok(self.cancel(waiter)),

            (Open | CloseReceived, Input::Fail(status)) => {
                // Our close frame is the first one on the wire (or the reply, when the peer's
                // came first): the close is the server's decision, provoked by the peer.
                self.initiator.get_or_insert(Initiator::Server);
                self.sent_mode = Some(CloseMode::FireAndForget);
                let mut actions = vec![Action::SendClose(Some(status))];
                actions.extend(self.finish(Aborted, CloseResult::Error, Err(CloseError::Aborted)));
                actions.push(Action::EndConnection);
                Ok(actions)
            }
            (CloseSent, Input::Fail(_)) => {
                // Our close frame is out; another may not follow. Drop the connection.
                let mut actions =
                    self.finish(Aborted, CloseResult::Error, Err(CloseError::Aborted));
                actions.push(Action::AbortConnection);
                Ok(actions)
            }

            (Open | CloseSent | CloseReceived, input @ (Input::Abort | Input::TransportEnded)) => {
                // An abort is the server's decision; a transport that ends by itself is the
                // peer's doing.
                let initiator = match input {
                    Input::TransportEnded => Initiator::Client,
                    _ => Initiator::Server,
                };
                self.initiator.get_or_insert(initiator);
                let mut actions =
                    self.finish(Aborted, CloseResult::Aborted, Err(CloseError::Aborted));
                actions.push(Action::AbortConnection);
                Ok(actions)
            }
            // Abort after the end is a no-op, as in .NET.
            (Closed | Aborted, Input::Fail(_) | Input::Abort | Input::TransportEnded) => {
                Ok(Vec::new())
            }
        }
    }

    /// Server-initiated close from `Open`.
    fn send_close(&mut self, status: Option<CloseStatus>, mode: CloseMode) -> Vec<Action> {
        self.state = CloseState::CloseSent;
        self.initiator = Some(Initiator::Server);
        self.sent_mode = Some(mode);
        vec![Action::SendClose(status), Action::StartAckTimer]
    }

    /// Our close frame in reply to the peer's: the handshake is complete.
    fn reply_close(&mut self, status: Option<CloseStatus>, mode: CloseMode) -> Vec<Action> {
        self.sent_mode = Some(mode);
        self.state = CloseState::Closed;
        self.result = Some(CloseResult::Acked);
        vec![Action::SendClose(status), Action::EndConnection]
    }

    /// Enters a terminal state and answers every waiter with `answer`.
    fn finish(
        &mut self,
        state: CloseState,
        result: CloseResult,
        answer: Result<CloseOutcome, CloseError>,
    ) -> Vec<Action> {
        self.state = state;
        self.result = Some(result);
        self.waiters
            .drain(..)
            .map(|waiter| Action::Answer {
                waiter,
                result: answer.clone(),
            })
            .collect()
    }

    fn cancel(&mut self, waiter: WaiterId) -> Vec<Action> {
        match self.waiters.iter().position(|w| *w == waiter) {
            Some(index) => {
                self.waiters.remove(index);
                vec![Action::Answer {
                    waiter,
                    result: Err(CloseError::Cancelled),
                }]
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
#[path = "close_tests.rs"]
mod tests;
