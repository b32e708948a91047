//! RFC 7692 `permessage-deflate` as a client speaks it, for the tests' raw clients and the
//! bench's load generator: the offer a browser makes, reading the server's answer, compressing a
//! message the way a client does, and inflating what the server compressed. Each message stands
//! alone (the server answers with `server_no_context_takeover`): one inflater per thread, reset
//! for every message, so that thousands of connections keep none.
//!
//! The same crate as the server's (`flate2`, pure-Rust backend), but none of its code: the kit
//! speaks to the server over the wire.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` offer Chromium and Firefox send.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The tail of a sync flush, left off the wire (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The `Sec-WebSocket-Extensions` value of a response head, if it has one.
pub fn extensions_answer(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    })
}

/// Compresses `payload` as one client message: raw DEFLATE with a sync flush, the tail left
/// off (what RSV1 frames carry).
pub fn compress_message(payload: &[u8]) -> Vec<u8> {
    compress_message_with(payload, FlushCompress::Sync)
}

/// [`compress_message`] with another flush: `FlushCompress::Finish` ends the data with a final
/// block, as some clients do.
pub fn compress_message_with(payload: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut input = payload;
    loop {
        let before = compressor.total_in();
        let status = compressor
            .compress_vec(input, &mut out, flush)
            .expect("compressing in memory");
        input = &input[(compressor.total_in() - before) as usize..];
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => input.is_empty() && out.len() < out.capacity() && out.ends_with(&SYNC_TAIL),
        };
        if done {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    out
}

/// Inflates one compressed message from the server (its frames' payloads joined) into `out`
/// (cleared first). `Err` names what is wrong with the data.
pub fn inflate_message_into(compressed: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    INFLATER.with(|cell| {
        let mut inflater = cell.borrow_mut();
        inflater.reset(false);
        out.clear();
        out.reserve(compressed.len() * 4 + 64);
        for mut input in [compressed, &SYNC_TAIL[..]] {
            loop {
                let before = inflater.total_in();
                let status = inflater
                    .decompress_vec(input, out, FlushDecompress::Sync)
                    .map_err(|err| err.to_string())?;
                input = &input[(inflater.total_in() - before) as usize..];
                if status == Status::StreamEnd {
                    return Ok(());
                }
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity().max(64));
            }
        }
        Ok(())
    })
}

/// [`inflate_message_into`] into a new buffer; panics on bad data (a test's server bug).
pub fn inflate_message(compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    inflate_message_into(compressed, &mut out)
        .unwrap_or_else(|err| panic!("the server's compressed message does not inflate: {err}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        for len in [0, 5, 200, 70_000] {
            let text: Vec<u8> = b"chat ".iter().copied().cycle().take(len).collect();
            assert_eq!(inflate_message(&compress_message(&text)), text);
            let finished = compress_message_with(&text, FlushCompress::Finish);
            assert_eq!(inflate_message(&finished), text);
        }
    }

    #[test]
    fn the_answer_is_read_from_the_head() {
        let head =
            "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: permessage-deflate; \
                    server_no_context_takeover\r\nupgrade: websocket";
        assert_eq!(
            extensions_answer(head).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(extensions_answer("HTTP/1.1 101 Switching Protocols"), None);
    }
}
