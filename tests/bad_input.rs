//! Bad input gets its close code and never hurts another session (SPEC "Close behaviour" 4):
//! each case sends hand-made frames from a raw client while a well-behaved client stays
//! connected, then checks the close code, that the server ended the TCP connection, and that
//! the other client is still served.

mod common;

use std::time::Duration;

use common::{Event, TestServer};
use futures::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsgrace::{CloseResult, CloseState, SessionConfig};
use wsgrace_kit::frame::{
    close_payload, encode_frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT,
};
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::DEADLINE;

const MAX: usize = 1024;

fn config() -> SessionConfig {
    SessionConfig {
        max_message_bytes: MAX,
        ..common::test_config()
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, true, payload)
}

fn fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, 0, opcode, true, payload)
}

/// Sends `bytes` from a raw client and expects a close frame with one of `codes`, then the
/// end of the connection, while another client keeps being served.
async fn expect_failure(bytes: &[Vec<u8>], codes: &[u16]) {
    let mut server = TestServer::start(config());
    let (mut healthy, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect");
    server.next_session().await;

    let mut bad = RawClient::connect(server.addr, "/ws").await;
    let bad_session = server.next_session().await;
    for chunk in bytes {
        bad.send_raw(chunk).await;
    }
    let close = bad.expect_close().await;
    let code = close.close_code().expect("a close code");
    assert!(
        codes.contains(&code),
        "closed {code}, expected one of {codes:?}"
    );
    bad.expect_eof().await;
    let (end, delivered) = server.ended(bad_session.id()).await;
    assert_eq!(end.record.result, CloseResult::Error);
    assert!(delivered.is_empty(), "bad input delivered: {delivered:?}");

    healthy
        .send(Message::Text("still here".into()))
        .await
        .expect("send");
    let echo = timeout(DEADLINE, healthy.next())
        .await
        .expect("no echo")
        .expect("stream ended")
        .expect("ws error");
    assert_eq!(echo, Message::Text("still here".into()));
}

#[tokio::test]
async fn close_codes_that_may_not_be_on_the_wire_get_1002() {
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        expect_failure(&[frame(OP_CLOSE, &close_payload(code, b""))], &[1002]).await;
    }
}

