//! Authentication against the real binary (SPEC: Authentication): every bad token is refused
//! before the upgrade with its status and counted, those the JWT RFCs call invalid (`crit`, an
//! `exp` / `nbf` that is not a NumericDate, an `nbf` past `u64`) included, with their reason
//! logged, and a token's `alg` reaches the log escaped; the name is the token's `sub`, from
//! `?token=` or `Authorization: Bearer`; RS256, ES256 and EdDSA keys (made with the openssl
//! CLI) accept only their own algorithm; at `exp` + leeway a session closes 3000 "token
//! expired" in its close mode, and both clients (`wsgrace::client` and `/wsgrace.js` in
//! headless Chromium) take a fresh token from their hook and resume with every seq once; no
//! token reaches the log; config errors exit 2 naming the key; without `[auth]` nothing
//! changes. Every wait has a deadline.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::wsgrace;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wsgrace::client::{Backoff, Client, ClientConfig, ClientEvent};
use wsgrace_kit::browser::start_browser;
use wsgrace_kit::http::{http_get, metric, UPGRADE};
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::temp::temp_file;
use wsgrace_kit::ws::Ws;
use wsgrace_kit::DEADLINE;

const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";
const OPENSSL: &str = "/usr/bin/openssl";
const UNAUTHORIZED: &str = "wsgrace_upgrades_refused_total{reason=\"unauthorized\"}";
const FORBIDDEN: &str = "wsgrace_upgrades_refused_total{reason=\"forbidden\"}";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).expect("sign a token")
}

/// Claims for `sub` in `rooms`, expiring `ttl` seconds from now.
fn claims(sub: &str, rooms: &[&str], ttl: i64) -> Value {
    json!({"sub": sub, "rooms": rooms, "exp": now() as i64 + ttl})
}

/// base64url of JSON: a `&Value`, or a raw JSON text (`&str`).
fn b64(json: &(impl std::fmt::Display + ?Sized)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

/// A token of the raw JSON texts `header` and `claims`, signed with the test secret: for what
/// `Header` has no field for (`crit`, an `alg` that is not an algorithm) and what `json!`
/// cannot hold (a number past `u64`).
fn hs256_raw(header: &str, claims: &str) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign a token");
    format!("{message}.{signature}")
}

fn hs256_config(extra: &str) -> String {
    format!("[auth]\njwt_secret = \"{SECRET}\"\n{extra}")
}

/// Starts the binary with `config` at log level debug (every line is searched for tokens).
fn start(config: &str) -> ServerProcess {
    wsgrace().env("RUST_LOG", "debug").start(config)
}

/// The HTTP status of an upgrade to `path` with `extra` headers.
async fn upgrade_status(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> u16 {
    let mut headers = UPGRADE.to_vec();
    headers.extend_from_slice(extra);
    http_get(addr, path, &headers).await
}

/// A tungstenite client joined at `/ws{query}`, with `bearer` as `Authorization: Bearer`;
/// returns it with its welcome.
async fn join(addr: SocketAddr, query: &str, bearer: Option<&str>) -> (Ws, Value) {
    let mut request = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .expect("a request");
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    let (mut ws, _) = timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("upgrade");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame as JSON (presence events ignored).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = timeout(DEADLINE, ws.next())
            .await
            .expect("no frame before the deadline")
            .expect("the stream ended")
            .expect("a WebSocket error");
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            if !wsgrace_kit::chat::is_presence_event(&frame) {
                return frame;
            }
        }
    }
}

/// Asserts that no line the server logged holds a token or a token's signature part.
fn assert_no_token_logged(server: &ServerProcess, tokens: &[String]) {
    let log = server.stderr();
    assert!(
        log.contains("DEBUG"),
        "the server did not log at debug level"
    );
    for token in tokens {
        let signature = token.rsplit('.').next().unwrap_or_default();
        for secret in [token.as_str(), signature] {
            if secret.len() < 8 {
                continue;
            }
            let line = log.lines().find(|line| line.contains(secret));
            assert!(line.is_none(), "a token in the log: {line:?}");
        }
    }
    assert!(!log.contains(SECRET), "the secret in the log");
}

