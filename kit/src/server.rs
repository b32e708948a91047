//! The `wsgrace` binary as a child process. The caller passes the binary's path (tests:
//! `env!("CARGO_BIN_EXE_wsgrace")`; loadgen: its `--server`), and [`ServerCommand`] starts it
//! with a config written to a temp file, on `127.0.0.1:0` unless told otherwise, reads its
//! one stdout line `listening on IP:PORT`, and keeps its stderr (echoed, and kept for
//! searching). [`ServerProcess`] signals it, waits for `/readyz` 200 and for its exit with
//! deadlines, and reads its RSS and CPU time; it is killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::{ChildProcess, Signal, Stop};
use crate::proc_stats::{cpu_time_of, rss_of};
use crate::temp::temp_file;
use crate::{KitError, DEADLINE};

/// How the server's stderr is echoed to ours (it is always kept, see
/// [`ServerProcess::stderr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// As it comes (a test's output then shows the server's log).
    Raw,
    /// Line by line, each with this prefix (e.g. `[server] `).
    Prefixed(String),
    /// Not at all.
    Off,
}

/// How to start the binary: its path, environment, bind address and limits. `start` and
/// `spawn` take the config (TOML text).
#[derive(Debug, Clone)]
pub struct ServerCommand {
    binary: PathBuf,
    env: Vec<(String, String)>,
    bind: String,
    ulimit: Option<String>,
    rust_log: Option<String>,
    echo: Echo,
    startup: Duration,
}

impl ServerCommand {
    /// The binary at `binary`, on `127.0.0.1:0`, with `RUST_LOG=info` unless [`env`]
    /// sets it, its stderr echoed as it comes; 10 s to print its `listening on` line.
    ///
    /// [`env`]: Self::env
    pub fn new(binary: impl Into<PathBuf>) -> ServerCommand {
        ServerCommand {
            binary: binary.into(),
            env: Vec::new(),
            bind: "127.0.0.1:0".into(),
            ulimit: None,
            rust_log: Some("info".into()),
            echo: Echo::Raw,
            startup: DEADLINE,
        }
    }

