//! A `redis-server` of the caller's own: a free loopback port, a temp directory, no
//! persistence (so a restart is an empty Redis, as after a crash without a disk), stopped on
//! drop; killable and restartable on the same port. Never a system daemon, never port 6379.
//! A machine without `redis-server` fails with the command that installs it.
//!
//! [`RedisNode`] says how one `redis-server` runs (its program, port, password, extra
//! arguments) and [`RedisServer`] is that node's process. A Sentinel set or a Redis Cluster
//! is a set of nodes with more arguments each (`--sentinel`, `--cluster-enabled yes`), built
//! from `RedisNode`s, each one a `RedisServer` (the Sentinel set: `crate::sentinel`; the
//! cluster: `crate::redis_cluster`). [`cli`] asks any of them with `redis-cli`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{output_within, ChildProcess, Stop};
use crate::port::free_port;
use crate::temp::temp_dir;
use crate::KitError;

/// Installs `redis-server` and, with it, `redis-cli` (Debian's `redis-tools`).
pub(crate) const INSTALL: &str = "apt-get install -y redis-server";

/// How long a starting `redis-server` may take to answer PING on a busy 2-core machine.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// How long an `INFO` may take.
const INFO_DEADLINE: Duration = Duration::from_secs(2);

/// How long one `redis-cli` command may take (a frozen server never answers).
pub const CLI_DEADLINE: Duration = Duration::from_secs(10);

/// How one `redis-server` runs: a builder, then [`start`](Self::start) or
/// [`stopped`](Self::stopped).
#[derive(Debug, Clone)]
pub struct RedisNode {
    program: PathBuf,
    port: Option<u16>,
    password: Option<String>,
    args: Vec<String>,
    /// A config file, given first (a sentinel needs one it can rewrite).
    config_file: Option<PathBuf>,
}

impl Default for RedisNode {
    fn default() -> Self {
        RedisNode::new()
    }
}

impl RedisNode {
    /// `redis-server` from the PATH, on a free port, without a password.
    pub fn new() -> RedisNode {
        RedisNode {
            program: "redis-server".into(),
            port: None,
            password: None,
            args: Vec::new(),
            config_file: None,
        }
    }

