//! `permessage-deflate` (SPEC `session.permessage_deflate`, RFC 7692): the negotiation at the
//! upgrade, compressed messages both ways, a room message's compressed copy shared by the
//! members that agreed while the others get plain frames, the inflated size bound (a deflate
//! bomb gets 1009 without the server's memory growing), and RSV1 where it may not be (1002).

mod common;

use common::{test_config, wsgrace, TestServer};
use serde_json::Value;
use wsgrace::SessionConfig;
use wsgrace_kit::deflate::{compress_message, compress_message_with, BROWSER_OFFER};
use wsgrace_kit::frame::{encode_frame, RawFrame, OP_CONTINUATION, OP_PING, OP_TEXT, RSV1};
use wsgrace_kit::raw::RawClient;

/// The server's config with the extension on (it is off by default).
const ON: &str = "[session]\npermessage_deflate = true\n";

/// What the server answers to every offer it accepts.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A chat line long enough to be compressed (over 128 bytes even on its own).
fn long_line(tag: &str) -> String {
    format!(
        "{tag}: the meeting moved to the small room on the third floor, bring the slides and \
         the notes from last week, and tell the others that we start at ten sharp"
    )
}

/// The next frame that is no presence event, as JSON, with whether it came compressed.
async fn next_json(client: &mut RawClient) -> (Value, RawFrame) {
    loop {
        let frame = client.next_frame().await.expect("a frame");
        if frame.opcode == wsgrace_kit::frame::OP_PONG {
            continue;
        }
        assert_eq!(frame.opcode, OP_TEXT, "{frame:?}");
        let value: Value = serde_json::from_str(&frame.text()).expect("JSON");
        let kind = value["type"].as_str().unwrap_or_default();
        if !kind.starts_with("presence") {
            return (value, frame);
        }
    }
}

#[tokio::test]
async fn an_offer_is_answered_with_no_context_takeover_both_ways_and_odd_ones_are_declined() {
    let server = wsgrace().start(ON);
    let cases: &[(&str, Option<String>)] = &[
        (BROWSER_OFFER, Some(ANSWER.to_owned())),
        ("permessage-deflate", Some(ANSWER.to_owned())),
        (
            "permessage-deflate; server_max_window_bits=10",
            Some(format!("{ANSWER}; server_max_window_bits=10")),
        ),
        // Declined, never refused: the upgrade goes on without the extension.
        ("permessage-deflate; no_such_param", None),
        ("permessage-deflate; server_max_window_bits=20", None),
        ("x-webkit-deflate-frame", None),
        (
            "permessage-deflate; client_max_window_bits=99, permessage-deflate",
            Some(ANSWER.to_owned()),
        ),
    ];
    for (offer, expected) in cases {
        let (mut client, answer) =
            RawClient::connect_offering(server.addr, "/ws?room=offers", offer).await;
        assert_eq!(&answer, expected, "offer {offer:?}");
        let (welcome, _) = next_json(&mut client).await;
        assert_eq!(welcome["type"], "welcome");
    }
    // Without an offer: no extension.
    let plain = RawClient::request(
        server.addr,
        wsgrace_kit::handshake::upgrade_request(server.addr, "/ws?room=offers").as_bytes(),
    )
    .await;
    assert_eq!(wsgrace_kit::deflate::extensions_answer(&plain.0), None);
}

#[tokio::test]
async fn with_the_key_off_no_offer_is_answered() {
    // Off is the default.
    let server = wsgrace().start("");
    let (mut client, answer) =
        RawClient::connect_offering(server.addr, "/ws?room=off", BROWSER_OFFER).await;
    assert_eq!(answer, None);
    let (welcome, frame) = next_json(&mut client).await;
    assert_eq!(welcome["type"], "welcome");
    assert!(!frame.compressed());
    // RSV1 without the extension: a protocol error.
    client.send_compressed_text(&long_line("x")).await;
    assert_eq!(client.expect_close().await.close_code(), Some(1002));
}

