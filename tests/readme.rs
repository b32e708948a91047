//! The README and the docs pages, as a newcomer copies from them.
//!
//! - The README opens with the two commands (`cargo run --release`, then `scripts/test.sh`,
//!   the command `.ci/run` runs) and the page's URL, and stays a two-minute read.
//! - Every shell block of `README.md` and `docs/*.md` (fenced `sh`, `bash`, `shell` or
//!   `console`): each `cargo run` / `cargo build` line names `--release`, and no command
//!   writes a file into the checkout (a redirect, `tee`, `--db`, `-o` to a relative path);
//!   temporary files go under `$(mktemp -d)` or `/tmp`.
//! - The blocks whose first line is `# test: runs offline` are run by bash, in the checkout,
//!   with `cargo run --release -- ARGS` standing for the test build of the server
//!   (`CARGO_BIN_EXE_wsgrace ARGS`, on a free port): it must come up (`listening on`), drain
//!   on SIGTERM and exit 0, and a `history.snapshot_path` its config names must be written.
//! - Every relative link of those pages points to a file that exists, and every `#anchor` to a
//!   heading of its page; every `docs/*.md` page is linked from the README.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The marker, as the first line of a shell block, of a block this test runs.
const RUNS_OFFLINE: &str = "# test: runs offline";

/// Pages whose shell blocks still write into the checkout, waiting for a fix. A page leaves
/// this list as soon as it is clean (the test says so).
const WRITES_INTO_CHECKOUT_KNOWN: &[&str] = &[];

/// The README is read in two minutes.
const README_MAX_WORDS: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, as paths relative to the root.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| {
            entry
                .expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn read(page: &str) -> String {
    std::fs::read_to_string(root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    /// The content, with the fence's indentation removed.
    lines: Vec<String>,
}

impl Block {
    fn is_shell(&self) -> bool {
        matches!(self.info.as_str(), "sh" | "bash" | "shell" | "console")
    }

    fn runs_offline(&self) -> bool {
        self.lines.first().map(|l| l.trim()) == Some(RUNS_OFFLINE)
    }
}

/// The fenced code blocks of a Markdown text (``` fences, indented ones too).
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, Block)> = None; // (indent, fence length, block)
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if trimmed.starts_with("```") {
                    let fence = trimmed.chars().take_while(|&c| c == '`').count();
                    let info = trimmed[fence..].split_whitespace().next().unwrap_or("");
                    open = Some((
                        indent,
                        fence,
                        Block {
                            line: i + 1,
                            info: info.to_string(),
                            lines: Vec::new(),
                        },
                    ));
                }
            }
            Some((fence_indent, fence, block)) => {
                let closing = trimmed.starts_with("```")
                    && trimmed.chars().take_while(|&c| c == '`').count() >= *fence
                    && trimmed.trim_matches('`').trim().is_empty();
                if closing {
                    out.push(open.take().expect("open block").2);
                } else {
                    let cut = indent.min(*fence_indent);
                    block.lines.push(line[cut..].to_string());
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    out
}

/// Text with everything after an unquoted `#` that starts a word removed.
fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for c in line.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => break,
            _ => {}
        }
        out.push(c);
        prev = c;
    }
    out.trim_end().to_string()
}

/// The commands of a shell block: continuation lines joined, comments removed. In a block
/// that shows a session (`$ ` prompts), only the prompted lines are commands.
fn commands(block: &Block) -> Vec<String> {
    let transcript = block.lines.iter().any(|l| l.starts_with("$ "));
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in &block.lines {
        let line = if let Some(cont) = current.take() {
            cont + " " + line.trim()
        } else if transcript {
            match line.strip_prefix("$ ") {
                Some(command) => command.to_string(),
                None => continue,
            }
        } else {
            line.clone()
        };
        if let Some(head) = line.strip_suffix('\\') {
            current = Some(head.trim_end().to_string());
            continue;
        }
        let command = strip_comment(&line);
        if !command.trim().is_empty() {
            out.push(command.trim().to_string());
        }
    }
    if let Some(rest) = current {
        out.push(strip_comment(&rest));
    }
    out
}

/// The words of a command, quotes kept (what matters here is where a word starts).
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut single, mut double) = (false, false);
    for c in command.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            c if c.is_whitespace() && !single && !double => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// A path a command may write to: absolute, a file descriptor, or from a variable (a
