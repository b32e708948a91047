//! The load generator's WebSocket client: a frame reader that borrows payloads out of one
//! reusable buffer (no allocation per frame) and a writer that masks into one reusable
//! buffer, for many thousands of connections. Connecting, the opening handshake and the
//! frame format are the kit's (`wsgrace_kit::handshake`, `wsgrace_kit::frame`). It knows
//! nothing of chat or of the scenarios; it must not hide protocol events from them (pings,
//! closes and the way the TCP connection ended are all reported to the caller).
//!
//! With `--deflate` ([`set_offer_deflate`]) every connection offers `permessage-deflate` as a
//! browser does, and a compressed message is inflated (the kit's one inflater per thread, so
//! that 10,000 connections keep none) before it is handed out. The bytes of data frames on the
//! wire and inflated are counted for the whole process ([`wire_counts`]).

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use wsgrace_kit::deflate::{extensions_answer, inflate_message_into, BROWSER_OFFER};
use wsgrace_kit::frame::{
    encode_frame_into, parse_header, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG,
    OP_TEXT, RSV1,
};
use wsgrace_kit::handshake::{upgrade_with, SocketOptions};

thread_local! {
    /// Whether new connections offer `permessage-deflate` (`--deflate`).
    static OFFER_DEFLATE: Cell<bool> = const { Cell::new(false) };
    /// Data messages read, their frames' bytes on the wire (headers included), and their
    /// payload bytes once inflated.
    static WIRE: Cell<WireCounts> = const { Cell::new(WireCounts { messages: 0, wire_bytes: 0, payload_bytes: 0, compressed: 0, agreed: 0 }) };
}

/// What the readers of this thread took off the wire in data messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounts {
    /// Whole data messages handed out.
    pub messages: u64,
    /// Their frames' bytes on the wire, headers included.
    pub wire_bytes: u64,
    /// Their payloads' bytes, inflated.
    pub payload_bytes: u64,
    /// How many of them came compressed.
    pub compressed: u64,
    /// Connections whose upgrade agreed to `permessage-deflate`.
    pub agreed: u64,
}

/// New connections offer `permessage-deflate` (the offer browsers make) when `offer` is true.
pub fn set_offer_deflate(offer: bool) {
    OFFER_DEFLATE.with(|cell| cell.set(offer));
}

/// Whether new connections offer `permessage-deflate`.
pub fn offers_deflate() -> bool {
    OFFER_DEFLATE.with(Cell::get)
}

/// The counts since the last [`reset_wire_counts`].
pub fn wire_counts() -> WireCounts {
    WIRE.with(Cell::get)
}

/// Starts the counts of [`wire_counts`] from zero.
pub fn reset_wire_counts() {
    WIRE.with(|cell| cell.set(WireCounts::default()));
}

/// `counts` as the reports show them, with the bytes per message.
pub fn wire_json(counts: WireCounts) -> serde_json::Value {
    let per = |bytes: u64| {
        if counts.messages == 0 {
            0.0
        } else {
            (bytes as f64 / counts.messages as f64 * 10.0).round() / 10.0
        }
    };
    serde_json::json!({
        "data_messages": counts.messages,
        "compressed_messages": counts.compressed,
        "wire_bytes": counts.wire_bytes,
        "payload_bytes": counts.payload_bytes,
        "wire_bytes_per_message": per(counts.wire_bytes),
        "payload_bytes_per_message": per(counts.payload_bytes),
        "deflate_agreed_connections": counts.agreed,
    })
}

fn count_message(wire_bytes: usize, payload_bytes: usize, compressed: bool) {
    WIRE.with(|cell| {
        let mut counts = cell.get();
        counts.messages += 1;
        counts.wire_bytes += wire_bytes as u64;
        counts.payload_bytes += payload_bytes as u64;
        counts.compressed += u64::from(compressed);
        cell.set(counts);
    });
}

/// Largest frame the reader accepts; the server's messages are small.
const MAX_FRAME: usize = 16 << 20;

/// One frame from the server. `payload` borrows the reader's buffer until the next read.
/// Fragmented data messages are reassembled: `Message` carries the whole message.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A complete text or binary message (the server sends only text).
    Message {
        payload: &'a [u8],
    },
    Ping(&'a [u8]),
    Pong,
    /// A close frame: the status code, if any, and the reason bytes.
    Close {
        code: Option<u16>,
        reason: &'a [u8],
    },
}

/// How the server's side of the TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly FIN.
    Eof,
    /// ECONNRESET.
    Reset,
    /// Any other read error.
    Error,
}

/// What a read returned: a frame or the end of the connection.
pub enum Read<'a> {
    Frame(Frame<'a>),
    End(End),
}

