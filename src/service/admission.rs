//! Admission: every check that can refuse an upgrade, in order, before the handshake:
//! draining (503), broker unreachable (503), origin (403), subprotocol (400
//! `bad_subprotocol`), room, name, `since` and `epoch` (400; a v2 upgrade names no room:
//! `bad_query`), token (401, 403, with authentication on), open WebSockets of the client
//! address (429), connection limit (503). Every refusal is counted in
//! `wsgrace_upgrades_refused_total{reason}`. An upgrade let through gets its session's
//! handler (v1's [`ChatHandler`] or v2's [`MultiRoomHandler`]) and settings.
//!
//! It must not serve anything: the routes and the upgrade are [`super::server`]'s.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_http::RequestHead;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use bytestring::ByteString;
use serde::Deserialize;

use super::server::AppState;
use crate::broker::{Epoch, ResumeRequest};
use crate::close::CloseMode;
use crate::config::is_valid_name;
use crate::connection::session::{SessionConfig, SessionEnd, SessionHandle, SessionHandler};
use crate::metrics::metrics;
use crate::protocol::v2;
use crate::rooms::handler::{ChatHandler, MultiRoomHandler};
use crate::service::auth::{self, Verifier};
use crate::service::client_address::{client_address, AddressSlot};
use crate::service::expiry::Expiring;
use crate::service::refusal_log;

#[derive(Debug, Deserialize)]
struct JoinQuery {
    room: Option<String>,
    name: Option<String>,
    since: Option<String>,
    epoch: Option<String>,
    token: Option<String>,
}

/// The largest `since` plus one: a seq is below 2^63.
const SINCE_LIMIT: u64 = 1 << 63;

/// Why a resume request was refused (HTTP 400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadResume {
    #[error("since must be an integer, 0 <= since < 2^63")]
    Since,
    #[error("epoch must be 1-64 characters of [A-Za-z0-9_.-]")]
    Epoch,
}

impl BadResume {
    fn reason(&self) -> &'static str {
        match self {
            BadResume::Since => "bad_since",
            BadResume::Epoch => "bad_epoch",
        }
    }
}

/// The resume request of an upgrade's `since` and `epoch` (none without `since`).
fn resume_request(
    since: Option<&str>,
    epoch: Option<&str>,
) -> Result<Option<ResumeRequest>, BadResume> {
    let epoch = match epoch {
        Some(epoch) if !is_valid_name(epoch) => return Err(BadResume::Epoch),
        Some(epoch) => Some(Epoch::new(epoch.to_owned())),
        None => None,
    };
    let Some(since) = since else {
        return Ok(None);
    };
    let digits = !since.is_empty() && since.bytes().all(|b| b.is_ascii_digit());
    match since.parse::<u64>() {
        Ok(since) if digits && since < SINCE_LIMIT => Ok(Some(ResumeRequest { since, epoch })),
        _ => Err(BadResume::Since),
    }
}

/// An upgrade the checks let through: its session's handler and settings.
pub(super) struct Admitted {
    pub(super) handler: Counted<Expiring<Box<dyn SessionHandler>>>,
    pub(super) config: SessionConfig,
    /// The subprotocol the 101 answers with.
    pub(super) subprotocol: Option<&'static str>,
}

/// How a request meets the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// A WebSocket upgrade: a refusal is counted and logged (rate-limited,
    /// [`super::refusal_log`]).
    Upgrade,
    /// A plain `GET /ws` asking why an upgrade would be refused (a browser cannot read the
    /// status of a refused WebSocket): answered, neither counted nor logged. Its `Origin` is
    /// checked only when it sends one (a same-origin fetch does not), and its protocol comes
    /// from `X-Wsgrace-Protocol` (a fetch cannot send `Sec-WebSocket-Protocol`).
    Probe,
}

/// A refusal of [`admit`] for `reason`: `response`, counted and logged (`line`) for an
/// upgrade.
fn refuse(
    attempt: Attempt,
    reason: &'static str,
    response: HttpResponse,
    line: impl std::fmt::Display,
) -> Result<Admitted, Box<HttpResponse>> {
    if attempt == Attempt::Upgrade {
        metrics().refused(reason);
        refusal_log::warn(line);
    }
    Err(Box::new(response))
}

