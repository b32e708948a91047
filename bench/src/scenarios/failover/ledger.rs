//! The `failover` scenario's accounting, as plain data: what became of each send (its copy
//! or an `ack` came back, it was refused `unavailable`, or nothing came back), what each
//! member received (under which epoch and seq), the `epoch` frames and the closes; and the
//! summary the report shows: per room the time from the SIGKILL to the first message sent
//! after it being delivered, what the senders saw, losses among the acknowledged messages,
//! duplicates, seqs naming two messages, holes.
//!
//! It does no I/O and knows no sockets, processes or clocks of its own (every event comes
//! with its `Instant`); `failover.rs` feeds it and must not count anything itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

/// What an `unavailable` refusal said about the message, from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// "the message was not sent": the node had no broker when it tried.
    NotSent,
    /// "the message may not have been sent": the broker connection broke in flight, or
    /// `WAIT` did not confirm in time (the message stays held and may be delivered later).
    MaybeSent,
}

impl Refusal {
    pub fn from_text(text: &str) -> Refusal {
        if text.contains("may not") {
            Refusal::MaybeSent
        } else {
            Refusal::NotSent
        }
    }
}

/// One publish: its room, the node of its sender, when it was written, and its answer.
#[derive(Debug, Clone)]
pub struct Send {
    pub room: usize,
    pub node: usize,
    pub at: Instant,
    /// The sender's copy (with the publish's `id`) or an `ack`: the message has a seq.
    pub acked_at: Option<Instant>,
    pub refused: Option<(Refusal, Instant)>,
    /// The frame could not be written (the sender's connection was gone).
    pub write_failed: bool,
}

/// One chat message a member received.
#[derive(Debug, Clone)]
pub struct Got {
    /// The message's number (its text is `f-N`).
    pub n: u64,
    pub epoch: Rc<str>,
    pub seq: u64,
    pub at: Instant,
}

/// A v1 member of one room on one node.
#[derive(Debug)]
pub struct Member {
    pub room: usize,
    pub node: usize,
    welcome_epoch: Rc<str>,
    epoch: Rc<str>,
    /// Where each epoch this member knows began: its seqs go on from the value + 1.
    begins: HashMap<Rc<str>, u64>,
    pub got: Vec<Got>,
    seen: HashSet<u64>,
    duplicates: u64,
    pub epoch_frames: Vec<Instant>,
    /// `epoch` frames that named the epoch the member was in already.
    pub same_epoch_frames: u64,
    /// The server's close frame (its code), if one came.
    pub closed: Option<Option<u16>>,
    /// TCP ended before the scenario stopped the servers.
    pub ended: bool,
}

impl Member {
    fn open(&self) -> bool {
        self.closed.is_none() && !self.ended
    }
}

/// A sender's connection (`wsgrace.v2`, joined to every room) on one node.
#[derive(Debug, Default)]
pub struct Sender {
    pub epoch_frames: u64,
    pub closed: Option<Option<u16>>,
    pub ended: bool,
    /// `error` frames other than `unavailable` refusals of a known send: code → count.
    pub other_errors: BTreeMap<String, u64>,
}

/// A client that was in a room until the kill, resuming after the failover.
#[derive(Debug)]
pub struct Resume {
    pub resumed: bool,
    /// Messages replayed.
    pub replayed: u64,
    /// Acknowledged messages of the room sent after the resume point that the replay
    /// lacked (counted only when resumed).
    pub missing: u64,
}

/// Everything the scenario saw in one run.
#[derive(Debug)]
pub struct Ledger {
    rooms: usize,
    nodes: usize,
    /// When the master was killed, and the number of the last message sent before.
    killed: Option<(Instant, u64)>,
    /// `sends[n - 1]` is message n.
    sends: Vec<Send>,
    members: Vec<Member>,
    senders: Vec<Sender>,
    resumes: Vec<Resume>,
    /// On a cluster: per room, whether it lives on the master that was killed.
    on_killed: Option<Vec<bool>>,
}

