//! The bytes of RFC 7692 `permessage-deflate` as wsgrace agrees to it: every message on its own
//! (`server_no_context_takeover`, `client_no_context_takeover`), raw DEFLATE ended with a sync
//! flush whose `00 00 ff ff` tail is left off the wire.
//!
//! It owns the compressor and the inflater, one of each per thread, reset for every message:
//! nothing of a connection is kept between its messages, so an idle connection holds no codec
//! state at all and a room message compressed once is readable by every member. Inflating is
//! bounded: no more than the message limit (plus one byte, to know it was crossed) is ever
//! produced, whatever the input claims (a deflate bomb is found before it costs memory).
//!
//! A compressor reset costs more than compressing a chat message (miniz_oxide clears some
//! 300 KB of tables: ~20 µs, BENCHMARKS.md), so texts compressed for one session at a time (a
//! resume's replay, which every client of a drained node asks for at once) go through
//! [`compress_recent`]: this thread's last compressed texts are kept, bounded, and the same
//! text is not compressed twice while it is there. Every message standing alone, the same text
//! always compresses to the same bytes, whoever it is for.
//!
//! It must not know frames beyond their payload, nor sessions, nor what a handshake agreed:
//! the caller says whether a connection compresses ([`Deflate`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What one connection agreed to at its upgrade (see [`crate::connection::deflate_offer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deflate {
    /// No extension: RSV1 is a protocol error, every frame is plain.
    #[default]
    Off,
    /// `permessage-deflate` in both directions: the peer may compress, and our messages above
    /// [`COMPRESS_MIN_BYTES`] go compressed.
    On,
    /// `permessage-deflate` agreed with a `server_max_window_bits` below 15: the peer may
    /// compress, our messages all go plain (RFC 7692 lets any message go uncompressed, and the
    /// one compressed copy a room shares uses the full window, which this peer refused).
    InboundOnly,
}

impl Deflate {
    /// Whether the peer may send compressed messages (RSV1 on a data message's first frame).
    pub fn inbound(self) -> bool {
        !matches!(self, Deflate::Off)
    }

    /// Whether our messages to the peer may go compressed.
    pub fn outbound(self) -> bool {
        matches!(self, Deflate::On)
    }
}

/// Messages shorter than this go plain even to a peer that agreed to compression: below it the
/// bytes saved do not pay for the compressor's time (measured on `bench/corpus/chat_lines.txt`,
/// see BENCHMARKS.md).
pub const COMPRESS_MIN_BYTES: usize = 128;

/// The compression level: 1, the fastest. On chat messages (a few hundred bytes of JSON) the
/// higher levels save a few bytes more at several times the CPU (BENCHMARKS.md).
const LEVEL: u32 = 1;

/// The tail every sync flush ends with, left off the wire (RFC 7692 §7.2.1) and put back
/// before inflating (§7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor, made on first use and reset for every message.
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
    /// This thread's inflater, made on first use and reset for every message.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    /// This thread's recently compressed texts ([`compress_recent`]).
    static RECENT: RefCell<Recent> = RefCell::new(Recent::default());
}

/// Most texts [`compress_recent`] keeps per thread: a full history replay (`history.size`
/// 1,000) and then some.
const RECENT_TEXTS: usize = 4_096;
/// Most bytes (texts and their compressed copies) [`compress_recent`] keeps per thread.
const RECENT_BYTES: usize = 4 << 20;

/// Texts compressed lately on this thread, with their compressed copy (`None`: compressing
/// did not pay). Emptied whole when it reaches its bounds: simple, and a replay that is still
/// going on fills it again at once.
#[derive(Default)]
struct Recent {
    texts: HashMap<Rc<str>, Option<Rc<[u8]>>>,
    bytes: usize,
}

/// [`compress`] for a text that other sessions on this thread may be sent too (a replayed room
/// message): the copy compressed last time while this thread still has it, else compressed now
/// and kept. `None` when the text does not shrink.
pub fn compress_recent(text: &str) -> Option<Rc<[u8]>> {
    if let Some(known) = RECENT.with(|recent| recent.borrow().texts.get(text).cloned()) {
        return known;
    }
    let compressed = compress(text.as_bytes())
        .filter(|compressed| compressed.len() < text.len())
        .map(Rc::<[u8]>::from);
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let size = text.len() + compressed.as_ref().map_or(0, |c| c.len());
        if recent.texts.len() >= RECENT_TEXTS || recent.bytes + size > RECENT_BYTES {
            recent.texts.clear();
            recent.bytes = 0;
        }
        recent.bytes += size;
        recent.texts.insert(Rc::from(text), compressed.clone());
    });
    compressed
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates to more than the limit: found before more than the limit was produced.
    #[error("inflates to more than {0} bytes")]
    TooBig(usize),
    /// It is no valid DEFLATE data.
    #[error("invalid deflate data: {0}")]
    Corrupt(String),
}

