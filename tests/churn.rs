//! Churn soak (issue 6, item 4): for `WSGRACE_SOAK_SECS` seconds (default 60), up to
//! [`CONCURRENCY`] clients at a time connect to an in-process server, chat in a few rooms and
//! end in every way there is, at random: the client closes (1000 or no code); the server
//! closes through the session's handle, awaited or fire-and-forget, with a client that acks,
//! never acks, or sends a late message first; the server's close races the client's close or
//! its reset; both close calls at once; the client resets, drops the socket or goes silent;
//! bad input. The run is seeded (`WSGRACE_SOAK_SEED` replays the choices; timing differs).
//!
//! The soak runs in rounds; every round ends once its clients are done, and then checks that
//! every session that started also ended, that every session ended as its client's behaviour
//! implies (state, initiator, mode, result, late messages), that every close call was answered
//! consistently with that end and with the close frame the client saw, that no session actor
//! is still alive, and that `wsgrace_connections_open` is 0. At the end the metrics are
//! compared with the events, and the process's RSS and live heap at rest with those after the
//! warm-up (the first third of the rounds).
//!
//! The server's handler (tests/common) echoes every text; the driver below correlates
//! sessions with clients (each client's first message is `hello N`), fans `chat` messages out
//! to the other members of the sender's room, and records what every session did.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use common::{Event, TestServer};
use futures::{FutureExt, SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc::UnboundedReceiver, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgrace::metrics::{metrics, CloseLabels, ReasonLabels};
use wsgrace::{
    CloseError, CloseMode, CloseOutcome, CloseResult, CloseState, CloseStatus, Initiator,
    SessionConfig, SessionEnd, SessionHandle,
};
use wsgrace_kit::frame::{
    close_payload, encode_frame, RawFrame, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
};
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::ws::Ws;
use wsgrace_kit::DEADLINE;

/// Counts the bytes the process has allocated and not freed, to tell a leak (live heap that
/// grows with the number of connections) from allocator behaviour (RSS that does not shrink).
struct CountingAlloc;

static LIVE_HEAP: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_HEAP.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Clients connected at the same time, at most.
const CONCURRENCY: usize = 200;
/// Clients over the whole soak, at most (a bound, not a target: pacing decides the count).
const MAX_CLIENTS: u64 = 100_000;
/// Rooms the clients chat in.
const ROOMS: u8 = 8;
/// One client's whole life, at most; a healthy client needs well under two seconds.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// RSS after the soak may exceed the RSS after the warm-up round by this fraction.
const RSS_TOLERANCE: f64 = 0.10;

/// Short timers, so that silent clients and unacked closes end within the soak.
const HEARTBEAT: Duration = Duration::from_millis(100);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
const CLOSE_TIMEOUT: Duration = Duration::from_millis(300);

fn soak_config() -> SessionConfig {
    SessionConfig {
        heartbeat_interval: HEARTBEAT,
        client_timeout: CLIENT_TIMEOUT,
        close_timeout: CLOSE_TIMEOUT,
        ..SessionConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// What a client does.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Awaited,
    FireAndForget,
}

impl Mode {
    fn close_mode(self) -> CloseMode {
        match self {
            Mode::Awaited => CloseMode::Awaited,
            Mode::FireAndForget => CloseMode::FireAndForget,
        }
    }
}

/// How a client answers the server's close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
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
enum Bad {
    Binary,
    InvalidUtf8,
    ForbiddenCloseCode,
    Unmasked,
}

impl Bad {
    fn expected_code(self) -> u16 {
        match self {
            Bad::Binary => 1003,
            Bad::InvalidUtf8 => 1007,
            Bad::ForbiddenCloseCode | Bad::Unmasked => 1002,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
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
    fn pick(rng: &mut StdRng) -> Kind {
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
    fn uses_ws(self) -> bool {
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
    fn close_calls(self) -> usize {
        match self {
            Kind::Server(..) | Kind::RaceClientClose(_) | Kind::RaceReset(_) => 1,
            Kind::CloseTwice => 2,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Close,
    CloseOutput,
}

/// One close call and its answer (`None`: no answer within the deadline).
#[derive(Debug, Clone)]
struct CallRecord {
    call: Call,
    status: Option<CloseStatus>,
    answer: Option<Result<CloseOutcome, CloseError>>,
}

/// What the client saw.
#[derive(Debug, Clone, Default)]
struct Obs {
    /// The server's close frame: `Some(code)`, `Some(None)` without a code; `None`: no close
    /// frame (or not looked for).
    close_code: Option<Option<u16>>,
    /// How long the client had written nothing when the server's close frame arrived (raw
    /// clients of a server-initiated close).
    quiet_before_close: Option<Duration>,
    /// The client failed (reported separately); its observations are not checked.
    failed: bool,
}

// ---------------------------------------------------------------------------------------
// The driver: consumes the server's events, correlates sessions with clients, fans chat
// out, and checks every session once its end, its close calls and its client's report are in.

struct Pending {
    kind: Kind,
    room: u8,
    tx: oneshot::Sender<SessionHandle>,
}

struct Live {
    handle: SessionHandle,
    room: Option<u8>,
}

struct Join {
    client: u64,
    kind: Kind,
    end: Option<SessionEnd>,
    calls: Vec<CallRecord>,
    obs: Option<Obs>,
}

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, Pending>,
    live: HashMap<u64, Live>,
    rooms: HashMap<u8, HashMap<u64, SessionHandle>>,
    joins: HashMap<u64, Join>,
    /// Ended sessions whose actor may still be winding down.
    graveyard: Vec<SessionHandle>,
    started: u64,
    ended: u64,
    uncorrelated_ended: u64,
    reset_after_upgrade: u64,
    checked: u64,
    kinds: BTreeMap<String, u64>,
    calls: BTreeMap<String, u64>,
    /// By metric labels: initiator, mode, result.
    ends: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// By state, initiator, mode, result.
    states: BTreeMap<String, u64>,
    branches: BTreeMap<String, u64>,
    chat_in: u64,
    fanned_out: u64,
    late_delivered: u64,
    dropped_after_close: u64,
    delivered_after_close: u64,
    max_handshake: Duration,
    failures: Vec<String>,
    failure_count: u64,
}

impl Shared {
    fn fail(&mut self, what: String) {
        self.failure_count += 1;
        if self.failures.len() < 100 {
            eprintln!("churn failure: {what}");
            self.failures.push(what);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started(handle) => {
                self.started += 1;
                self.live.insert(handle.id(), Live { handle, room: None });
            }
            Event::Message(id, text) => self.on_message(id, text),
            Event::Ended(id, end) => self.on_end(id, end),
            Event::Held(..) => {}
        }
    }

    fn on_message(&mut self, id: u64, text: String) {
        if let Some(n) = text.strip_prefix("hello ") {
            let Ok(n) = n.parse::<u64>() else {
                return self.fail(format!("session {id}: bad hello {text:?}"));
            };
            let Some(pending) = self.pending.remove(&n) else {
                return self.fail(format!("session {id}: hello from unknown client {n}"));
            };
            let Some(live) = self.live.get_mut(&id) else {
                return self.fail(format!("session {id}: hello before its start"));
            };
            live.room = Some(pending.room);
            let handle = live.handle.clone();
            self.rooms
                .entry(pending.room)
                .or_default()
                .insert(id, handle.clone());
            self.joins.insert(
                id,
                Join {
                    client: n,
                    kind: pending.kind,
                    end: None,
                    calls: Vec::new(),
                    obs: None,
                },
            );
            // The client may have given up already; its report says so.
            let _ = pending.tx.send(handle);
        } else if text.starts_with("chat ") {
            self.chat_in += 1;
            let room = self.live.get(&id).and_then(|l| l.room);
            if let Some(members) = room.and_then(|r| self.rooms.get(&r)) {
                let text = ByteString::from(text);
                for (member, handle) in members {
                    if *member != id {
                        handle.deliver(text.clone());
                        self.fanned_out += 1;
                    }
                }
            }
        } else if text.starts_with("late ") {
            self.late_delivered += 1;
            // Only a fire-and-forget close delivers what arrives after its close frame.
            if let Some(join) = self.joins.get(&id) {
                if join.kind == Kind::Server(Mode::Awaited, Peer::LateThenAck) {
                    let what = format!(
                        "session {id} (client {}): late message delivered after an awaited close",
                        join.client
                    );
                    self.fail(what);
                }
            }
        }
    }

    fn on_end(&mut self, id: u64, end: SessionEnd) {
        self.ended += 1;
        let r = end.record;
        *self
            .states
            .entry(format!(
                "{} {} {} {}",
                end.state,
                r.initiator.as_str(),
                r.mode.as_str(),
                r.result.as_str()
            ))
            .or_default() += 1;
        *self
            .ends
            .entry((r.initiator.as_str(), r.mode.as_str(), r.result.as_str()))
            .or_default() += 1;
        self.dropped_after_close += end.dropped_after_close;
        self.delivered_after_close += end.delivered_after_close;
        if let Some(h) = end.handshake {
            self.max_handshake = self.max_handshake.max(h);
        }
        if let Err(err) = check_any_end(&end) {
            self.fail(format!("session {id}: {err}: {end:?}"));
        }
        let Some(live) = self.live.remove(&id) else {
            return self.fail(format!("session {id} ended twice or never started"));
        };
        if let Some(room) = live.room {
            if let Some(members) = self.rooms.get_mut(&room) {
                members.remove(&id);
            }
        }
        self.graveyard.push(live.handle);
        if self.graveyard.len() >= 512 {
            self.sweep();
        }
        match self.joins.get_mut(&id) {
            Some(join) => {
                join.end = Some(end);
                self.try_complete(id);
            }
            None => {
                // A session no client named: only the resets right after the upgrade.
                self.uncorrelated_ended += 1;
                if (end.state, r.initiator, r.result)
                    != (CloseState::Aborted, Initiator::Client, CloseResult::Aborted)
                {
                    self.fail(format!(
                        "session {id} without a hello ended unexpectedly: {end:?}"
                    ));
                }
            }
        }
    }

    fn report_call(&mut self, id: u64, record: CallRecord) {
        let key = format!(
            "{:?} -> {}",
            record.call,
            match &record.answer {
                None => "NO ANSWER".to_string(),
                Some(Ok(CloseOutcome::Acked(_))) => "Ok(Acked)".to_string(),
                Some(answer) => format!("{answer:?}"),
            }
        );
        *self.calls.entry(key).or_default() += 1;
        match self.joins.get_mut(&id) {
            Some(join) => {
                join.calls.push(record);
                self.try_complete(id);
            }
            None => self.fail(format!("session {id}: close call reported too late")),
        }
    }

    fn report_obs(&mut self, id: u64, obs: Obs) {
        match self.joins.get_mut(&id) {
            Some(join) => {
                join.obs = Some(obs);
                self.try_complete(id);
            }
            None => self.fail(format!("session {id}: client report came too late")),
        }
    }

    fn try_complete(&mut self, id: u64) {
        let complete = self.joins.get(&id).is_some_and(|j| {
            j.end.is_some() && j.obs.is_some() && j.calls.len() == j.kind.close_calls()
        });
        if !complete {
            return;
        }
        let Some(join) = self.joins.remove(&id) else {
            return;
        };
        let (Some(end), Some(obs)) = (&join.end, &join.obs) else {
            return;
        };
        self.checked += 1;
        match check_session(join.kind, end, &join.calls, obs) {
            Ok(branch) => {
                if let Some(branch) = branch {
                    *self
                        .branches
                        .entry(format!("{:?}: {branch}", join.kind))
                        .or_default() += 1;
                }
            }
            Err(err) => self.fail(format!(
                "session {id} (client {} {:?}): {err}\n  end: {end:?}\n  calls: {:?}\n  client saw: {obs:?}",
                join.client, join.kind, join.calls
            )),
        }
    }

    /// Forgets ended sessions whose actor is gone: terminal state, address disconnected.
    fn sweep(&mut self) {
        self.graveyard
            .retain(|h| !h.state().is_terminal() || h.addr().connected());
    }
}

async fn drive(mut events: UnboundedReceiver<Event>, shared: Arc<Mutex<Shared>>) {
    while let Some(event) = events.recv().await {
        let mut s = shared.lock().expect("shared lock");
        s.on_event(event);
        while let Ok(event) = events.try_recv() {
            s.on_event(event);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

/// What holds for every end.
fn check_any_end(end: &SessionEnd) -> Result<(), String> {
    ensure!(end.state.is_terminal(), "ended in a non-terminal state");
    ensure!(
        (end.state == CloseState::Closed) == (end.record.result == CloseResult::Acked),
        "Closed if and only if acked"
    );
    let server_closed =
        end.state == CloseState::Closed && end.record.initiator == Initiator::Server;
    ensure!(
        end.handshake.is_some() == server_closed,
        "a handshake time for exactly the server-initiated closes that were acked"
    );
    ensure!(
        end.dropped_after_close == 0 || end.delivered_after_close == 0,
        "late messages both dropped and delivered"
    );
    Ok(())
}

fn acked(code: u16, reason: &str) -> Option<Result<CloseOutcome, CloseError>> {
    Some(Ok(CloseOutcome::Acked(Some(
        CloseStatus::new(code, reason).expect("valid status"),
    ))))
}

fn code_of(status: &Option<CloseStatus>) -> Option<u16> {
    status.as_ref().map(CloseStatus::code)
}

/// Checks a session against its client's behaviour, its close calls and what the client saw.
/// Returns which way a race went, for the tally.
fn check_session(
    kind: Kind,
    end: &SessionEnd,
    calls: &[CallRecord],
    obs: &Obs,
) -> Result<Option<&'static str>, String> {
    for c in calls {
        ensure!(c.answer.is_some(), "{:?} was not answered", c.call);
    }
    let state = end.state;
    let r = end.record;
    let saw = |expected: Option<u16>| -> Result<(), String> {
        ensure!(
            obs.failed || obs.close_code == Some(expected),
            "the client saw close {:?}, expected {expected:?}",
            obs.close_code
        );
        Ok(())
    };
    let outcome = (state, r.initiator, r.result);
    use CloseState::{Aborted, Closed};
    let mut branch = None;
    match kind {
        Kind::ClientClose1000 | Kind::ClientCloseNoCode => {
            ensure!(
                outcome == (Closed, Initiator::Client, CloseResult::Acked),
                "expected a clean client close"
            );
            saw((kind == Kind::ClientClose1000).then_some(1000))?;
        }
        Kind::Server(mode, peer) => {
            let [call] = calls else {
                return Err("expected one close call".into());
            };
            // A client that wrote nothing for CLIENT_TIMEOUT is aborted, also while a close
            // waits for its ack. The server heard the client last no earlier than the client
            // wrote last, and sent its close frame no later than the client read it: so the
            // client timeout can beat the close timeout only if the client had been quiet for
            // more than CLIENT_TIMEOUT - CLOSE_TIMEOUT when the close frame came.
            let client_timeout_first = peer == Peer::NoAck
                && outcome == (Aborted, Initiator::Server, CloseResult::Aborted);
            if client_timeout_first {
                branch = Some("client timeout before the close timeout");
                ensure!(
                    obs.failed
                        || obs
                            .quiet_before_close
                            .is_some_and(|q| q > CLIENT_TIMEOUT - CLOSE_TIMEOUT),
                    "aborted before the close timeout, yet the client had written {:?} before \
                     the close frame came",
                    obs.quiet_before_close
                );
            }
            let expected = if client_timeout_first {
                outcome
            } else if peer == Peer::NoAck {
                (Aborted, Initiator::Server, CloseResult::Timeout)
            } else {
                (Closed, Initiator::Server, CloseResult::Acked)
            };
            ensure!(outcome == expected, "expected {expected:?}");
            ensure!(r.mode == mode.close_mode(), "expected mode {mode:?}");
            let answer = match (mode, peer) {
                (Mode::FireAndForget, _) => Some(Ok(CloseOutcome::Sent)),
                (Mode::Awaited, Peer::NoAck) if client_timeout_first => {
                    Some(Err(CloseError::Aborted))
                }
                (Mode::Awaited, Peer::NoAck) => Some(Ok(CloseOutcome::TimedOut)),
                // tungstenite echoes the code and reason.
                (Mode::Awaited, Peer::AckWs) => Some(Ok(CloseOutcome::Acked(call.status.clone()))),
                (Mode::Awaited, Peer::AckRaw | Peer::LateThenAck) => acked(1000, ""),
            };
            ensure!(call.answer == answer, "expected the answer {answer:?}");
            saw(code_of(&call.status))?;
            match mode {
                Mode::Awaited => {
                    ensure!(
                        end.delivered_after_close == 0,
                        "delivered after an awaited close"
                    );
                    if peer == Peer::LateThenAck {
                        ensure!(
                            end.dropped_after_close >= 1,
                            "the late message was not dropped"
                        );
                    }
                }
                Mode::FireAndForget => {
                    ensure!(
                        end.dropped_after_close == 0,
                        "dropped after a fire-and-forget close"
                    );
                    if peer == Peer::LateThenAck {
                        ensure!(
                            end.delivered_after_close >= 1,
                            "the late message was not delivered"
                        );
                    }
                }
            }
        }
        Kind::RaceClientClose(mode) => {
            let [call] = calls else {
                return Err("expected one close call".into());
            };
            ensure!(
                (state, r.result) == (Closed, CloseResult::Acked),
                "expected a clean close"
            );
            if r.initiator == Initiator::Server {
                branch = Some("server first");
                ensure!(r.mode == mode.close_mode(), "expected mode {mode:?}");
                let answer = match mode {
                    Mode::Awaited => acked(1000, "bye"),
                    Mode::FireAndForget => Some(Ok(CloseOutcome::Sent)),
                };
                ensure!(call.answer == answer, "expected the answer {answer:?}");
                saw(code_of(&call.status))?;
            } else {
                branch = Some("client first");
                ensure!(
                    call.answer == Some(Err(CloseError::AlreadyClosed)),
                    "expected AlreadyClosed"
                );
                saw(Some(1000))?;
            }
        }
        Kind::RaceReset(mode) => {
            let [call] = calls else {
                return Err("expected one close call".into());
            };
            ensure!(
                (state, r.result) == (Aborted, CloseResult::Aborted),
                "expected an abort"
            );
            let answer = if r.initiator == Initiator::Server {
                branch = Some("close frame first");
                ensure!(r.mode == mode.close_mode(), "expected mode {mode:?}");
                match mode {
                    Mode::Awaited => Some(Err(CloseError::Aborted)),
                    Mode::FireAndForget => Some(Ok(CloseOutcome::Sent)),
                }
            } else {
                branch = Some("reset first");
                Some(Err(CloseError::Aborted))
            };
            ensure!(call.answer == answer, "expected the answer {answer:?}");
        }
        Kind::CloseTwice => {
            let close = calls.iter().find(|c| c.call == Call::Close);
            let output = calls.iter().find(|c| c.call == Call::CloseOutput);
            let (Some(close), Some(output)) = (close, output) else {
                return Err("expected a close and a close_output call".into());
            };
            ensure!(
                outcome == (Closed, Initiator::Server, CloseResult::Acked),
                "expected a clean server close"
            );
            if r.mode == CloseMode::Awaited {
                branch = Some("close first");
                ensure!(
                    close.answer == Some(Ok(CloseOutcome::Acked(close.status.clone()))),
                    "close: expected Acked with the echo"
                );
                ensure!(
                    matches!(
                        output.answer,
                        Some(Err(CloseError::OutputClosed | CloseError::AlreadyClosed))
                    ),
                    "close_output after close: expected OutputClosed or AlreadyClosed"
                );
                saw(code_of(&close.status))?;
            } else {
                ensure!(
                    output.answer == Some(Ok(CloseOutcome::Sent)),
                    "close_output first: expected Sent"
                );
                if close.answer == Some(Err(CloseError::AlreadyClosed)) {
                    branch = Some("close_output first, close after the ack");
                } else {
                    branch = Some("close_output first, close waits for the ack");
                    ensure!(
                        close.answer == Some(Ok(CloseOutcome::Acked(output.status.clone()))),
                        "close after close_output: expected Acked with the echo"
                    );
                }
                saw(code_of(&output.status))?;
            }
        }
        Kind::Reset | Kind::DropRaw | Kind::DropWs => {
            ensure!(
                outcome == (Aborted, Initiator::Client, CloseResult::Aborted),
                "expected an abort by the vanished client"
            );
        }
        Kind::Silent => {
            ensure!(
                outcome == (Aborted, Initiator::Server, CloseResult::Aborted),
                "expected an abort by the client timeout"
            );
            ensure!(
                obs.failed || obs.close_code.is_none(),
                "a silent client got a close frame"
            );
        }
        Kind::Bad(bad) => {
            ensure!(
                outcome == (Aborted, Initiator::Server, CloseResult::Error),
                "expected a connection failed by the server"
            );
            saw(Some(bad.expected_code()))?;
        }
        Kind::ResetAfterUpgrade => return Err("a reset-after-upgrade client said hello".into()),
    }
    Ok(branch)
}

// ---------------------------------------------------------------------------------------
// The clients.

struct ClientCtx {
    n: u64,
    kind: Kind,
    room: u8,
    addr: SocketAddr,
    rng: StdRng,
    shared: Arc<Mutex<Shared>>,
    session: Option<SessionHandle>,
    closers: Vec<JoinHandle<()>>,
}

impl ClientCtx {
    fn path(&self) -> String {
        format!("/ws?room=room{}&name=c{}", self.room, self.n)
    }

    fn register(&self) -> oneshot::Receiver<SessionHandle> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            kind: self.kind,
            room: self.room,
            tx,
        };
        self.shared
            .lock()
            .expect("shared lock")
            .pending
            .insert(self.n, pending);
        rx
    }

    async fn take_handle(&mut self, rx: oneshot::Receiver<SessionHandle>) -> Result<(), String> {
        let handle = timeout(DEADLINE, rx)
            .await
            .map_err(|_| "the driver did not name the session".to_string())?
            .map_err(|_| "the driver dropped the client".to_string())?;
        self.session = Some(handle);
        Ok(())
    }

    fn handle(&self) -> SessionHandle {
        self.session.clone().expect("session handle")
    }

    /// A random status for a server-initiated close.
    fn status(&mut self) -> Option<CloseStatus> {
        let status = match self.rng.gen_range(0..4) {
            0 => return None,
            1 => CloseStatus::new(1000, ""),
            2 => CloseStatus::new(1001, "going away"),
            _ => CloseStatus::new(self.rng.gen_range(4000..5000), "kicked"),
        };
        Some(status.expect("valid status"))
    }

    /// Calls `close` or `close_output` on the session from its own task, and reports the
    /// answer (or its absence) to the driver.
    fn spawn_close(&mut self, call: Call, status: Option<CloseStatus>) {
        let handle = self.handle();
        let shared = self.shared.clone();
        self.closers.push(tokio::spawn(async move {
            let answer = match call {
                Call::Close => timeout(DEADLINE, handle.close(status.clone())).await,
                Call::CloseOutput => timeout(DEADLINE, handle.close_output(status.clone())).await,
            }
            .ok();
            let record = CallRecord {
                call,
                status,
                answer,
            };
            shared
                .lock()
                .expect("shared lock")
                .report_call(handle.id(), record);
        }));
    }

    /// Sometimes lets other tasks run first, to vary which side of a race wins.
    async fn maybe_yield(&mut self) {
        for _ in 0..self.rng.gen_range(0..3) {
            tokio::task::yield_now().await;
        }
    }

    /// How long to stay idle (reading) between two chat messages.
    fn pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(0..300))
    }
}

async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

/// Sends `text` and reads until its echo (others' chat and pings are skipped).
async fn ws_echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::Text(text.to_string()))
        .await
        .map_err(|e| format!("send {text:?}: {e}"))?;
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t == text => return Ok(()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("close {frame:?} while waiting for {text:?}"))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("error while waiting for {text:?}: {e}")),
                None => return Err(format!("end while waiting for {text:?}")),
            }
        }
    };
    timeout(DEADLINE, read)
        .await
        .map_err(|_| format!("no echo of {text:?}"))?
}