/// A duration in ms, rounded to 0.1 ms.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The median of `values` (the mean of the middle two when even); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// `{min, median, max}` of `values`, rounded to 0.1; nulls when empty.
pub fn spread(values: &[f64]) -> Value {
    let mut sorted = values.to_vec();
    let med = median(&mut sorted);
    let round = |x: Option<f64>| x.map(|x| (x * 10.0).round() / 10.0);
    json!({
        "min": round(sorted.first().copied()),
        "median": round(med),
        "max": round(sorted.last().copied()),
    })
}

impl Ledger {
    pub fn new(rooms: usize, nodes: usize) -> Ledger {
        Ledger {
            rooms,
            nodes,
            killed: None,
            sends: Vec::new(),
            members: Vec::new(),
            senders: (0..nodes).map(|_| Sender::default()).collect(),
            resumes: Vec::new(),
            on_killed: None,
        }
    }

    /// On a cluster: which rooms live on the master that is killed (the report then
    /// splits the first deliveries after the kill by it).
    pub fn rooms_on_killed_master(&mut self, on_killed: Vec<bool>) {
        self.on_killed = Some(on_killed);
    }

    /// A member joined `room` on `node`; the welcome named `epoch` at `seq`. Answers its
    /// index.
    pub fn member(&mut self, room: usize, node: usize, epoch: &str, seq: u64) -> usize {
        let epoch: Rc<str> = epoch.into();
        self.members.push(Member {
            room,
            node,
            welcome_epoch: epoch.clone(),
            epoch: epoch.clone(),
            begins: HashMap::from([(epoch, seq)]),
            got: Vec::new(),
            seen: HashSet::new(),
            duplicates: 0,
            epoch_frames: Vec::new(),
            same_epoch_frames: 0,
            closed: None,
            ended: false,
        });
        self.members.len() - 1
    }

    /// A publish to `room` from `node`'s sender is about to be written: its number.
    pub fn sent(&mut self, room: usize, node: usize, at: Instant) -> u64 {
        self.sends.push(Send {
            room,
            node,
            at,
            acked_at: None,
            refused: None,
            write_failed: false,
        });
        self.sends.len() as u64
    }

    pub fn write_failed(&mut self, n: u64) {
        if let Some(send) = self.send_mut(n) {
            send.write_failed = true;
        }
    }

    fn send_mut(&mut self, n: u64) -> Option<&mut Send> {
        let i = usize::try_from(n.checked_sub(1)?).ok()?;
        self.sends.get_mut(i)
    }

    /// The master is being killed now; every message from here on counts as sent after it.
    pub fn kill(&mut self, at: Instant) {
        self.killed = Some((at, self.sends.len() as u64));
    }

    /// Message `n`'s copy or `ack` reached its sender.
    pub fn acked(&mut self, n: u64, at: Instant) {
        if let Some(send) = self.send_mut(n) {
            send.acked_at.get_or_insert(at);
        }
    }

    /// Message `n` was refused `unavailable`.
    pub fn refused(&mut self, n: u64, refusal: Refusal, at: Instant) {
        if let Some(send) = self.send_mut(n) {
            send.refused.get_or_insert((refusal, at));
        }
    }

    pub fn sender_mut(&mut self, node: usize) -> Option<&mut Sender> {
        self.senders.get_mut(node)
    }

    /// Member `i` received message `n` under `seq` (in the epoch it knows now).
    pub fn message(&mut self, i: usize, n: u64, seq: u64, at: Instant) {
        let Some(member) = self.members.get_mut(i) else {
            return;
        };
        if !member.seen.insert(n) {
            member.duplicates += 1;
        }
        member.got.push(Got {
            n,
            epoch: member.epoch.clone(),
            seq,
            at,
        });
    }

    /// Member `i` got an `epoch` frame: from now on `epoch`, seqs after `seq`.
    pub fn epoch(&mut self, i: usize, epoch: &str, seq: u64, at: Instant) {
        let Some(member) = self.members.get_mut(i) else {
            return;
        };
        if *member.epoch == *epoch {
            member.same_epoch_frames += 1;
        }
        let epoch: Rc<str> = epoch.into();
        member.begins.insert(epoch.clone(), seq);
        member.epoch = epoch;
        member.epoch_frames.push(at);
    }

    pub fn member_closed(&mut self, i: usize, code: Option<u16>) {
        if let Some(member) = self.members.get_mut(i) {
            member.closed.get_or_insert(code);
        }
    }

