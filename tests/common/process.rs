//! The real `wsgrace` binary as a child process: started on port 0 with a config written
//! for the test, signalled, and waited for with deadlines. Plain HTTP requests by hand.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Writes `text` to a fresh file in the temp dir and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("wsgrace-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// A running server binary.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    extra_stdout: Arc<Mutex<Vec<String>>>,
    _config: PathBuf,
}

impl ServerProcess {
    /// Starts the binary with `config` (TOML) on `127.0.0.1:0` and waits for its
    /// `listening on` line.
    pub fn start(config: &str) -> ServerProcess {
        Self::start_command(config, Command::new(env!("CARGO_BIN_EXE_wsgrace")))
    }

    /// [`start`](Self::start) with extra environment variables (e.g. `WSGRACE_REDIS_URL`).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgrace"));
        command.envs(env.iter().copied());
        Self::start_command(config, command)
    }

    /// [`start`](Self::start) under the open-files limits `ulimit` sets (e.g. `-n 512` for
    /// soft and hard, `-S -n 256` for the soft one alone).
    pub fn start_with_ulimit(config: &str, ulimit: &str) -> ServerProcess {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_wsgrace"));
        Self::start_command(config, command)
    }

    /// [`start`](Self::start) on a given address, e.g. the port of a server that just
    /// exited, for a client that must find its server again at the same URL.
    pub fn start_on(config: &str, bind: SocketAddr) -> ServerProcess {
        let command = Command::new(env!("CARGO_BIN_EXE_wsgrace"));
        Self::start_command_on(config, command, &bind.to_string())
    }

    fn start_command(config: &str, command: Command) -> ServerProcess {
        Self::start_command_on(config, command, "127.0.0.1:0")
    }

    fn start_command_on(config: &str, mut command: Command, bind: &str) -> ServerProcess {
        let path = temp_file("config.toml", config);
        // `info` unless the test set RUST_LOG itself (e.g. `debug`, to search every line).
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .arg("--config")
            .arg(&path)
            .arg("--bind")
            .arg(bind)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the wsgrace binary");
        let stdout = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = mpsc::channel();
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let extra = extra_stdout.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = line_tx.send(line);
            }
            // Anything more on stdout breaks the contract of one line.
            for line in lines.map_while(Result::ok) {
                extra.lock().expect("stdout lock").push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                sink.lock().expect("stderr lock").push_str(&text);
            }
        });
        let line = line_rx
            .recv_timeout(DEADLINE)
            .expect("no `listening on` line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .expect("an address");
        ServerProcess {
            child,
            addr,
            stderr,
            extra_stdout,
            _config: path,
        }
    }

    /// A raw client joined at `/ws{query}`, past its welcome (so the session is registered);
    /// `recv_buffer` shrinks its socket's receive buffer, for a client that stops reading.
    pub async fn join_raw(&self, query: &str, recv_buffer: Option<u32>) -> super::RawClient {
        let path = format!("/ws{query}");
        let mut client = super::RawClient::connect_with_buffer(self.addr, &path, recv_buffer).await;
        let welcome = client.next_frame().await.expect("welcome");
        assert!(welcome.text().contains("\"welcome\""), "{welcome:?}");
        client
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, `KILL`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the server did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The server's resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }

    /// Reads the server's RSS from anywhere (a sampling task), as [`Self::rss_bytes`].
    pub fn rss_reader(&self) -> impl Fn() -> u64 + Send + 'static {
        let pid = self.pid();
        move || rss_of(pid)
    }

    /// Lines on stdout after `listening on`: the contract is that there are none.
    pub fn extra_stdout(&self) -> Vec<String> {
        self.extra_stdout.lock().expect("stdout lock").clone()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits until stderr contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return text;
            }
            assert!(start.elapsed() < DEADLINE, "no log line with {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run of the binary to its end left.
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `config` (TOML) and `env` until it exits, which it must do within
/// the deadline (it is killed otherwise): for configurations it must refuse.
pub fn run_to_exit(config: &str, env: &[(&str, &str)]) -> Exit {
    let path = temp_file("config.toml", config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgrace"))
        .arg("--config")
        .arg(&path)
        .arg("--bind")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the wsgrace binary");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wsgrace still running after {DEADLINE:?}; stderr: {}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_file(&path);
    Exit {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A plain HTTP/1.1 GET; returns the status code.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        request.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("no response")
            .expect("read");
        assert!(n > 0, "connection closed before a status line");
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

/// A plain HTTP/1.1 GET read to the end (`Connection: close`): the whole response, head and
/// body.
pub async fn http_get_response(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("no complete response before the deadline")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// [`http_get_response`] split: the status code and the body.
pub async fn http_get_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_get_response(addr, path).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_owned())
}

/// The value of the sample `name` (with its labels as exposed, e.g.
/// `wsgrace_upgrades_refused_total{reason="broker_unavailable"}`) in `/metrics`, 0 if absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (status, body) = http_get_body(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The resident memory of process `pid` in bytes (`VmRSS`).
fn rss_of(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The headers of a WebSocket upgrade, for [`http_get`].
pub const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// A tungstenite client stream.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a tungstenite client.
pub async fn connect(url: String) -> Ws {
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}
