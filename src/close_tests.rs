//! Table-driven tests of the close-state machine over every (state, input) pair, plus focused
//! tests of its rules (echo, waiters, timeouts, cancellation, data verdicts, records), an
//! exhaustive check of its invariants over short input sequences, and the validation of
//! close codes and reasons.
//!
//! Every machine here is built through the public API only, so the tests pin behaviour, not
//! representation.

use std::collections::BTreeMap;

use super::*;

use Action::{AbortConnection, EndConnection, SendClose, StartAckTimer};
use CloseOutcome::{Acked, TimedOut};

// ---------------------------------------------------------------------------------------------
// Test values
// ---------------------------------------------------------------------------------------------

/// The waiter of the awaited close that [`machine_in`] performs to reach `SentAwaited`.
const W: WaiterId = 1;
/// The waiter of the awaited close fed as an input in the table.
const NEW: WaiterId = 2;
/// A waiter the machine never saw.
const UNKNOWN: WaiterId = 99;

fn status(code: u16, reason: &str) -> CloseStatus {
    CloseStatus::new(code, reason).expect("test status is valid")
}

/// What the server sends when it closes.
fn ours() -> CloseStatus {
    status(1001, "going away")
}

/// What the peer sends when it closes.
fn peer() -> CloseStatus {
    status(4000, "peer says bye")
}

/// The echo of [`peer`]: same code, empty reason.
fn peer_echo() -> CloseStatus {
    status(4000, "")
}

/// The status the session fails the connection with.
fn failure() -> CloseStatus {
    status(1002, "protocol error")
}

fn close(waiter: WaiterId) -> Input {
    Input::Close {
        waiter,
        status: Some(ours()),
    }
}

fn close_output() -> Input {
    Input::CloseOutput(Some(ours()))
}

fn peer_close() -> Input {
    Input::PeerClose(Some(peer()))
}

fn peer_close_no_code() -> Input {
    Input::PeerClose(None)
}

fn fail() -> Input {
    Input::Fail(failure())
}

fn answer(waiter: WaiterId, result: Result<CloseOutcome, CloseError>) -> Action {
    Action::Answer { waiter, result }
}

fn record(initiator: Initiator, mode: CloseMode, result: CloseResult) -> Option<CloseRecord> {
    Some(CloseRecord {
        initiator,
        mode,
        result,
    })
}

/// Feeds `inputs` in order; each must be accepted.
fn run(policy: ReplyPolicy, inputs: &[Input]) -> CloseMachine {
    let mut machine = CloseMachine::new(policy);
    for input in inputs {
        if let Err(err) = machine.handle(input.clone()) {
            panic!("{input:?} refused with {err:?} in {}", machine.state());
        }
    }
    machine
}

// ---------------------------------------------------------------------------------------------
// Start states
// ---------------------------------------------------------------------------------------------

/// The states of the table, with the two ways of reaching `CloseSent` told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// A fresh machine (echo policy, the server's).
    Open,
    /// `CloseSent` after an awaited close by waiter [`W`], who is still waiting.
    SentAwaited,
    /// `CloseSent` after a fire-and-forget close; nobody waits.
    SentOutput,
    /// `CloseReceived` after the peer's close carrying [`peer`]: manual policy only.
    Received,
    /// `Closed` after a client-initiated close, echoed.
    Closed,
    /// `Aborted` after an abort in `Open`.
    Aborted,
}

impl Start {
    const ALL: [Start; 6] = [
        Start::Open,
        Start::SentAwaited,
        Start::SentOutput,
        Start::Received,
        Start::Closed,
        Start::Aborted,
    ];

    fn state(self) -> CloseState {
        match self {
            Start::Open => CloseState::Open,
            Start::SentAwaited | Start::SentOutput => CloseState::CloseSent,
            Start::Received => CloseState::CloseReceived,
            Start::Closed => CloseState::Closed,
            Start::Aborted => CloseState::Aborted,
        }
    }
}

/// A machine in `start`, reached through the public API.
fn machine_in(start: Start) -> CloseMachine {
    let machine = match start {
        Start::Open => CloseMachine::new(ReplyPolicy::Echo),
        Start::SentAwaited => run(ReplyPolicy::Echo, &[close(W)]),
        Start::SentOutput => run(ReplyPolicy::Echo, &[close_output()]),
        Start::Received => run(ReplyPolicy::Manual, &[peer_close()]),
        Start::Closed => run(ReplyPolicy::Echo, &[peer_close()]),
        Start::Aborted => run(ReplyPolicy::Echo, &[Input::Abort]),
    };
    assert_eq!(machine.state(), start.state(), "machine_in({start:?})");
    let expected_waiting: &[WaiterId] = if start == Start::SentAwaited {
        &[W]
    } else {
        &[]
    };
    assert_eq!(machine.waiting(), expected_waiting, "machine_in({start:?})");
    machine
}

