//! The local broker's presence: one [`Ledger`] per room in memory, for the one node there is
//! (its holder has no lease: it never runs out), kept connections ended when the supervisor
//! sweeps the room after their time. It turns the ledgers' changes into
//! [`BrokerEvent::Presence`] where `[presence]` says the room is told.
//!
//! Like the rest of the local broker it is a plain value with no clock of its own: every call
//! takes `now`. It must not know sessions or fan out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::presence::{Ledger, Millis, PresenceChange, PresentName};
use super::{BrokerEvent, Departure, Origin, PresenceEvent, PresenceLimits};

/// Every room's presence, in this process.
#[derive(Debug)]
pub(super) struct LocalPresence {
    limits: PresenceLimits,
    rooms: HashMap<Arc<str>, Ledger>,
    /// The ledgers' clock starts here.
    epoch: Instant,
    /// Scratch space for one call's changes.
    changes: Vec<PresenceChange>,
}

impl LocalPresence {
    /// What `[presence]` says.
    pub(super) fn limits(&self) -> PresenceLimits {
        self.limits
    }

    pub(super) fn new(limits: PresenceLimits) -> Self {
        LocalPresence {
            limits,
            rooms: HashMap::new(),
            epoch: Instant::now(),
            changes: Vec::new(),
        }
    }

    fn millis(&self, at: Instant) -> Millis {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Member `origin` (of its node) named `name` joined `room`.
    pub(super) fn join(
        &mut self,
        room: &Arc<str>,
        name: &str,
        origin: Origin,
        now: Instant,
        out: &mut Vec<BrokerEvent>,
    ) {
        if !self.limits.enabled {
            return;
        }
        let now = self.millis(now);
        let ledger = self.rooms.entry(room.clone()).or_default();
        ledger.join(origin.node, name, now, None, &mut self.changes);
        self.tell(room, Some(origin), out);
    }

    /// Member `origin` named `name` is no longer in `room`, as `departure` says.
    pub(super) fn leave(
        &mut self,
        room: &Arc<str>,
        name: &str,
        origin: Origin,
        departure: Departure,
        now: Instant,
        out: &mut Vec<BrokerEvent>,
    ) {
        let now = self.millis(now);
        let Some(ledger) = self.rooms.get_mut(room) else {
            return;
        };
        match departure {
            Departure::Now => ledger.leave(origin.node, name, now, &mut self.changes),
            Departure::Keep(time) => {
                let until = now.saturating_add(millis_of(time));
                let (node, session) = (origin.node, origin.session);
                ledger.keep(node, session, name, now, until, &mut self.changes);
            }
        }
        self.tell(room, None, out);
    }

    /// Ends the kept connections of `room` whose time ran out.
    pub(super) fn sweep(&mut self, room: &Arc<str>, now: Instant, out: &mut Vec<BrokerEvent>) {
        let now = self.millis(now);
        if let Some(ledger) = self.rooms.get_mut(room) {
            ledger.sweep(now, &mut self.changes);
            self.tell(room, None, out);
        }
    }

    /// Who is in `room` (after a sweep).
    pub(super) fn members(
        &mut self,
        room: &Arc<str>,
        now: Instant,
        out: &mut Vec<BrokerEvent>,
    ) -> Vec<PresentName> {
        self.sweep(room, now, out);
        self.rooms
            .get(room)
            .map(Ledger::members)
            .unwrap_or_default()
    }

    /// The changes of the last call to `room`'s members, where the room is told; forgets a
    /// room nobody is in any more.
    fn tell(&mut self, room: &Arc<str>, origin: Option<Origin>, out: &mut Vec<BrokerEvent>) {
        if let Some(ledger) = self.rooms.get_mut(room) {
            crate::metrics::metrics()
                .presence_kept_rejoined
                .inc_by(ledger.take_rejoined());
        }
        let present = self.rooms.get(room).map_or(0, Ledger::len);
        for change in self.changes.drain(..) {
            let counted = match change {
                PresenceChange::Joined(_) => present,
                PresenceChange::Left(_) => present + 1,
            };
            if self.limits.tells(counted) {
                let origin = match change {
                    PresenceChange::Joined(_) => origin,
                    PresenceChange::Left(_) => None,
                };
                out.push(BrokerEvent::Presence(PresenceEvent {
                    room: room.clone(),
                    change,
                    origin,
                }));
            }
        }
        if self.rooms.get(room).is_some_and(Ledger::is_empty) {
            self.rooms.remove(room);
        }
    }
}

/// A duration in whole milliseconds.
pub(super) fn millis_of(time: Duration) -> Millis {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}
