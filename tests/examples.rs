//! The examples against the real server: `chat_client` joins, sends a stdin line, sees it
//! come back, reports the server's `going_away` and close on SIGTERM and goes on to
//! reconnect; on Ctrl-C it closes with 1000 (or, while reconnecting, just stops).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::wsgrace;
use wsgrace_kit::child::{send_signal, Signal};
use wsgrace_kit::DEADLINE;

/// `target/<profile>/examples/chat_client`, built by `cargo test` with the other targets.
fn chat_client() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wsgrace"));
    let path = bin
        .parent()
        .expect("target dir")
        .join("examples")
        .join("chat_client");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples`",
        path.display()
    );
    path
}

/// Runs chat_client on `url`; returns the child and a channel of its stdout lines.
fn spawn_client(url: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(chat_client())
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat_client");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn expect_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "chat_client did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test]
async fn chat_client_chats_and_reports_the_servers_close() {
    let mut server = wsgrace().start("");
    let (mut child, lines) = spawn_client(&server.ws_url("?room=term&name=cli"));
    expect_line(&lines, "joined room term as cli");
    let stdin = child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "hello from the terminal").expect("write stdin");
    let line = expect_line(&lines, "cli: hello from the terminal");
    assert!(line.starts_with("#1 "), "{line}");

    server.sigterm();
    expect_line(&lines, "going away: the server asks to reconnect in");
    let closed = expect_line(&lines, "closed:");
    assert_eq!(closed, "closed: code 1001 reason \"server shutting down\"");
    // The server said going_away: the client reconnects by itself (to a server that is gone).
    let next = expect_line(&lines, "next:");
    assert!(next.starts_with("next: reconnect in"), "{next}");
    assert!(server.wait_exit(DEADLINE).await.success());
    assert!(server.stderr().contains("acked_awaited=1"));
    // Ctrl-C while reconnecting stops it for good.
    interrupt(&child);
    expect_line(&lines, "state: closed");
    assert!(wait_exit(&mut child).success());
}

fn interrupt(child: &std::process::Child) {
    assert!(
        send_signal(child.id(), Signal::Int),
        "SIGINT to chat_client"
    );
}

#[tokio::test]
async fn chat_client_closes_with_1000_on_ctrl_c() {
    let mut server = wsgrace().start("");
    let (mut child, lines) = spawn_client(&server.ws_url("?room=term"));
    expect_line(&lines, "joined room term");
    interrupt(&child);
    // The server echoes the client's code.
    let closed = expect_line(&lines, "closed:");
    assert!(closed.starts_with("closed: code 1000"), "{closed}");
    assert!(wait_exit(&mut child).success());
    // The session is gone: the drain finds nobody.
    server.sigterm();
    assert!(server.wait_exit(DEADLINE).await.success());
    assert!(
        server.stderr().contains("sessions=0"),
        "{}",
        server.stderr()
    );
}

#[test]
fn mint_token_help_describes_the_tool() {
    let path = chat_client().with_file_name("mint_token");
    let output = Command::new(&path)
        .arg("--help")
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", path.display()));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.starts_with("Mints a token (JWT)"), "{help}");
    assert!(help.contains("WSGRACE_JWT_SECRET"), "{help}");
    assert!(
        !help.contains("Graceful WebSocket connection management"),
        "{help}"
    );
}
