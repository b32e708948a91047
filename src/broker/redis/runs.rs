//! Which Redis process the scripts of a room must find (the `run` argument of the publish and
//! snapshot scripts, see `keys.rs`): one `run_id` for one Redis; on a Redis Cluster, per slot
//! range, `MYID:RUN_ID` of the master that served it when the broker connected. A script
//! checks `CLUSTER MYID` (cheap) against `MYID` and, if another node runs it (a failover the
//! broker has not followed yet), refuses with `READONLY`, which makes the broker connect again;
//! otherwise it compares the room's last writer with `RUN_ID` as with one Redis. (Reading the
//! run_id inside the script, `?`, costs Redis ~6 µs per call: `INFO server`; it stays the
//! answer for a slot the map does not know.)
//!
//! It owns the map and the slot of a key (Redis's hash-tag rule, CRC16/XMODEM mod 16384); it
//! must not connect or decide about rooms.

use std::sync::Arc;

use redis::Value;

/// The slots of a Redis Cluster.
const SLOTS: u16 = 16_384;

/// The `run` a room's scripts get.
#[derive(Debug, Clone)]
pub(super) enum Runs {
    /// One Redis: its `run_id` (empty: no check, with `broker.wait_replicas` > 0; `?`: the
    /// scripts read it).
    One(Arc<str>),
    /// A Redis Cluster: `MYID:RUN_ID` per slot range, sorted by start.
    Shards(Arc<[(u16, u16, Arc<str>)]>),
}

impl Runs {
    /// The `run` for the scripts of the room whose hash is `room_key`.
    pub(super) fn for_key(&self, room_key: &str) -> &str {
        match self {
            Runs::One(run) => run,
            Runs::Shards(ranges) => {
                let slot = key_slot(room_key.as_bytes());
                ranges
                    .iter()
                    .find(|(start, end, _)| (*start..=*end).contains(&slot))
                    .map_or("?", |(_, _, run)| run)
            }
        }
    }
}

/// The slot of `key`: the CRC16 of its hash tag (the part between the first `{` and the next
/// `}`, if not empty) or of the whole key.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            Some(&rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// A `CLUSTER SLOTS` answer → `(start, end, master address "host:port", master id)` per
/// range; ranges it cannot read are left out (their rooms' scripts then read the run_id).
pub(super) fn parse_cluster_slots(value: &Value) -> Vec<(u16, u16, String, String)> {
    let Value::Array(ranges) = value else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let number = |value: Option<&Value>| match value {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let start = number(parts.first())?;
            let end = number(parts.get(1))?;
            let Some(Value::Array(master)) = parts.get(2) else {
                return None;
            };
            let host = text(master.first())?;
            let port = match master.get(1) {
                Some(Value::Int(port)) => *port,
                _ => return None,
            };
            let id = text(master.get(2))?;
            Some((start, end, format!("{host}:{port}"), id))
        })
        .collect()
}

fn text(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        Some(Value::SimpleString(text)) | Some(Value::VerbatimString { text, .. }) => {
            Some(text.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_rule() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"x:{t}:a"), 15891);
        assert_eq!(key_slot(b"x:{t}:b"), key_slot(b"t"));
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo"));
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
        assert_eq!(key_slot(b"a{b"), key_slot(b"a{b"));
    }

    #[test]
    fn runs_by_slot() {
        let runs = Runs::Shards(Arc::from(vec![
            (0, 8_000, Arc::from("id1:run1")),
            (8_001, 16_383, Arc::from("id2:run2")),
        ]));
        assert_eq!(runs.for_key("x:{t}:a"), "id2:run2");
        assert_eq!(runs.for_key("foo"), "id2:run2");
        let partial = Runs::Shards(Arc::from(vec![(0, 100, Arc::from("id1:run1"))]));
        assert_eq!(partial.for_key("foo"), "?");
        assert_eq!(Runs::One(Arc::from("r")).for_key("foo"), "r");
    }

    #[test]
    fn cluster_slots_answers() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("aaa")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7003), bulk("ddd")]),
            ]),
            Value::Array(vec![Value::Int(5461)]),
        ]);
        assert_eq!(
            parse_cluster_slots(&answer),
            [(0, 5460, "127.0.0.1:7000".to_owned(), "aaa".to_owned())]
        );
        assert!(parse_cluster_slots(&Value::Nil).is_empty());
    }
}