    pub fn member_ended(&mut self, i: usize) {
        if let Some(member) = self.members.get_mut(i) {
            member.ended = true;
        }
    }

    /// Where a client that was in `room` until the kill resumes from: the epoch and seq of
    /// the last message sent before the kill that the room's first member got, and that
    /// message's number.
    pub fn resume_point(&self, room: usize) -> Option<(String, u64, u64)> {
        let after = self.killed_after();
        let member = self.members.iter().find(|m| m.room == room)?;
        let got = member.got.iter().rev().find(|g| g.n <= after)?;
        Some((got.epoch.to_string(), got.seq, got.n))
    }

    /// A resume in `room` from message `from` said `resumed` and replayed `replayed`.
    pub fn resume(&mut self, room: usize, from: u64, resumed: bool, replayed: &[u64]) {
        let replayed_set: HashSet<u64> = replayed.iter().copied().collect();
        let missing = if resumed {
            self.sends
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    let n = *i as u64 + 1;
                    s.room == room && n > from && s.acked_at.is_some() && !replayed_set.contains(&n)
                })
                .count() as u64
        } else {
            0
        };
        self.resumes.push(Resume {
            resumed,
            replayed: replayed.len() as u64,
            missing,
        });
    }

    /// The last message number sent before the kill.
    fn killed_after(&self) -> u64 {
        self.killed.map_or(u64::MAX, |(_, n)| n)
    }

    /// Per room, when a message sent after the kill was first delivered to one of its
    /// members.
    fn first_after_kill(&self) -> Vec<Option<Instant>> {
        let after = self.killed_after();
        let mut first = vec![None; self.rooms];
        for member in &self.members {
            let Some(got) = member.got.iter().find(|g| g.n > after) else {
                continue;
            };
            if let Some(slot) = first.get_mut(member.room) {
                if slot.is_none_or(|at| got.at < at) {
                    *slot = Some(got.at);
                }
            }
        }
        first
    }

    /// Rooms where a message sent after the kill has been delivered.
    pub fn rooms_back(&self) -> usize {
        self.first_after_kill().iter().flatten().count()
    }

    /// Acknowledged messages not (yet) delivered to a member of their room that is still
    /// open: (messages, member deliveries).
    fn acked_missing(&self) -> (u64, u64) {
        let (mut messages, mut deliveries) = (0, 0);
        for (i, send) in self.sends.iter().enumerate() {
            if send.acked_at.is_none() {
                continue;
            }
            let n = i as u64 + 1;
            let missing = self
                .members
                .iter()
                .filter(|m| m.room == send.room && m.open() && !m.seen.contains(&n))
                .count() as u64;
            if missing > 0 {
                messages += 1;
                deliveries += missing;
            }
        }
        (messages, deliveries)
    }

    /// Every acknowledged message has reached every open member of its room.
    pub fn settled(&self) -> bool {
        self.acked_missing().0 == 0
    }

    /// Seqs that name two different messages within one room's epoch, over all members.
    fn seqs_named_twice(&self) -> u64 {
        type Name = (usize, Rc<str>, u64);
        let mut named: HashMap<Name, u64> = HashMap::new();
        let mut twice: HashSet<Name> = HashSet::new();
        for member in &self.members {
            for got in &member.got {
                let name = (member.room, got.epoch.clone(), got.seq);
                let first = *named.entry(name.clone()).or_insert(got.n);
                if first != got.n {
                    twice.insert(name);
                }
            }
        }
        twice.len() as u64
    }

    /// Within an epoch, messages whose seq is not the one after the member's previous (or
    /// after where the epoch began): holes and repeats, over all members.
    fn holes(&self) -> u64 {
        let mut holes = 0;
        for member in &self.members {
            let mut last: Option<(&Rc<str>, u64)> = None;
            for got in &member.got {
                let expected = match last {
                    Some((epoch, seq)) if *epoch == got.epoch => seq + 1,
                    _ => member.begins.get(&got.epoch).copied().unwrap_or(0) + 1,
                };
                if got.seq != expected {
                    holes += 1;
                }
                last = Some((&got.epoch, got.seq));
            }
        }
        holes
    }

    /// What the senders saw, over all sends and per node.
    fn senders_json(&self) -> Value {
        let killed = self.killed.map(|(at, _)| at);
        let after = self.killed_after();
        let since_kill = |at: Instant| killed.map(|k| ms(at.saturating_duration_since(k)));
        let delivered: HashSet<u64> = self
            .members
            .iter()
            .flat_map(|m| m.seen.iter().copied())
            .collect();
        let tally = |node: Option<usize>| {
            let mut t = BTreeMap::<&str, u64>::new();
            let (mut first_refusal, mut last_refusal) = (None::<Instant>, None::<Instant>);
            let mut ack_after_kill_max = Duration::ZERO;
            for (i, send) in self.sends.iter().enumerate() {
                if node.is_some_and(|node| node != send.node) {
                    continue;
                }
                let n = i as u64 + 1;
                *t.entry("sent").or_default() += 1;
                if n > after {
                    *t.entry("sent_after_kill").or_default() += 1;
                }
                if send.write_failed {
                    *t.entry("write_failed").or_default() += 1;
                }
                match (send.acked_at, send.refused) {
                    (Some(acked), refused) => {
                        *t.entry("acknowledged").or_default() += 1;
                        if refused.is_some() {
                            *t.entry("refused_then_acknowledged").or_default() += 1;
                        }
                        if n > after {
                            ack_after_kill_max =
                                ack_after_kill_max.max(acked.saturating_duration_since(send.at));
                        }
                    }
                    (None, Some(_)) => {}
                    (None, None) if send.write_failed => {}
                    (None, None) => {
                        *t.entry("no_answer").or_default() += 1;
                        if delivered.contains(&n) {
                            *t.entry("no_answer_but_delivered").or_default() += 1;
                        }
                    }
                }
                if let Some((refusal, at)) = send.refused {
                    *t.entry("refused_unavailable").or_default() += 1;
                    *t.entry(match refusal {
                        Refusal::NotSent => "refused_not_sent",
                        Refusal::MaybeSent => "refused_may_not_have_been_sent",
                    })
                    .or_default() += 1;
                    if delivered.contains(&n) {
                        *t.entry("refused_but_delivered").or_default() += 1;
                    }
                    first_refusal = Some(first_refusal.map_or(at, |f| f.min(at)));
                    last_refusal = Some(last_refusal.map_or(at, |l| l.max(at)));
                }
            }
            let mut obj = serde_json::Map::new();
            for key in [
                "sent",
                "sent_after_kill",
                "acknowledged",
                "refused_unavailable",
                "refused_not_sent",
                "refused_may_not_have_been_sent",
                "refused_but_delivered",
                "refused_then_acknowledged",
                "no_answer",
                "no_answer_but_delivered",
                "write_failed",
            ] {
                obj.insert(key.into(), json!(t.get(key).copied().unwrap_or(0)));
            }
            obj.insert(
                "first_refusal_after_kill_ms".into(),
                json!(first_refusal.and_then(since_kill)),
            );
            obj.insert(
                "last_refusal_after_kill_ms".into(),
                json!(last_refusal.and_then(since_kill)),
            );
            obj.insert(
                "slowest_ack_of_a_message_sent_after_kill_ms".into(),
                json!(ms(ack_after_kill_max)),
            );
            Value::Object(obj)
        };
        let mut all = tally(None);
        let per_node: Vec<Value> = (0..self.nodes)
            .map(|node| {
                let mut v = tally(Some(node));
                let sender = &self.senders[node];
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("node".into(), json!(node_name(node)));
                    obj.insert("epoch_frames".into(), json!(sender.epoch_frames));
                    obj.insert("closed".into(), json!(sender.closed.map(code_name)));
                    obj.insert("ended_early".into(), json!(sender.ended));
                    obj.insert("other_errors".into(), json!(sender.other_errors));
                }
                v
            })
            .collect();
        if let Some(obj) = all.as_object_mut() {
            obj.insert("per_node".into(), json!(per_node));
        }
        all
    }

    /// What the members saw: epoch frames and closes.
    fn members_json(&self) -> Value {
        let mut closes = BTreeMap::<String, u64>::new();
        for member in &self.members {
            if let Some(code) = member.closed {
                *closes.entry(code_name(code)).or_default() += 1;
            }
        }
        let new_epochs: HashSet<&Rc<str>> = self
            .members
            .iter()
            .filter(|m| m.epoch != m.welcome_epoch)
            .map(|m| &m.epoch)
            .collect();
        json!({
            "count": self.members.len(),
            "open_at_end": self.members.iter().filter(|m| m.open()).count(),
            "open_at_end_per_node": (0..self.nodes)
                .map(|node| self.members.iter().filter(|m| m.node == node && m.open()).count())
                .collect::<Vec<_>>(),
            "closed": self.members.iter().filter(|m| m.closed.is_some()).count(),
            "closes": closes,
            "ended_without_close": self.members.iter().filter(|m| m.ended && m.closed.is_none()).count(),
            "epoch_frames": self.members.iter().map(|m| m.epoch_frames.len()).sum::<usize>(),
            "epoch_frames_naming_the_same_epoch": self.members.iter().map(|m| m.same_epoch_frames).sum::<u64>(),
            "with_an_epoch_frame": self.members.iter().filter(|m| !m.epoch_frames.is_empty()).count(),
            "ending_in_a_new_epoch": self.members.iter().filter(|m| m.epoch != m.welcome_epoch).count(),
            "distinct_new_epochs": new_epochs.len(),
        })
    }

    /// The run's numbers (times in ms after the kill).
    pub fn summary(&self) -> Value {
        let killed = self.killed.map(|(at, _)| at);
        let first: Vec<Option<f64>> = self
            .first_after_kill()
            .into_iter()
            .map(|at| Some(ms(at?.saturating_duration_since(killed?))))
            .collect();
        let back: Vec<f64> = first.iter().flatten().copied().collect();
        let mut first_json = spread(&back);
        if let Some(obj) = first_json.as_object_mut() {
            obj.insert("rooms_back".into(), json!(back.len()));
            obj.insert("rooms".into(), json!(self.rooms));
            obj.insert("per_room".into(), json!(first));
            if let Some(on_killed) = &self.on_killed {
                let group = |killed: bool| {
                    let values: Vec<f64> = first
                        .iter()
                        .zip(on_killed)
                        .filter(|(_, k)| **k == killed)
                        .filter_map(|(v, _)| *v)
                        .collect();
                    let mut v = spread(&values);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert(
                            "rooms".into(),
                            json!(on_killed.iter().filter(|k| **k == killed).count()),
                        );
                    }
                    v
                };
                obj.insert("rooms_on_the_killed_master".into(), group(true));
                obj.insert("rooms_on_other_masters".into(), group(false));
            }
        }
        let (lost, lost_deliveries) = self.acked_missing();
        let duplicates: u64 = self.members.iter().map(|m| m.duplicates).sum();
        json!({
            "first_delivery_after_kill_ms": first_json,
            "acknowledged_lost": { "messages": lost, "member_deliveries": lost_deliveries },
            "duplicates": duplicates,
            "seqs_named_twice": self.seqs_named_twice(),
            "holes_or_repeats": self.holes(),
            "senders": self.senders_json(),
            "resume_across_the_failover": {
                "tried": self.resumes.len(),
                "resumed": self.resumes.iter().filter(|r| r.resumed).count(),
                "not_resumed": self.resumes.iter().filter(|r| !r.resumed).count(),
                "replayed": self.resumes.iter().map(|r| r.replayed).sum::<u64>(),
                "acknowledged_missing_from_replay": self.resumes.iter().map(|r| r.missing).sum::<u64>(),
            },
            "members": self.members_json(),
        })
    }
}