/// Waits until the sample reaches `want`.
async fn metric_reaches(addr: SocketAddr, sample: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = metric(addr, sample).await;
        if value == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} is {value}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade_with_their_status_and_metric() {
    let server = start(&hs256_config(
        "issuer = \"id.example\"\naudience = \"chat\"\n",
    ));
    let t = now() as i64;
    let good = json!({"sub": "ann", "rooms": ["lobby", "team.*"], "exp": t + 60,
                      "iss": "id.example", "aud": "chat"});
    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        hs256(&claims)
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().expect("an object").remove(key);
        hs256(&claims)
    };
    let good_token = hs256(&good);
    let mut parts = good_token.split('.');
    let (header, payload) = (
        parts.next().expect("header"),
        parts.next().expect("payload"),
    );
    let other_secret = EncodingKey::from_secret(b"another secret, also 32 bytes long!");

    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("malformed", Some("not-a-jwt".to_owned()), 401),
        ("malformed parts", Some(format!("{header}.{payload}")), 401),
        (
            "bad signature",
            Some(format!("{header}.{payload}.{}", b64(&json!("forged")))),
            401,
        ),
        (
            "other secret",
            Some(sign(Algorithm::HS256, &good, &other_secret)),
            401,
        ),
        ("expired", Some(with("exp", json!(t - 30))), 401),
        (
            "alg none",
            Some(format!(
                "{}.{payload}.",
                b64(&json!({"alg": "none", "typ": "JWT"}))
            )),
            401,
        ),
        (
            "wrong algorithm",
            Some(sign(
                Algorithm::HS384,
                &good,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )),
            401,
        ),
        ("wrong iss", Some(with("iss", json!("evil.example"))), 401),
        ("wrong aud", Some(with("aud", json!("other"))), 401),
        ("missing exp", Some(without("exp")), 401),
        ("missing sub", Some(without("sub")), 401),
        ("sub not a name", Some(with("sub", json!("ann smith"))), 401),
        ("not yet valid", Some(with("nbf", json!(t + 60))), 401),
        ("room not granted", Some(with("rooms", json!(["ops"]))), 403),
        (
            "prefix does not grant the bare name",
            Some(with("rooms", json!(["lobby.*"]))),
            403,
        ),
    ];
    let mut tokens = vec![good_token.clone()];
    for (what, token, status) in &cases {
        let (unauthorized, forbidden) = (
            metric(server.addr, UNAUTHORIZED).await,
            metric(server.addr, FORBIDDEN).await,
        );
        let path = match token {
            Some(token) => format!("/ws?room=lobby&token={token}"),
            None => "/ws?room=lobby".to_owned(),
        };
        assert_eq!(
            upgrade_status(server.addr, &path, &[]).await,
            *status,
            "{what}"
        );
        let (more_unauthorized, more_forbidden) = if *status == 401 {
            (1.0, 0.0)
        } else {
            (0.0, 1.0)
        };
        assert_eq!(
            metric(server.addr, UNAUTHORIZED).await,
            unauthorized + more_unauthorized,
            "{what}"
        );
        assert_eq!(
            metric(server.addr, FORBIDDEN).await,
            forbidden + more_forbidden,
            "{what}"
        );
        tokens.extend(token.clone());
    }
    // The same refusals through the header.
    let expired = with("exp", json!(t - 30));
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        upgrade_status(server.addr, "/ws?room=lobby", &[("Authorization", &bearer)]).await,
        401
    );
    let bearer = format!("Bearer {good_token}");
    assert_eq!(
        upgrade_status(server.addr, "/ws?room=ops", &[("Authorization", &bearer)]).await,
        403
    );
    // A bad room name is still a 400, checked before the token.
    assert_eq!(
        upgrade_status(server.addr, "/ws?room=a%20b", &[]).await,
        400
    );
    // And the good token passes, for a granted room and a prefix grant.
    let path = format!("/ws?room=team.red&token={good_token}");
    assert_eq!(upgrade_status(server.addr, &path, &[]).await, 101);

    // A warn line per refusal naming the reason, the same line at most once per 10 s (the
    // header's expired token repeats the query's line); the bad room was refused last.
    let log = server.wait_for_log("upgrade refused: bad room").await;
    let mut lines: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            l.split_once("upgrade refused: unauthorized")
                .map(|(_, l)| l)
        })
        .collect();
    let logged = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(logged, lines.len(), "a line repeated: {log}");
    // Some cases share a reason (two malformed tokens, two bad signatures, two subs).
    assert!(logged >= 10, "{log}");
    assert!(
        log.contains("upgrade refused: unauthorized (token expired)"),
        "{log}"
    );
    assert!(
        log.contains("upgrade refused: unauthorized (wrong algorithm none"),
        "{log}"
    );
    assert!(
        log.contains("upgrade refused: forbidden (room not granted by the token) for room \"ops\""),
        "{log}"
    );
    assert_no_token_logged(&server, &tokens);
}