/// Reads until the server's close frame, then until the end of the connection: nothing may
/// follow the close frame. Returns the frame's code.
async fn ws_close_then_end(ws: &mut Ws) -> Result<Option<u16>, String> {
    let code = loop {
        match timeout(DEADLINE, ws.next()).await {
            Err(_) => return Err("no close frame before the deadline".into()),
            Ok(None) => return Err("the connection ended without a close frame".into()),
            Ok(Some(Err(e))) => return Err(format!("error before the close frame: {e}")),
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
        }
    };
    match timeout(DEADLINE, ws.next()).await {
        Err(_) => Err("the server did not close TCP after the handshake".into()),
        Ok(None) | Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => Ok(code),
        Ok(Some(Err(e))) => Err(format!("error after the close frame: {e}")),
        Ok(Some(Ok(m))) => Err(format!("a frame after the close frame: {m:?}")),
    }
}

/// Reads (tungstenite answers pings) for `time`; the connection must stay open.
async fn ws_idle(ws: &mut Ws, time: Duration) -> Result<(), String> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return format!("close {frame:?} while idle"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("error while idle: {e}"),
                None => return "end while idle".to_string(),
            }
        }
    };
    match timeout(time, read).await {
        Err(_) => Ok(()),
        Ok(err) => Err(err),
    }
}

