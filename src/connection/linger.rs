//! Lingering close: the end of every accepted TCP connection, done so that the peer reads the
//! server's last bytes (a close frame above all) instead of losing them to a reset.
//!
//! A socket closed while the peer's data is still arriving, or still unread in its receive
//! queue, makes the kernel answer with a reset; the reset purges what the server had queued but
//! not yet sent, and makes the peer's kernel drop what it had not yet read, close frame
//! included, so a browser reports 1006 where the server sent 1008. [`LingeringStream`] wraps
//! the accepted socket: when the HTTP dispatcher or the session's writer
//! ([`super::transport::write_out`]) shuts it down, it half-closes (FIN after the last byte);
//! when the last owner drops it, the socket goes to a background task that reads
//! and discards until the peer closes its side, or until [`LingerBounds`] (time and bytes)
//! pass, and only then closes it. This is nginx's `lingering_close`.
//!
//! The bounds cap what a hostile peer can hold: one socket for at most `time`, at most `bytes`
//! read. Past `bytes` the task stops reading but keeps the socket until `time`: TCP's window
//! then holds a peer that keeps flooding back, while a peer that also reads still gets to read
//! the close frame (closing at the byte bound would reset the connection under it, and the
//! peer's kernel would drop the unread close frame). The task is not a session: the drain does
//! not wait for it, and a stopping server drops it. A connection whose session aborted skips
//! the linger ([`LingerSwitch`]).
//!
//! It must not know about WebSocket frames or sessions: it only moves bytes at the very end.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::metrics;

/// How long and how much a closing connection keeps reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LingerBounds {
    /// The most time spent reading after the FIN; zero: close at once.
    pub time: Duration,
    /// The most bytes read and discarded; past it the connection is no longer read, and
    /// closes when `time` is up.
    pub bytes: u64,
    /// The most connections lingering at once in the process; a close beyond it does not
    /// linger (descriptors are finite: see [`crate::service::open_files`]).
    pub max_lingering: usize,
}

/// Connections lingering now, against [`LingerBounds::max_lingering`].
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Lets the connection's session turn the linger off: an aborted session's socket closes at
/// once. Put into the connection's extensions; cloning shares the switch.
#[derive(Debug, Clone, Default)]
pub struct LingerSwitch(Rc<Cell<bool>>);

impl LingerSwitch {
    /// The connection closes without lingering: it was aborted, or the peer acknowledged our
    /// close frame, so that nothing of ours is left to deliver.
    pub fn skip(&self) {
        self.0.set(true);
    }

    fn skipped(&self) -> bool {
        self.0.get()
    }
}

/// An accepted TCP connection that lingers when it is closed; see the module docs.
pub struct LingeringStream {
    stream: Option<TcpStream>,
    bounds: LingerBounds,
    /// Our side sent its FIN: what is left is to read the peer's remaining bytes.
    write_closed: Cell<bool>,
    switch: LingerSwitch,
}

impl LingeringStream {
    /// Wraps `stream`, which lingers within `bounds` once closed.
    pub fn new(stream: TcpStream, bounds: LingerBounds) -> Self {
        LingeringStream {
            stream: Some(stream),
            bounds,
            write_closed: Cell::new(false),
            switch: LingerSwitch::default(),
        }
    }