/// Node 0 is "a", node 1 "b", ...
pub fn node_name(node: usize) -> String {
    char::from(b'a' + (node % 26) as u8).to_string()
}

fn code_name(code: Option<u16>) -> String {
    code.map_or("none".into(), |c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(
            spread(&[5.0, 1.0, 3.0]),
            json!({"min": 1.0, "median": 3.0, "max": 5.0})
        );
    }

    #[test]
    fn refusals_are_told_apart_by_their_text() {
        let maybe = "the broker connection broke while sending: the message may not have been sent";
        assert_eq!(Refusal::from_text(maybe), Refusal::MaybeSent);
        let not = "the broker is unavailable: the message was not sent";
        assert_eq!(Refusal::from_text(not), Refusal::NotSent);
    }

    /// Two rooms, a member of each on two nodes; two messages before the kill, the master
    /// killed, then: one refused, one never answered, one acknowledged and delivered in a
    /// new epoch to all but one member, one delivered twice.
    #[test]
    fn a_run_is_summed_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Ledger::new(2, 2);
        let m: Vec<usize> = (0..4).map(|i| l.member(i % 2, i / 2, "e1", 0)).collect();
        // 1 → room 0, 2 → room 1: acknowledged and delivered to both members of the room.
        for (n, room) in [(1, 0), (2, 1)] {
            assert_eq!(l.sent(room, 0, at(n)), n);
            l.acked(n, at(n + 1));
            for member in [m[room], m[room + 2]] {
                l.message(member, n, 1, at(n + 1));
            }
        }
        l.kill(at(100));
        assert_eq!(l.rooms_back(), 0);
        let n3 = l.sent(0, 1, at(110));
        l.refused(n3, Refusal::NotSent, at(111));
        let n4 = l.sent(1, 1, at(120));
        let n5 = l.sent(0, 0, at(2000));
        l.acked(n5, at(2010));
        l.epoch(m[0], "e2", 1, at(2005));
        l.message(m[0], n5, 2, at(2010));
        l.message(m[0], n5, 2, at(2011));
        assert_eq!(l.rooms_back(), 1);
        assert!(!l.settled(), "m[2] lacks message 5");
        let s = l.summary();
        assert_eq!(s["first_delivery_after_kill_ms"]["rooms_back"], json!(1));
        assert_eq!(s["first_delivery_after_kill_ms"]["min"], json!(1910.0));
        assert_eq!(
            s["first_delivery_after_kill_ms"]["per_room"],
            json!([1910.0, null])
        );
        assert_eq!(
            s["acknowledged_lost"],
            json!({"messages": 1, "member_deliveries": 1})
        );
        assert_eq!(s["duplicates"], json!(1));
        // The duplicate repeats seq 2 in e2: a repeat, not a second message under it.
        assert_eq!(s["seqs_named_twice"], json!(0));
        assert_eq!(s["holes_or_repeats"], json!(1));
        let senders = &s["senders"];
        assert_eq!(senders["sent"], json!(5));
        assert_eq!(senders["sent_after_kill"], json!(3));
        assert_eq!(senders["acknowledged"], json!(3));
        assert_eq!(senders["refused_not_sent"], json!(1));
        assert_eq!(senders["no_answer"], json!(1));
        assert_eq!(senders["first_refusal_after_kill_ms"], json!(11.0));
        assert_eq!(senders["per_node"][1]["refused_unavailable"], json!(1));
        assert_eq!(senders["per_node"][1]["no_answer"], json!(1));
        assert_eq!(n4, 4);
        let members = &s["members"];
        assert_eq!(members["with_an_epoch_frame"], json!(1));
        assert_eq!(members["ending_in_a_new_epoch"], json!(1));
        // Member 2 gets message 5; member 0's repeat is still a repeat.
        l.message(m[2], n5, 2, at(2100));
        assert!(l.settled());
        // A client of room 0 resumes from message 1 (seq 1 in e1): 5 is owed, 3 was refused.
        assert_eq!(l.resume_point(0), Some(("e1".to_owned(), 1, 1)));
        l.resume(0, 1, true, &[]);
        l.resume(0, 1, false, &[]);
        let resume = &l.summary()["resume_across_the_failover"];
        assert_eq!(resume["acknowledged_missing_from_replay"], json!(1));
        assert_eq!(resume["not_resumed"], json!(1));
    }

    #[test]
    fn one_seq_for_two_messages_is_found() {
        let t0 = Instant::now();
        let mut l = Ledger::new(1, 1);
        let a = l.member(0, 0, "e", 0);
        let b = l.member(0, 0, "e", 0);
        let (n1, n2) = (l.sent(0, 0, t0), l.sent(0, 0, t0));
        l.message(a, n1, 1, t0);
        l.message(b, n2, 1, t0);
        assert_eq!(l.summary()["seqs_named_twice"], json!(1));
    }
}