    /// An environment variable for the server (e.g. `WSGRACE_REDIS_URL`).
    pub fn env(mut self, name: &str, value: &str) -> ServerCommand {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Environment variables for the server.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> ServerCommand {
        for (name, value) in vars {
            self = self.env(name, value);
        }
        self
    }

    /// Listens on `bind` (`--bind`), e.g. the port of a server that just exited, for a
    /// client that must find its server again at the same URL.
    pub fn bind(mut self, bind: SocketAddr) -> ServerCommand {
        self.bind = bind.to_string();
        self
    }

    /// Runs under the open-files limits `ulimit` sets (e.g. `-n 512` for soft and hard,
    /// `-S -n 256` for the soft one alone), through `sh -c 'ulimit ... && exec ...'`.
    pub fn ulimit(mut self, limits: &str) -> ServerCommand {
        self.ulimit = Some(limits.to_owned());
        self
    }

    /// The `RUST_LOG` the server gets unless [`env`](Self::env) sets one (default `info`);
    /// `None` leaves it to our environment and the server's own default.
    pub fn rust_log(mut self, filter: Option<&str>) -> ServerCommand {
        self.rust_log = filter.map(str::to_owned);
        self
    }

    /// How stderr is echoed (default: [`Echo::Raw`]).
    pub fn echo(mut self, echo: Echo) -> ServerCommand {
        self.echo = echo;
        self
    }

    /// How long the server may take to print `listening on` (default 10 s).
    pub fn startup(mut self, deadline: Duration) -> ServerCommand {
        self.startup = deadline;
        self
    }

    /// Starts the binary with `config`; panics with the reason if it does not listen.
    pub fn start(&self, config: &str) -> ServerProcess {
        self.spawn(config).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start`](Self::start), then waits until `/readyz` answers 200 (a node on a Redis
    /// broker listens before it has reached Redis, and refuses upgrades until then).
    pub async fn start_ready(&self, config: &str) -> ServerProcess {
        let server = self.start(config);
        if let Err(err) = server.wait_ready(crate::chat::WAIT).await {
            panic!("{err}");
        }
        server
    }

    fn command(&self, config: &Path) -> Command {
        let mut command = match &self.ulimit {
            Some(limits) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit {limits} && exec \"$0\" \"$@\""))
                    .arg(&self.binary);
                sh
            }
            None => Command::new(&self.binary),
        };
        // `info` unless the caller set RUST_LOG itself (e.g. `debug`, to search every line).
        if let Some(filter) = &self.rust_log {
            if !self.env.iter().any(|(name, _)| name == "RUST_LOG") {
                command.env("RUST_LOG", filter);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(config)
            .arg("--bind")
            .arg(&self.bind)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the binary with `config` and waits for its `listening on` line.
    pub fn spawn(&self, config: &str) -> Result<ServerProcess, KitError> {
        let config_path = temp_file("config.toml", config);
        let mut command = self.command(&config_path);
        let mut child = match ChildProcess::spawn(&mut command, Stop::Kill, None) {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_file(&config_path);
                return Err(err);
            }
        };
        let stdout = child.std_mut().stdout.take().expect("stdout is piped");
        let stderr_pipe = child.std_mut().stderr.take().expect("stderr is piped");
        let (line_tx, line_rx) = mpsc::channel();
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let extra = extra_stdout.clone();
        let api_addr = Arc::new(Mutex::new(None));
        let api = api_addr.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = line_tx.send(lines.next());
            // The API's line, with `api.bind`; anything else breaks the contract.
            for line in lines.map_while(Result::ok) {
                let api_line = line
                    .strip_prefix("api listening on ")
                    .and_then(|addr| addr.trim().parse::<SocketAddr>().ok());
                match api_line {
                    Some(addr) if api.lock().expect("api lock").is_none() => {
                        *api.lock().expect("api lock") = Some(addr);
                    }
                    _ => extra.lock().expect("stdout lock").push(line),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_stderr_reader(
            stderr_pipe,
            stderr.clone(),
            self.echo.clone(),
            stderr_done.clone(),
        );
        let failed = |child: &mut ChildProcess, what: String| {
            let status = child.wait_exit_blocking(Duration::from_millis(500));
            // The stderr reader gets a moment to take in the last lines.
            std::thread::sleep(Duration::from_millis(50));
            let stderr = stderr.lock().expect("stderr lock").clone();
            let _ = std::fs::remove_file(&config_path);
            match status {
                Some(status) => KitError::ExitedAtStart {
                    what: format!("{} ({what})", self.binary.display()),
                    status,
                    stderr,
                },
                None => KitError::Timeout {
                    what: format!("{}: {what}", self.binary.display()),
                    deadline: self.startup,
                    stderr,
                },
            }
        };
        let line = match line_rx.recv_timeout(self.startup) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => return Err(failed(&mut child, "no stdout line".into())),
            Err(_) => return Err(failed(&mut child, "no `listening on` line".into())),
        };
        let addr = match line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.trim().parse().ok())
        {
            Some(addr) => addr,
            None => {
                child.kill();
                return Err(failed(
                    &mut child,
                    format!("the first stdout line is not `listening on IP:PORT`: {line:?}"),
                ));
            }
        };
        Ok(ServerProcess {
            child,
            addr,
            stderr,
            stderr_done,
            extra_stdout,
            api_addr,
            config: config_path,
        })
    }

    /// Runs the binary with `config` until it exits, which it must do within the deadline
    /// (it is killed otherwise): for configurations it must refuse.
    pub fn run_to_exit(&self, config: &str) -> Exit {
        let path = temp_file("config.toml", config);
        let mut command = self.command(&path);
        let mut child = ChildProcess::spawn(&mut command, Stop::Kill, None)
            .unwrap_or_else(|err| panic!("{err}"));
        let read_all = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = read_all(Box::new(child.std_mut().stdout.take().expect("stdout")));
        let stderr = read_all(Box::new(child.std_mut().stderr.take().expect("stderr")));
        let status = child.wait_exit_blocking(DEADLINE);
        let _ = std::fs::remove_file(&path);
        let Some(status) = status else {
            child.kill();
            panic!(
                "{} still running after {DEADLINE:?}; stderr: {}",
                self.binary.display(),
                stderr.join().unwrap_or_default()
            );
        };
        Exit {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }
}

/// Keeps `pipe` drained into `sink`, echoing as `echo` says.
/// Reads the server's stderr into `sink` until its end, then sets `done`.
fn spawn_stderr_reader(
    pipe: std::process::ChildStderr,
    sink: Arc<Mutex<String>>,
    echo: Echo,
    done: Arc<std::sync::atomic::AtomicBool>,
) {
    std::thread::spawn(move || {
        read_stderr(pipe, &sink, echo);
        done.store(true, std::sync::atomic::Ordering::Release);
    });
}

fn read_stderr(pipe: std::process::ChildStderr, sink: &Mutex<String>, echo: Echo) {
    match echo {
        Echo::Prefixed(prefix) => {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("{prefix}{line}");
                let mut text = sink.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        }
        Echo::Raw | Echo::Off => {
            let mut pipe = pipe;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if echo == Echo::Raw {
                    eprint!("{text}");
                }
                sink.lock().expect("stderr lock").push_str(&text);
            }
        }
    }
}

/// What a run of the binary to its end left.
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// How a [`ServerProcess::stop`] went.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    /// Whether it had to be killed (it did not exit within the grace period).
    pub killed: bool,
}

/// A running server binary; killed (SIGKILL) on drop.
pub struct ServerProcess {
    child: ChildProcess,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// Set once the process's stderr reached its end (after its exit): all of it is read.
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
    extra_stdout: Arc<Mutex<Vec<String>>>,
    api_addr: Arc<Mutex<Option<SocketAddr>>>,
    config: PathBuf,
}

impl ServerProcess {
    /// `ws://ADDR/ws{query}`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends SIGTERM: the server drains.
    pub fn sigterm(&self) {
        self.signal(Signal::Term);
    }

    /// Sends `signal`; panics if the server is gone already.
    pub fn signal(&self, signal: Signal) {
        assert!(
            self.try_signal(signal),
            "sending {signal:?} to the server (pid {}) failed",
            self.pid()
        );
    }

    /// Sends `signal`; whether it was delivered (false once the server has exited).
    pub fn try_signal(&self, signal: Signal) -> bool {
        self.child.signal(signal)
    }

    /// Waits for the process to exit; panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        match self.try_wait_exit(deadline).await {
            Some(status) => status,
            None => panic!("the server did not exit within {deadline:?}"),
        }
    }

