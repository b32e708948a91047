//! SPEC "Running" and "config.toml", against the real binary: the shipped `config.toml` starts
//! the server, which prints exactly one `listening on IP:PORT` line; a missing file, bad
//! TOML, an unknown key, a value of the wrong type or out of range exits with status 2 and
//! one message naming the file and the key.
//!
//! Every child process is bounded by a deadline and killed when it passes it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Long enough for a busy 2-core machine; only reached when a test fails.
const DEADLINE: Duration = Duration::from_secs(10);

const BINARY: &str = env!("CARGO_BIN_EXE_wsgrace");
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");

/// A file or directory under the system temp dir, unique to this test run, removed on drop.
struct Temp {
    path: PathBuf,
}

impl Temp {
    fn path(label: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("wsgrace-test-{}-{n}-{label}", std::process::id()))
    }

    /// A config file with `text` in it.
    fn config(label: &str, text: &str) -> Temp {
        let path = Temp::path(&format!("{label}.toml"));
        std::fs::write(&path, text).expect("write the temp config");
        Temp { path }
    }

    /// An empty directory.
    fn dir(label: &str) -> Temp {
        let path = Temp::path(label);
        std::fs::create_dir(&path).expect("create the temp dir");
        Temp { path }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = if self.path.is_dir() {
            std::fs::remove_dir_all(&self.path)
        } else {
            std::fs::remove_file(&self.path)
        };
    }
}

