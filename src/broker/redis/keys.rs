//! Redis names and scripts of the broker, and the reading of Redis's answers: one place for
//! every key and channel of a prefix ([`Keys`]), the Lua scripts that run per message and per
//! join, and the parsers of their answers and of pub/sub payloads. Pure: no connection, no
//! task.

use std::sync::Arc;

use bytestring::ByteString;
use redis::{RedisError, Script, Value};

use super::super::{
    can_resume, BrokerError, Epoch, JoinRequest, JoinSnapshot, Origin, Published, Resume, SentBy,
    Signal,
};
use super::presence_script::{parse_notice, Notice};
use super::PublishJob;

/// The script run once per message. KEYS: room hash, history stream, pending list, and the
/// dedupe key when the message has one. ARGV: channel, frame head, a fresh epoch (used if
/// the room is new, or last written by another Redis process), history size, ttl in ms, the
/// origin (`NODE.SESSION.ID` or empty), dedupe window in ms, the master's `run_id` (empty
/// with `broker.wait_replicas` > 0: no check; on a Redis Cluster `MYID:RUN_ID` of the master
/// the broker knows for the room's slot, refused with `READONLY` on another node, see
/// `runs.rs`; `?`: the script reads it with `INFO server`), hold (`1` with `wait_replicas` > 0), the
/// most messages that may be held in a room.
///
/// **Seq safety across a failover**: the room hash keeps the `run_id` of the Redis that last
/// wrote it (`run`). A room whose `run` is not this master's came through a failover (a
/// promoted replica may lack the last seqs the old master gave) or a restart from disk (the
/// last second may be lost): before anything else it starts a new epoch, its seqs going on
/// from the seq it has (`base`: where the epoch began) and its stream emptied, so that a seq
/// never names two messages within one epoch and a resume with the old epoch is refused.
///
/// **Hold** (`wait_replicas` > 0): the message is not PUBLISHed but appended to the room's
/// pending list, for [`RELEASE_SCRIPT`] to publish once `WAIT` confirmed it.
///
/// Returns `{epoch, seq, ts, repeat}`: a message whose dedupe key is set is not published
/// again (`repeat` 1, the first one's epoch and seq; when holding, after a write, so that the
/// node's `WAIT` covers the first message before the repeat is answered); a room holding too many messages
/// refuses it (`repeat` 2); otherwise it gets the next seq and the time, is kept and
/// published (or held). The only write that can fail (XADD) comes before the seq is
/// stored. The time is Redis's (`TIME`), one clock for every node.
pub const PUBLISH_SCRIPT: &str = r#"
local run = ARGV[8]
if run == '?' then
  run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
else
  local colon = string.find(run, ':', 1, true)
  if colon then
    if redis.call('CLUSTER', 'MYID') ~= string.sub(run, 1, colon - 1) then
      return redis.error_reply('READONLY this is not the master the broker knows for the room')
    end
    run = string.sub(run, colon + 1)
  end
end
local room = redis.call('HMGET', KEYS[1], 'epoch', 'run', 'seq')
local epoch = room[1]
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'base', 0, 'released', 0, 'run', run)
elseif run ~= '' and room[2] ~= run then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2], KEYS[3])
  local base = room[3] or '0'
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'base', base, 'released', base, 'run', run)
end
if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then
    if ARGV[9] == '1' then
      -- Held: the first may not be released yet, and the node answers the repeat only after
      -- a WAIT; a write of this client's makes that WAIT cover the first (another node's).
      redis.call('PEXPIRE', KEYS[1], ARGV[5])
    end
    local colon = string.find(first, ':', 1, true)
    return {string.sub(first, 1, colon - 1), string.sub(first, colon + 1), '0', 1}
  end
end
local hold = ARGV[9] == '1'
if hold and redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[10]) then
  return {epoch, '0', '0', 2}
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
local seqtext = string.format('%d', seq)
local now = redis.call('TIME')
local ts = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local json = ARGV[2] .. seqtext .. ',"ts":' .. ts .. '}'
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, seqtext .. '-0', 'json', json)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if hold then
  redis.call('HSET', KEYS[1], 'seq', seqtext)
else
  redis.call('HSET', KEYS[1], 'seq', seqtext, 'released', seqtext)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ':' .. seqtext, 'PX', ARGV[7])
