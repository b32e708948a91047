//! A single node keeps its history across a redeploy (SPEC "Resume", `history.snapshot_path`),
//! against the real binary: a client sees messages, the node is drained and a new process
//! started on the same snapshot, more is said, and the client resumes with `resumed:true`
//! and exactly what it missed; a damaged, truncated or foreign file gets one warn line and
//! an empty start (a new epoch, `resumed:false`), never a crash or a wrong replay.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::wsgrace;
use wsgrace_kit::chat::join;
use wsgrace_kit::server::ServerProcess;

const WAIT: Duration = Duration::from_secs(20);

fn snapshot_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wsgrace-history-snapshot-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("history.snapshot")
}

fn config(path: &std::path::Path) -> String {
    format!(
        "[history]\nsnapshot_path = \"{}\"\n\n[shutdown]\nreconnect_spread_ms = 0\n",
        path.display()
    )
}

async fn drain(server: &mut ServerProcess) {
    server.sigterm();
    assert!(
        server.wait_exit(WAIT).await.success(),
        "{}",
        server.stderr()
    );
}

#[tokio::test]
async fn a_client_resumes_across_a_restart_of_a_single_node() {
    let path = snapshot_file("restart");
    let cfg = config(&path);
    let mut first = wsgrace().start(&cfg);
    let mut ann = join(&first, "lobby", "ann", None).await;
    let epoch = ann.welcome.epoch.clone();
    for text in ["one", "two", "three"] {
        ann.tx.send(text).await;
    }
    let mut seen = 0;
    for _ in 0..3 {
        seen = ann.rx.message().await.seq;
    }
    assert_eq!(seen, 3);
    drain(&mut first).await;
    assert!(
        first.stderr().contains("history: 1 rooms written to"),
        "{}",
        first.stderr()
    );

    // The next process: what is said before ann comes back is kept under the same epoch.
    let second = wsgrace().start(&cfg);
    assert!(
        second
            .find_log_line("history: 1 rooms restored from", WAIT)
            .await
            .is_some(),
        "{}",
        second.stderr()
    );
    let mut bob = join(&second, "lobby", "bob", None).await;
    assert_eq!(
        (bob.welcome.epoch.as_str(), bob.welcome.seq),
        (epoch.as_str(), 3)
    );
    bob.tx.send("four, while ann was away").await;
    assert_eq!(bob.rx.message().await.seq, 4);
    let mut ann = join(&second, "lobby", "ann", Some((3, epoch.as_str()))).await;
    assert_eq!(ann.welcome.resumed, Some(true), "{:?}", ann.welcome);
    assert_eq!(ann.welcome.epoch, epoch);
    let missed = ann.rx.message().await;
    assert_eq!(
        (missed.seq, missed.text.as_str()),
        (4, "four, while ann was away")
    );
    // And a resume from before the restart's messages replays them.
    let early = join(&second, "lobby", "cat", Some((1, epoch.as_str()))).await;
    assert_eq!(early.welcome.resumed, Some(true));
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}

#[tokio::test]
async fn a_damaged_snapshot_starts_empty_with_a_warning() {
    let path = snapshot_file("damaged");
    let cfg = config(&path);
    let mut first = wsgrace().start(&cfg);
    let mut ann = join(&first, "lobby", "ann", None).await;
    let epoch = ann.welcome.epoch.clone();
    ann.tx.send("kept?").await;
    assert_eq!(ann.rx.message().await.seq, 1);
    drain(&mut first).await;
    let good = std::fs::read_to_string(&path).expect("a snapshot was written");

    for (what, text) in [
        ("truncated", good[..good.len() / 2].to_owned()),
        ("corrupted", good.replacen("kept?", "kept!", 1)),
        (
            "another version",
            good.replacen(
                "wsgrace-history-snapshot 1",
                "wsgrace-history-snapshot 9",
                1,
            ),
        ),
        ("not a snapshot", "\u{0}\u{1}binary garbage".to_owned()),
    ] {
        std::fs::write(&path, &text).expect("write");
        let server = wsgrace().start(&cfg);
        assert!(
            server
                .find_log_line("history snapshot not used, starting empty", WAIT)
                .await
                .is_some(),
            "{what}: {}",
            server.stderr()
        );
        let ann = join(&server, "lobby", "ann", Some((1, epoch.as_str()))).await;
        assert_eq!(ann.welcome.resumed, Some(false), "{what}");
        assert_ne!(ann.welcome.epoch, epoch, "{what}: a new epoch");
        assert_eq!(ann.welcome.seq, 0, "{what}");
        drop(ann);
        drop(server);
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}
