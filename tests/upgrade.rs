//! The upgraded connection as the binary serves it (`wsgrace::upgrade`): the session owns the
//! socket the HTTP dispatcher hands over. Frames that arrive with the upgrade request are the
//! session's first input; an upgrade that is refused is answered and its connection closed.

mod common;

use common::TestServer;
use wsgrace_kit::frame::{encode_frame, OP_TEXT};
use wsgrace_kit::handshake::upgrade_request;
use wsgrace_kit::raw::RawClient;

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let server = TestServer::start(common::test_config());
    let first = encode_frame(true, 0, OP_TEXT, true, b"early one");
    let second = encode_frame(true, 0, OP_TEXT, true, b"early two");
    // A whole frame in the request's write, and the next one cut at every length of its
    // header and into its payload: what the HTTP parser read past the request goes to the
    // session before anything read from the socket.
    for split in 0..=second.len() {
        let mut bytes = upgrade_request(server.addr, "/ws").into_bytes();
        bytes.extend_from_slice(&first);
        bytes.extend_from_slice(&second[..split]);
        let (head, mut client) = RawClient::request(server.addr, &bytes).await;
        assert!(head.starts_with("HTTP/1.1 101"), "split {split}: {head}");
        client.send_raw(&second[split..]).await;
        for expected in ["early one", "early two"] {
            let frame = client.next_frame().await.expect("an echo");
            assert_eq!(frame.text(), expected, "split {split}");
        }
    }
}

/// The `content-length` of a response head.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"))
}

#[tokio::test]
async fn a_refused_upgrade_is_answered_and_its_connection_closed() {
    let server = TestServer::start(common::test_config());
    let addr = server.addr;
    let valid = upgrade_request(addr, "/ws");
    let cases = [
        (upgrade_request(addr, "/elsewhere"), "HTTP/1.1 404"),
        (
            valid.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            "HTTP/1.1 400",
        ),
        (
            valid.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12"),
            "HTTP/1.1 426",
        ),
        (valid.replacen("GET", "POST", 1), "HTTP/1.1 405"),
    ];
    for (request, status) in cases {
        let (head, mut client) = RawClient::request(addr, request.as_bytes()).await;
        assert!(head.starts_with(status), "{request:?}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        // The whole body, then the server's FIN (a connection left open fails the read's
        // deadline).
        let body = client.read_to_end().await;
        assert_eq!(body.len(), content_length(&head), "{head}");
    }
    // The server goes on serving.
    let mut client = RawClient::connect(addr, "/ws").await;
    client.send_text("after").await;
    assert_eq!(client.next_frame().await.expect("an echo").text(), "after");
}

#[tokio::test]
async fn an_upgrade_over_http_1_0_or_with_a_body_gets_400_before_any_101() {
    // Against the binary, where a chunked request reaches the HTTP routes and one with a
    // `Content-Length` reaches the upgrade out of the dispatcher: both ways refuse.
    let server = common::wsgrace().start("");
    let addr = server.addr;
    let valid = upgrade_request(addr, "/ws?room=framing");
    let with_header =
        |header: &str| valid.replacen("\r\n\r\n", &format!("\r\n{header}\r\n\r\n"), 1);
    let cases = [
        ("HTTP/1.0", valid.replacen("HTTP/1.1", "HTTP/1.0", 1)),
        (
            "chunked body",
            with_header("Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "content-length body",
            with_header("Content-Length: 5") + "hello",
        ),
    ];
    for (case, request) in cases {
        let (head, mut client) = RawClient::request(addr, request.as_bytes()).await;
        let status = head.split(' ').nth(1).unwrap_or_default();
        assert_eq!(status, "400", "{case}: {head}");
        // (HTTP/1.0 closes after the answer without saying so.)
        assert!(
            head.starts_with("HTTP/1.0") || head.to_ascii_lowercase().contains("connection: close"),
            "{case}: {head}"
        );
        let body = String::from_utf8_lossy(&client.read_to_end().await).into_owned();
        assert!(!body.contains("101"), "{case}: {body}");
    }
    // A Content-Length of 0 is no body: switched.
    let (head, _client) =
        RawClient::request(addr, with_header("Content-Length: 0").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // And the server goes on serving.
    let mut client = RawClient::connect(addr, "/ws?room=framing").await;
    let welcome = client.next_frame().await.expect("a welcome");
    assert!(welcome.text().contains("welcome"), "{}", welcome.text());
}
