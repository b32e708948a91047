//! Who is connecting: the client address of an upgrade, and the count of open WebSockets per
//! address behind `server.max_connections_per_ip`.
//!
//! The client address is the TCP peer, unless the peer is one of `server.trusted_proxies`:
//! then `X-Forwarded-For` is read from the right (each proxy appends the address it saw), and
//! the first address that is not itself a trusted proxy is the client. Anything left of it
//! was written by the client and is ignored, so a client cannot pick its own address.
//!
//! [`client_address`] is pure; [`AddressLimit`] is the shared count, whose [`AddressSlot`]
//! gives the place back when the session ends. This module must not know sessions, HTTP
//! responses or metrics: `server.rs` refuses, counts and logs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

/// The client address of a request from `peer` that carried the `X-Forwarded-For` values
/// `forwarded_for` (every header line, in order), given the trusted proxies.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(address) = parse_hop(hop) else {
            // Not an address: written by someone untrusted; the last good hop is as far as
            // the chain can be believed.
            break;
        };
        client = address;
        if !is_trusted(address, trusted) {
            break;
        }
    }
    client
}

fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|network| network.contains(&address))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let address = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()?;
    Some(address.to_canonical())
}

/// Open WebSockets per client address, at most `limit` each (0 = no limit, nothing counted).
#[derive(Debug, Clone)]
pub struct AddressLimit {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// An address already has `server.max_connections_per_ip` WebSockets open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} already has {limit} WebSockets open")]
pub struct AtLimit {
    /// The client address.
    pub address: IpAddr,
    /// The limit.
    pub limit: usize,
}

/// One place of an address, held for a session's life; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressSlot {
    address: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressLimit {
    /// A count allowing `limit` open WebSockets per address (0 = no limit).
    pub fn new(limit: usize) -> Self {
        AddressLimit {
            limit,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for one more WebSocket from `address`, or [`AtLimit`] when it has `limit`
    /// open. With no limit nothing is counted: `Ok(None)`.
    pub fn acquire(&self, address: IpAddr) -> Result<Option<AddressSlot>, AtLimit> {
        if self.limit == 0 {
            return Ok(None);
        }
        let mut open = lock(&self.open);
        let count = open.entry(address).or_default();
        if *count >= self.limit {
            return Err(AtLimit {
                address,
                limit: self.limit,
            });
        }
        *count += 1;
        Ok(Some(AddressSlot {
            address,
            open: self.open.clone(),
        }))
    }

    /// Open WebSockets from `address` (for tests and the curious).
    pub fn open_from(&self, address: IpAddr) -> usize {
        lock(&self.open).get(&address).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

fn lock(open: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    // A panic while holding it leaves plain counts behind: still usable.
    open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .unwrap_or_else(|_| IpNet::from(ip(entry)))
            })
            .collect()
    }

    #[test]
    fn the_client_address() {
        let proxies = nets(&["127.0.0.1", "10.0.0.0/8"]);
        // (peer, X-Forwarded-For lines, trusted, expected)
        let cases: Vec<(&str, Vec<&str>, &[IpNet], &str)> = vec![
            ("203.0.113.9", vec![], &[], "203.0.113.9"),
            ("203.0.113.9", vec!["1.2.3.4"], &[], "203.0.113.9"), // nobody trusted
            ("203.0.113.9", vec!["1.2.3.4"], &proxies, "203.0.113.9"), // peer untrusted
            ("127.0.0.1", vec![], &proxies, "127.0.0.1"),
            ("127.0.0.1", vec!["198.51.100.7"], &proxies, "198.51.100.7"),
            // The client's own header is left of what the proxies appended.
            (
                "127.0.0.1",
                vec!["6.6.6.6, 198.51.100.7, 10.1.2.3"],
                &proxies,
                "198.51.100.7",
            ),
            // Several header lines are one list.
            (
                "127.0.0.1",
                vec!["6.6.6.6", "198.51.100.7, 10.1.2.3"],
                &proxies,
                "198.51.100.7",
            ),
            // Every hop trusted: the leftmost.
            (
                "127.0.0.1",
                vec!["10.0.0.1, 10.0.0.2"],
                &proxies,
                "10.0.0.1",
            ),
            // Garbage stops the walk at the last good hop.
            (
                "127.0.0.1",
                vec!["1.1.1.1, junk, 10.0.0.2"],
                &proxies,
                "10.0.0.2",
            ),
            (
                "127.0.0.1",
                vec!["198.51.100.7:4711"],
                &proxies,
                "198.51.100.7",
            ),
            (
                "127.0.0.1",
                vec!["[2001:db8::1]:80"],
                &proxies,
                "2001:db8::1",
            ),
            // An IPv4 peer seen as IPv6 is the IPv4 address.
            (
                "::ffff:127.0.0.1",
                vec!["198.51.100.7"],
                &proxies,
                "198.51.100.7",
            ),
        ];
        for (peer, lines, trusted, expected) in cases {
            assert_eq!(
                client_address(ip(peer), lines.iter().copied(), trusted),
                ip(expected),
                "peer {peer}, X-Forwarded-For {lines:?}"
            );
        }
    }

    #[test]
    fn places_per_address() {
        let limit = AddressLimit::new(2);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let first = limit.acquire(a).expect("a place");
        let second = limit.acquire(a).expect("a place");
        assert_eq!(
            limit.acquire(a).map(|_| ()),
            Err(AtLimit {
                address: a,
                limit: 2
            }),
            "the third from one address"
        );
        let other = limit
            .acquire(b)
            .expect("another address has its own places");
        assert_eq!(limit.open_from(a), 2);
        drop(first);
        assert_eq!(limit.open_from(a), 1);
        let again = limit.acquire(a).expect("a place given back");
        drop((second, again, other));
        assert_eq!(limit.open_from(a), 0);
        assert_eq!(limit.open_from(b), 0);
        assert!(lock(&limit.open).is_empty(), "no entry left behind");

        let unlimited = AddressLimit::new(0);
        for _ in 0..10 {
            assert!(matches!(unlimited.acquire(a), Ok(None)));
        }
    }
}
