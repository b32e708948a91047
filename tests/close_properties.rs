//! Property tests of the public close-state machine (`wsgrace::close::CloseMachine`): random
//! input sequences of up to 40 inputs — awaited closes with fresh waiter ids, fire-and-forget
//! closes, peer closes with and without a status, ack timeouts, cancels of known and unknown
//! waiters, failures, aborts and vanished transports — under both reply policies, checked
//! against the invariants of SPEC "Close behaviour" after every step:
//!
//! - the session ends at most once, only in Closed or Aborted, and never leaves that state;
//!   `record()` is `Some` exactly when terminal and never changes afterwards;
//! - every accepted awaited close is answered exactly once over the whole sequence, no one else
//!   is answered, and `waiting()` is exactly the accepted callers not answered yet (so it is
//!   empty once terminal);
//! - at most one `SendClose`, never once terminal; after it `check_send()` is an error, and
//!   once an awaited close is in progress or the peer closed, data is dropped;
//! - `EndConnection` / `AbortConnection` at most once in total, exactly when the session ends;
//! - an `Err` from `handle` changes nothing.
//!
//! Shrunk counterexamples print as the input sequence that broke a rule.

use proptest::prelude::*;
use wsgrace::close::{
    Action, CloseError, CloseMachine, CloseOutcome, CloseRecord, CloseState, CloseStatus,
    DataVerdict, Input, ReplyPolicy, WaiterId,
};

/// One step of a generated sequence, before waiter ids are assigned.
#[derive(Debug, Clone)]
enum Step {
    /// Awaited close from a new caller (a fresh waiter id).
    Close(Option<u16>),
    CloseOutput(Option<u16>),
    PeerClose(Option<u16>),
    AckTimeout,
    /// Cancel the n-th accepted caller (modulo their number), answered or not; an unknown id
    /// when there is none yet.
    CancelKnown(usize),
    /// Cancel an id that was never used.
    CancelUnknown,
    Fail(u16),
    Abort,
    TransportEnded,
}

/// Codes that may be sent, with the edges of each range.
fn sendable_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(1000u16),
        Just(1001),
        Just(1003),
        Just(1007),
        Just(1014),
        Just(3000),
        Just(4999),
        3000u16..5000,
    ]
}

fn status() -> impl Strategy<Value = Option<u16>> {
    proptest::option::of(sendable_code())
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => status().prop_map(Step::Close),
        2 => status().prop_map(Step::CloseOutput),
        3 => status().prop_map(Step::PeerClose),
        2 => Just(Step::AckTimeout),
        2 => any::<usize>().prop_map(Step::CancelKnown),
        1 => Just(Step::CancelUnknown),
        1 => prop_oneof![Just(1002u16), Just(1003), Just(1007), Just(1008), Just(1009)]
            .prop_map(Step::Fail),
        1 => Just(Step::Abort),
        1 => Just(Step::TransportEnded),
    ]
}

fn close_status(code: Option<u16>) -> Option<CloseStatus> {
    code.map(|code| CloseStatus::new(code, format!("r{code}")).expect("a sendable code"))
}

/// Ids that are never handed to a Close input.
const UNKNOWN_WAITER: WaiterId = 1 << 40;

/// What the sequence did so far, as seen from outside the machine.
struct Ledger {
    policy: ReplyPolicy,
    next_waiter: WaiterId,
    /// Accepted awaited closes, in order.
    accepted: Vec<WaiterId>,
    /// How often each accepted waiter was answered (same index as `accepted`).
    answers: Vec<usize>,
    send_close: usize,
    ends: usize,
    /// An accepted awaited close while our close frame is out or before it: data must drop.
    awaited: bool,
    peer_closed: bool,
    terminal_record: Option<CloseRecord>,
    terminal_state: Option<CloseState>,
    trail: Vec<Input>,
}

