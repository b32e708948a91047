//! # wsgrace
//!
//! Graceful WebSocket connection management for chat-style backends on actix.
//!
//! Every connection is a [`Session`] actor that holds its own close state. A close is either
//! **awaited** ([`Close`], the semantics of .NET `WebSocket.CloseAsync`: send the close
//! frame, wait for the peer's, then answer) or **fire-and-forget** ([`CloseOutput`], .NET
//! `CloseOutputAsync`: send the close frame, answer at once, keep reading). A close the peer
//! never acknowledges ends in an abort after the close timeout. A [`Supervisor`] registers
//! the sessions, passes room messages through a [`broker::Broker`] and fans them out, and
//! drains: on [`service::shutdown`] every session chooses its own close mode
//! ([`SessionHandler::shutdown_mode`]).
//!
//! The broker gives each room message its `seq`, keeps a bounded history per room and names
//! it with an epoch: [`broker::LocalBroker`] in this process (the default), or
//! [`broker::RedisBroker`], with which every node on one Redis serves the same rooms (one
//! script per message takes the seq, appends to the room's stream and publishes; each node
//! subscribes once per room that has members on it). A joining session is subscribed first,
//! then reads the room's snapshot; [`rooms::resume`] merges the two so that a client that
//! resumes with `since` gets every seq once, with no gap.
//!
//! ## The map: folders by level
//!
//! Each level imports only the levels below it; nothing imports upwards, and there is no
//! cycle.
//!
//! | level | place | owns |
//! |---|---|---|
//! | 6 | [`service`] | the HTTP faces: routes and upgrade checks ([`service::server`]), signals and readiness ([`service::shutdown`]), tokens ([`service::auth`], [`service::expiry`]), the client address, the open-files budget |
//! | 5 | [`rooms`] | rooms on this node: the [`Supervisor`] (a mailbox that routes), the pure [`rooms::room::Room`] (enrolment, join buffer, line, catch-up), the fan-out shards, the resume merge, the drain plan and report, the chat handler |
//! | 4 | [`broker`] | the seam both brokers implement ([`broker::Broker`]), [`broker::LocalBroker`], [`broker::RedisBroker`] (keys and scripts, publisher, driver) |
//! | 3 | [`connection`] | one connection: bytes ⇄ frames ([`connection::transport`], with `permessage-deflate`), the session actor ([`connection::session`]), the lingering close, the handshake (and its `permessage-deflate` offer) and the upgrade out of the HTTP dispatcher |
//! | 2 | [`client`] | the Rust client: pure policy and wire parsing, a tokio shell |
//! | 1 | [`protocol`] | the server's frames as plain types, serialized in one place |
//! | 0 | [`close`], [`config`], [`metrics`] | the ground floor every level uses: the close-state machine, the configuration (one file per TOML table), the metrics |
//!
//! ```text
//!             HTTP upgrade (/ws?room=R&name=N, to resume also &since=S&epoch=E)
//!                    │  service/server.rs checks: draining 503, broker unreachable 503,
//!                    │  Origin 403, room/name/since/epoch 400, token 401/403 (service/auth.rs:
//!                    │  sub → name, rooms; service/expiry.rs closes 3000 at exp), per address
//!                    │  429, max_connections 503; connection/handshake.rs: HTTP/1.1, no body
//!                    ▼
//!  ┌──────────── Session actor (connection/session, one per connection, on a worker) ───┐
//!  │ connection/transport: bytes ⇄ frames    close.rs: CloseMachine (pure, no I/O)      │
//!  │ inbound frames ─► machine ─► actions: send close / deliver / drop / answer / end   │
//!  └───────▲──────────────────────────────┬─────────────────────────────────────────────┘
//!          │ SendText (shared bytes)      │ Join (since, epoch) / Broadcast / Leave
//!          │ Shutdown(code, reason)       ▼
//!  ┌──────────── Supervisor actor (rooms/supervisor.rs: routes) ────────────────────────┐
//!  │ registry · one rooms/room.rs Room per room with local members (pure: enrolment,    │
//!  │ join buffer, line, catch-up → actions) · rooms/drain.rs plan and report            │
//!  └──────────────────────────────────────┬──────────────────────────────▲──────────────┘
//!            join, leave, publish,        │                              │ Drain{deadline,
//!            read_since (broker::Broker)  ▼                              │ batches} → DrainReport
//!  ┌──────────── Broker (broker.kind) ───────────────────────┐    service/shutdown.rs:
//!  │ local: seq, bounded history, epoch per room, in memory  │    SIGTERM/SIGINT/SIGHUP,
//!  │ redis: one Lua script per message: seq, XADD, PUBLISH;  │    readiness, second signal
//!  │        one SUBSCRIBE per room with local members ◄──────┼──► Redis, shared by every node
//!  └──────────────────────────────────────┬──────────────────┘
//!                                         │ each message with its epoch and seq, in seq order,
//!                                         │ serialized once: one Deliver per worker that has
//!                                         ▼ members in the room (the supervisor sends it)
//!  fan-out shard per worker (rooms/fanout.rs) ─► each local member's outbox
//!
//!   Open ──(our close)──► CloseSent ──(peer close)──► Closed
//!   Open ──(peer close)─► CloseReceived ──(our reply)──► Closed
//!   any ──(abort, timeout, vanished peer, bad input)──► Aborted
//! ```
//!
//! The close-state machine in [`close`] knows nothing of actix or sockets; the session actor
//! feeds it and carries out its actions; [`connection::transport`] is the only module that
//! touches bytes. The binary (`src/main.rs`) is a user of this library:
//! [`service::server::serve`] with a [`config::Config`]. It takes each upgrade out of
//! actix-http's dispatcher with its connection ([`connection::upgrade`]), so that the session
//! owns its socket; an app can instead run a session inside its own actix-web handler
//! ([`start`]).

pub mod broker;
pub mod client;
pub mod close;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod process_metrics;
pub mod protocol;
pub mod rooms;
pub mod service;

pub use close::{
    CloseError, CloseMachine, CloseMode, CloseOutcome, CloseRecord, CloseResult, CloseState,
    CloseStatus, Initiator,
};
pub use connection::session::{
    start, Abort, Close, CloseOutput, SendText, Session, SessionConfig, SessionEnd, SessionHandle,
    SessionHandler, SessionId, Shutdown,
};
pub use rooms::drain::DrainReport;
pub use rooms::handler::ChatHandler;
pub use rooms::supervisor::Supervisor;
pub use service::shutdown::Readiness;
pub use tokio_util::sync::CancellationToken;

// The module paths before the folders by level (0.1): kept so that code written against them
// still builds; see CHANGELOG.md for where each moved.
#[doc(hidden)]
pub use connection::{handshake, linger, request_deadline, session, transport, upgrade};
#[doc(hidden)]
pub use rooms::{fanout, resume, supervisor};
#[doc(hidden)]
pub use service::{auth, client_address, expiry, open_files, server, shutdown};
