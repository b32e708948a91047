//! The presence rules as a table: sequences of joins, leaves of each kind, time passing,
//! leases renewed or not (a node dying), restores, each step with the changes it must make
//! and the names present after it.

use super::*;

const A: NodeId = 0xa;
const B: NodeId = 0xb;
/// A node's lease, as the Redis broker renews it.
const TTL: Millis = 30_000;

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Step {
    /// `node` joins `name` at `at` (with a lease `at + TTL` when `leased`).
    Join(NodeId, &'static str, Millis, bool),
    /// `node` leaves `name` for good at `at`.
    Leave(NodeId, &'static str, Millis),
    /// `node`'s session `session` named `name` goes away at `at`, kept for `keep` ms.
    Keep(NodeId, u64, &'static str, Millis, Millis),
    /// `node` renews its lease at `at` (to `at + TTL`).
    Renew(NodeId, Millis),
    /// Time passes: a sweep at `at`.
    Sweep(Millis),
    /// `node` says its live sessions are these, at `at`, leased.
    Restore(NodeId, &'static [(&'static str, u32)], Millis),
}

fn joined(name: &str) -> PresenceChange {
    PresenceChange::Joined(Arc::from(name))
}

fn left(name: &str) -> PresenceChange {
    PresenceChange::Left(Arc::from(name))
}

fn run(ledger: &mut Ledger, step: &Step) -> Vec<PresenceChange> {
    let mut changes = Vec::new();
    match *step {
        Step::Join(node, name, at, leased) => {
            ledger.join(node, name, at, leased.then_some(at + TTL), &mut changes)
        }
        Step::Leave(node, name, at) => ledger.leave(node, name, at, &mut changes),
        Step::Keep(node, session, name, at, keep) => {
            ledger.keep(node, session, name, at, at + keep, &mut changes)
        }
        Step::Renew(node, at) => ledger.renew(node, at, at + TTL, &mut changes),
        Step::Sweep(at) => ledger.sweep(at, &mut changes),
        Step::Restore(node, counts, at) => {
            let counts: Vec<(Arc<str>, u32)> = counts
                .iter()
                .map(|(name, count)| (Arc::from(*name), *count))
                .collect();
            ledger.restore(node, &counts, at, Some(at + TTL), &mut changes)
        }
    }
    assert_deadlines_indexed(ledger);
    changes
}

/// The deadline index holds exactly the holders' deadlines.
fn assert_deadlines_indexed(ledger: &Ledger) {
    let mut expected: Vec<(Millis, Holder)> = ledger
        .holders
        .iter()
        .filter_map(|(holder, holding)| holding.deadline.map(|deadline| (deadline, *holder)))
        .collect();
    expected.sort_unstable();
    let indexed: Vec<(Millis, Holder)> = ledger.deadlines.iter().copied().collect();
    assert_eq!(indexed, expected);
}

fn present(ledger: &Ledger) -> Vec<(String, u32)> {
    ledger
        .members()
        .into_iter()
        .map(|member| (member.name.to_string(), member.connections))
        .collect()
}

type Row = (
    &'static str,
    Vec<(Step, Vec<PresenceChange>, Vec<(&'static str, u32)>)>,
);

#[test]
fn presence_rules() {
    use Step::*;
    let rows: Vec<Row> = vec![
        (
            "a join and a leave: one event each",
            vec![
                (
                    Join(A, "ann", 0, false),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Leave(A, "ann", 10), vec![left("ann")], vec![]),
            ],
        ),
        (
            "a second tab says nothing, on the same node or another",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Join(A, "ann", 1, true), vec![], vec![("ann", 2)]),
                (Join(B, "ann", 2, true), vec![], vec![("ann", 3)]),
                (Leave(A, "ann", 3), vec![], vec![("ann", 2)]),
                (Leave(B, "ann", 4), vec![], vec![("ann", 1)]),
                (Leave(A, "ann", 5), vec![left("ann")], vec![]),
            ],
        ),
        (
            "a leave of a name the node does not count changes nothing",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Leave(B, "ann", 1), vec![], vec![("ann", 1)]),
                (Leave(A, "bob", 2), vec![], vec![("ann", 1)]),
            ],
        ),
        (
            "a drained member that comes back on another node in time: nothing at all",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (
                    Join(A, "bob", 0, true),
                    vec![joined("bob")],
                    vec![("ann", 1), ("bob", 1)],
                ),
                // The drain: going_away 2 s + grace 5 s.
                (
                    Keep(A, 1, "ann", 100, 7_000),
                    vec![],
                    vec![("ann", 1), ("bob", 1)],
                ),
                (
                    Join(B, "ann", 2_500, true),
                    vec![],
                    vec![("ann", 2), ("bob", 1)],
                ),
                (Sweep(7_099), vec![], vec![("ann", 2), ("bob", 1)]),
                (Sweep(7_100), vec![], vec![("ann", 1), ("bob", 1)]),
            ],
        ),
        (
            "a drained member that does not come back leaves at its deadline, not before",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Keep(A, 1, "ann", 100, 7_000), vec![], vec![("ann", 1)]),
                (Sweep(7_099), vec![], vec![("ann", 1)]),
                (Sweep(7_100), vec![left("ann")], vec![]),
                (Sweep(9_000), vec![], vec![]),
            ],
        ),
        (
            "a dropped connection is kept for the grace; a rejoin on the same node says nothing",
            vec![
                (
                    Join(A, "ann", 0, false),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Keep(A, 7, "ann", 50, 5_000), vec![], vec![("ann", 1)]),
                (Join(A, "ann", 1_000, false), vec![], vec![("ann", 2)]),
                (Sweep(5_050), vec![], vec![("ann", 1)]),
                (Leave(A, "ann", 6_000), vec![left("ann")], vec![]),
            ],
        ),
        (
            "a kept connection's deadline is checked by any later operation, not only a sweep",
            vec![
                (
                    Join(A, "ann", 0, false),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Keep(A, 7, "ann", 0, 5_000), vec![], vec![("ann", 1)]),
                (
                    Join(A, "bob", 6_000, false),
                    vec![left("ann"), joined("bob")],
                    vec![("bob", 1)],
                ),
            ],
        ),
        (
            "two tabs, one drained and one closed normally: the name stays until the kept one ends",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Join(A, "ann", 0, true), vec![], vec![("ann", 2)]),
                (Keep(A, 1, "ann", 10, 1_000), vec![], vec![("ann", 2)]),
                (Leave(A, "ann", 20), vec![], vec![("ann", 1)]),
                (Sweep(1_010), vec![left("ann")], vec![]),
            ],
        ),
        (
            "a node that dies: its members leave when its lease runs out; the living renew",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (
                    Join(A, "cat", 0, true),
                    vec![joined("cat")],
                    vec![("ann", 1), ("cat", 1)],
                ),
                (
                    Join(B, "bob", 0, true),
                    vec![joined("bob")],
                    vec![("ann", 1), ("bob", 1), ("cat", 1)],
                ),
                (
                    Renew(B, 10_000),
                    vec![],
                    vec![("ann", 1), ("bob", 1), ("cat", 1)],
                ),
                (
                    Renew(B, 20_000),
                    vec![],
                    vec![("ann", 1), ("bob", 1), ("cat", 1)],
                ),
                (
                    Sweep(29_999),
                    vec![],
                    vec![("ann", 1), ("bob", 1), ("cat", 1)],
                ),
                (
                    Sweep(30_000),
                    vec![left("ann"), left("cat")],
                    vec![("bob", 1)],
                ),
                (Renew(B, 30_000), vec![], vec![("bob", 1)]),
                (Sweep(59_999), vec![], vec![("bob", 1)]),
            ],
        ),
        (
            "a dead node's member already back on a living node: nobody sees it go",
            vec![
                (
                    Join(A, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (Join(B, "ann", 1_000, true), vec![], vec![("ann", 2)]),
                (Sweep(30_000), vec![], vec![("ann", 1)]),
            ],
        ),
        (
            "a restore after the broker lost everything: the node's sessions are back, said once",
            vec![
                (
                    Restore(A, &[("ann", 2), ("bob", 1)], 0),
                    vec![joined("ann"), joined("bob")],
                    vec![("ann", 2), ("bob", 1)],
                ),
                // Restoring what is already known changes nothing (a blip, not a loss).
                (
                    Restore(A, &[("ann", 2), ("bob", 1)], 10),
                    vec![],
                    vec![("ann", 2), ("bob", 1)],
                ),
                // Sessions that ended while the broker was away: their names leave.
                (
                    Restore(A, &[("ann", 1)], 20),
                    vec![left("bob")],
                    vec![("ann", 1)],
                ),
                (Restore(A, &[], 30), vec![left("ann")], vec![]),
            ],
        ),
        (
            "a restore leaves the other nodes' counts alone",
            vec![
                (
                    Join(B, "ann", 0, true),
                    vec![joined("ann")],
                    vec![("ann", 1)],
                ),
                (
                    Restore(A, &[("ann", 1), ("cat", 1)], 5),
                    vec![joined("cat")],
                    vec![("ann", 2), ("cat", 1)],
                ),
                (Restore(A, &[], 6), vec![left("cat")], vec![("ann", 1)]),
            ],
        ),
    ];
    for (what, steps) in rows {
        let mut ledger = Ledger::default();
        for (i, (step, changes, names)) in steps.iter().enumerate() {
            let got = run(&mut ledger, step);
            assert_eq!(&got, changes, "{what}: step {i} {step:?}: changes");
            let names: Vec<(String, u32)> =
                names.iter().map(|(n, c)| (n.to_string(), *c)).collect();
            assert_eq!(
                present(&ledger),
                names,
                "{what}: step {i} {step:?}: present"
            );
        }
    }
}

