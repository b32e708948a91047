//! Messages of a session on their way through the application, counted so that a flooding
//! peer is held back by TCP instead of queued in memory ([`InFlight`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// A session's messages on their way through the application (a chat message on its way to
/// the supervisor and the broker, say): past `limit` of them, the session reads no more from
/// its peer until some are done, and TCP's flow control slows the peer down. A client that
/// floods without a rate limit then fills no unbounded queue; nothing it sent is dropped.
/// Cloning shares the count; tokens may be dropped on any thread.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<InFlightShared>);

#[derive(Debug)]
struct InFlightShared {
    count: AtomicUsize,
    limit: usize,
    /// The reader waiting for room.
    reader: AtomicWaker,
}

/// One message on its way; dropping it says the message is done.
#[derive(Debug)]
pub struct InFlightToken(Arc<InFlightShared>);

/// How many messages of one session may be on their way at once ([`InFlight`]).
pub const MAX_MESSAGES_IN_FLIGHT: usize = 64;

impl InFlight {
    /// A count that stops the reader at `limit` messages.
    pub fn new(limit: usize) -> Self {
        InFlight(Arc::new(InFlightShared {
            count: AtomicUsize::new(0),
            limit,
            reader: AtomicWaker::new(),
        }))
    }

    /// Counts one more message on its way until the token is dropped.
    pub fn hold(&self) -> InFlightToken {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        InFlightToken(self.0.clone())
    }

    /// Messages on their way now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Whether the reader is held back now.
    pub fn is_full(&self) -> bool {
        self.count() >= self.0.limit
    }

    /// Ready while fewer than the limit are on their way; otherwise the reader is woken when
    /// one is done.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_full() {
            return Poll::Ready(());
        }
        self.0.reader.register(cx.waker());
        // A token dropped between the check and the registration woke nobody: look again.
        if !self.is_full() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for InFlightToken {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) >= self.0.limit {
            self.0.reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn in_flight_holds_the_reader_back_at_its_limit_and_wakes_it_below() {
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let in_flight = InFlight::new(2);
        let first = in_flight.hold();
        assert!(in_flight.poll_room(&mut cx).is_ready());
        let second = in_flight.hold();
        assert!(in_flight.is_full());
        assert!(in_flight.poll_room(&mut cx).is_pending());
        // Done on another thread, as the supervisor's are.
        std::thread::spawn(move || drop(second))
            .join()
            .expect("the dropping thread");
        assert!(woken.0.load(Ordering::SeqCst), "the reader was not woken");
        assert!(in_flight.poll_room(&mut cx).is_ready());
        assert_eq!(in_flight.count(), 1);
        drop(first);
        assert_eq!(in_flight.count(), 0);
    }
}
