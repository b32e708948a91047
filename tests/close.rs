//! The close handshake against a real server: client-initiated closes, awaited and
//! fire-and-forget server closes, timeouts, cancellation and the errors of close requests
//! (SPEC "Close behaviour" 1, 2, 3 and 5; "The library").

mod common;

use common::TestServer;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgrace::{
    CancellationToken, Close, CloseError, CloseOutcome, CloseResult, CloseState, CloseStatus,
    Initiator,
};
use wsgrace_kit::frame::{OP_CLOSE, OP_TEXT};
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::DEADLINE;

fn status(code: u16, reason: &str) -> Option<CloseStatus> {
    Some(CloseStatus::new(code, reason).expect("valid status"))
}

#[tokio::test]
async fn client_close_is_echoed_and_the_server_ends_the_connection() {
    let mut server = TestServer::start(common::test_config());
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("connect");
    let session = server.next_session().await;

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("send close");
    let reply = timeout(DEADLINE, ws.next()).await.expect("no reply");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the close echo, got {other:?}"),
    }
    // tungstenite ends the stream once the server closed TCP after the handshake.
    let end = timeout(DEADLINE, ws.next()).await.expect("TCP not closed");
    assert!(end.is_none(), "stream not ended: {end:?}");

    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Closed);
    assert_eq!(end.record.initiator, Initiator::Client);
    assert_eq!(end.record.result, CloseResult::Acked);
}

#[tokio::test]
async fn raw_client_close_1000_gets_1000_then_tcp_close() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    client.send_close(Some(1000), "bye").await;
    let reply = client.expect_close().await;
    assert_eq!(reply.close_code(), Some(1000));
    client.expect_eof().await;
    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Closed);
}

#[tokio::test]
async fn close_without_code_is_answered_without_code() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    client.send_close(None, "").await;
    let reply = client.expect_close().await;
    assert!(reply.payload.is_empty(), "reply has a payload: {reply:?}");
    client.expect_eof().await;
    assert_eq!(server.ended(session.id()).await.0.state, CloseState::Closed);
}

#[tokio::test]
async fn awaited_close_answers_after_the_ack_and_drops_late_text() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    let closer = session.clone();
    let mut close = tokio::spawn(async move { closer.close(status(1001, "going away")).await });
    let frame = client.expect_close().await;
    assert_eq!(frame.close_code(), Some(1001));
    assert_eq!(frame.close_reason(), "going away");

    client.send_text("late").await;
    // Without the ack the close must still be pending (a bounded check that cannot pass
    // wrongly: an early answer is the bug it looks for).
    assert!(
        timeout(std::time::Duration::from_millis(300), &mut close)
            .await
            .is_err(),
        "awaited close answered before the ack"
    );
    client.send_close(Some(4001), "ack").await;

    let outcome = timeout(DEADLINE, close)
        .await
        .expect("close not answered")
        .expect("task");
    assert_eq!(outcome, Ok(CloseOutcome::Acked(status(4001, "ack"))));
    client.expect_eof().await;

    let (end, delivered) = server.ended(session.id()).await;
    assert!(
        delivered.is_empty(),
        "late text was delivered: {delivered:?}"
    );
    assert_eq!(end.dropped_after_close, 1);
    assert_eq!(end.state, CloseState::Closed);
    assert_eq!(end.record.initiator, Initiator::Server);
    assert!(end.handshake.is_some());
}

#[tokio::test]
async fn fire_and_forget_answers_before_the_ack_and_delivers_late_text() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    // Answered while the client has not even read the close frame.
    let outcome = session.close_output(status(1001, "bye")).await;
    assert_eq!(outcome, Ok(CloseOutcome::Sent));
    assert_eq!(session.state(), CloseState::CloseSent);

    let frame = client.expect_close().await;
    assert_eq!(frame.close_code(), Some(1001));
    client.send_text("late").await;
    assert_eq!(server.message_from(session.id()).await, "late");
    // The echo of "late" must not be sent: nothing follows a close frame.
    client.send_close(Some(1000), "").await;
    client.expect_eof().await;

    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Closed);
    assert_eq!(end.dropped_after_close, 0);
    assert_eq!(end.record.result, CloseResult::Acked);
}

