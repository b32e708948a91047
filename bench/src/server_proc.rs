//! The server under test as a child process: writes its config (the user's file, if any,
//! with the scenario's keys laid over it), starts it on `127.0.0.1:0`, reads the
//! `listening on IP:PORT` line, keeps its stderr drained (remembering the drain report
//! line), reads its RSS, and stops it: SIGTERM, then SIGKILL after a grace period. It
//! must not interpret the server's results; the scenarios do.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the server binary and the base config come from.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub binary: PathBuf,
    pub config: Option<PathBuf>,
    /// `server.workers`, if set on the command line.
    pub workers: Option<u32>,
    /// Echo the server's stderr to ours.
    pub echo_log: bool,
}

/// A config key the scenario needs: `(table, key, value)`.
pub type Override = (&'static str, &'static str, toml::Value);

#[derive(Default)]
struct LogState {
    drain_line: Option<String>,
    tail: Vec<String>,
}

/// A running server.
pub struct ServerProc {
    child: Child,
    pub pid: i32,
    pub addr: SocketAddr,
    log: Rc<RefCell<LogState>>,
    config_path: PathBuf,
}

/// How the server ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Exit status code; `None` if a signal ended it.
    pub code: Option<i32>,
    /// Whether we had to SIGKILL it.
    pub killed: bool,
}

fn write_config(opts: &ServerOpts, overrides: &[Override], tag: &str) -> Result<PathBuf, String> {
    let mut root = match &opts.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("parsing {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut all: Vec<Override> = overrides.to_vec();
    if let Some(workers) = opts.workers {
        all.push((
            "server",
            "workers",
            toml::Value::Integer(i64::from(workers)),
        ));
    }
    for (table, key, value) in all {
        let entry = root
            .entry(table)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => return Err(format!("config: `{table}` is not a table")),
        }
    }
    let path =
        std::env::temp_dir().join(format!("wsgrace-loadgen-{}-{tag}.toml", std::process::id()));
    std::fs::write(&path, root.to_string())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

impl ServerProc {
    /// Starts the server and waits (up to `startup`) for its `listening on` line.
    pub async fn start(
        opts: &ServerOpts,
        overrides: &[Override],
        tag: &str,
        startup: Duration,
    ) -> Result<ServerProc, String> {
        let config_path = write_config(opts, overrides, tag)?;
        let mut child = Command::new(&opts.binary)
            .arg("--config")
            .arg(&config_path)
            .arg("--bind")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", opts.binary.display()))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or("server exited at once")?;
        let log = Rc::new(RefCell::new(LogState::default()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            let echo = opts.echo_log;
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("[server] {line}");
                    }
                    let mut log = log.borrow_mut();
                    if line.contains("drain finished") {
                        log.drain_line = Some(line.clone());
                    }
                    if log.tail.len() >= 20 {
                        log.tail.remove(0);
                    }
                    log.tail.push(line);
                }
            });
        }
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(startup, lines.next_line()).await;
        let addr = match line {
            Ok(Ok(Some(line))) => line
                .strip_prefix("listening on ")
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("unexpected first stdout line: {line:?}")),
            Ok(Ok(None)) => Err("server closed stdout before listening".to_string()),
            Ok(Err(e)) => Err(format!("reading server stdout: {e}")),
            Err(_) => Err(format!("no `listening on` line within {startup:?}")),
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                tokio::task::yield_now().await;
                let tail = log.borrow().tail.join("\n");
                let _ = std::fs::remove_file(&config_path);
                return Err(format!("{e}; server stderr:\n{tail}"));
            }
        };
        // Keep stdout drained: the server prints nothing else, but must never block on it.
        tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProc {
            child,
            pid,
            addr,
            log,
            config_path,
        })
    }

    /// [`ServerProc::start`], then [`ServerProc::wait_ready`]: a node that serves upgrades
    /// (on Redis, once it has reached Redis). 10 s for each.
    pub async fn start_ready(
        opts: &ServerOpts,
        overrides: &[Override],
        tag: &str,
    ) -> Result<ServerProc, String> {
        let server = ServerProc::start(opts, overrides, tag, Duration::from_secs(10)).await?;
        server.wait_ready(Duration::from_secs(10)).await?;
        Ok(server)
    }

    /// Waits (up to `limit`) until `GET /readyz` answers 200: a node on a Redis broker
    /// prints `listening on` before it has reached Redis, and refuses upgrades until then.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let until = tokio::time::Instant::now() + limit;
        loop {
            let probe = async {
                let mut conn = tokio::net::TcpStream::connect(self.addr).await.ok()?;
                conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let mut head = [0u8; 12];
                conn.read_exact(&mut head).await.ok()?;
                Some(head.ends_with(b"200"))
            };
            if let Ok(Some(true)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!("{} not ready within {limit:?}", self.addr));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in bytes, from /proc/PID/status (VmRSS).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid)
    }

    /// CPU time the server has used so far (user + system, all threads), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.pid)
    }

    pub fn sigterm(&self) -> bool {
        // SAFETY: kill(2) with a pid we own (our child, not yet reaped) and a valid signal.
        unsafe { libc::kill(self.pid, libc::SIGTERM) == 0 }
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<Exit> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(Exit {
                code: status.code(),
                killed: false,
            }),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// SIGTERM (unless `already_signalled`), wait up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration, already_signalled: bool) -> Exit {
        if !already_signalled {
            self.sigterm();
        }
        if let Some(exit) = self.wait_exit(grace).await {
            return exit;
        }
        eprintln!("server did not exit within {grace:?} of SIGTERM: SIGKILL");
        let _ = self.child.start_kill();
        let code = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => None,
        };
        Exit { code, killed: true }
    }

    /// The server's `drain finished: ...` log line, once it has been logged. Gives the
    /// stderr reader a moment to catch up first.
    pub async fn drain_line(&self) -> Option<String> {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Some(line) = &self.log.borrow().drain_line {
                return Some(line.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

pub fn rss_of(pid: i32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn cpu_time_of(pid: i32) -> Option<Duration> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}
