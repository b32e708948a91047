//! The Redis presence script and what travels on a room's channel for presence: the one Lua
//! script ([`PRESENCE_SCRIPT`]) that keeps a room's [`Ledger`](super::super::presence::Ledger)
//! in Redis with the same rules, how a call of it is built ([`PresenceCall`]), and the
//! reading of its answers and of the `P:` notices it publishes ([`parse_notice`]).
//!
//! Pure: no connection, no task, no book of this node's members (that is `presence.rs`'s).
//! It must not decide anything the ledger's rules do not say.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Script, Value};

use super::super::presence::PresentName;
use super::super::{BrokerError, NodeId, Origin, PresenceChange, PresenceEvent, PresenceLimits};
use super::keys::{text, Keys};

/// Extra life of a room's presence keys after their longest deadline, so that a room
/// nobody renews any more vanishes by itself.
pub(super) const KEY_MARGIN_MS: u64 = 10_000;

/// The presence script. KEYS: the room's `names` hash and `holders` zset. ARGV: the op
/// (`join`, `leave`, `keep`, `renew`, `read`, `restore`, `sweep`), the prefix of the
/// holders' hashes, the room's channel, this node (hex), whether events are told (`1`/`0`),
/// `events_max_members`, the lease in ms, now in ms (empty: Redis's `TIME`), the key margin
/// in ms, then the op's own: join `SESSION NAME`, leave `NAME`, keep `SESSION NAME MS`,
/// restore `NAME COUNT ...`.
///
/// Every op first ends at most 64 holders whose deadline passed. Holders: `n:NODE` (a
/// node's live sessions, with a lease) and `k:NODE.SESSION` (one kept connection). A name's
/// total going 0 → 1 publishes `P:J:ORIGIN:NAME`, going to 0 `P:L::NAME` (when told: the
/// room's present names, counting a leaving one, at most `events_max_members`); a keep
/// publishes `P:K::MS` so that every node sweeps the room after MS. Returns
/// `{rejoined, holds, name, count, ...}`: kept connections that ended while their name was
/// present again; for `renew`, 0 when Redis lost this node's holder (restore it); for `read`,
/// the names with their totals. A join or leave touches a fixed number of fields, whatever
/// the room's size.
pub const PRESENCE_SCRIPT: &str = r#"
local names, holders = KEYS[1], KEYS[2]
local op, hp, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, margin = tonumber(ARGV[7]), tonumber(ARGV[9])
local now
if ARGV[8] ~= '' then
  now = tonumber(ARGV[8])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local events, notices, rejoined, holds, wrote = {}, {}, 0, 1, false