/// Every check that can refuse an upgrade, in order; an upgrade's refusal is counted and
/// logged ([`Attempt`]).
pub(super) fn admit(
    state: &AppState,
    req: &RequestHead,
    attempt: Attempt,
) -> Result<Admitted, Box<HttpResponse>> {
    if !state.readiness.is_ready() {
        let answer = HttpResponse::ServiceUnavailable().body("draining\n");
        return refuse(attempt, "draining", answer, "draining");
    }
    if !state.broker.is_up() {
        let answer = HttpResponse::ServiceUnavailable().body("broker unavailable\n");
        return refuse(
            attempt,
            "broker_unavailable",
            answer,
            "the broker is unavailable",
        );
    }
    let origin_sent = req.headers().contains_key(header::ORIGIN);
    if attempt == Attempt::Upgrade || origin_sent {
        if let Err(refusal) = check_origin(req, &state.config.server.allowed_origins) {
            let answer = HttpResponse::Forbidden().body(format!("{refusal}\n"));
            return refuse(attempt, "origin", answer, refusal);
        }
    }
    let protocol = match requested_protocol(req, attempt) {
        Ok(protocol) => protocol,
        Err(()) => {
            let answer = HttpResponse::BadRequest().body(format!(
                "bad_subprotocol: the subprotocols offered are not known; offer {} or none\n",
                v2::SUBPROTOCOL
            ));
            return refuse(attempt, "bad_subprotocol", answer, "unknown subprotocols");
        }
    };
    let mut query = match web::Query::<JoinQuery>::from_query(req.uri.query().unwrap_or_default()) {
        Ok(query) => query.into_inner(),
        Err(err) => {
            let answer = HttpResponse::BadRequest().body(format!("bad query: {err}\n"));
            return refuse(attempt, "bad_query", answer, "a query that cannot be read");
        }
    };
    let room = match protocol {
        Protocol::V1 => {
            let room = query.room.take().unwrap_or_else(|| "lobby".to_owned());
            if !is_valid_name(&room) {
                let answer = HttpResponse::BadRequest()
                    .body("room must be 1-64 characters of [A-Za-z0-9_.-]\n");
                return refuse(attempt, "bad_room", answer, format!("bad room {room:?}"));
            }
            Some(room)
        }
        Protocol::V2 => {
            if query.room.is_some() || query.since.is_some() || query.epoch.is_some() {
                let answer = HttpResponse::BadRequest().body(
                    "bad_query: a wsgrace.v2 upgrade names no room, since or epoch: rooms are \
                     joined over the connection\n",
                );
                return refuse(attempt, "bad_query", answer, "a v2 upgrade naming a room");
            }
            None
        }
    };
    // With authentication on, the token's `sub` names the session (the query's `name` is not
    // used) and its `exp` ends it; a v2 session's joins are checked against its `rooms`.
    let mut grant = None;
    if let Some(verifier) = &state.auth {
        let granted = authenticate(
            req,
            verifier,
            query.token.as_deref(),
            room.as_deref(),
            attempt,
        )?;
        query.name = Some(granted.identity.name.clone());
        grant = Some(granted);
    }
    if let Some(name) = &query.name {
        if !is_valid_name(name) {
            let answer =
                HttpResponse::BadRequest().body("name must be 1-64 characters of [A-Za-z0-9_.-]\n");
            return refuse(attempt, "bad_name", answer, format!("bad name {name:?}"));
        }
    }
    let resume = match resume_request(query.since.as_deref(), query.epoch.as_deref()) {
        Ok(resume) => resume,
        Err(bad) => {
            let answer = HttpResponse::BadRequest().body(format!("{bad}\n"));
            return refuse(attempt, bad.reason(), answer, &bad);
        }
    };
    let address = upgrade_client_address(req, &state.trusted_proxies);
    let address_slot = match address.map(|address| state.per_address.acquire(address)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(slot))) => Some(slot),
        Some(Err(at_limit)) => {
            let answer =
                HttpResponse::TooManyRequests().body("too many connections from this address\n");
            let line = format!("{at_limit} (server.max_connections_per_ip)");
            return refuse(attempt, "per_ip_limit", answer, line);
        }
    };
    let open = state.open.fetch_add(1, Ordering::AcqRel);
    let guard = OpenGuard(state.open.clone());
    if open >= state.max_connections {
        let answer = HttpResponse::ServiceUnavailable().body("too many connections\n");
        let line = format!("{} connections open", state.max_connections);
        return refuse(attempt, "max_connections", answer, line);
    }
    let closes_at = grant.as_ref().map(|grant| grant.identity.closes_at());
    let (config, session_handler, subprotocol): (_, Box<dyn SessionHandler>, _) = match room {
        Some(room) => (
            state.session_config(&room),
            Box::new(ChatHandler::new(state.supervisor.clone(), room, query.name).resume(resume)),
            None,
        ),
        None => {
            let mut handler = MultiRoomHandler::new(
                state.supervisor.clone(),
                query.name,
                state.config.session.max_rooms,
            );
            if let Some(grant) = grant {
                let rooms = grant.rooms;
                handler = handler.granting(Box::new(move |room| rooms.allows(room)));
            }
            (
                state.session_config(""),
                Box::new(handler),
                Some(v2::SUBPROTOCOL),
            )
        }
    };
    let handler = Counted {
        inner: Expiring::new(session_handler, closes_at),
        _guard: guard,
        _address_slot: address_slot,
    };
    Ok(Admitted {
        handler,
        config,
        subprotocol,
    })
}