#[tokio::test]
async fn a_room_message_goes_compressed_to_the_members_that_agreed_and_plain_to_the_others() {
    let server = wsgrace().start(ON);
    let path = |name: &str| format!("/ws?room=mixed&name={name}");
    let (mut ann, _) = RawClient::connect_offering(server.addr, &path("ann"), BROWSER_OFFER).await;
    let (mut bob, _) = RawClient::connect_offering(server.addr, &path("bob"), BROWSER_OFFER).await;
    let mut cy = RawClient::connect(server.addr, &path("cy")).await;
    // A window under 15 asked of the server: the extension, with plain frames from the server.
    let (mut dee, answer) = RawClient::connect_offering(
        server.addr,
        &path("dee"),
        "permessage-deflate; server_max_window_bits=9",
    )
    .await;
    assert_eq!(
        answer.as_deref(),
        Some(&*format!("{ANSWER}; server_max_window_bits=9"))
    );
    for client in [&mut ann, &mut bob, &mut cy, &mut dee] {
        assert_eq!(next_json(client).await.0["type"], "welcome");
    }

    // Ann sends compressed; everyone gets it, each as it agreed.
    let line = long_line("ann");
    ann.send_compressed_text(&line).await;
    let mut payloads = Vec::new();
    for (client, compressed) in [
        (&mut ann, true),
        (&mut bob, true),
        (&mut cy, false),
        (&mut dee, false),
    ] {
        let (message, frame) = next_json(client).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["text"], line.as_str());
        assert_eq!(message["from"], "ann");
        assert_eq!(frame.compressed(), compressed, "{message}");
        if compressed {
            payloads.push(frame.payload);
        }
    }
    // The same compressed bytes for both: one message, compressed once on the server's
    // thread(s), with nothing of a connection in it.
    assert_eq!(payloads[0], payloads[1]);

    // Cy sends plain; a short message goes plain to everyone (not worth compressing).
    cy.send_text("ok").await;
    for client in [&mut ann, &mut bob, &mut cy, &mut dee] {
        let (message, frame) = next_json(client).await;
        assert_eq!(message["text"], "ok");
        assert!(!frame.compressed());
    }

    // Dee may send compressed too.
    dee.send_compressed_text(&long_line("dee")).await;
    for client in [&mut ann, &mut bob, &mut cy, &mut dee] {
        let (message, _) = next_json(client).await;
        assert_eq!(message["text"], long_line("dee").as_str());
    }
}

#[tokio::test]
async fn a_fragmented_compressed_message_and_one_ended_with_a_final_block_are_read() {
    let server = wsgrace().start(ON);
    let (mut ann, _) =
        RawClient::connect_offering(server.addr, "/ws?room=frag&name=ann", BROWSER_OFFER).await;
    assert_eq!(next_json(&mut ann).await.0["type"], "welcome");
    let line = long_line("fragments");
    let compressed = compress_message(line.as_bytes());
    let (head, tail) = compressed.split_at(compressed.len() / 2);
    let mut bytes = encode_frame(false, RSV1, OP_TEXT, true, head);
    // A ping between the fragments, as RFC 6455 §5.4 allows.
    bytes.extend(encode_frame(true, 0, OP_PING, true, b"p"));
    bytes.extend(encode_frame(true, 0, OP_CONTINUATION, true, tail));
    ann.send_raw(&bytes).await;
    assert_eq!(next_json(&mut ann).await.0["text"], line.as_str());

    let finished = compress_message_with(b"bye for now", flate2::FlushCompress::Finish);
    ann.send_raw(&encode_frame(true, RSV1, OP_TEXT, true, &finished))
        .await;
    assert_eq!(next_json(&mut ann).await.0["text"], "bye for now");
}

#[tokio::test]
async fn a_deflate_bomb_is_closed_1009_before_it_is_inflated() {
    let server = wsgrace().start("[session]\npermessage_deflate = true\nmax_frame_bytes = 65536\n");
    let (mut client, _) =
        RawClient::connect_offering(server.addr, "/ws?room=bomb", BROWSER_OFFER).await;
    assert_eq!(next_json(&mut client).await.0["type"], "welcome");
    let rss_before = server.rss_bytes();
    // 200 MiB of one byte: about 200 KB compressed, in four fragments under the wire limit.
    let bomb = compress_message(&vec![b'a'; 200 << 20]);
    assert!(bomb.len() < 4 * 65_536, "{} bytes", bomb.len());
    let chunks: Vec<&[u8]> = bomb.chunks(bomb.len() / 4 + 1).collect();
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (rsv, opcode) = if i == 0 {
            (RSV1, OP_TEXT)
        } else {
            (0, OP_CONTINUATION)
        };
        bytes.extend(encode_frame(
            i + 1 == chunks.len(),
            rsv,
            opcode,
            true,
            chunk,
        ));
    }
    client.send_raw(&bytes).await;
    let close = client.expect_close().await;
    assert_eq!(close.close_code(), Some(1009), "{}", close.close_reason());
    // Compressed data over the limit on the wire is refused as it arrives; what inflates past
    // the limit is refused at the limit: the server never holds the 200 MiB.
    let grown = server.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 16 << 20, "the server grew by {grown} bytes");

    // One message that fits on the wire and inflates past the limit.
    let (mut client, _) =
        RawClient::connect_offering(server.addr, "/ws?room=bomb", BROWSER_OFFER).await;
    assert_eq!(next_json(&mut client).await.0["type"], "welcome");
    let small_bomb = compress_message(&vec![b'a'; 20 << 20]);
    assert!(small_bomb.len() < 65_536, "{} bytes", small_bomb.len());
    client
        .send_raw(&encode_frame(true, RSV1, OP_TEXT, true, &small_bomb))
        .await;
    assert_eq!(client.expect_close().await.close_code(), Some(1009));
    let grown = server.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 16 << 20, "the server grew by {grown} bytes");
}