    /// The socket, for options set at accept time.
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.stream.as_ref()
    }

    /// The switch a session uses to skip the linger.
    pub fn switch(&self) -> LingerSwitch {
        self.switch.clone()
    }

    /// Reads through a shared reference, so that a session's reader and writer can share the
    /// socket (an upgraded connection, [`super::transport::SocketReader`]): once the socket is
    /// readable, `read` is called with it, and called again when readiness proved stale.
    /// `read` gets its buffer only then, so an idle connection's wake-ups cost no buffer.
    pub fn poll_read_shared<T>(
        &self,
        cx: &mut Context<'_>,
        mut read: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let stream = self.shared_stream()?;
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            match read(stream) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Writes from `buf` through a shared reference (see [`Self::poll_read_shared`]).
    pub fn poll_write_shared(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let stream = self.shared_stream()?;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Writes what the socket takes now from `buf`, without waiting (`WouldBlock` when it takes
    /// nothing): for a caller that writes many connections' last frames in one loop (a drain).
    pub fn try_write_shared(&self, buf: &[u8]) -> io::Result<usize> {
        self.shared_stream()?.try_write(buf)
    }

    /// Half-closes through a shared reference: the FIN follows the last byte written, and the
    /// connection lingers when dropped.
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self.shared_stream()?).shutdown(Shutdown::Write)?;
        self.write_closed.set(true);
        Ok(())
    }

    /// Ends both directions at once, without lingering: a reader waiting on the socket sees
    /// its end. For a connection whose writes failed.
    pub fn shutdown_both(&self) {
        self.switch.skip();
        if let Ok(stream) = self.shared_stream() {
            // Fails only when the socket is already gone, which is what is asked for.
            let _ = socket2::SockRef::from(stream).shutdown(Shutdown::Both);
        }
    }

    /// Whether the connection lingers once closed (see [`LingerSwitch::skip`]).
    pub fn lingers(&self) -> bool {
        !self.switch.skipped() && !self.bounds.time.is_zero()
    }

    fn shared_stream(&self) -> io::Result<&TcpStream> {
        self.stream
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// Half-closes: the FIN follows the last byte written.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = match this.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(err) => return Poll::Ready(Err(err)),
        };
        if let Poll::Ready(Ok(())) = result {
            this.write_closed.set(true);
        }
        result
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Only a connection we closed in order lingers: one that failed or was aborted has
        // nothing left to deliver.
        if !self.write_closed.get() || !self.lingers() {
            return;
        }
        // The dispatcher drops the stream on a worker thread inside its runtime; when the
        // runtime is going away there is nobody to linger for, and the socket just closes.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::AcqRel) >= self.bounds.max_lingering {
            LINGERING.fetch_sub(1, Ordering::AcqRel);
            log::debug!(
                "{} connections linger already: closing at once",
                self.bounds.max_lingering
            );
            return;
        }
        metrics().connections_lingering.inc();
        runtime.spawn(linger(stream, self.bounds, LingerSlot));
    }
}

/// How a linger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LingerEnd {
    /// The peer closed its side: the socket closes with nothing unread.
    PeerClosed,
    /// The time bound passed.
    Timeout,
    /// The byte bound passed: nothing more was read until the time bound.
    TooMuch,
    /// Reading failed (the peer reset).
    Failed,
}

/// One place in [`LINGERING`], given back when the linger ends or its task is dropped.
struct LingerSlot;

impl Drop for LingerSlot {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::AcqRel);
        metrics().connections_lingering.dec();
    }
}

/// Reads and discards until the peer's FIN or the time bound, then drops (closes) `stream`;
/// past the byte bound it stops reading and waits for the time bound.
async fn linger(stream: TcpStream, bounds: LingerBounds, slot: LingerSlot) {
    let deadline = tokio::time::Instant::now() + bounds.time;
    let discard = async {
        let mut read = 0u64;
        loop {
            if stream.readable().await.is_err() {
                return LingerEnd::Failed;
            }
            // The buffer lives on the thread's stack, not in the task: a task holding it
            // across the wait would cost every lingering connection 16 KiB of fresh heap (and
            // a drain of 10,000 connections 160 MiB of page faults and zeroing).
            let mut buf = [0u8; 16 * 1024];
            match stream.try_read(&mut buf) {
                Ok(0) => return LingerEnd::PeerClosed,
                Ok(n) => {
                    read += n as u64;
                    if read > bounds.bytes {
                        return LingerEnd::TooMuch;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return LingerEnd::Failed,
            }
        }
    };
    let end = tokio::time::timeout_at(deadline, discard)
        .await
        .unwrap_or(LingerEnd::Timeout);
    if end == LingerEnd::TooMuch {
        // A flooding peer that also reads needs the time to read our close frame.
        tokio::time::sleep_until(deadline).await;
    }
    if end != LingerEnd::PeerClosed {
        log::debug!("lingering close ended: {end:?}");
    }
    drop(stream);
    drop(slot);
}