/// The token check of an upgrade: the grant (to `room`, for a v1 upgrade), or the 401/403
/// response (counted, and logged without the token).
fn authenticate(
    req: &RequestHead,
    verifier: &Verifier,
    query_token: Option<&str>,
    room: Option<&str>,
    attempt: Attempt,
) -> Result<auth::Grant, Box<HttpResponse>> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = auth::request_token(query_token, authorization);
    let grant = token
        .ok_or(auth::AuthError::Missing)
        .and_then(|token| verifier.verify(token))
        .and_then(|grant| match room {
            Some(room) if !grant.rooms.allows(room) => {
                Err(auth::AuthError::RoomNotGranted(room.to_owned()))
            }
            _ => Ok(grant),
        });
    grant.map_err(|err| {
        let refusal = err.refusal();
        if attempt == Attempt::Upgrade {
            metrics().refused(refusal.reason());
            match room {
                Some(room) => refusal_log::warn(format_args!(
                    "{} ({err}) for room {room:?}",
                    refusal.reason()
                )),
                None => refusal_log::warn(format_args!("{} ({err})", refusal.reason())),
            }
        }
        let mut response = match refusal {
            auth::Refusal::Unauthorized => HttpResponse::Unauthorized(),
            auth::Refusal::Forbidden => HttpResponse::Forbidden(),
        };
        if refusal == auth::Refusal::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        Box::new(response.body(format!("{}: {err}\n", refusal.reason())))
    })
}

/// The protocol an upgrade asks for with `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// No subprotocol offered: one room per connection.
    V1,
    /// `wsgrace.v2` offered (among others): many rooms per connection.
    V2,
}

/// The header a probe (`Attempt::Probe`) names its protocol with, in place of
/// `Sec-WebSocket-Protocol`, which a browser's fetch cannot send.
pub const PROBE_PROTOCOL_HEADER: &str = "x-wsgrace-protocol";

/// The protocol of `req`: v1 without a `Sec-WebSocket-Protocol` (for a probe,
/// [`PROBE_PROTOCOL_HEADER`]), v2 when `wsgrace.v2` is one of the offered subprotocols; `Err`
/// when only others are offered.
fn requested_protocol(req: &RequestHead, attempt: Attempt) -> Result<Protocol, ()> {
    let name = match attempt {
        Attempt::Upgrade => header::SEC_WEBSOCKET_PROTOCOL.as_str(),
        Attempt::Probe => PROBE_PROTOCOL_HEADER,
    };
    let mut offered = req
        .headers()
        .get_all(name)
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Ok(Protocol::V1);
    }
    if offered.any(|protocol| protocol == v2::SUBPROTOCOL) {
        Ok(Protocol::V2)
    } else {
        Err(())
    }
}

/// Why an origin was refused.
#[derive(Debug, thiserror::Error)]
enum OriginRefused {
    #[error("origin {0:?} is not allowed")]
    NotAllowed(String),
    #[error("an Origin header is required")]
    Missing,
}

fn check_origin(req: &RequestHead, allowed: &[String]) -> Result<(), OriginRefused> {
    if allowed.is_empty() {
        return Ok(());
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .ok_or(OriginRefused::Missing)?;
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(OriginRefused::NotAllowed(origin.to_owned()))
    }
}

/// Decrements the open-connection count when the session (and so its handler) is dropped.
pub(super) struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handler that holds an [`OpenGuard`] (and its client address's place) for its session's
/// lifetime.
pub(super) struct Counted<H> {
    inner: H,
    _guard: OpenGuard,
    _address_slot: Option<AddressSlot>,
}

/// The client address of an upgrade: the TCP peer, or from `X-Forwarded-For` when the peer is
/// a trusted proxy ([`client_address`]). `None` without a peer address (not over TCP).
fn upgrade_client_address(req: &RequestHead, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr?.ip();
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok());
    Some(client_address(peer, forwarded, trusted))
}

impl<H: SessionHandler> SessionHandler for Counted<H> {
    fn on_start(&mut self, session: &SessionHandle) {
        self.inner.on_start(session)
    }

    fn on_message(&mut self, session: &SessionHandle, text: ByteString) {
        self.inner.on_message(session, text)
    }

    fn shutdown_mode(&mut self, default: CloseMode) -> CloseMode {
        self.inner.shutdown_mode(default)
    }

    fn on_end(&mut self, session: &SessionHandle, end: &SessionEnd) {
        self.inner.on_end(session, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_epoch() {
        let ok = |since: Option<&str>, epoch: Option<&str>| {
            resume_request(since, epoch).expect("a valid resume request")
        };
        assert_eq!(ok(None, None), None);
        assert_eq!(ok(None, Some("abc")), None);
        assert_eq!(
            ok(Some("0"), None),
            Some(ResumeRequest {
                since: 0,
                epoch: None
            })
        );
        assert_eq!(
            ok(Some("9223372036854775807"), Some("00ff")),
            Some(ResumeRequest {
                since: (1 << 63) - 1,
                epoch: Some(Epoch::new("00ff"))
            })
        );
        for since in [
            "",
            "-1",
            "+1",
            "abc",
            "1.5",
            " 1",
            "9223372036854775808",
            "18446744073709551616",
        ] {
            assert_eq!(
                resume_request(Some(since), None),
                Err(BadResume::Since),
                "{since:?}"
            );
        }
        for epoch in ["", "a b", &"e".repeat(65)] {
            assert_eq!(
                resume_request(Some("1"), Some(epoch)),
                Err(BadResume::Epoch),
                "{epoch:?}"
            );
        }
    }
}