local function add(name, by, origin)
  if by == 0 then return end
  local after = redis.call('HINCRBY', names, name, by)
  local before = after - by
  if after <= 0 then redis.call('HDEL', names, name) end
  if before <= 0 and after > 0 then
    events[#events + 1] = 'J:' .. origin .. ':' .. name
  elseif before > 0 and after <= 0 then
    events[#events + 1] = 'L::' .. name
  end
end
local function take_one(holder, name)
  local key = hp .. holder
  local count = tonumber(redis.call('HGET', key, name) or '0')
  if count <= 0 then return false end
  if count > 1 then
    redis.call('HINCRBY', key, name, -1)
  else
    redis.call('HDEL', key, name)
  end
  return true
end
local function lease(holder, deadline)
  redis.call('ZADD', holders, deadline, holder)
  redis.call('PEXPIRE', hp .. holder, string.format('%d', deadline - now + margin))
end
local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', now, 'LIMIT', 0, 64)
for _, holder in ipairs(expired) do
  local counts = redis.call('HGETALL', hp .. holder)
  redis.call('DEL', hp .. holder)
  redis.call('ZREM', holders, holder)
  wrote = true
  local kept = string.sub(holder, 1, 2) == 'k:'
  for i = 1, #counts, 2 do
    add(counts[i], -tonumber(counts[i + 1]), '')
    if kept and redis.call('HEXISTS', names, counts[i]) == 1 then
      rejoined = rejoined + tonumber(counts[i + 1])
    end
  end
end
local mine = 'n:' .. node
if op == 'join' then
  redis.call('HINCRBY', hp .. mine, ARGV[11], 1)
  lease(mine, now + ttl)
  add(ARGV[11], 1, node .. '.' .. ARGV[10])
  wrote = true
elseif op == 'leave' then
  if take_one(mine, ARGV[10]) then add(ARGV[10], -1, '') end
  wrote = true
elseif op == 'keep' then
  if take_one(mine, ARGV[11]) then
    local kept = 'k:' .. node .. '.' .. ARGV[10]
    redis.call('HINCRBY', hp .. kept, ARGV[11], 1)
    lease(kept, now + tonumber(ARGV[12]))
    notices[#notices + 1] = 'K::' .. ARGV[12]
  end
  wrote = true
elseif op == 'renew' then
  if redis.call('EXISTS', hp .. mine) == 1 then
    lease(mine, now + ttl)
    wrote = true
  else
    holds = 0
  end
elseif op == 'restore' then
  local old = {}
  local counts = redis.call('HGETALL', hp .. mine)
  for i = 1, #counts, 2 do old[counts[i]] = tonumber(counts[i + 1]) end
  local wanted, order = {}, {}
  for i = 10, #ARGV, 2 do
    local count = tonumber(ARGV[i + 1])
    if count > 0 then
      if not wanted[ARGV[i]] then order[#order + 1] = ARGV[i] end
      wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + count
    end
  end
  local gone = {}
  for name, _ in pairs(old) do
    if not wanted[name] then gone[#gone + 1] = name end
  end
  table.sort(gone)
  table.sort(order)
  redis.call('DEL', hp .. mine)
  for _, name in ipairs(gone) do add(name, -old[name], '') end
  for _, name in ipairs(order) do
    redis.call('HSET', hp .. mine, name, wanted[name])
    add(name, wanted[name] - (old[name] or 0), '')
  end
  lease(mine, now + ttl)
  wrote = true
end
if #events > 0 and ARGV[5] == '1' then
  local present = redis.call('HLEN', names)
  local max = tonumber(ARGV[6])
  for _, event in ipairs(events) do
    local counted = present
    if string.sub(event, 1, 1) == 'L' then counted = present + 1 end
    if counted <= max then redis.call('PUBLISH', channel, 'P:' .. event) end
  end
end
for _, notice in ipairs(notices) do redis.call('PUBLISH', channel, 'P:' .. notice) end
if wrote then
  local last = redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')
  if last[2] then
    local life = string.format('%d', math.max(tonumber(last[2]) - now, 0) + margin)
    redis.call('PEXPIRE', names, life)
    redis.call('PEXPIRE', holders, life)
  end
end
local answer = {rejoined, holds}
if op == 'read' then
  local all = redis.call('HGETALL', names)
  for i = 1, #all do answer[#answer + 1] = all[i] end
end
return answer
"#;

/// One operation of the presence script, with its own arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op<'a> {
    /// A session of this node joined: one more connection of `name`.
    Join { session: u64, name: &'a str },
    /// A session of this node left for good.
    Leave { name: &'a str },
    /// A session of this node went away without leaving: kept for `time`.
    Keep {
        session: u64,
        name: &'a str,
        time: Duration,
    },
    /// This node lives: its lease is renewed.
    Renew,
    /// Who is present.
    Read,
    /// This node's live sessions are exactly these counts.
    Restore(&'a [(Arc<str>, u32)]),
    /// Ends the holders whose time ran out.
    Sweep,
}

impl Op<'_> {
    /// The op's name, as the script and the metrics' `op` label know it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Keep { .. } => "keep",
            Op::Renew => "renew",
            Op::Read => "read",
            Op::Restore(_) => "restore",
            Op::Sweep => "sweep",
        }
    }
}

/// Builds the script's calls for one node.
#[derive(Debug, Clone)]
pub(super) struct PresenceCall {
    pub(super) keys: Keys,
    /// This node, in hex.
    pub(super) node: String,
    pub(super) limits: PresenceLimits,
    pub(super) script: Script,
}

impl PresenceCall {
    pub(super) fn new(keys: Keys, node: NodeId, limits: PresenceLimits) -> Self {
        PresenceCall {
            script: keys.script(PRESENCE_SCRIPT),
            keys,
            node: format!("{node:x}"),
            limits,
        }
    }

    /// The EVALSHA of `op` in `room`; `now`: the time in ms (`None`: Redis's own clock; the
    /// tests give theirs).
    pub(super) fn command(&self, room: &str, op: &Op<'_>, now: Option<u64>) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(2)
            .arg(self.keys.presence_names(room))
            .arg(self.keys.presence_holders(room))
            .arg(op.name())
            .arg(self.keys.presence_holder_prefix(room))
            .arg(self.keys.room(room))
            .arg(&self.node)
            .arg(if self.limits.events { "1" } else { "0" })
            .arg(self.limits.events_max_members)
            .arg(millis(self.limits.ttl))
            .arg(now.map_or_else(String::new, |now| now.to_string()))
            .arg(KEY_MARGIN_MS);
        match op {
            Op::Join { session, name } => {
                cmd.arg(session).arg(*name);
            }
            Op::Leave { name } => {
                cmd.arg(*name);
            }
            Op::Keep {
                session,
                name,
                time,
            } => {
                cmd.arg(session).arg(*name).arg(millis(*time));
            }
            Op::Restore(counts) => {
                for (name, count) in counts.iter() {
                    cmd.arg(&**name).arg(*count);
                }
            }
            Op::Renew | Op::Read | Op::Sweep => {}
        }
        cmd
    }
}

/// A duration in whole milliseconds.
pub(super) fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// The script's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Answer {
    /// Kept connections that ended while their name was present again.
    pub(super) rejoined: u64,
    /// False after a `renew` that found this node's holder gone (Redis lost it).
    pub(super) holds: bool,
    /// For `read`: every present name with its total, by name.
    pub(super) members: Vec<PresentName>,
}

/// The script's answer → [`Answer`]; a `NOSCRIPT` error sets `reload`.
pub(super) fn parse_answer(value: Value, reload: &mut bool) -> Result<Answer, BrokerError> {
    let bad = || BrokerError::Server("unexpected presence answer".to_owned());
    match value {
        Value::Array(parts) => {
            let number =
                |index: usize| -> Option<u64> { parts.get(index).and_then(text)?.parse().ok() };
            let rejoined = number(0).ok_or_else(bad)?;
            let holds = number(1).ok_or_else(bad)? != 0;
            let mut members = Vec::with_capacity(parts.len().saturating_sub(2) / 2);
            for pair in parts.get(2..).unwrap_or_default().chunks(2) {
                let [name, count] = pair else {
                    return Err(bad());
                };
                let name = text(name).ok_or_else(bad)?;
                let count: i64 = text(count).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
                if count > 0 {
                    members.push(PresentName {
                        name: Arc::from(name),
                        connections: u32::try_from(count).unwrap_or(u32::MAX),
                    });
                }
            }
            members.sort_unstable();
            Ok(Answer {
                rejoined,
                holds,
                members,
            })
        }
        Value::ServerError(err) => {
            if err.code() == "NOSCRIPT" {
                *reload = true;
                return Err(BrokerError::Unavailable);
            }
            Err(BrokerError::Server(format!("{err:?}")))
        }
        _ => Err(bad()),
    }
}

/// What a `P:` payload on a room's channel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notice {
    /// A name arrived or is gone.
    Event(PresenceEvent),
    /// A connection is kept this long: the room is to be swept after it.
    Kept(Duration),
}

/// The part of a payload after `P:` on `room`'s channel: `J:ORIGIN:NAME` (`ORIGIN`:
/// `NODE.SESSION`, node in hex, or empty), `L::NAME`, `K::MS`.
pub(super) fn parse_notice(room: Arc<str>, rest: &str) -> Option<Notice> {
    let (kind, rest) = rest.split_once(':')?;
    let (origin, value) = rest.split_once(':')?;
    let origin = match origin {
        "" => None,
        origin => {
            let (node, session) = origin.split_once('.')?;
            Some(Origin {
                node: u64::from_str_radix(node, 16).ok()?,
                session: session.parse().ok()?,
            })
        }
    };
    if value.is_empty() && kind != "K" {
        return None;
    }
    let change = match kind {
        "J" => PresenceChange::Joined(Arc::from(value)),
        "L" if origin.is_none() => PresenceChange::Left(Arc::from(value)),
        "K" if origin.is_none() => {
            return Some(Notice::Kept(Duration::from_millis(value.parse().ok()?)))
        }
        _ => return None,
    };
    Some(Notice::Event(PresenceEvent {
        room,
        change,
        origin,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices() {
        let room: Arc<str> = Arc::from("r");
        assert_eq!(
            parse_notice(room.clone(), "J:ab.7:ann"),
            Some(Notice::Event(PresenceEvent {
                room: room.clone(),
                change: PresenceChange::Joined(Arc::from("ann")),
                origin: Some(Origin {
                    node: 0xab,
                    session: 7
                }),
            }))
        );
        assert_eq!(
            parse_notice(room.clone(), "J::ann"),
            Some(Notice::Event(PresenceEvent {
                room: room.clone(),
                change: PresenceChange::Joined(Arc::from("ann")),
                origin: None,
            }))
        );
        assert_eq!(
            parse_notice(room.clone(), "L::bob"),
            Some(Notice::Event(PresenceEvent {
                room: room.clone(),
                change: PresenceChange::Left(Arc::from("bob")),
                origin: None,
            }))
        );
        assert_eq!(
            parse_notice(room.clone(), "K::1500"),
            Some(Notice::Kept(Duration::from_millis(1500)))
        );
        for bad in [
            "", "J", "J:ann", "J::", "X::a", "K::x", "J:zz.1:a", "J:1:a", "L:1.2:a",
        ] {
            assert_eq!(parse_notice(room.clone(), bad), None, "{bad}");
        }
    }

    #[test]
    fn answers() {
        let int = Value::Int;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let mut reload = false;
        let answer = parse_answer(
            Value::Array(vec![
                int(2),
                int(1),
                bulk("bob"),
                bulk("2"),
                bulk("ann"),
                bulk("1"),
            ]),
            &mut reload,
        );
        assert_eq!(
            answer,
            Ok(Answer {
                rejoined: 2,
                holds: true,
                members: vec![
                    PresentName {
                        name: Arc::from("ann"),
                        connections: 1
                    },
                    PresentName {
                        name: Arc::from("bob"),
                        connections: 2
                    },
                ],
            })
        );
        assert!(parse_answer(Value::Array(vec![int(0)]), &mut reload).is_err());
        assert!(parse_answer(Value::Array(vec![int(0), int(1), bulk("x")]), &mut reload).is_err());
        assert!(!reload);
    }
}
