//! The client's side of the `wsgrace.v2` wire (many rooms over one connection), pure: the
//! server's text frames parsed into typed values ([`RoomsFrame`]: hello, joined, left,
//! message, ack, signal, presence, presence_join/leave, epoch, error, going_away), and the
//! client's frames ([`ClientFrame`]: join, leave, publish, signal, presence) written as the
//! JSON the server reads.
//!
//! It must not do I/O or keep state: it knows the shape of frames, never what they mean for
//! the rooms (that is the `rooms_core`). Like `wire.rs` it is lenient with what the server
//! sends: a field of the wrong type counts as absent, an unknown frame is ignored.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::seq_tracker::JoinPosition;
use super::wire::{reconnect_after, Resume, MAX_SEQ};

/// The subprotocol a v2 client offers and the server must choose.
pub const SUBPROTOCOL: &str = "wsgrace.v2";

/// Why the server refused a frame of ours; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, no or an unknown `type`, a missing or wrong field.
    BadRequest,
    /// A room name that is not 1–64 characters of `[A-Za-z0-9_.-]`.
    BadRoom,
    /// The token does not grant the room.
    Forbidden,
    /// Leave, publish, signal or presence for a room this connection has not joined.
    NotJoined,
    /// A join for a room this connection has joined already.
    AlreadyJoined,
    /// More rooms than `session.max_rooms`.
    TooManyRooms,
    /// The broker cannot be reached: the join or the message reached nobody; try again.
    Unavailable,
    /// A code this client does not know.
    Other(String),
}

impl ErrorCode {
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "bad_request" => ErrorCode::BadRequest,
            "bad_room" => ErrorCode::BadRoom,
            "forbidden" => ErrorCode::Forbidden,
            "not_joined" => ErrorCode::NotJoined,
            "already_joined" => ErrorCode::AlreadyJoined,
            "too_many_rooms" => ErrorCode::TooManyRooms,
            "unavailable" => ErrorCode::Unavailable,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// The code as the wire spells it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other(code) => code,
        }
    }
}

/// A `joined` frame: the answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: String,
    /// Epoch, seq, and `resumed`/`missed` when the join had `since`.
    pub position: JoinPosition,
    /// The join's `ref`, echoed.
    pub reference: Option<String>,
}

/// A room's `message` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    pub room: String,
    pub from: String,
    pub text: String,
    pub seq: Option<u64>,
    /// When the message got its seq, ms since the Unix epoch (server clock).
    pub ts: Option<u64>,
    /// On the sender's own copy: the `id` of its publish.
    pub id: Option<String>,
}

/// One name in a room, with its number of connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub connections: u64,
}

/// An `error` frame: a frame of ours was refused (fields that apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub room: Option<String>,
    pub reference: Option<String>,
    pub id: Option<String>,
    pub text: String,
}

/// One server frame of a `wsgrace.v2` connection, as the client understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomsFrame {
    /// First, once: the name the server gave this connection.
    Hello {
        name: String,
    },
    Joined(Joined),
    Left {
        room: String,
        reference: Option<String>,
    },
    Message(RoomMessage),
    /// A publish whose `id` the room has already (a resend): its seq.
    Ack {
        room: String,
        id: String,
        seq: Option<u64>,
    },
    Signal {
        room: String,
        from: String,
        text: String,
    },
    Presence {
        room: String,
        members: Vec<Member>,
        reference: Option<String>,
    },
    PresenceJoin {
        room: String,
        name: String,
    },
    PresenceLeave {
        room: String,
        name: String,
    },
    Epoch {
        room: String,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    Error(Refusal),
    GoingAway {
        reconnect_after: Duration,
    },
    /// Not JSON, not an object, or a type the client does not know: ignored.
    Ignored,
}