#[test]
fn machine_in_reaches_every_start_state() {
    for start in Start::ALL {
        machine_in(start);
    }
}

// ---------------------------------------------------------------------------------------------
// The table: every (state, input) pair
// ---------------------------------------------------------------------------------------------

/// The inputs of the table, one of each kind.
fn table_inputs() -> Vec<Input> {
    vec![
        close(NEW),
        close_output(),
        peer_close(),
        peer_close_no_code(),
        Input::AckTimeout,
        Input::Cancel(W),
        Input::Cancel(UNKNOWN),
        fail(),
        Input::Abort,
        Input::TransportEnded,
    ]
}

struct Row {
    start: Start,
    input: Input,
    end: CloseState,
    expect: Result<Vec<Action>, CloseError>,
}

fn row(
    start: Start,
    input: Input,
    end: CloseState,
    expect: Result<Vec<Action>, CloseError>,
) -> Row {
    Row {
        start,
        input,
        end,
        expect,
    }
}

/// The rules, one row per (state, input) pair: start, input, state after, `handle`'s result
/// (the actions in order, or the refusal).
#[rustfmt::skip]
fn table() -> Vec<Row> {
    use CloseError::{AlreadyClosed, Cancelled, OutputClosed};
    use CloseState as S;
    use Start::*;

    /// The refusal, or the answer, of an aborted session.
    fn aborted<T>() -> Result<T, CloseError> {
        Err(CloseError::Aborted)
    }
    let nothing = || Ok(Vec::new());

    vec![
        // Open: a server close sends the frame and arms the timer; a peer close is echoed (same
        // code, empty reason) and ends the connection; a failure sends its status and ends.
        row(Open, close(NEW),             S::CloseSent, Ok(vec![SendClose(Some(ours())), StartAckTimer])),
        row(Open, close_output(),         S::CloseSent, Ok(vec![SendClose(Some(ours())), StartAckTimer])),
        row(Open, peer_close(),           S::Closed,    Ok(vec![SendClose(Some(peer_echo())), EndConnection])),
        row(Open, peer_close_no_code(),   S::Closed,    Ok(vec![SendClose(None), EndConnection])),
        row(Open, Input::AckTimeout,      S::Open,      nothing()),
        row(Open, Input::Cancel(W),       S::Open,      nothing()),
        row(Open, Input::Cancel(UNKNOWN), S::Open,      nothing()),
        row(Open, fail(),                 S::Aborted,   Ok(vec![SendClose(Some(failure())), EndConnection])),
        row(Open, Input::Abort,           S::Aborted,   Ok(vec![AbortConnection])),
        row(Open, Input::TransportEnded,  S::Aborted,   Ok(vec![AbortConnection])),

        // CloseSent after an awaited close by W: another awaited close joins the wait; the
        // peer's close is the ack; everything else that ends the session answers W.
        row(SentAwaited, close(NEW),             S::CloseSent, nothing()),
        row(SentAwaited, close_output(),         S::CloseSent, Err(OutputClosed)),
        row(SentAwaited, peer_close(),           S::Closed,    Ok(vec![answer(W, Ok(Acked(Some(peer())))), EndConnection])),
        row(SentAwaited, peer_close_no_code(),   S::Closed,    Ok(vec![answer(W, Ok(Acked(None))), EndConnection])),
        row(SentAwaited, Input::AckTimeout,      S::Aborted,   Ok(vec![answer(W, Ok(TimedOut)), AbortConnection])),
        row(SentAwaited, Input::Cancel(W),       S::CloseSent, Ok(vec![answer(W, Err(Cancelled))])),
        row(SentAwaited, Input::Cancel(UNKNOWN), S::CloseSent, nothing()),
        row(SentAwaited, fail(),                 S::Aborted,   Ok(vec![answer(W, aborted()), AbortConnection])),
        row(SentAwaited, Input::Abort,           S::Aborted,   Ok(vec![answer(W, aborted()), AbortConnection])),
        row(SentAwaited, Input::TransportEnded,  S::Aborted,   Ok(vec![answer(W, aborted()), AbortConnection])),

        // CloseSent after a fire-and-forget close: the same rules, with nobody to answer.
        row(SentOutput, close(NEW),             S::CloseSent, nothing()),
        row(SentOutput, close_output(),         S::CloseSent, Err(OutputClosed)),
        row(SentOutput, peer_close(),           S::Closed,    Ok(vec![EndConnection])),
        row(SentOutput, peer_close_no_code(),   S::Closed,    Ok(vec![EndConnection])),
        row(SentOutput, Input::AckTimeout,      S::Aborted,   Ok(vec![AbortConnection])),
        row(SentOutput, Input::Cancel(W),       S::CloseSent, nothing()),
        row(SentOutput, Input::Cancel(UNKNOWN), S::CloseSent, nothing()),
        row(SentOutput, fail(),                 S::Aborted,   Ok(vec![AbortConnection])),
        row(SentOutput, Input::Abort,           S::Aborted,   Ok(vec![AbortConnection])),
        row(SentOutput, Input::TransportEnded,  S::Aborted,   Ok(vec![AbortConnection])),

        // CloseReceived (manual policy): either close replies and completes the handshake; an
        // awaited close is answered at once with the peer's status. Later peer frames and
        // stale timers are ignored.
        row(Received, close(NEW),             S::Closed,        Ok(vec![SendClose(Some(ours())), EndConnection,
                                                                        answer(NEW, Ok(Acked(Some(peer()))))])),
        row(Received, close_output(),         S::Closed,        Ok(vec![SendClose(Some(ours())), EndConnection])),
        row(Received, peer_close(),           S::CloseReceived, nothing()),
        row(Received, peer_close_no_code(),   S::CloseReceived, nothing()),
        row(Received, Input::AckTimeout,      S::CloseReceived, nothing()),
        row(Received, Input::Cancel(W),       S::CloseReceived, nothing()),
        row(Received, Input::Cancel(UNKNOWN), S::CloseReceived, nothing()),
        row(Received, fail(),                 S::Aborted,       Ok(vec![SendClose(Some(failure())), EndConnection])),
        row(Received, Input::Abort,           S::Aborted,       Ok(vec![AbortConnection])),
        row(Received, Input::TransportEnded,  S::Aborted,       Ok(vec![AbortConnection])),

        // Closed: close requests are refused (.NET: disposed); everything else is a no-op.
        row(Closed, close(NEW),             S::Closed, Err(AlreadyClosed)),
        row(Closed, close_output(),         S::Closed, Err(AlreadyClosed)),
        row(Closed, peer_close(),           S::Closed, nothing()),
        row(Closed, peer_close_no_code(),   S::Closed, nothing()),
        row(Closed, Input::AckTimeout,      S::Closed, nothing()),
        row(Closed, Input::Cancel(W),       S::Closed, nothing()),
        row(Closed, Input::Cancel(UNKNOWN), S::Closed, nothing()),
        row(Closed, fail(),                 S::Closed, nothing()),
        row(Closed, Input::Abort,           S::Closed, nothing()),
        row(Closed, Input::TransportEnded,  S::Closed, nothing()),

        // Aborted: close requests are refused (.NET: aborted); everything else is a no-op.
        row(Aborted, close(NEW),             S::Aborted, aborted()),
        row(Aborted, close_output(),         S::Aborted, aborted()),
        row(Aborted, peer_close(),           S::Aborted, nothing()),
        row(Aborted, peer_close_no_code(),   S::Aborted, nothing()),
        row(Aborted, Input::AckTimeout,      S::Aborted, nothing()),
        row(Aborted, Input::Cancel(W),       S::Aborted, nothing()),
        row(Aborted, Input::Cancel(UNKNOWN), S::Aborted, nothing()),
        row(Aborted, fail(),                 S::Aborted, nothing()),
        row(Aborted, Input::Abort,           S::Aborted, nothing()),
        row(Aborted, Input::TransportEnded,  S::Aborted, nothing()),
    ]
}

