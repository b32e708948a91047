//! The Redis of the cluster scenarios and what it did for them: a `redis-server` started
//! through the kit (`wsgrace_kit::redis`: a free port, no persistence, stopped on drop), its
//! CPU time, its `INFO commandstats`, and the calls and microseconds per command between two
//! readings, per message sent. It must not interpret what the numbers mean; the scenarios
//! do.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use wsgrace_kit::proc_stats::cpu_time_of;
use wsgrace_kit::redis::{RedisNode, RedisServer};

/// Starts `program` (a `redis-server`) for a scenario and waits until it answers.
pub fn start(program: &str) -> Result<RedisServer, String> {
    RedisNode::new()
        .program(program)
        .args(["--maxclients", "1000"])
        .try_start()
        .map_err(|e| e.to_string())
}

/// The CPU time Redis has used so far.
pub fn cpu_time(redis: &RedisServer) -> Option<Duration> {
    cpu_time_of(redis.pid()?)
}

/// `cmdstat_NAME:calls=N,usec=U,...` lines of `INFO commandstats`: name → (calls, µs spent).
pub type CommandStats = BTreeMap<String, (u64, u64)>;

/// Calls per command so far (the INFO itself is counted too); `None` if Redis did not
/// answer.
pub async fn command_stats(redis: &RedisServer) -> Option<CommandStats> {
    let text = redis.info("commandstats").await.ok()?;
    Some(parse_command_stats(&text))
}

fn parse_command_stats(text: &str) -> CommandStats {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            Some((
                name.to_string(),
                (field("calls=")?, field("usec=").unwrap_or(0)),
            ))
        })
        .collect()
}

/// Calls and the µs Redis spent in them between two snapshots, per command and per
/// message (÷ `messages`); `info` (our own reads) and `ping` (the nodes' health checks,
/// every 2 s, not per message) are listed but left out of the totals. Commands a Lua script
/// runs are counted under their own names as well as in the script's EVALSHA (whose µs
/// include theirs).
pub fn commands_json(before: &CommandStats, after: &CommandStats, messages: u64) -> Value {
    let mut per_command = serde_json::Map::new();
    let mut total = 0u64;
    let per = |x: u64| {
        if messages == 0 {
            Value::Null
        } else {
            json!((x as f64 / messages as f64 * 1000.0).round() / 1000.0)
        }
    };
    for (name, (calls, usec)) in after {
        let (calls_before, usec_before) = before.get(name).copied().unwrap_or((0, 0));
        let delta = calls.saturating_sub(calls_before);
        let usec = usec.saturating_sub(usec_before);
        if delta == 0 {
            continue;
        }
        if name != "info" && name != "ping" {
            total += delta;
        }
        per_command.insert(
            name.clone(),
            json!({
                "calls": delta,
                "per_message": per(delta),
                "usec": usec,
                "usec_per_message": per(usec),
            }),
        );
    }
    json!({
        "messages": messages,
        "calls_excluding_info_ping": total,
        "per_message": per(total),
        "by_command": per_command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=3000,usec=1,usec_per_call=0.1,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=2,usec=5\r\n";
        let stats = parse_command_stats(text);
        assert_eq!(stats.get("evalsha"), Some(&(3000, 1)));
        assert_eq!(stats.get("info"), Some(&(2, 5)));
        let before = CommandStats::from([("evalsha".into(), (10, 100)), ("info".into(), (1, 9))]);
        let after = CommandStats::from([("evalsha".into(), (30, 500)), ("info".into(), (2, 19))]);
        let line = commands_json(&before, &after, 20);
        assert_eq!(line["per_message"], json!(1.0));
        assert_eq!(
            line["by_command"]["evalsha"]["usec_per_message"],
            json!(20.0)
        );
    }
}
