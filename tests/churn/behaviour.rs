//! What a churn client does: how it ends ([`Kind`], drawn at random with the weights of
//! [`Kind::pick`]), which close calls the test makes on its session ([`Call`]) and what the
//! client saw ([`Obs`]). Plain data; the clients in `clients.rs` act it out and `churn.rs`
//! says how each kind must end.

use rand::rngs::StdRng;
use rand::Rng;
use wsgrace::{CloseError, CloseMode, CloseOutcome, CloseStatus};

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Awaited,
    FireAndForget,
}

impl Mode {
    pub fn close_mode(self) -> CloseMode {
        match self {
            Mode::Awaited => CloseMode::Awaited,
            Mode::FireAndForget => CloseMode::FireAndForget,
        }
    }
}

/// How a client answers the server's close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// tungstenite: acks by itself (echoing the code and reason).
    AckWs,
    /// Raw client: acks with 1000.
    AckRaw,
    /// Raw client: reads the close frame and never acks.
    NoAck,
    /// Raw client: sends a text, then acks with 1000.
    LateThenAck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Binary,
    InvalidUtf8,
    ForbiddenCloseCode,
    Unmasked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tungstenite closes with 1000 "bye".
    ClientClose1000,
    /// tungstenite closes without a code.
    ClientCloseNoCode,
    /// The test closes the session through its handle.
    Server(Mode, Peer),
    /// The test's close and the client's close 1000 "bye" (tungstenite) at the same time.
    RaceClientClose(Mode),
    /// The test's close and the client's TCP reset at the same time.
    RaceReset(Mode),
    /// `close` (4001) and `close_output` (4002) at the same time; tungstenite acks.
    CloseTwice,
    /// TCP reset after chatting.
    Reset,
    /// Raw client drops its socket (FIN, or RST with unread data).
    DropRaw,
    /// tungstenite stream dropped without a close.
    DropWs,
    /// Stops reading and writing; the client timeout aborts it.
    Silent,
    /// Bad input; the server fails the connection.
    Bad(Bad),
    /// Reset right after the upgrade, before any message: a session no client names.
    ResetAfterUpgrade,
}

impl Kind {
    pub fn pick(rng: &mut StdRng) -> Kind {
        let mode = if rng.gen_bool(0.5) {
            Mode::Awaited
        } else {
            Mode::FireAndForget
        };
        match rng.gen_range(0..100) {
            0..=9 => Kind::ClientClose1000,
            10..=14 => Kind::ClientCloseNoCode,
            15..=44 => {
                let peer = match rng.gen_range(0..4) {
                    0 => Peer::AckWs,
                    1 => Peer::AckRaw,
                    2 => Peer::NoAck,
                    _ => Peer::LateThenAck,
                };
                Kind::Server(mode, peer)
            }
            45..=51 => Kind::RaceClientClose(mode),
            52..=57 => Kind::RaceReset(mode),
            58..=62 => Kind::CloseTwice,
            63..=68 => Kind::Reset,
            69..=73 => Kind::DropRaw,
            74..=78 => Kind::DropWs,
            79..=84 => Kind::Silent,
            85..=94 => Kind::Bad(match rng.gen_range(0..4) {
                0 => Bad::Binary,
                1 => Bad::InvalidUtf8,
                2 => Bad::ForbiddenCloseCode,
                _ => Bad::Unmasked,
            }),
            _ => Kind::ResetAfterUpgrade,
        }
    }

    /// Clients that speak through tokio-tungstenite; the others use the raw client.
    pub fn uses_ws(self) -> bool {
        matches!(
            self,
            Kind::ClientClose1000
                | Kind::ClientCloseNoCode
                | Kind::Server(_, Peer::AckWs)
                | Kind::RaceClientClose(_)
                | Kind::CloseTwice
                | Kind::DropWs
        )
    }

    /// Close calls the test makes on this client's session.
    pub fn close_calls(self) -> usize {
        match self {
            Kind::Server(..) | Kind::RaceClientClose(_) | Kind::RaceReset(_) => 1,
            Kind::CloseTwice => 2,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Close,
    CloseOutput,
}

/// One close call and its answer (`None`: no answer within the deadline).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call: Call,
    pub status: Option<CloseStatus>,
    pub answer: Option<Result<CloseOutcome, CloseError>>,
}

/// What the client saw.
#[derive(Debug, Clone, Default)]
pub struct Obs {
    /// The server's close frame: `Some(code)`, `Some(None)` without a code; `None`: no close
    /// frame (or not looked for).
    pub close_code: Option<Option<u16>>,
    /// How long the client had written nothing when the server's close frame arrived (raw
    /// clients of a server-initiated close).
    pub quiet_before_close: Option<Duration>,
    /// The client failed (reported separately); its observations are not checked.
    pub failed: bool,
}
