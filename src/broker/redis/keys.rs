//! Redis names and scripts of the broker, and the reading of Redis's answers: one place for
//! every key and channel of a prefix ([`Keys`]), the Lua scripts that run per message and per
//! join, and the parsers of their answers and of pub/sub payloads. Pure: no connection, no
//! task.

use std::sync::Arc;

use bytestring::ByteString;
use redis::{RedisError, Value};

use super::super::{
    can_resume, BrokerError, Epoch, JoinSnapshot, Published, Resume, ResumeRequest,
};
use super::PublishJob;

/// The script run once per message. KEYS: room hash, history stream. ARGV: channel, frame
/// head, a fresh epoch (used if the room is new), history size, ttl in ms. Returns
/// `{epoch, seq}`. The only write that can fail (XADD) comes before the seq is stored.
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
local seqtext = string.format('%d', seq)
local json = ARGV[2] .. seqtext .. '}'
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, seqtext .. '-0', 'json', json)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[1], 'seq', seqtext)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. seqtext .. ':' .. json)
return {epoch, seqtext}
"#;

/// The join script. KEYS: room hash, history stream. ARGV: a fresh epoch (used if the room
/// is new), ttl in ms. Returns `{epoch, seq}`. The history after `since` is read by the
/// caller with a plain XRANGE, not inside Lua: converting 100 stream entries to Lua tables
/// and back cost ~130 µs of Redis's single thread per resuming join (BENCHMARKS.md,
/// `mass-resume`), ~6 times the XRANGE itself.
pub const SNAPSHOT_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
return {epoch, string.format('%d', seq)}
"#;

/// Keys and channels of one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
    /// `P:room:`, the start of every room hash and channel.
    room_prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            room_prefix: format!("{prefix}:room:"),
        }
    }

    pub(super) fn room(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix)
    }

    pub(super) fn history(&self, room: &str) -> String {
        format!("{}:history:{room}", self.prefix)
    }

    /// The room of a channel name.
    pub(super) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.room_prefix)
    }
}

/// The snapshot answer is not what the script returns.
pub(super) fn snapshot_error(what: &str) -> BrokerError {
    BrokerError::Server(format!("unexpected snapshot answer: {what}"))
}

/// The epoch and seq of the snapshot script's answer.
pub(super) fn snapshot_head(value: &Value) -> Result<(String, u64), BrokerError> {
    let bad = || snapshot_error("epoch or seq");
    let Value::Array(parts) = value else {
        return Err(bad());
    };
    let epoch = parts.first().and_then(text).ok_or_else(bad)?;
    let seq = parts
        .get(1)
        .and_then(text)
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(bad)?;
    Ok((epoch, seq))
}

/// The room at `epoch` and `seq` for a joining session, with the XRANGE `entries` read after
/// its `since`; applies the resume rule.
pub(super) fn join_snapshot(
    room: Arc<str>,
    epoch: String,
    seq: u64,
    entries: Vec<Value>,
    resume: Option<&ResumeRequest>,
    history_size: usize,
) -> Result<JoinSnapshot, BrokerError> {
    let epoch = Epoch::new(epoch);
    let Some(request) = resume else {
        return Ok(JoinSnapshot {
            room,
            epoch,
            seq,
            resume: Resume::NotAsked,
        });
    };
    let mut replay = Vec::with_capacity(entries.len());
    for entry in entries {
        let (seq, json) = parse_entry(entry).ok_or_else(|| snapshot_error("stream entry"))?;
        replay.push(Published {
            room: room.clone(),
            epoch: epoch.clone(),
            seq,
            json,
        });
    }
    // The stream's ids are consecutive seqs trimmed from the front: it holds everything
    // after `since` exactly when it returned `seq - since` entries starting at `since + 1`.
    let since = request.since;
    let complete = since < seq
        && replay.len() as u64 == seq - since
        && replay.first().is_some_and(|first| first.seq == since + 1);
    let oldest = complete.then_some(since + 1);
    let resume = if can_resume(request, &epoch, seq, oldest, history_size > 0) {
        Resume::Resumed(replay)
    } else {
        Resume::NotResumed
    };
    Ok(JoinSnapshot {
        room,
        epoch,
        seq,
        resume,
    })
}

/// One XRANGE entry `[id, [field, value]]` → (seq, json).
pub(super) fn parse_entry(entry: Value) -> Option<(u64, ByteString)> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    let fields = parts.pop()?;
    let id = text(parts.first()?)?;
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let json = text(fields.get(1)?)?;
    Some((seq, ByteString::from(json)))
}

/// A bulk or simple string, or an integer, as text.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_timeout()
}

/// A channel payload `EPOCH:SEQ:JSON` of `room` → the message.
pub(super) fn parse_publication(room: &str, payload: &[u8]) -> Option<Published> {
    let payload = std::str::from_utf8(payload).ok()?;
    let (epoch, rest) = payload.split_once(':')?;
    let (seq, json) = rest.split_once(':')?;
    Some(Published {
        room: Arc::from(room),
        epoch: Epoch::new(epoch.to_owned()),
        seq: seq.parse().ok()?,
        json: ByteString::from(json.to_owned()),
    })
}

/// The publish script's answer `{epoch, seq}` for `job` → the published message.
pub(super) fn parse_published(
    job: &PublishJob,
    value: Value,
    reload: &mut bool,
) -> Result<Published, BrokerError> {
    match value {
        Value::Array(parts) => {
            let epoch = parts.first().and_then(text);
            let seq = parts.get(1).and_then(text).and_then(|s| s.parse().ok());
            match (epoch, seq) {
                (Some(epoch), Some(seq)) => Ok(Published {
                    room: job.room.clone(),
                    epoch: Epoch::new(epoch),
                    seq,
                    json: job.head.finish(seq),
                }),
                _ => Err(BrokerError::Server("unexpected publish answer".to_owned())),
            }
        }
        Value::ServerError(err) => {
            if err.code() == "NOSCRIPT" {
                // The script cache was flushed: this message did not run; reload for the next.
                *reload = true;
                return Err(BrokerError::Unavailable);
            }
            Err(BrokerError::Server(format!("{err:?}")))
        }
        _ => Err(BrokerError::Server("unexpected publish answer".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_channels() {
        let keys = Keys::new("app");
        assert_eq!(keys.room("lobby"), "app:room:lobby");
        assert_eq!(keys.history("lobby"), "app:history:lobby");
        assert_eq!(keys.room_of_channel("app:room:lobby"), Some("lobby"));
        assert_eq!(keys.room_of_channel("other:room:lobby"), None);
    }

    #[test]
    fn publications() {
        let p = parse_publication("r", br#"00ab:12:{"type":"message","seq":12}"#).unwrap();
        assert_eq!(p.epoch, Epoch::new("00ab"));
        assert_eq!(p.seq, 12);
        assert_eq!(&*p.json, r#"{"type":"message","seq":12}"#);
        assert!(parse_publication("r", b"nope").is_none());
        assert!(parse_publication("r", b"e:x:{}").is_none());
        assert!(parse_publication("r", b"e:1:\xff").is_none());
    }
}
