//! The client's side of the v1 wire protocol (one room per connection), pure: the server's
//! text frames parsed into typed values ([`Frame`]: welcome, message, epoch, going_away,
//! error), and the URL of one connection with its room, name, token and resume point
//! (`since`, `epoch`); a `wsgrace.v2` connection's URL is the same without room and resume
//! (its frames are `wire_v2.rs`).
//!
//! It must not do I/O or keep state: it knows the shape of frames and URLs, never what they
//! mean for the connection (that is the [`SeqTracker`](super::SeqTracker) and the
//! [`next_step`](super::next_step) policy). Like the browser module it is lenient with what
//! the server sends: a field of the wrong type counts as absent, an unknown frame is ignored.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// The largest seq the client takes: `since` must stay below 2^63 (SPEC, Resume).
pub(super) const MAX_SEQ: u64 = i64::MAX as u64;

/// A `welcome` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub room: String,
    /// The name the server gave this session (the token's `sub` with authentication).
    pub name: String,
    /// The room's epoch: names its history.
    pub epoch: Option<String>,
    /// The room's latest seq when the session joined.
    pub seq: Option<u64>,
    /// Present when the connection asked to resume.
    pub resumed: Option<bool>,
    /// With `resumed: true`: how many messages are replayed next.
    pub missed: Option<u64>,
}

/// `since` and `epoch` for a resuming connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: Option<String>,
}

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Parse(#[from] url::ParseError),
    #[error("scheme {0:?} is not ws, wss, http or https")]
    Scheme(String),
}

/// The WebSocket URL for one connection: `base` plus room, name, token and (when resuming)
/// since and epoch, percent-encoded. Other query parameters of `base` are kept; these five
/// are replaced (or removed when `None` or empty); http(s) becomes ws(s).
pub fn build_url(
    base: &str,
    room: Option<&str>,
    name: Option<&str>,
    token: Option<&str>,
    resume: Option<&Resume>,
) -> Result<String, UrlError> {
    const OURS: [&str; 5] = ["room", "name", "token", "since", "epoch"];
    let mut url = url::Url::parse(base)?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(UrlError::Scheme(other.to_owned())),
    };
    if url.scheme() != scheme && url.set_scheme(scheme).is_err() {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| !OURS.contains(&key.as_ref()))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let since = resume.map(|r| r.since.to_string());
    let epoch = resume.and_then(|r| r.epoch.as_deref());
    let ours = [
        ("room", room),
        ("name", name),
        ("token", token),
        ("since", since.as_deref()),
        ("epoch", epoch),
    ];
    let ours: Vec<(&str, &str)> = ours
        .into_iter()
        .filter_map(|(key, value)| value.filter(|v| !v.is_empty()).map(|v| (key, v)))
        .collect();
    if kept.is_empty() && ours.is_empty() {
        url.set_query(None);
    } else {
        let mut query = url.query_pairs_mut();
        query.clear();
        for (key, value) in &kept {
            query.append_pair(key, value);
        }
        for (key, value) in ours {
            query.append_pair(key, value);
        }
    }
    Ok(url.into())
}

/// One server frame, as the client understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Welcome(Welcome),
    Message {
        room: String,
        from: String,
        text: String,
        seq: Option<u64>,
        /// When the message got its seq, ms since the Unix epoch (server clock); `None` from
        /// a server that does not send it.
        ts: Option<u64>,
    },
    Epoch {
        room: String,
        epoch: Option<String>,
        seq: Option<u64>,
    },
    GoingAway {
        reconnect_after: Duration,
    },
    Error {
        code: String,
        text: String,
    },
    /// Not JSON, not an object, or a type the client does not know: ignored (SPEC: presence
    /// or other types may exist).
    Ignored,
}

/// Parses one text frame from the server. Lenient like the browser module: a field of the
/// wrong type counts as absent.
pub fn parse_frame(text: &str) -> Frame {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return Frame::Ignored;
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
        Some("welcome") => Frame::Welcome(Welcome {
            room: text_of("room"),
            name: text_of("name"),
            epoch: string("epoch"),
            seq: seq("seq"),
            resumed: frame.get("resumed").and_then(Value::as_bool),
            missed: seq("missed"),
        }),
        Some("message") => Frame::Message {
            room: text_of("room"),
            from: text_of("from"),
            text: text_of("text"),
            seq: seq("seq"),
            ts: frame.get("ts").and_then(Value::as_u64),
        },
        Some("epoch") => Frame::Epoch {
            room: text_of("room"),
            epoch: string("epoch"),
            seq: seq("seq"),
        },
        Some("going_away") => Frame::GoingAway {
            reconnect_after: reconnect_after(&frame),
        },
        Some("error") => Frame::Error {
            code: text_of("code"),
            text: text_of("text"),
        },
        _ => Frame::Ignored,
    }
}

