//! `server.max_connections_per_ip` and `server.trusted_proxies` (SPEC, config keys): 429
//! before the upgrade once an address has its WebSockets open; the address is the TCP peer,
//! or, behind a trusted proxy, the last untrusted address of `X-Forwarded-For`. Tested
//! straight at the binary and behind the nginx of `deploy/nginx/wsgrace.conf`.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::wsgrace;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use wsgrace_kit::http::metric;
use wsgrace_kit::nginx::{render_deploy_conf, Nginx};
use wsgrace_kit::ws::Ws;
use wsgrace_kit::{free_port, DEADLINE};

const REFUSED: &str = r#"wsgrace_upgrades_refused_total{reason="per_ip_limit"}"#;

/// An upgrade to `addr` (sending `X-Forwarded-For: forwarded` if given): the open WebSocket,
/// or the HTTP status that refused it.
async fn upgrade(addr: SocketAddr, forwarded: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}/ws?room=r")
        .into_client_request()
        .expect("a request");
    if let Some(forwarded) = forwarded {
        request.headers_mut().insert(
            "x-forwarded-for",
            forwarded.parse().expect("a header value"),
        );
    }
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => Err(response.status().as_u16()),
        Ok(Err(err)) => panic!("upgrade to {addr} failed: {err}"),
        Err(_) => panic!("upgrade to {addr} timed out"),
    }
}

/// Upgrades until one succeeds (a place given back is seen by the server after the close).
async fn upgrade_eventually(addr: SocketAddr, forwarded: Option<&str>) -> Ws {
    let started = Instant::now();
    loop {
        match upgrade(addr, forwarded).await {
            Ok(ws) => return ws,
            Err(429) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(status) => panic!("upgrade refused with {status}"),
        }
    }
}

#[tokio::test]
async fn without_a_trusted_proxy_the_peer_counts_and_the_header_is_ignored() {
    let server = wsgrace().start("[server]\nmax_connections_per_ip = 2\n");
    let first = upgrade(server.addr, None).await.expect("the first");
    let _second = upgrade(server.addr, Some("198.51.100.1"))
        .await
        .expect("the second");
    // Another X-Forwarded-For does not make another client: anyone can send the header.
    assert_eq!(
        upgrade(server.addr, Some("198.51.100.2")).await.err(),
        Some(429)
    );
    assert_eq!(upgrade(server.addr, None).await.err(), Some(429));
    assert_eq!(metric(server.addr, REFUSED).await, 2.0);
    assert!(
        server.stderr().contains("max_connections_per_ip"),
        "one warn line per refusal: {}",
        server.stderr()
    );
    // A place is given back when a session ends.
    drop(first);
    let _third = upgrade_eventually(server.addr, None).await;
    assert_eq!(upgrade(server.addr, None).await.err(), Some(429));
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_places() {
    let server = wsgrace()
        .start("[server]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    let _a = upgrade(server.addr, Some("203.0.113.5"))
        .await
        .expect("client A");
    assert_eq!(
        upgrade(server.addr, Some("203.0.113.5")).await.err(),
        Some(429),
        "client A again"
    );
    // A client cannot slip in a fake address left of what the proxy appended.
    assert_eq!(
        upgrade(server.addr, Some("192.0.2.77, 203.0.113.5"))
            .await
            .err(),
        Some(429),
        "client A with a forged first hop"
    );
    let _b = upgrade(server.addr, Some("203.0.113.6"))
        .await
        .expect("client B has its own place");
    assert_eq!(metric(server.addr, REFUSED).await, 2.0);
}

#[tokio::test]
async fn behind_nginx_the_forwarded_client_is_counted() {
    let server = wsgrace()
        .start("[server]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let lb_port = free_port();
    // Both upstream entries name the one node, so that every upgrade reaches its count.
    let port = server.addr.port();
    let nginx = Nginx::start(&render_deploy_conf(lb_port, [port, port]), lb_port);
    // nginx appends the address it saw (127.0.0.1) to what the client sent.
    let _a = upgrade(nginx.addr, Some("203.0.113.5"))
        .await
        .expect("client A through nginx");
    assert_eq!(
        upgrade(nginx.addr, Some("203.0.113.5")).await.err(),
        Some(429),
        "client A again, through nginx"
    );
    let _b = upgrade(nginx.addr, Some("203.0.113.6"))
        .await
        .expect("client B through nginx");
    // Without a header of its own, the client is the address nginx saw.
    let _local = upgrade(nginx.addr, None).await.expect("a local client");
    assert_eq!(upgrade(nginx.addr, None).await.err(), Some(429));
    assert_eq!(metric(server.addr, REFUSED).await, 2.0);
}

#[tokio::test]
async fn a_bad_trusted_proxy_is_a_config_error_naming_the_key() {
    let exit =
        wsgrace().run_to_exit("[server]\ntrusted_proxies = [\"127.0.0.1\", \"not-an-address\"]\n");
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("server.trusted_proxies[1]"),
        "{}",
        exit.stderr
    );
}