/// Parses one text frame of a `wsgrace.v2` connection. Lenient: a field of the wrong type
/// counts as absent.
pub fn parse_rooms_frame(text: &str) -> RoomsFrame {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return RoomsFrame::Ignored;
    };
    let string = |key: &str| frame.get(key).and_then(Value::as_str).map(str::to_owned);
    let text_of = |key: &str| string(key).unwrap_or_default();
    let seq = |key: &str| {
        frame
            .get(key)
            .and_then(Value::as_u64)
            .filter(|s| *s <= MAX_SEQ)
    };
    match frame.get("type").and_then(Value::as_str) {
        Some("hello") => RoomsFrame::Hello {
            name: text_of("name"),
        },
        Some("joined") => RoomsFrame::Joined(Joined {
            room: text_of("room"),
            position: JoinPosition {
                epoch: string("epoch"),
                seq: seq("seq"),
                resumed: frame.get("resumed").and_then(Value::as_bool),
                missed: seq("missed"),
            },
            reference: string("ref"),
        }),
        Some("left") => RoomsFrame::Left {
            room: text_of("room"),
            reference: string("ref"),
        },
        Some("message") => RoomsFrame::Message(RoomMessage {
            room: text_of("room"),
            from: text_of("from"),
            text: text_of("text"),
            seq: seq("seq"),
            ts: frame.get("ts").and_then(Value::as_u64),
            id: string("id"),
        }),
        Some("ack") => RoomsFrame::Ack {
            room: text_of("room"),
            id: text_of("id"),
            seq: seq("seq"),
        },
        Some("signal") => RoomsFrame::Signal {
            room: text_of("room"),
            from: text_of("from"),
            text: text_of("text"),
        },
        Some("presence") => RoomsFrame::Presence {
            room: text_of("room"),
            members: members(frame.get("members")),
            reference: string("ref"),
        },
        Some("presence_join") => RoomsFrame::PresenceJoin {
            room: text_of("room"),
            name: text_of("name"),
        },
        Some("presence_leave") => RoomsFrame::PresenceLeave {
            room: text_of("room"),
            name: text_of("name"),
        },
        Some("epoch") => RoomsFrame::Epoch {
            room: text_of("room"),
            epoch: string("epoch"),
            seq: seq("seq"),
        },
        Some("error") => RoomsFrame::Error(Refusal {
            code: ErrorCode::parse(&text_of("code")),
            room: string("room"),
            reference: string("ref"),
            id: string("id"),
            text: text_of("text"),
        }),
        Some("going_away") => RoomsFrame::GoingAway {
            reconnect_after: reconnect_after(&frame),
        },
        _ => RoomsFrame::Ignored,
    }
}

/// The `members` of a presence answer; an entry without a name is left out.
fn members(value: Option<&Value>) -> Vec<Member> {
    let Some(Value::Array(entries)) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let name = entry.get("name")?.as_str()?.to_owned();
            let connections = entry
                .get("connections")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            Some(Member { name, connections })
        })
        .collect()
}

/// Where a join starts in the room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinStart {
    /// At the room's present: live messages only.
    Present,
    /// With the room's last K kept messages first (0–1000).
    Last(u32),
    /// After this seq of this epoch (a resume).
    Since(Resume),
}

/// A frame the client sends on a `wsgrace.v2` connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Join {
        room: String,
        start: JoinStart,
        reference: String,
    },
    Leave {
        room: String,
        reference: String,
    },
    Publish {
        room: String,
        text: String,
        id: String,
    },
    Signal {
        room: String,
        text: String,
    },
    Presence {
        room: String,
        reference: String,
    },
}

