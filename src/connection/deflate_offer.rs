//! The `permessage-deflate` negotiation of an upgrade (RFC 7692 §5, §7.1): the client's offers
//! in `Sec-WebSocket-Extensions`, read as plain text, and the one answer wsgrace gives.
//!
//! wsgrace compresses a room message once and sends the same bytes to every member, so it
//! agrees to one configuration only: no context kept between messages in either direction
//! (`server_no_context_takeover`, and `client_no_context_takeover` asked of the client, which
//! a server may do whether or not the offer names it, §7.1.1.1 and §7.1.1.2). The answer never
//! names `client_max_window_bits` (the inflater takes any window up to 15 bits). An offer with a
//! `server_max_window_bits` below 15 is accepted with that value and the connection gets no
//! compressed message from the server ([`Deflate::InboundOnly`]): the shared copy is made with
//! the full window. An offer this module cannot read (an unknown or repeated parameter, a value
//! out of range) is declined, and the next offer is tried (§7.1: decline, never fail the
//! handshake); none left: no extension.
//!
//! Pure: no HTTP types, no I/O. It must not decide whether to negotiate at all: that is the
//! caller's (`session.permessage_deflate`).

use crate::connection::transport::Deflate;

/// The extension's name.
pub const EXTENSION: &str = "permessage-deflate";

/// The window every compressed message of the server uses (32 KiB, the only one the shared
/// compressor has).
const FULL_WINDOW_BITS: u8 = 15;

/// What an accepted offer agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// How the connection compresses.
    pub deflate: Deflate,
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub response: String,
}

/// The parameters of one offer that this server can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Offer {
    /// `server_max_window_bits=N`: the client wants our window at most 2^N.
    server_max_window_bits: Option<u8>,
}

/// Reads the client's `Sec-WebSocket-Extensions` header values (each a comma-separated list of
/// offers, RFC 6455 §9.1) and accepts the first `permessage-deflate` offer it can honour; `None`
/// when there is none (the connection then has no extension).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(|offer| read_offer(offer).map(agree))
}

fn agree(offer: Offer) -> Agreement {
    let mut response =
        format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    let deflate = match offer.server_max_window_bits {
        None | Some(FULL_WINDOW_BITS) => Deflate::On,
        Some(_) => Deflate::InboundOnly,
    };
    if let Some(bits) = offer.server_max_window_bits {
        // Accepted with the value asked for (§7.1.2.1): this server sends such a peer nothing
        // compressed, or compresses with 15 bits when 15 was asked.
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Agreement { deflate, response }
}

/// One offer (`permessage-deflate; param; param=value`), if it is this extension's and every
/// parameter is known, given once, and valid (§7.1); `None` otherwise.
fn read_offer(offer: &str) -> Option<Offer> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = Vec::with_capacity(4);
    let mut read = Offer::default();
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(value)) => {
                read.server_max_window_bits = Some(window_bits(value)?);
            }
            // A hint of the client's own window (or none): any is fine for our inflater.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(value)) => {
                window_bits(value)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(read)
}

/// A window size: a decimal integer from 8 to 15 without leading zeros (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value as a token or a quoted string (RFC 6455 §9.1 allows both; §7.1 of RFC 7692
/// says the unquoted value must then fit the token rules): the value, unescaped.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        // Window sizes are digits: an escape in one makes it invalid anyway.
        Some(rest) => rest
            .strip_suffix('"')
            .filter(|inner| !inner.contains(['"', '\\'])),
        None => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    /// What an offer gets: the mode and the answer's header value, or no extension.
    type Answer = Option<(Deflate, String)>;

    fn answer(values: &[&str]) -> Answer {
        negotiate(values.iter().copied()).map(|a| (a.deflate, a.response))
    }

    #[test]
    fn offers_and_answers() {
        let on = |response: &str| Some((Deflate::On, response.to_owned()));
        let table: &[(&[&str], Answer)] = &[
            // Nothing offered, or another extension only.
            (&[], None),
            (&[""], None),
            (&["x-webkit-deflate-frame"], None),
            (&["permessage-foo"], None),
            // What browsers send, what the Autobahn suite's default offer is, and plain.
            (&["permessage-deflate; client_max_window_bits"], on(BOTH)),
            (
                &["permessage-deflate; client_no_context_takeover; client_max_window_bits"],
                on(BOTH),
            ),
            (&["permessage-deflate"], on(BOTH)),
            (
                &["PerMessage-Deflate ;server_no_context_takeover"],
                on(BOTH),
            ),
            (&["permessage-deflate; client_max_window_bits=10"], on(BOTH)),
            (
                &["permessage-deflate; client_max_window_bits=\"9\""],
                on(BOTH),
            ),
            // A window asked of the server: 15 is ours; smaller ones get plain messages.
            (
                &["permessage-deflate; server_max_window_bits=15"],
                on(&format!("{BOTH}; server_max_window_bits=15")),
            ),
            (
                &["permessage-deflate; server_no_context_takeover; server_max_window_bits=8"],
                Some((
                    Deflate::InboundOnly,
                    format!("{BOTH}; server_max_window_bits=8"),
                )),
            ),
            // Offers that cannot be read are declined; the next one is taken.
            (&["permessage-deflate; unknown_param"], None),
            (&["permessage-deflate; server_max_window_bits"], None),
            (&["permessage-deflate; server_max_window_bits=7"], None),
            (&["permessage-deflate; server_max_window_bits=16"], None),
            (&["permessage-deflate; server_max_window_bits=08"], None),
            (&["permessage-deflate; server_max_window_bits=1x"], None),
            (&["permessage-deflate; client_max_window_bits=20"], None),
            (&["permessage-deflate; server_no_context_takeover=1"], None),
            (
                &["permessage-deflate; client_no_context_takeover=\"x\""],
                None,
            ),
            (
                &["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
                None,
            ),
            (
                &["permessage-deflate; server_max_window_bits=\"1\\0\""],
                None,
            ),
            (
                &["permessage-deflate; bad, permessage-deflate; client_max_window_bits"],
                on(BOTH),
            ),
            (
                &[
                    "x-webkit-deflate-frame",
                    "permessage-deflate; server_max_window_bits=9",
                ],
                Some((
                    Deflate::InboundOnly,
                    format!("{BOTH}; server_max_window_bits=9"),
                )),
            ),
        ];
        for (values, expected) in table {
            assert_eq!(&answer(values), expected, "{values:?}");
        }
    }
}
