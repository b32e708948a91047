//! What a request must be for a WebSocket upgrade, beyond what actix-http's handshake check
//! (`actix_http::ws::handshake`: method, headers, key, version) looks at: RFC 6455 §4.1 asks
//! for an HTTP/1.1 GET, and an upgrade request has no body.
//!
//! Both ways in use it before they switch protocols: the binary's upgrade out of the
//! dispatcher ([`super::upgrade::accept`]) and the embedded one ([`super::session::start`]);
//! both also answer a `permessage-deflate` offer through [`agree_deflate`]. It decides nothing
//! about who may connect (that is [`crate::service::server`]).

use actix_http::body::BoxBody;
use actix_http::header;
use actix_http::{RequestHead, Response, StatusCode, Version};

use crate::connection::deflate_offer::{self, Agreement};

/// Why a request that asks for a WebSocket upgrade cannot have one, whatever its headers say
/// otherwise (RFC 6455 §4.1: an HTTP/1.1 GET). actix-http's handshake check does not look at
/// these: an HTTP/1.0 upgrade would be switched, and one with a body would have the body read
/// as WebSocket frames (with `Content-Length`) or be answered through the HTTP dispatcher with
/// chunked framing around the WebSocket bytes (with `Transfer-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadFraming {
    /// Not HTTP/1.1.
    #[error("a websocket upgrade needs HTTP/1.1")]
    Version,
    /// A `Transfer-Encoding`, or a `Content-Length` above 0.
    #[error("a websocket upgrade request may not have a body")]
    Body,
}

impl BadFraming {
    /// The refusal's answer: 400 with the reason as a line of text.
    pub fn response(&self) -> Response<BoxBody> {
        Response::with_body(StatusCode::BAD_REQUEST, format!("{self}\n")).map_into_boxed_body()
    }
}

/// The framing an upgrade request must have: HTTP/1.1 and no body. Checked before anything
/// else about the upgrade, so that no such request is ever switched.
pub fn check_framing(head: &RequestHead) -> Result<(), BadFraming> {
    if head.version != Version::HTTP_11 {
        return Err(BadFraming::Version);
    }
    let headers = head.headers();
    let content_length = headers.get(header::CONTENT_LENGTH).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    });
    match (
        headers.contains_key(header::TRANSFER_ENCODING),
        content_length,
    ) {
        (true, _) | (_, Some(None)) => Err(BadFraming::Body),
        (_, Some(Some(length))) if length > 0 => Err(BadFraming::Body),
        _ => Ok(()),
    }
}

/// The `permessage-deflate` agreement for `head`'s `Sec-WebSocket-Extensions` offers when
/// `enabled` (`session.permessage_deflate`); `None`: no extension (not enabled, nothing offered,
/// or no offer this server can honour: declined, never refused, RFC 7692 §5). A header value
/// that is not visible ASCII is no offer.
pub fn agree_deflate(head: &RequestHead, enabled: bool) -> Option<Agreement> {
    if !enabled {
        return None;
    }
    let offers = head
        .headers()
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .filter_map(|value| value.to_str().ok());
    deflate_offer::negotiate(offers)
}
