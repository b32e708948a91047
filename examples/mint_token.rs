//! Mints a token that a wsgrace server with authentication on accepts: for trying it out,
//! for scripts, and as the shape of what an application's login endpoint issues.
//!
//! ```sh
//! export WSGRACE_JWT_SECRET=$(openssl rand -base64 32)    # the server's auth.jwt_secret too
//! cargo run --release --example mint_token -- --sub ann --rooms 'lobby,team.*' --ttl 3600
//! cargo run --release --example mint_token -- --sub ann --rooms '*' --private-key-file key.pem --alg ES256
//! ```
//!
//! Claims: `sub` (the name others see), `rooms` (`"*"`, exact names, `"prefix.*"`), `iat`,
//! `exp` = now + `--ttl` seconds, and `iss` / `aud` when given. The secret comes from
//! `--secret` or `WSGRACE_JWT_SECRET` (HS256), or a PEM private key from
//! `--private-key-file` with `--alg RS256|ES256|EdDSA` (the server holds the public key).
//! Prints the token alone on stdout; errors go to stderr with exit status 1. Use the token
//! as `?token=` (`/?room=lobby&token=...` opens the chat page with it) or as
//! `Authorization: Bearer`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use wsgrace::config::JWT_SECRET_ENV;

/// Mints a wsgrace token (JWT) and prints it.
#[derive(Debug, Parser)]
#[command(
    name = "mint_token",
    about = "Mints a token (JWT) a wsgrace server with authentication on accepts, and prints it alone on stdout",
    long_about = "Mints a token (JWT) a wsgrace server with authentication on accepts, and prints it alone on stdout.\n\nClaims: sub (the name others see), rooms (*, exact names, prefix.*), iat, exp = now + --ttl, and iss / aud when given. Signed HS256 with --secret or WSGRACE_JWT_SECRET (the server's auth.jwt_secret), or RS256/ES256/EdDSA with --private-key-file and --alg (the server holds the public key). Use it as ?token= (http://127.0.0.1:8080/?room=lobby&token=...) or as Authorization: Bearer.",
    after_help = "Example: WSGRACE_JWT_SECRET=$(openssl rand -base64 32) mint_token --sub ann --rooms 'lobby,team.*' --ttl 3600"
)]
struct Cli {
    /// The subject: the session's name (1-64 characters of [A-Za-z0-9_.-]).
    #[arg(long)]
    sub: String,
    /// Rooms granted, comma-separated: `*`, names, `prefix.*`.
    #[arg(long, default_value = "*")]
    rooms: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// HS256 secret (else WSGRACE_JWT_SECRET).
    #[arg(long, conflicts_with = "private_key_file")]
    secret: Option<String>,
    /// PEM private key for RS256, ES256 or EdDSA (with --alg).
    #[arg(long, requires = "alg")]
    private_key_file: Option<PathBuf>,
    /// The algorithm of --private-key-file.
    #[arg(long, value_enum)]
    alg: Option<KeyAlgorithm>,
    /// `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    audience: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

fn main() -> ExitCode {
    match mint(&Cli::parse()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("mint_token: {err}");
            ExitCode::FAILURE
        }
    }
}

fn mint(cli: &Cli) -> Result<String, String> {
    let (algorithm, key) = match (&cli.private_key_file, cli.alg) {
        (Some(path), Some(alg)) => {
            let pem = std::fs::read(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let (algorithm, key) = match alg {
                KeyAlgorithm::Rs256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
                KeyAlgorithm::Es256 => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
                KeyAlgorithm::EdDsa => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
            };
            let key = key.map_err(|err| {
                format!(
                    "{} is not a {algorithm:?} private key: {err}",
                    path.display()
                )
            })?;
            (algorithm, key)
        }
        (Some(_), None) => return Err("--private-key-file needs --alg".to_owned()),
        (None, _) => {
            let secret = cli
                .secret
                .clone()
                .or_else(|| std::env::var(JWT_SECRET_ENV).ok())
                .filter(|secret| !secret.is_empty())
                .ok_or_else(|| {
                    format!("give --secret, set {JWT_SECRET_ENV}, or --private-key-file")
                })?;
            (
                Algorithm::HS256,
                EncodingKey::from_secret(secret.as_bytes()),
            )
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| format!("the clock is before 1970: {err}"))?
        .as_secs();
    let rooms: Vec<&str> = cli
        .rooms
        .split(',')
        .map(str::trim)
        .filter(|room| !room.is_empty())
        .collect();
    let mut claims = json!({
        "sub": cli.sub,
        "rooms": rooms,
        "iat": now,
        "exp": now.saturating_add(cli.ttl),
    });
    if let Some(issuer) = &cli.issuer {
        claims["iss"] = json!(issuer);
    }
    if let Some(audience) = &cli.audience {
        claims["aud"] = json!(audience);
    }
    encode(&Header::new(algorithm), &claims, &key).map_err(|err| format!("signing failed: {err}"))
}