#[tokio::test]
async fn a_client_that_never_acks_times_out_and_is_aborted() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    let closer = session.clone();
    let close = tokio::spawn(async move { closer.close(status(1000, "")).await });
    assert_eq!(client.expect_close().await.close_code(), Some(1000));
    // No ack: after close.timeout_ms (500 ms here) the server aborts.
    let outcome = timeout(DEADLINE, close)
        .await
        .expect("close not answered")
        .expect("task");
    assert_eq!(outcome, Ok(CloseOutcome::TimedOut));
    client.expect_eof().await;

    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Aborted);
    assert_eq!(end.record.result, CloseResult::Timeout);
    assert_eq!(session.state(), CloseState::Aborted);
}

#[tokio::test]
async fn a_peer_that_keeps_sending_cannot_hold_a_close_open() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    session.close_output(status(1000, "")).await.expect("close");
    assert_eq!(client.expect_close().await.close_code(), Some(1000));
    // Keep talking, never ack: the timeout is not extended by frames.
    let talk = async {
        for i in 0..1000 {
            client.send_text(&format!("still here {i}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (end, _) = tokio::select! {
        ended = server.ended(session.id()) => ended,
        _ = talk => panic!("the session outlived 20 s of chatter"),
    };
    assert_eq!(end.record.result, CloseResult::Timeout);
}

#[tokio::test]
async fn cancelling_an_awaited_close_answers_cancelled_and_keeps_the_frame_sent() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    let token = CancellationToken::new();
    let closer = session.clone();
    let cancel = token.clone();
    let close = tokio::spawn(async move {
        closer
            .close_with_cancel(status(1000, ""), Some(cancel))
            .await
    });
    assert_eq!(client.expect_close().await.close_code(), Some(1000));
    token.cancel();
    let outcome = timeout(DEADLINE, close)
        .await
        .expect("answer")
        .expect("task");
    assert_eq!(outcome, Err(CloseError::Cancelled));
    assert_eq!(session.state(), CloseState::CloseSent);

    client.send_close(Some(1000), "").await;
    client.expect_eof().await;
    assert_eq!(server.ended(session.id()).await.0.state, CloseState::Closed);
}

#[tokio::test]
async fn requests_on_a_closed_session_fail_already_closed() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    client.send_close(Some(1000), "").await;
    client.expect_close().await;
    server.ended(session.id()).await;

    assert_eq!(
        session.close(status(1000, "")).await,
        Err(CloseError::AlreadyClosed)
    );
    assert_eq!(
        session.close_output(None).await,
        Err(CloseError::AlreadyClosed)
    );
    assert_eq!(session.send_text("x").await, Err(CloseError::AlreadyClosed));
}

#[tokio::test]
async fn requests_on_an_aborted_session_fail_aborted() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    session.abort();
    client.expect_eof_without_close().await;
    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.state, CloseState::Aborted);
    assert_eq!(session.close(None).await, Err(CloseError::Aborted));
}

#[tokio::test]
async fn close_output_twice_fails_output_closed() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    assert_eq!(session.close_output(None).await, Ok(CloseOutcome::Sent));
    assert_eq!(
        session.close_output(status(1000, "")).await,
        Err(CloseError::OutputClosed)
    );
    assert_eq!(session.send_text("x").await, Err(CloseError::OutputClosed));
    // Exactly one close frame went out, without a code.
    let frame = client.expect_close().await;
    assert!(frame.payload.is_empty());
    client.send_close(None, "").await;
    client.expect_eof().await;
}