    /// Starts with the config file `path` (the first argument), e.g. a `sentinel.conf`.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> RedisNode {
        self.config_file = Some(path.into());
        self
    }

    /// Another `redis-server` binary.
    pub fn program(mut self, program: impl Into<PathBuf>) -> RedisNode {
        self.program = program.into();
        self
    }

    /// A given port instead of a free one.
    pub fn port(mut self, port: u16) -> RedisNode {
        self.port = Some(port);
        self
    }

    /// Requires `password` (`--requirepass`, user `default`).
    pub fn password(mut self, password: &str) -> RedisNode {
        self.password = Some(password.to_owned());
        self
    }

    /// Extra arguments, e.g. `["--maxclients", "1000"]`.
    pub fn args<I, S>(mut self, args: I) -> RedisNode
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The node, not running yet, with its port chosen and its directory made: for a Redis
    /// started after the server that uses it.
    pub fn stopped(self) -> RedisServer {
        let port = self.port.unwrap_or_else(free_port);
        RedisServer {
            dir: temp_dir(&format!("redis-{port}")),
            port,
            node: self,
            child: None,
        }
    }

    /// Starts the node and waits until it answers PING; panics with the reason otherwise.
    pub fn start(self) -> RedisServer {
        self.try_start().unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start`](Self::start), answering why it failed instead of panicking.
    pub fn try_start(self) -> Result<RedisServer, KitError> {
        let mut server = self.stopped();
        server.try_restart()?;
        Ok(server)
    }
}

/// One `redis-server` process on a fixed loopback port; it can be killed and started again
/// on the same port, empty.
pub struct RedisServer {
    node: RedisNode,
    port: u16,
    dir: PathBuf,
    child: Option<ChildProcess>,
}

impl RedisServer {
    /// A default [`RedisNode`], started.
    pub fn start() -> RedisServer {
        RedisNode::new().start()
    }

    /// A Redis that requires `password` (`--requirepass`, user `default`), started.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisNode::new().password(password).start()
    }

    /// A default [`RedisNode`], not running yet.
    pub fn stopped() -> RedisServer {
        RedisNode::new().stopped()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/0`, without any password.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::pid)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again) on its port, empty, and waits until it answers PING.
    /// Panics if it is running already, or with the reason it did not come up.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`restart`](Self::restart), answering why it failed instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), KitError> {
        assert!(self.child.is_none(), "redis-server is running already");
        // No persistence is configured; a stray dump file must not refill it either.
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        let mut command = Command::new(&self.node.program);
        if let Some(config) = &self.node.config_file {
            command.arg(config);
        }
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.node.password {
            command.args(["--requirepass", password]);
        }
        self.child = Some(ChildProcess::spawn(
            &mut command,
            Stop::Kill,
            Some(INSTALL),
        )?);
        self.wait_ready()
    }

    /// Polls with PING until Redis answers (`+PONG`, or `-NOAUTH` from a Redis with a
    /// password: it is up either way).
    fn wait_ready(&mut self) -> Result<(), KitError> {
        let start = Instant::now();
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(ChildProcess::try_wait) {
                self.child = None;
                return Err(KitError::ExitedAtStart {
                    what: format!("redis-server on port {}", self.port),
                    status,
                    stderr: String::new(),
                });
            }
            if start.elapsed() > START_DEADLINE {
                return Err(KitError::Timeout {
                    what: format!("redis-server on port {} did not answer PING", self.port),
                    deadline: START_DEADLINE,
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one inline command (e.g. `CLIENT PAUSE 15000 ALL`) on a fresh connection,
    /// authenticated if the server has a password, and returns the first line of the answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = self.connect().unwrap_or_else(|err| panic!("{err}"));
        let mut lines = String::new();
        if let Some(password) = &self.node.password {
            lines.push_str(&format!("AUTH {password}\r\n"));
        }
        lines.push_str(command);
        lines.push_str("\r\n");
        stream.write_all(lines.as_bytes()).expect("send to Redis");
        let mut answer = Vec::new();
        let wanted = if self.node.password.is_some() { 2 } else { 1 };
        let mut byte = [0u8; 1];
        while answer.iter().filter(|b| **b == b'\n').count() < wanted {
            let n = stream.read(&mut byte).expect("Redis's answer");
            assert!(
                n > 0,
                "Redis closed the connection before answering {command}"
            );
            answer.push(byte[0]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.lines().last().unwrap_or_default().to_owned()
    }

    /// The text of `INFO section` (e.g. `commandstats`), read as a RESP bulk string on a
    /// fresh connection, without blocking the runtime (a benchmark reads it under load).
    pub async fn info(&self, section: &str) -> Result<String, KitError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let read = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr())
                .await
                .map_err(|err| KitError::io(format!("connect to Redis on {}", self.addr()), err))?;
            let mut request = String::new();
            if let Some(password) = &self.node.password {
                request.push_str(&format!("AUTH {password}\r\n"));
            }
            request.push_str(&format!("INFO {section}\r\n"));
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|err| KitError::io("send INFO to Redis", err))?;
            let mut buf = Vec::with_capacity(4096);
            loop {
                // The `+OK` of an AUTH comes first.
                if self.node.password.is_some() && buf.starts_with(b"+OK\r\n") {
                    buf.drain(..5);
                }
                if let Some(text) = bulk_string(&buf)? {
                    return Ok(text);
                }
                let mut chunk = [0u8; 4096];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|err| KitError::io("read INFO from Redis", err))?;
                if n == 0 {
                    return Err(KitError::Unexpected(
                        "Redis closed the connection before answering INFO".into(),
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(INFO_DEADLINE, read)
            .await
            .map_err(|_| KitError::Timeout {
                what: "INFO from Redis".into(),
                deadline: INFO_DEADLINE,
                stderr: String::new(),
            })?
    }

    fn connect(&self) -> Result<TcpStream, KitError> {
        let stream = TcpStream::connect(self.addr())
            .map_err(|err| KitError::io(format!("connect to Redis on {}", self.addr()), err))?;
        stream
            .set_read_timeout(Some(START_DEADLINE))
            .map_err(|err| KitError::io("set a read timeout", err))?;
        Ok(stream)
    }

    /// Kills the server with SIGKILL: it loses everything, and its clients see their
    /// connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS...` on loopback: its output (raw, one value a line). An error
/// reply, a refused connection, or no answer within [`CLI_DEADLINE`] is an `Err` with the
/// reason.
pub fn cli(port: u16, args: &[&str]) -> Result<String, KitError> {
    cli_with_password(port, None, args)
}

/// [`cli`] as the user `default` with `password` if given (passed in the environment, never
/// on a command line or in an error).
pub fn cli_with_password(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> Result<String, KitError> {
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw", "-e"])
        .args(args);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let output = output_within(&mut command, CLI_DEADLINE, Some(INSTALL))?;
    if !output.status.success() {
        return Err(KitError::Unexpected(format!(
            "redis-cli {args:?} on port {port}: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether a Redis on `port` answers an inline PING.
fn ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 64];
    match stream.read(&mut answer) {
        Ok(n) => {
            let answer = &answer[..n];
            answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH")
        }
        Err(_) => false,
    }
}

/// A complete RESP bulk string at the front of `buf`, `None` if more bytes are needed.
fn bulk_string(buf: &[u8]) -> Result<Option<String>, KitError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..eol]);
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| KitError::Unexpected(format!("unexpected reply from Redis: {head:?}")))?;
    let start = eol + 2;
    match buf.get(start..start + len) {
        Some(body) => Ok(Some(String::from_utf8_lossy(body).into_owned())),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::bulk_string;

    #[test]
    fn bulk_strings_whole_or_not_yet() {
        assert_eq!(
            bulk_string(b"$5\r\nhello\r\n").ok().flatten(),
            Some("hello".into())
        );
        assert_eq!(bulk_string(b"$5\r\nhel").ok().flatten(), None);
        assert_eq!(bulk_string(b"$5").ok().flatten(), None);
        assert!(bulk_string(b"-ERR no\r\n").is_err());
    }
}
