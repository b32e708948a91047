//! An app's backend that keeps the messages in its own database and publishes them through
//! the server API (`[api]`, see docs/api.md): the outbox pattern, in one small file.
//!
//! ```sh
//! # the server, with its API on a private listener
//! export WSGRACE_API_KEY=$(openssl rand -base64 32)
//! dir=$(mktemp -d)
//! printf '[api]\nbind = "127.0.0.1:8081"\n' > "$dir/api.toml"
//! cargo run --release -- --config "$dir/api.toml"
//! # the backend, in another terminal (same WSGRACE_API_KEY)
//! cargo run --release --example backend -- --api http://127.0.0.1:8081 --db "$dir/backend-messages.jsonl"
//! ```
//!
//! Then type commands on its stdin (a member can watch at http://127.0.0.1:8080/?room=lobby):
//!
//! - `say ROOM TEXT`: the message is first written to the backend's own store with an id of
//!   its making, then published with that id as its `idempotency_key`; a publish that fails or
//!   times out is retried with the same key, so the room gets it once. The answered seq and
//!   epoch are recorded in the store. Prints `published ROOM #SEQ id=ID`.
//! - `kick NAME [ROOM]`: every connection of NAME (only those in ROOM when given), on every
//!   node, is closed with 4001 "kicked", awaited; the clients do not reconnect after it.
//! - `history ROOM [SINCE]`: the room's kept messages after SINCE, page by page, printed as
//!   `ROOM #SEQ FROM: TEXT`.
//! - `who ROOM`: the names in the room, as `ROOM: NAME (N connections)`.
//! - `retry`: publishes again every stored message that has no seq yet. This also happens at
//!   start: a backend that crashed between its write and the API's answer sends the message
//!   again, and the server answers the first seq (`duplicate`) instead of publishing twice,
//!   as long as the restart comes within the server's `publish.dedupe_ms` (5 min by default).
//! - `quit` (or the end of stdin).
//!
//! The store (`--db`, else `BACKEND_DB`, else `backend-messages.jsonl`) is one JSON object a
//! line, one line per message: `id`, `room`, `from`, `text`, `created_ms`, and once
//! published `seq` and `epoch` (or `rejected` with the API's reason, when the API refused it
//! for good). It is rewritten whole on each change, to a temporary file renamed over the old
//! one, so a crash leaves the old file or the new one. The API is `--api` (else
//! `WSGRACE_API_URL`, else `http://127.0.0.1:8081`), as `http://IP:PORT` or `IP:PORT`; the
//! key comes from `WSGRACE_API_KEY` only (a command-line argument would show in `ps`). The
//! sender's name the messages carry is `--from` (default `backend`). The HTTP client is a
//! few lines over a `TcpStream` (plain HTTP/1.1, one request per connection), to keep the
//! example free of an HTTP client crate; a real backend would use its own.
//!
//! Exit status: 0 at `quit` or the end of stdin, 1 when it cannot start (no key, a store it
//! cannot read). A command that fails prints `error: ...` on stderr and the backend goes on.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use wsgrace::config::API_KEY_ENV;

