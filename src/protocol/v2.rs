//! `wsgrace.v2`, many rooms over one connection: the client's frames as plain types, the pure
//! parser that reads them ([`parse_client_frame`]), and the frames only v2 has (`hello`,
//! `joined`, `left`, `ack`, `signal`, `presence`, and `error` with its fields). The `message`,
//! `epoch` and `going_away` frames are v1's ([`super::frames`]).
//!
//! The parser decides what a frame is, or which refusal it gets (`bad_request`,
//! `bad_room`), with the `ref`, `room` and `id` an answer echoes when they could be read. It
//! must not decide anything that needs state: whether the room is joined, granted, or one
//! too many is the session's handler's.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

use super::frames::FrameError;
use crate::config::is_valid_name;

/// The subprotocol a client offers for many rooms over one connection.
pub const SUBPROTOCOL: &str = "wsgrace.v2";

/// The most characters of a `ref`.
pub const MAX_REF_CHARS: usize = 64;

/// The most messages a join may ask for with `last`.
pub const MAX_LAST: u64 = 1_000;

/// The largest `since` plus one: a seq is below 2^63.
const SINCE_LIMIT: u64 = 1 << 63;

/// A client frame of `wsgrace.v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"join","room":R,"since":S,"epoch":E,"last":K,"ref":X}`.
    Join {
        /// The room.
        room: String,
        /// Resume after this seq.
        since: Option<u64>,
        /// The epoch of `since`.
        epoch: Option<String>,
        /// Without `since`: the room's last this many messages (0-1000).
        last: Option<u64>,
        /// Echoed on the answer.
        reference: Option<String>,
    },
    /// `{"type":"leave","room":R,"ref":X}`.
    Leave {
        /// The room.
        room: String,
        /// Echoed on the answer.
        reference: Option<String>,
    },
    /// `{"type":"publish","room":R,"text":T,"id":I,"ref":X}`.
    Publish {
        /// The room.
        room: String,
        /// The message.
        text: String,
        /// Names the message for its sender (exactly-once within `publish.dedupe_ms`).
        id: Option<String>,
        /// Echoed on an answer (`ack`, `error`).
        reference: Option<String>,
    },
    /// `{"type":"signal","room":R,"text":T,"ref":X}`.
    Signal {
        /// The room.
        room: String,
        /// The signal's text (e.g. a typing indicator).
        text: String,
        /// Echoed on an `error`.
        reference: Option<String>,
    },
    /// `{"type":"presence","room":R,"ref":X}`.
    Presence {
        /// The room.
        room: String,
        /// Echoed on the answer.
        reference: Option<String>,
    },
}

impl ClientFrame {
    /// The room the frame is about.
    pub fn room(&self) -> &str {
        match self {
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room, .. }
            | ClientFrame::Publish { room, .. }
            | ClientFrame::Signal { room, .. }
            | ClientFrame::Presence { room, .. } => room,
        }
    }

    /// Its `ref`.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Publish { reference, .. }
            | ClientFrame::Signal { reference, .. }
            | ClientFrame::Presence { reference, .. } => reference.as_deref(),
        }
    }
}

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, no or unknown `type`, a missing or wrong field.
    BadRequest,
    /// A room name that is not 1-64 characters of `[A-Za-z0-9_.-]`.
    BadRoom,
    /// The token does not grant the room.
    Forbidden,
    /// Leave, publish, signal or presence for a room not joined.
    NotJoined,
    /// A join of a room already joined.
    AlreadyJoined,
    /// A join past `session.max_rooms`.
    TooManyRooms,
    /// The broker cannot be reached: the join did not happen, the publish reached nobody.
    Unavailable,
}

impl ErrorCode {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// A refusal: `{"type":"error","code":C,"room":R,"ref":X,"id":I,"text":T}` with the fields
/// that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub code: ErrorCode,
    /// The room of the refused frame, when it could be read.
    pub room: Option<String>,
    /// The frame's `ref`, when it could be read.
    pub reference: Option<String>,
    /// The publish's `id`, when it could be read.
    pub id: Option<String>,
    /// Words for a person.
    pub text: String,
}

