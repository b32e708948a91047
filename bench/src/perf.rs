//! `perf` attached to the server under test for a scenario's measured window: `perf stat`
//! counting its write system calls (how many frames wsgrace, or the floor, puts in one write
//! call), or `perf record -g` sampling where its CPU goes. Started before the window, stopped
//! with SIGINT after it; `perf` must be on `PATH` and allowed to attach (root, or
//! `kernel.perf_event_paranoid` low enough). It must not touch the server otherwise: a
//! failure to run perf is reported in the scenario's JSON, never a reason to fail the run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The system calls a server may write a socket with.
const WRITE_EVENTS: &[&str] = &[
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendmsg",
];

/// How long perf gets to attach before the window starts, and to finish after SIGINT.
const ATTACH: Duration = Duration::from_millis(500);
const FINISH: Duration = Duration::from_secs(60);

/// A running `perf` attached to one process.
pub struct Perf {
    child: Child,
    what: Kind,
}

enum Kind {
    Stat,
    Record(PathBuf),
}

impl Perf {
    /// `perf stat` counting the write system calls of `pid`.
    pub async fn count_writes(pid: u32) -> Result<Perf, String> {
        let mut command = Command::new("perf");
        command
            .arg("stat")
            .arg("-x,")
            .arg("-e")
            .arg(WRITE_EVENTS.join(","))
            .arg("-p")
            .arg(pid.to_string());
        Perf::start(command, Kind::Stat).await
    }

    /// `perf record -g` of `pid` into `path` (cpu-clock: this VM has no hardware counters).
    pub async fn record(pid: u32, path: &Path) -> Result<Perf, String> {
        let mut command = Command::new("perf");
        command
            .arg("record")
            .arg("-e")
            .arg("cpu-clock")
            .arg("-g")
            .arg("-o")
            .arg(path)
            .arg("-p")
            .arg(pid.to_string());
        Perf::start(command, Kind::Record(path.to_path_buf())).await
    }

    async fn start(mut command: Command, what: Kind) -> Result<Perf, String> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        // perf prints nothing once attached: give it a moment before the window starts.
        tokio::time::sleep(ATTACH).await;
        Ok(Perf { child, what })
    }

    /// Stops perf (SIGINT) and says what it found: for `count_writes`, the count of each
    /// event, their sum, and the socket sends (sendto, sendmsg); for `record`, the data file.
    pub async fn stop(mut self) -> Value {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return json!({ "error": "perf pid out of range" });
        };
        // SAFETY: kill with a pid of our own child and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let started = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() < FINISH => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let exit = status.and_then(|s| s.code());
        match &self.what {
            Kind::Stat => {
                let counts = parse_stat(&stderr);
                if counts.is_empty() {
                    return json!({ "error": stderr.trim(), "exit_code": exit });
                }
                let total: u64 = counts.iter().map(|(_, n)| n).sum();
                // write(2) here is mostly eventfd wake-ups between threads, not sockets.
                let sends: u64 = counts
                    .iter()
                    .filter(|(k, _)| k == "sendto" || k == "sendmsg")
                    .map(|(_, n)| n)
                    .sum();
                let events: serde_json::Map<String, Value> =
                    counts.into_iter().map(|(k, n)| (k, json!(n))).collect();
                json!({ "write_calls": total, "socket_sends": sends, "events": events })
            }
            Kind::Record(path) => json!({
                "data": path.display().to_string(),
                "exit_code": exit,
                "stderr_tail": stderr.lines().rev().take(3).collect::<Vec<_>>(),
            }),
        }
    }
}

/// The counts of `perf stat -x,` output: `count,unit,event,...` per line; events perf could
/// not count (`<not supported>`, `<not counted>`) are left out.
fn parse_stat(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            let _unit = fields.next()?;
            let event = fields.next()?.trim();
            let name = event.strip_prefix("syscalls:sys_enter_").unwrap_or(event);
            Some((name.to_owned(), count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let text = "12345,,syscalls:sys_enter_sendto,2000000000,100.00,,\n\
                    7,,syscalls:sys_enter_write,2000000000,100.00,,\n\
                    <not supported>,,syscalls:sys_enter_sendmsg,0,100.00,,\n";
        assert_eq!(
            parse_stat(text),
            vec![("sendto".to_owned(), 12345), ("write".to_owned(), 7)]
        );
    }
}
