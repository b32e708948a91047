//! The local broker's history across a restart (`history.snapshot_path`): every room's
//! epoch, seq, kept messages and recent dedupe keys written at the end of a drain (a
//! temporary file beside it, synced, then renamed over it) and read back before the next
//! process listens, so that a single node's clients resume across a redeploy.
//!
//! The file is a first line naming the format and its version, a second line with the CRC32
//! of the rest, then JSON. A file that is unreadable, truncated, of another version, or whose
//! content does not check out (a room name, an epoch, seqs out of order, a message that is
//! not its room's) is refused whole: one warn line, and the broker starts empty, never with
//! a wrong replay. Ages are kept rather than clock times, and the time the process was down
//! counts against `history.ttl_ms`.
//!
//! It must not decide what a room keeps (the broker's budget and limits do, as for any
//! message) and must not run anywhere but at start and at the end of a drain.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{entry_bytes, Entry, LocalBroker};
use crate::broker::{unix_ms, Epoch};
use crate::config::is_valid_name;

/// The first line of a snapshot file: the format and its version.
const MAGIC: &str = "wsgrace-history-snapshot 1";

/// Why a snapshot was not written or not read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot this version can trust.
    #[error("{path}: {why}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    saved_at_ms: u64,
    rooms: Vec<RoomSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct RoomSnapshot {
    room: String,
    epoch: String,
    seq: u64,
    entries: Vec<EntrySnapshot>,
    recent: Vec<RecentSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct EntrySnapshot {
    seq: u64,
    age_ms: u64,
    json: String,
}

#[derive(Serialize, Deserialize)]
struct RecentSnapshot {
    key: String,
    epoch: String,
    seq: u64,
    age_ms: u64,
}

fn age_ms(now: Instant, at: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
}

/// `now` less `age_ms`, or `now` when the clock does not reach that far back.
fn back(now: Instant, age_ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(age_ms))
        .unwrap_or(now)
}

/// The file's text: the magic line, the CRC32 of the body, the body.
fn encode(snapshot: &Snapshot) -> Result<String, serde_json::Error> {
    let body = serde_json::to_string(snapshot)?;
    let crc = crc32fast::hash(body.as_bytes());
    Ok(format!("{MAGIC}\ncrc32 {crc:08x}\n{body}"))
}

/// The snapshot in `text`, checked; the error says what is wrong.
fn decode(text: &str) -> Result<Snapshot, String> {
    let (magic, rest) = text.split_once('\n').ok_or("no header line")?;
    if magic != MAGIC {
        return Err(format!(
            "not a snapshot of this version (first line {magic:?})"
        ));
    }
    let (crc_line, body) = rest.split_once('\n').ok_or("no checksum line")?;
    let crc = crc_line
        .strip_prefix("crc32 ")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or("a malformed checksum line")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err("the checksum does not match (truncated or corrupted)".into());
    }
    let snapshot: Snapshot =
        serde_json::from_str(body).map_err(|err| format!("unreadable content: {err}"))?;
    for room in &snapshot.rooms {
        check_room(room).map_err(|why| format!("room {:?}: {why}", room.room))?;
    }
    Ok(snapshot)
}

/// A room is restored only if everything in it is what the broker itself would have kept.
fn check_room(room: &RoomSnapshot) -> Result<(), String> {
    if !is_valid_name(&room.room) {
        return Err("not a room name".into());
    }
    let valid_epoch =
        |epoch: &str| epoch.len() == 16 && epoch.bytes().all(|c| c.is_ascii_hexdigit());
    if !valid_epoch(&room.epoch) {
        return Err("not an epoch".into());
    }
    let mut previous = 0;
    for entry in &room.entries {
        if entry.seq <= previous || entry.seq > room.seq {
            return Err(format!("seq {} out of order", entry.seq));
        }
        previous = entry.seq;
        let frame: serde_json::Value = serde_json::from_str(&entry.json)
            .map_err(|_| format!("message {} is not JSON", entry.seq))?;
        if frame["type"] != "message"
            || frame["room"] != room.room.as_str()
            || frame["seq"] != entry.seq
        {
            return Err(format!("message {} is not this room's", entry.seq));
        }
    }
    if room
        .recent
        .iter()
        .any(|recent| !valid_epoch(&recent.epoch) || recent.seq > room.seq)
    {
        return Err("a dedupe key out of range".into());
    }
    Ok(())
}

