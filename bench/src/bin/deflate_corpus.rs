//! `deflate_corpus [CORPUS]`: what `permessage-deflate` does to chat messages, in process, with
//! no network: each line of the corpus (default `bench/corpus/chat_lines.txt`) is put in the
//! `message` frame the server sends (`{"type":"message","room":...,"text":LINE,"seq":N,"ts":T}`),
//! and compressed the way the server compresses a room message
//! (`wsgrace::connection::transport::deflate::compress`, raw DEFLATE, sync flush, no context).
//! Prints one JSON line: per size bucket of the plain frame, the mean plain and compressed frame
//! bytes and the time one compression takes; the same at other levels (`flate2` directly) for
//! comparison. What the compression threshold (`COMPRESS_MIN_BYTES`) and level are chosen from.
//!
//! It measures the compressor alone: the per-delivery costs are `loadgen fanout --deflate`'s.

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use serde_json::{json, Value};
use wsgrace::connection::transport::deflate;

/// Rounds per line: enough for a stable mean on a busy machine.
const ROUNDS: usize = 200;

/// The frame header's length for a payload of `len` bytes (server frames are unmasked).
fn header(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// A fresh compressor per message at `level`, as a server with a compressor per message would.
fn compress_at(level: u32, payload: &[u8]) -> usize {
    let mut compressor = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compressor
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("in memory");
    out.len().saturating_sub(4)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/corpus/chat_lines.txt".to_owned());
    let corpus = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("deflate_corpus: cannot read {path}: {err}");
            std::process::exit(2);
        }
    };
    let frames: Vec<String> = corpus
        .lines()
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            json!({
                "type": "message", "room": "lobby", "from": format!("user{}", i % 37),
                "text": line, "seq": 10_000 + i, "ts": 1_765_000_000_000u64 + i as u64 * 997,
            })
            .to_string()
        })
        .collect();
    let buckets: [(usize, usize); 5] = [(0, 128), (128, 160), (160, 200), (200, 260), (260, 400)];
    let mut rows = Vec::new();
    let mut totals = (0usize, 0usize, 0usize, 0f64);
    for (low, high) in buckets {
        let chosen: Vec<&String> = frames
            .iter()
            .filter(|f| (low..high).contains(&f.len()))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let (mut plain, mut compressed, mut smaller) = (0usize, 0usize, 0usize);
        let started = Instant::now();
        for _ in 0..ROUNDS {
            for frame in &chosen {
                std::hint::black_box(deflate::compress(frame.as_bytes()));
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / (ROUNDS * chosen.len()) as f64;
        for frame in &chosen {
            let c = deflate::compress(frame.as_bytes()).map_or(usize::MAX, |c| c.len());
            plain += header(frame.len()) + frame.len();
            compressed += header(c) + c;
            smaller += usize::from(c < frame.len());
        }
        totals = (
            totals.0 + plain,
            totals.1 + compressed,
            totals.2 + chosen.len(),
            totals.3 + ns * chosen.len() as f64,
        );
        let mut levels = serde_json::Map::new();
        for level in [1u32, 6, 9] {
            let started = Instant::now();
            let mut bytes = 0;
            for frame in &chosen {
                let c = compress_at(level, frame.as_bytes());
                bytes += header(c) + c;
            }
            let ns = started.elapsed().as_nanos() as f64 / chosen.len() as f64;
            levels.insert(
                format!("level_{level}"),
                json!({"compressed_frame_bytes_mean": (bytes as f64 / chosen.len() as f64).round(),
                       "ns_per_message_fresh_compressor": ns.round()}),
            );
        }
        rows.push(json!({
            "plain_frame_bytes": format!("{low}..{high}"),
            "messages": chosen.len(),
            "plain_frame_bytes_mean": (plain as f64 / chosen.len() as f64).round(),
            "compressed_frame_bytes_mean": (compressed as f64 / chosen.len() as f64).round(),
            "compressed_over_plain": ((compressed as f64 / plain as f64) * 1000.0).round() / 1000.0,
            "shrunk": smaller,
            "ns_per_compression": ns.round(),
            "other_levels": Value::Object(levels),
        }));
    }
    println!(
        "{}",
        json!({
            "corpus": path,
            "messages": totals.2,
            "plain_frame_bytes_mean": (totals.0 as f64 / totals.2 as f64).round(),
            "compressed_frame_bytes_mean": (totals.1 as f64 / totals.2 as f64).round(),
            "compressed_over_plain": ((totals.1 as f64 / totals.0 as f64) * 1000.0).round() / 1000.0,
            "ns_per_compression_mean": (totals.3 / totals.2 as f64).round(),
            "compress_min_bytes": deflate::COMPRESS_MIN_BYTES,
            "by_size": rows,
        })
    );
}
