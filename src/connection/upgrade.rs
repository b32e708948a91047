//! Upgraded connections taken from actix-http's HTTP/1 dispatcher: the handshake's answer, then
//! the session owns the socket.
//!
//! actix-http hands a request carrying `Upgrade: websocket` to an upgrade service together
//! with its connection ([`Upgrading`]), once [`actix_http::HttpService`] is built with one. The
//! 101 goes out through the dispatcher's codec, and the connection then belongs to a session
//! ([`super::session::start_on_socket`]): the dispatcher, its 8 KiB read and write buffers and
//! its timers are gone, and an idle connection holds no buffer at all. A refusal is answered
//! with `Connection: close` and the connection closes (lingering, see [`super::linger`]).
//!
//! This module decides nothing about who may connect (that is [`crate::service::server`]) nor about
//! sessions (that is [`super::session`]).

use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::ws::HandshakeError;
use actix_http::{h1, header, ConnectionType, Request, Response};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::SinkExt;

use crate::connection::handshake::{agree_deflate, check_framing, BadFraming};
use crate::connection::linger::LingeringStream;
use crate::connection::request_deadline::HeadTimed;
use crate::connection::session::{self, SessionConfig, SessionHandle, SessionHandler};
use crate::connection::transport::Deflate;

/// A connection whose request asks for an upgrade, as the HTTP dispatcher hands it over.
pub type Upgrading = Framed<HeadTimed<LingeringStream>, h1::Codec>;

/// Why an upgrade ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeFailed {
    /// The request is no valid WebSocket handshake; it was answered with the matching status.
    #[error("not a valid websocket handshake: {0}")]
    Handshake(HandshakeError),
    /// The request is framed in a way no upgrade may be (HTTP/1.0, a body); it was answered
    /// 400.
    #[error("{0}")]
    Framing(BadFraming),
    /// The 101 response could not be written: the peer is gone.
    #[error("writing the 101 response failed: {0}")]
    Io(std::io::Error),
}

/// What is left of an accepted upgrade: writing the session's frames to the connection until
/// the session ends, then closing it. The caller awaits it where the connection's task runs
/// (for actix-http: in its upgrade service's future).
pub type Writing = LocalBoxFuture<'static, ()>;

/// Completes the handshake of `req` and hands `connection` to a new session running `handler`.
///
/// The request and the dispatcher's buffers are dropped here, before the session's life: an
/// idle connection keeps only the session and the small [`Writing`] future. Await this in a
/// future of its own (boxed, say) that ends before the [`Writing`] starts, so that its state
/// (the request, the codec) is not kept either.
pub async fn accept(
    req: Request,
    connection: Upgrading,
    handler: impl SessionHandler,
    config: SessionConfig,
) -> Result<(SessionHandle, Writing), UpgradeFailed> {
    accept_subprotocol(req, connection, handler, config, None).await
}

/// [`accept`], answering the 101 with `Sec-WebSocket-Protocol: subprotocol` when given (the
/// one of the client's offered subprotocols the server chose). With
/// [`SessionConfig::permessage_deflate`], a `permessage-deflate` offer is answered too
/// ([`agree_deflate`]).
pub async fn accept_subprotocol(
    req: Request,
    mut connection: Upgrading,
    handler: impl SessionHandler,
    config: SessionConfig,
    subprotocol: Option<&'static str>,
) -> Result<(SessionHandle, Writing), UpgradeFailed> {
    if let Err(bad) = check_framing(req.head()) {
        drop(req);
        // The answer is best effort: the error reported is the framing's.
        let _ = refuse(connection, bad.response()).await;
        return Err(UpgradeFailed::Framing(bad));
    }
    let accepted = actix_http::ws::handshake(req.head());
    let agreed = agree_deflate(req.head(), config.permessage_deflate);
    drop(req);
    let deflate = agreed
        .as_ref()
        .map_or(Deflate::Off, |agreed| agreed.deflate);
    let switching = match accepted {
        Ok(mut accepted) => {
            if let Some(subprotocol) = subprotocol {
                accepted.insert_header((header::SEC_WEBSOCKET_PROTOCOL, subprotocol));
            }
            if let Some(agreed) = agreed {
                accepted.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, agreed.response));
            }
            accepted.finish().drop_body()
        }
        Err(err) => {
            // The answer is best effort: the error reported is the handshake's.
            let _ = refuse(connection, (&err).into()).await;
            return Err(UpgradeFailed::Handshake(err));
        }
    };
    connection
        .send((switching, BodySize::None).into())
        .await
        .map_err(UpgradeFailed::Io)?;
    let FramedParts { io, read_buf, .. } = connection.into_parts();
    // The connection leaves HTTP: no more request heads, and no timer kept.
    let io = io.into_inner();
    // Bytes the client sent right behind its request, copied out of the dispatcher's 8 KiB
    // read buffer so that the buffer goes now.
    let leftover = Bytes::copy_from_slice(&read_buf);
    drop(read_buf);
    let (handle, writing) = session::start_on_socket(io, leftover, handler, config, deflate);
    Ok((handle, Box::pin(writing)))
}

/// Answers `connection` with `response` (a refusal, whose body is in memory) and
/// `Connection: close`, then closes it.
pub async fn refuse(mut connection: Upgrading, response: Response<BoxBody>) -> std::io::Result<()> {
    let (mut head, body) = response.into_parts();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let body = body.try_into_bytes().unwrap_or_default();
    connection
        .send((head, BodySize::Sized(body.len() as u64)).into())
        .await?;
    if !body.is_empty() {
        connection.send(h1::Message::Chunk(Some(body))).await?;
    }
    SinkExt::<h1::Message<(Response<()>, BodySize)>>::close(&mut connection).await
}
