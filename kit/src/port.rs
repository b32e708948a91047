//! Free loopback ports: bound on port 0 and released, for the programs that must be told a
//! port (redis-server, nginx, chromedriver). Never a fixed port.

/// A free loopback port (bound and released: good enough on a test machine; a program that
/// loses the race fails to start and says so).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}