/// The raw client, remembering when it last wrote.
struct Raw {
    c: RawClient,
    last_write: Instant,
}

impl Raw {
    async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Raw {
            c: RawClient::connect(addr, path).await,
            last_write: Instant::now(),
        }
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.c.send_frame(true, opcode, payload).await;
        self.last_write = Instant::now();
    }

    /// The next frame that is not a ping; pings are answered.
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            let frame = self.c.read_frame().await?;
            if frame.opcode != OP_PING {
                return Some(frame);
            }
            self.send_frame(OP_PONG, &frame.payload).await;
        }
    }

    /// Sends `text` and reads until its echo.
    async fn echo(&mut self, text: &str) -> Result<(), String> {
        self.send_frame(OP_TEXT, text.as_bytes()).await;
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_TEXT && f.payload == text.as_bytes() => return Ok(()),
                    Some(f) if f.opcode == OP_CLOSE => {
                        return Err(format!(
                            "close {:?} while waiting for {text:?}",
                            f.close_code()
                        ))
                    }
                    Some(_) => {}
                    None => return Err(format!("EOF while waiting for {text:?}")),
                }
            }
        };
        timeout(DEADLINE, read)
            .await
            .map_err(|_| format!("no echo of {text:?}"))?
    }

    /// Reads (answering pings) for `time`; the connection must stay open.
    async fn idle(&mut self, time: Duration) -> Result<(), String> {
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_CLOSE => {
                        return format!("close {:?} while idle", f.close_code())
                    }
                    Some(_) => {}
                    None => return "EOF while idle".to_string(),
                }
            }
        };
        match timeout(time, read).await {
            Err(_) => Ok(()),
            Ok(err) => Err(err),
        }
    }

    /// Reads (answering pings) until the server's close frame. Returns its code and how long
    /// the client had been quiet (had written nothing) when it arrived.
    async fn close_frame(&mut self) -> Result<(Option<u16>, Duration), String> {
        let read = async {
            loop {
                match self.next().await {
                    Some(f) if f.opcode == OP_CLOSE => {
                        return Ok((f.close_code(), self.last_write.elapsed()))
                    }
                    Some(_) => {}
                    None => return Err("EOF without a close frame".to_string()),
                }
            }
        };
        timeout(DEADLINE, read)
            .await
            .map_err(|_| "no close frame before the deadline".to_string())?
    }

    /// After the close frame: no frame at all, then EOF.
    async fn eof(&mut self) -> Result<(), String> {
        match timeout(DEADLINE, self.c.read_frame()).await {
            Err(_) => Err("the server did not close TCP".into()),
            Ok(None) => Ok(()),
            Ok(Some(f)) => Err(format!("a frame after the close frame: {f:?}")),
        }
    }
}

