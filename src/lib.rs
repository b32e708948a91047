//! # wsgrace
//!
//! Graceful WebSocket connection management for chat-style backends on actix.
//!
//! Every connection is a [`Session`] actor that holds its own close state. A close is either
//! **awaited** ([`Close`], the semantics of .NET `WebSocket.CloseAsync`: send the close
//! frame, wait for the peer's, then answer) or **fire-and-forget** ([`CloseOutput`], .NET
//! `CloseOutputAsync`: send the close frame, answer at once, keep reading). A close the peer
//! never acknowledges ends in an abort after the close timeout. A [`Supervisor`] registers
//! the sessions, orders and fans out room messages, and drains: on [`shutdown`] every session
//! chooses its own close mode ([`SessionHandler::shutdown_mode`]).
//!
//! ```text
//!   HTTP upgrade ─► server.rs checks ─► session::start ─► Session actor (one per connection)
//!                                                          │ ▲        ▲ Close / CloseOutput /
//!                          transport.rs (bytes ⇄ frames) ◄─┘ │        │ Abort / SendText / Shutdown
//!                          close.rs: CloseMachine (pure) ────┘        │
//!   Supervisor (registry, rooms, seq, drain) ─► fanout.rs shard per worker ─► session outboxes
//!   shutdown.rs: signals, readiness, deadline ─► Supervisor::Drain ─► DrainReport
//!
//!   Open ──(our close)──► CloseSent ──(peer close)──► Closed
//!   Open ──(peer close)─► CloseReceived ──(our reply)──► Closed
//!   any ──(abort, timeout, vanished peer, bad input)──► Aborted
//! ```
//!
//! The close-state machine in [`close`] knows nothing of actix or sockets; the session actor
//! feeds it and carries out its actions; [`transport`] is the only module that touches bytes.
//! The binary (`src/main.rs`) is a user of this library: [`server::serve`] with a
//! [`config::Config`].

pub mod broker;
pub mod close;
pub mod config;
pub mod fanout;
pub mod linger;
pub mod metrics;
pub mod open_files;
pub mod resume;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod supervisor;
pub mod transport;

pub use close::{
    CloseError, CloseMachine, CloseMode, CloseOutcome, CloseRecord, CloseResult, CloseState,
    CloseStatus, Initiator,
};
pub use session::{
    start, Abort, Close, CloseOutput, SendText, Session, SessionConfig, SessionEnd, SessionHandle,
    SessionHandler, SessionId, Shutdown,
};
pub use shutdown::Readiness;
pub use supervisor::{ChatHandler, DrainReport, Supervisor};
pub use tokio_util::sync::CancellationToken;