impl Refusal {
    /// A refusal with `code` and `text`, about no room yet.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        Refusal {
            code,
            room: None,
            reference: None,
            id: None,
            text: text.into(),
        }
    }

    /// About `room` (at most its first 64 characters: a bad room name is the peer's text),
    /// answering `reference`.
    pub fn about(mut self, room: Option<&str>, reference: Option<&str>) -> Self {
        self.room = room.map(|room| room.chars().take(64).collect());
        self.reference = reference.map(str::to_owned);
        self
    }

    /// The `error` frame.
    pub fn to_json(&self) -> Result<ByteString, FrameError> {
        to_json(&ErrorFrame {
            kind: "error",
            code: self.code.as_str(),
            room: self.room.as_deref(),
            reference: self.reference.as_deref(),
            id: self.id.as_deref(),
            text: &self.text,
        })
    }
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
}

/// Reads one client frame (the whole text of a WebSocket message).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, Refusal> {
    let bad = |why: &str| Refusal::new(ErrorCode::BadRequest, why);
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
        return Err(bad("a frame is one JSON object"));
    };
    let reference = match fields.get("ref") {
        None => None,
        Some(Value::String(reference)) if reference.chars().count() <= MAX_REF_CHARS => {
            Some(reference.clone())
        }
        Some(_) => return Err(bad("ref must be a string of at most 64 characters")),
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Err(bad("a frame needs a string \"type\"").about(None, reference.as_deref())),
    };
    if !matches!(kind, "join" | "leave" | "publish" | "signal" | "presence") {
        return Err(bad("unknown type").about(None, reference.as_deref()));
    }
    let room = match fields.get("room") {
        Some(Value::String(room)) => room.clone(),
        Some(_) => return Err(bad("room must be a string").about(None, reference.as_deref())),
        None => return Err(bad("a room is missing").about(None, reference.as_deref())),
    };
    let refuse = |refusal: Refusal| Err(refusal.about(Some(&room), reference.as_deref()));
    if !is_valid_name(&room) {
        return refuse(Refusal::new(
            ErrorCode::BadRoom,
            "room must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    match kind {
        "join" => {
            let since = match number(&fields, "since") {
                Ok(Some(since)) if since < SINCE_LIMIT => Some(since),
                Ok(None) => None,
                _ => return refuse(bad("since must be an integer, 0 <= since < 2^63")),
            };
            let epoch = match fields.get("epoch") {
                None => None,
                Some(Value::String(epoch)) if is_valid_name(epoch) => Some(epoch.clone()),
                Some(_) => return refuse(bad("epoch must be 1-64 characters of [A-Za-z0-9_.-]")),
            };
            let last = match number(&fields, "last") {
                Ok(Some(last)) if last <= MAX_LAST => Some(last),
                Ok(None) => None,
                _ => return refuse(bad("last must be an integer from 0 to 1000")),
            };
            if since.is_some() && last.is_some() {
                return refuse(bad("a join asks for since or for last, not both"));
            }
            Ok(ClientFrame::Join {
                room,
                since,
                epoch,
                last,
                reference,
            })
        }
        "leave" => Ok(ClientFrame::Leave { room, reference }),
        "presence" => Ok(ClientFrame::Presence { room, reference }),
        "publish" => {
            let id = match fields.get("id") {
                None => None,
                Some(Value::String(id)) if is_valid_name(id) => Some(id.clone()),
                Some(_) => {
                    return refuse(bad("id must be 1-64 characters of [A-Za-z0-9_.-]"));
                }
            };
            let Some(Value::String(text)) = fields.get("text") else {
                let mut refusal = bad("publish needs a string \"text\"");
                refusal.id = id;
                return refuse(refusal);
            };
            Ok(ClientFrame::Publish {
                room,
                text: text.clone(),
                id,
                reference,
            })
        }
        _ => match fields.get("text") {
            Some(Value::String(text)) => Ok(ClientFrame::Signal {
                room,
                text: text.clone(),
                reference,
            }),
            _ => refuse(bad("signal needs a string \"text\"")),
        },
    }
}

/// A non-negative integer field: absent, or its value, or an error for anything else.
fn number(fields: &Map<String, Value>, name: &str) -> Result<Option<u64>, ()> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

#[derive(Serialize)]
struct Hello<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

/// `{"type":"hello","name":N}`: the first frame of a v2 connection.
pub fn hello_json(name: &str) -> Result<ByteString, FrameError> {
    to_json(&Hello {
        kind: "hello",
        name,
    })
}

/// `{"type":"joined","room":R,"epoch":E,"seq":N,"ref":X}`, with `resumed` and `missed` when
/// the join asked to resume.
#[derive(Debug, Serialize)]
pub struct Joined<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    epoch: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

impl<'a> Joined<'a> {
    /// The answer to a join of `room` at `epoch` and `seq`.
    pub fn new(room: &'a str, epoch: &'a str, seq: u64) -> Self {
        Joined {
            kind: "joined",
            room,
            epoch,
            seq,
            resumed: None,
            missed: None,
            reference: None,
        }
    }

    /// With the outcome of a resume request.
    pub fn resumed(mut self, resumed: Option<bool>, missed: Option<u64>) -> Self {
        self.resumed = resumed;
        self.missed = missed;
        self
    }

    /// Answering the join's `ref`.
    pub fn answering(mut self, reference: Option<&'a str>) -> Self {
        self.reference = reference;
        self
    }

    /// The frame.
    pub fn to_json(&self) -> Result<ByteString, FrameError> {
        to_json(self)
    }
}

#[derive(Serialize)]
struct Left<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// `{"type":"left","room":R,"ref":X}`: nothing of the room follows it.
pub fn left_json(room: &str, reference: Option<&str>) -> Result<ByteString, FrameError> {
    to_json(&Left {
        kind: "left",
        room,
        reference,
    })
}

#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    id: &'a str,
    seq: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// `{"type":"ack","room":R,"id":I,"seq":N}`: a publish that repeated `id` was not published
/// again; `seq` is the first one's.
pub fn ack_json(
    room: &str,
    id: &str,
    seq: u64,
    reference: Option<&str>,
) -> Result<ByteString, FrameError> {
    to_json(&Ack {
        kind: "ack",
        room,
        id,
        seq,
        reference,
    })
}

#[derive(Serialize)]
struct SignalFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    text: &'a str,
}

