//! Presence: who is in a room, by name with a count of connections, and when to tell the
//! room that a name arrived or is gone. [`Ledger`] is one room's book, a pure value (time is
//! an input) that both brokers follow: the local broker keeps one per room in memory
//! (`LocalPresence`), and the Redis broker's presence script keeps the same book in Redis
//! with the same rules (its tests run both side by side).
//!
//! # The rules
//!
//! A room's presence is held by *holders*, each with a count of connections per name:
//!
//! - a node's live sessions ([`Holder::Node`]): a join adds one, a leave takes one away. With
//!   Redis a node's holder has a lease that the node renews while it lives; a node that dies
//!   without a drain stops renewing, and its lease runs out;
//! - one connection that went away without leaving ([`Holder::Kept`]): a drained session (its
//!   `going_away` delay plus `presence.grace_ms`) or a dropped one (the grace), kept present
//!   until its deadline, so that its client can come back (on any node) without anyone
//!   seeing it leave and arrive again.
//!
//! A name is present while any holder counts it. [`PresenceChange::Joined`] when a name's
//! count goes from 0 to 1 (a second tab: nothing), [`PresenceChange::Left`] when it goes back
//! to 0: at a leave, at the end of a kept connection's time, or when a dead node's lease ran
//! out. Expired holders are swept by every operation and by [`Ledger::sweep`]; the holders
//! with a deadline are kept in deadline order, so that a sweep costs what expired, not what is
//! held (a drain keeps one holder per drained session: 10,000 of them, swept at every leave).
//!
//! It must not know sessions, sockets or Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::NodeId;

/// A point in time in milliseconds (the caller's clock: Redis's `TIME`, or the process's).
pub type Millis = u64;

/// Who holds a count of connections in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A node's live sessions.
    Node(NodeId),
    /// One session of a node, gone without leaving, kept present until a deadline.
    Kept {
        /// Its node.
        node: NodeId,
        /// The session, on that node.
        session: u64,
    },
}

/// A name arrived in a room or is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The name's first connection joined.
    Joined(Arc<str>),
    /// The name's last connection is gone.
    Left(Arc<str>),
}

/// One name in a room, as a `presence` answer lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PresentName {
    /// The name.
    pub name: Arc<str>,
    /// Its connections in the room, on every node (kept ones included).
    pub connections: u32,
}

/// What one holder counts, and until when (`None`: no deadline).
#[derive(Debug, Default)]
struct Holding {
    deadline: Option<Millis>,
    names: HashMap<Arc<str>, u32>,
}

/// One room's presence. See the module docs.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every present name with its count over all holders.
    names: BTreeMap<Arc<str>, u32>,
    holders: HashMap<Holder, Holding>,
    /// `(deadline, holder)` of every holder that has a deadline: exactly the holders'
    /// `deadline`s, in the order they run out.
    deadlines: BTreeSet<(Millis, Holder)>,
    /// Kept connections that ran out while their name was present again, not yet taken
    /// ([`Ledger::take_rejoined`]).
    rejoined: u64,
}

impl Ledger {
    /// A session of `node` named `name` joined: one more connection. `lease`: the node's
    /// holder now lasts until then (`None`: it never runs out, the local broker).
    pub fn join(
        &mut self,
        node: NodeId,
        name: &str,
        now: Millis,
        lease: Option<Millis>,
        changes: &mut Vec<PresenceChange>,
    ) {
        self.sweep(now, changes);
        let name = self.interned(name);
        let holder = Holder::Node(node);
        let holding = self.holders.entry(holder).or_default();
        *holding.names.entry(name.clone()).or_insert(0) += 1;
        self.set_deadline(holder, lease);
        self.add(&name, 1, changes);
    }

    /// A session of `node` named `name` left for good (a normal close, a v2 `leave`, a kick):
    /// one connection less, at once. A name the node does not count is ignored.
    pub fn leave(
        &mut self,
        node: NodeId,
        name: &str,
        now: Millis,
        changes: &mut Vec<PresenceChange>,
    ) {
        self.sweep(now, changes);
        if let Some(name) = self.take_one(Holder::Node(node), name) {
            self.add(&name, -1, changes);
        }
    }

    /// A session of `node` named `name` went away without leaving: its connection is kept
    /// present until `until`, then counts as gone (unless the name is back by then, nobody is
    /// told anything). A name the node does not count is ignored.
    pub fn keep(
        &mut self,
        node: NodeId,
        session: u64,
        name: &str,
        now: Millis,
        until: Millis,
        changes: &mut Vec<PresenceChange>,
    ) {
        self.sweep(now, changes);
        if let Some(name) = self.take_one(Holder::Node(node), name) {
            let holder = Holder::Kept { node, session };
            let kept = self.holders.entry(holder).or_default();
            *kept.names.entry(name).or_insert(0) += 1;
            self.set_deadline(holder, Some(until));
        }
    }

    /// `node` lives: its holder lasts until `lease`.
    pub fn renew(
        &mut self,
        node: NodeId,
        now: Millis,
        lease: Millis,
        changes: &mut Vec<PresenceChange>,
    ) {
        self.sweep(now, changes);
        if self.holders.contains_key(&Holder::Node(node)) {
            self.set_deadline(Holder::Node(node), Some(lease));
        }
    }