#[tokio::test]
async fn an_awaited_close_after_close_output_waits_for_the_same_ack() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    session.close_output(status(1001, "")).await.expect("sent");
    // `Addr::send` queues at once; the next request's answer proves the close was handled
    // (one mailbox, in order) before the client acks.
    let close = tokio::spawn(session.addr().send(Close {
        status: status(1000, "ignored"),
        cancel: None,
    }));
    assert_eq!(
        session.close_output(None).await,
        Err(CloseError::OutputClosed)
    );
    let frame = client.expect_close().await;
    assert_eq!(
        frame.close_code(),
        Some(1001),
        "the first close frame stands"
    );
    client.send_close(Some(1001), "").await;
    let outcome = timeout(DEADLINE, close)
        .await
        .expect("answer")
        .expect("task")
        .expect("mailbox");
    assert_eq!(outcome, Ok(CloseOutcome::Acked(status(1001, ""))));
    client.expect_eof().await;
}

#[tokio::test]
async fn invalid_close_requests_are_refused_and_nothing_is_sent() {
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;

    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        assert_eq!(
            CloseStatus::new(code, ""),
            Err(CloseError::InvalidCode(code))
        );
    }
    let long = "é".repeat(62); // 124 bytes
    assert_eq!(
        CloseStatus::new(1000, long),
        Err(CloseError::ReasonTooLong(124))
    );
    assert_eq!(
        CloseStatus::optional(None, "why"),
        Err(CloseError::ReasonWithoutCode)
    );

    // The session is untouched: the next frame the client sees is this text, not a close.
    session.send_text("still open").await.expect("send");
    let frame = client.next_frame().await.expect("a frame");
    assert_eq!(frame.opcode, OP_TEXT);
    assert_eq!(frame.text(), "still open");
    assert_eq!(session.state(), CloseState::Open);
    client.send_close(Some(1000), "").await;
    assert_eq!(client.expect_close().await.opcode, OP_CLOSE);
}

#[tokio::test]
async fn a_close_sent_to_a_quiet_peer_ends_by_the_close_timeout_not_the_silence_timer() {
    // Found by tests/churn.rs: with the silence timer still running in CloseSent, a peer quiet
    // for longer than client_timeout - close.timeout was aborted early and the close reported
    // `Aborted` instead of `TimedOut`.
    let mut server = TestServer::start(wsgrace::SessionConfig {
        heartbeat_interval: std::time::Duration::from_millis(100),
        client_timeout: std::time::Duration::from_millis(500),
        close_timeout: std::time::Duration::from_millis(300),
        ..common::test_config()
    });
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    // Read pings for 350 ms without answering: 150 ms of silence left when the close starts.
    let _ = timeout(std::time::Duration::from_millis(350), async {
        loop {
            client.read_frame().await;
        }
    })
    .await;
    assert_eq!(session.close(None).await, Ok(CloseOutcome::TimedOut));
    let (end, _) = server.ended(session.id()).await;
    assert_eq!(end.record.result, CloseResult::Timeout);
}

#[tokio::test]
async fn an_acknowledged_server_close_ends_the_connection_at_once() {
    // The server's awaited close is acknowledged: the peer has read our close frame, the last
    // frame there is, so the server closes its socket at once instead of lingering (the test
    // server lingers for a minute, far beyond the deadline). Bytes the peer sends after that
    // get a reset.
    let mut server = TestServer::start(common::test_config());
    let mut client = RawClient::connect(server.addr, "/ws").await;
    let session = server.next_session().await;
    let closing = tokio::spawn(async move { session.close(status(4001, "done")).await });
    assert_eq!(client.expect_close().await.close_code(), Some(4001));
    client.send_close(Some(4001), "").await;
    let outcome = timeout(DEADLINE, closing)
        .await
        .expect("close did not answer")
        .expect("close task");
    assert!(matches!(outcome, Ok(CloseOutcome::Acked(_))), "{outcome:?}");
    client.expect_eof().await;
    let (mut stream, _) = client.into_parts();
    let reset = async {
        loop {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    timeout(DEADLINE, reset)
        .await
        .expect("the server still reads (lingers) after an acknowledged close");
}