/// An app backend that stores messages and publishes them through the wsgrace server API.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// The server API: `http://IP:PORT` or `IP:PORT` (else WSGRACE_API_URL, else
    /// http://127.0.0.1:8081).
    #[arg(long)]
    api: Option<String>,
    /// The backend's own store, a JSON-lines file (else BACKEND_DB, else
    /// backend-messages.jsonl).
    #[arg(long)]
    db: Option<PathBuf>,
    /// The sender's name the messages carry (1-64 characters of [A-Za-z0-9_.-]).
    #[arg(long, default_value = "backend")]
    from: String,
}

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per request: the first and the retries.
const ATTEMPTS: u32 = 6;
/// The wait before the first retry; doubled before each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The largest answer read (a history page of 100 messages of 64 KiB fits).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Messages per history page.
const HISTORY_PAGE: usize = 100;
/// The close code of a kick: 4000-4999, so the clients do not come back by themselves.
const KICK_CODE: u16 = 4001;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("backend: {err}");
            ExitCode::FAILURE
        }
    };
    // Stdin may still be read on a blocking thread that a plain shutdown would wait for.
    runtime.shutdown_background();
    code
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("set {API_KEY_ENV} to the server's API key (api.key)")]
    NoKey,
    #[error("--api: {0}")]
    BadApi(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading stdin: {0}")]
    Stdin(std::io::Error),
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let key = std::env::var(API_KEY_ENV)
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or(StartError::NoKey)?;
    let api_arg = cli
        .api
        .or_else(|| std::env::var("WSGRACE_API_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8081".to_owned());
    let api = ApiClient::new(&api_arg, key).map_err(StartError::BadApi)?;
    let db = cli
        .db
        .or_else(|| std::env::var_os("BACKEND_DB").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("backend-messages.jsonl"));
    let store = Store::open(&db)?;
    let mut backend = Backend {
        api,
        store,
        from: cli.from,
    };
    println!(
        "backend: api {}, db {} ({} stored, {} not yet published)",
        backend.api.authority,
        db.display(),
        backend.store.messages.len(),
        backend.store.unconfirmed().len()
    );
    // What a crash left unpublished goes out first, with its own key.
    backend.retry_unconfirmed().await;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(StartError::Stdin)? {
        match Command::parse(&line) {
            Ok(None) => {}
            Ok(Some(Command::Quit)) => break,
            Ok(Some(command)) => {
                if let Err(err) = backend.execute(command).await {
                    eprintln!("error: {err}");
                }
            }
            Err(usage) => eprintln!("error: {usage}"),
        }
    }
    Ok(())
}

/// A line of stdin.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Say { room: String, text: String },
    Kick { name: String, room: Option<String> },
    History { room: String, since: Option<u64> },
    Who { room: String },
    Retry,
    Help,
    Quit,
}

/// A line that is no command.
#[derive(Debug, PartialEq, Eq)]
struct Usage(String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; commands: say ROOM TEXT | kick NAME [ROOM] | history ROOM [SINCE] | who ROOM \
             | retry | help | quit",
            self.0
        )
    }
}

impl Command {
    /// The command on `line`; `None` for a blank line.
    fn parse(line: &str) -> Result<Option<Command>, Usage> {
        let line = line.trim();
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let mut words = rest.split_whitespace();
        let command = match verb {
            "" => return Ok(None),
            "say" => {
                let (room, text) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| Usage("say needs a room and a text".to_owned()))?;
                Command::Say {
                    room: room.to_owned(),
                    text: text.trim_start().to_owned(),
                }
            }
            "kick" => Command::Kick {
                name: words
                    .next()
                    .ok_or_else(|| Usage("kick needs a name".to_owned()))?
                    .to_owned(),
                room: words.next().map(str::to_owned),
            },
            "history" => Command::History {
                room: words
                    .next()
                    .ok_or_else(|| Usage("history needs a room".to_owned()))?
                    .to_owned(),
                since: words
                    .next()
                    .map(|since| {
                        since
                            .parse()
                            .map_err(|_| Usage(format!("SINCE must be a seq, got {since:?}")))
                    })
                    .transpose()?,
            },
            "who" => Command::Who {
                room: words
                    .next()
                    .ok_or_else(|| Usage("who needs a room".to_owned()))?
                    .to_owned(),
            },
            "retry" => Command::Retry,
            "help" => Command::Help,
            "quit" | "exit" => Command::Quit,
            other => return Err(Usage(format!("unknown command {other:?}"))),
        };
        Ok(Some(command))
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the API answered {what} without {field}: {answer}")]
    Answer {
        what: &'static str,
        field: &'static str,
        answer: Value,
    },
}

struct Backend {
    api: ApiClient,
    store: Store,
    from: String,
}