end
local payload = epoch .. ':' .. seqtext .. ':' .. ARGV[6] .. ':' .. json
if hold then
  redis.call('RPUSH', KEYS[3], payload)
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return {epoch, seqtext, ts, 0}
"#;

/// With `broker.wait_replicas` > 0, run after `WAIT` confirmed a node's messages. KEYS: room
/// hash, pending list. ARGV: channel, a seq. PUBLISHes the held messages of the room up to
/// that seq, in seq order, and notes the last one released (`released`). `WAIT` covers
/// every write the master made before it, so messages other nodes hold with lower seqs are
/// confirmed too: whichever node releases them, they go out once and in order. Returns the
/// last seq released.
pub const RELEASE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local upto = tonumber(ARGV[2])
local released = tonumber(redis.call('HGET', KEYS[1], 'released') or '0')
local start = released
while released < upto do
  local item = redis.call('LINDEX', KEYS[2], 0)
  if not item then
    break
  end
  local a = string.find(item, ':', 1, true)
  local b = string.find(item, ':', a + 1, true)
  local seq = tonumber(string.sub(item, a + 1, b - 1))
  if seq > upto then
    break
  end
  redis.call('LPOP', KEYS[2])
  redis.call('PUBLISH', ARGV[1], item)
  released = seq
end
if released ~= start then
  redis.call('HSET', KEYS[1], 'released', string.format('%d', released))
end
return released
"#;

/// The join script. KEYS: room hash, history stream, pending list. ARGV: a fresh epoch (used
/// if the room is new, or last written by another Redis process: see [`PUBLISH_SCRIPT`]),
/// ttl in ms, the master's `run_id` (empty: no check; `MYID:RUN_ID` or `?` as in
/// [`PUBLISH_SCRIPT`]), hold (`1` with `wait_replicas` > 0).
/// Returns `{epoch, seq, base}` (`base`: the seq the epoch began after). When holding, `seq`
/// is the last seq released: held messages come live later.
pub const SNAPSHOT_SCRIPT: &str = r#"
local run = ARGV[3]
if run == '?' then
  run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
else
  local colon = string.find(run, ':', 1, true)
  if colon then
    if redis.call('CLUSTER', 'MYID') ~= string.sub(run, 1, colon - 1) then
      return redis.error_reply('READONLY this is not the master the broker knows for the room')
    end
    run = string.sub(run, colon + 1)
  end
end
local room = redis.call('HMGET', KEYS[1], 'epoch', 'run', 'seq', 'base', 'released')
local epoch = room[1]
local seq = tonumber(room[3] or '0')
local base = tonumber(room[4] or '0')
if not epoch then
  epoch = ARGV[1]
  seq = 0
  base = 0
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'base', 0, 'released', 0, 'run', run)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif run ~= '' and room[2] ~= run then
  epoch = ARGV[1]
  base = seq
  local text = string.format('%d', seq)
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'base', text, 'released', text, 'run', run)
elseif ARGV[4] == '1' and room[5] then
  seq = tonumber(room[5])
end
return {epoch, string.format('%d', seq), string.format('%d', base)}
"#;

