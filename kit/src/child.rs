//! [`ChildProcess`]: a process the kit started, and how it is stopped whole: the process and
//! every process it started (nginx's workers, chromedriver's Chromium), never the master
//! alone with its workers left listening. Every kit handle owns one, so that dropping the
//! handle stops it.
//!
//! The children stay in the caller's process group, so that a Ctrl-C in the terminal reaches
//! them as it reaches the test; the descendants are found in /proc when the child is stopped.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::proc_stats::{descendants_of, is_running};
use crate::KitError;

/// How long the processes a child started may take to go once it is gone.
const DESCENDANTS_DEADLINE: Duration = Duration::from_secs(5);

/// How a child is stopped when its handle drops (or [`ChildProcess::stop`] is called).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL to the child and every descendant at once: nothing in them is worth keeping.
    Kill,
    /// SIGTERM to the child, which stops its own workers; after `grace`, SIGKILL to whatever
    /// is left.
    Term { grace: Duration },
}

/// A signal the kit sends, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Hup,
    Int,
    Quit,
    /// Stops the process (it cannot catch this): a frozen server.
    Stop,
    /// Lets a stopped process go on.
    Cont,
}

impl Signal {
    fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Sends `signal` to process `pid`; whether it was delivered (false once the process is
/// gone).
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory preconditions; a stale pid is answered with ESRCH.
    unsafe { libc::kill(pid, signal.number()) == 0 }
}

/// A running (or exited, not yet dropped) child process.
pub struct ChildProcess {
    child: Child,
    program: String,
    stop: Stop,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command`. A program that is not installed is [`KitError::Missing`] naming
    /// `install` (the command that installs it), if given.
    pub fn spawn(
        command: &mut Command,
        stop: Stop,
        install: Option<&'static str>,
    ) -> Result<ChildProcess, KitError> {
        let program = command.get_program().to_owned();
        let child = command
            .spawn()
            .map_err(|source| spawn_error(&program, source, install))?;
        Ok(ChildProcess {
            child,
            program: name_of(&program),
            stop,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The standard streams the command was given as pipes, for the owner to read.
    pub fn std_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `signal` to the child alone (not to its descendants).
    pub fn signal(&self, signal: Signal) -> bool {
        self.status.is_none() && send_signal(self.pid(), signal)
    }

    /// The exit status, if the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `deadline` for the child to exit (polling, so that a runtime's other
    /// tasks go on); `None` if it still runs then.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            // Short, so that a measured exit time (loadgen's drain) is off by 2 ms at most.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// [`wait_exit`](Self::wait_exit), blocking the thread.
    pub fn wait_exit_blocking(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the child whole, as its [`Stop`] says, and waits until it and every process it
    /// started are gone. Returns the child's exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(self.stop)
    }

    /// SIGKILL to the child and every process it started; waits until they are gone.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.stop_with(Stop::Kill)
    }

    fn stop_with(&mut self, stop: Stop) -> Option<ExitStatus> {
        // Found while the child runs: once it is gone, its orphans belong to init.
        let descendants = if self.try_wait().is_none() {
            descendants_of(self.pid())
        } else {
            Vec::new()
        };
        match stop {
            Stop::Kill => {
                self.signal(Signal::Kill);
                for pid in &descendants {
                    send_signal(*pid, Signal::Kill);
                }
            }
            Stop::Term { grace } => {
                self.signal(Signal::Term);
                if self.wait_exit_blocking(grace).is_none() {
                    eprintln!(
                        "{} (pid {}) still ran {grace:?} after SIGTERM: SIGKILL",
                        self.program,
                        self.pid()
                    );
                    self.signal(Signal::Kill);
                }
            }
        }
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        let start = Instant::now();
        loop {
            let left: Vec<u32> = descendants
                .iter()
                .copied()
                .filter(|pid| is_running(*pid))
                .collect();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > DESCENDANTS_DEADLINE {
                eprintln!(
                    "processes {left:?} started by {} outlived it by {DESCENDANTS_DEADLINE:?}: \
                     SIGKILL",
                    self.program
                );
                for pid in &left {
                    send_signal(*pid, Signal::Kill);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `command` to its end with its stdout and stderr captured, as [`Command::output`]
/// does, but for at most `deadline`: a program that hangs (a `redis-cli` on a frozen server)
/// is killed then and answered as [`KitError::Timeout`]. A program that is not installed is
/// [`KitError::Missing`] naming `install`, if given.
pub fn output_within(
    command: &mut Command,
    deadline: Duration,
    install: Option<&'static str>,
) -> Result<Output, KitError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = command.get_program().to_owned();
    let what = format!(
        "{} {:?}",
        name_of(&program),
        command.get_args().collect::<Vec<_>>()
    );
    let child = command
        .spawn()
        .map_err(|source| spawn_error(&program, source, install))?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The thread owns the child until it is reaped, so the pid signalled below is still its.
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(deadline) {
        Ok(output) => output.map_err(|err| KitError::io(format!("run {what}"), err)),
        Err(_) => {
            send_signal(pid, Signal::Kill);
            let stderr = done_rx
                .recv_timeout(DESCENDANTS_DEADLINE)
                .ok()
                .and_then(Result::ok)
                .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
                .unwrap_or_default();
            Err(KitError::Timeout {
                what: format!("{what} to finish"),
                deadline,
                stderr,
            })
        }
    }
}

/// Why `program` did not start: [`KitError::Missing`] naming `install` when it is not
/// installed and `install` is given, [`KitError::Spawn`] otherwise.
fn spawn_error(program: &OsStr, source: std::io::Error, install: Option<&'static str>) -> KitError {
    match install {
        Some(install) if source.kind() == ErrorKind::NotFound => KitError::Missing {
            program: program.to_string_lossy().into_owned(),
            install,
        },
        _ => KitError::Spawn {
            program: program.into(),
            source,
        },
    }
}

fn name_of(program: &OsStr) -> String {
    std::path::Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}
