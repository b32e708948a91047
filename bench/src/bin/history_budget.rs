//! `history_budget`: a micro-benchmark of [`LocalBroker::publish`] once `history.max_bytes`
//! is full (issue 19, item 3). For each room count it fills a broker so that every room
//! holds history and the total is exactly at the budget, then times publishes round-robin
//! over the rooms, which go over the budget and so evict the history of the room idle
//! longest (most of them do: the evictions column says how many). It prints one line per
//! room count: publishes timed, nanoseconds per publish (the median of up to [`ROUNDS`]
//! rounds of [`PUBLISHES`]), evictions per publish and the ratio to the first row (100
//! rooms).
//!
//! `--control` measures the same publishes with each room keeping its last
//! [`ENTRIES_PER_ROOM`] entries and no budget: the same memory, no eviction, which tells how
//! much of the growth with the room count is the cost of touching a room that is no longer
//! in the CPU's caches rather than the eviction.
//!
//! In-process and single-threaded: no server, no sockets, no clock but the one around the
//! timed loop (the broker is handed synthetic instants, 1 µs apart, so that no entry ever
//! expires and no two rooms tie). Each row stops after its rounds or after
//! [`ROW_TIME_LIMIT`], whichever comes first, so a slow broker still finishes in seconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wsgrace::broker::local::HistoryLimits;
use wsgrace::broker::LocalBroker;

/// Room counts measured unless the command line names others, the first being the baseline
/// of the ratio column.
const ROOM_COUNTS: [usize; 4] = [100, 1_000, 12_000, 20_000];
/// Publishes timed per round at most.
const PUBLISHES: u64 = 200_000;
/// Rounds per row at most; a row reports its median round.
const ROUNDS: usize = 5;
/// A row stops timing after this long even if it has not done its rounds (the round under
/// way ends early, and counts).
const ROW_TIME_LIMIT: Duration = Duration::from_secs(5);
/// The clock is read once per this many publishes, to keep it out of the measurement.
const CLOCK_EVERY: u64 = 1_024;
/// Entries each room holds once the budget is full.
const ENTRIES_PER_ROOM: usize = 2;
/// `history.size`: above [`ENTRIES_PER_ROOM`], so that a publish grows its room's history
/// (and the total past the budget) instead of trimming the room's own oldest entry.
const HISTORY_SIZE: usize = 64;
/// The text of every message: a short chat line.
const TEXT: &str = "hello from the history budget ..";

fn room_name(index: usize) -> String {
    format!("room-{index:05}")
}

fn limits(max_bytes: u64) -> HistoryLimits {
    HistoryLimits {
        size: HISTORY_SIZE,
        // Far beyond the benchmark's synthetic time span: nothing expires.
        ttl: Duration::from_secs(3_600),
        max_bytes,
    }
}

/// Publishes [`ENTRIES_PER_ROOM`] messages to every room, round-robin, from `start` on, 1 µs
/// apart; returns the instant after the last one.
fn fill(broker: &mut LocalBroker, names: &[String], start: Instant) -> Instant {
    let mut now = start;
    for _ in 0..ENTRIES_PER_ROOM {
        for name in names {
            if let Err(error) = broker.publish(name, "bench", TEXT, now) {
                panic!("filling room {name}: {error}");
            }
            now += Duration::from_micros(1);
        }
    }
    now
}

/// One room count's measurement.
struct Row {
    rooms: usize,
    /// Publishes timed, over every round.
    publishes: u64,
    evictions: u64,
    /// Nanoseconds per publish of each round.
    rounds: Vec<f64>,
}