/// Keys and channels of one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
    /// `P:{`, the start of every key and channel of a room.
    room_prefix: String,
    /// On a Redis Cluster: channels are sharded (`SPUBLISH`, `SSUBSCRIBE`).
    sharded: bool,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            room_prefix: format!("{prefix}:{{"),
            sharded: false,
        }
    }

    /// These keys on a Redis Cluster (`sharded`): the scripts publish with `SPUBLISH`.
    pub(super) fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    /// The command that publishes on a channel: `SPUBLISH` on a Redis Cluster (the message
    /// goes to the nodes of the channel's shard only), `PUBLISH` otherwise.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// `code` (one of this module's scripts) as this broker runs it: on a Redis Cluster,
    /// every `PUBLISH` is a `SPUBLISH` (the channel has the keys' hash tag: the same slot).
    pub(super) fn script_text(&self, code: &str) -> String {
        if self.sharded {
            code.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
        } else {
            code.to_owned()
        }
    }

    /// [`Keys::script_text`] as a [`Script`] (its SHA1 for EVALSHA).
    pub(super) fn script(&self, code: &str) -> Script {
        Script::new(&self.script_text(code))
    }

    /// `P:{R}:`, the start of every key of room `R`: the hash tag `{R}` puts them all (and
    /// the room's channel) in one Redis Cluster slot, so that every script touches one slot.
    fn of_room(&self, room: &str) -> String {
        format!("{}{room}}}:", self.room_prefix)
    }

    /// The room's hash (`epoch`, `seq`), and its pub/sub channel (a sharded channel in a
    /// Redis Cluster, in the room's slot).
    pub(super) fn room(&self, room: &str) -> String {
        format!("{}room", self.of_room(room))
    }

    /// The key that marks `key` as published in `room` (for `publish.dedupe_ms`).
    pub(super) fn dedupe(&self, room: &str, key: &str) -> String {
        format!("{}dedupe:{key}", self.of_room(room))
    }

    pub(super) fn history(&self, room: &str) -> String {
        format!("{}history", self.of_room(room))
    }

    /// The room's messages held until `WAIT` confirms them (`broker.wait_replicas` > 0):
    /// a list of channel payloads in seq order.
    pub(super) fn pending(&self, room: &str) -> String {
        format!("{}pending", self.of_room(room))
    }

    /// A room's present names: hash name → connections over every holder.
    pub(super) fn presence_names(&self, room: &str) -> String {
        format!("{}presence:names", self.of_room(room))
    }

    /// A room's holders with a deadline: zset holder → deadline in ms.
    pub(super) fn presence_holders(&self, room: &str) -> String {
        format!("{}presence:holders", self.of_room(room))
    }

    /// The start of a room's holder hashes (`...:h:HOLDER`, name → connections).
    pub(super) fn presence_holder_prefix(&self, room: &str) -> String {
        format!("{}presence:h:", self.of_room(room))
    }

    /// The channel of the server API's orders ([`crate::broker::Control`]), which every node
    /// subscribes to.
    pub(super) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The room of a channel name (`P:{R}:room`).
    pub(super) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(&self.room_prefix)?
            .strip_suffix("}:room")
    }
}

/// The snapshot answer is not what the script returns.
pub(super) fn snapshot_error(what: &str) -> BrokerError {
    BrokerError::Server(format!("unexpected snapshot answer: {what}"))
}