/// Compresses `payload` as one message: raw DEFLATE, sync flush, the tail removed. `None` when
/// the compressor fails (it does not on a buffer this size; the caller then sends the message
/// plain).
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        compressor.reset();
        // Stored blocks cost 5 bytes per 64 KiB, the flush 5 more: this is enough for one pass.
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 16_384 * 5 + 16);
        let mut input = payload;
        loop {
            let before = compressor.total_in();
            if let Err(err) = compressor.compress_vec(input, &mut out, FlushCompress::Sync) {
                log::error!("compressing a message failed: {err}");
                return None;
            }
            let consumed = usize::try_from(compressor.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or_default();
            // Done once the input is in and the flush fit: the output ends with the tail.
            if input.is_empty() && out.len() < out.capacity() && out.ends_with(&SYNC_TAIL) {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        out.truncate(out.len() - SYNC_TAIL.len());
        Some(out)
    })
}

/// Inflates one compressed message (its frames' payloads joined) into at most `limit` bytes,
/// in steps: the output grows as needed and never past `limit + 1`, so that a message that
/// inflates to more is refused once the bound is crossed ([`InflateError::TooBig`]).
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let bound = limit.saturating_add(1);
        // A guess at the size (chat text inflates 2-4x), grown by doubling up to the bound.
        let first = compressed.len().saturating_mul(4).max(256).min(bound);
        let mut out = Vec::with_capacity(first);
        for (pass, mut input) in [compressed, &SYNC_TAIL[..]].into_iter().enumerate() {
            loop {
                let (in_before, out_before) = (inflater.total_in(), out.len());
                let status = inflater
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|err| InflateError::Corrupt(err.to_string()))?;
                if out.len() > limit {
                    return Err(InflateError::TooBig(limit));
                }
                let consumed =
                    usize::try_from(inflater.total_in() - in_before).unwrap_or(input.len());
                input = input.get(consumed..).unwrap_or_default();
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message; only our own tail may follow.
                    if pass == 0 && !input.is_empty() {
                        return Err(InflateError::Corrupt("data after the final block".into()));
                    }
                    return Ok(out);
                }
                let full = out.len() == out.capacity();
                if input.is_empty() && !full {
                    break;
                }
                if full {
                    let grow = out.capacity().max(256).min(bound - out.len());
                    out.reserve_exact(grow);
                } else if consumed == 0 && out.len() == out_before {
                    // Neither input taken nor output made, with room for both: stuck.
                    return Err(InflateError::Corrupt(
                        "the inflater made no progress".into(),
                    ));
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(len: usize) -> Vec<u8> {
        let line = b"{\"type\":\"message\",\"room\":\"lobby\",\"from\":\"ann\",\"text\":\"see you at ten\"}";
        line.iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn a_compressed_message_inflates_back() {
        for len in [0, 1, 127, 128, 1_000, 65_536, 300_000] {
            let text = text_of(len);
            let compressed = compress(&text).expect("compressed");
            assert!(!compressed.ends_with(&SYNC_TAIL) || compressed.len() < 4);
            assert_eq!(inflate(&compressed, len.max(1)).expect("inflated"), text);
        }
    }

    #[test]
    fn every_message_stands_alone() {
        // No context is kept: the same message compresses to the same bytes every time, and
        // each inflates on its own.
        let first = compress(&text_of(500)).expect("compressed");
        let _ = compress(&text_of(9_000)).expect("compressed");
        let again = compress(&text_of(500)).expect("compressed");
        assert_eq!(first, again);
        assert_eq!(inflate(&again, 500).expect("inflated"), text_of(500));
    }

    #[test]
    fn a_bomb_is_refused_at_the_bound() {
        let bomb = compress(&vec![b'a'; 10 << 20]).expect("compressed");
        assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
        assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooBig(65_536)));
        // Exactly at the limit is fine.
        let exact = compress(&vec![b'a'; 65_536]).expect("compressed");
        assert_eq!(inflate(&exact, 65_536).map(|v| v.len()), Ok(65_536));
    }

    #[test]
    fn garbage_is_corrupt() {
        assert!(matches!(
            inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1_000),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // What a client that ends its message with BFINAL sends: "hi" as a fixed block.
        let mut finished = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(64);
        finished
            .compress_vec(b"hi", &mut out, FlushCompress::Finish)
            .expect("compressed");
        assert_eq!(inflate(&out, 10).expect("inflated"), b"hi");
        out.push(0x42);
        assert!(matches!(inflate(&out, 10), Err(InflateError::Corrupt(_))));
    }

    #[test]
    fn a_text_compressed_lately_is_not_compressed_again_and_the_memory_is_bounded() {
        let text = String::from_utf8(text_of(300)).expect("ascii");
        let first = compress_recent(&text).expect("compressed");
        let again = compress_recent(&text).expect("compressed");
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(
            &first[..],
            &compress(text.as_bytes()).expect("compressed")[..]
        );
        for i in 0..RECENT_TEXTS + 10 {
            let _ = compress_recent(&format!("{i} {text}"));
        }
        RECENT.with(|recent| {
            let recent = recent.borrow();
            assert!(recent.texts.len() <= RECENT_TEXTS);
            assert!(recent.bytes <= RECENT_BYTES);
        });
    }

    #[test]
    fn modes() {
        assert!(!Deflate::Off.inbound() && !Deflate::Off.outbound());
        assert!(Deflate::On.inbound() && Deflate::On.outbound());
        assert!(Deflate::InboundOnly.inbound() && !Deflate::InboundOnly.outbound());
    }
}
