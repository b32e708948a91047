//! The `wsgrace` server binary: CLI, config, logger, run. A thin shell over the library;
//! anything it needs that the library does not expose is a gap in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsgrace::config::Config;
use wsgrace::service::auth::Verifier;

/// Chat-style WebSocket server that closes connections properly and drains on SIGTERM.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Listen address; overrides `server.bind`.
    #[arg(long)]
    bind: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // actix-http's WebSocket codec logs a peer's fragmented control frame at error level;
    // wsgrace logs that bad input itself, at warn, with the session. redis-rs's cluster
    // client warns once per attempt to reach a node that is down (dozens a second while a
    // shard fails over); the broker logs the change of state once itself.
    let filter = "info,actix_http::ws=off,redis::cluster_handling=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();
    let mut config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    if let Some(bind) = cli.bind {
        config.server.bind = bind;
        if let Err(err) = config.validate(&cli.config) {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    }
    // The key file is read now, so that an unusable one exits 2 like any config error.
    let verifier = match Verifier::from_config(&config.auth, &cli.config) {
        Ok(verifier) => verifier,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let result = actix_web::rt::System::new().block_on(wsgrace::service::server::serve_listening(
        config,
        verifier,
        |listening| {
            println!("listening on {}", listening.addr);
            if let Some(api) = listening.api {
                println!("api listening on {api}");
            }
        },
    ));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("server failed: {err}");
            ExitCode::FAILURE
        }
    }
}
