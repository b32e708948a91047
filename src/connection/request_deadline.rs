//! The request-head deadline of every request on an HTTP connection, not only the first
//! (`server.request_timeout_ms`, slowloris).
//!
//! actix-http arms its request timer for a connection's first request head only: after one
//! quick request on a keep-alive connection, the next head could be trickled a byte at a time
//! for ever, and every connection slot held that way. [`HeadTimed`] wraps the connection's
//! stream and times each head itself. [`HeadClock`] is the pure part: it watches the bytes
//! read and written and says when a head is due. A head starts with the first byte read after
//! the last response (or at accept), ends with its blank line, and is answered
//! `408 Request Timeout` with the connection closed if it takes longer than the timeout. Time
//! spent processing a request (after its blank line) and idle time between requests (actix's
//! keep-alive timer) are not counted.
//!
//! It must not know about WebSocket frames or sessions: an upgraded connection leaves the
//! wrapper ([`HeadTimed::into_inner`]) before its session starts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::metrics;

/// The answer to a head that took too long; the connection closes after it.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Where a connection is between requests, for its head deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is arriving; it must be complete by `deadline`.
    Head {
        deadline: Instant,
        /// How far the bytes read so far are into the blank line that ends a head.
        blank_line: BlankLine,
    },
    /// The head is complete: the request is being served, no deadline.
    Serving,
    /// The response is written: waiting for the next request (the keep-alive timer's time).
    Idle,
    /// The deadline passed; the 408 was sent.
    TimedOut,
}

/// Progress through the line ends that close a head: `\r\n\r\n`, or bare `\n\n`, as HTTP
/// parsers accept both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlankLine {
    /// Inside a header line.
    InLine,
    /// Right after a line's `\n`: an empty line here ends the head.
    LineStart,
    /// After `\r` at the start of a line.
    LineStartCr,
}

impl BlankLine {
    /// Feeds `bytes`; returns whether the head ended in them.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            *self = match (*self, byte) {
                (BlankLine::LineStart | BlankLine::LineStartCr, b'\n') => return true,
                (BlankLine::LineStart, b'\r') => BlankLine::LineStartCr,
                (_, b'\n') => BlankLine::LineStart,
                _ => BlankLine::InLine,
            };
        }
        false
    }
}

/// The pure head-deadline state of one connection: fed what is read and written, and the
/// time; says when the head is overdue. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadClock {
    timeout: Duration,
    phase: Phase,
}

impl HeadClock {
    /// A connection accepted at `now`: its first head is due by `now + timeout`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        HeadClock {
            timeout,
            phase: Phase::Head {
                deadline: now + timeout,
                blank_line: BlankLine::LineStart,
            },
        }
    }

    /// `bytes` were read at `now`.
    pub fn read(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Head {
                deadline: now + self.timeout,
                blank_line: BlankLine::LineStart,
            };
        }
        if let Phase::Head { blank_line, .. } = &mut self.phase {
            if blank_line.feed(bytes) {
                self.phase = Phase::Serving;
            }
        }
    }

    /// Bytes of a response were written: the request was answered.
    pub fn wrote(&mut self) {
        if self.phase != Phase::TimedOut {
            self.phase = Phase::Idle;
        }
    }

    /// The moment the head being read is due, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Whether the head is overdue at `now`; once it is, it stays so.
    pub fn overdue(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|deadline| now >= deadline) {
            self.phase = Phase::TimedOut;
        }
        self.phase == Phase::TimedOut
    }
}

/// An HTTP connection whose every request head has a deadline; see the module docs.
pub struct HeadTimed<S> {
    inner: S,
    clock: HeadClock,
    /// The timer of the head being read, made when a read first waits on it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The 408 was sent.
    answered: bool,
}

impl<S> HeadTimed<S> {
    /// Wraps a connection accepted now; every request head on it must arrive within
    /// `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        HeadTimed {
            inner,
            clock: HeadClock::new(timeout, Instant::now()),
            timer: None,
            answered: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, for a connection that leaves HTTP (an upgrade).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HeadTimed<S> {
    /// Answers 408 (best effort: a peer that does not read gets nothing) and reports the end of
    /// the input, so that the HTTP dispatcher closes the connection.
    fn time_out(&mut self, cx: &mut Context<'_>) {
        self.timer = None;
        if !std::mem::replace(&mut self.answered, true) {
            log::debug!("a request head took longer than server.request_timeout_ms: 408");
            metrics().request_timeouts.inc();
            let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.clock.overdue(Instant::now()) {
            this.time_out(cx);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.clock.read(&buf.filled()[before..], Instant::now());
        }
        match this.clock.deadline() {
            None => this.timer = None,
            Some(deadline) => {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if read.is_pending() && timer.as_mut().poll(cx).is_ready() {
                    // Due while waiting for the rest of the head.
                    this.clock.overdue(Instant::now());
                    this.time_out(cx);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadTimed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                this.clock.wrote();
            }
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                this.clock.wrote();
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn every_head_has_its_deadline() {
        let t0 = Instant::now();
        let mut clock = HeadClock::new(TIMEOUT, t0);
        // The first head: due one timeout after the accept, also when trickled.
        assert_eq!(clock.deadline(), Some(ms(t0, 1000)));
        clock.read(b"GET /healthz HTTP/1.1\r\n", ms(t0, 100));
        assert_eq!(clock.deadline(), Some(ms(t0, 1000)));
        clock.read(b"Host: x\r\n\r\n", ms(t0, 200));
        // Being served: no deadline, however long it takes.
        assert_eq!(clock.deadline(), None);
        assert!(!clock.overdue(ms(t0, 5000)));
        clock.wrote();
        // Idle between requests: the keep-alive timer's business.
        assert_eq!(clock.deadline(), None);
        assert!(!clock.overdue(ms(t0, 9000)));
        // The second head, trickled: due one timeout after its first byte.
        clock.read(b"G", ms(t0, 10_000));
        assert_eq!(clock.deadline(), Some(ms(t0, 11_000)));
        clock.read(b"ET / HTTP/1.1\r\n", ms(t0, 10_900));
        assert!(!clock.overdue(ms(t0, 10_999)));
        assert!(clock.overdue(ms(t0, 11_000)));
        // Once overdue, for good: a late write does not revive it.
        clock.wrote();
        assert!(clock.overdue(ms(t0, 11_001)));
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_it_is_cut() {
        let heads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        ];
        for head in heads {
            for cut in 0..=head.len() {
                let t0 = Instant::now();
                let mut clock = HeadClock::new(TIMEOUT, t0);
                clock.read(&head[..cut], t0);
                assert_eq!(
                    clock.deadline().is_none(),
                    cut == head.len(),
                    "{head:?} cut at {cut}"
                );
                clock.read(&head[cut..], t0);
                assert_eq!(clock.deadline(), None, "{head:?} cut at {cut}");
            }
        }
        // A line that merely contains CR or LF bytes in pairs with text between does not end it.
        let t0 = Instant::now();
        let mut clock = HeadClock::new(TIMEOUT, t0);
        clock.read(b"GET / HTTP/1.1\r\nA: b\r\nC: d\r\n", t0);
        assert!(clock.deadline().is_some());
    }

    #[test]
    fn a_silent_connection_is_due_from_its_accept() {
        let t0 = Instant::now();
        let mut clock = HeadClock::new(TIMEOUT, t0);
        clock.read(b"", ms(t0, 500));
        assert!(!clock.overdue(ms(t0, 999)));
        assert!(clock.overdue(ms(t0, 1000)));
    }
}
