//! The seeded generator of hostile input: one connection's worth of bytes per [`Case`].

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::decoder::{close_payload, Frame, Len};
use super::MAX;
use wsgrace_kit::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// One connection's input.
#[derive(Debug, Clone)]
pub struct Case {
    pub index: usize,
    /// What the case tries, for the statistics.
    pub kind: &'static str,
    pub bytes: Vec<u8>,
}

/// Texts with one-, two-, three- and four-byte characters.
const ALPHABET: &[&str] = &["a", "Z", " ", "7", "é", "ß", "€", "中", "𝄞", "😀", "\u{0}"];

struct Generator {
    rng: StdRng,
    /// Pieces of a fragmented text message not sent yet; `Some` once its first piece is out.
    pending: Option<VecDeque<Vec<u8>>>,
}

impl Generator {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *items.choose(&mut self.rng).expect("not empty")
    }

    fn text(&mut self, max_chars: usize) -> String {
        let n = self.rng.gen_range(0..=max_chars);
        (0..n).map(|_| self.pick(ALPHABET)).collect()
    }

    fn key(&mut self) -> Option<[u8; 4]> {
        Some(self.rng.gen())
    }

    fn len_form(&mut self) -> Len {
        match self.rng.gen_range(0..10) {
            0 => Len::Wide16,
            1 => Len::Wide64,
            _ => Len::Minimal,
        }
    }

    fn frame(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            mask: self.key(),
            len: self.len_form(),
            payload,
        }
    }

    fn control_payload(&mut self) -> Vec<u8> {
        let n = self.rng.gen_range(0..=125);
        (0..n).map(|_| self.rng.gen()).collect()
    }

    /// One valid frame; inside a fragmented message, its next piece or a control frame.
    fn valid_frame(&mut self) -> Vec<u8> {
        if let Some(pieces) = self.pending.as_mut() {
            if self.rng.gen_bool(0.6) {
                let piece = pieces.pop_front().unwrap_or_default();
                let fin = pieces.is_empty();
                if fin {
                    self.pending = None;
                }
                return self.frame(fin, OP_CONTINUATION, piece).encode();
            }
            let opcode = if self.rng.gen_bool(0.7) {
                OP_PING
            } else {
                OP_PONG
            };
            let payload = self.control_payload();
            return self.frame(true, opcode, payload).encode();
        }
        match self.rng.gen_range(0..10) {
            0..=3 => {
                let text = self.text(30);
                self.frame(true, OP_TEXT, text.into_bytes()).encode()
            }
            4..=5 => {
                let payload = self.control_payload();
                self.frame(true, OP_PING, payload).encode()
            }
            6 => {
                let payload = self.control_payload();
                self.frame(true, OP_PONG, payload).encode()
            }
            _ if self.pending.is_none() => {
                // A fragmented text, split anywhere, also inside a character.
                let bytes = self.text(40).into_bytes();
                let mut cuts: Vec<usize> = (0..self.rng.gen_range(0..4))
                    .map(|_| self.rng.gen_range(0..=bytes.len()))
                    .collect();
                cuts.sort_unstable();
                cuts.push(bytes.len());
                let mut pieces = VecDeque::new();
                let mut start = 0;
                for cut in cuts {
                    pieces.push_back(bytes[start..cut].to_vec());
                    start = cut;
                }
                let first = pieces.pop_front().unwrap_or_default();
                self.pending = Some(pieces);
                self.frame(false, OP_TEXT, first).encode()
            }
            _ => {
                let payload = self.control_payload();
                self.frame(true, OP_PING, payload).encode()
            }
        }
    }

    fn valid_frames(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.gen_range(0..=max);
        (0..n).flat_map(|_| self.valid_frame()).collect()
    }

    /// Finishes an open fragmented message, if any.
    fn finish_message(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(pieces) = self.pending.as_mut() {
            let piece = pieces.pop_front().unwrap_or_default();
            let fin = pieces.is_empty();
            if fin {
                self.pending = None;
            }
            out.extend(self.frame(fin, OP_CONTINUATION, piece).encode());
        }
        out
    }

    fn invalid_utf8(&mut self) -> Vec<u8> {
        let bad: &[&[u8]] = &[
            &[0xff],
            &[0xc3, 0x28],
            &[0xe2, 0x82, 0x28],
            &[0xed, 0xa0, 0x80],       // a surrogate
            &[0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
            &[0xc0, 0xaf],             // overlong
        ];
        let mut bytes = self.text(5).into_bytes();
        bytes.extend_from_slice(bad.choose(&mut self.rng).expect("not empty"));
        bytes.extend(self.text(5).into_bytes());
        bytes
    }

    /// One frame (or two) that breaks a rule; labelled for the statistics.
    fn defect(&mut self) -> (&'static str, Vec<u8>) {
        let open = self.pending.is_some();
        match self.rng.gen_range(0..14) {
            0 => {
                let opcode = self.pick(&[OP_TEXT, OP_PING, OP_PONG, OP_CLOSE, OP_CONTINUATION]);
                let mut frame = self.frame(true, opcode, b"hi".to_vec());
                frame.mask = None;
                ("unmasked", frame.encode())
            }
            1 => {
                let text = self.text(10);
                let mut frame = self.frame(true, OP_TEXT, text.into_bytes());
                frame.rsv = self.rng.gen_range(1..8);
                ("reserved bits", frame.encode())
            }
            2 => {
                let opcode = self.pick(&[3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]);
                let fin = self.rng.gen();
                (
                    "reserved opcode",
                    self.frame(fin, opcode, b"x".to_vec()).encode(),
                )
            }
            3 => {
                let opcode = self.pick(&[OP_PING, OP_PONG, OP_CLOSE]);
                // Mostly within the message limit; sometimes over it too.
                let n = if self.rng.gen_bool(0.85) {
                    self.rng.gen_range(126..=MAX)
                } else {
                    self.rng.gen_range(MAX + 1..=MAX + 200)
                };
                let mut payload = vec![b'c'; n];
                if opcode == OP_CLOSE {
                    payload[..2].copy_from_slice(&1000u16.to_be_bytes());
                }
                (
                    "control over 125",
                    self.frame(true, opcode, payload).encode(),
                )
            }
            4 => {
                let opcode = self.pick(&[OP_PING, OP_PONG, OP_CLOSE]);
                let payload = if opcode == OP_CLOSE {
                    close_payload(1000, b"")
                } else {
                    self.control_payload()
                };
                (
                    "fragmented control",
                    self.frame(false, opcode, payload).encode(),
                )
            }
            5 if !open => {
                let fin = self.rng.gen();
                let text = self.text(10);
                (
                    "continuation without start",
                    self.frame(fin, OP_CONTINUATION, text.into_bytes()).encode(),
                )
            }
            5 | 6 => {
                let mut out = Vec::new();
                if !open {
                    let text = self.text(5);
                    out.extend(self.frame(false, OP_TEXT, text.into_bytes()).encode());
                }
                let opcode = self.pick(&[OP_TEXT, OP_BINARY]);
                let fin = self.rng.gen();
                let text = self.text(5);
                out.extend(self.frame(fin, opcode, text.into_bytes()).encode());
                ("new message inside a fragmented one", out)
            }
            7 => {
                let mut out = self.finish_message();
                let fin = self.rng.gen();
                out.extend(self.frame(fin, OP_BINARY, vec![0, 1, 2]).encode());
                ("binary", out)
            }
            8 => {
                let mut out = self.finish_message();
                let bytes = self.invalid_utf8();
                if self.rng.gen() {
                    out.extend(self.frame(true, OP_TEXT, bytes).encode());
                } else {
                    let cut = self.rng.gen_range(0..=bytes.len());
                    out.extend(self.frame(false, OP_TEXT, bytes[..cut].to_vec()).encode());
                    let ping = self.control_payload();
                    out.extend(self.frame(true, OP_PING, ping).encode());
                    out.extend(
                        self.frame(true, OP_CONTINUATION, bytes[cut..].to_vec())
                            .encode(),
                    );
                }
                ("invalid utf-8", out)
            }
            9 => {
                let payload = match self.rng.gen_range(0..12) {
                    0 => vec![0x03],
                    n => {
                        let code = [
                            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
                        ][n - 1];
                        close_payload(code, b"bye")
                    }
                };
                (
                    "bad close payload",
                    self.frame(true, OP_CLOSE, payload).encode(),
                )
            }
            10 => {
                let payload = close_payload(1000, &[b'o', 0xff, b'k']);
                (
                    "close reason not utf-8",
                    self.frame(true, OP_CLOSE, payload).encode(),
                )
            }
            11 => {
                let mut out = self.finish_message();
                if self.rng.gen() {
                    let n = self.rng.gen_range(MAX + 1..=MAX + 300);
                    out.extend(self.frame(true, OP_TEXT, vec![b'a'; n]).encode());
                } else {
                    let n = self.rng.gen_range(MAX / 2 + 1..=MAX);
                    out.extend(self.frame(false, OP_TEXT, vec![b'a'; n]).encode());
                    out.extend(self.frame(true, OP_PING, b"mid".to_vec()).encode());
                    out.extend(
                        self.frame(true, OP_CONTINUATION, vec![b'b'; MAX + 1 - n])
                            .encode(),
                    );
                }
                ("message over the limit", out)
            }
            _ => {
                let opcode = self.pick(&[OP_TEXT, OP_BINARY, OP_PING, OP_CONTINUATION]);
                let mut out = vec![0x80 | opcode, 0x80 | 127];
                let len = (1u64 << 63) | self.rng.gen_range(0..1u64 << 32);
                out.extend_from_slice(&len.to_be_bytes());
                let tail = self.rng.gen_range(0..8);
                out.extend((0..tail).map(|_| self.rng.gen::<u8>()));
                ("64-bit length with the top bit", out)
            }
        }
    }

    /// A frame with every field random, weighted towards frames that parse.
    fn random_frame(&mut self) -> Vec<u8> {
        let opcode = if self.rng.gen_bool(0.85) {
            self.pick(&[
                OP_CONTINUATION,
                OP_TEXT,
                OP_BINARY,
                OP_CLOSE,
                OP_PING,
                OP_PONG,
            ])
        } else {
            self.rng.gen_range(0..16)
        };
        let payload: Vec<u8> = match self.rng.gen_range(0..4) {
            0 => {
                let n = self.rng.gen_range(0..140);
                (0..n).map(|_| self.rng.gen()).collect()
            }
            1 if opcode == OP_CLOSE => {
                let code = self.rng.gen_range(990..1020);
                close_payload(code, b"")
            }
            _ => self.text(20).into_bytes(),
        };
        let fin = self.rng.gen_bool(0.75);
        let mut frame = self.frame(fin, opcode, payload);
        if self.rng.gen_bool(0.1) {
            frame.rsv = self.rng.gen_range(1..8);
        }
        if self.rng.gen_bool(0.1) {
            frame.mask = None;
        }
        frame.encode()
    }

    fn random_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.gen_range(1..=max);
        (0..n).map(|_| self.rng.gen()).collect()
    }

    fn valid_close(&mut self) -> Vec<u8> {
        let payload = match self.rng.gen_range(0..4) {
            0 => Vec::new(),
            _ => {
                let code = self.pick(&[1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999]);
                // At most 40 bytes: well within a control frame.
                let reason = self.text(10);
                close_payload(code, reason.as_bytes())
            }
        };
        self.frame(true, OP_CLOSE, payload).encode()
    }

    /// Random frames and bytes after the end: a server must not handle them.
    fn tail(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..4) {
            0 => Vec::new(),
            1 => self.random_bytes(64),
            // A 64-bit length with the top bit set: what `transport::classify` once took for
            // the header of the oversize frame before it.
            2 if self.rng.gen_bool(0.3) => vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
            _ => {
                let mut out = self.valid_frames(2);
                out.extend(self.random_frame());
                out
            }
        }
    }

    fn case(&mut self, index: usize) -> Case {
        self.pending = None;
        let mut bytes = self.valid_frames(4);
        let kind = match self.rng.gen_range(0..100) {
            0..=34 => {
                let (kind, defect) = self.defect();
                bytes.extend(defect);
                bytes.extend(self.tail());
                kind
            }
            35..=44 => {
                bytes.extend(self.valid_close());
                bytes.extend(self.tail());
                "client close"
            }
            45..=54 => {
                let frame = if self.rng.gen() {
                    self.valid_frame()
                } else {
                    self.defect().1
                };
                let cut = self.rng.gen_range(1..frame.len().max(2));
                bytes.extend_from_slice(&frame[..cut.min(frame.len())]);
                "truncated, then silence"
            }
            55..=64 => {
                let opcode = self.pick(&[OP_TEXT, OP_TEXT, OP_PING, OP_CONTINUATION, OP_BINARY]);
                let declared = match self.rng.gen_range(0..4) {
                    0 => self.rng.gen_range(1..=125),
                    1 => self.rng.gen_range(126..=MAX as u64),
                    2 => self.rng.gen_range(MAX as u64 + 1..=0xffff),
                    _ => self.rng.gen_range(0x1_0000..1u64 << 62),
                };
                let sent = self.rng.gen_range(0..declared.min(200)) as usize;
                let payload = vec![b'L'; sent];
                let mut frame = self.frame(true, opcode, payload);
                frame.len = Len::Declared(declared);
                bytes.extend(frame.encode());
                "length beyond the bytes sent, then silence"
            }
            65..=74 => {
                bytes.extend(self.random_bytes(200));
                "random bytes"
            }
            75..=89 => {
                for _ in 0..self.rng.gen_range(1..8) {
                    let frame = if self.rng.gen_bool(0.3) {
                        self.valid_frame()
                    } else {
                        self.random_frame()
                    };
                    bytes.extend(frame);
                }
                "random frames"
            }
            _ => {
                bytes.extend(self.valid_frames(6));
                "valid frames, then silence"
            }
        };
        Case { index, kind, bytes }
    }
}

/// `count` cases, the same for the same seed.
pub fn cases(seed: u64, count: usize) -> Vec<Case> {
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
        pending: None,
    };
    (0..count).map(|index| generator.case(index)).collect()
}