/// The reading half: a buffer and a frame parser.
pub struct WsReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// Bytes of the frame handed out last, dropped at the next read.
    consumed: usize,
    /// Reassembly of a fragmented message (rare; allocated only then).
    fragments: Vec<u8>,
    /// Set once a fragmented message completed: the payload lives in `fragments`.
    fragments_ready: bool,
    /// `permessage-deflate` agreed: RSV1 marks a compressed message.
    inflating: bool,
    /// The message being read is compressed (its first frame had RSV1).
    compressed: bool,
    /// Wire bytes of the message being read, so far.
    message_wire: usize,
    /// The last compressed message, inflated (allocated only with `inflating`).
    inflated: Vec<u8>,
}

/// The writing half: masks and writes client frames from a reusable buffer.
pub struct WsWriter {
    wr: OwnedWriteHalf,
    out: Vec<u8>,
    rng: u64,
}

/// Opens a TCP connection (from `source` if given) and performs the opening handshake on
/// `GET path`. Any answer but 101 is an error naming the status line.
pub async fn connect(
    server: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    seed: u64,
) -> io::Result<(WsReader, WsWriter)> {
    connect_offering(server, source, path, seed, None).await
}

/// [`connect`], offering `subprotocol` (e.g. `wsgrace.v2`); an answer that does not choose
/// it is an error.
pub async fn connect_offering(
    server: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    seed: u64,
    subprotocol: Option<&str>,
) -> io::Result<(WsReader, WsWriter)> {
    connect_measured(server, source, path, seed, subprotocol)
        .await
        .map(|(rd, wr, _)| (rd, wr))
}

/// [`connect_offering`], also returning the bytes of the server's response head (its blank
/// line included): what an upgrade costs on the wire besides the request.
pub async fn connect_measured(
    server: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    seed: u64,
    subprotocol: Option<&str>,
) -> io::Result<(WsReader, WsWriter, usize)> {
    let options = SocketOptions {
        source,
        ..SocketOptions::default()
    };
    let offer = offers_deflate().then_some(BROWSER_OFFER);
    let answered = upgrade_with(server, path, options, subprotocol, offer).await?;
    let inflating = offer.is_some()
        && extensions_answer(&answered.head).is_some_and(|a| a.starts_with("permessage-deflate"));
    if inflating {
        WIRE.with(|cell| {
            let mut counts = cell.get();
            counts.agreed += 1;
            cell.set(counts);
        });
    }
    if let Some(protocol) = subprotocol {
        let chosen = answered.head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("sec-websocket-protocol") && value.trim() == protocol
            })
        });
        if !chosen {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server did not choose {protocol}"),
            ));
        }
    }
    answered.stream.set_nodelay(true)?;
    let (rd, wr) = answered.stream.into_split();
    let mut buf = BytesMut::with_capacity(1024.max(answered.rest.len()));
    buf.extend_from_slice(&answered.rest);
    let reader = WsReader {
        rd,
        buf,
        consumed: 0,
        fragments: Vec::new(),
        fragments_ready: false,
        inflating,
        compressed: false,
        message_wire: 0,
        inflated: Vec::new(),
    };
    let writer = WsWriter {
        wr,
        out: Vec::with_capacity(256),
        rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
    };
    Ok((reader, writer, answered.head.len() + 4))
}

