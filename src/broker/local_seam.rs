//! The local broker behind the [`Broker`] seam: each call of the trait mapped onto
//! [`LocalBroker`]'s own methods (answers are ready at once; events wait in `ready` for
//! [`Broker::ready_events`]). It must not hold state of its own: the book is `LocalBroker`'s.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::broker::{page_of, Control, HistoryPage};

impl Broker for LocalBroker {
    fn status(&self) -> BrokerStatus {
        BrokerStatus::always_up()
    }

    fn take_event_stream(&mut self) -> Option<BrokerEvents> {
        None
    }

    fn node(&self) -> NodeId {
        self.node
    }

    fn join(&mut self, room: &Arc<str>, request: JoinRequest) -> Pending<JoinSnapshot> {
        // The snapshot creates the room; then it has a member.
        let snapshot = self.join_snapshot(room, &request, Instant::now());
        let members = self.occupants.entry(room.clone()).or_default();
        *members += 1;
        if *members == 1 {
            self.set_occupied(room, true);
        }
        Pending::Ready(Ok(snapshot))
    }

    fn leave(&mut self, room: &Arc<str>) {
        let Some(members) = self.occupants.get_mut(room) else {
            return;
        };
        *members -= 1;
        if *members == 0 {
            self.occupants.remove(room);
            self.set_occupied(room, false);
        }
    }

    fn read_since(&mut self, room: &Arc<str>, request: ResumeRequest) -> Pending<JoinSnapshot> {
        Pending::Ready(Ok(self.snapshot(room, Some(&request), Instant::now())))
    }

    fn publish(&mut self, room: &Arc<str>, message: Outgoing<'_>) -> Pending<Publication> {
        let published = self
            .publish_message(room, message, Instant::now(), unix_ms())
            .map(|(publication, epoch_changes)| {
                self.ready
                    .extend(epoch_changes.into_iter().map(BrokerEvent::EpochChanged));
                if let Publication::New(message) = &publication {
                    self.ready.push(BrokerEvent::Message(message.clone()));
                }
                publication
            });
        Pending::Ready(published)
    }

    fn signal(&mut self, signal: Signal) -> Pending<()> {
        self.ready.push(BrokerEvent::Signal(signal));
        Pending::Ready(Ok(()))
    }

    fn presence_join(&mut self, room: &Arc<str>, name: &str, origin: Origin) {
        let out = &mut self.ready;
        self.presence.join(room, name, origin, Instant::now(), out);
    }

    fn presence_leave(&mut self, room: &Arc<str>, name: &str, origin: Origin, how: Departure) {
        let out = &mut self.ready;
        self.presence
            .leave(room, name, origin, how, Instant::now(), out);
    }

    fn presence_limits(&self) -> PresenceLimits {
        self.presence.limits()
    }

    fn presence(&mut self, room: &Arc<str>) -> Pending<Vec<PresentName>> {
        let members = self.presence.members(room, Instant::now(), &mut self.ready);
        Pending::Ready(Ok(members))
    }

    fn presence_sweep(&mut self, room: &Arc<str>) {
        self.presence.sweep(room, Instant::now(), &mut self.ready);
    }

    fn presence_restore(&mut self, _: &Arc<str>, _: Vec<(Arc<str>, u32)>) {
        // Nothing is lost in this process: there is nothing to set right.
    }

    fn history(
        &mut self,
        room: &Arc<str>,
        since: Option<u64>,
        limit: usize,
    ) -> Pending<HistoryPage> {
        let request = JoinRequest {
            resume: None,
            last: usize::MAX,
        };
        let snapshot = self.join_snapshot(room, &request, Instant::now());
        let kept = match snapshot.resume {
            Resume::Recent(kept) => kept,
            Resume::NotAsked | Resume::Resumed(_) | Resume::NotResumed => Vec::new(),
        };
        Pending::Ready(Ok(HistoryPage {
            room: snapshot.room,
            epoch: snapshot.epoch,
            seq: snapshot.seq,
            messages: page_of(kept, since, limit),
        }))
    }

    fn control(&mut self, control: Control) -> Pending<()> {
        self.ready.push(BrokerEvent::Control(control));
        Pending::Ready(Ok(()))
    }

    fn flush(&mut self) -> Pending<()> {
        // The end of a drain: the history is kept for the next process.
        if let Some(path) = &self.snapshot_path {
            match self.save_snapshot(path) {
                Ok(rooms) => log::info!("history: {rooms} rooms written to {}", path.display()),
                Err(err) => log::warn!("history snapshot not written: {err}"),
            }
        }
        Pending::Ready(Ok(()))
    }

    fn ready_events(&mut self, out: &mut Vec<BrokerEvent>) {
        out.append(&mut self.ready);
    }

    fn maintain(&mut self) {
        // Rooms with members are occupied, and kept by the sweep.
        let forgotten = self.sweep(Instant::now(), |_| false);
        if forgotten > 0 {
            log::debug!("history: {forgotten} idle rooms forgotten");
        }
    }
}