impl Backend {
    async fn execute(&mut self, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Say { room, text } => self.say(room, text).await,
            Command::Kick { name, room } => self.kick(&name, room.as_deref()).await,
            Command::History { room, since } => self.history(&room, since).await,
            Command::Who { room } => self.who(&room).await,
            Command::Retry => {
                self.retry_unconfirmed().await;
                Ok(())
            }
            Command::Help => {
                println!("{}", Usage("help".to_owned()));
                Ok(())
            }
            Command::Quit => Ok(()),
        }
    }

    /// Stores the message, then publishes it.
    async fn say(&mut self, room: String, text: String) -> Result<(), CommandError> {
        let message = StoredMessage {
            id: new_id(),
            room,
            from: self.from.clone(),
            text,
            created_ms: now_ms(),
            seq: None,
            epoch: None,
            rejected: None,
        };
        // The store first: what is not in it is never published.
        self.store.insert(message.clone())?;
        self.publish_stored(&message).await
    }

    /// Publishes every stored message that has no seq yet (nor was refused), oldest first.
    async fn retry_unconfirmed(&mut self) {
        for message in self.store.unconfirmed() {
            if let Err(err) = self.publish_stored(&message).await {
                eprintln!("error: {err}");
            }
        }
    }

    /// Publishes a stored message with its id as the idempotency key (retrying with the same
    /// key) and records the answer.
    async fn publish_stored(&mut self, message: &StoredMessage) -> Result<(), CommandError> {
        let body = json!({
            "room": message.room,
            "text": message.text,
            "from": message.from,
            "idempotency_key": message.id,
        });
        let answer = match self.api.call_retrying("POST", "/api/publish", &body).await {
            Ok(answer) => answer,
            Err(
                err @ ApiError::Status {
                    status: 400 | 413, ..
                },
            ) => {
                // The message itself is refused (a bad room, a text too long): sending it
                // again cannot help.
                self.store.reject(&message.id, &err.to_string())?;
                return Err(err.into());
            }
            Err(err) => {
                // The network, the server, the key: the message waits in the store.
                println!(
                    "not published yet: id={} (kept; `retry` or the next start sends it)",
                    message.id
                );
                return Err(err.into());
            }
        };
        let missing = |field| CommandError::Answer {
            what: "a publish",
            field,
            answer: answer.clone(),
        };
        let seq = answer["seq"].as_u64().ok_or_else(|| missing("seq"))?;
        let epoch = answer["epoch"].as_str().ok_or_else(|| missing("epoch"))?;
        self.store.confirm(&message.id, seq, epoch)?;
        let repeat = if answer["duplicate"] == true {
            " (duplicate: the server had it already, nothing sent again)"
        } else {
            ""
        };
        println!(
            "published {} #{seq} id={}{repeat}",
            message.room, message.id
        );
        Ok(())
    }

    async fn kick(&mut self, name: &str, room: Option<&str>) -> Result<(), CommandError> {
        let mut body = json!({
            "name": name,
            "code": KICK_CODE,
            "reason": "kicked",
            "mode": "awaited",
        });
        if let Some(room) = room {
            body["room"] = json!(room);
        }
        // Closing twice closes nothing more: a disconnect is safe to retry.
        self.api
            .call_retrying("POST", "/api/disconnect", &body)
            .await?;
        match room {
            Some(room) => println!("kicked {name} from {room}"),
            None => println!("kicked {name}"),
        }
        Ok(())
    }

    /// Prints the room's kept history after `since`, a page at a time.
    async fn history(&mut self, room: &str, since: Option<u64>) -> Result<(), CommandError> {
        let mut since = since;
        let mut shown = 0usize;
        loop {
            let mut path = format!("/api/rooms/{room}/history?limit={HISTORY_PAGE}");
            if let Some(since) = since {
                path.push_str(&format!("&since={since}"));
            }
            let page = self.api.call_retrying("GET", &path, &Value::Null).await?;
            let messages = page["messages"]
                .as_array()
                .ok_or_else(|| CommandError::Answer {
                    what: "a history page",
                    field: "messages",
                    answer: page.clone(),
                })?;
            for message in messages {
                println!(
                    "{room} #{} {}: {}",
                    message["seq"],
                    message["from"].as_str().unwrap_or("?"),
                    message["text"].as_str().unwrap_or_default()
                );
            }
            shown += messages.len();
            match messages.last().and_then(|last| last["seq"].as_u64()) {
                Some(last) if messages.len() == HISTORY_PAGE => since = Some(last),
                _ => {
                    println!(
                        "{room}: {shown} messages shown, latest #{} (epoch {})",
                        page["seq"],
                        page["epoch"].as_str().unwrap_or("?")
                    );
                    return Ok(());
                }
            }
        }
    }

    async fn who(&mut self, room: &str) -> Result<(), CommandError> {
        let path = format!("/api/rooms/{room}/presence");
        let answer = self.api.call_retrying("GET", &path, &Value::Null).await?;
        let members = answer["members"]
            .as_array()
            .ok_or_else(|| CommandError::Answer {
                what: "presence",
                field: "members",
                answer: answer.clone(),
            })?;
        if members.is_empty() {
            println!("{room}: nobody");
        }
        for member in members {
            let connections = member["connections"].as_u64().unwrap_or(0);
            println!(
                "{room}: {} ({connections} connection{})",
                member["name"].as_str().unwrap_or("?"),
                if connections == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }
}

/// A fresh message id: unique enough for a backend of one process, and a valid idempotency
/// key (1-64 of `[A-Za-z0-9_.-]`).
fn new_id() -> String {
    format!("m-{}-{:016x}", now_ms(), fastrand::u64(..))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------
// The store: the backend's own "database".

/// One message in the backend's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMessage {
    /// The backend's id, also the publish's `idempotency_key`.
    id: String,
    room: String,
    from: String,
    text: String,
    created_ms: u64,
    /// The seq the room gave it, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// The room's epoch at that seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    /// The API refused it for good (why); never sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejected: Option<String>,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}, line {line}: {source}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// The messages, in a JSON-lines file rewritten whole on each change.
struct Store {
    path: PathBuf,
    messages: Vec<StoredMessage>,
}

impl Store {
    /// Reads the store at `path` (none yet: empty).
    fn open(path: &Path) -> Result<Store, StoreError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut messages = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let message = serde_json::from_str(line).map_err(|source| StoreError::Corrupt {
                path: path.to_owned(),
                line: index + 1,
                source,
            })?;
            messages.push(message);
        }
        Ok(Store {
            path: path.to_owned(),
            messages,
        })
    }

    /// The messages with neither a seq nor a refusal, oldest first.
    fn unconfirmed(&self) -> Vec<StoredMessage> {
        self.messages
            .iter()
            .filter(|message| message.seq.is_none() && message.rejected.is_none())
            .cloned()
            .collect()
    }

    fn insert(&mut self, message: StoredMessage) -> Result<(), StoreError> {
        self.messages.push(message);
        let written = self.save();
        if written.is_err() {
            // Not stored, so not published: the two stay in step.
            self.messages.pop();
        }
        written
    }

    fn confirm(&mut self, id: &str, seq: u64, epoch: &str) -> Result<(), StoreError> {
        self.update(id, |message| {
            message.seq = Some(seq);
            message.epoch = Some(epoch.to_owned());
        })
    }

    fn reject(&mut self, id: &str, why: &str) -> Result<(), StoreError> {
        self.update(id, |message| message.rejected = Some(why.to_owned()))
    }

    fn update(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut StoredMessage),
    ) -> Result<(), StoreError> {
        if let Some(message) = self.messages.iter_mut().find(|message| message.id == id) {
            change(message);
        }
        self.save()
    }

    /// Writes every message to `PATH.tmp`, flushed to disk, and renames it over `PATH`.
    fn save(&self) -> Result<(), StoreError> {
        let mut temp = self.path.clone().into_os_string();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = String::new();
        for message in &self.messages {
            // A struct of strings and integers always serializes.
            text.push_str(&serde_json::to_string(message).unwrap_or_default());
            text.push('\n');
        }
        let mut file = fs::File::create(&temp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temp, &self.path).map_err(io)
    }
}