    /// `node`'s live sessions are exactly `counts` (after the broker lost what it knew, or
    /// may have missed some changes): the differences are applied, with their changes.
    pub fn restore(
        &mut self,
        node: NodeId,
        counts: &[(Arc<str>, u32)],
        now: Millis,
        lease: Option<Millis>,
        changes: &mut Vec<PresenceChange>,
    ) {
        self.sweep(now, changes);
        let old = self
            .remove_holder(Holder::Node(node))
            .map(|holding| holding.names)
            .unwrap_or_default();
        let mut wanted: BTreeMap<Arc<str>, u32> = BTreeMap::new();
        for (name, count) in counts.iter().filter(|(_, count)| *count > 0) {
            *wanted.entry(self.interned(name)).or_insert(0) += count;
        }
        // Names in order, the old ones first: the changes come out the same every time.
        let mut gone: Vec<_> = old
            .iter()
            .filter(|(name, _)| !wanted.contains_key(*name))
            .collect();
        gone.sort_unstable();
        for (name, count) in gone {
            self.add(name, -i64::from(*count), changes);
        }
        for (name, count) in &wanted {
            let before = old.get(name).copied().unwrap_or(0);
            self.add(name, i64::from(*count) - i64::from(before), changes);
        }
        if !wanted.is_empty() || lease.is_some() {
            let holding = Holding {
                deadline: None,
                names: wanted.into_iter().collect(),
            };
            self.holders.insert(Holder::Node(node), holding);
            self.set_deadline(Holder::Node(node), lease);
        }
    }

    /// Ends every holder whose deadline is `now` or earlier: its names lose its counts.
    pub fn sweep(&mut self, now: Millis, changes: &mut Vec<PresenceChange>) {
        let mut expired = Vec::new();
        while let Some(&(deadline, holder)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            expired.push(holder);
        }
        // In holder order, as before the index: the changes come out the same every time.
        expired.sort_unstable();
        for holder in expired {
            if let Some(holding) = self.holders.remove(&holder) {
                let mut names: Vec<_> = holding.names.into_iter().collect();
                names.sort_unstable();
                for (name, count) in names {
                    self.add(&name, -i64::from(count), changes);
                    if matches!(holder, Holder::Kept { .. }) && self.names.contains_key(&name) {
                        self.rejoined += u64::from(count);
                    }
                }
            }
        }
    }

    /// Every present name, by name.
    pub fn members(&self) -> Vec<PresentName> {
        self.names
            .iter()
            .map(|(name, connections)| PresentName {
                name: name.clone(),
                connections: *connections,
            })
            .collect()
    }

    /// How many kept connections ran out while their name was present again (the leave
    /// nobody saw) since the last call.
    pub fn take_rejoined(&mut self) -> u64 {
        std::mem::take(&mut self.rejoined)
    }

    /// How many names are present.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nobody is present and nothing is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.holders.is_empty()
    }

    /// The earliest deadline of a kept connection, when there is one.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines
            .iter()
            .find(|(_, holder)| matches!(holder, Holder::Kept { .. }))
            .map(|(deadline, _)| *deadline)
    }

    /// `holder` (which must exist) now lasts until `deadline` (`None`: for ever).
    fn set_deadline(&mut self, holder: Holder, deadline: Option<Millis>) {
        let Some(holding) = self.holders.get_mut(&holder) else {
            return;
        };
        let old = std::mem::replace(&mut holding.deadline, deadline);
        if old == deadline {
            return;
        }
        if let Some(old) = old {
            self.deadlines.remove(&(old, holder));
        }
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, holder));
        }
    }

    /// Forgets `holder`, and its deadline.
    fn remove_holder(&mut self, holder: Holder) -> Option<Holding> {
        let holding = self.holders.remove(&holder)?;
        if let Some(deadline) = holding.deadline {
            self.deadlines.remove(&(deadline, holder));
        }
        Some(holding)
    }

    /// One connection of `name` less in `holder` (the holder forgotten when empty); the
    /// name if it had one.
    fn take_one(&mut self, holder: Holder, name: &str) -> Option<Arc<str>> {
        let holding = self.holders.get_mut(&holder)?;
        let (name, count) = holding.names.get_key_value(name)?;
        let (name, count) = (name.clone(), *count);
        if count > 1 {
            holding.names.insert(name.clone(), count - 1);
        } else {
            holding.names.remove(&name);
        }
        if holding.names.is_empty() && holding.deadline.is_none() {
            self.holders.remove(&holder);
        }
        Some(name)
    }

    /// `name`'s count changes by `by`; going from 0 is a join, to 0 a leave.
    fn add(&mut self, name: &Arc<str>, by: i64, changes: &mut Vec<PresenceChange>) {
        if by == 0 {
            return;
        }
        let before = i64::from(self.names.get(name).copied().unwrap_or(0));
        let after = (before + by).max(0);
        if after == 0 {
            self.names.remove(name);
        } else {
            self.names
                .insert(name.clone(), u32::try_from(after).unwrap_or(u32::MAX));
        }
        if before == 0 && after > 0 {
            changes.push(PresenceChange::Joined(name.clone()));
        } else if before > 0 && after == 0 {
            changes.push(PresenceChange::Left(name.clone()));
        }
    }

    /// The ledger's own copy of `name` (one allocation per name, shared by its holders).
    fn interned(&self, name: &str) -> Arc<str> {
        match self.names.get_key_value(name) {
            Some((name, _)) => name.clone(),
            None => Arc::from(name),
        }
    }
}

#[cfg(test)]
#[path = "presence_tests.rs"]
mod tests;
