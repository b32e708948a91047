//! What /proc says about a process: its resident memory and the CPU time it has used. Read
//! only; `None` once the process is gone.

use std::time::Duration;

/// The resident memory of process `pid` in bytes (`VmRSS`).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// This process's own resident memory in bytes.
pub fn own_rss() -> Option<u64> {
    rss_of(std::process::id())
}

/// The CPU time process `pid` has used so far (user + system, all threads).
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// The parent of process `pid` and its state letter (`R`, `S`, `Z`, ...), from /proc.
pub(crate) fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((parent, state))
}

/// Every process that descends from `pid` (children, their children, ...), as /proc shows
/// them now.
pub(crate) fn descendants_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_and_state(p)?.0)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == parent && !found.contains(p) {
                found.push(*p);
                frontier.push(*p);
            }
        }
    }
    found
}

/// Whether process `pid` still runs (exists and is not a zombie waiting to be reaped).
pub(crate) fn is_running(pid: u32) -> bool {
    matches!(parent_and_state(pid), Some((_, state)) if state != 'Z' && state != 'X')
}