#[tokio::test]
async fn rsv1_where_it_may_not_be_is_a_protocol_error_and_bad_data_is_1007() {
    let server = wsgrace().start(ON);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "RSV1 on a ping",
            encode_frame(true, RSV1, OP_PING, true, b"p"),
            1002,
        ),
        (
            "RSV1 on a continuation",
            [
                encode_frame(false, 0, OP_TEXT, true, b"a"),
                encode_frame(true, RSV1, OP_CONTINUATION, true, b"b"),
            ]
            .concat(),
            1002,
        ),
        (
            "RSV1 and RSV2",
            encode_frame(true, RSV1 | 0b010, OP_TEXT, true, &compress_message(b"hi")),
            1002,
        ),
        (
            "data that is no DEFLATE stream",
            encode_frame(true, RSV1, OP_TEXT, true, &[0xff, 0xee, 0xdd, 0xcc]),
            1007,
        ),
        (
            "DEFLATE that inflates to invalid UTF-8",
            encode_frame(true, RSV1, OP_TEXT, true, &compress_message(&[0xc3, 0x28])),
            1007,
        ),
        (
            "a compressed binary message",
            encode_frame(true, RSV1, 0x2, true, &compress_message(b"bin")),
            1003,
        ),
    ];
    for (what, bytes, code) in cases {
        let (mut client, _) =
            RawClient::connect_offering(server.addr, "/ws?room=rsv", BROWSER_OFFER).await;
        assert_eq!(next_json(&mut client).await.0["type"], "welcome");
        client.send_raw(&bytes).await;
        assert_eq!(
            client.expect_close().await.close_code(),
            Some(code),
            "{what}"
        );
    }
}

/// The library's two ways in (the upgrade taken from the dispatcher, and `wsgrace::start`
/// inside actix-web's dispatcher) both negotiate, inflate and compress.
#[tokio::test]
async fn both_ways_in_negotiate_inflate_and_compress() {
    let config = SessionConfig {
        permessage_deflate: true,
        ..test_config()
    };
    for mut server in [
        TestServer::start(config.clone()),
        TestServer::start_embedded(config.clone()),
    ] {
        let (mut client, answer) =
            RawClient::connect_offering(server.addr, "/ws", BROWSER_OFFER).await;
        assert_eq!(answer.as_deref(), Some(ANSWER));
        let session = server.next_session().await;
        let line = long_line("embedded");
        client.send_compressed_text(&line).await;
        assert_eq!(server.message_from(session.id()).await, line);
        session
            .send_text(bytestring::ByteString::from(line.clone()))
            .await
            .expect("sent");
        let frame = client.next_frame().await.expect("a frame");
        assert!(frame.compressed(), "{frame:?}");
        assert_eq!(frame.text(), line);
    }
    // Off in the session's settings: no extension, on either way in.
    let off = SessionConfig {
        permessage_deflate: false,
        ..test_config()
    };
    for server in [
        TestServer::start(off.clone()),
        TestServer::start_embedded(off),
    ] {
        let (_, answer) = RawClient::connect_offering(server.addr, "/ws", BROWSER_OFFER).await;
        assert_eq!(answer, None);
    }
}

/// A client that offers nothing (tokio-tungstenite, the Rust client's transport) is served
/// plain frames by a server with the extension on, and chats with members that agreed to it.
#[tokio::test]
async fn a_client_without_the_extension_chats_with_members_that_have_it() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = wsgrace().start(ON);
    let mut plain = wsgrace_kit::ws::connect(server.ws_url("?room=both&name=plain")).await;
    let (mut squeezed, _) =
        RawClient::connect_offering(server.addr, "/ws?room=both&name=squeezed", BROWSER_OFFER)
            .await;
    assert_eq!(next_json(&mut squeezed).await.0["type"], "welcome");
    let line = long_line("plain");
    plain.send(Message::Text(line.clone())).await.expect("send");
    let (message, frame) = next_json(&mut squeezed).await;
    assert_eq!(message["text"], line.as_str());
    assert!(frame.compressed());
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let next = tokio::time::timeout(wsgrace_kit::DEADLINE, plain.next())
            .await
            .expect("a frame before the deadline")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = next {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "welcome" || value["type"] == "message" {
                texts.push(value["type"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(texts, ["welcome", "message"]);
}
