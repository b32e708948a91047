//! Free loopback ports: bound on port 0 and released, for the programs that must be told a
//! port (redis-server, nginx, chromedriver). Never a fixed port.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A free loopback port (bound and released: good enough on a test machine; a program that
/// loses the race fails to start and says so).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// The distance from a Redis Cluster node's port to its cluster bus port.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// The lowest port [`free_cluster_port`] answers.
const CLUSTER_PORTS_FROM: u16 = 10_000;

/// A free loopback port for a Redis Cluster node: below 55536, with its cluster bus port
/// (port + 10000) free too; `None` when no such pair is free. Both are taken below the
/// kernel's ephemeral range where there is room (by default 32768 up: the ports
/// 10000–22767 and their buses), so that an outgoing connection does not take one between
/// this check and the node's bind. Scanned from a random start, and each call of this process
/// starts past the last one's answer, so two nodes started one after the other (or by two
/// tests at once) are not given one port.
pub fn free_cluster_port() -> Option<u16> {
    let (from, to) = cluster_port_range();
    let span = u32::from(to - from) + 1;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(rand::random::<u32>() % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(u32::from(from) + offset) else {
            continue;
        };
        if is_free(port) && is_free(port + CLUSTER_BUS_OFFSET) {
            return Some(port);
        }
    }
    None
}

/// The ports [`free_cluster_port`] picks from: below the ephemeral range (bus included) when
/// at least 1000 such ports exist, else every port up to 55535.
fn cluster_port_range() -> (u16, u16) {
    const HIGHEST: u16 = u16::MAX - CLUSTER_BUS_OFFSET;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok());
    match ephemeral_from {
        Some(low) if low >= CLUSTER_PORTS_FROM + CLUSTER_BUS_OFFSET + 1000 => (
            CLUSTER_PORTS_FROM,
            (low - CLUSTER_BUS_OFFSET - 1).min(HIGHEST),
        ),
        _ => (CLUSTER_PORTS_FROM, HIGHEST),
    }
}

/// Whether `port` can be bound on loopback now.
fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ports_and_their_buses_are_free_and_below_55536() {
        let a = free_cluster_port().expect("a free cluster port");
        let b = free_cluster_port().expect("another free cluster port");
        assert_ne!(a, b);
        for port in [a, b] {
            assert!(port < 55_536, "{port}");
            assert!(
                is_free(port) && is_free(port + CLUSTER_BUS_OFFSET),
                "{port}"
            );
        }
    }
}