#[tokio::test]
async fn a_one_byte_close_payload_gets_1002() {
    expect_failure(&[frame(OP_CLOSE, &[0x03])], &[1002]).await;
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    expect_failure(&[frame(OP_TEXT, &[b'h', 0xff, 0xfe])], &[1007]).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_text_gets_1007() {
    expect_failure(
        &[
            fragment(false, OP_TEXT, b"ab"),
            fragment(true, OP_CONTINUATION, &[0xc3, 0x28]),
        ],
        &[1007],
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_close_reason_gets_1007_or_1002() {
    expect_failure(
        &[frame(OP_CLOSE, &close_payload(1000, &[0xff, 0xfe]))],
        &[1007, 1002],
    )
    .await;
}

#[tokio::test]
async fn a_message_over_the_limit_gets_1009() {
    expect_failure(&[frame(OP_TEXT, &[b'a'; MAX + 1])], &[1009]).await;
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_gets_1009() {
    let half = [b'a'; MAX / 2 + 1];
    expect_failure(
        &[
            fragment(false, OP_TEXT, &half),
            fragment(true, OP_CONTINUATION, &half),
        ],
        &[1009],
    )
    .await;
}

#[tokio::test]
async fn binary_gets_1003() {
    expect_failure(&[frame(OP_BINARY, b"\x00\x01")], &[1003]).await;
    expect_failure(&[fragment(false, OP_BINARY, b"\x00")], &[1003]).await;
}

#[tokio::test]
async fn an_unmasked_frame_gets_1002() {
    expect_failure(&[encode_frame(true, 0, OP_TEXT, false, b"hi")], &[1002]).await;
}

#[tokio::test]
async fn reserved_bits_get_1002() {
    for rsv in [1, 2, 4] {
        expect_failure(&[encode_frame(true, rsv, OP_TEXT, true, b"hi")], &[1002]).await;
    }
}

#[tokio::test]
async fn reserved_opcodes_get_1002() {
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        expect_failure(&[frame(opcode, b"")], &[1002]).await;
    }
}

#[tokio::test]
async fn a_fragmented_control_frame_gets_1002() {
    expect_failure(&[fragment(false, OP_PING, b"x")], &[1002]).await;
}

#[tokio::test]
async fn a_control_frame_over_125_bytes_gets_1002() {
    expect_failure(&[frame(OP_PING, &[b'p'; 126])], &[1002]).await;
}

#[tokio::test]
async fn a_continuation_without_a_start_gets_1002() {
    expect_failure(&[fragment(true, OP_CONTINUATION, b"x")], &[1002]).await;
}

#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_gets_1002() {
    expect_failure(
        &[fragment(false, OP_TEXT, b"a"), frame(OP_TEXT, b"b")],
        &[1002],
    )
    .await;
}

#[tokio::test]
async fn a_64_bit_length_with_the_top_bit_set_gets_1002() {
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    expect_failure(&[header], &[1002]).await;
}

#[tokio::test]
async fn a_fragmented_message_with_control_frames_between_is_reassembled() {
    let mut server = TestServer::start(config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    for chunk in [
        fragment(false, OP_TEXT, "héllo ".as_bytes()),
        frame(OP_PING, b"p"),
        // A multi-byte character split across fragments.
        fragment(false, OP_CONTINUATION, &[0xc3]),
        fragment(true, OP_CONTINUATION, &[0xa9, b'!']),
    ] {
        client.send_raw(&chunk).await;
    }
    assert_eq!(server.message_from(session.id()).await, "héllo é!");
    let pong = client.read_frame().await.expect("pong");
    assert_eq!((pong.opcode, pong.payload), (0xA, b"p".to_vec()));
}

#[tokio::test]
async fn a_silent_client_is_aborted_after_the_client_timeout() {
    let mut server = TestServer::start(SessionConfig {
        heartbeat_interval: Duration::from_millis(100),
        client_timeout: Duration::from_millis(400),
        ..config()
    });
    let mut silent = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    // Reads the server's pings but never answers: aborted, no close frame.
    silent.expect_eof_without_close().await;
    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Aborted);
    assert_eq!(end.record.result, CloseResult::Aborted);
}

#[tokio::test]
async fn a_client_that_answers_pings_is_not_timed_out() {
    let mut server = TestServer::start(SessionConfig {
        heartbeat_interval: Duration::from_millis(50),
        client_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    // Answer pings for well over the client timeout, then check the session is still open.
    let mut pings = 0;
    while pings < 20 {
        let frame = client.read_frame().await.expect("connection ended");
        assert_eq!(frame.opcode, OP_PING, "unexpected {frame:?}");
        client.send_frame(true, 0xA, &frame.payload).await;
        pings += 1;
    }
    assert_eq!(session.state(), CloseState::Open);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_1008_slow_consumer() {
    let mut server = TestServer::start(SessionConfig {
        outbound_queue: 16,
        ..config()
    });
    let mut client = RawClient::connect_with_buffer(server.addr, "/ws", Some(4096)).await;
    let session = server.next_session().await;

    // Fill the client's socket, the dispatcher's buffer and then the outbound queue.
    let chunk = "x".repeat(16 * 1024);
    let mut sent = 0;
    while session.send_text(chunk.as_str()).await.is_ok() {
        sent += 1;
        assert!(sent < 10_000, "the outbound queue never filled");
    }
    // The client now reads: what was already written, then close 1008.
    let close = client.expect_close().await;
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(close.close_reason(), "slow consumer");
    let (end, _) = server.ended(session.id()).await;
    assert!(end.dropped_slow_consumer > 0);
    assert_eq!(end.record.result, CloseResult::Error);
}

#[tokio::test]
async fn a_session_held_back_by_its_messages_in_flight_is_not_timed_out() {
    // The handler keeps 64 messages "on their way" (their tokens) for longer than the client
    // timeout: the session reads nothing meanwhile, so the client's pongs wait in TCP. That
    // silence is the server's, not the client's: the session stays open, and once the
    // messages are done it reads what waited.
    let mut server = TestServer::start(SessionConfig {
        heartbeat_interval: Duration::from_millis(200),
        client_timeout: Duration::from_secs(1),
        ..config()
    });
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    for i in 0..wsgrace::transport::MAX_MESSAGES_IN_FLIGHT {
        client.send_text(&format!("hold {i}")).await;
    }
    let mut held = Vec::new();
    while held.len() < wsgrace::transport::MAX_MESSAGES_IN_FLIGHT {
        match server.next_event().await {
            Event::Held(_, token) => held.push(token),
            Event::Ended(_, end) => panic!("ended while held: {end:?}"),
            _ => {}
        }
    }
    client.send_text("after").await;
    // Twice the client timeout, answering every ping (nothing to wait for: what is checked is
    // that nothing happens). An end of the connection (the session timed out) ends the wait
    // early, and fails below.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(_)) = tokio::time::timeout_at(until, client.next_frame()).await {}
    assert_eq!(session.state(), wsgrace::CloseState::Open);
    drop(held);
    loop {
        match server.next_event().await {
            Event::Message(id, text) if id == session.id() && text == "after" => break,
            Event::Ended(_, end) => panic!("ended before reading on: {end:?}"),
            _ => {}
        }
    }
}
