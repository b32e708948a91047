//! [`KitError`]: why the kit could not start or reach something. Tests turn it into a panic
//! with this text (a missing program names its install command); the bench reports it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a kit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The program is not installed: the message names the command that installs it.
    #[error(
        "\n\n*** {program} is missing. Install it with:\n***     {install}\n\
         *** (scripts/test.sh does this on a fresh machine)\n"
    )]
    Missing {
        program: String,
        install: &'static str,
    },
    /// Starting the program failed for another reason.
    #[error("starting {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// The program exited while the kit waited for it to come up.
    #[error("{what} exited at start ({status}){}", tail(stderr))]
    ExitedAtStart {
        what: String,
        status: ExitStatus,
        stderr: String,
    },
    /// Something did not happen within its deadline.
    #[error("{what} within {deadline:?}{}", tail(stderr))]
    Timeout {
        what: String,
        deadline: Duration,
        stderr: String,
    },
    /// The program answered something the kit does not understand.
    #[error("{0}")]
    Unexpected(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// `; its stderr:` and the last lines of `stderr`, or nothing when it is empty.
fn tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let last = &lines[lines.len().saturating_sub(20)..];
    format!("; its stderr ends:\n{}", last.join("\n"))
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> KitError {
        KitError::Io {
            what: what.into(),
            source,
        }
    }
}
