//! `examples/backend` against the real server with its API on: a `say` is stored, then
//! published, reaches a v1 member with the example's `from`, and its seq is recorded in the
//! store; `history` and `who` print what the API answers and `kick` closes the member with
//! 4001. After a crash, the messages the store holds without a seq are sent again at start
//! with their own idempotency key: one the server had already is answered as a duplicate and
//! nobody gets it twice.
//!
//! The example must be built first (`cargo test` builds it; with a filter:
//! `cargo build --example backend`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::wsgrace;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;
use wsgrace_kit::api::Api;
use wsgrace_kit::chat::{join, Frame};
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::temp::temp_path;
use wsgrace_kit::DEADLINE;

const KEY: &str = "example-backend-key-0123456789";

fn config() -> String {
    format!("[api]\nbind = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n")
}

/// `target/<profile>/examples/backend`, beside the binary under test.
fn backend_example() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wsgrace"));
    let path = bin
        .parent()
        .expect("target dir")
        .join("examples")
        .join("backend");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --example backend`",
        path.display()
    );
    path
}

/// The example running against `server`'s API with the store `db`.
struct Backend {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Backend {
    fn start(server: &ServerProcess, db: &Path) -> Backend {
        let mut child = Command::new(backend_example())
            .arg("--api")
            .arg(format!("http://{}", server.api_addr()))
            .arg("--db")
            .arg(db)
            .env("WSGRACE_API_KEY", KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start examples/backend");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        Backend {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the backend's stdin");
    }

    /// Reads stdout until a line containing `needle`; returns it.
    async fn expect_line(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            let line = timeout(DEADLINE, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line containing {needle:?}; before: {seen:#?}"))
                .expect("read the backend's stdout")
                .unwrap_or_else(|| {
                    panic!("the backend ended before {needle:?}; before: {seen:#?}")
                });
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
    }

    /// Ends stdin and waits for a clean exit.
    async fn finish(mut self) {
        drop(self.stdin);
        let status = timeout(DEADLINE, self.child.wait())
            .await
            .expect("the backend exits at the end of stdin")
            .expect("wait for the backend");
        assert!(status.success(), "{status}");
    }
}

/// The store's lines, as JSON.
fn store(db: &Path) -> Vec<Value> {
    std::fs::read_to_string(db)
        .unwrap_or_else(|err| panic!("read {}: {err}", db.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line}: {err}")))
        .collect()
}

#[tokio::test]
async fn the_backend_stores_publishes_reads_history_and_kicks() {
    let server = wsgrace().start(&config());
    let mut vic = join(&server, "lobby", "vic", None).await;
    let db = temp_path("backend-messages.jsonl");
    let mut backend = Backend::start(&server, &db);
    backend.expect_line("0 not yet published").await;

    backend.command("say lobby hello from the backend").await;
    let published = backend.expect_line("published lobby #1 id=").await;
    assert!(!published.contains("duplicate"), "{published}");
    let message = vic.rx.message().await;
    assert_eq!(
        (message.seq, message.from.as_str(), message.text.as_str()),
        (1, "backend", "hello from the backend")
    );

    // The store has it, with the seq and the epoch the room gave it, under the id the
    // backend published it with.
    let stored = store(&db);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let id = published
        .split("id=")
        .nth(1)
        .expect("an id in the published line");
    assert_eq!(stored[0]["id"], id);
    assert_eq!(
        (
            &stored[0]["room"],
            &stored[0]["from"],
            &stored[0]["text"],
            &stored[0]["seq"],
            &stored[0]["epoch"]
        ),
        (
            &json!("lobby"),
            &json!("backend"),
            &json!("hello from the backend"),
            &json!(1),
            &json!(vic.welcome.epoch)
        )
    );

    backend.command("history lobby").await;
    backend
        .expect_line("lobby #1 backend: hello from the backend")
        .await;
    backend
        .expect_line("lobby: 1 messages shown, latest #1")
        .await;
    backend.command("who lobby").await;
    backend.expect_line("lobby: vic (1 connection)").await;

    // A bad command is refused and the backend goes on.
    backend.command("say").await;
    backend.command("kick vic").await;
    backend.expect_line("kicked vic").await;
    let (_, close) = vic
        .rx
        .read_until(|frame| match frame {
            Frame::Close(code, reason) => Some((*code, reason.clone())),
            _ => None,
        })
        .await;
    assert_eq!(close, (Some(4001), "kicked".to_owned()));
    vic.tx.close().await;
    backend.finish().await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
async fn after_a_crash_the_stored_messages_are_sent_once() {
    let server = wsgrace().start(&config());
    let mut vic = join(&server, "lobby", "vic", None).await;
    // The backend stored two messages and crashed: the first after the API had published it
    // (its answer lost), the second before it sent it.
    let api = Api::new(server.api_addr(), KEY);
    let answer = api
        .post(
            "/api/publish",
            &json!({"room": "lobby", "text": "one", "from": "backend", "idempotency_key": "m-1-a"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.raw);
    let db = temp_path("backend-messages.jsonl");
    let line = |id: &str, text: &str| {
        json!({"id": id, "room": "lobby", "from": "backend", "text": text, "created_ms": 1})
            .to_string()
    };
    std::fs::write(
        &db,
        format!("{}\n{}\n", line("m-1-a", "one"), line("m-2-b", "two")),
    )
    .expect("write the store");

    let backend = {
        let mut backend = Backend::start(&server, &db);
        backend.expect_line("2 not yet published").await;
        let first = backend.expect_line("published lobby #1 id=m-1-a").await;
        assert!(first.contains("duplicate"), "{first}");
        let second = backend.expect_line("published lobby #2 id=m-2-b").await;
        assert!(!second.contains("duplicate"), "{second}");
        backend
    };
    // vic gets each once: 1 from before the crash, 2 from the restart.
    let messages = vic.rx.messages_through(2).await;
    let got: Vec<(u64, &str)> = messages
        .iter()
        .map(|message| (message.seq, message.text.as_str()))
        .collect();
    assert_eq!(got, [(1, "one"), (2, "two")]);
    let seqs: Vec<(Value, Value)> = store(&db)
        .iter()
        .map(|message| (message["id"].clone(), message["seq"].clone()))
        .collect();
    assert_eq!(
        seqs,
        [(json!("m-1-a"), json!(1)), (json!("m-2-b"), json!(2))]
    );
    backend.finish().await;
    let page = api.get("/api/rooms/lobby/history").await;
    assert_eq!(page.body["seq"], 2, "{}", page.raw);
    let _ = std::fs::remove_file(&db);
}