/// The seq the epoch of the snapshot script's answer began after (0 for a new room).
pub(super) fn snapshot_base(value: &Value) -> u64 {
    match value {
        Value::Array(parts) => parts
            .get(2)
            .and_then(text)
            .and_then(|base| base.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
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

/// The room at `epoch` and `seq` for a joining session, with the stream `entries` read for
/// it (after its `since`, or its `last` K, oldest first); applies the resume rule.
pub(super) fn join_snapshot(
    room: Arc<str>,
    epoch: String,
    seq: u64,
    entries: Vec<Value>,
    request: &JoinRequest,
    history_size: usize,
) -> Result<JoinSnapshot, BrokerError> {
    let epoch = Epoch::new(epoch);
    let mut replay = Vec::with_capacity(entries.len());
    for entry in entries {
        let (seq, json) = parse_entry(entry).ok_or_else(|| snapshot_error("stream entry"))?;
        replay.push(Published {
            room: room.clone(),
            epoch: epoch.clone(),
            seq,
            json,
            sent_by: None,
        });
    }
    let resume = match &request.resume {
        None if request.last > 0 => Resume::Recent(replay),
        None => Resume::NotAsked,
        Some(resume) => {
            // The stream's ids are consecutive seqs trimmed from the front: it holds
            // everything after `since` exactly when it returned `seq - since` entries
            // starting at `since + 1`.
            let since = resume.since;
            let complete = since < seq
                && replay.len() as u64 == seq - since
                && replay.first().is_some_and(|first| first.seq == since + 1);
            let oldest = complete.then_some(since + 1);
            if can_resume(resume, &epoch, seq, oldest, history_size > 0) {
                Resume::Resumed(replay)
            } else {
                Resume::NotResumed
            }
        }
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

/// A write refused by a replica (`READONLY`, also from inside a script): the server this
/// node is connected to is no longer the master.
pub(super) fn is_readonly(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::ReadOnly
        || err.code() == Some("READONLY")
        || err.to_string().contains("READONLY")
}

/// What a room's channel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Publication {
    /// A message with its seq: `EPOCH:SEQ:ORIGIN:JSON` (`ORIGIN`: `NODE.SESSION.ID` in hex,
    /// decimal and the client's id, or empty).
    Message(Published),
    /// A signal: `S:NODE.SESSION:JSON`.
    Signal(Signal),
    /// Presence: `P:J:ORIGIN:NAME`, `P:L::NAME`, `P:K::MS` (see `presence_script.rs`).
    /// An epoch is hex, so a message's payload never starts with `P:` (nor `S:`).
    Presence(Notice),
}

/// A channel payload of `room` → what it carries.
pub(super) fn parse_publication(room: &str, payload: &[u8]) -> Option<Publication> {
    let payload = std::str::from_utf8(payload).ok()?;
    let room: Arc<str> = Arc::from(room);
    if let Some(rest) = payload.strip_prefix("P:") {
        return parse_notice(room, rest).map(Publication::Presence);
    }
    if let Some(rest) = payload.strip_prefix("S:") {
        let (origin, json) = rest.split_once(':')?;
        let (node, session) = origin.split_once('.')?;
        return Some(Publication::Signal(Signal {
            room,
            json: ByteString::from(json.to_owned()),
            origin: Origin {
                node: u64::from_str_radix(node, 16).ok()?,
                session: session.parse().ok()?,
            },
        }));
    }
    let (epoch, rest) = payload.split_once(':')?;
    let (seq, rest) = rest.split_once(':')?;
    let (origin, json) = rest.split_once(':')?;
    let sent_by = match origin {
        "" => None,
        origin => {
            let mut parts = origin.splitn(3, '.');
            let node = u64::from_str_radix(parts.next()?, 16).ok()?;
            let session = parts.next()?.parse().ok()?;
            let id = parts.next()?;
            Some(SentBy {
                origin: Origin { node, session },
                id: Arc::from(id),
            })
        }
    };
    Some(Publication::Message(Published {
        room,
        epoch: Epoch::new(epoch.to_owned()),
        seq: seq.parse().ok()?,
        json: ByteString::from(json.to_owned()),
        sent_by,
    }))
}

/// The origin field of a message's payload: `NODE.SESSION.ID`, or empty.
pub(super) fn origin_field(sent_by: Option<&SentBy>) -> String {
    sent_by.map_or_else(String::new, |sent_by| {
        format!(
            "{:x}.{}.{}",
            sent_by.origin.node, sent_by.origin.session, sent_by.id
        )
    })
}

/// A signal's payload: `S:NODE.SESSION:JSON`.
pub(super) fn signal_payload(signal: &Signal) -> String {
    format!(
        "S:{:x}.{}:{}",
        signal.origin.node, signal.origin.session, signal.json
    )
}

/// The publish script's answer `{epoch, seq, ts, repeat}` for `job` → what the publish
/// came to.
pub(super) fn parse_published(
    job: &PublishJob,
    value: Value,
    reload: &mut bool,
    readonly: &mut bool,
) -> Result<super::super::Publication, BrokerError> {
    match value {
        Value::Array(parts) => {
            let epoch = parts.first().and_then(text);
            let number = |index: usize| parts.get(index).and_then(text)?.parse::<u64>().ok();
            match (epoch, number(1), number(2), number(3)) {
                (_, _, _, Some(2)) => Err(BrokerError::Unavailable),
                (Some(epoch), Some(seq), _, Some(1)) => Ok(super::super::Publication::Repeat {
                    epoch: Epoch::new(epoch),
                    seq,
                }),
                (Some(epoch), Some(seq), Some(ts), Some(0)) => {
                    Ok(super::super::Publication::New(Published {
                        room: job.room.clone(),
                        epoch: Epoch::new(epoch),
                        seq,
                        json: job.head.finish(seq, ts),
                        sent_by: job.sent_by.clone(),
                    }))
                }
                _ => Err(BrokerError::Server("unexpected publish answer".to_owned())),
            }
        }
        Value::ServerError(err) => {
            if err.code() == "NOSCRIPT" {
                // The script cache was flushed: this message did not run; reload for the next.
                *reload = true;
                return Err(BrokerError::Unavailable);
            }
            if err.code() == "READONLY" || err.details().is_some_and(|d| d.contains("READONLY")) {
                // A replica now (a failover): the script did not write; reconnect.
                *readonly = true;
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
    use crate::broker::redis::PRESENCE_SCRIPT;

    #[test]
    fn on_a_cluster_every_script_publishes_sharded() {
        let plain = Keys::new("app");
        let sharded = Keys::new("app").sharded(true);
        assert_eq!(
            (plain.publish_command(), sharded.publish_command()),
            ("PUBLISH", "SPUBLISH")
        );
        for code in [
            PUBLISH_SCRIPT,
            RELEASE_SCRIPT,
            SNAPSHOT_SCRIPT,
            PRESENCE_SCRIPT,
        ] {
            assert_eq!(plain.script_text(code), code);
            let text = sharded.script_text(code);
            assert_eq!(
                text.matches("'PUBLISH'").count(),
                0,
                "a classic PUBLISH is left in:\n{text}"
            );
            assert_eq!(
                text.matches("'SPUBLISH'").count(),
                code.matches("'PUBLISH'").count()
            );
        }
        assert_ne!(
            plain.script(PUBLISH_SCRIPT).get_hash(),
            sharded.script(PUBLISH_SCRIPT).get_hash()
        );
    }

    #[test]
    fn keys_and_channels() {
        let keys = Keys::new("app");
        assert_eq!(keys.room("lobby"), "app:{lobby}:room");
        assert_eq!(keys.history("lobby"), "app:{lobby}:history");
        assert_eq!(
            keys.dedupe("lobby", "n:ann:1"),
            "app:{lobby}:dedupe:n:ann:1"
        );
        assert_eq!(keys.room_of_channel("app:{lobby}:room"), Some("lobby"));
        assert_eq!(keys.room_of_channel("other:{lobby}:room"), None);
        assert_eq!(keys.room_of_channel("app:{lobby}:history"), None);
        assert_eq!(keys.room_of_channel("app:control"), None);
        assert_eq!(keys.presence_names("lobby"), "app:{lobby}:presence:names");
        assert_eq!(
            keys.presence_holders("lobby"),
            "app:{lobby}:presence:holders"
        );
        assert_eq!(
            keys.presence_holder_prefix("lobby"),
            "app:{lobby}:presence:h:"
        );
        // Every key and the channel of a room hash to one Redis Cluster slot: the part in
        // braces is the room alone.
        for key in [
            keys.room("lobby"),
            keys.history("lobby"),
            keys.dedupe("lobby", "k"),
            keys.presence_names("lobby"),
            keys.presence_holders("lobby"),
            keys.presence_holder_prefix("lobby") + "n:1",
        ] {
            let tag = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(tag, _)| tag);
            assert_eq!(tag, Some("lobby"), "{key}");
        }
    }

    #[test]
    fn publications() {
        let Some(Publication::Message(p)) =
            parse_publication("r", br#"00ab:12::{"type":"message","seq":12}"#)
        else {
            panic!("not a message");
        };
        assert_eq!(p.epoch, Epoch::new("00ab"));
        assert_eq!(p.seq, 12);
        assert_eq!(&*p.json, r#"{"type":"message","seq":12}"#);
        assert_eq!(p.sent_by, None);
        let sent_by = SentBy {
            origin: Origin {
                node: 0xbeef,
                session: 7,
            },
            id: Arc::from("m.1-x"),
        };
        let payload = format!("00ab:13:{}:{{}}", origin_field(Some(&sent_by)));
        let Some(Publication::Message(p)) = parse_publication("r", payload.as_bytes()) else {
            panic!("not a message: {payload}");
        };
        assert_eq!(p.sent_by, Some(sent_by));
        let signal = Signal {
            room: Arc::from("r"),
            json: ByteString::from_static(r#"{"type":"signal"}"#),
            origin: Origin {
                node: 0xfeed,
                session: 9,
            },
        };
        assert_eq!(
            parse_publication("r", signal_payload(&signal).as_bytes()),
            Some(Publication::Signal(signal))
        );
        for bad in [
            &b"nope"[..],
            b"e:x::{}",
            b"e:1:\xff",
            b"e:1:{}",
            b"e:1:zz.1.a:{}",
            b"S:1:{}",
            b"S:q.1:{}",
            b"P:X::a",
        ] {
            assert!(parse_publication("r", bad).is_none(), "{bad:?}");
        }
    }
}
