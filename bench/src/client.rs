//! A minimal WebSocket client over a tokio `TcpStream`, made for load generation: the
//! opening handshake, masked client frames, and a frame reader that borrows payloads out
//! of one reusable buffer (no allocation per frame). It knows nothing of chat or of the
//! scenarios; it must not hide protocol events from them (pings, closes and the way the
//! TCP connection ended are all reported to the caller).

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

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
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    wr.write_all(request.as_bytes()).await?;
    let mut reader = WsReader {
        rd,
        buf: BytesMut::with_capacity(1024),
        consumed: 0,
        fragments: Vec::new(),
        fragments_ready: false,
    };
    reader.read_response().await?;
    let writer = WsWriter {
        wr,
        out: Vec::with_capacity(256),
        rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
    };
    Ok((reader, writer))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl WsReader {
    async fn read_response(&mut self) -> io::Result<()> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = &self.buf[..end];
                let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
                if !status.starts_with(b"HTTP/1.1 101") {
                    return Err(invalid(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(status)
                    )));
                }
                self.buf.advance(end + 4);
                return Ok(());
            }
            if self.buf.len() > 16 * 1024 {
                return Err(invalid("response headers too long"));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the handshake",
                ));
            }
        }
    }

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
            match parse_header(&self.buf) {
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
        let Ok(Some((_, opcode, start, len))) = parse_header(&self.buf) else {
            return Read::End(End::Error);
        };
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
            OP_CONT => Frame::Message {
                payload: &self.fragments,
            },
            _ => Frame::Message { payload },
        })
    }

    /// Decides what a complete frame at the buffer front means: `Some(true)` = hand it out,
    /// `Some(false)` = a fragment was stored, `None` = protocol error.
    fn classify(&mut self, fin: bool, opcode: u8, start: usize, len: usize) -> Option<bool> {
        let payload = &self.buf[start..start + len];
        match opcode {
            OP_TEXT | OP_BINARY if fin => Some(true),
            OP_TEXT | OP_BINARY => {
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                Some(false)
            }
            OP_CONT => {
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

/// Parses a server frame header: `(fin, opcode, payload_start, payload_len)`, `None` if
/// more bytes are needed, `Err` if the server masked its frame or used reserved bits.
fn parse_header(buf: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return Err(());
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            Ok(Some((
                fin,
                opcode,
                4,
                u16::from_be_bytes([buf[2], buf[3]]) as usize,
            )))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            let len = usize::try_from(u64::from_be_bytes(len)).map_err(|_| ())?;
            Ok(Some((fin, opcode, 10, len)))
        }
        n => Ok(Some((fin, opcode, 2, n as usize))),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl WsWriter {
    /// Sends one masked frame with FIN set.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift64: masking keys need not be secret for a load generator.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let key = (self.rng as u32).to_be_bytes();
        self.out.extend_from_slice(&key);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        for (i, b) in self.out[start..].iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
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
    fn header_lengths() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(parse_header(&[0x81, 5]), Ok(Some((true, 1, 2, 5))));
        assert_eq!(
            parse_header(&[0x01, 126, 1, 0]),
            Ok(Some((false, 1, 4, 256)))
        );
        assert_eq!(parse_header(&[0x82, 126, 1]), Ok(None));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long), Ok(Some((true, 2, 10, 70_000))));
        // Masked server frame and reserved bits are errors.
        assert_eq!(parse_header(&[0x81, 0x85]), Err(()));
        assert_eq!(parse_header(&[0xC1, 5]), Err(()));
    }
}