impl Ledger {
    fn new(policy: ReplyPolicy) -> Self {
        Ledger {
            policy,
            next_waiter: 0,
            accepted: Vec::new(),
            answers: Vec::new(),
            send_close: 0,
            ends: 0,
            awaited: false,
            peer_closed: false,
            terminal_record: None,
            terminal_state: None,
            trail: Vec::new(),
        }
    }

    fn input(&mut self, step: &Step) -> Input {
        match step {
            Step::Close(code) => {
                let waiter = self.next_waiter;
                self.next_waiter += 1;
                Input::Close {
                    waiter,
                    status: close_status(*code),
                }
            }
            Step::CloseOutput(code) => Input::CloseOutput(close_status(*code)),
            Step::PeerClose(code) => Input::PeerClose(close_status(*code)),
            Step::AckTimeout => Input::AckTimeout,
            Step::CancelKnown(n) => match self.accepted.len() {
                0 => Input::Cancel(UNKNOWN_WAITER),
                len => Input::Cancel(self.accepted[n % len]),
            },
            Step::CancelUnknown => Input::Cancel(UNKNOWN_WAITER + self.trail.len() as u64),
            Step::Fail(code) => {
                Input::Fail(CloseStatus::new(*code, "bad input").expect("a sendable code"))
            }
            Step::Abort => Input::Abort,
            Step::TransportEnded => Input::TransportEnded,
        }
    }

    fn outstanding(&self) -> Vec<WaiterId> {
        self.accepted
            .iter()
            .zip(&self.answers)
            .filter(|(_, n)| **n == 0)
            .map(|(w, _)| *w)
            .collect()
    }

    /// Feeds `input` and checks every rule; `Err` names the broken rule.
    fn step(&mut self, machine: &mut CloseMachine, input: Input) -> Result<(), TestCaseError> {
        self.trail.push(input.clone());
        let trail = format!("{:?} {:?}", self.policy, self.trail);
        let before = machine.state();
        let waiting_before = machine.waiting().to_vec();
        let record_before = machine.record();

        let actions = match machine.handle(input.clone()) {
            Err(err) => {
                prop_assert!(
                    matches!(input, Input::Close { .. } | Input::CloseOutput(_)),
                    "only close requests may be refused, got {err:?} after {trail}"
                );
                let expected = match before {
                    CloseState::Closed => CloseError::AlreadyClosed,
                    CloseState::Aborted => CloseError::Aborted,
                    _ => CloseError::OutputClosed,
                };
                prop_assert_eq!(&err, &expected, "refusal after {}", trail);
                prop_assert!(
                    !matches!(input, Input::Close { .. }) || before.is_terminal(),
                    "an awaited close may only be refused once terminal: {trail}"
                );
                prop_assert_eq!(
                    machine.state(),
                    before,
                    "a refusal moved the state: {}",
                    trail
                );
                prop_assert_eq!(
                    machine.waiting(),
                    &waiting_before[..],
                    "a refusal changed waiting(): {}",
                    trail
                );
                prop_assert_eq!(machine.record(), record_before, "a refusal: {}", trail);
                return self.check_state(machine, &trail);
            }
            Ok(actions) => actions,
        };

        if let Input::Close { waiter, .. } = input {
            self.accepted.push(waiter);
            self.answers.push(0);
            if !machine.state().is_terminal() {
                self.awaited = true;
            }
        }
        if matches!(input, Input::PeerClose(_)) && !before.is_terminal() {
            self.peer_closed = true;
        }

        if before.is_terminal() {
            prop_assert!(
                actions.is_empty(),
                "actions {actions:?} after the end: {trail}"
            );
        }

        let mut cancelled = false;
        for action in &actions {
            match action {
                Action::SendClose(status) => {
                    self.send_close += 1;
                    prop_assert_eq!(self.send_close, 1, "a second close frame: {}", trail);
                    prop_assert!(
                        !before.is_terminal(),
                        "a close frame after the end: {trail}"
                    );
                    // The server's rule: the reply carries the peer's code.
                    if let (ReplyPolicy::Echo, CloseState::Open, Input::PeerClose(peer)) =
                        (self.policy, before, &input)
                    {
                        prop_assert_eq!(
                            status.as_ref().map(CloseStatus::code),
                            peer.as_ref().map(CloseStatus::code),
                            "the reply does not echo the peer's code: {}",
                            trail
                        );
                    }
                }
                Action::StartAckTimer => {
                    prop_assert!(
                        actions.iter().any(|a| matches!(a, Action::SendClose(_))),
                        "an ack timer without a close frame: {trail}"
                    );
                }
                Action::EndConnection | Action::AbortConnection => {
                    self.ends += 1;
                    prop_assert_eq!(self.ends, 1, "the connection ended twice: {}", trail);
                }
                Action::Answer { waiter, result } => {
                    let Some(index) = self.accepted.iter().position(|w| w == waiter) else {
                        return Err(TestCaseError::fail(format!(
                            "answered {waiter}, who never asked: {trail}"
                        )));
                    };
                    self.answers[index] += 1;
                    prop_assert_eq!(
                        self.answers[index],
                        1,
                        "waiter {} answered twice: {}",
                        waiter,
                        trail
                    );
                    if let Input::Cancel(cancelled_waiter) = input {
                        prop_assert_eq!(*waiter, cancelled_waiter, "{}", trail);
                        prop_assert_eq!(result, &Err(CloseError::Cancelled), "{}", trail);
                        cancelled = true;
                    }
                    self.check_answer(machine, result, &trail)?;
                }
            }
        }
        if let Input::Cancel(waiter) = input {
            prop_assert_eq!(
                cancelled,
                waiting_before.contains(&waiter),
                "a cancel is answered exactly when its caller still waits: {}",
                trail
            );
        }
        if before.is_terminal() {
            prop_assert_eq!(machine.state(), before, "left a terminal state: {}", trail);
            prop_assert_eq!(machine.record(), record_before, "record changed: {}", trail);
        }
        self.check_state(machine, &trail)
    }

