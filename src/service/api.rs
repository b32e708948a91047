//! The server API on its own listener (`api.bind`): the app's backend publishes into a room,
//! disconnects a name (on every node, in the close mode it picks), reads a room's history
//! and its presence. Every request carries `Authorization: Bearer KEY` (`api.key`, compared in
//! constant time); bodies are JSON of at most [`MAX_BODY_BYTES`]; every answer is JSON and
//! counted in `wsgrace_api_requests_total{endpoint,status}`.
//!
//! It checks and translates; the supervisor carries requests out
//! ([`crate::rooms::supervisor::ApiPublish`] and its siblings). It must never log the key nor
//! log a line per publish.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::channel::oneshot;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::broker::{BrokerError, BrokerStatus, Disconnect, HistoryPage, PresentName};
use crate::close::{CloseMode, CloseStatus};
use crate::config::is_valid_name;
use crate::metrics::{metrics, ApiLabels};
use crate::rooms::supervisor::{
    ApiDisconnect, ApiHistory, ApiPresence, ApiPublish, ApiPublished, Reply, Supervisor,
};

/// The largest request body: past it, 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The largest history page.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// The history page when no `limit` is given.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The close code of a disconnect that names none.
pub const DEFAULT_DISCONNECT_CODE: u16 = 4000;
/// How long a request waits for the supervisor and the broker before it answers 503.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// What every API request needs.
#[derive(Clone)]
pub struct ApiState {
    supervisor: Addr<Supervisor>,
    key: Arc<[u8]>,
    broker: BrokerStatus,
    /// The longest text a publish may carry (`session.max_frame_bytes`: members could not be
    /// sent more in one frame, and clients bound what they take the same way).
    max_text_bytes: usize,
}

impl ApiState {
    /// The API of `supervisor`, keyed with `key`.
    pub fn new(
        supervisor: Addr<Supervisor>,
        key: &str,
        broker: BrokerStatus,
        max_text_bytes: usize,
    ) -> Self {
        ApiState {
            supervisor,
            key: Arc::from(key.as_bytes()),
            broker,
            max_text_bytes,
        }
    }
}

/// The API's routes.
pub fn routes(state: ApiState) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state.clone()))
            .route("/api/publish", web::post().to(publish))
            .route("/api/disconnect", web::post().to(disconnect))
            .route("/api/rooms/{room}/history", web::get().to(history))
            .route("/api/rooms/{room}/presence", web::get().to(presence))
            .default_service(web::to(unknown));
    }
}

/// A refused or failed request: its status and what the JSON error says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is unavailable: try again later",
        )
    }
}

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        log::debug!("api: broker: {err}");
        ApiError::unavailable()
    }
}

/// Answers `result` as JSON and counts it under `endpoint`.
fn respond(endpoint: &'static str, result: Result<Value, ApiError>) -> HttpResponse {
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(err) => (err.status, json!({ "error": err.message })),
    };
    metrics()
        .api_requests
        .get_or_create(&ApiLabels {
            endpoint,
            status: status.as_u16(),
        })
        .inc();
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
    }
    response.json(body)
}

/// The request carries `Authorization: Bearer KEY` with this API's key (compared in constant
/// time).
fn check_key(req: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if bool::from(given.ct_eq(&state.key)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer KEY with the API key",
        ))
    }
}

/// The broker can be reached (else 503 before any work).
fn check_broker(state: &ApiState) -> Result<(), ApiError> {
    if state.broker.is_up() {
        Ok(())
    } else {
        Err(ApiError::unavailable())
    }
}