#[test]
fn table_covers_every_state_input_pair_once() {
    let table = table();
    assert_eq!(table.len(), Start::ALL.len() * table_inputs().len());
    for start in Start::ALL {
        for input in table_inputs() {
            let rows = table
                .iter()
                .filter(|row| row.start == start && row.input == input)
                .count();
            assert_eq!(rows, 1, "rows for ({start:?}, {input:?})");
        }
    }
}

#[test]
fn table_of_every_state_input_pair() {
    for (index, row) in table().into_iter().enumerate() {
        let mut machine = machine_in(row.start);
        let before = format!("{machine:?}");
        let record_before = machine.record();
        let context = format!("row {index}: ({:?}, {:?})", row.start, row.input);

        let refused = row.expect.is_err();
        assert_eq!(machine.handle(row.input), row.expect, "{context}: result");
        assert_eq!(machine.state(), row.end, "{context}: state after");
        if refused {
            assert_eq!(
                format!("{machine:?}"),
                before,
                "{context}: a refusal changes nothing"
            );
        }
        if row.start.state().is_terminal() {
            assert_eq!(
                machine.record(),
                record_before,
                "{context}: the record is final"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Focused tests
// ---------------------------------------------------------------------------------------------

#[test]
fn echo_policy_replies_with_the_same_code_and_an_empty_reason() {
    for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        let mut machine = CloseMachine::new(ReplyPolicy::Echo);
        let actions = machine.handle(Input::PeerClose(Some(status(code, "some reason"))));
        assert_eq!(
            actions,
            Ok(vec![SendClose(Some(status(code, ""))), EndConnection]),
            "code {code}"
        );
        assert_eq!(machine.state(), CloseState::Closed);
    }
}

#[test]
fn echo_policy_replies_without_a_code_to_a_close_without_one() {
    let mut machine = CloseMachine::default();
    assert_eq!(
        machine.handle(Input::PeerClose(None)),
        Ok(vec![SendClose(None), EndConnection])
    );
    assert_eq!(machine.state(), CloseState::Closed);
}

#[test]
fn manual_policy_waits_in_close_received_until_the_application_closes() {
    let mut machine = CloseMachine::new(ReplyPolicy::Manual);
    assert_eq!(machine.handle(peer_close()), Ok(vec![]));
    assert_eq!(machine.state(), CloseState::CloseReceived);
    assert_eq!(machine.check_send(), Ok(()));
    assert_eq!(machine.on_data(), DataVerdict::Drop);
    assert_eq!(machine.record(), None);

    assert_eq!(
        machine.handle(close(NEW)),
        Ok(vec![
            SendClose(Some(ours())),
            EndConnection,
            answer(NEW, Ok(Acked(Some(peer())))),
        ])
    );
    assert_eq!(machine.state(), CloseState::Closed);
    assert!(machine.waiting().is_empty());
}

#[test]
fn awaited_close_then_peer_close_answers_the_waiter_with_the_peer_status() {
    let mut machine = CloseMachine::default();
    assert_eq!(
        machine.handle(close(W)),
        Ok(vec![SendClose(Some(ours())), StartAckTimer])
    );
    assert_eq!(machine.waiting(), &[W]);
    assert_eq!(
        machine.handle(peer_close()),
        Ok(vec![answer(W, Ok(Acked(Some(peer())))), EndConnection])
    );
    assert_eq!(machine.state(), CloseState::Closed);
    assert!(machine.waiting().is_empty());
}

#[test]
fn ack_timeout_answers_timed_out_and_aborts_the_connection() {
    let mut machine = run(ReplyPolicy::Echo, &[close(W)]);
    assert_eq!(
        machine.handle(Input::AckTimeout),
        Ok(vec![answer(W, Ok(TimedOut)), AbortConnection])
    );
    assert_eq!(machine.state(), CloseState::Aborted);
    assert!(machine.waiting().is_empty());
    // A late ack answers nobody a second time.
    assert_eq!(machine.handle(peer_close()), Ok(vec![]));
    assert_eq!(machine.state(), CloseState::Aborted);
}

#[test]
fn cancel_answers_cancelled_exactly_once_and_stays_close_sent() {
    let mut machine = run(ReplyPolicy::Echo, &[close(W)]);
    assert_eq!(
        machine.handle(Input::Cancel(W)),
        Ok(vec![answer(W, Err(CloseError::Cancelled))])
    );
    assert_eq!(machine.state(), CloseState::CloseSent);
    assert!(machine.waiting().is_empty());
    // The close frame stays sent: no data may follow it, none is delivered.
    assert_eq!(machine.check_send(), Err(CloseError::OutputClosed));
    assert_eq!(machine.on_data(), DataVerdict::Drop);

    assert_eq!(machine.handle(Input::Cancel(W)), Ok(vec![]));
    assert_eq!(machine.state(), CloseState::CloseSent);

    // The ack still ends the session, without a second answer.
    assert_eq!(machine.handle(peer_close()), Ok(vec![EndConnection]));
    assert_eq!(machine.state(), CloseState::Closed);
}

#[test]
fn cancelled_close_still_times_out_without_a_second_answer() {
    let mut machine = run(ReplyPolicy::Echo, &[close(W), Input::Cancel(W)]);
    assert_eq!(machine.handle(Input::AckTimeout), Ok(vec![AbortConnection]));
    assert_eq!(machine.state(), CloseState::Aborted);
    assert_eq!(
        machine.record(),
        record(Initiator::Server, CloseMode::Awaited, CloseResult::Timeout)
    );
}

#[test]
fn awaited_close_after_close_output_waits_for_the_same_ack_and_drops_data() {
    let mut machine = run(ReplyPolicy::Echo, &[close_output()]);
    assert_eq!(machine.on_data(), DataVerdict::Deliver);

    // No second frame, no second timer.
    assert_eq!(machine.handle(close(NEW)), Ok(vec![]));
    assert_eq!(machine.state(), CloseState::CloseSent);
    assert_eq!(machine.waiting(), &[NEW]);
    assert_eq!(machine.on_data(), DataVerdict::Drop);

    assert_eq!(
        machine.handle(peer_close()),
        Ok(vec![answer(NEW, Ok(Acked(Some(peer())))), EndConnection])
    );
    assert_eq!(machine.state(), CloseState::Closed);
}

#[test]
fn close_output_is_refused_once_the_close_frame_is_sent() {
    for start in [Start::SentAwaited, Start::SentOutput] {
        let mut machine = machine_in(start);
        assert_eq!(
            machine.handle(Input::CloseOutput(None)),
            Err(CloseError::OutputClosed),
            "{start:?}"
        );
    }
}

#[test]
fn on_data_verdicts_for_each_state_and_mode() {
    let cases = [
        (machine_in(Start::Open), DataVerdict::Deliver),
        (machine_in(Start::SentAwaited), DataVerdict::Drop),
        (machine_in(Start::SentOutput), DataVerdict::Deliver),
        (machine_in(Start::Received), DataVerdict::Drop),
        (machine_in(Start::Closed), DataVerdict::Drop),
        (machine_in(Start::Aborted), DataVerdict::Drop),
        // Awaited close after a close-output: dropped from then on.
        (
            run(ReplyPolicy::Echo, &[close_output(), close(NEW)]),
            DataVerdict::Drop,
        ),
        // Awaited close whose waiter gave up: still dropped.
        (
            run(ReplyPolicy::Echo, &[close(W), Input::Cancel(W)]),
            DataVerdict::Drop,
        ),
        // Ends of each mode.
        (
            run(ReplyPolicy::Echo, &[close(W), peer_close()]),
            DataVerdict::Drop,
        ),
        (
            run(ReplyPolicy::Echo, &[close_output(), peer_close()]),
            DataVerdict::Drop,
        ),
        (
            run(ReplyPolicy::Echo, &[close_output(), Input::AckTimeout]),
            DataVerdict::Drop,
        ),
        (run(ReplyPolicy::Echo, &[fail()]), DataVerdict::Drop),
        (
            run(ReplyPolicy::Manual, &[peer_close(), close_output()]),
            DataVerdict::Drop,
        ),
    ];
    for (index, (machine, verdict)) in cases.into_iter().enumerate() {
        assert_eq!(machine.on_data(), verdict, "case {index}: {machine:?}");
    }
}

#[test]
fn check_send_for_each_state() {
    let cases = [
        (Start::Open, Ok(())),
        (Start::SentAwaited, Err(CloseError::OutputClosed)),
        (Start::SentOutput, Err(CloseError::OutputClosed)),
        (Start::Received, Ok(())),
        (Start::Closed, Err(CloseError::AlreadyClosed)),
        (Start::Aborted, Err(CloseError::Aborted)),
    ];
    for (start, expected) in cases {
        assert_eq!(machine_in(start).check_send(), expected, "{start:?}");
    }
}

/// Every way a session can end, with its record; and some that have not ended.
#[rustfmt::skip]
fn record_cases() -> Vec<(ReplyPolicy, Vec<Input>, Option<CloseRecord>)> {
    use CloseMode::{Awaited, FireAndForget};
    use CloseResult::{Aborted, Acked, Error, Timeout};
    use Initiator::{Client, Server};
    use ReplyPolicy::{Echo, Manual};

    vec![
        // Client-initiated: the reply is sent at once (fire-and-forget), unless the manual
        // policy replies with an awaited close.
        (Echo,   vec![peer_close()],                                record(Client, FireAndForget, Acked)),
        (Echo,   vec![peer_close_no_code()],                        record(Client, FireAndForget, Acked)),
        (Manual, vec![peer_close(), close(NEW)],                    record(Client, Awaited, Acked)),
        (Manual, vec![peer_close(), close_output()],                record(Client, FireAndForget, Acked)),
        // Server-initiated, acked.
        (Echo,   vec![close(W), peer_close()],                      record(Server, Awaited, Acked)),
        (Echo,   vec![close(W), Input::Cancel(W), peer_close()],    record(Server, Awaited, Acked)),
        (Echo,   vec![close_output(), peer_close()],                record(Server, FireAndForget, Acked)),
        // The frame went out fire-and-forget; a later awaited closer does not change that.
        (Echo,   vec![close_output(), close(NEW), peer_close()],    record(Server, FireAndForget, Acked)),
        // Server-initiated, not acked in time.
        (Echo,   vec![close(W), Input::AckTimeout],                 record(Server, Awaited, Timeout)),
        (Echo,   vec![close_output(), Input::AckTimeout],           record(Server, FireAndForget, Timeout)),
        // Failed on the peer's bad input: the server's close frame is the first one.
        (Echo,   vec![fail()],                                      record(Server, FireAndForget, Error)),
        (Manual, vec![peer_close(), fail()],                        record(Client, FireAndForget, Error)),
        (Echo,   vec![close(W), fail()],                            record(Server, Awaited, Error)),
        (Echo,   vec![close_output(), fail()],                      record(Server, FireAndForget, Error)),
        // Dropped without a handshake.
        (Echo,   vec![Input::Abort],                                record(Server, FireAndForget, Aborted)),
        // A transport that ends by itself in Open: the peer vanished.
        (Echo,   vec![Input::TransportEnded],                       record(Client, FireAndForget, Aborted)),
        (Echo,   vec![close(W), Input::Abort],                      record(Server, Awaited, Aborted)),
        (Echo,   vec![close(W), Input::TransportEnded],             record(Server, Awaited, Aborted)),
        (Echo,   vec![close_output(), Input::Abort],                record(Server, FireAndForget, Aborted)),
        (Manual, vec![peer_close(), Input::Abort],                  record(Client, FireAndForget, Aborted)),
        (Manual, vec![peer_close(), Input::TransportEnded],         record(Client, FireAndForget, Aborted)),
        // Not ended: no record yet.
        (Echo,   vec![],                                            None),
        (Echo,   vec![close(W)],                                    None),
        (Echo,   vec![close_output()],                              None),
        (Echo,   vec![close(W), Input::Cancel(W)],                  None),
        (Manual, vec![peer_close()],                                None),
    ]
}

#[test]
fn record_for_each_way_to_end() {
    for (policy, inputs, expected) in record_cases() {
        let machine = run(policy, &inputs);
        assert_eq!(machine.record(), expected, "{policy:?} {inputs:?}");
    }
}

#[test]
fn every_waiter_is_answered_exactly_once() {
    let cancelled = Err(CloseError::Cancelled);
    let endings: Vec<(Input, Result<CloseOutcome, CloseError>, Action)> = vec![
        (peer_close(), Ok(Acked(Some(peer()))), EndConnection),
        (peer_close_no_code(), Ok(Acked(None)), EndConnection),
        (Input::AckTimeout, Ok(TimedOut), AbortConnection),
        (fail(), Err(CloseError::Aborted), AbortConnection),
        (Input::Abort, Err(CloseError::Aborted), AbortConnection),
        (
            Input::TransportEnded,
            Err(CloseError::Aborted),
            AbortConnection,
        ),
    ];
    for (ending, outcome, connection) in endings {
        let mut machine = run(ReplyPolicy::Echo, &[close(1), close(2), close(3)]);
        assert_eq!(machine.waiting(), &[1, 2, 3]);
        assert_eq!(
            machine.handle(Input::Cancel(2)),
            Ok(vec![answer(2, cancelled.clone())])
        );
        assert_eq!(machine.waiting(), &[1, 3]);

        // The others are answered in the order they asked.
        assert_eq!(
            machine.handle(ending.clone()),
            Ok(vec![
                answer(1, outcome.clone()),
                answer(3, outcome),
                connection
            ]),
            "{ending:?}"
        );
        assert!(machine.waiting().is_empty());

        // Nothing is answered after the end.
        for late in table_inputs() {
            if let Ok(actions) = machine.handle(late.clone()) {
                assert_eq!(actions, vec![], "{ending:?} then {late:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exhaustive invariants over short input sequences
// ---------------------------------------------------------------------------------------------

/// The inputs the enumeration draws from. Waiter ids repeat on purpose: a waiter id is
/// answered as often as it was accepted, never more.
fn alphabet() -> Vec<Input> {
    vec![
        close(1),
        Input::Close {
            waiter: 2,
            status: None,
        },
        close_output(),
        Input::CloseOutput(None),
        peer_close(),
        peer_close_no_code(),
        Input::AckTimeout,
        Input::Cancel(1),
        Input::Cancel(UNKNOWN),
        fail(),
        Input::Abort,
        Input::TransportEnded,
    ]
}

const MAX_SEQUENCE: u32 = 4;

/// What a sequence has done so far, as seen from the actions.
#[derive(Debug, Clone, Default)]
struct Ledger {
    close_frames: usize,
    timers: usize,
    connection_ends: usize,
    /// Awaited closes accepted, per waiter id.
    requested: BTreeMap<WaiterId, usize>,
    /// Answers given, per waiter id.
    answered: BTreeMap<WaiterId, usize>,
}

/// Feeds one input and checks every invariant that must hold after it.
fn step(machine: &mut CloseMachine, ledger: &mut Ledger, input: &Input, trail: &[Input]) {
    let before = format!("{machine:?}");
    let was_terminal = machine.state().is_terminal();
    let record_before = machine.record();

    match machine.handle(input.clone()) {
        Err(err) => {
            assert!(
                matches!(input, Input::Close { .. } | Input::CloseOutput(_)),
                "{trail:?}: only close requests may be refused, got {err:?}"
            );
            assert_eq!(
                format!("{machine:?}"),
                before,
                "{trail:?}: a refusal changes nothing"
            );
        }
        Ok(actions) => {
            if was_terminal {
                assert_eq!(actions, vec![], "{trail:?}: nothing happens after the end");
            }
            if let Input::Close { waiter, .. } = input {
                *ledger.requested.entry(*waiter).or_default() += 1;
            }
            let mut previous: Option<&Action> = None;
            for action in &actions {
                match action {
                    SendClose(_) => ledger.close_frames += 1,
                    StartAckTimer => {
                        assert!(
                            matches!(previous, Some(SendClose(_))),
                            "{trail:?}: the timer is armed right after the close frame"
                        );
                        ledger.timers += 1;
                    }
                    EndConnection | AbortConnection => ledger.connection_ends += 1,
                    Action::Answer { waiter, .. } => {
                        let answered = ledger.answered.entry(*waiter).or_default();
                        *answered += 1;
                        let requested = ledger.requested.get(waiter).copied().unwrap_or(0);
                        assert!(
                            *answered <= requested,
                            "{trail:?}: waiter {waiter} answered more often than it asked"
                        );
                    }
                }
                previous = Some(action);
            }
        }
    }

    let state = machine.state();
    let terminal = state.is_terminal();
    assert!(
        ledger.close_frames <= 1,
        "{trail:?}: close frame sent twice"
    );
    assert!(ledger.timers <= 1, "{trail:?}: ack timer armed twice");
    assert!(
        ledger.connection_ends <= 1,
        "{trail:?}: connection ended twice"
    );
    assert_eq!(
        ledger.connection_ends == 1,
        terminal,
        "{trail:?}: ends iff terminal"
    );
    assert_eq!(
        machine.record().is_some(),
        terminal,
        "{trail:?}: record iff terminal"
    );
    if was_terminal {
        assert_eq!(
            machine.record(),
            record_before,
            "{trail:?}: the record is final"
        );
    }
    if state == CloseState::CloseSent {
        assert_eq!(
            ledger.close_frames, 1,
            "{trail:?}: CloseSent without a close frame"
        );
    }
    if ledger.close_frames == 1 {
        assert!(
            machine.check_send().is_err(),
            "{trail:?}: data after the close frame"
        );
    }
    if terminal {
        assert_eq!(
            machine.on_data(),
            DataVerdict::Drop,
            "{trail:?}: data after the end"
        );
    }
    for (waiter, requested) in &ledger.requested {
        let answered = ledger.answered.get(waiter).copied().unwrap_or(0);
        let pending = machine.waiting().iter().filter(|w| *w == waiter).count();
        assert_eq!(
            pending,
            requested - answered,
            "{trail:?}: waiter {waiter} pending"
        );
        if terminal {
            assert_eq!(
                answered, *requested,
                "{trail:?}: waiter {waiter} left unanswered"
            );
        }
    }
    assert!(
        machine
            .waiting()
            .iter()
            .all(|w| ledger.requested.contains_key(w)),
        "{trail:?}: waiting for a waiter that never asked"
    );
}

/// Runs every continuation of `trail` up to `depth` more inputs; returns how many sequences
/// it checked.
fn explore(
    machine: &CloseMachine,
    ledger: &Ledger,
    trail: &mut Vec<Input>,
    depth: u32,
    alphabet: &[Input],
) -> usize {
    if depth == 0 {
        return 0;
    }
    let mut sequences = 0;
    for input in alphabet {
        let mut machine = machine.clone();
        let mut ledger = ledger.clone();
        trail.push(input.clone());
        step(&mut machine, &mut ledger, input, trail);
        sequences += 1 + explore(&machine, &ledger, trail, depth - 1, alphabet);
        trail.pop();
    }
    sequences
}

#[test]
fn invariants_hold_for_every_input_sequence_up_to_length_4() {
    let alphabet = alphabet();
    let per_policy: usize = (1..=MAX_SEQUENCE).map(|n| alphabet.len().pow(n)).sum();
    for policy in [ReplyPolicy::Echo, ReplyPolicy::Manual] {
        let machine = CloseMachine::new(policy);
        let checked = explore(
            &machine,
            &Ledger::default(),
            &mut Vec::new(),
            MAX_SEQUENCE,
            &alphabet,
        );
        assert_eq!(checked, per_policy, "{policy:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// CloseStatus validation
// ---------------------------------------------------------------------------------------------

/// The codes SPEC.md lists as never allowed on the wire.
fn forbidden_by_spec(code: u16) -> bool {
    code < 1000 || matches!(code, 1004..=1006 | 1015 | 1016..=2999) || code >= 5000
}

#[test]
fn every_code_is_sendable_exactly_when_the_spec_allows_it() {
    let mut sendable = 0;
    for code in 0..=u16::MAX {
        let allowed = !forbidden_by_spec(code);
        assert_eq!(is_sendable_code(code), allowed, "code {code}");
        match CloseStatus::new(code, "") {
            Ok(status) => {
                assert!(allowed, "code {code} accepted");
                assert_eq!(status.code(), code);
                assert_eq!(status.reason(), "");
                sendable += 1;
            }
            Err(err) => {
                assert!(!allowed, "code {code} refused");
                assert_eq!(err, CloseError::InvalidCode(code));
            }
        }
    }
    // 1000-1003, 1007-1014, 3000-4999.
    assert_eq!(sendable, 4 + 8 + 2000);
}

#[test]
fn boundary_codes() {
    let cases = [
        (999, false),
        (1000, true),
        (1003, true),
        (1004, false),
        (1005, false),
        (1006, false),
        (1007, true),
        (1014, true),
        (1015, false),
        (1016, false),
        (2999, false),
        (3000, true),
        (4999, true),
        (5000, false),
    ];
    for (code, sendable) in cases {
        assert_eq!(is_sendable_code(code), sendable, "code {code}");
        let expected = if sendable {
            Ok(code)
        } else {
            Err(CloseError::InvalidCode(code))
        };
        assert_eq!(
            CloseStatus::new(code, "why").map(|s| s.code()),
            expected,
            "code {code}"
        );
    }
}

#[test]
fn reason_of_123_bytes_is_accepted() {
    let ascii = "a".repeat(123);
    // 61 two-byte characters and one ASCII one: 62 characters, 123 bytes.
    let two_byte = format!("{}a", "é".repeat(61));
    // 30 four-byte characters and three ASCII ones: 123 bytes.
    let four_byte = format!("{}abc", "😀".repeat(30));
    for reason in [ascii, two_byte, four_byte] {
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        let status = CloseStatus::new(1000, reason.clone()).expect("123 bytes fit");
        assert_eq!(status.reason(), reason);
    }
}

#[test]
fn reason_of_124_bytes_is_rejected() {
    let ascii = "a".repeat(124);
    // 62 characters but 124 bytes: the limit counts bytes, not characters.
    let two_byte = "é".repeat(62);
    let four_byte = "😀".repeat(31);
    for reason in [ascii, two_byte, four_byte] {
        assert_eq!(reason.len(), 124);
        assert_eq!(
            CloseStatus::new(1000, reason.clone()),
            Err(CloseError::ReasonTooLong(124)),
            "{reason}"
        );
    }
}

#[test]
fn an_invalid_code_is_reported_before_a_long_reason() {
    assert_eq!(
        CloseStatus::new(1005, "a".repeat(200)),
        Err(CloseError::InvalidCode(1005))
    );
}

#[test]
fn optional_status() {
    assert_eq!(
        CloseStatus::optional(None, "x"),
        Err(CloseError::ReasonWithoutCode)
    );
    assert_eq!(CloseStatus::optional(None, ""), Ok(None));
    assert_eq!(
        CloseStatus::optional(Some(1000), ""),
        Ok(Some(status(1000, "")))
    );
    assert_eq!(
        CloseStatus::optional(Some(4000), "why"),
        Ok(Some(status(4000, "why")))
    );
    assert_eq!(
        CloseStatus::optional(Some(1005), ""),
        Err(CloseError::InvalidCode(1005))
    );
    assert_eq!(
        CloseStatus::optional(Some(1000), &"a".repeat(124)),
        Err(CloseError::ReasonTooLong(124))
    );
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

#[test]
fn labels_match_the_metric_labels_of_the_spec() {
    assert_eq!(Initiator::Client.as_str(), "client");
    assert_eq!(Initiator::Server.as_str(), "server");
    assert_eq!(CloseMode::Awaited.as_str(), "awaited");
    assert_eq!(CloseMode::FireAndForget.as_str(), "fire_and_forget");
    assert_eq!(CloseMode::FireAndForget.to_string(), "fire_and_forget");
    assert_eq!(CloseResult::Acked.as_str(), "acked");
    assert_eq!(CloseResult::Timeout.as_str(), "timeout");
    assert_eq!(CloseResult::Aborted.as_str(), "aborted");
    assert_eq!(CloseResult::Error.as_str(), "error");
}

#[test]
fn close_mode_deserializes_from_its_label() {
    use serde::de::value::{Error, StrDeserializer};
    use serde::Deserialize;

    for mode in [CloseMode::Awaited, CloseMode::FireAndForget] {
        let parsed = CloseMode::deserialize(StrDeserializer::<Error>::new(mode.as_str()));
        assert_eq!(parsed, Ok(mode));
    }
    assert!(CloseMode::deserialize(StrDeserializer::<Error>::new("Awaited")).is_err());
}

#[test]
fn only_closed_and_aborted_are_terminal() {
    let cases = [
        (CloseState::Open, false, "Open"),
        (CloseState::CloseSent, false, "CloseSent"),
        (CloseState::CloseReceived, false, "CloseReceived"),
        (CloseState::Closed, true, "Closed"),
        (CloseState::Aborted, true, "Aborted"),
    ];
    for (state, terminal, label) in cases {
        assert_eq!(state.is_terminal(), terminal, "{state}");
        assert_eq!(state.to_string(), label);
    }
}
