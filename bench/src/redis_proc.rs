//! A throwaway `redis-server` as a child process for the cluster scenarios: started on a
//! free loopback port with no persistence (`--save "" --appendonly no`), its CPU time read
//! from /proc, its `INFO commandstats` read over a raw RESP connection, killed at the end
//! (also when dropped). It must not interpret what the numbers mean; the scenarios do.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::server_proc::cpu_time_of;

/// A running redis-server.
pub struct RedisProc {
    child: Child,
    pub pid: i32,
    pub addr: SocketAddr,
}

/// `cmdstat_NAME:calls=N,usec=U,...` lines of `INFO commandstats`: name → (calls, µs spent).
pub type CommandStats = BTreeMap<String, (u64, u64)>;

impl RedisProc {
    /// Starts `binary` on a free port and waits (up to 5 s) until it answers.
    pub async fn start(binary: &str) -> Result<RedisProc, String> {
        // A free port: bind port 0, read it, release it. A race with another process is
        // possible but harmless: redis-server then fails and we report it.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--maxclients", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {binary}: {e}"))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or("redis-server exited at once")?;
        let redis = RedisProc {
            child,
            pid,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if redis.command_stats().await.is_ok() {
                return Ok(redis);
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "redis-server on port {port} did not answer within 5 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.pid)
    }

    /// Calls per command so far (`INFO commandstats`; the INFO itself is counted too).
    pub async fn command_stats(&self) -> Result<CommandStats, String> {
        let mut conn = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        conn.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(4096);
        let text = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut chunk))
                .await
                .map_err(|_| "INFO timed out".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("redis closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(text) = bulk_string(&buf)? {
                break text;
            }
        };
        Ok(parse_command_stats(&text))
    }

    /// SIGKILL: nothing in it is worth keeping.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

/// A complete RESP bulk string at the front of `buf`, `None` if more bytes are needed.
fn bulk_string(buf: &[u8]) -> Result<Option<String>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..eol]);
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected reply {head:?}"))?;
    let start = eol + 2;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[start..start + len]).into_owned(),
    ))
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
        let body = b"$5\r\nhello\r\n";
        assert_eq!(bulk_string(body), Ok(Some("hello".into())));
        assert_eq!(bulk_string(b"$5\r\nhel"), Ok(None));
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