/// The body, at most [`MAX_BODY_BYTES`] (413 past it), parsed as `T` (400 otherwise).
async fn read_json<T: for<'de> Deserialize<'de>>(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|err| ApiError::bad_request(format!("reading the body: {err}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("body: {err}")))
}

/// `value` names a room or a person: 1-64 of `[A-Za-z0-9_.-]`.
fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1-64 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

/// Sends `make(reply)` to the supervisor and waits for its answer.
async fn ask<T, M>(state: &ApiState, make: impl FnOnce(Reply<T>) -> M) -> Result<T, ApiError>
where
    M: actix::Message<Result = ()> + Send + 'static,
    Supervisor: actix::Handler<M>,
{
    let (reply, answer) = oneshot::channel();
    // As the sessions do: past the mailbox's nominal capacity (a busy supervisor), not
    // refused; a supervisor that is gone drops the reply, which answers 503 below.
    state.supervisor.do_send(make(reply));
    match tokio::time::timeout(ANSWER_DEADLINE, answer).await {
        Ok(Ok(answer)) => Ok(answer?),
        Ok(Err(oneshot::Canceled)) | Err(_) => Err(ApiError::unavailable()),
    }
}

/// `POST /api/publish`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room: String,
    text: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    respond("publish", publish_checked(&req, payload, &state).await)
}

async fn publish_checked(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ApiState,
) -> Result<Value, ApiError> {
    check_key(req, state)?;
    let body: PublishBody = read_json(req, payload).await?;
    check_name("room", &body.room)?;
    let from = body.from.unwrap_or_else(|| "server".to_owned());
    check_name("from", &from)?;
    if let Some(key) = &body.idempotency_key {
        check_name("idempotency_key", key)?;
    }
    if body.text.len() > state.max_text_bytes {
        return Err(ApiError::bad_request(format!(
            "text is over {} bytes (session.max_frame_bytes)",
            state.max_text_bytes
        )));
    }
    check_broker(state)?;
    let published: ApiPublished = ask(state, |reply| ApiPublish {
        room: body.room,
        from,
        text: body.text,
        idempotency_key: body.idempotency_key,
        reply,
    })
    .await?;
    let mut answer = json!({
        "room": &*published.room,
        "seq": published.seq,
        "epoch": published.epoch.as_str(),
    });
    if published.duplicate {
        answer["duplicate"] = Value::Bool(true);
    }
    Ok(answer)
}

/// `POST /api/disconnect`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    name: String,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    mode: Option<CloseMode>,
}

async fn disconnect(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    respond(
        "disconnect",
        disconnect_checked(&req, payload, &state).await,
    )
}

async fn disconnect_checked(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ApiState,
) -> Result<Value, ApiError> {
    check_key(req, state)?;
    let body: DisconnectBody = read_json(req, payload).await?;
    check_name("name", &body.name)?;
    if let Some(room) = &body.room {
        check_name("room", room)?;
    }
    let code = body.code.unwrap_or(DEFAULT_DISCONNECT_CODE);
    if !matches!(code, 1000 | 1008 | 3000..=4999) {
        return Err(ApiError::bad_request(format!(
            "code must be 1000, 1008 or 3000-4999, got {code}"
        )));
    }
    let reason = body.reason.unwrap_or_default();
    CloseStatus::new(code, reason.clone())
        .map_err(|err| ApiError::bad_request(format!("reason: {err}")))?;
    check_broker(state)?;
    let order = Disconnect {
        name: body.name,
        room: body.room,
        code,
        reason,
        mode: body.mode,
    };
    ask(state, |reply| ApiDisconnect {
        disconnect: order,
        reply,
    })
    .await?;
    Ok(json!({ "ok": true }))
}

/// `GET /api/rooms/R/history`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn history(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    respond("history", history_checked(&req, &state).await)
}

async fn history_checked(req: &HttpRequest, state: &ApiState) -> Result<Value, ApiError> {
    check_key(req, state)?;
    let room = room_of(req)?;
    let query = web::Query::<HistoryQuery>::from_query(req.query_string())
        .map_err(|err| ApiError::bad_request(format!("query: {err}")))?
        .into_inner();
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1-{MAX_HISTORY_LIMIT}, got {limit}"
        )));
    }
    check_broker(state)?;
    let page: HistoryPage = ask(state, |reply| ApiHistory {
        room,
        since: query.since,
        limit,
        reply,
    })
    .await?;
    Ok(history_json(&page))
}

