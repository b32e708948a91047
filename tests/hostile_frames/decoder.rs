//! Frames as a hostile client writes them, and the reference decoder: for any byte stream,
//! how wsgrace must end the connection, which pongs it sends and which texts it delivers.
//!
//! The decoder is written from RFC 6455, the SPEC and the README's bad-input table, plus the
//! two moments at which a server judges a frame:
//!
//! 1. **The header**, as soon as its length field is complete (before the mask key and the
//!    payload): reserved bits, a missing mask or an unknown opcode (1002, from the first two
//!    bytes), a 64-bit length with the top bit set (1002), a control frame over 125 bytes
//!    (1002, even when it is over the message limit as well), a frame over the message limit
//!    (1009, whatever its opcode). A server that waited for such a payload could be made to
//!    buffer up to 2^63 bytes (`transport::check_header`). The decoder predicts these as
//!    [`Ending::Fail`], whether the payload comes or not.
//! 2. **The whole frame**: the frame's place in the message stream (a fragmented control
//!    frame, a continuation without a start, a new message inside a fragmented one: 1002; a
//!    continuation that makes the message too big: 1009), a binary frame (1003), the close
//!    payload (1002, or 1007 for its reason), the UTF-8 of a text message once it is complete
//!    (1007). If the frame never completes, see [`Ending::FailOrAbort`].