/// A `going_away` frame's `reconnect_after_ms` (absent, negative or not a number: 0).
pub(super) fn reconnect_after(frame: &serde_json::Map<String, Value>) -> Duration {
    let ms = frame
        .get("reconnect_after_ms")
        .and_then(Value::as_f64)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .unwrap_or(0.0);
    Duration::from_millis(ms.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn welcome(epoch: &str, seq: u64, resumed: Option<bool>, missed: Option<u64>) -> Welcome {
        Welcome {
            room: "r".into(),
            name: "n".into(),
            epoch: Some(epoch.into()),
            seq: Some(seq),
            resumed,
            missed,
        }
    }

    #[test]
    fn build_url_encodes_and_keeps_other_parameters() {
        let r = Resume {
            since: 42,
            epoch: Some("e-1.x".into()),
        };
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a Resume>,
            &'a str,
        );
        let table: Vec<Row> = vec![
            ("ws://h:1/ws", None, None, None, None, "ws://h:1/ws"),
            (
                "ws://h:1/ws",
                Some("lobby"),
                Some("ann"),
                None,
                None,
                "ws://h:1/ws?room=lobby&name=ann",
            ),
            (
                "http://h/ws",
                Some("a b"),
                Some("x&y=z"),
                Some("t/k+n?"),
                None,
                "ws://h/ws?room=a+b&name=x%26y%3Dz&token=t%2Fk%2Bn%3F",
            ),
            (
                "https://h/ws",
                Some("r"),
                None,
                None,
                Some(&r),
                "wss://h/ws?room=r&since=42&epoch=e-1.x",
            ),
            (
                "ws://h/ws?room=old&keep=1&since=9&name=old",
                Some("new"),
                None,
                Some(""),
                None,
                "ws://h/ws?keep=1&room=new",
            ),
            ("ws://h/ws?room=old", None, None, None, None, "ws://h/ws"),
            (
                "wss://h/ws?x=%C3%A9",
                Some("é"),
                None,
                None,
                None,
                "wss://h/ws?x=%C3%A9&room=%C3%A9",
            ),
        ];
        for (base, room, name, token, resume, expected) in table {
            assert_eq!(
                build_url(base, room, name, token, resume).as_deref(),
                Ok(expected),
                "{base}"
            );
        }
        assert!(matches!(
            build_url("ftp://h/ws", None, None, None, None),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            build_url("not a url", None, None, None, None),
            Err(UrlError::Parse(_))
        ));
    }

    #[test]
    fn parse_frame_is_lenient() {
        let table: Vec<(&str, Frame)> = vec![
            (
                r#"{"type":"welcome","room":"r","name":"n","epoch":"e","seq":3}"#,
                Frame::Welcome(Welcome {
                    room: "r".into(),
                    name: "n".into(),
                    epoch: Some("e".into()),
                    seq: Some(3),
                    resumed: None,
                    missed: None,
                }),
            ),
            (
                r#"{"type":"welcome","room":"r","name":"n","epoch":"e","seq":3,"resumed":true,"missed":2}"#,
                Frame::Welcome(welcome("e", 3, Some(true), Some(2))),
            ),
            (
                r#"{"type":"message","room":"r","from":"a","text":"hi","seq":7}"#,
                Frame::Message {
                    room: "r".into(),
                    from: "a".into(),
                    text: "hi".into(),
                    seq: Some(7),
                    ts: None,
                },
            ),
            (
                r#"{"type":"message","room":"r","from":"a","text":"hi","seq":7,"ts":1700000000123}"#,
                Frame::Message {
                    room: "r".into(),
                    from: "a".into(),
                    text: "hi".into(),
                    seq: Some(7),
                    ts: Some(1_700_000_000_123),
                },
            ),
            (
                r#"{"type":"message","room":"r","from":"a","text":"hi","seq":"7"}"#,
                Frame::Message {
                    room: "r".into(),
                    from: "a".into(),
                    text: "hi".into(),
                    seq: None,
                    ts: None,
                },
            ),
            (
                r#"{"type":"message","seq":-1,"ts":"late"}"#,
                Frame::Message {
                    room: String::new(),
                    from: String::new(),
                    text: String::new(),
                    seq: None,
                    ts: None,
                },
            ),
            (
                r#"{"type":"message","seq":9223372036854775808}"#,
                Frame::Message {
                    room: String::new(),
                    from: String::new(),
                    text: String::new(),
                    seq: None,
                    ts: None,
                },
            ),
            (
                r#"{"type":"epoch","room":"r","epoch":"e2","seq":0}"#,
                Frame::Epoch {
                    room: "r".into(),
                    epoch: Some("e2".into()),
                    seq: Some(0),
                },
            ),
            (
                r#"{"type":"going_away","reconnect_after_ms":1500}"#,
                Frame::GoingAway {
                    reconnect_after: MS(1500),
                },
            ),
            (
                r#"{"type":"going_away","reconnect_after_ms":12.9}"#,
                Frame::GoingAway {
                    reconnect_after: MS(12),
                },
            ),
            (
                r#"{"type":"going_away","reconnect_after_ms":-5}"#,
                Frame::GoingAway {
                    reconnect_after: MS(0),
                },
            ),
            (
                r#"{"type":"going_away"}"#,
                Frame::GoingAway {
                    reconnect_after: MS(0),
                },
            ),
            (
                r#"{"type":"error","code":"unavailable","text":"broker down"}"#,
                Frame::Error {
                    code: "unavailable".into(),
                    text: "broker down".into(),
                },
            ),
            (r#"{"type":"presence","who":["a"]}"#, Frame::Ignored),
            (r#"{"no":"type"}"#, Frame::Ignored),
            ("[1,2]", Frame::Ignored),
            ("not json", Frame::Ignored),
            ("", Frame::Ignored),
        ];
        for (text, expected) in table {
            assert_eq!(parse_frame(text), expected, "{text}");
        }
    }
}
