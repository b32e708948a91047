//! The frames the server sends, one JSON object each (SPEC, Chat protocol), serialized here
//! and nowhere else.
//!
//! A room message is serialized once for all its recipients, and its seq and time are known
//! only where it is given them (the local broker, or the Redis script): [`MessageHead`] is
//! everything before the seq, finished with [`MessageHead::finish`]. The other frames go to one session at a
//! time. This module must not decide who gets what.

use std::time::Duration;

use bytestring::ByteString;
use serde::Serialize;

/// A frame could not be serialized (serde_json's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding a frame failed: {0}")]
pub struct FrameError(pub String);

/// The start of a `message` frame, everything before the seq:
/// `{"type":"message","room":R,"from":F,"text":T,"seq":`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHead(String);

#[derive(Serialize)]
struct HeadFields<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    from: &'a str,
    text: &'a str,
}

impl MessageHead {
    /// The head of a message from `from` in `room` saying `text`.
    pub fn new(room: &str, from: &str, text: &str) -> Result<MessageHead, FrameError> {
        let fields = HeadFields {
            kind: "message",
            room,
            from,
            text,
        };
        let mut json = serde_json::to_string(&fields).map_err(|err| FrameError(err.to_string()))?;
        // serde_json writes a struct as one object ending in `}`: replace it by the seq field.
        if json.pop() != Some('}') {
            return Err(FrameError("not a JSON object".to_owned()));
        }
        json.push_str(",\"seq\":");
        Ok(MessageHead(json))
    }

    /// The text of the head.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The whole frame with `seq` and `ts` (ms since the Unix epoch, when it got its seq).
    pub fn finish(&self, seq: u64, ts: u64) -> ByteString {
        ByteString::from(format!("{}{seq},\"ts\":{ts}}}", self.0))
    }
}

/// `{"type":"welcome","room":R,"name":N,"epoch":E,"seq":S}`, with `resumed` and `missed` when
/// the session asked to resume.
#[derive(Debug, Serialize)]
pub struct Welcome<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    name: &'a str,
    epoch: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
}

impl<'a> Welcome<'a> {
    /// The welcome of `name` in `room` at `epoch` and `seq`.
    pub fn new(room: &'a str, name: &'a str, epoch: &'a str, seq: u64) -> Self {
        Welcome {
            kind: "welcome",
            room,
            name,
            epoch,
            seq,
            resumed: None,
            missed: None,
        }
    }

    /// With the outcome of a resume request.
    pub fn resumed(mut self, resumed: Option<bool>, missed: Option<u64>) -> Self {
        self.resumed = resumed;
        self.missed = missed;
        self
    }

    /// The frame.
    pub fn to_json(&self) -> Result<ByteString, FrameError> {
        to_json(self)
    }
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    text: &'a str,
}

/// `{"type":"error","code":C,"text":T}`: what the sender's message came to, when it reached
/// nobody.
pub fn error_json(code: &str, text: &str) -> Result<ByteString, FrameError> {
    to_json(&ErrorFrame {
        kind: "error",
        code,
        text,
    })
}

/// `{"type":"going_away","reconnect_after_ms":D}`: sent right before a shutdown close frame.
pub fn going_away_json(reconnect_after: Duration) -> ByteString {
    let mut text = String::new();
    write_going_away(&mut text, reconnect_after);
    ByteString::from(text)
}

/// Appends [`going_away_json`]'s text to `out`, for a caller that reuses its buffer (a drain
/// writes one to each of thousands of sessions).
pub fn write_going_away(out: &mut String, reconnect_after: Duration) {
    use std::fmt::Write;
    // Writing to a String does not fail.
    let _ = write!(
        out,
        "{{\"type\":\"going_away\",\"reconnect_after_ms\":{}}}",
        reconnect_after.as_millis()
    );
}

#[derive(Serialize)]
struct EpochFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    epoch: &'a str,
    seq: u64,
}

/// `{"type":"epoch","room":R,"epoch":E,"seq":N}`: the room's history was lost; its seqs
/// continue from N+1 in epoch E.
pub fn epoch_json(room: &str, epoch: &str, seq: u64) -> Result<ByteString, FrameError> {
    to_json(&EpochFrame {
        kind: "epoch",
        room,
        epoch,
        seq,
    })
}

fn to_json(value: &impl Serialize) -> Result<ByteString, FrameError> {
    serde_json::to_string(value)
        .map(ByteString::from)
        .map_err(|err| FrameError(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_matches_the_protocol() {
        let head = MessageHead::new("lobby", "ann", "hi \"there\"\n").unwrap();
        let json = head.finish(42, 1_700_000_000_123);
        assert_eq!(
            &*json,
            r#"{"type":"message","room":"lobby","from":"ann","text":"hi \"there\"\n","seq":42,"ts":1700000000123}"#
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["seq"], 42);
        assert_eq!(value["text"], "hi \"there\"\n");
    }

    #[test]
    fn the_other_frames() {
        assert_eq!(
            &*epoch_json("r", "00ff", 7).unwrap(),
            r#"{"type":"epoch","room":"r","epoch":"00ff","seq":7}"#
        );
        assert_eq!(
            &*Welcome::new("r", "ann", "e1", 3).to_json().unwrap(),
            r#"{"type":"welcome","room":"r","name":"ann","epoch":"e1","seq":3}"#
        );
        assert_eq!(
            &*Welcome::new("r", "ann", "e1", 3)
                .resumed(Some(true), Some(2))
                .to_json()
                .unwrap(),
            r#"{"type":"welcome","room":"r","name":"ann","epoch":"e1","seq":3,"resumed":true,"missed":2}"#
        );
        assert_eq!(
            &*error_json("unavailable", "no").unwrap(),
            r#"{"type":"error","code":"unavailable","text":"no"}"#
        );
        assert_eq!(
            &*going_away_json(Duration::from_millis(1234)),
            r#"{"type":"going_away","reconnect_after_ms":1234}"#
        );
    }
}