async fn client_script(ctx: &mut ClientCtx) -> Result<Obs, String> {
    let kind = ctx.kind;
    let path = ctx.path();
    if kind == Kind::ResetAfterUpgrade {
        RawClient::connect(ctx.addr, &path).await.reset();
        return Ok(Obs::default());
    }
    let chats = ctx.rng.gen_range(0..=4);
    let linger = Duration::from_millis(ctx.rng.gen_range(0..800));
    let handle_rx = ctx.register();
    let n = ctx.n;
    if kind.uses_ws() {
        let mut ws = ws_connect(ctx.addr, &path).await?;
        ws_echo(&mut ws, &format!("hello {n}")).await?;
        ctx.take_handle(handle_rx).await?;
        ws_idle(&mut ws, linger).await?;
        for i in 0..chats {
            ws_echo(&mut ws, &format!("chat {n} {i}")).await?;
            ws_idle(&mut ws, ctx.pause()).await?;
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let code = match kind {
            Kind::ClientClose1000 | Kind::ClientCloseNoCode => {
                let frame = (kind == Kind::ClientClose1000).then_some(bye);
                ws.close(frame).await.map_err(|e| format!("close: {e}"))?;
                ws_close_then_end(&mut ws).await?
            }
            Kind::Server(mode, Peer::AckWs) => {
                let status = ctx.status();
                let call = match mode {
                    Mode::Awaited => Call::Close,
                    Mode::FireAndForget => Call::CloseOutput,
                };
                ctx.spawn_close(call, status);
                if ctx.rng.gen_bool(0.5) {
                    // Races the close frame: delivered or dropped as the mode says.
                    let _ = ws.send(Message::Text(format!("chat {n} racing"))).await;
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::RaceClientClose(mode) => {
                let status = ctx.status();
                let call = match mode {
                    Mode::Awaited => Call::Close,
                    Mode::FireAndForget => Call::CloseOutput,
                };
                // Either side starts, then the other follows at once.
                if ctx.rng.gen_bool(0.5) {
                    ctx.spawn_close(call, status);
                    ctx.maybe_yield().await;
                    ws.close(Some(bye))
                        .await
                        .map_err(|e| format!("close: {e}"))?;
                } else {
                    ws.close(Some(bye))
                        .await
                        .map_err(|e| format!("close: {e}"))?;
                    ctx.maybe_yield().await;
                    ctx.spawn_close(call, status);
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::CloseTwice => {
                let a = Some(CloseStatus::new(4001, "twice-a").expect("valid"));
                let b = Some(CloseStatus::new(4002, "twice-b").expect("valid"));
                if ctx.rng.gen_bool(0.5) {
                    ctx.spawn_close(Call::Close, a);
                    ctx.spawn_close(Call::CloseOutput, b);
                } else {
                    ctx.spawn_close(Call::CloseOutput, b);
                    ctx.spawn_close(Call::Close, a);
                }
                ws_close_then_end(&mut ws).await?
            }
            Kind::DropWs => {
                drop(ws);
                return Ok(Obs::default());
            }
            other => unreachable!("{other:?} is a raw client"),
        };
        return Ok(Obs {
            close_code: Some(code),
            quiet_before_close: None,
            failed: false,
        });
    }

    let mut c = Raw::connect(ctx.addr, &path).await;
    c.echo(&format!("hello {n}")).await?;
    ctx.take_handle(handle_rx).await?;
    c.idle(linger).await?;
    for i in 0..chats {
        c.echo(&format!("chat {n} {i}")).await?;
        c.idle(ctx.pause()).await?;
    }
    let mut quiet = None;
    let code = match kind {
        Kind::Server(mode, peer) => {
            let status = ctx.status();
            let call = match mode {
                Mode::Awaited => Call::Close,
                Mode::FireAndForget => Call::CloseOutput,
            };
            ctx.spawn_close(call, status);
            let (code, quiet_for) = c.close_frame().await?;
            quiet = Some(quiet_for);
            match peer {
                Peer::AckRaw => c.send_frame(OP_CLOSE, &close_payload(1000, b"")).await,
                Peer::LateThenAck => {
                    c.send_frame(OP_TEXT, format!("late {n}").as_bytes()).await;
                    c.send_frame(OP_CLOSE, &close_payload(1000, b"")).await;
                }
                Peer::NoAck => {}
                Peer::AckWs => unreachable!("a tungstenite client"),
            }
            c.eof().await?;
            Some(code)
        }
        Kind::RaceReset(mode) => {
            let status = ctx.status();
            let call = match mode {
                Mode::Awaited => Call::Close,
                Mode::FireAndForget => Call::CloseOutput,
            };
            if ctx.rng.gen_bool(0.5) {
                ctx.spawn_close(call, status);
                ctx.maybe_yield().await;
                c.c.reset();
            } else {
                c.c.reset();
                ctx.maybe_yield().await;
                ctx.spawn_close(call, status);
            }
            None
        }
        Kind::Reset => {
            c.c.reset();
            None
        }
        Kind::DropRaw => {
            drop(c);
            None
        }
        Kind::Silent => {
            // Neither reads nor writes from now on; the frames the server sends meanwhile
            // (pings, the room's chat) pile up in the socket until the abort ends it.
            let wait = async {
                while let Some(f) = c.c.read_frame().await {
                    if f.opcode == OP_CLOSE {
                        return Err(format!("a silent client got a close frame: {f:?}"));
                    }
                }
                Ok(())
            };
            timeout(DEADLINE, wait)
                .await
                .map_err(|_| "a silent client was not aborted".to_string())??;
            None
        }
        Kind::Bad(bad) => {
            match bad {
                Bad::Binary => c.send_frame(OP_BINARY, b"\x00\x01binary").await,
                Bad::InvalidUtf8 => c.send_frame(OP_TEXT, &[0xc3, 0x28, 0xff]).await,
                Bad::ForbiddenCloseCode => c.send_frame(OP_CLOSE, &close_payload(1005, b"")).await,
                Bad::Unmasked => {
                    c.c.send_raw(&encode_frame(true, 0, OP_TEXT, false, b"unmasked"))
                        .await
                }
            }
            let (code, _) = c.close_frame().await?;
            c.eof().await?;
            Some(code)
        }
        other => unreachable!("{other:?} is a tungstenite client"),
    };
    Ok(Obs {
        close_code: code,
        quiet_before_close: quiet,
        failed: false,
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs one client with its deadline, waits for its close calls, and reports.
async fn run_client(mut ctx: ClientCtx) {
    let result = timeout(
        CLIENT_DEADLINE,
        AssertUnwindSafe(client_script(&mut ctx)).catch_unwind(),
    )
    .await;
    for closer in std::mem::take(&mut ctx.closers) {
        // Each closer bounds its call by DEADLINE; a panic there shows as a missing call.
        if timeout(DEADLINE * 2, closer).await.is_err() {
            ctx.shared
                .lock()
                .expect("shared lock")
                .fail(format!("client {}: a close call task hung", ctx.n));
        }
    }
    let failure = match result {
        Ok(Ok(Ok(obs))) => Ok(obs),
        Ok(Ok(Err(err))) => Err(err),
        Ok(Err(panic)) => Err(format!("panicked: {}", panic_message(&*panic))),
        Err(_) => Err(format!("not done within {CLIENT_DEADLINE:?}")),
    };
    let mut s = ctx.shared.lock().expect("shared lock");
    *s.kinds.entry(format!("{:?}", ctx.kind)).or_default() += 1;
    if ctx.kind == Kind::ResetAfterUpgrade {
        s.reset_after_upgrade += 1;
    }
    let obs = match failure {
        Ok(obs) => obs,
        Err(err) => {
            s.fail(format!("client {} ({:?}): {err}", ctx.n, ctx.kind));
            Obs {
                failed: true,
                ..Obs::default()
            }
        }
    };
    if s.pending.remove(&ctx.n).is_some() && !obs.failed {
        s.fail(format!("client {} ({:?}) was never named", ctx.n, ctx.kind));
    }
    if let Some(handle) = &ctx.session {
        s.report_obs(handle.id(), obs);
    }
}

// ---------------------------------------------------------------------------------------
// The soak.

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// This process's resident memory (VmRSS), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// TCP sockets this process holds open (the listener and every connection, either end):
/// its socket descriptors looked up in /proc/net/tcp and tcp6. Read line by line, so that no
/// large buffer disturbs the memory samples.
fn tcp_sockets() -> usize {
    use std::io::BufRead;
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(file) = std::fs::File::open(table) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().skip(1) {
            let line = line.expect("read /proc/net/tcp");
            // sl local remote st queues timer retransmits uid timeout inode ...
            if line
                .split_whitespace()
                .nth(9)
                .is_some_and(|inode| inodes.contains(inode))
            {
                count += 1;
            }
        }
    }
    count
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Waits until every session that started has ended and was checked, every actor is gone and
/// the open-connections gauge is 0; then returns. Reports what is left after the deadline.
/// Also waits until the process holds no more TCP sockets than `idle_sockets` (those it held
/// before the first client: the listener): the server has released every connection. Returns
/// how long it took.
async fn quiesce(shared: &Arc<Mutex<Shared>>, idle_sockets: usize) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let state = {
            let mut s = shared.lock().expect("shared lock");
            s.sweep();
            let open = metrics().connections_open.get();
            let sockets = tcp_sockets();
            if s.started == s.ended
                && s.live.is_empty()
                && s.joins.is_empty()
                && s.pending.is_empty()
                && s.graveyard.is_empty()
                && open == 0
                && sockets <= idle_sockets
            {
                return Ok(start.elapsed());
            }
            format!(
                "started {} ended {}; live sessions {:?}; unfinished checks {:?}; \
                 actors still alive {:?}; connections_open {open}; sockets {sockets} (idle: \
                 {idle_sockets})",
                s.started,
                s.ended,
                s.live
                    .values()
                    .map(|l| (l.handle.id(), l.handle.state()))
                    .collect::<Vec<_>>(),
                s.joins
                    .iter()
                    .map(|(id, j)| (
                        *id,
                        j.client,
                        j.kind,
                        j.end.is_some(),
                        j.calls.len(),
                        j.obs.is_some()
                    ))
                    .collect::<Vec<_>>(),
                s.graveyard
                    .iter()
                    .map(|h| (h.id(), h.state(), h.addr().connected()))
                    .collect::<Vec<_>>(),
            )
        };
        if start.elapsed() > DEADLINE {
            return Err(state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn close_labels() -> Vec<CloseLabels> {
    let mut labels = Vec::new();
    for initiator in ["client", "server"] {
        for mode in ["awaited", "fire_and_forget"] {
            for outcome in ["acked", "timeout", "aborted", "error"] {
                labels.push(CloseLabels {
                    initiator,
                    mode,
                    outcome,
                });
            }
        }
    }
    labels
}

fn counter(
    family: &prometheus_client::metrics::family::Family<
        ReasonLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    reason: &'static str,
) -> u64 {
    family.get_or_create(&ReasonLabels { reason }).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_soak() {
    let secs = env_u64("WSGRACE_SOAK_SECS").unwrap_or(60).max(3);
    let seed = env_u64("WSGRACE_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    });
    // Rounds of about 10 s (at least 5); the first third of them (at least 2) is the warm-up
    // for the memory check (see there).
    let rounds = (secs / 10).max(5);
    let warmup_rounds = (rounds / 3).max(2) as usize;
    let round_len = Duration::from_secs_f64(secs as f64 / rounds as f64);
    println!(
        "churn: seed {seed} (replay: WSGRACE_SOAK_SEED={seed}), {secs} s in {rounds} rounds, \
         {CONCURRENCY} concurrent clients"
    );
    let began = Instant::now();

    let m = metrics();
    let labels = close_labels();
    let closes_before: Vec<u64> = labels
        .iter()
        .map(|l| m.closes.get_or_create(l).get())
        .collect();
    let total_before = m.connections_total.get();
    let dropped_before = counter(&m.messages_dropped, "after_close");
    let protocol_before: Vec<u64> = ["1002", "1003", "1007"]
        .iter()
        .map(|r| counter(&m.protocol_errors, r))
        .collect();

    let TestServer { addr, events } = TestServer::start(soak_config());
    let idle_sockets = tcp_sockets();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let driver = tokio::spawn(drive(events, shared.clone()));
    let mut rng = StdRng::seed_from_u64(seed);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut next_client = 0u64;
    let mut samples = Vec::new();

    for round in 0..rounds {
        let round_start = Instant::now();
        let first = next_client;
        let mut clients = JoinSet::new();
        let mut peak_rss = 0;
        while round_start.elapsed() < round_len && next_client < MAX_CLIENTS {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            while clients.try_join_next().is_some() {}
            if next_client % 500 == 0 {
                peak_rss = peak_rss.max(rss_bytes());
            }
            let ctx = ClientCtx {
                n: next_client,
                kind: Kind::pick(&mut rng),
                room: rng.gen_range(0..ROOMS),
                addr,
                rng: StdRng::seed_from_u64(rng.gen()),
                shared: shared.clone(),
                session: None,
                closers: Vec::new(),
            };
            next_client += 1;
            clients.spawn(async move {
                run_client(ctx).await;
                drop(permit);
            });
        }
        let launched = round_start.elapsed();
        // Every client is bounded by CLIENT_DEADLINE plus its close calls' deadlines.
        timeout(CLIENT_DEADLINE + DEADLINE * 3, async {
            while clients.join_next().await.is_some() {}
        })
        .await
        .expect("clients still running past their deadlines");
        let settled = match quiesce(&shared, idle_sockets).await {
            Ok(settled) => settled,
            Err(left) => {
                let s = shared.lock().expect("shared lock");
                panic!(
                    "round {round}: not everything ended (seed {seed}): {left}\nfailures: {:#?}",
                    s.failures
                );
            }
        };
        let rss = rss_bytes();
        let heap = LIVE_HEAP.load(Ordering::Relaxed).max(0) as u64;
        let sockets = tcp_sockets();
        let s = shared.lock().expect("shared lock");
        println!(
            "round {round}: clients {}..{} launched in {:.1} s, done at {:.1} s; sessions so far {}; \
             at rest {} ms later: RSS {:.2} MiB (peak seen {:.1} MiB), live heap {:.3} MiB, \
             TCP sockets {sockets}",
            first,
            next_client,
            launched.as_secs_f64(),
            (round_start.elapsed() - settled).as_secs_f64(),
            s.started,
            settled.as_millis(),
            mib(rss),
            mib(peak_rss),
            mib(heap),
        );
        samples.push((rss, heap, sockets));
    }
    driver.abort();

    let s = shared.lock().expect("shared lock");
    println!(
        "churn: {} clients, {} sessions in {:.1} s",
        next_client,
        s.started,
        began.elapsed().as_secs_f64()
    );
    println!("client kinds:");
    for (kind, count) in &s.kinds {
        println!("  {count:6}  {kind}");
    }
    println!("close calls:");
    for (call, count) in &s.calls {
        println!("  {count:6}  {call}");
    }
    println!("race branches:");
    for (branch, count) in &s.branches {
        println!("  {count:6}  {branch}");
    }
    println!("session ends (state, initiator, mode, result):");
    for (end, count) in &s.states {
        println!("  {count:6}  {end}");
    }
    println!(
        "chat: {} messages in, {} fanned out; late messages delivered {}; per-session \
         dropped_after_close {} delivered_after_close {}; slowest acked handshake {:?}",
        s.chat_in,
        s.fanned_out,
        s.late_delivered,
        s.dropped_after_close,
        s.delivered_after_close,
        s.max_handshake
    );
    let rss: Vec<String> = samples
        .iter()
        .map(|(r, _, _)| format!("{:.2}", mib(*r)))
        .collect();
    println!("RSS at rest after each round (MiB): {}", rss.join(", "));
    let heap: Vec<String> = samples
        .iter()
        .map(|(_, h, _)| format!("{:.3}", mib(*h)))
        .collect();
    println!(
        "live heap at rest after each round (MiB): {}",
        heap.join(", ")
    );

    assert!(
        s.failures.is_empty(),
        "{} failures (seed {seed}), the first ones:\n{}",
        s.failure_count,
        s.failures.join("\n")
    );
    assert_eq!(s.started, s.ended, "every session that started ended");
    assert_eq!(
        s.checked + s.uncorrelated_ended,
        s.ended,
        "every ended session was checked"
    );
    assert_eq!(
        s.uncorrelated_ended, s.reset_after_upgrade,
        "sessions without a hello are exactly the resets after the upgrade"
    );
    assert_eq!(s.started, next_client, "one session per client");

    // The metrics agree with the events.
    assert_eq!(m.connections_open.get(), 0, "wsgrace_connections_open");
    assert_eq!(m.connections_total.get() - total_before, s.started);
    for (label, before) in labels.iter().zip(&closes_before) {
        let counted = m.closes.get_or_create(label).get() - before;
        let seen = s
            .ends
            .get(&(label.initiator, label.mode, label.outcome))
            .copied()
            .unwrap_or(0);
        assert_eq!(counted, seen, "wsgrace_closes_total{label:?}");
    }
    assert_eq!(
        counter(&m.messages_dropped, "after_close") - dropped_before,
        s.dropped_after_close,
        "wsgrace_messages_dropped_total{{reason=after_close}}"
    );
    let bad = |b: Bad| {
        s.kinds
            .get(&format!("{:?}", Kind::Bad(b)))
            .copied()
            .unwrap_or(0)
    };
    let expected_protocol = [
        bad(Bad::ForbiddenCloseCode) + bad(Bad::Unmasked),
        bad(Bad::Binary),
        bad(Bad::InvalidUtf8),
    ];
    for ((reason, before), expected) in ["1002", "1003", "1007"]
        .iter()
        .zip(&protocol_before)
        .zip(expected_protocol)
    {
        assert_eq!(
            counter(&m.protocol_errors, reason) - before,
            expected,
            "wsgrace_protocol_errors_total{{reason={reason}}}"
        );
    }

    // Memory and sockets, each sampled at rest (every client done, every session ended and
    // its actor gone), so that the samples compare like with like.
    //
    // The first third of the soak (two rounds at least) is the warm-up. glibc malloc gives
    // threads their own arenas as it meets contention, and each arena keeps the free chunks it
    // once needed; tokio and actix grow their slabs, queues and timer wheels to the peak. All
    // of that is sized by the peak load (CONCURRENCY connections, their buffers and the room
    // traffic) and is kept afterwards, since freed heap is rarely returned to the kernel
    // (malloc_trim is not portable). Measured on a 2-core machine: RSS at rest (~19 MiB, of
    // which ~8 MiB are the binary's pages) climbs by 5-8 % over the first two rounds, all of
    // it anonymous memory in one malloc arena, and then stays within ~2 % for minutes (10 %
    // over 3 minutes when compared with the first round alone), while the live heap
    // (allocated and not freed, counted by CountingAlloc; ~0.36 MiB at rest) stays flat: the
    // climb is the allocator settling, not a leak. So the reference is the RSS after the
    // warm-up; a leak grows with the number of connections (tens of thousands here) and shows
    // in both RSS and live heap.
    let (warm_rss, warm_heap, warm_sockets) = samples[warmup_rounds - 1];
    let (last_rss, last_heap, last_sockets) = *samples.last().expect("samples");
    println!(
        "memory: after the warm-up ({warmup_rounds} rounds) RSS {:.2} MiB, live heap {:.3} MiB; \
         after the soak RSS {:.2} MiB ({:+.1} %), live heap {:.3} MiB ({:+.1} %)",
        mib(warm_rss),
        mib(warm_heap),
        mib(last_rss),
        (last_rss as f64 / warm_rss as f64 - 1.0) * 100.0,
        mib(last_heap),
        (last_heap as f64 / warm_heap as f64 - 1.0) * 100.0,
    );
    assert_eq!(
        (warm_sockets, last_sockets),
        (idle_sockets, idle_sockets),
        "TCP sockets held after the warm-up and after the soak, vs before the first client"
    );
    let limit = warm_rss as f64 * (1.0 + RSS_TOLERANCE);
    assert!(
        (last_rss as f64) <= limit,
        "RSS grew from {:.2} MiB after the warm-up to {:.2} MiB after the soak (limit {:.2} MiB)",
        mib(warm_rss),
        mib(last_rss),
        limit / (1024.0 * 1024.0)
    );
    let limit = warm_heap as f64 * (1.0 + RSS_TOLERANCE);
    assert!(
        (last_heap as f64) <= limit,
        "live heap grew from {:.3} MiB after the warm-up to {:.3} MiB after the soak (limit \
         {:.3} MiB)",
        mib(warm_heap),
        mib(last_heap),
        limit / (1024.0 * 1024.0)
    );
}
