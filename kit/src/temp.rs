//! Files and directories of this process in the temp dir, named so that two test binaries
//! (or two runs of loadgen) never share one: `wsgrace-PID-N-NAME`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh path in the temp dir ending in `name`; nothing is created.
pub fn temp_path(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("wsgrace-{}-{n}-{name}", std::process::id()))
}

/// Writes `text` to a fresh file in the temp dir and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text)
        .unwrap_or_else(|err| panic!("write temp file {}: {err}", path.display()));
    path
}

/// Creates a fresh directory in the temp dir and returns its path.
pub fn temp_dir(name: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|err| panic!("create temp dir {}: {err}", path.display()));
    path
}