#[test]
fn the_next_deadline_is_the_earliest_kept_connection() {
    let mut ledger = Ledger::default();
    let mut changes = Vec::new();
    assert_eq!(ledger.next_deadline(), None);
    ledger.join(A, "ann", 0, Some(TTL), &mut changes);
    ledger.join(A, "bob", 0, Some(TTL), &mut changes);
    // A node's lease is not a kept connection's deadline.
    assert_eq!(ledger.next_deadline(), None);
    ledger.keep(A, 1, "ann", 0, 9_000, &mut changes);
    ledger.keep(A, 2, "bob", 0, 4_000, &mut changes);
    assert_eq!(ledger.next_deadline(), Some(4_000));
    ledger.sweep(4_000, &mut changes);
    assert_eq!(ledger.next_deadline(), Some(9_000));
    ledger.sweep(9_000, &mut changes);
    assert_eq!(ledger.next_deadline(), None);
    assert_eq!(
        changes,
        vec![joined("ann"), joined("bob"), left("bob"), left("ann")]
    );
}

#[test]
fn an_empty_local_ledger_is_empty_again() {
    let mut ledger = Ledger::default();
    let mut changes = Vec::new();
    ledger.join(A, "ann", 0, None, &mut changes);
    ledger.keep(A, 1, "ann", 0, 10, &mut changes);
    assert!(!ledger.is_empty());
    ledger.sweep(10, &mut changes);
    assert!(ledger.is_empty(), "{ledger:?}");
}