fn wsgrace(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Reads all of `pipe` on a thread, so that a chatty child never blocks on a full pipe.
fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Kills `child` (SIGKILL) and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

struct Exit {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end, failing the test if it runs past the deadline.
fn run(command: &mut Command) -> Exit {
    let mut child = command.spawn().expect("spawn wsgrace");
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for wsgrace") {
            Some(status) => break status,
            None if started.elapsed() > DEADLINE => {
                kill(&mut child);
                panic!(
                    "wsgrace still running after {DEADLINE:?}; stdout: {:?}; stderr: {:?}",
                    stdout.join().unwrap_or_default(),
                    stderr.join().unwrap_or_default()
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    Exit {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs wsgrace on a config file with `text` and asserts that it is refused: status 2, no
/// listening line, and one stderr line naming the file and `key`.
fn assert_refused(label: &str, text: &str, key: &str) {
    let file = Temp::config(label, text);
    let path = file.path.to_str().expect("temp path is UTF-8");
    let exit = run(&mut wsgrace(&["--config", path]));
    assert_refused_exit(&exit, path, key);
}

fn assert_refused_exit(exit: &Exit, path: &str, key: &str) {
    assert_eq!(exit.status.code(), Some(2), "stderr: {}", exit.stderr);
    assert_eq!(
        exit.stdout, "",
        "a refused config must not start the server"
    );
    let message = exit
        .stderr
        .lines()
        .find(|line| line.contains(path))
        .unwrap_or_else(|| panic!("no stderr line names {path}: {:?}", exit.stderr));
    assert!(
        message.contains(key),
        "the message names no {key:?}: {message}"
    );
}

#[test]
fn missing_file_exits_2_naming_the_file() {
    let path = Temp::path("missing.toml");
    let path = path.to_str().expect("temp path is UTF-8");
    let exit = run(&mut wsgrace(&["--config", path, "--bind", "127.0.0.1:0"]));
    assert_refused_exit(&exit, path, path);
}

#[test]
fn bad_toml_exits_2_naming_the_file() {
    let file = Temp::config("syntax", "[session\nheartbeat_interval_ms = = 3\n");
    let path = file.path.to_str().expect("temp path is UTF-8");
    let exit = run(&mut wsgrace(&["--config", path, "--bind", "127.0.0.1:0"]));
    assert_refused_exit(&exit, path, "line 1");
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    assert_refused("unknown", "[session]\nbogus = 1\n", "session.bogus");
}

#[test]
fn unknown_table_exits_2_naming_it() {
    assert_refused(
        "unknown-table",
        "[sessions]\nmax_frame_bytes = 1\n",
        "sessions",
    );
}

#[test]
fn out_of_range_value_exits_2_naming_the_key() {
    assert_refused(
        "range",
        "[session]\nmax_frame_bytes = 0\n",
        "session.max_frame_bytes",
    );
}

#[test]
fn wrong_type_exits_2_naming_the_key() {
    assert_refused("type", "[close]\nmode = \"sometimes\"\n", "close.mode");
}

#[test]
fn bad_bind_address_exits_2_naming_the_key() {
    assert_refused(
        "bind",
        "[server]\nbind = \"not an address\"\n",
        "server.bind",
    );
}

#[test]
fn bad_bind_override_exits_2_naming_the_key() {
    let exit = run(&mut wsgrace(&[
        "--config",
        SHIPPED_CONFIG,
        "--bind",
        "not an address",
    ]));
    assert_eq!(exit.status.code(), Some(2), "stderr: {}", exit.stderr);
    assert!(exit.stderr.contains("server.bind"), "{}", exit.stderr);
}

#[test]
fn overlong_shutdown_reason_exits_2_naming_the_key() {
    let text = format!("[shutdown]\nreason = \"{}\"\n", "r".repeat(124));
    assert_refused("reason", &text, "shutdown.reason");
}

#[test]
fn missing_default_config_exits_2_naming_it() {
    // Without --config the binary reads ./config.toml.
    let dir = Temp::dir("empty-cwd");
    let exit = run(wsgrace(&["--bind", "127.0.0.1:0"]).current_dir(&dir.path));
    assert_refused_exit(&exit, "config.toml", "config.toml");
}

/// Starts wsgrace with `command`, waits for its first stdout line, kills it, and returns
/// that line and whatever else it printed on stdout.
fn first_line_then_kill(command: &mut Command) -> (String, String) {
    let mut child = command.spawn().expect("spawn wsgrace");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let (first_tx, first_rx) = mpsc::channel();
    let rest = thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_tx.send(lines.next());
        lines.map_while(Result::ok).collect::<Vec<_>>().join("\n")
    });
    let first = first_rx.recv_timeout(DEADLINE);
    kill(&mut child);
    let rest = rest.join().expect("stdout reader");
    let stderr = stderr.join().unwrap_or_default();
    match first {
        Ok(Some(Ok(line))) => (line, rest),
        other => panic!("no stdout line within {DEADLINE:?} ({other:?}); stderr: {stderr}"),
    }
}

fn assert_listening(line: &str) -> SocketAddr {
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|err| panic!("{addr:?} is not IP:PORT: {err}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(addr.port(), 0, "the real port, not 0: {line}");
    addr
}

#[test]
fn shipped_config_starts_and_prints_one_listening_line() {
    let (line, rest) = first_line_then_kill(&mut wsgrace(&[
        "--config",
        SHIPPED_CONFIG,
        "--bind",
        "127.0.0.1:0",
    ]));
    assert_listening(&line);
    assert_eq!(rest, "", "stdout has more than the listening line");
}

#[test]
fn without_config_flag_reads_config_toml_in_the_working_directory() {
    let (line, _) = first_line_then_kill(
        wsgrace(&["--bind", "127.0.0.1:0"]).current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    assert_listening(&line);
}

#[test]
fn a_trimmed_config_takes_defaults_for_the_rest() {
    let file = Temp::config("trimmed", "[session]\nmax_frame_bytes = 1024\n");
    let path = file.path.to_str().expect("temp path is UTF-8");
    let (line, _) =
        first_line_then_kill(&mut wsgrace(&["--config", path, "--bind", "127.0.0.1:0"]));
    assert_listening(&line);
}

#[test]
fn a_port_in_use_is_one_line_and_no_panic() {
    for key in ["server.bind", "api.bind"] {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let addr = taken.local_addr().expect("its address");
        let text = match key {
            "server.bind" => format!("[server]\nbind = \"{addr}\"\n"),
            _ => format!("[api]\nbind = \"{addr}\"\nkey = \"0123456789abcdef\"\n"),
        };
        let path = std::env::temp_dir().join(format!(
            "wsgrace-port-in-use-{}-{}.toml",
            std::process::id(),
            key.replace('.', "-")
        ));
        std::fs::write(&path, text).expect("write the config");
        let mut command = wsgrace(&["--config", path.to_str().expect("a UTF-8 path")]);
        command.env("RUST_BACKTRACE", "1");
        let exit = run(&mut command);
        let _ = std::fs::remove_file(&path);
        assert_eq!(exit.status.code(), Some(1), "{key}: {}", exit.stderr);
        assert!(
            exit.stderr.contains(&format!(
                "cannot listen on {addr} ({key}): Address already in use"
            )),
            "{key}: {}",
            exit.stderr
        );
        assert!(!exit.stderr.contains("panicked"), "{key}: {}", exit.stderr);
        assert!(
            exit.stdout.is_empty(),
            "{key}: no listening line: {}",
            exit.stdout
        );
        drop(taken);
    }
}
