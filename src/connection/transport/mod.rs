//! The WebSocket transport: the one module that turns bytes into frames and frames into bytes.
//!
//! Inbound, [`InboundFrames`] decodes the peer's bytes with actix-http's codec, reassembles
//! fragmented messages (RFC 6455 §5.4), enforces the message size limit, checks UTF-8 and
//! classifies every failure as an [`InboundError`] whose close code is decided in one place
//! ([`InboundError::close_code`]). The bytes come from one of two places: the request payload
//! of actix-web's dispatcher (an app embedding [`crate::start`]), or, for a connection taken
//! out of the dispatcher ([`super::upgrade`], the binary's server), the socket itself through
//! [`SocketReader`]. Either way no read buffer is kept while the connection is idle.
//!
//! Outbound, [`OutboundQueue`] is the session's bounded queue of frames not yet written, and
//! [`OutboundBody`] drains it: as the response body the dispatcher polls, or through
//! [`write_out`] straight to the socket. The session actor runs as its own task (not inside
//! the response body, as actix-web-actors' `WebsocketContext` does): a client that stops
//! reading then only fills this queue, while its actor keeps running its heartbeat, timeouts
//! and slow-consumer check.
//!
//! This module knows nothing of close states or of the chat: it must not decide anything
//! beyond "these bytes are (not) a valid frame".
//!
//! With `permessage-deflate` agreed ([`Deflate`]), inbound inflates compressed messages and
//! outbound compresses texts; [`deflate`] holds the per-thread compressor and inflater, so that
//! no connection keeps any compression state.
//!
//! The parts: [`inbound`] (bytes to events), [`mod@outbound`] (the queue and the writing),
//! [`in_flight`] (the flood gate), [`deflate`] (RFC 7692's bytes); here, the socket options of
//! every accepted connection.

use std::any::Any;

pub mod deflate;
pub mod in_flight;
pub mod inbound;
pub mod outbound;

pub use deflate::Deflate;
pub use in_flight::{InFlight, InFlightToken, MAX_MESSAGES_IN_FLIGHT};
pub use inbound::{Inbound, InboundError, InboundFrames, SocketReader};
pub use outbound::{
    encode_text, encode_text_compressed, outbound, write_out, OutboundBody, OutboundQueue, Refused,
};

/// Socket options set on every accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketTuning {
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel drops
    /// the connection.
    pub user_timeout: std::time::Duration,
    /// `SO_SNDBUF` in bytes; 0 leaves the kernel's default (autotuned).
    pub send_buffer: usize,
    /// `TCP_NODELAY`: write each frame at once rather than hold it for the acknowledgement of
    /// the one before (Nagle's algorithm).
    pub no_delay: bool,
}

/// Applies `tuning` to an accepted socket.
///
/// `TCP_USER_TIMEOUT` bounds how long the kernel keeps a connection whose peer stopped
/// acknowledging data (it stopped reading, or vanished). Such a connection cannot be ended from
/// the session: the HTTP dispatcher only polls the response body when it can write, so an
/// abort or the end of a close handshake waits behind bytes the peer never takes. With it, the
/// kernel drops the connection once sent data stays unacknowledged for the timeout (zero-window
/// probes included), and the dispatcher with it. `SO_SNDBUF` bounds the bytes such a peer parks
/// in kernel memory, and what a close frame waits behind.
pub fn tune_socket(tcp: &actix_web::rt::net::TcpStream, tuning: SocketTuning) {
    let socket = socket2::SockRef::from(tcp);
    if let Err(err) = socket.set_tcp_user_timeout(Some(tuning.user_timeout)) {
        log::warn!("cannot set TCP_USER_TIMEOUT on a new connection: {err}");
    }
    if tuning.no_delay {
        if let Err(err) = tcp.set_nodelay(true) {
            log::warn!("cannot set TCP_NODELAY on a new connection: {err}");
        }
    }
    if tuning.send_buffer > 0 {
        if let Err(err) = socket.set_send_buffer_size(tuning.send_buffer) {
            log::warn!("cannot set SO_SNDBUF on a new connection: {err}");
        }
    }
}

/// For `HttpServer::on_connect`, in apps that embed the session with actix-web's own server:
/// [`tune_socket`] on every accepted TCP connection.
pub fn on_connect(
    tuning: SocketTuning,
) -> impl Fn(&dyn Any, &mut actix_web::dev::Extensions) + Send + Sync + Clone + 'static {
    move |connection: &dyn Any, _: &mut actix_web::dev::Extensions| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            tune_socket(tcp, tuning);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback connection's accepted end, tuned with `no_delay`: `TCP_NODELAY` as read back
    /// from the kernel.
    async fn nodelay_after_tuning(no_delay: bool) -> std::io::Result<bool> {
        let listener = actix_web::rt::net::TcpListener::bind("127.0.0.1:0").await?;
        let _client = actix_web::rt::net::TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        let tuning = SocketTuning {
            user_timeout: std::time::Duration::from_secs(15),
            send_buffer: 0,
            no_delay,
        };
        tune_socket(&accepted, tuning);
        accepted.nodelay()
    }

    #[actix_rt::test]
    async fn no_delay_sets_tcp_nodelay_and_its_absence_leaves_nagle_on() -> std::io::Result<()> {
        assert!(nodelay_after_tuning(true).await?);
        assert!(!nodelay_after_tuning(false).await?);
        Ok(())
    }
}