#[test]
fn a_kept_connection_that_ran_out_with_its_name_back_is_counted_as_rejoined() {
    let mut ledger = Ledger::default();
    let mut changes = Vec::new();
    ledger.join(A, "ann", 0, Some(TTL), &mut changes);
    ledger.join(A, "bob", 0, Some(TTL), &mut changes);
    ledger.keep(A, 1, "ann", 0, 1_000, &mut changes);
    ledger.keep(A, 2, "bob", 0, 1_000, &mut changes);
    ledger.join(B, "ann", 500, Some(TTL), &mut changes);
    ledger.sweep(1_000, &mut changes);
    assert_eq!(ledger.take_rejoined(), 1, "ann came back, bob did not");
    assert_eq!(ledger.take_rejoined(), 0);
}

#[test]
fn a_drain_of_many_kept_connections_ends_them_in_holder_order() {
    // A drain keeps every session for its own delay: the sweep that ends them all reports
    // the names in the order of their holders, whatever their deadlines.
    let mut ledger = Ledger::default();
    let mut changes = Vec::new();
    let names: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
    for name in &names {
        ledger.join(A, name, 0, None, &mut changes);
    }
    changes.clear();
    for (session, name) in names.iter().enumerate() {
        let until = 5000 - (session as Millis * 7) % 5000;
        ledger.keep(A, session as u64, name, 1, until, &mut changes);
    }
    assert!(changes.is_empty());
    assert_deadlines_indexed(&ledger);
    let earliest = (0..1000).map(|session| 5000 - (session * 7) % 5000).min();
    assert_eq!(ledger.next_deadline(), earliest);
    ledger.sweep(2500, &mut changes);
    let early = changes.len();
    assert!(early > 0 && early < 1000, "{early}");
    ledger.sweep(5000, &mut changes);
    let expected: Vec<PresenceChange> = {
        let mut by_deadline: Vec<(bool, usize)> = (0..1000)
            .map(|session| (5000 - (session as Millis * 7) % 5000 > 2500, session))
            .collect();
        by_deadline.sort_unstable();
        by_deadline
            .into_iter()
            .map(|(_, session)| left(&names[session]))
            .collect()
    };
    assert_eq!(changes, expected);
    assert!(ledger.is_empty());
    assert_deadlines_indexed(&ledger);
}