/// `{"room","epoch","seq","messages":[{"seq","from","text","ts"}]}`: each message as its
/// members got it.
fn history_json(page: &HistoryPage) -> Value {
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|message| {
            let frame: Value = serde_json::from_str(&message.json).unwrap_or(Value::Null);
            json!({
                "seq": message.seq,
                "from": frame["from"],
                "text": frame["text"],
                "ts": frame["ts"],
            })
        })
        .collect();
    json!({
        "room": &*page.room,
        "epoch": page.epoch.as_str(),
        "seq": page.seq,
        "messages": messages,
    })
}

async fn presence(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    respond("presence", presence_checked(&req, &state).await)
}

async fn presence_checked(req: &HttpRequest, state: &ApiState) -> Result<Value, ApiError> {
    check_key(req, state)?;
    let room = room_of(req)?;
    check_broker(state)?;
    let members: Vec<PresentName> = ask(state, |reply| ApiPresence {
        room: room.clone(),
        reply,
    })
    .await?;
    let members: Vec<Value> = members
        .iter()
        .map(|member| json!({ "name": &*member.name, "connections": member.connections }))
        .collect();
    Ok(json!({ "room": room, "members": members }))
}

/// The `{room}` of the path, checked.
fn room_of(req: &HttpRequest) -> Result<String, ApiError> {
    let room = req.match_info().get("room").unwrap_or_default().to_owned();
    check_name("room", &room)?;
    Ok(room)
}

async fn unknown(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    let allowed = allowed_method(req.path());
    let refusal = match allowed {
        Some(method) => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} {} is not an endpoint: use {method}",
                req.method(),
                req.path()
            ),
        ),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no such endpoint: POST /api/publish, POST /api/disconnect, GET /api/rooms/R/history, \
             GET /api/rooms/R/presence",
        ),
    };
    let result = check_key(&req, &state).and(Err(refusal));
    let mut response = respond("other", result);
    if let (Some(method), StatusCode::METHOD_NOT_ALLOWED) = (allowed, response.status()) {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(method));
    }
    response
}

/// The method of the API endpoint at `path`, if `path` is one (for a 405's `Allow`).
fn allowed_method(path: &str) -> Option<&'static str> {
    match path {
        "/api/publish" | "/api/disconnect" => return Some("POST"),
        _ => {}
    }
    let (room, what) = path.strip_prefix("/api/rooms/")?.split_once('/')?;
    (!room.is_empty() && matches!(what, "history" | "presence")).then_some("GET")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Epoch, Published};

    #[test]
    fn another_method_on_an_endpoint_is_told_the_right_one() {
        assert_eq!(allowed_method("/api/publish"), Some("POST"));
        assert_eq!(allowed_method("/api/disconnect"), Some("POST"));
        assert_eq!(allowed_method("/api/rooms/lobby/history"), Some("GET"));
        assert_eq!(allowed_method("/api/rooms/lobby/presence"), Some("GET"));
        for path in [
            "/api/rooms//history",
            "/api/rooms/lobby",
            "/api/rooms/lobby/members",
            "/api/rooms/a/b/history",
            "/api/publish/",
            "/api/nothing",
            "/",
        ] {
            assert_eq!(allowed_method(path), None, "{path}");
        }
    }

    #[test]
    fn a_history_page_shows_each_message_as_sent() {
        let epoch = Epoch::random();
        let page = HistoryPage {
            room: Arc::from("r"),
            epoch: epoch.clone(),
            seq: 7,
            messages: vec![Published {
                room: Arc::from("r"),
                epoch: epoch.clone(),
                seq: 7,
                json: r#"{"type":"message","room":"r","from":"ann","text":"hi","seq":7,"ts":5}"#
                    .into(),
                sent_by: None,
            }],
        };
        assert_eq!(
            history_json(&page),
            json!({"room":"r","epoch":epoch.as_str(),"seq":7,
                   "messages":[{"seq":7,"from":"ann","text":"hi","ts":5}]})
        );
    }
}