/// `{"type":"signal","room":R,"from":F,"text":T}`.
pub fn signal_json(room: &str, from: &str, text: &str) -> Result<ByteString, FrameError> {
    to_json(&SignalFrame {
        kind: "signal",
        room,
        from,
        text,
    })
}

/// One member in a `presence` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresentMember {
    /// The name.
    pub name: String,
    /// Its open connections in the room.
    pub connections: u64,
}

#[derive(Serialize)]
struct PresenceFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    members: &'a [PresentMember],
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// `{"type":"presence","room":R,"members":[...],"ref":X}`.
pub fn presence_json(
    room: &str,
    members: &[PresentMember],
    reference: Option<&str>,
) -> Result<ByteString, FrameError> {
    to_json(&PresenceFrame {
        kind: "presence",
        room,
        members,
        reference,
    })
}

#[derive(Serialize)]
struct PresenceChangeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    name: &'a str,
}

/// `{"type":"presence_join","room":R,"name":N}` or `presence_leave` (`kind`).
pub fn presence_change_json(
    kind: &'static str,
    room: &str,
    name: &str,
) -> Result<ByteString, FrameError> {
    to_json(&PresenceChangeFrame { kind, room, name })
}

/// A room message's frame as its sender gets it: with the client's `"id":I` (an id is
/// 1-64 characters of `[A-Za-z0-9_.-]`, so it needs no escaping).
pub fn with_id(message: &str, id: &str) -> ByteString {
    let body = message.strip_suffix('}').unwrap_or(message);
    ByteString::from(format!("{body},\"id\":\"{id}\"}}"))
}

fn to_json(value: &impl Serialize) -> Result<ByteString, FrameError> {
    serde_json::to_string(value)
        .map(ByteString::from)
        .map_err(|err| FrameError(err.to_string()))
}

#[cfg(test)]
#[path = "v2_tests.rs"]
mod tests;