// ---------------------------------------------------------------------------------------
// The API client: HTTP/1.1 by hand, one request per connection.

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("cannot reach the API at {authority}: {source}")]
    Io {
        authority: String,
        source: std::io::Error,
    },
    #[error("no answer from the API within {0:?}")]
    TimedOut(Duration),
    #[error("the API's answer is not HTTP/JSON: {0}")]
    Malformed(String),
    #[error("the API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("gave up after {ATTEMPTS} tries: {last}")]
    GaveUp { last: Box<ApiError> },
}

impl ApiError {
    /// Whether the same request may succeed later: the network, a timeout, a server that
    /// is busy or cannot reach its broker (503). A 4xx is an answer to the request itself.
    fn is_retryable(&self) -> bool {
        match self {
            ApiError::Io { .. } | ApiError::TimedOut(_) | ApiError::Malformed(_) => true,
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            ApiError::GaveUp { .. } => true,
        }
    }
}

/// The server API of one node, with its key.
struct ApiClient {
    /// `host:port`.
    authority: String,
    key: String,
}

impl ApiClient {
    /// `api` is `http://HOST:PORT[/]` or `HOST:PORT`.
    fn new(api: &str, key: String) -> Result<ApiClient, String> {
        if api.starts_with("https://") {
            return Err(format!(
                "{api}: this small client speaks plain HTTP; keep the API on a private network"
            ));
        }
        let authority = api.strip_prefix("http://").unwrap_or(api);
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(format!("{api}: expected http://IP:PORT or IP:PORT"));
        }
        Ok(ApiClient {
            authority: authority.to_owned(),
            key,
        })
    }

    /// `call`, tried again after a retryable failure (with the same body: for a publish, the
    /// same idempotency key), waiting longer each time.
    async fn call_retrying(
        &self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.call(method, path, body).await {
                Ok(answer) => return Ok(answer),
                Err(err) if !err.is_retryable() => return Err(err),
                Err(err) if attempt == ATTEMPTS => {
                    return Err(ApiError::GaveUp {
                        last: Box::new(err),
                    })
                }
                Err(err) => {
                    eprintln!("{method} {path}: {err}; trying again in {backoff:?}");
                    sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// One request: `body` is sent as JSON unless it is `null`. A 200 answers its JSON body;
    /// any other status is an [`ApiError::Status`] with the API's `error`.
    async fn call(&self, method: &str, path: &str, body: &Value) -> Result<Value, ApiError> {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            self.authority, self.key
        );
        if method != "GET" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let io = |source| ApiError::Io {
            authority: self.authority.clone(),
            source,
        };
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority).await.map_err(io)?;
            stream.write_all(request.as_bytes()).await.map_err(io)?;
            let mut response = Vec::new();
            (&mut stream)
                .take(MAX_ANSWER_BYTES as u64 + 1)
                .read_to_end(&mut response)
                .await
                .map_err(io)?;
            Ok::<_, ApiError>(response)
        };
        let response = timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::TimedOut(REQUEST_TIMEOUT))??;
        if response.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::Malformed(format!(
                "an answer over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        let (status, body) = parse_response(&response)?;
        let json = serde_json::from_slice::<Value>(&body);
        match (status, json) {
            (200, Ok(json)) => Ok(json),
            (200, Err(err)) => Err(ApiError::Malformed(format!(
                "a body that is not JSON: {err}"
            ))),
            // The API's own errors are JSON; a proxy's may be a page of text.
            (status, json) => Err(ApiError::Status {
                status,
                message: match json {
                    Ok(json) => json["error"]
                        .as_str()
                        .unwrap_or("no error given")
                        .to_owned(),
                    Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
                },
            }),
        }
    }
}

