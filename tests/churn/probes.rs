//! What the churn soak measures about its own process, which runs the server: the live heap
//! (a counting global allocator), the TCP sockets it holds, the close and error counters of
//! the library's metrics; and the soak's settings from the environment.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use wsgrace::metrics::{CloseLabels, ReasonLabels};

/// Counts the bytes the process has allocated and not freed, to tell a leak (live heap that
/// grows with the number of connections) from allocator behaviour (RSS that does not shrink).
pub struct CountingAlloc;

static LIVE_HEAP: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_HEAP.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The number in environment variable `name`, if set; panics if it is not a number.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// TCP sockets this process holds open (the listener and every connection, either end):
/// its socket descriptors looked up in /proc/net/tcp and tcp6. Read line by line, so that no
/// large buffer disturbs the memory samples.
pub fn tcp_sockets() -> usize {
    use std::io::BufRead;
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(file) = std::fs::File::open(table) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().skip(1) {
            let line = line.expect("read /proc/net/tcp");
            // sl local remote st queues timer retransmits uid timeout inode ...
            if line
                .split_whitespace()
                .nth(9)
                .is_some_and(|inode| inodes.contains(inode))
            {
                count += 1;
            }
        }
    }
    count
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn close_labels() -> Vec<CloseLabels> {
    let mut labels = Vec::new();
    for initiator in ["client", "server"] {
        for mode in ["awaited", "fire_and_forget"] {
            for outcome in ["acked", "timeout", "aborted", "error"] {
                labels.push(CloseLabels {
                    initiator,
                    mode,
                    outcome,
                });
            }
        }
    }
    labels
}

pub fn counter(
    family: &prometheus_client::metrics::family::Family<
        ReasonLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    reason: &'static str,
) -> u64 {
    family.get_or_create(&ReasonLabels { reason }).get()
}
/// The bytes allocated and not freed so far.
pub fn live_heap() -> u64 {
    LIVE_HEAP.load(Ordering::Relaxed).max(0) as u64
}