    /// An answer matches how the session ended (or was cancelled, or replied at once).
    fn check_answer(
        &self,
        machine: &CloseMachine,
        result: &Result<CloseOutcome, CloseError>,
        trail: &str,
    ) -> Result<(), TestCaseError> {
        match (machine.state(), result) {
            (_, Err(CloseError::Cancelled)) => {}
            (CloseState::Closed, Ok(CloseOutcome::Acked(_))) => {}
            (CloseState::Aborted, Ok(CloseOutcome::TimedOut) | Err(CloseError::Aborted)) => {}
            (state, result) => prop_assert!(false, "answer {result:?} in {state}: {trail}"),
        }
        Ok(())
    }

    /// Invariants of the state after every step, accepted or refused.
    fn check_state(&mut self, machine: &CloseMachine, trail: &str) -> Result<(), TestCaseError> {
        let state = machine.state();
        prop_assert_eq!(
            machine.record().is_some(),
            state.is_terminal(),
            "record() in {}: {}",
            state,
            trail
        );
        if let Some(terminal) = self.terminal_state {
            prop_assert_eq!(state, terminal, "left {}: {}", terminal, trail);
            prop_assert_eq!(machine.record(), self.terminal_record, "{}", trail);
        } else if state.is_terminal() {
            prop_assert!(matches!(state, CloseState::Closed | CloseState::Aborted));
            self.terminal_state = Some(state);
            self.terminal_record = machine.record();
        }
        prop_assert_eq!(
            self.ends,
            usize::from(state.is_terminal()),
            "the connection must end exactly when the session does ({}): {}",
            state,
            trail
        );

        let mut waiting = machine.waiting().to_vec();
        let mut outstanding = self.outstanding();
        waiting.sort_unstable();
        outstanding.sort_unstable();
        prop_assert_eq!(
            &waiting,
            &outstanding,
            "waiting() is not the callers still unanswered: {}",
            trail
        );
        if state.is_terminal() {
            prop_assert!(
                waiting.is_empty(),
                "callers left waiting at the end: {trail}"
            );
        }

        if self.send_close > 0 {
            prop_assert!(
                machine.check_send().is_err(),
                "sending allowed after the close frame: {trail}"
            );
        }
        match state {
            CloseState::Open => prop_assert!(machine.check_send().is_ok(), "{trail}"),
            CloseState::CloseSent => {
                prop_assert_eq!(
                    machine.check_send(),
                    Err(CloseError::OutputClosed),
                    "{}",
                    trail
                )
            }
            CloseState::Closed => {
                prop_assert_eq!(
                    machine.check_send(),
                    Err(CloseError::AlreadyClosed),
                    "{}",
                    trail
                )
            }
            CloseState::Aborted => {
                prop_assert_eq!(machine.check_send(), Err(CloseError::Aborted), "{}", trail)
            }
            CloseState::CloseReceived => {}
        }
        if self.awaited || self.peer_closed || state.is_terminal() {
            prop_assert_eq!(
                machine.on_data(),
                DataVerdict::Drop,
                "data delivered during an awaited close, after the peer's or after the end: {}",
                trail
            );
        }
        if state == CloseState::Open {
            prop_assert_eq!(machine.on_data(), DataVerdict::Deliver, "{}", trail);
        }
        Ok(())
    }
}

