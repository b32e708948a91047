//! A `redis-server` of the test's own: a free loopback port, a temporary directory, no
//! persistence (so a restart is an empty Redis, as after a crash without a disk), killed on
//! drop. Never a system daemon, never port 6379. A machine without `redis-server` fails the
//! tests that need it with the command that installs it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use super::free_port;

const REDIS_SERVER: &str = "redis-server";
const INSTALL: &str = "apt-get install -y redis-server";

/// How long a starting `redis-server` may take to answer PING on a busy 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// One `redis-server` child on a fixed loopback port; it can be killed and started again on
/// the same port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a Redis on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut server = RedisServer::stopped();
        server.restart();
        server
    }

    /// Starts a Redis that requires `password` (`--requirepass`, user `default`).
    pub fn start_with_password(password: &str) -> RedisServer {
        let mut server = RedisServer::stopped();
        server.password = Some(password.to_owned());
        server.restart();
        server
    }

    /// A Redis not running yet, with its port chosen: for a node started before its broker.
    pub fn stopped() -> RedisServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let port = free_port();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wsgrace-redis-{}-{n}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the Redis temp dir");
        RedisServer {
            port,
            dir,
            password: None,
            child: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`, without any password.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again) on its port, empty, and waits until it answers PING.
    /// Panics if it is running already.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        // No persistence is configured; a stray dump file must not refill it either.
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        let mut command = Command::new(REDIS_SERVER);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) if err.kind() == ErrorKind::NotFound => panic!(
                "\n\n*** the cluster tests need redis-server, which is missing. Install it with:\n***     {INSTALL}\n*** (scripts/test.sh does this on a fresh machine)\n"
            ),
            Err(err) => panic!("starting redis-server failed: {err}"),
        };
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls with PING until Redis answers (`+PONG`, or `-NOAUTH` from a Redis with a
    /// password: it is up either way); panics past the deadline or if the child exited.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if ping(self.port) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "redis-server on port {} exited at start: {status}",
                        self.port
                    );
                }
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "redis-server on port {} did not answer PING within {START_DEADLINE:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one inline command (e.g. `CLIENT PAUSE 15000 ALL`) on a fresh connection,
    /// authenticated if the server has a password, and returns the first line of the answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Redis");
        stream
            .set_read_timeout(Some(START_DEADLINE))
            .expect("read timeout");
        let mut lines = String::new();
        if let Some(password) = &self.password {
            lines.push_str(&format!("AUTH {password}\r\n"));
        }
        lines.push_str(command);
        lines.push_str("\r\n");
        stream.write_all(lines.as_bytes()).expect("send to Redis");
        let mut answer = Vec::new();
        let wanted = if self.password.is_some() { 2 } else { 1 };
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

    /// Kills the server with SIGKILL: it loses everything, and its clients see their
    /// connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
