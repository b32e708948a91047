//! What the failover tests share (`tests/sentinel.rs`, `tests/redis_cluster.rs`): a node's
//! Redis config, one member's record of what it saw under traffic while Redis failed over, and
//! the check that no seq names two messages and no member has a hole within an epoch. It owns
//! these helpers only: the processes are the kit's, the scenarios the tests'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wsgrace_kit::chat::{Frame, Reader};

/// A node's config: the Redis broker at `url` under `prefix`.
pub fn config(url: &str, prefix: &str) -> String {
    format!("[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n")
}

/// A key prefix of this test process's own.
pub fn prefix(test: &str) -> String {
    format!("wsgrace-test-{}-{test}", std::process::id())
}

/// What one member saw: every message as (epoch, seq, text) in arrival order, the `epoch`
/// frames, when the first message sent after the kill arrived, and how it ended.
#[derive(Debug, Default)]
pub struct Seen {
    pub messages: Vec<(String, u64, String)>,
    pub epochs: Vec<(String, u64)>,
    pub first_after_kill: Option<Instant>,
    pub refused: usize,
    pub closed: Option<Option<u16>>,
}

/// Reads `rx` until the message `end` (or a close), tracking the epoch from `epoch` on. The
/// first message whose text `after_kill` says was sent after the kill raises `recovered`; a
/// close raises `closed`.
pub async fn watch_member(
    mut rx: Reader,
    epoch: String,
    after_kill: impl Fn(&str) -> bool,
    recovered: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
) -> Seen {
    let mut epoch = epoch;
    let mut seen = Seen::default();
    loop {
        match rx.next().await {
            Frame::Message(msg) => {
                if seen.first_after_kill.is_none() && after_kill(&msg.text) {
                    seen.first_after_kill = Some(Instant::now());
                    recovered.store(true, Ordering::SeqCst);
                }
                let end = msg.text == "end";
                seen.messages.push((epoch.clone(), msg.seq, msg.text));
                if end {
                    return seen;
                }
            }
            Frame::Epoch {
                epoch: new, seq, ..
            } => {
                seen.epochs.push((new.clone(), seq));
                epoch = new;
            }
            Frame::Error { code, .. } if code == "unavailable" => seen.refused += 1,
            Frame::Close(code, _) => {
                seen.closed = Some(code);
                closed.store(true, Ordering::SeqCst);
                return seen;
            }
            Frame::Ended(why) => panic!("a session ended without a close frame: {why}"),
            _ => {}
        }
    }
}

/// Close codes a client retries after (a reconnect and a resume).
pub fn retryable(code: Option<u16>) -> bool {
    matches!(code, Some(1001 | 1011 | 1012 | 1013))
}

/// No seq names two messages within one epoch, whoever saw them, on either node; no member
/// has a hole or a repeat within an epoch (each epoch's seqs are consecutive from where it
/// began: 0 for `first_epoch`, the seq of its `epoch` frame for a later one). `label` names
/// the room in the failure.
pub fn assert_one_message_per_seq_and_no_hole(
    label: &str,
    first_epoch: &str,
    names: &[String],
    seen: &[Seen],
) {
    let mut named_by: HashMap<(String, u64), String> = HashMap::new();
    for (name, member) in names.iter().zip(seen) {
        for (epoch, seq, text) in &member.messages {
            let first = named_by
                .entry((epoch.clone(), *seq))
                .or_insert_with(|| text.clone());
            assert_eq!(
                first, text,
                "{label}: {name}: epoch {epoch} seq {seq} names two messages"
            );
        }
    }
    for (name, member) in names.iter().zip(seen) {
        let mut begins: HashMap<String, u64> = HashMap::from([(first_epoch.to_owned(), 0)]);
        begins.extend(member.epochs.iter().cloned());
        let mut last: Option<(String, u64)> = None;
        for (epoch, seq, text) in &member.messages {
            let expected = match &last {
                Some((last_epoch, last_seq)) if last_epoch == epoch => last_seq + 1,
                _ => begins[epoch] + 1,
            };
            assert_eq!(
                *seq, expected,
                "{label}: {name}: a hole or a repeat in epoch {epoch} at {text:?}"
            );
            last = Some((epoch.clone(), *seq));
        }
    }
}