impl Row {
    /// The median round: a round that a build next door slowed down does not count.
    fn ns_per_publish(&self) -> f64 {
        let mut sorted = self.rounds.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// The broker a row measures, filled.
fn filled_broker(names: &[String], start: Instant, control: bool) -> (LocalBroker, Instant) {
    if control {
        // Each room keeps its last ENTRIES_PER_ROOM entries: the same memory as at the
        // budget, and each publish drops its own room's oldest entry instead of another
        // room's history.
        let mut broker = LocalBroker::new(HistoryLimits {
            size: ENTRIES_PER_ROOM,
            ..limits(u64::MAX)
        });
        let now = fill(&mut broker, names, start);
        return (broker, now);
    }
    // A first broker with no budget to speak of tells what the filled history weighs; the
    // measured one gets exactly that as its budget, so it is full after the same fill.
    let mut probe = LocalBroker::new(limits(u64::MAX));
    fill(&mut probe, names, start);
    let budget = probe.history_bytes();
    drop(probe);
    let mut broker = LocalBroker::new(limits(budget));
    let now = fill(&mut broker, names, start);
    assert_eq!(broker.history_bytes(), budget, "the budget is full");
    (broker, now)
}

fn measure(rooms: usize, control: bool) -> Row {
    let names: Vec<String> = (0..rooms).map(room_name).collect();
    let (mut broker, mut now) = filled_broker(&names, Instant::now(), control);

    let mut row = Row {
        rooms,
        publishes: 0,
        evictions: 0,
        rounds: Vec::new(),
    };
    let row_began = Instant::now();
    // Rounds go on from where the last one left the broker: the steady state at the budget.
    while row.rounds.len() < ROUNDS && row_began.elapsed() < ROW_TIME_LIMIT {
        let mut publishes = 0u64;
        let began = Instant::now();
        while publishes < PUBLISHES {
            let name = &names[(row.publishes + publishes) as usize % rooms];
            match broker.publish(name, "bench", TEXT, now) {
                Ok(published) => {
                    row.evictions += published.epoch_changes.len() as u64;
                    black_box(published);
                }
                Err(error) => panic!("publishing to {name}: {error}"),
            }
            now += Duration::from_micros(1);
            publishes += 1;
            if publishes.is_multiple_of(CLOCK_EVERY) && row_began.elapsed() >= ROW_TIME_LIMIT {
                break;
            }
        }
        let elapsed = began.elapsed();
        row.rounds
            .push(elapsed.as_nanos() as f64 / publishes.max(1) as f64);
        row.publishes += publishes;
    }
    row
}

fn main() {
    // `history_budget [--control] [ROOMS ...]`: other room counts, e.g. one at a time under
    // a profiler; `--control` measures publishes that evict nothing (see `filled_broker`).
    let mut room_counts = Vec::new();
    let mut control = false;
    for arg in std::env::args().skip(1) {
        match arg.parse::<usize>() {
            Ok(rooms) if rooms > 0 => room_counts.push(rooms),
            _ if arg == "--control" => control = true,
            _ => {
                eprintln!("usage: history_budget [--control] [ROOMS ...] (room counts above 0)");
                std::process::exit(2);
            }
        }
    }
    if room_counts.is_empty() {
        room_counts = ROOM_COUNTS.to_vec();
    }
    let setup = if control {
        format!(
            "control: history.size {ENTRIES_PER_ROOM}, no budget (each publish trims its own \
             room, nothing is evicted)"
        )
    } else {
        format!("history.size {HISTORY_SIZE}, {ENTRIES_PER_ROOM} entries per room at the budget")
    };
    println!(
        "history_budget: {setup}, {}-byte texts, up to {ROUNDS} rounds of {PUBLISHES} \
         publishes or {} s per row (median round)",
        TEXT.len(),
        ROW_TIME_LIMIT.as_secs()
    );
    println!(
        "{:>7} {:>7} {:>10} {:>12} {:>18} {:>14}",
        "rooms",
        "rounds",
        "publishes",
        "ns/publish",
        "evictions/publish",
        format!("vs {} rooms", room_counts[0])
    );
    let mut baseline = None;
    for rooms in room_counts {
        let row = measure(rooms, control);
        let ns = row.ns_per_publish();
        let base = *baseline.get_or_insert(ns);
        println!(
            "{:>7} {:>7} {:>10} {:>12.0} {:>18.3} {:>13.2}x",
            row.rooms,
            row.rounds.len(),
            row.publishes,
            ns,
            row.evictions as f64 / row.publishes.max(1) as f64,
            ns / base
        );
    }
}