/// How a sequence is brought to its end, so that every caller must have been answered.
#[derive(Debug, Clone, Copy)]
enum Last {
    Abort,
    TransportEnded,
    /// The ack timeout if our close frame is out (the timer path), else an abort.
    TimeoutOrAbort,
}

/// Runs `steps` under `policy`, then ends a session still running with `last`, and checks that
/// every accepted caller got exactly one answer.
fn run(policy: ReplyPolicy, steps: &[Step], last: Last) -> Result<(), TestCaseError> {
    let mut machine = CloseMachine::new(policy);
    let mut ledger = Ledger::new(policy);
    for step in steps {
        let input = ledger.input(step);
        ledger.step(&mut machine, input)?;
    }
    let last = match last {
        Last::Abort => Input::Abort,
        Last::TransportEnded => Input::TransportEnded,
        Last::TimeoutOrAbort if machine.state() == CloseState::CloseSent => Input::AckTimeout,
        Last::TimeoutOrAbort => Input::Abort,
    };
    ledger.step(&mut machine, last.clone())?;
    let trail = format!("{:?} {:?}", policy, ledger.trail);
    prop_assert!(
        machine.state().is_terminal(),
        "{last:?} did not end: {trail}"
    );
    prop_assert!(machine.waiting().is_empty(), "{trail}");
    for (waiter, n) in ledger.accepted.iter().zip(&ledger.answers) {
        prop_assert_eq!(*n, 1, "waiter {} answered {} times: {}", waiter, n, trail);
    }
    prop_assert!(ledger.send_close <= 1 && ledger.ends == 1, "{trail}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_random_input_sequences(
        steps in proptest::collection::vec(step(), 0..=40),
        last in prop_oneof![Just(Last::Abort), Just(Last::TransportEnded)],
    ) {
        for policy in [ReplyPolicy::Echo, ReplyPolicy::Manual] {
            run(policy, &steps, last)?;
        }
    }

    /// Sequences made mostly of closes and peer closes reach the handshake paths more often
    /// than the uniform mix, where an early abort ends most sequences.
    #[test]
    fn invariants_hold_for_close_heavy_sequences(
        steps in proptest::collection::vec(
            prop_oneof![
                4 => status().prop_map(Step::Close),
                3 => status().prop_map(Step::CloseOutput),
                3 => status().prop_map(Step::PeerClose),
                2 => any::<usize>().prop_map(Step::CancelKnown),
                1 => Just(Step::CancelUnknown),
                1 => Just(Step::AckTimeout),
            ],
            0..=40,
        ),
    ) {
        for policy in [ReplyPolicy::Echo, ReplyPolicy::Manual] {
            run(policy, &steps, Last::TimeoutOrAbort)?;
        }
    }
}