/// Issue 19: what RFC 7515 / 7519 call invalid is refused with 401 and its reason logged: a
/// `crit` header (the server knows no extension), an `exp` / `nbf` that is not a NumericDate,
/// an `nbf` too large for an integer (a valid NumericDate, far ahead). An `exp` that large is
/// a far future and joins.
#[tokio::test]
async fn tokens_the_jwt_rfcs_call_invalid_are_refused() {
    let server = start(&hs256_config(""));
    let t = now();
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = |times: &str| format!(r#"{{"sub":"ann","rooms":["*"],{times}}}"#);
    let exp = format!(r#""exp":{}"#, t + 60);
    let crit = |crit: &str| {
        hs256_raw(
            &format!(r#"{{"alg":"HS256","typ":"JWT","crit":{crit}}}"#),
            &claims(&exp),
        )
    };
    let nbf = |nbf: &str| hs256_raw(header, &claims(&format!(r#"{exp},"nbf":{nbf}"#)));
    let exp_is = |exp: &str| hs256_raw(header, &claims(&format!(r#""exp":{exp}"#)));
    let crit_reason = "critical header extensions (crit) are not supported";
    // What, the token, the reason the warn line gives.
    let cases = [
        ("crit naming an extension", crit(r#"["x"]"#), crit_reason),
        ("crit empty", crit("[]"), crit_reason),
        ("crit not a list", crit(r#""x""#), crit_reason),
        (
            "nbf a string",
            nbf(r#""string""#),
            "nbf is not a NumericDate",
        ),
        ("nbf a bool", nbf("true"), "nbf is not a NumericDate"),
        ("nbf null", nbf("null"), "nbf is not a NumericDate"),
        // jsonwebtoken cannot read such claims at all.
        ("nbf a list", nbf("[1]"), "malformed token"),
        ("nbf 1e300", nbf("1e300"), "token not valid yet"),
        (
            "nbf 2^64",
            nbf("18446744073709551616"),
            "token not valid yet",
        ),
        (
            "exp a string",
            exp_is(r#""string""#),
            "exp is not a NumericDate",
        ),
        ("exp a bool", exp_is("true"), "exp is not a NumericDate"),
        ("exp null", exp_is("null"), "exp is not a NumericDate"),
    ];
    // Each in its own room, so that its warn line is told from the others'.
    let mut wrong = Vec::new();
    for (i, (what, token, _)) in cases.iter().enumerate() {
        let path = format!("/ws?room=r{i}&token={token}");
        let status = upgrade_status(server.addr, &path, &[]).await;
        if status != 401 {
            wrong.push(format!("{what}: HTTP {status}"));
        }
    }
    // stderr is one ordered stream: once this last refusal is logged, all the others are.
    assert_eq!(upgrade_status(server.addr, "/ws?room=end", &[]).await, 401);
    let log = server
        .wait_for_log("upgrade refused: unauthorized (no token) for room \"end\"")
        .await;
    for (i, (what, _, reason)) in cases.iter().enumerate() {
        let line = format!("upgrade refused: unauthorized ({reason}) for room \"r{i}\"");
        if !log.contains(&line) {
            wrong.push(format!("{what}: no log line {line:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}\n{log}", wrong.join("\n"));
    assert_eq!(
        metric(server.addr, UNAUTHORIZED).await,
        cases.len() as f64 + 1.0
    );

    // An `exp` past u64 is a far future: the session joins (its expiry timer does not
    // overflow) and works.
    let far = exp_is("1e300");
    let (mut ws, welcome) = join(server.addr, &format!("?room=far&token={far}"), None).await;
    assert_eq!(welcome["name"], "ann", "{welcome}");
    ws.send(Message::Text("still here".into()))
        .await
        .expect("send");
    let message = next_json(&mut ws).await;
    assert_eq!(message["text"], "still here", "{message}");
    let mut tokens: Vec<String> = cases.into_iter().map(|case| case.1).collect();
    tokens.push(far);
    assert_no_token_logged(&server, &tokens);
}

/// Issue 19: a token's `alg` is a peer's text; it reaches the warn line escaped, so a newline
/// in it cannot forge a log line.
#[tokio::test]
async fn a_tokens_alg_reaches_the_log_escaped() {
    let server = start(&hs256_config(""));
    let claims = claims("ann", &["lobby"], 60).to_string();
    let token = hs256_raw(r#"{"alg":"HS256\nFORGED line","typ":"JWT"}"#, &claims);
    let path = format!("/ws?room=lobby&token={token}");
    assert_eq!(upgrade_status(server.addr, &path, &[]).await, 401);
    let log = server
        .wait_for_log("upgrade refused: unauthorized (wrong algorithm HS256")
        .await;
    // The text after the newline is on no line of its own (env_logger indents the lines
    // that follow a newline in a message): only inside the warn record, after its header.
    let forged = log.lines().find(|line| {
        line.trim_start().starts_with("FORGED")
            || (line.contains("FORGED") && !line.starts_with('['))
    });
    assert!(forged.is_none(), "a forged log line: {forged:?}\n{log}");
    // At most 16 characters of the token's `alg`, the newline shown as `\n`.
    assert!(
        log.contains(r#"(wrong algorithm HS256\nFORGED lin, expected HS256) for room "lobby""#),
        "{log}"
    );
    assert!(!log.contains(&token), "the token in the log");
}

#[tokio::test]
async fn the_name_is_the_tokens_sub_from_either_carrier() {
    let server = start(&hs256_config(""));
    let ann = hs256(&claims("ann", &["lobby"], 60));
    let bob = hs256(&claims("bob", &["*"], 60));

    // ?token=, with a `name` in the query that is ignored.
    let (mut a, welcome) = join(
        server.addr,
        &format!("?room=lobby&name=mallory&token={ann}"),
        None,
    )
    .await;
    assert_eq!(welcome["name"], "ann", "{welcome}");
    // Authorization: Bearer.
    let (mut b, welcome) = join(server.addr, "?room=lobby&name=mallory", Some(&bob)).await;
    assert_eq!(welcome["name"], "bob", "{welcome}");

    b.send(Message::Text("hi from bob".into()))
        .await
        .expect("send");
    for ws in [&mut a, &mut b] {
        let message = next_json(ws).await;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["from"], "bob", "{message}");
        assert_eq!(message["text"], "hi from bob", "{message}");
    }
    assert_no_token_logged(&server, &[ann, bob]);
}

/// openssl-made key pairs: (private PEM, public PEM path).
fn key_pair(algorithm: &str) -> (Vec<u8>, PathBuf) {
    let args: &[&str] = match algorithm {
        "RS256" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ES256" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "ed25519"],
    };
    openssl_key_pair(algorithm, args)
}

/// A key pair `openssl genpkey` makes with `args`: (private PEM, public PEM path).
fn openssl_key_pair(name: &str, args: &[&str]) -> (Vec<u8>, PathBuf) {
    assert!(
        std::path::Path::new(OPENSSL).exists(),
        "tests/auth.rs needs {OPENSSL}: apt-get install -y openssl"
    );
    let private = temp_file(&format!("{name}-private.pem"), "");
    let public = temp_file(&format!("{name}-public.pem"), "");
    let run = |command: &mut Command| {
        let output = command.output().expect("run openssl");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new(OPENSSL)
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private));
    run(Command::new(OPENSSL)
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    (
        std::fs::read(&private).expect("read the private key"),
        public,
    )
}

#[tokio::test]
async fn public_keys_accept_only_their_own_algorithm() {
    for (alg, algorithm) in [
        ("RS256", Algorithm::RS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
    ] {
        let (private, public) = key_pair(alg);
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&private),
            _ => EncodingKey::from_ed_pem(&private),
        }
        .expect("a private key");
        let server = start(&format!(
            "[auth]\njwt_public_key_file = \"{}\"\n",
            public.display()
        ));
        let claims = claims("kim", &["*"], 60);
        let good = sign(algorithm, &claims, &key);
        let (_ws, welcome) = join(server.addr, &format!("?room=keys&token={good}"), None).await;
        assert_eq!(welcome["name"], "kim", "{alg}: {welcome}");

        // HS256 "signed" with the public key's bytes (the classic confusion), and with the
        // secret of the server's neighbour: refused, never tried as HMAC.
        let public_pem = std::fs::read(&public).expect("read the public key");
        let confused = sign(
            Algorithm::HS256,
            &claims,
            &EncodingKey::from_secret(&public_pem),
        );
        let hmac = hs256(&claims);
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg": "none"})),
            good.split('.').nth(1).expect("payload")
        );
        for token in [&confused, &hmac, &unsigned] {
            let path = format!("/ws?room=keys&token={token}");
            assert_eq!(upgrade_status(server.addr, &path, &[]).await, 401, "{alg}");
        }
        assert_eq!(metric(server.addr, UNAUTHORIZED).await, 3.0, "{alg}");
        let log = server.stderr();
        assert!(
            log.contains(&format!("wrong algorithm HS256, expected {alg}")),
            "{log}"
        );
        assert_no_token_logged(&server, &[good, confused, hmac]);
    }
}

/// Reads raw frames until the close frame; returns its code and reason.
async fn await_close(client: &mut wsgrace_kit::raw::RawClient) -> (Option<u16>, String) {
    let close = client.expect_close().await;
    (close.close_code(), close.close_reason())
}

#[tokio::test]
async fn at_exp_the_session_closes_3000_in_its_close_mode() {
    // Awaited by default, fire-and-forget in room `ff` (the room override applies).
    let server = start(&hs256_config(
        "[close]\nmode = \"awaited\"\ntimeout_ms = 2000\n[close.room_modes]\nff = \"fire_and_forget\"\n",
    ));
    let t = now() as i64;
    // exp = now + 1: the session closes at exp + 5 s of leeway, 5-6 s from now.
    let short = |sub: &str| hs256(&json!({"sub": sub, "rooms": ["*"], "exp": t + 1}));
    let (awaited_token, ff_token) = (short("aw"), short("ff"));
    let mut awaited = server
        .join_raw(&format!("?room=aw&token={awaited_token}"), None)
        .await;
    let mut ff = server
        .join_raw(&format!("?room=ff&token={ff_token}"), None)
        .await;
    // A session that ends before its token does: its timer must not fire.
    let early = hs256(&json!({"sub": "early", "rooms": ["*"], "exp": t}));
    let mut leaver = server
        .join_raw(&format!("?room=aw&token={early}"), None)
        .await;
    leaver.send_close(Some(1000), "bye").await;
    assert_eq!(leaver.expect_close().await.close_code(), Some(1000));

    let started = std::time::Instant::now();
    let ((aw_code, aw_reason), (ff_code, ff_reason)) =
        tokio::join!(await_close(&mut awaited), await_close(&mut ff));
    let waited = started.elapsed();
    assert_eq!((aw_code, aw_reason.as_str()), (Some(3000), "token expired"));
    assert_eq!((ff_code, ff_reason.as_str()), (Some(3000), "token expired"));
    assert!(
        waited >= Duration::from_secs(3),
        "closed after {waited:?}: before exp + leeway"
    );

    // Fire-and-forget: the receive side stays open until the ack, a message sent meanwhile
    // is still handled. Awaited: such a message is dropped. Both end on the ack.
    ff.send_text("after the close frame").await;
    ff.send_close(Some(3000), "").await;
    ff.expect_eof().await;
    awaited.send_text("after the close frame").await;
    awaited.send_close(Some(3000), "").await;
    awaited.expect_eof().await;
    metric_reaches(
        server.addr,
        "wsgrace_closes_total{initiator=\"server\",mode=\"awaited\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    metric_reaches(
        server.addr,
        "wsgrace_closes_total{initiator=\"server\",mode=\"fire_and_forget\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    metric_reaches(
        server.addr,
        "wsgrace_messages_dropped_total{reason=\"after_close\"}",
        1.0,
    )
    .await;

    let log = server.stderr();
    let expiries = log
        .lines()
        .filter(|l| l.contains("token expired: closing 3000"))
        .count();
    assert_eq!(expiries, 2, "only the two open sessions expire: {log}");
    assert_no_token_logged(&server, &[awaited_token, ff_token, early]);
}

#[tokio::test]
async fn the_rust_client_takes_a_fresh_token_on_3000_and_resumes_every_seq_once() {
    let server = start(&hs256_config(""));
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let mut config = ClientConfig::new(format!("ws://{}/ws", server.addr));
    config.room = Some("live".to_owned());
    config.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    config.token = Some(hs256(&claims("reader", &["live"], 1)));
    let calls = hook_calls.clone();
    config.token_hook = Some(Box::new(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        // Short-lived again: each session lives 5-6 s.
        let token = hs256(&claims("reader", &["live"], 1));
        Box::pin(async move { Ok(token) })
    }));
    let mut reader = Client::connect(config).expect("a usable config");

    // The writer sends every 30 ms, with a long-lived token, all along.
    let writer_token = hs256(&claims("writer", &["live"], 600));
    let (mut writer, _) = join(
        server.addr,
        &format!("?room=live&token={writer_token}"),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seqs = Vec::new();
    let mut expiries = 0;
    let mut welcomes = Vec::new();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(30));
    // Until the reader has come back from one expiry and seen 20 more messages after it.
    let mut stop_at = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "expiries {expiries}, welcomes {welcomes:?}, seqs {seqs:?}"
        );
        tokio::select! {
            _ = tick.tick(), if !matches!(stop_at, Some(stop) if sent >= stop) => {
                sent += 1;
                writer.send(Message::Text(format!("m{sent}"))).await.expect("send");
            }
            frame = writer.next() => {
                frame.expect("writer stream").expect("writer frame");
            }
            event = reader.next_event() => match event.expect("the reader stopped") {
                ClientEvent::Message { seq, from, .. } => {
                    assert_eq!(from, "writer");
                    seqs.push(seq);
                    if stop_at.is_some_and(|stop| seq == stop) {
                        break;
                    }
                }
                ClientEvent::Closed { code, reason, .. } => {
                    assert_eq!((code, reason.as_str()), (3000, "token expired"));
                    expiries += 1;
                }
                ClientEvent::Welcome(welcome) => {
                    assert_eq!(welcome.name, "reader");
                    welcomes.push(welcome);
                    if welcomes.len() == 2 {
                        stop_at = Some(sent + 20);
                    }
                }
                _ => {}
            },
        }
    }
    assert_eq!(expiries, 1);
    assert!(hook_calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(welcomes[1].resumed, Some(true), "{welcomes:?}");
    // Every seq once, in order, none skipped, across the expiry.
    let first = seqs[0];
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected);
    assert_eq!(*seqs.last().expect("messages"), stop_at.expect("stopped"));
    reader.close(1000, "").await.expect("close");
}

#[tokio::test]
async fn the_browser_module_takes_a_fresh_token_on_3000_and_resumes_every_seq_once() {
    let server = start(&hs256_config(""));
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("http://{}/", server.addr))
        .await
        .expect("open the page");
    // getToken() asks the test through window.wantToken and waits for window.tokens.
    let script = r#"
        const [room, done] = arguments;
        window.tokens = []; window.wantToken = 0; window.seqs = []; window.closes = [];
        window.welcomes = [];
        import("/wsgrace.js").then(({ connect }) => {
          const getToken = async () => {
            window.wantToken += 1;
            while (window.tokens.length === 0) await new Promise((r) => setTimeout(r, 20));
            return window.tokens.shift();
          };
          const client = connect({ room, getToken, backoff: { baseMs: 50, capMs: 500 } });
          client.addEventListener("message", (e) => window.seqs.push(e.detail.seq));
          client.addEventListener("close", (e) => window.closes.push([e.detail.code, e.detail.reason]));
          client.addEventListener("welcome", (e) => window.welcomes.push(e.detail));
          window.authClient = client;
          done(true);
        }, (err) => done(String(err)));
    "#;
    let loaded = browser
        .execute_async(script, vec![json!("web")])
        .await
        .expect("run the script");
    assert_eq!(loaded, json!(true));

    let writer_token = hs256(&claims("writer", &["web"], 600));
    let (mut writer, _) = join(
        server.addr,
        &format!("?room=web&token={writer_token}"),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut handed = 0;
    let mut sent = 0u64;
    let mut stop_at: Option<u64> = None;
    let state = loop {
        assert!(Instant::now() < deadline, "timed out; sent {sent}");
        // Hand over a fresh short-lived token whenever the module asks for one.
        let state = browser
            .execute(
                "return {want: window.wantToken, seqs: window.seqs, closes: window.closes, \
                 welcomes: window.welcomes};",
                vec![],
            )
            .await
            .expect("read the page");
        let want = state["want"].as_u64().unwrap_or(0);
        while handed < want {
            let token = hs256(&claims("browser", &["web"], 1));
            browser
                .execute("window.tokens.push(arguments[0]);", vec![json!(token)])
                .await
                .expect("hand a token over");
            handed += 1;
        }
        let welcomes = state["welcomes"].as_array().map_or(0, Vec::len);
        if welcomes >= 2 && stop_at.is_none() {
            stop_at = Some(sent + 10);
        }
        let last = state["seqs"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(Value::as_u64);
        if stop_at.is_some() && last == stop_at {
            break state;
        }
        if welcomes >= 1 && !matches!(stop_at, Some(stop) if sent >= stop) {
            sent += 1;
            writer
                .send(Message::Text(format!("m{sent}")))
                .await
                .expect("send");
        }
        // Drain the writer's own copies.
        while let Ok(Some(frame)) = timeout(Duration::from_millis(1), writer.next()).await {
            frame.expect("writer frame");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    let closes = state["closes"].as_array().expect("closes");
    assert_eq!(
        closes.first(),
        Some(&json!([3000, "token expired"])),
        "{state}"
    );
    let welcomes = state["welcomes"].as_array().expect("welcomes");
    assert_eq!(welcomes[0]["name"], "browser", "{state}");
    assert_eq!(welcomes[1]["resumed"], true, "{state}");
    let seqs: Vec<u64> = state["seqs"]
        .as_array()
        .expect("seqs")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let expected: Vec<u64> = (1..=sent).collect();
    assert_eq!(seqs, expected, "each seq once, in order, across the expiry");
    assert!(handed >= 2, "a fresh token for the reconnect");
    browser.close().await.expect("end the WebDriver session");
}

#[tokio::test]
async fn config_errors_exit_2_naming_the_key_and_never_the_secret() {
    let not_pem = temp_file("not-a-key.pem", "hello\n");
    let (private, _) = key_pair("ES256");
    let private_path = temp_file("private.pem", &String::from_utf8_lossy(&private));
    // Short enough that ring would refuse every signature made with it.
    let (_, rsa_1024) = openssl_key_pair(
        "RSA-1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let short = "only-31-bytes-of-secret-0123456";
    for (config, env, key) in [
        (
            format!("[auth]\njwt_secret = \"{short}\"\n"),
            vec![],
            "auth.jwt_secret",
        ),
        (
            String::new(),
            vec![("WSGRACE_JWT_SECRET", short)],
            "auth.jwt_secret",
        ),
        (
            format!(
                "[auth]\njwt_secret = \"{SECRET}\"\njwt_public_key_file = \"{}\"\n",
                not_pem.display()
            ),
            vec![],
            "auth.jwt_secret",
        ),
        (
            "[auth]\njwt_public_key_file = \"/nonexistent/wsgrace/key.pem\"\n".to_owned(),
            vec![],
            "auth.jwt_public_key_file",
        ),
        (
            format!("[auth]\njwt_public_key_file = \"{}\"\n", not_pem.display()),
            vec![],
            "auth.jwt_public_key_file",
        ),
        (
            format!(
                "[auth]\njwt_public_key_file = \"{}\"\n",
                private_path.display()
            ),
            vec![],
            "auth.jwt_public_key_file",
        ),
        (
            format!("[auth]\njwt_public_key_file = \"{}\"\n", rsa_1024.display()),
            vec![],
            "auth.jwt_public_key_file",
        ),
        (
            "[auth]\naudience = \"chat\"\n".to_owned(),
            vec![],
            "auth.audience",
        ),
    ] {
        let exit = wsgrace().envs(&env).run_to_exit(&config);
        assert_eq!(
            exit.status.code(),
            Some(2),
            "{config} {env:?}: {}",
            exit.stderr
        );
        assert!(
            exit.stderr.contains(&format!(": {key}: ")),
            "{key}: {}",
            exit.stderr
        );
        assert_eq!(exit.stderr.trim().lines().count(), 1, "{}", exit.stderr);
        assert!(
            !exit.stderr.contains(short) && !exit.stderr.contains(SECRET),
            "{}",
            exit.stderr
        );
        assert!(exit.stdout.is_empty(), "{}", exit.stdout);
    }

    // The environment's secret turns authentication on.
    let server = wsgrace().env("WSGRACE_JWT_SECRET", SECRET).start("");
    assert_eq!(
        upgrade_status(server.addr, "/ws?room=lobby&name=x", &[]).await,
        401
    );
    let token = hs256(&claims("env", &["lobby"], 60));
    let (_ws, welcome) = join(server.addr, &format!("?room=lobby&token={token}"), None).await;
    assert_eq!(welcome["name"], "env");
}

#[tokio::test]
async fn without_auth_everything_works_as_before() {
    let server = start("");
    let (_a, welcome) = join(server.addr, "?room=lobby&name=ann", None).await;
    assert_eq!(welcome["name"], "ann");
    // A token is not looked at.
    let (_b, welcome) = join(
        server.addr,
        "?room=secret&name=bob&token=garbage",
        Some("x"),
    )
    .await;
    assert_eq!(welcome["name"], "bob");
    let (_c, welcome) = join(server.addr, "", None).await;
    assert!(
        welcome["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("guest-")),
        "{welcome}"
    );
    assert_eq!(metric(server.addr, UNAUTHORIZED).await, 0.0);
    assert!(!server.stderr().contains("token expired"));
}

/// `target/<profile>/examples/mint_token`, built by `cargo test` with the other targets.
fn mint_token(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wsgrace"));
    let path = bin
        .parent()
        .expect("target dir")
        .join("examples")
        .join("mint_token");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples`",
        path.display()
    );
    Command::new(path)
        .args(args)
        .env_remove("WSGRACE_JWT_SECRET")
        .envs(env.iter().copied())
        .output()
        .expect("run mint_token")
}

#[tokio::test]
async fn the_mint_token_example_makes_tokens_the_server_accepts() {
    let server = start(&hs256_config(""));
    let args = ["--sub", "ann", "--rooms", "lobby,team.*", "--ttl", "60"];
    let with_flag = mint_token(&[&args[..], &["--secret", SECRET]].concat(), &[]);
    let with_env = mint_token(&args, &[("WSGRACE_JWT_SECRET", SECRET)]);
    for output in [with_flag, with_env] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("UTF-8");
        assert_eq!(stdout.lines().count(), 1, "the token alone: {stdout:?}");
        let token = stdout.trim();
        let (_ws, welcome) =
            join(server.addr, &format!("?room=team.red&token={token}"), None).await;
        assert_eq!(welcome["name"], "ann");
        let path = format!("/ws?room=ops&token={token}");
        assert_eq!(upgrade_status(server.addr, &path, &[]).await, 403);
    }
    let output = mint_token(&args, &[]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());

    let (private, public) = key_pair("EdDSA");
    let private = temp_file("mint-private.pem", &String::from_utf8_lossy(&private));
    let server = start(&format!(
        "[auth]\njwt_public_key_file = \"{}\"\n",
        public.display()
    ));
    let private = private.display().to_string();
    let output = mint_token(
        &[
            &args[..],
            &["--private-key-file", &private, "--alg", "EdDSA"],
        ]
        .concat(),
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).expect("UTF-8");
    let (_ws, welcome) = join(
        server.addr,
        &format!("?room=lobby&token={}", token.trim()),
        None,
    )
    .await;
    assert_eq!(welcome["name"], "ann");
}

#[tokio::test]
async fn a_plain_get_tells_what_the_upgrade_would_get_without_counting_it() {
    // A browser cannot read the status of a refused WebSocket; its client asks with a plain
    // GET of the same URL (SPEC "HTTP endpoints"). The answer is the upgrade's refusal, or 426
    // when the upgrade would be accepted; a v2 client names its protocol in
    // X-Wsgrace-Protocol (a fetch cannot send Sec-WebSocket-Protocol), so that its token is
    // not judged against the v1 default room. Probes are not refusals of an upgrade: not
    // counted, not logged.
    let server = start(&hs256_config(""));
    let addr = server.addr;
    let good = hs256(&claims("ann", &["team.*"], 600));
    let expired = hs256(&claims("ann", &["*"], -600));
    let get = |path: String, headers: &'static [(&'static str, &'static str)]| async move {
        wsgrace_kit::http::http_get(addr, &path, headers).await
    };
    let v2: &[(&str, &str)] = &[("X-Wsgrace-Protocol", "wsgrace.v2")];
    assert_eq!(get(format!("/ws?room=team.a&token={good}"), &[]).await, 426);
    assert_eq!(get(format!("/ws?room=lobby&token={good}"), &[]).await, 403);
    assert_eq!(get(format!("/ws?token={good}"), v2).await, 426);
    assert_eq!(get(format!("/ws?token={expired}"), v2).await, 401);
    assert_eq!(get("/ws?room=team.a".to_owned(), &[]).await, 401);
    assert_eq!(get(format!("/ws?room=a%20b&token={good}"), &[]).await, 400);
    assert_eq!(metric(addr, UNAUTHORIZED).await, 0.0);
    assert_eq!(metric(addr, FORBIDDEN).await, 0.0);
    // The upgrade itself is counted and logged; stderr is one ordered stream, so once its
    // line is there, a line of any probe before it would be too.
    assert_eq!(
        upgrade_status(addr, &format!("/ws?room=lobby&token={good}"), &[]).await,
        403
    );
    assert_eq!(metric(addr, FORBIDDEN).await, 1.0);
    let log = server.wait_for_log("upgrade refused: forbidden").await;
    let lines = log
        .lines()
        .filter(|l| l.contains("upgrade refused"))
        .count();
    assert_eq!(lines, 1, "{log}");
}

#[tokio::test]
async fn a_client_retrying_a_refused_upgrade_is_counted_every_time_and_logged_once() {
    // A page retrying with an expired token must not fill the log: the same line is logged
    // at most once per 10 s, while the metric counts every refusal.
    let server = start(&hs256_config(""));
    let addr = server.addr;
    let expired = hs256(&claims("ann", &["*"], -600));
    let path = format!("/ws?room=lobby&token={expired}");
    for _ in 0..5 {
        assert_eq!(upgrade_status(addr, &path, &[]).await, 401);
    }
    assert_eq!(metric(addr, UNAUTHORIZED).await, 5.0);
    // Another refusal still gets its line at once; after it, every line before it is out.
    assert_eq!(upgrade_status(addr, "/ws?room=marker", &[]).await, 401);
    let log = server
        .wait_for_log("upgrade refused: unauthorized (no token) for room \"marker\"")
        .await;
    let expired_lines = log
        .lines()
        .filter(|l| l.contains("upgrade refused: unauthorized (token expired)"))
        .count();
    assert_eq!(expired_lines, 1, "{log}");
}

#[tokio::test]
async fn a_v2_join_is_checked_against_the_tokens_rooms() {
    // SPEC, many rooms: the token's grants apply per join; a room it does not grant is a
    // `forbidden` error for that join, and the connection stays for the rooms it does.
    let server = start(&hs256_config(""));
    let token = hs256(&claims("ann", &["team.*", "lobby"], 600));
    let url = format!("ws://{}/ws?token={token}", server.addr);
    let mut ann = wsgrace_kit::chat_v2::V2Client::connect(&url).await;
    assert_eq!(ann.hello["name"], "ann", "{}", ann.hello);
    ann.join("lobby", json!({})).await;
    ann.sender.join("ops", json!({"ref": "r1"})).await;
    let refused = ann.reader.next_of("error", Some("ops")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["ref"], "r1", "{refused}");
    let joined = ann.join("team.red", json!({})).await;
    assert_eq!(joined["room"], "team.red");
    let seq = ann.say("team.red", "still here").await;
    assert!(seq >= 1);
    assert_no_token_logged(&server, &[token]);
}