use super::MAX;
use wsgrace_kit::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// How the payload length is written.
#[derive(Debug, Clone, Copy)]
pub enum Len {
    /// The shortest encoding.
    Minimal,
    /// Always the 16-bit form (legal but not minimal for short payloads).
    Wide16,
    /// Always the 64-bit form.
    Wide64,
    /// A length that is not the payload's: the payload is sent as it is.
    Declared(u64),
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: Len,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(fin: bool, opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            len: Len::Minimal,
            payload: payload.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let (n, form) = match self.len {
            Len::Declared(n) => (n, Len::Minimal),
            form => (self.payload.len() as u64, form),
        };
        match form {
            Len::Minimal if n < 126 => out.push(mask_bit | n as u8),
            Len::Minimal | Len::Wide16 if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// How the connection must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Fail the connection: a close frame with one of these codes, then EOF. One code, except
    /// for a close reason that is not UTF-8, which the SPEC lets a server answer 1007 or 1002.
    Fail(Vec<u16>),
    /// A valid client close: the reply carries the same code (or none), then EOF.
    Clean(Option<u16>),
    /// The input stops before a frame can be judged, or goes silent: EOF without a close frame,
    /// after the client timeout.
    Abort,
    /// The header shows a failure that is judged on the whole frame (2. above), and the rest
    /// of the frame never comes. The only answer left open: the SPEC fixes the code but not the
    /// moment, so a server may fail at once, or wait for the frame (at most the message limit,
    /// so nothing unbounded is buffered) and abort after the client timeout. wsgrace does the
    /// latter: it judges only lengths from the header and leaves the rest to actix-http's codec.
    FailOrAbort(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    pub ending: Ending,
    /// Pong payloads, in order: every ping before the end is answered before the close frame.
    pub pongs: Vec<Vec<u8>>,
    /// Text messages delivered (and so echoed by the test handler), in order.
    pub texts: Vec<String>,
}

fn is_control(opcode: u8) -> bool {
    opcode >= 8
}

fn is_known_opcode(opcode: u8) -> bool {
    matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    )
}

pub fn predict(bytes: &[u8]) -> Prediction {
    let mut prediction = Prediction {
        ending: Ending::Abort,
        pongs: Vec::new(),
        texts: Vec::new(),
    };
    let fail = |mut prediction: Prediction, code| {
        prediction.ending = Ending::Fail(vec![code]);
        prediction
    };
    // The text message being reassembled from fragments.
    let mut partial: Option<Vec<u8>> = None;
    let mut rest = bytes;
    loop {
        // 1. The header.
        let [first, second, ..] = *rest else {
            return prediction;
        };
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        if first & 0x70 != 0 || second & 0x80 == 0 || !is_known_opcode(opcode) {
            return fail(prediction, 1002);
        }
        let (len, header) = match second & 0x7f {
            126 => match rest.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return prediction,
            },
            127 => match rest.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
                None => return prediction,
            },
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 || (is_control(opcode) && len > 125) {
            return fail(prediction, 1002);
        }
        if len > MAX as u64 {
            return fail(prediction, 1009);
        }

        // 2. The whole frame. Failures its header already shows, in the codec's order.
        let message_len = partial.as_ref().map(Vec::len);
        // A fragmented control frame, a continuation without a start, a new message inside a
        // fragmented one.
        let out_of_place = (is_control(opcode) && !fin)
            || (opcode == OP_CONTINUATION && message_len.is_none())
            || (matches!(opcode, OP_TEXT | OP_BINARY) && message_len.is_some());
        let frame_failure = if out_of_place {
            Some(1002)
        } else if opcode == OP_BINARY {
            Some(1003)
        } else if opcode == OP_CONTINUATION && message_len.unwrap_or(0) as u64 + len > MAX as u64 {
            Some(1009)
        } else {
            None
        };
        let frame_len = header + 4 + len as usize;
        if rest.len() < frame_len {
            if let Some(code) = frame_failure {
                prediction.ending = Ending::FailOrAbort(code);
            }
            return prediction;
        }
        if let Some(code) = frame_failure {
            return fail(prediction, code);
        }
        let key = &rest[header..header + 4];
        let payload: Vec<u8> = rest[header + 4..frame_len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        rest = &rest[frame_len..];

        match opcode {
            OP_PING => prediction.pongs.push(payload),
            OP_PONG => {}
            OP_CLOSE => {
                prediction.ending = match payload.as_slice() {
                    [] => Ending::Clean(None),
                    [_] => Ending::Fail(vec![1002]),
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        if !wsgrace::close::is_sendable_code(code) {
                            Ending::Fail(vec![1002])
                        } else if std::str::from_utf8(reason).is_err() {
                            // SPEC: "close 1007 or 1002"; actix-http reports 1002.
                            Ending::Fail(vec![1007, 1002])
                        } else {
                            Ending::Clean(Some(code))
                        }
                    }
                };
                return prediction;
            }
            OP_TEXT if !fin => partial = Some(payload),
            OP_TEXT => match String::from_utf8(payload) {
                Ok(text) => prediction.texts.push(text),
                Err(_) => return fail(prediction, 1007),
            },
            _ => {
                let mut message = partial.take().expect("checked: a message is open");
                message.extend_from_slice(&payload);
                if !fin {
                    partial = Some(message);
                } else {
                    // A fragmented message's UTF-8 is judged once it is complete: a piece may
                    // end inside a character. (RFC 6455 §8.1 lets a server fail as soon as the
                    // bytes cannot become valid; wsgrace does not.)
                    match String::from_utf8(message) {
                        Ok(text) => prediction.texts.push(text),
                        Err(_) => return fail(prediction, 1007),
                    }
                }
            }
        }
    }
}

#[test]
fn the_reference_decoder_agrees_with_the_spec_table() {
    let frame = |fin, opcode, payload: &[u8]| Frame::new(fin, opcode, payload).encode();
    let ending = |bytes: &[u8]| predict(bytes).ending;
    let fail = |code| Ending::Fail(vec![code]);
    assert_eq!(ending(&frame(true, OP_TEXT, b"hi")), Ending::Abort);
    assert_eq!(ending(&frame(true, OP_BINARY, b"hi")), fail(1003));
    assert_eq!(ending(&frame(true, OP_TEXT, &[0xff])), fail(1007));
    assert_eq!(ending(&frame(true, OP_TEXT, &[b'a'; MAX + 1])), fail(1009));
    assert_eq!(
        ending(&frame(true, OP_BINARY, &[b'a'; MAX + 1])),
        fail(1009)
    );
    assert_eq!(ending(&frame(true, OP_PING, &[b'a'; 126])), fail(1002));
    assert_eq!(ending(&frame(true, OP_PING, &[b'a'; MAX + 1])), fail(1002));
    assert_eq!(ending(&frame(false, OP_PING, b"")), fail(1002));
    assert_eq!(ending(&frame(true, OP_CONTINUATION, b"")), fail(1002));
    assert_eq!(ending(&frame(true, OP_CLOSE, &[3])), fail(1002));
    assert_eq!(
        ending(&frame(true, OP_CLOSE, &close_payload(1005, b""))),
        fail(1002)
    );
    assert_eq!(ending(&frame(true, OP_CLOSE, b"")), Ending::Clean(None));
    assert_eq!(
        ending(&frame(true, OP_CLOSE, &close_payload(4000, b"ok"))),
        Ending::Clean(Some(4000))
    );
    let mut unmasked = Frame::new(true, OP_TEXT, b"hi".to_vec());
    unmasked.mask = None;
    assert_eq!(ending(&unmasked.encode()), fail(1002));
    let mut fragmented = frame(false, OP_TEXT, "h\u{e9}".as_bytes());
    fragmented.extend(frame(true, OP_PING, b"p"));
    fragmented.extend(frame(true, OP_CONTINUATION, b"!"));
    let prediction = predict(&fragmented);
    assert_eq!(prediction.texts, vec!["h\u{e9}!".to_string()]);
    assert_eq!(prediction.pongs, vec![b"p".to_vec()]);

    // Lengths are judged from the header alone: the payload need not come.
    let mut declared = Frame::new(true, OP_TEXT, b"abc".to_vec());
    declared.len = Len::Declared(10);
    assert_eq!(ending(&declared.encode()), Ending::Abort);
    declared.len = Len::Declared(MAX as u64 + 1);
    assert_eq!(ending(&declared.encode()), fail(1009));
    // ... as soon as the length field is complete, before the mask key.
    assert_eq!(ending(&declared.encode()[..4]), fail(1009));
    assert_eq!(ending(&declared.encode()[..3]), Ending::Abort);
    let mut ping = Frame::new(true, OP_PING, Vec::new());
    ping.len = Len::Declared(MAX as u64 + 1);
    assert_eq!(ending(&ping.encode()), fail(1002));
    let top_bit = [0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(ending(&top_bit), fail(1002));
    assert_eq!(ending(&top_bit[..9]), Ending::Abort);
    // What only the whole frame shows may wait for it.
    let mut fragmented_ping = Frame::new(false, OP_PING, Vec::new());
    fragmented_ping.len = Len::Declared(10);
    assert_eq!(ending(&fragmented_ping.encode()), Ending::FailOrAbort(1002));
    let mut binary = Frame::new(true, OP_BINARY, Vec::new());
    binary.len = Len::Declared(10);
    assert_eq!(ending(&binary.encode()), Ending::FailOrAbort(1003));
    let mut too_much = frame(false, OP_TEXT, &[b'a'; MAX]);
    too_much.extend(&frame(true, OP_CONTINUATION, b"b")[..2]);
    assert_eq!(ending(&too_much), Ending::FailOrAbort(1009));
}