impl ClientFrame {
    /// The JSON text the server reads.
    pub fn to_json(&self) -> String {
        let value = match self {
            ClientFrame::Join {
                room,
                start,
                reference,
            } => {
                let mut join = Map::new();
                join.insert("type".into(), json!("join"));
                join.insert("room".into(), json!(room));
                match start {
                    JoinStart::Present => {}
                    JoinStart::Last(last) => {
                        join.insert("last".into(), json!(last));
                    }
                    JoinStart::Since(resume) => {
                        join.insert("since".into(), json!(resume.since));
                        if let Some(epoch) = &resume.epoch {
                            join.insert("epoch".into(), json!(epoch));
                        }
                    }
                }
                join.insert("ref".into(), json!(reference));
                Value::Object(join)
            }
            ClientFrame::Leave { room, reference } => {
                json!({"type": "leave", "room": room, "ref": reference})
            }
            ClientFrame::Publish { room, text, id } => {
                json!({"type": "publish", "room": room, "text": text, "id": id})
            }
            ClientFrame::Signal { room, text } => {
                json!({"type": "signal", "room": room, "text": text})
            }
            ClientFrame::Presence { room, reference } => {
                json!({"type": "presence", "room": room, "ref": reference})
            }
        };
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn position(epoch: &str, seq: u64, resumed: Option<bool>, missed: Option<u64>) -> JoinPosition {
        JoinPosition {
            epoch: Some(epoch.into()),
            seq: Some(seq),
            resumed,
            missed,
        }
    }

    fn message(seq: Option<u64>, ts: Option<u64>, id: Option<&str>) -> RoomsFrame {
        RoomsFrame::Message(RoomMessage {
            room: "a".into(),
            from: "ann".into(),
            text: "hi".into(),
            seq,
            ts,
            id: id.map(str::to_owned),
        })
    }

    fn refusal(
        code: ErrorCode,
        room: Option<&str>,
        reference: Option<&str>,
        id: Option<&str>,
    ) -> RoomsFrame {
        RoomsFrame::Error(Refusal {
            code,
            room: room.map(str::to_owned),
            reference: reference.map(str::to_owned),
            id: id.map(str::to_owned),
            text: "why".into(),
        })
    }

    #[test]
    fn parse_rooms_frame_reads_every_server_frame() {
        let table: Vec<(&str, RoomsFrame)> = vec![
            (
                r#"{"type":"hello","name":"ann"}"#,
                RoomsFrame::Hello { name: "ann".into() },
            ),
            (
                r#"{"type":"joined","room":"a","epoch":"e1","seq":7,"ref":"j1"}"#,
                RoomsFrame::Joined(Joined {
                    room: "a".into(),
                    position: position("e1", 7, None, None),
                    reference: Some("j1".into()),
                }),
            ),
            (
                r#"{"type":"joined","room":"a","epoch":"e1","seq":7,"resumed":true,"missed":3}"#,
                RoomsFrame::Joined(Joined {
                    room: "a".into(),
                    position: position("e1", 7, Some(true), Some(3)),
                    reference: None,
                }),
            ),
            (
                r#"{"type":"joined","room":"a","epoch":"e2","seq":0,"resumed":false,"ref":"j9"}"#,
                RoomsFrame::Joined(Joined {
                    room: "a".into(),
                    position: position("e2", 0, Some(false), None),
                    reference: Some("j9".into()),
                }),
            ),
            (
                r#"{"type":"left","room":"a","ref":"l2"}"#,
                RoomsFrame::Left {
                    room: "a".into(),
                    reference: Some("l2".into()),
                },
            ),
            (
                r#"{"type":"message","room":"a","from":"ann","text":"hi","seq":5,"ts":1700000000123}"#,
                message(Some(5), Some(1_700_000_000_123), None),
            ),
            (
                r#"{"type":"message","room":"a","from":"ann","text":"hi","seq":5,"ts":1,"id":"x.1"}"#,
                message(Some(5), Some(1), Some("x.1")),
            ),
            (
                r#"{"type":"message","room":"a","from":"ann","text":"hi","seq":"5","ts":-1,"id":7}"#,
                message(None, None, None),
            ),
            (
                r#"{"type":"message","room":"a","from":"ann","text":"hi","seq":9223372036854775808}"#,
                message(None, None, None),
            ),
            (
                r#"{"type":"ack","room":"a","id":"x.1","seq":5}"#,
                RoomsFrame::Ack {
                    room: "a".into(),
                    id: "x.1".into(),
                    seq: Some(5),
                },
            ),
            (
                r#"{"type":"signal","room":"a","from":"bob","text":"typing"}"#,
                RoomsFrame::Signal {
                    room: "a".into(),
                    from: "bob".into(),
                    text: "typing".into(),
                },
            ),
            (
                r#"{"type":"presence","room":"a","members":[{"name":"ann","connections":2},{"name":"bob"},{"connections":3},"x"],"ref":"p3"}"#,
                RoomsFrame::Presence {
                    room: "a".into(),
                    members: vec![
                        Member {
                            name: "ann".into(),
                            connections: 2,
                        },
                        Member {
                            name: "bob".into(),
                            connections: 1,
                        },
                    ],
                    reference: Some("p3".into()),
                },
            ),
            (
                r#"{"type":"presence","room":"a","members":"nobody"}"#,
                RoomsFrame::Presence {
                    room: "a".into(),
                    members: vec![],
                    reference: None,
                },
            ),
            (
                r#"{"type":"presence_join","room":"a","name":"bob"}"#,
                RoomsFrame::PresenceJoin {
                    room: "a".into(),
                    name: "bob".into(),
                },
            ),
            (
                r#"{"type":"presence_leave","room":"a","name":"bob"}"#,
                RoomsFrame::PresenceLeave {
                    room: "a".into(),
                    name: "bob".into(),
                },
            ),
            (
                r#"{"type":"epoch","room":"a","epoch":"e2","seq":0}"#,
                RoomsFrame::Epoch {
                    room: "a".into(),
                    epoch: Some("e2".into()),
                    seq: Some(0),
                },
            ),
            (
                r#"{"type":"error","code":"unavailable","room":"a","id":"x.1","text":"why"}"#,
                refusal(ErrorCode::Unavailable, Some("a"), None, Some("x.1")),
            ),
            (
                r#"{"type":"error","code":"forbidden","room":"a","ref":"j1","text":"why"}"#,
                refusal(ErrorCode::Forbidden, Some("a"), Some("j1"), None),
            ),
            (
                r#"{"type":"error","code":"bad_request","text":"why"}"#,
                refusal(ErrorCode::BadRequest, None, None, None),
            ),
            (
                r#"{"type":"error","code":"new_code","text":"why"}"#,
                refusal(ErrorCode::Other("new_code".into()), None, None, None),
            ),
            (
                r#"{"type":"going_away","reconnect_after_ms":1500}"#,
                RoomsFrame::GoingAway {
                    reconnect_after: MS(1500),
                },
            ),
            (r#"{"type":"welcome","room":"a"}"#, RoomsFrame::Ignored),
            (r#"{"type":"typing"}"#, RoomsFrame::Ignored),
            ("[1]", RoomsFrame::Ignored),
            ("not json", RoomsFrame::Ignored),
        ];
        for (text, expected) in table {
            assert_eq!(parse_rooms_frame(text), expected, "{text}");
        }
    }

    #[test]
    fn error_codes_round_trip() {
        for code in [
            "bad_request",
            "bad_room",
            "forbidden",
            "not_joined",
            "already_joined",
            "too_many_rooms",
            "unavailable",
            "something_else",
        ] {
            assert_eq!(ErrorCode::parse(code).as_str(), code);
        }
    }

    #[test]
    fn client_frames_are_the_json_the_server_reads() {
        let since = Resume {
            since: 41,
            epoch: Some("e1".into()),
        };
        let join = |start| ClientFrame::Join {
            room: "a".into(),
            start,
            reference: "j1".into(),
        };
        let table: Vec<(ClientFrame, Value)> = vec![
            (
                join(JoinStart::Present),
                json!({"type":"join","room":"a","ref":"j1"}),
            ),
            (
                join(JoinStart::Last(20)),
                json!({"type":"join","room":"a","last":20,"ref":"j1"}),
            ),
            (
                join(JoinStart::Since(since)),
                json!({"type":"join","room":"a","since":41,"epoch":"e1","ref":"j1"}),
            ),
            (
                join(JoinStart::Since(Resume {
                    since: 0,
                    epoch: None,
                })),
                json!({"type":"join","room":"a","since":0,"ref":"j1"}),
            ),
            (
                ClientFrame::Leave {
                    room: "a".into(),
                    reference: "l2".into(),
                },
                json!({"type":"leave","room":"a","ref":"l2"}),
            ),
            (
                ClientFrame::Publish {
                    room: "a".into(),
                    text: "hé \"quoted\"\n".into(),
                    id: "x.1".into(),
                },
                json!({"type":"publish","room":"a","text":"hé \"quoted\"\n","id":"x.1"}),
            ),
            (
                ClientFrame::Signal {
                    room: "a".into(),
                    text: "typing".into(),
                },
                json!({"type":"signal","room":"a","text":"typing"}),
            ),
            (
                ClientFrame::Presence {
                    room: "a".into(),
                    reference: "p3".into(),
                },
                json!({"type":"presence","room":"a","ref":"p3"}),
            ),
        ];
        for (frame, expected) in table {
            let text = frame.to_json();
            let parsed: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(parsed, expected, "{frame:?}");
        }
    }
}
