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
//! This file says what must hold; the machinery is in `tests/churn/`: what a client does
//! (`behaviour.rs`), the clients acting it out (`clients.rs`), the driver that correlates
//! sessions with clients and records what every session did (`ledger.rs`; the server's
//! handler, in tests/common, echoes every text), and what the process measures of itself
//! (`probes.rs`).

#[path = "churn/behaviour.rs"]
mod behaviour;
#[path = "churn/clients.rs"]
mod clients;
mod common;
#[path = "churn/ledger.rs"]
mod ledger;
#[path = "churn/probes.rs"]
mod probes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use behaviour::{Bad, Call, CallRecord, Kind, Mode, Obs, Peer};
use common::TestServer;
use ledger::{drive, quiesce, Shared};
use probes::{close_labels, counter, env_u64, live_heap, mib, tcp_sockets};
use rand::rngs::StdRng;
use rand::SeedableRng;
use wsgrace::metrics::metrics;
use wsgrace::{
    CloseError, CloseMode, CloseOutcome, CloseResult, CloseState, CloseStatus, Initiator,
    SessionConfig, SessionEnd,
};
use wsgrace_kit::proc_stats::own_rss;

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
// How every session must end.

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
            saw(Some(expected_code(bad)))?;
        }
        Kind::ResetAfterUpgrade => return Err("a reset-after-upgrade client said hello".into()),
    }
    Ok(branch)
}

/// The close code the server fails a connection with, for each kind of bad input.
fn expected_code(bad: Bad) -> u16 {
    match bad {
        Bad::Binary => 1003,
        Bad::InvalidUtf8 => 1007,
        Bad::ForbiddenCloseCode | Bad::Unmasked => 1002,
    }
}

/// Whether a message sent after the server's close frame may reach the handler: only a
/// fire-and-forget close delivers what arrives after its close frame.
fn late_delivery_allowed(kind: Kind) -> bool {
    kind != Kind::Server(Mode::Awaited, Peer::LateThenAck)
}

// ---------------------------------------------------------------------------------------
// The soak.

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
    let mut next_client = 0u64;
    let mut samples = Vec::new();

    for round in 0..rounds {
        let round_start = Instant::now();
        let first = next_client;
        let (launched, peak_rss) =
            clients::run_round(addr, &shared, &mut rng, &mut next_client, round_len).await;
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
        let rss = own_rss().expect("VmRSS");
        let heap = live_heap();
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
    s.print_summary(next_client, began.elapsed());
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
