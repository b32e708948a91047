//! What both tokio shells ([`Client`](super::Client), v1, and
//! [`RoomsClient`](super::RoomsClient), `wsgrace.v2`) do with a socket the same way: open one
//! within the connect timeout and say how the attempt went ([`dial`]: opened, refused with
//! an HTTP status, failed, or a URL no retry can fix), read a close frame as a
//! [`CloseInfo`], and keep the optional idle and close deadlines.
//!
//! It owns no state and decides nothing: whether to retry is the policy's, what a frame
//! means is the wire's. It must not log the request (its URL carries the token).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::policy::CloseInfo;

pub(super) type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How one attempt to open a socket went.
pub(super) enum Dial {
    /// The upgrade succeeded.
    Opened(Box<WsStream>, Box<Response>),
    /// No socket: the upgrade was refused (its HTTP status is in the [`CloseInfo`]), timed
    /// out, or the network failed; the policy decides what comes next.
    Failed(CloseInfo),
    /// The URL or the request cannot be used (a scheme without TLS support, a subprotocol
    /// the server did not choose): a retry would repeat it.
    Unusable(String),
}

/// The request for `url`, with `Sec-WebSocket-Protocol: <subprotocol>` when one is given.
pub(super) fn request(url: &str, subprotocol: Option<&str>) -> Result<Request, String> {
    let mut request = url.into_client_request().map_err(|err| err.to_string())?;
    if let Some(subprotocol) = subprotocol {
        let value = subprotocol
            .parse()
            .map_err(|_| format!("subprotocol {subprotocol:?} is not a header value"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    Ok(request)
}

/// Opens a socket for `request` within `timeout`.
pub(super) async fn dial(request: Request, timeout: Duration) -> Dial {
    match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Dial::Failed(CloseInfo::abnormal("connect timeout")),
        Ok(Ok((ws, response))) => Dial::Opened(Box::new(ws), Box::new(response)),
        Ok(Err(WsError::Http(response))) => Dial::Failed(CloseInfo::refused(
            response.status().as_u16(),
            response.body().as_deref(),
        )),
        Ok(Err(err)) if is_unusable(&err) => Dial::Unusable(err.to_string()),
        Ok(Err(err)) => Dial::Failed(CloseInfo::abnormal(err.to_string())),
    }
}

/// A URL error, or a 101 without the subprotocol that was offered (a server that does not
/// speak it): nothing a retry changes.
fn is_unusable(err: &WsError) -> bool {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    matches!(
        err,
        WsError::Url(_) | WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_))
    )
}

/// A close frame from the server as the policy reads it (no frame body: 1005).
pub(super) fn close_info(frame: Option<CloseFrame<'_>>) -> CloseInfo {
    match frame {
        Some(frame) => CloseInfo {
            code: u16::from(frame.code),
            reason: frame.reason.into_owned(),
            clean: true,
            http_status: None,
        },
        None => CloseInfo {
            code: 1005,
            reason: String::new(),
            clean: true,
            http_status: None,
        },
    }
}

/// Pushes the idle deadline `timeout` into the future (a frame came).
pub(super) fn rearm(idle: &mut Option<Pin<Box<Sleep>>>, timeout: Option<Duration>) {
    let at = timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
    if let (Some(sleep), Some(at)) = (idle.as_mut(), at) {
        sleep.as_mut().reset(at);
    }
}

/// Waits for the deadline if there is one, forever otherwise.
pub(super) async fn wait(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_offers_the_subprotocol() {
        let request = request("ws://h:1/ws?name=ann", Some("wsgrace.v2")).expect("a request");
        assert_eq!(request.uri(), "ws://h:1/ws?name=ann");
        let offered = request.headers().get("Sec-WebSocket-Protocol");
        assert_eq!(offered.and_then(|v| v.to_str().ok()), Some("wsgrace.v2"));
        let plain = super::request("ws://h:1/ws", None).expect("a request");
        assert!(plain.headers().get("Sec-WebSocket-Protocol").is_none());
        assert!(super::request("ws://h:1/ws", Some("bad\nvalue")).is_err());
    }

    #[test]
    fn a_close_frame_without_a_body_is_1005() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        assert_eq!(close_info(None).code, 1005);
        let frame = CloseFrame {
            code: CloseCode::from(4001),
            reason: "kicked".into(),
        };
        let close = close_info(Some(frame));
        assert_eq!(
            (close.code, close.reason.as_str(), close.clean),
            (4001, "kicked", true)
        );
    }
}