impl WsReader {
    /// The next frame, or how the connection ended. A protocol violation by the server
    /// is reported as `End::Error` (and logged by the caller if it cares).
    pub async fn next(&mut self) -> Read<'_> {
        if self.fragments_ready {
            self.fragments_ready = false;
            self.fragments.clear();
        }
        self.buf.advance(self.consumed);
        self.consumed = 0;
        loop {
            match server_header(&self.buf, self.inflating) {
                Ok(Some((fin, opcode, start, len))) => {
                    if len > MAX_FRAME {
                        return Read::End(End::Error);
                    }
                    if self.buf.len() >= start + len {
                        self.consumed = start + len;
                        match self.classify(fin, opcode, start, len) {
                            Some(true) => break,
                            Some(false) => {
                                // A non-final fragment: stored, keep reading.
                                self.buf.advance(self.consumed);
                                self.consumed = 0;
                                continue;
                            }
                            None => return Read::End(End::Error),
                        }
                    }
                    self.buf.reserve(start + len - self.buf.len());
                }
                Ok(None) => {}
                Err(()) => return Read::End(End::Error),
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return Read::End(End::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Read::End(End::Reset)
                }
                Err(_) => return Read::End(End::Error),
            }
        }
        // The frame at the front of `buf` (or in `fragments`) is complete.
        let Ok(Some((_, opcode, start, len))) = server_header(&self.buf, self.inflating) else {
            return Read::End(End::Error);
        };
        if matches!(opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
            let compressed = std::mem::take(&mut self.compressed);
            let whole: &[u8] = if opcode == OP_CONTINUATION {
                &self.fragments
            } else {
                &self.buf[start..start + len]
            };
            let wire = std::mem::take(&mut self.message_wire);
            if compressed {
                if inflate_message_into(whole, &mut self.inflated).is_err() {
                    return Read::End(End::Error);
                }
                count_message(wire, self.inflated.len(), true);
                return Read::Frame(Frame::Message {
                    payload: &self.inflated,
                });
            }
            count_message(wire, whole.len(), false);
        }
        let payload = &self.buf[start..start + len];
        Read::Frame(match opcode {
            OP_PING => Frame::Ping(payload),
            OP_PONG => Frame::Pong,
            OP_CLOSE => {
                if payload.len() >= 2 {
                    Frame::Close {
                        code: Some(u16::from_be_bytes([payload[0], payload[1]])),
                        reason: &payload[2..],
                    }
                } else {
                    Frame::Close {
                        code: None,
                        reason: &[],
                    }
                }
            }
            OP_CONTINUATION => Frame::Message {
                payload: &self.fragments,
            },
            _ => Frame::Message { payload },
        })
    }

    /// Decides what a complete frame at the buffer front means: `Some(true)` = hand it out,
    /// `Some(false)` = a fragment was stored, `None` = protocol error.
    fn classify(&mut self, fin: bool, opcode: u8, start: usize, len: usize) -> Option<bool> {
        if matches!(opcode, OP_TEXT | OP_BINARY) {
            // RSV1 (allowed by `server_header` only with the extension) on a first frame.
            self.compressed = self.buf[0] & 0x40 != 0;
            self.message_wire = 0;
        }
        if matches!(opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
            self.message_wire += start + len;
        }
        let payload = &self.buf[start..start + len];
        match opcode {
            OP_TEXT | OP_BINARY if fin => Some(true),
            OP_TEXT | OP_BINARY => {
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                Some(false)
            }
            OP_CONTINUATION => {
                self.fragments.extend_from_slice(payload);
                if fin {
                    self.fragments_ready = true;
                    Some(true)
                } else {
                    Some(false)
                }
            }
            OP_CLOSE | OP_PING | OP_PONG if fin => Some(true),
            _ => None,
        }
    }
}

/// A server frame header as the kit parses it, with what this client refuses: `(fin,
/// opcode, payload_start, payload_len)`, `None` if more bytes are needed, `Err` if the server
/// masked its frame, used reserved bits (RSV1 on a data message's first frame is allowed when
/// `inflating`) or announced more than memory holds.
fn server_header(buf: &[u8], inflating: bool) -> Result<Option<(bool, u8, usize, usize)>, ()> {
    let Some(header) = parse_header(buf) else {
        return Ok(None);
    };
    let compressed_start =
        inflating && header.rsv == RSV1 && matches!(header.opcode, OP_TEXT | OP_BINARY);
    if header.masked || (header.rsv != 0 && !compressed_start) {
        return Err(());
    }
    let len = usize::try_from(header.payload_len).map_err(|_| ())?;
    Ok(Some((header.fin, header.opcode, header.header_len, len)))
}

impl WsWriter {
    /// Sends one masked frame with FIN set.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        // xorshift64: masking keys need not be secret for a load generator.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let key = (self.rng as u32).to_be_bytes();
        self.out.clear();
        encode_frame_into(&mut self.out, true, 0, opcode, Some(key), payload);
        self.wr.write_all(&self.out).await
    }

    pub async fn text(&mut self, text: &[u8]) -> io::Result<()> {
        self.send(OP_TEXT, text).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_PONG, payload).await
    }

    /// Sends a close frame; `None` sends an empty payload (no status code).
    pub async fn close(&mut self, code: Option<u16>, reason: &[u8]) -> io::Result<()> {
        let mut payload = [0u8; 125];
        let n = match code {
            Some(code) => {
                let reason = &reason[..reason.len().min(123)];
                payload[..2].copy_from_slice(&code.to_be_bytes());
                payload[2..2 + reason.len()].copy_from_slice(reason);
                2 + reason.len()
            }
            None => 0,
        };
        self.send(OP_CLOSE, &payload[..n]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_and_reserved_bits_are_refused() {
        assert_eq!(server_header(&[0x81], false), Ok(None));
        assert_eq!(
            server_header(&[0x81, 5], false),
            Ok(Some((true, OP_TEXT, 2, 5)))
        );
        assert_eq!(server_header(&[0x81, 0x85], false), Err(()));
        assert_eq!(server_header(&[0xC1, 5], false), Err(()));
        // With permessage-deflate: RSV1 on a data frame only.
        assert_eq!(
            server_header(&[0xC1, 5], true),
            Ok(Some((true, OP_TEXT, 2, 5)))
        );
        assert_eq!(server_header(&[0xC9, 0], true), Err(()));
        assert_eq!(server_header(&[0xE1, 5], true), Err(()));
    }
}
