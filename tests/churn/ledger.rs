//! The churn soak's bookkeeping: the driver consumes the in-process server's events,
//! correlates sessions with clients (each client's first message is `hello N`), fans `chat`
//! messages out to the other members of the sender's room, and records what every session
//! did; once a session's end, its close calls and its client's report are all in, it hands
//! them to the checks in `churn.rs` and tallies the outcome. [`quiesce`] waits until the
//! server is at rest between rounds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::{mpsc::UnboundedReceiver, oneshot};
use wsgrace::metrics::metrics;
use wsgrace::{CloseOutcome, CloseResult, CloseState, Initiator, SessionEnd, SessionHandle};
use wsgrace_kit::DEADLINE;

use super::behaviour::{CallRecord, Kind, Obs};
use super::common::Event;
use super::probes::tcp_sockets;
use super::{check_any_end, check_session, late_delivery_allowed};

pub struct Pending {
    pub kind: Kind,
    pub room: u8,
    pub tx: oneshot::Sender<SessionHandle>,
}

pub struct Live {
    pub handle: SessionHandle,
    pub room: Option<u8>,
}

pub struct Join {
    pub client: u64,
    pub kind: Kind,
    pub end: Option<SessionEnd>,
    pub calls: Vec<CallRecord>,
    pub obs: Option<Obs>,
}

#[derive(Default)]
pub struct Shared {
    pub pending: HashMap<u64, Pending>,
    pub live: HashMap<u64, Live>,
    pub rooms: HashMap<u8, HashMap<u64, SessionHandle>>,
    pub joins: HashMap<u64, Join>,
    /// Ended sessions whose actor may still be winding down.
    pub graveyard: Vec<SessionHandle>,
    pub started: u64,
    pub ended: u64,
    pub uncorrelated_ended: u64,
    pub reset_after_upgrade: u64,
    pub checked: u64,
    pub kinds: BTreeMap<String, u64>,
    pub calls: BTreeMap<String, u64>,
    /// By metric labels: initiator, mode, result.
    pub ends: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// By state, initiator, mode, result.
    pub states: BTreeMap<String, u64>,
    pub branches: BTreeMap<String, u64>,
    pub chat_in: u64,
    pub fanned_out: u64,
    pub late_delivered: u64,
    pub dropped_after_close: u64,
    pub delivered_after_close: u64,
    pub max_handshake: Duration,
    pub failures: Vec<String>,
    pub failure_count: u64,
}

impl Shared {
    pub fn fail(&mut self, what: String) {
        self.failure_count += 1;
        if self.failures.len() < 100 {
            eprintln!("churn failure: {what}");
            self.failures.push(what);
        }
    }

    pub fn on_event(&mut self, event: Event) {
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

    pub fn on_message(&mut self, id: u64, text: String) {
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
            if let Some(join) = self.joins.get(&id) {
                if !late_delivery_allowed(join.kind) {
                    let what = format!(
                        "session {id} (client {}): late message delivered after an awaited close",
                        join.client
                    );
                    self.fail(what);
                }
            }
        }
    }

    pub fn on_end(&mut self, id: u64, end: SessionEnd) {
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

    pub fn report_call(&mut self, id: u64, record: CallRecord) {
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

    pub fn report_obs(&mut self, id: u64, obs: Obs) {
        match self.joins.get_mut(&id) {
            Some(join) => {
                join.obs = Some(obs);
                self.try_complete(id);
            }
            None => self.fail(format!("session {id}: client report came too late")),
        }
    }

    pub fn try_complete(&mut self, id: u64) {
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
    pub fn sweep(&mut self) {
        self.graveyard
            .retain(|h| !h.state().is_terminal() || h.addr().connected());
    }
}

impl Shared {
    /// Prints what the soak did: the clients by kind, the close calls and their answers, the
    /// branches the races took, the sessions' ends, the chat traffic.
    pub fn print_summary(&self, clients: u64, elapsed: Duration) {
        println!(
            "churn: {} clients, {} sessions in {:.1} s",
            clients,
            self.started,
            elapsed.as_secs_f64()
        );
        println!("client kinds:");
        for (kind, count) in &self.kinds {
            println!("  {count:6}  {kind}");
        }
        println!("close calls:");
        for (call, count) in &self.calls {
            println!("  {count:6}  {call}");
        }
        println!("race branches:");
        for (branch, count) in &self.branches {
            println!("  {count:6}  {branch}");
        }
        println!("session ends (state, initiator, mode, result):");
        for (end, count) in &self.states {
            println!("  {count:6}  {end}");
        }
        println!(
            "chat: {} messages in, {} fanned out; late messages delivered {}; per-session \
             dropped_after_close {} delivered_after_close {}; slowest acked handshake {:?}",
            self.chat_in,
            self.fanned_out,
            self.late_delivered,
            self.dropped_after_close,
            self.delivered_after_close,
            self.max_handshake
        );
    }
}

/// Feeds every server event to the ledger until the server is gone.
pub async fn drive(mut events: UnboundedReceiver<Event>, shared: Arc<Mutex<Shared>>) {
    while let Some(event) = events.recv().await {
        let mut s = shared.lock().expect("shared lock");
        s.on_event(event);
        while let Ok(event) = events.try_recv() {
            s.on_event(event);
        }
    }
}

/// the open-connections gauge is 0; then returns. Reports what is left after the deadline.
/// Also waits until the process holds no more TCP sockets than `idle_sockets` (those it held
/// before the first client: the listener): the server has released every connection. Returns
/// how long it took.
pub async fn quiesce(shared: &Arc<Mutex<Shared>>, idle_sockets: usize) -> Result<Duration, String> {
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