/// The status and the body of an HTTP/1.1 response read to its end (`Content-Length` or
/// chunked).
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), ApiError> {
    let malformed = |what: &str| ApiError::Malformed(what.to_owned());
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| malformed("the connection closed before the end of the head"))?;
    let head = std::str::from_utf8(&response[..split])
        .map_err(|_| malformed("a head that is not UTF-8"))?;
    let rest = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| malformed("a bad status line"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| malformed("a bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        return dechunk(rest).map(|body| (status, body));
    }
    match length {
        Some(length) if rest.len() < length => Err(malformed("the body ended early")),
        Some(length) => Ok((status, rest[..length].to_vec())),
        None => Ok((status, rest.to_vec())),
    }
}

/// The body of a chunked transfer (as a proxy in front of the API may send it).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ApiError> {
    let malformed = |what: &str| ApiError::Malformed(what.to_owned());
    let mut body = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| malformed("a chunk size line without its end"))?;
        let size_line = std::str::from_utf8(&rest[..end])
            .map_err(|_| malformed("a chunk size that is not UTF-8"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| malformed("a bad chunk size"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err(malformed("a chunk that ended early"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            Command::parse("say lobby hello  there"),
            Ok(Some(Command::Say {
                room: "lobby".into(),
                text: "hello  there".into()
            }))
        );
        assert_eq!(
            Command::parse("kick ann ops"),
            Ok(Some(Command::Kick {
                name: "ann".into(),
                room: Some("ops".into())
            }))
        );
        assert_eq!(Command::parse("   "), Ok(None));
        assert!(Command::parse("say lobby").is_err());
        assert!(Command::parse("history lobby x").is_err());
    }

    #[test]
    fn responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).ok(), Some((200, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).ok(),
            Some((503, br#"{"a":1}"#.to_vec()))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}").is_err());
    }
}