    /// Waits up to `deadline` for the process to exit; `None` if it still runs. Once it has
    /// exited, its stderr is read to the end before this answers (bounded: a descendant that
    /// kept the pipe open is not waited for past 5 s), so that [`ServerProcess::stderr`] has
    /// its last lines.
    pub async fn try_wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let status = self.child.wait_exit(deadline).await?;
        self.wait_stderr_end().await;
        Some(status)
    }

    async fn wait_stderr_end(&self) {
        let start = Instant::now();
        while !self.stderr_done.load(std::sync::atomic::Ordering::Acquire)
            && start.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM (unless `already_signalled`), waits up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration, already_signalled: bool) -> Stopped {
        if !already_signalled {
            self.child.signal(Signal::Term);
        }
        if let Some(status) = self.try_wait_exit(grace).await {
            return Stopped {
                code: status.code(),
                killed: false,
            };
        }
        eprintln!("the server did not exit within {grace:?} of SIGTERM: SIGKILL");
        let status = self.child.kill();
        Stopped {
            code: status.and_then(|s| s.code()),
            killed: true,
        }
    }

    /// Waits (up to `deadline`) until `GET /readyz` answers 200.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), KitError> {
        let start = Instant::now();
        loop {
            let probe = crate::http::try_get_status(self.addr, "/readyz");
            if let Ok(Ok(200)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return Ok(());
            }
            if start.elapsed() >= deadline {
                return Err(KitError::Timeout {
                    what: format!("{}: /readyz did not answer 200", self.addr),
                    deadline,
                    stderr: self.stderr(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's resident memory, in bytes; `None` once it is gone.
    pub fn rss(&self) -> Option<u64> {
        rss_of(self.pid())
    }

    /// The server's resident memory, in bytes; panics if it cannot be read.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid()).expect("read the server's VmRSS")
    }

    /// Reads the server's RSS from anywhere (a sampling task), as [`Self::rss_bytes`].
    pub fn rss_reader(&self) -> impl Fn() -> u64 + Send + 'static {
        let pid = self.pid();
        move || rss_of(pid).expect("read the server's VmRSS")
    }

    /// The CPU time the server has used so far; `None` once it is gone.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.pid())
    }

    /// The server API's address, from its `api listening on IP:PORT` line (printed right
    /// after `listening on`); waits up to 10 s for it, and panics without it.
    pub fn api_addr(&self) -> SocketAddr {
        let start = std::time::Instant::now();
        loop {
            if let Some(addr) = *self.api_addr.lock().expect("api lock") {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no `api listening on` line; stdout after the first line: {:?}\n{}",
                self.extra_stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lines on stdout after `listening on` (and `api listening on`): the contract is that
    /// there are none.
    pub fn extra_stdout(&self) -> Vec<String> {
        self.extra_stdout.lock().expect("stdout lock").clone()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// The first stderr line containing `needle`, waiting up to `deadline` for it.
    pub async fn find_log_line(&self, needle: &str, deadline: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let found = self
                .stderr
                .lock()
                .expect("stderr lock")
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_owned);
            if found.is_some() || start.elapsed() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until stderr contains `needle`; returns all of stderr then.
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

    /// A raw client joined at `/ws{query}`, past its welcome (so the session is registered);
    /// `recv_buffer` shrinks its socket's receive buffer, for a client that stops reading.
    pub async fn join_raw(&self, query: &str, recv_buffer: Option<u32>) -> crate::raw::RawClient {
        let path = format!("/ws{query}");
        let mut client =
            crate::raw::RawClient::connect_with_buffer(self.addr, &path, recv_buffer).await;
        let welcome = client.next_frame().await.expect("welcome");
        assert!(welcome.text().contains("\"welcome\""), "{welcome:?}");
        client
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.child.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}
