//! The open-files limit and what it allows: how many WebSockets this process can hold.
//!
//! Every connection is a file descriptor. A server that accepts until the kernel says
//! `EMFILE` leaves the excess clients hanging in the accept backlog until their own timeout;
//! one that knows its budget answers them with 503 at once. At startup [`raise_limit`] lifts
//! the soft limit to the hard one (as Go's runtime does), and [`budget`] works out how many
//! sessions fit under it with room left for the process itself and for the descriptors that
//! accepting, refusing and lingering cost. The decision is a pure function; this module must
//! not know about HTTP or sessions.

/// Descriptors the process needs besides connections: standard streams, the listener, each
/// worker's event loop and wakers, the Redis connections, files read from `/proc`.
const PROCESS_BASE: u64 = 64;
/// More per worker thread (its event loop, its waker pipes).
const PER_WORKER: u64 = 8;
/// The least kept free for connections that are accepted only to be refused with 503, or that
/// linger after their close.
const MIN_HEADROOM: u64 = 32;

/// The process's open-files limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The limit in force.
    pub soft: u64,
    /// The most the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one and returns both; `None` when the limit
/// cannot be read (then nothing is assumed about it).
pub fn raise_limit() -> Option<OpenFiles> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            log::warn!("cannot read the open-files limit: {err}");
            return None;
        }
    };
    if soft >= hard {
        return Some(OpenFiles { soft, hard });
    }
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => {
            log::info!("open-files limit raised from {soft} to {raised}");
            Some(OpenFiles { soft: raised, hard })
        }
        Err(err) => {
            log::warn!("cannot raise the open-files limit from {soft} to {hard}: {err}");
            Some(OpenFiles { soft, hard })
        }
    }
}

/// How many sessions to admit, and per worker how many connections to accept at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Sessions admitted; upgrades beyond get 503.
    pub max_connections: usize,
    /// Connections one worker accepts at most (sessions, refusals, plain HTTP), so that the
    /// accept loop never reaches `EMFILE`.
    pub per_worker_accept: usize,
    /// Closed connections that may linger at once; past it a close does not linger, so that
    /// lingering never eats the descriptors kept for refusals.
    pub max_lingering: usize,
    /// The configured `server.max_connections` did not fit; this many did.
    pub shortfall: Option<usize>,
}

/// The budget for `configured` sessions on `workers` threads under `limit` open files.
pub fn budget(configured: usize, limit: Option<OpenFiles>, workers: usize) -> Budget {
    let workers = workers.max(1);
    let Some(limit) = limit else {
        return Budget {
            max_connections: configured,
            per_worker_accept: configured.saturating_add(1024),
            max_lingering: 1024,
            shortfall: None,
        };
    };
    let reserved = PROCESS_BASE + PER_WORKER * workers as u64;
    let for_connections = limit.soft.saturating_sub(reserved);
    let headroom = (for_connections / 16).max(MIN_HEADROOM);
    let fits = usize::try_from(for_connections.saturating_sub(headroom)).unwrap_or(usize::MAX);
    let max_connections = configured.min(fits);
    // Accepting stops before the descriptors run out: the workers' caps add up to the share
    // for connections (actix-server hands a connection to another worker when one is at its
    // cap, and pauses accepting only when all are).
    let per_worker_accept = usize::try_from(for_connections / workers as u64)
        .unwrap_or(usize::MAX)
        .min(configured.saturating_add(1024))
        .max(1);
    let spare = for_connections.saturating_sub(max_connections as u64);
    Budget {
        max_connections,
        per_worker_accept,
        max_lingering: usize::try_from(spare / 2).unwrap_or(usize::MAX),
        shortfall: (max_connections < configured).then_some(max_connections),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: u64) -> Option<OpenFiles> {
        Some(OpenFiles { soft, hard: soft })
    }

    #[test]
    fn a_large_limit_admits_what_is_configured() {
        let b = budget(100_000, limit(1 << 20), 2);
        assert_eq!(b.max_connections, 100_000);
        assert_eq!(b.shortfall, None);
        assert_eq!(b.per_worker_accept, 101_024);
    }

    #[test]
    fn a_small_limit_keeps_room_for_the_process_and_for_refusals() {
        // 512 - (64 + 16) = 432 for connections; 32 of them stay free for 503s and lingers;
        // each of the 2 workers accepts at most half of the 432.
        let b = budget(100_000, limit(512), 2);
        assert_eq!(b.max_connections, 400);
        assert_eq!(b.shortfall, Some(400));
        assert_eq!(b.per_worker_accept, 216);
        assert_eq!(b.max_lingering, 16);
    }

    #[test]
    fn the_headroom_grows_with_the_limit() {
        // 20,000 - 80 = 19,920; a sixteenth (1,245) stays free.
        let b = budget(100_000, limit(20_000), 2);
        assert_eq!(b.max_connections, 18_675);
        assert_eq!(b.per_worker_accept, 9_960);
    }

    #[test]
    fn a_limit_below_what_the_process_needs_admits_nothing_and_says_so() {
        let b = budget(10, limit(40), 4);
        assert_eq!(b.max_connections, 0);
        assert_eq!(b.shortfall, Some(0));
        assert_eq!(b.per_worker_accept, 1);
    }

    #[test]
    fn an_unknown_limit_assumes_nothing() {
        let b = budget(5_000, None, 2);
        assert_eq!(b.max_connections, 5_000);
        assert_eq!(b.shortfall, None);
    }
}