/// `$(mktemp -d)` the block made).
fn outside_checkout(target: &str) -> bool {
    let target = target.trim_start_matches('"').trim_start_matches('\'');
    target.starts_with('/') || target.starts_with('$') || target.starts_with('&')
}

/// The files a command writes that are in the checkout (relative paths), by redirects,
/// `tee` and the output options the docs' tools take.
fn writes_into_checkout(command: &str) -> Vec<String> {
    let words = words(command);
    let mut bad = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str).unwrap_or("");
        let quoted = word.starts_with('\'') || word.starts_with('"');
        if quoted {
            continue;
        }
        // Redirects: `> f`, `>> f`, `2> f`, `&> f`, `>f`.
        let redirect = word.trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
        if let Some(rest) = redirect.strip_prefix('>') {
            let rest = rest.strip_prefix('>').unwrap_or(rest);
            let target = if rest.is_empty() { next } else { rest };
            if !outside_checkout(target) {
                bad.push(format!("{word} {target}"));
            }
            continue;
        }
        let writer = matches!(word.as_str(), "tee" | "--db" | "-o" | "--output");
        if writer && !next.is_empty() && !next.starts_with('-') && !outside_checkout(next) {
            bad.push(format!("{word} {next}"));
        }
    }
    bad
}

#[test]
fn cargo_commands_are_release_and_nothing_is_written_into_the_checkout() {
    let mut problems = Vec::new();
    let mut still_known = Vec::new();
    let mut shell_blocks = 0;
    for page in pages() {
        let mut writes_here = Vec::new();
        for block in blocks(&read(&page)).iter().filter(|b| b.is_shell()) {
            shell_blocks += 1;
            for command in commands(block) {
                let w = words(&command);
                let cargo_runs = w
                    .windows(2)
                    .any(|p| p[0] == "cargo" && (p[1] == "run" || p[1] == "build"));
                if cargo_runs && !w.iter().any(|x| x == "--release") {
                    problems.push(format!(
                        "{page}:{}: `cargo run` / `cargo build` without --release (a silent debug build): {command}",
                        block.line
                    ));
                }
                for write in writes_into_checkout(&command) {
                    writes_here.push(format!(
                        "{page}:{}: writes into the checkout ({write}); use a file under $(mktemp -d) or /tmp: {command}",
                        block.line
                    ));
                }
            }
        }
        // Commands in the text too: `cargo run ...` code spans (the examples table, ...).
        for (line, span) in code_spans(&read(&page)) {
            let w = words(&span);
            let cargo_runs = w
                .windows(2)
                .any(|p| p[0] == "cargo" && (p[1] == "run" || p[1] == "build"));
            if cargo_runs && !w.iter().any(|x| x == "--release") {
                problems.push(format!(
                    "{page}:{line}: `cargo run` / `cargo build` without --release (a silent debug build): {span}"
                ));
            }
            for write in writes_into_checkout(&span) {
                writes_here.push(format!(
                    "{page}:{line}: writes into the checkout ({write}); use a file under $(mktemp -d) or /tmp: {span}"
                ));
            }
        }
        if WRITES_INTO_CHECKOUT_KNOWN.contains(&page.as_str()) {
            if writes_here.is_empty() {
                problems.push(format!(
                    "{page} no longer writes into the checkout: remove it from WRITES_INTO_CHECKOUT_KNOWN"
                ));
            } else {
                still_known.extend(writes_here);
            }
        } else {
            problems.extend(writes_here);
        }
    }
    assert!(shell_blocks > 10, "found only {shell_blocks} shell blocks");
    for known in &still_known {
        eprintln!("known, not yet fixed: {known}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let w = writes_into_checkout;
    assert_eq!(w("printf 'x' > cluster.toml"), vec!["> cluster.toml"]);
    assert_eq!(w("echo x >>log.txt"), vec![">>log.txt log.txt"]);
    assert!(w("printf '[a]\\nb = 1\\n' > \"$dir/config.toml\"").is_empty());
    assert!(w("echo x > /tmp/x 2>&1").is_empty());
    assert!(w(&strip_comment("echo 'a > b' # > c")).is_empty());
    assert_eq!(
        w("backend --db messages.jsonl"),
        vec!["--db messages.jsonl"]
    );
    assert!(w("backend --db \"$dir/messages.jsonl\"").is_empty());
    assert_eq!(
        strip_comment("cargo run --release   # the server"),
        "cargo run --release"
    );
    assert_eq!(
        strip_comment("echo '# not a comment'"),
        "echo '# not a comment'"
    );
    let block = Block {
        line: 1,
        info: "sh".into(),
        lines: vec![
            "$ curl -s \\".into(),
            "    -d '{}' $API".into(),
            "{\"out\": \"> put\"}".into(),
        ],
    };
    assert_eq!(commands(&block), vec!["curl -s -d '{}' $API"]);
    assert_eq!(
        slug("Shutdown (SIGTERM, SIGINT or SIGHUP)"),
        "shutdown-sigterm-sigint-or-sighup"
    );
    assert_eq!(
        slug("The browser client (`/wsgrace.js`) and the page"),
        "the-browser-client-wsgracejs-and-the-page"
    );
}

#[test]
fn the_readme_starts_with_the_two_commands_and_the_url() {
    let readme = read("README.md");
    let first_screen: String = readme
        .split("\n## ")
        .next()
        .expect("text before the first section")
        .to_string();
    let first = blocks(&readme)
        .into_iter()
        .find(|b| b.is_shell())
        .expect("a shell block in README.md");
    assert!(
        first_screen.contains(&first.lines.join("\n")),
        "the two commands are not on the README's first screen"
    );
    assert_eq!(
        commands(&first),
        vec!["cargo run --release", "scripts/test.sh"],
        "README.md's first block: the server, then every test"
    );
    assert!(
        first_screen.contains("open http://127.0.0.1:8080/?room=lobby&name=ann"),
        "the first screen names the page to open"
    );
    // The test command is the one CI runs, and the server command serves that URL.
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/test.sh"),
        ".ci/run no longer runs scripts/test.sh"
    );
    assert!(root().join("scripts/test.sh").exists());
    let config: toml::Value = read("config.toml").parse().expect("config.toml");
    assert_eq!(config["server"]["bind"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(
        config["broker"]["kind"].as_str(),
        Some("local"),
        "no Redis needed"
    );
    let prose: String = readme.split("```").step_by(2).collect::<Vec<_>>().join(" ");
    let count = prose.split_whitespace().count();
    assert!(
        count <= README_MAX_WORDS,
        "README.md has {count} words of prose: a two-minute read is at most {README_MAX_WORDS}; move the rest to docs/"
    );
}

/// The inline code spans of a page that hold a `cargo` command, outside code blocks.
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for (n, part) in line.split('`').enumerate() {
            // `cargo run` alone names the command; with arguments it is one to copy.
            if n % 2 == 1 && part.contains("cargo ") && part.split_whitespace().count() > 2 {
                out.push((i + 1, part.replace("\\|", "|")));
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (outside code blocks), with GitHub's -1, -2 for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = slug(heading);
                let mut anchor = base.clone();
                let mut n = 0;
                while out.contains(&anchor) {
                    n += 1;
                    anchor = format!("{base}-{n}");
                }
                out.insert(anchor);
            }
        }
    }
    out
}

/// The link targets of a page: `[text](target)` outside code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans become `x`, so that a link whose text is code is still found.
        let mut plain = String::new();
        let mut parts = line.split('`');
        let mut code = false;
        for part in parts.by_ref() {
            plain.push_str(if code { "x" } else { part });
            code = !code;
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            match after.find(')') {
                Some(end) => {
                    let target = after[..end].trim();
                    if !target.is_empty() && !target.contains(' ') {
                        out.push((i + 1, target.to_string()));
                    }
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = Path::new(&page)
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                PathBuf::from(&page)
            } else {
                normalize(&dir.join(path))
            };
            if file.starts_with("..") || !root().join(&file).exists() {
                problems.push(format!(
                    "{page}:{line}: {target}: no such file ({})",
                    file.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if file.extension().is_some_and(|e| e == "md") {
                    let there = std::fs::read_to_string(root().join(&file)).expect("page");
                    if !anchors(&there).contains(anchor) {
                        problems.push(format!(
                            "{page}:{line}: {target}: no heading #{anchor} in {}",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 50, "found only {checked} relative links");
    // Every docs page is reachable from the README.
    let readme_links: BTreeSet<String> = links(&read("README.md"))
        .into_iter()
        .map(|(_, t)| t.split('#').next().unwrap_or("").to_string())
        .collect();
    for page in pages().iter().filter(|p| p.starts_with("docs/")) {
        if !readme_links.contains(page) {
            problems.push(format!("README.md does not link {page}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `docs/../src/x` → `src/x`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Stands in for `cargo run [--release] [-q] -- ARGS`: the test build of the server with
/// ARGS on a free port; once it listens, SIGTERM; its exit status is the command's. Every
/// `--config` file it was given is listed in $SHIM_DIR/configs.
const CARGO_SHIM: &str = r#"
cargo() {
    if [ "${1:-}" != run ]; then
        echo "tests/readme.rs stands in for 'cargo run' only, not: cargo $*" >&2
        return 97
    fi
    shift
    local args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --release|-q|--quiet) shift ;;
            --) shift; args=("$@"); break ;;
            *) echo "tests/readme.rs cannot stand in for: cargo run $1 (only the server)" >&2; return 97 ;;
        esac
    done
    local run=() i=0
    while [ $i -lt ${#args[@]} ]; do
        case "${args[$i]}" in
            --bind) i=$((i + 2)); continue ;;
            --config) echo "${args[$((i + 1))]}" >> "$SHIM_DIR/configs" ;;
        esac
        run+=("${args[$i]}")
        i=$((i + 1))
    done
    : > "$SHIM_DIR/out"
    "$WSGRACE_BIN" "${run[@]}" --bind 127.0.0.1:0 > "$SHIM_DIR/out" 2> "$SHIM_DIR/err" &
    local pid=$! n=0
    until grep -q '^listening on ' "$SHIM_DIR/out"; do
        if ! kill -0 "$pid" 2>/dev/null || [ $n -ge 400 ]; then
            kill -KILL "$pid" 2>/dev/null || true
            echo "the server did not listen; its stderr:" >&2
            cat "$SHIM_DIR/err" >&2
            return 98
        fi
        n=$((n + 1))
        sleep 0.05
    done
    echo run >> "$SHIM_DIR/runs"
    kill -TERM "$pid"
    wait "$pid"
}
set -euo pipefail
"#;

#[test]
fn the_offline_blocks_run() {
    let bin = env!("CARGO_BIN_EXE_wsgrace");
    let mut ran = 0;
    for page in pages() {
        for block in blocks(&read(&page))
            .iter()
            .filter(|b| b.is_shell() && b.runs_offline())
        {
            let shim_dir =
                std::env::temp_dir().join(format!("wsgrace-readme-{}-{}", std::process::id(), ran));
            std::fs::create_dir_all(&shim_dir).expect("temp dir");
            let script = format!("{CARGO_SHIM}\n{}\n", block.lines.join("\n"));
            let mut child = Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(root())
                .env("WSGRACE_BIN", bin)
                .env("SHIM_DIR", &shim_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("bash");
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{page}:{}: the block did not end within 60 s", block.line);
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let output = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                status.success(),
                "{page}:{}: the block failed ({status}):\n{}\n{stderr}",
                block.line,
                block.lines.join("\n")
            );
            let runs = std::fs::read_to_string(shim_dir.join("runs")).unwrap_or_default();
            assert!(
                runs.lines().count() > 0,
                "{page}:{}: the block started no server",
                block.line
            );
            // A snapshot file the config names is written by the drain.
            let configs = std::fs::read_to_string(shim_dir.join("configs")).unwrap_or_default();
            for config in configs.lines() {
                let path = if Path::new(config).is_absolute() {
                    PathBuf::from(config)
                } else {
                    root().join(config)
                };
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{page}:{}: {config}: {e}", block.line));
                let value: toml::Value = text.parse().expect("the block's config is TOML");
                let snapshot = value
                    .get("history")
                    .and_then(|h| h.get("snapshot_path"))
                    .and_then(|p| p.as_str())
                    .unwrap_or("");
                if !snapshot.is_empty() {
                    assert!(
                        Path::new(snapshot).exists(),
                        "{page}:{}: the drain did not write {snapshot}",
                        block.line
                    );
                    if let Some(dir) = Path::new(snapshot).parent() {
                        if dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&shim_dir);
            ran += 1;
        }
    }
    assert!(ran >= 1, "no block is marked `{RUNS_OFFLINE}`");
}
