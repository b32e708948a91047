//! Starting the server under test for a scenario, through the kit's server process: the
//! user's config file (if any) with the scenario's keys laid over it, `server.workers` from
//! the command line, the server's stderr echoed only with `--server-log`. It must not
//! interpret the server's results; the scenarios do.

use std::path::PathBuf;
use std::time::Duration;

use wsgrace_kit::server::{Echo, ServerCommand, ServerProcess};

/// Where the server binary and the base config come from.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub binary: PathBuf,
    pub config: Option<PathBuf>,
    /// `server.workers`, if set on the command line.
    pub workers: Option<u32>,
    /// Echo the server's stderr to ours.
    pub echo_log: bool,
}

/// A config key the scenario needs: `(table, key, value)`.
pub type Override = (&'static str, &'static str, toml::Value);

/// How long a server may take to print `listening on`, and then to be ready.
const STARTUP: Duration = Duration::from_secs(10);

/// The user's config with `overrides` (and `--workers`) laid over it, as TOML text.
fn config_text(opts: &ServerOpts, overrides: &[Override]) -> Result<String, String> {
    let mut root = match &opts.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("parsing {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut all: Vec<Override> = overrides.to_vec();
    if let Some(workers) = opts.workers {
        all.push((
            "server",
            "workers",
            toml::Value::Integer(i64::from(workers)),
        ));
    }
    for (table, key, value) in all {
        let entry = root
            .entry(table)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => return Err(format!("config: `{table}` is not a table")),
        }
    }
    Ok(root.to_string())
}

/// Starts the server with the scenario's `overrides` and waits for its `listening on` line.
/// Its log level is the user's `RUST_LOG`, else the server's default.
pub fn start(opts: &ServerOpts, overrides: &[Override]) -> Result<ServerProcess, String> {
    let echo = if opts.echo_log {
        Echo::Prefixed("[server] ".into())
    } else {
        Echo::Off
    };
    ServerCommand::new(&opts.binary)
        .rust_log(None)
        .echo(echo)
        .startup(STARTUP)
        .spawn(&config_text(opts, overrides)?)
        .map_err(|e| e.to_string())
}

/// [`start`], then waits until `/readyz` answers 200: a node that serves upgrades (on
/// Redis, once it has reached Redis).
pub async fn start_ready(
    opts: &ServerOpts,
    overrides: &[Override],
) -> Result<ServerProcess, String> {
    let server = start(opts, overrides)?;
    server
        .wait_ready(STARTUP)
        .await
        .map_err(|e| e.to_string())?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_workers_are_laid_over_the_config() {
        let opts = ServerOpts {
            binary: "wsgrace".into(),
            config: None,
            workers: Some(3),
            echo_log: false,
        };
        let text = config_text(
            &opts,
            &[("session", "outbound_queue", toml::Value::Integer(64))],
        )
        .expect("a config");
        let table: toml::Table = text.parse().expect("TOML");
        assert_eq!(table["server"]["workers"].as_integer(), Some(3));
        assert_eq!(table["session"]["outbound_queue"].as_integer(), Some(64));
    }
}
