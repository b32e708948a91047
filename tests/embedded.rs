//! The other way in: `wsgrace::start` inside actix-web's own `HttpServer`, as an app embeds a
//! session (the other suites run the binary's way, where the session owns the socket). The
//! close handshake both ways, bad input, and frames that come with the upgrade request. The
//! Autobahn suite (`.ci/conformance`, against `examples/echo`) covers this path in depth.

mod common;

use common::TestServer;
use wsgrace::{CloseOutcome, CloseResult, CloseState, CloseStatus, Initiator};
use wsgrace_kit::frame::{encode_frame, OP_TEXT};
use wsgrace_kit::handshake::upgrade_request;
use wsgrace_kit::raw::RawClient;

#[tokio::test]
async fn messages_and_a_client_close() {
    let mut server = TestServer::start_embedded(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    client.send_text("hello").await;
    assert_eq!(server.message_from(session.id()).await, "hello");
    assert_eq!(client.next_frame().await.expect("an echo").text(), "hello");
    client.send_close(Some(1000), "bye").await;
    assert_eq!(client.expect_close().await.close_code(), Some(1000));
    client.expect_eof().await;
    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Closed);
    assert_eq!(end.record.initiator, Initiator::Client);
    assert_eq!(end.record.result, CloseResult::Acked);
}

#[tokio::test]
async fn an_awaited_server_close() {
    let mut server = TestServer::start_embedded(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    let status = CloseStatus::new(4001, "done").expect("valid status");
    let closing = tokio::spawn(async move { session.close(Some(status)).await });
    assert_eq!(client.expect_close().await.close_code(), Some(4001));
    client.send_close(Some(4001), "").await;
    let outcome = tokio::time::timeout(wsgrace_kit::DEADLINE, closing)
        .await
        .expect("close did not answer")
        .expect("close task");
    assert!(matches!(outcome, Ok(CloseOutcome::Acked(_))), "{outcome:?}");
    client.expect_eof().await;
}

#[tokio::test]
async fn an_unmasked_frame_gets_1002() {
    let server = TestServer::start_embedded(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    client
        .send_raw(&encode_frame(true, 0, OP_TEXT, false, b"unmasked"))
        .await;
    assert_eq!(client.expect_close().await.close_code(), Some(1002));
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    let server = TestServer::start_embedded(common::test_config());
    let mut bytes = upgrade_request(server.addr, "/ws").into_bytes();
    bytes.extend_from_slice(&encode_frame(true, 0, OP_TEXT, true, b"early"));
    let (head, mut client) = RawClient::request(server.addr, &bytes).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(client.next_frame().await.expect("an echo").text(), "early");
}