impl LocalBroker {
    /// Writes every room to `path` (a temporary file beside it, synced, then renamed);
    /// returns how many rooms.
    pub fn save_snapshot(&self, path: &Path) -> Result<usize, SnapshotError> {
        let now = Instant::now();
        let rooms: Vec<RoomSnapshot> = self
            .rooms
            .iter()
            .map(|(name, log)| RoomSnapshot {
                room: name.to_string(),
                epoch: log.epoch.as_str().to_owned(),
                seq: log.seq,
                entries: log
                    .history
                    .iter()
                    .map(|entry| EntrySnapshot {
                        seq: entry.seq,
                        age_ms: age_ms(now, entry.at),
                        json: entry.json.to_string(),
                    })
                    .collect(),
                recent: log
                    .recent
                    .order
                    .iter()
                    .filter_map(|(at, key)| {
                        let (epoch, seq) = log.recent.seqs.get(key)?;
                        Some(RecentSnapshot {
                            key: key.to_string(),
                            epoch: epoch.as_str().to_owned(),
                            seq: *seq,
                            age_ms: age_ms(now, *at),
                        })
                    })
                    .collect(),
            })
            .collect();
        let count = rooms.len();
        let snapshot = Snapshot {
            saved_at_ms: unix_ms(),
            rooms,
        };
        let io = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let text = encode(&snapshot).map_err(|err| io(std::io::Error::other(err)))?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io)?;
        Ok(count)
    }

    /// Reads `path` into an empty broker; returns how many rooms. A missing file is no
    /// error (zero rooms); a refused one leaves the broker empty.
    pub fn load_snapshot(&mut self, path: &Path) -> Result<usize, SnapshotError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let refused = |why: String| SnapshotError::Refused {
            path: path.to_owned(),
            why,
        };
        let text = String::from_utf8(text).map_err(|_| refused("not UTF-8".into()))?;
        let snapshot = decode(&text).map_err(refused)?;
        let now = Instant::now();
        let down_ms = unix_ms().saturating_sub(snapshot.saved_at_ms);
        let ttl_ms = u64::try_from(self.limits.ttl.as_millis()).unwrap_or(u64::MAX);
        let window_ms = u64::try_from(self.dedupe.as_millis()).unwrap_or(u64::MAX);
        let count = snapshot.rooms.len();
        for room in snapshot.rooms {
            let keep_from = room.entries.len().saturating_sub(self.limits.size);
            let history: VecDeque<Entry> = room
                .entries
                .into_iter()
                .skip(keep_from)
                .filter_map(|entry| {
                    let age = entry.age_ms.saturating_add(down_ms);
                    (age < ttl_ms).then(|| Entry {
                        seq: entry.seq,
                        at: back(now, age),
                        json: entry.json.into(),
                    })
                })
                .collect();
            let bytes: u64 = history.iter().map(|entry| entry_bytes(&entry.json)).sum();
            let (name, log, before) = self.room_mut(&room.room, now);
            log.epoch = Epoch::new(room.epoch);
            log.seq = room.seq;
            log.last_active = history.back().map_or(now, |entry| entry.at);
            log.history = history;
            log.bytes = bytes;
            for recent in room.recent {
                let age = recent.age_ms.saturating_add(down_ms);
                if age < window_ms {
                    log.recent.insert(
                        &recent.key,
                        Epoch::new(recent.epoch),
                        recent.seq,
                        back(now, age),
                    );
                }
            }
            let after = log.idle_slot();
            self.index.update(&name, before, after);
            self.bytes += bytes;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::local::HistoryLimits;
    use crate::broker::{Broker, Outgoing, Resume, ResumeRequest};
    use std::sync::Arc;

    fn broker() -> LocalBroker {
        LocalBroker::new(HistoryLimits {
            size: 100,
            ttl: Duration::from_secs(3600),
            max_bytes: 1 << 30,
        })
        .with_dedupe(Duration::from_secs(300))
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wsgrace-snapshot-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_saved_history_resumes_in_the_next_process() {
        let path = temp_path("roundtrip");
        let mut before = broker();
        let room: Arc<str> = Arc::from("lobby");
        for text in ["one", "two", "three"] {
            let message = Outgoing {
                from: "ann",
                text,
                dedupe_key: Some(text),
                sent_by: None,
            };
            let _ = Broker::publish(&mut before, &room, message);
        }
        let epoch = before.snapshot("lobby", None, Instant::now()).epoch;
        assert_eq!(before.save_snapshot(&path).expect("saved"), 1);

        let mut after = broker();
        assert_eq!(after.load_snapshot(&path).expect("loaded"), 1);
        let resume = ResumeRequest {
            since: 1,
            epoch: Some(epoch.clone()),
        };
        let snapshot = after.snapshot("lobby", Some(&resume), Instant::now());
        assert_eq!((snapshot.epoch.clone(), snapshot.seq), (epoch, 3));
        match snapshot.resume {
            Resume::Resumed(replay) => {
                let seqs: Vec<u64> = replay.iter().map(|m| m.seq).collect();
                assert_eq!(seqs, [2, 3]);
                assert!(replay[1].json.contains("\"three\""));
            }
            other => panic!("not resumed: {other:?}"),
        }
        // A repeat of a key published before the restart is still a repeat.
        let repeat = Outgoing {
            from: "ann",
            text: "two",
            dedupe_key: Some("two"),
            sent_by: None,
        };
        match Broker::publish(&mut after, &room, repeat) {
            crate::broker::Pending::Ready(Ok(crate::broker::Publication::Repeat {
                seq, ..
            })) => {
                assert_eq!(seq, 2)
            }
            _ => panic!("not a repeat"),
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_whole() {
        let path = temp_path("damaged");
        let mut original = broker();
        let room: Arc<str> = Arc::from("r");
        let message = Outgoing {
            from: "ann",
            text: "hello",
            dedupe_key: None,
            sent_by: None,
        };
        let _ = Broker::publish(&mut original, &room, message);
        original.save_snapshot(&path).expect("saved");
        let good = std::fs::read_to_string(&path).expect("read");

        let truncated = good[..good.len() - 5].to_owned();
        let flipped = good.replacen("hello", "hellp", 1);
        let other_version = good.replacen(MAGIC, "wsgrace-history-snapshot 2", 1);
        // A checksum that matches a body that lies: another room's message.
        let (head, body) = good.split_at(good.find("\n{").expect("body") + 1);
        let lying_body = body.replacen("\"room\":\"r\"", "\"room\":\"x\"", 1);
        let lying = format!(
            "{}crc32 {:08x}\n{lying_body}",
            &head[..head.find("crc32").expect("crc line")],
            crc32fast::hash(lying_body.as_bytes())
        );
        for (what, text) in [
            ("truncated", truncated),
            ("flipped", flipped),
            ("other version", other_version),
            ("lying", lying),
            ("empty", String::new()),
        ] {
            std::fs::write(&path, &text).expect("write");
            let mut loaded = broker();
            let err = loaded.load_snapshot(&path).expect_err(what);
            assert!(
                matches!(err, SnapshotError::Refused { .. }),
                "{what}: {err}"
            );
            assert!(loaded.rooms.is_empty(), "{what}: nothing restored");
        }
        // No file: an empty start, no error.
        let _ = std::fs::remove_file(&path);
        assert_eq!(broker().load_snapshot(&path).expect("missing is fine"), 0);
    }
}
