//! WebSocket frames as bytes (RFC 6455 section 5): encoding a client's frame (masked, or
//! not, as a hostile client may send it) and parsing the server's. Pure functions over byte
//! slices; the clients in [`crate::raw`] and the bench's load generator read and write with
//! them.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The masking key of [`encode_frame`]: any key will do for a test.
const TEST_MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Appends a frame to `out`: FIN, the three RSV bits, the opcode, the length, and the
/// payload masked with `mask` (unmasked without one).
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    out.push((if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Encodes a frame as a client would (masked unless `masked` is false).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_frame_into(
        &mut out,
        fin,
        rsv,
        opcode,
        masked.then_some(TEST_MASK),
        payload,
    );
    out
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// The head of a frame: its first two bytes and its extended length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// The three RSV bits, low bits.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// Bytes before the payload (the masking key included).
    pub header_len: usize,
    pub payload_len: u64,
}

impl FrameHeader {
    /// The whole frame's length in bytes, if it fits a `usize`.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len)
            .ok()?
            .checked_add(self.header_len)
    }
}

/// Parses the header at the front of `buf`; `None` if more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Option<FrameHeader> {
    let [first, second, rest @ ..] = buf else {
        return None;
    };
    let (payload_len, len_bytes) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
        ),
        127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
        n => (u64::from(n), 0),
    };
    let masked = second & 0x80 != 0;
    Some(FrameHeader {
        fin: first & 0x80 != 0,
        rsv: (first >> 4) & 0x7,
        opcode: first & 0x0f,
        masked,
        header_len: 2 + len_bytes + if masked { 4 } else { 0 },
        payload_len,
    })
}

/// RSV1 in [`FrameHeader::rsv`] and [`RawFrame::rsv`]: a `permessage-deflate` message.
pub const RSV1: u8 = 0b100;

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// The three RSV bits, low bits ([`RSV1`]: compressed).
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame, `None` for an empty payload.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }

    /// The text of a whole text message in one frame, inflated when it is compressed (RSV1).
    pub fn text(&self) -> String {
        assert_eq!(self.opcode, OP_TEXT, "not a text frame: {self:?}");
        let payload = if self.compressed() {
            crate::deflate::inflate_message(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(payload).expect("server sent invalid UTF-8")
    }

    /// Whether RSV1 is set: a `permessage-deflate` compressed message.
    pub fn compressed(&self) -> bool {
        self.rsv & RSV1 != 0
    }
}

/// Parses one server frame from `buf`: the frame and the bytes it used; `None` if more bytes
/// are needed. Panics on a masked frame: a server must never send one.
pub fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let header = parse_header(buf)?;
    assert!(!header.masked, "server frames must not be masked");
    let len = header.frame_len()?;
    let payload = buf.get(header.header_len..len)?.to_vec();
    Some((
        RawFrame {
            fin: header.fin,
            rsv: header.rsv,
            opcode: header.opcode,
            payload,
        },
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(parse_header(&[0x81]), None);
        let short = parse_header(&[0x81, 5]).expect("a header");
        assert_eq!(
            (short.fin, short.opcode, short.header_len, short.payload_len),
            (true, OP_TEXT, 2, 5)
        );
        let medium = parse_header(&[0x01, 126, 1, 0]).expect("a header");
        assert_eq!(
            (medium.fin, medium.header_len, medium.payload_len),
            (false, 4, 256)
        );
        assert_eq!(parse_header(&[0x82, 126, 1]), None);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        let long = parse_header(&long).expect("a header");
        assert_eq!((long.header_len, long.payload_len), (10, 70_000));
        let masked = parse_header(&[0xC1, 0x85]).expect("a header");
        assert_eq!((masked.masked, masked.rsv, masked.header_len), (true, 4, 6));
    }

    #[test]
    fn a_frame_encoded_unmasked_parses_back() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let bytes = encode_frame(true, 0, OP_BINARY, false, &payload);
            let (frame, used) = parse_server_frame(&bytes).expect("a whole frame");
            assert_eq!(
                (frame.opcode, frame.payload.len(), used),
                (OP_BINARY, len, bytes.len())
            );
            assert_eq!(parse_server_frame(&bytes[..bytes.len() - 1]), None);
        }
    }

    #[test]
    fn masking_is_undone_by_the_same_key() {
        let bytes = encode_frame(true, 0, OP_TEXT, true, b"hello");
        let header = parse_header(&bytes).expect("a header");
        let key = &bytes[2..6];
        let unmasked: Vec<u8> = bytes[header.header_len..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
    }
}
