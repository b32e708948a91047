//! Tests of the v2 frames: a table of client frames and what each is read as (a frame, or
//! the refusal with the fields it echoes), the server frames' exact JSON, and a property
//! test: whatever bytes arrive, the parser answers a frame or a `bad_request` / `bad_room`,
//! and never panics.

use proptest::prelude::*;

use super::*;

fn refusal(code: ErrorCode, room: Option<&str>, reference: Option<&str>) -> Refusal {
    Refusal::new(code, "").about(room, reference)
}

/// The refusal without its text (the words may change; the code and fields may not).
fn shape(result: Result<ClientFrame, Refusal>) -> Result<ClientFrame, Refusal> {
    result.map_err(|mut refusal| {
        refusal.text.clear();
        refusal
    })
}

#[test]
fn client_frames() {
    use ClientFrame::*;
    use ErrorCode::{BadRequest, BadRoom};
    let join = |since, epoch: Option<&str>, last, reference: Option<&str>| Join {
        room: "a".into(),
        since,
        epoch: epoch.map(Into::into),
        last,
        reference: reference.map(Into::into),
    };
    let cases: Vec<(&str, Result<ClientFrame, Refusal>)> = vec![
        (
            r#"{"type":"join","room":"a"}"#,
            Ok(join(None, None, None, None)),
        ),
        (
            r#"{"type":"join","room":"a","since":5,"epoch":"e1","ref":"x"}"#,
            Ok(join(Some(5), Some("e1"), None, Some("x"))),
        ),
        (
            r#"{"type":"join","room":"a","last":50}"#,
            Ok(join(None, None, Some(50), None)),
        ),
        (
            r#"{"type":"join","room":"a","last":0}"#,
            Ok(join(None, None, Some(0), None)),
        ),
        (
            r#"{"type":"join","room":"a","since":9223372036854775807}"#,
            Ok(join(Some((1 << 63) - 1), None, None, None)),
        ),
        (
            r#"{"type":"join","room":"a","unknown":[1,2]}"#,
            Ok(join(None, None, None, None)),
        ),
        (
            r#"{"type":"leave","room":"a","ref":"r1"}"#,
            Ok(Leave {
                room: "a".into(),
                reference: Some("r1".into()),
            }),
        ),
        (
            r#"{"type":"publish","room":"a","text":"hi","id":"m-1.x_2"}"#,
            Ok(Publish {
                room: "a".into(),
                text: "hi".into(),
                id: Some("m-1.x_2".into()),
                reference: None,
            }),
        ),
        (
            r#"{"type":"publish","room":"a","text":""}"#,
            Ok(Publish {
                room: "a".into(),
                text: "".into(),
                id: None,
                reference: None,
            }),
        ),
        (
            r#"{"type":"signal","room":"a","text":"typing"}"#,
            Ok(Signal {
                room: "a".into(),
                text: "typing".into(),
                reference: None,
            }),
        ),
        (
            r#"{"type":"presence","room":"a","ref":"p"}"#,
            Ok(Presence {
                room: "a".into(),
                reference: Some("p".into()),
            }),
        ),
        // Refusals, with what they echo.
        ("not json", Err(refusal(BadRequest, None, None))),
        ("[1,2]", Err(refusal(BadRequest, None, None))),
        (r#""join""#, Err(refusal(BadRequest, None, None))),
        (
            r#"{"room":"a","ref":"x"}"#,
            Err(refusal(BadRequest, None, Some("x"))),
        ),
        (
            r#"{"type":7,"room":"a"}"#,
            Err(refusal(BadRequest, None, None)),
        ),
        (
            r#"{"type":"dance","room":"a","ref":"x"}"#,
            Err(refusal(BadRequest, None, Some("x"))),
        ),
        (
            r#"{"type":"join","ref":"x"}"#,
            Err(refusal(BadRequest, None, Some("x"))),
        ),
        (
            r#"{"type":"join","room":5}"#,
            Err(refusal(BadRequest, None, None)),
        ),
        (
            r#"{"type":"join","room":"a b","ref":"x"}"#,
            Err(refusal(BadRoom, Some("a b"), Some("x"))),
        ),
        (
            r#"{"type":"join","room":""}"#,
            Err(refusal(BadRoom, Some(""), None)),
        ),
        (
            r#"{"type":"join","room":"a","ref":"0123456789012345678901234567890123456789012345678901234567890123456789"}"#,
            Err(refusal(BadRequest, None, None)),
        ),
        (
            r#"{"type":"join","room":"a","ref":5}"#,
            Err(refusal(BadRequest, None, None)),
        ),
        (
            r#"{"type":"join","room":"a","since":-1}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","since":1.5}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","since":"1"}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","since":9223372036854775808}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","epoch":"a b"}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","last":1001}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"join","room":"a","since":1,"last":5}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"publish","room":"a"}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"publish","room":"a","text":5}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"publish","room":"a","text":"x","id":"no spaces"}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
        (
            r#"{"type":"signal","room":"a"}"#,
            Err(refusal(BadRequest, Some("a"), None)),
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let seen = shape(parse_client_frame(text));
        if seen != expected {
            wrong.push(format!(
                "{text}\n  expected {expected:?}\n  seen     {seen:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // A publish without text still echoes its id.
    let refused = parse_client_frame(r#"{"type":"publish","room":"a","id":"m1"}"#).unwrap_err();
    assert_eq!(refused.id.as_deref(), Some("m1"));
    // A bad room is echoed at most 64 characters long.
    let long = format!(r#"{{"type":"join","room":"{}"}}"#, "x ".repeat(100));
    let refused = parse_client_frame(&long).unwrap_err();
    assert_eq!(refused.room.map(|room| room.chars().count()), Some(64));
}

#[test]
fn server_frames() {
    assert_eq!(
        &*hello_json("ann").unwrap(),
        r#"{"type":"hello","name":"ann"}"#
    );
    assert_eq!(
        &*Joined::new("a", "e1", 5).to_json().unwrap(),
        r#"{"type":"joined","room":"a","epoch":"e1","seq":5}"#
    );
    assert_eq!(
        &*Joined::new("a", "e1", 5)
            .resumed(Some(true), Some(2))
            .answering(Some("j1"))
            .to_json()
            .unwrap(),
        r#"{"type":"joined","room":"a","epoch":"e1","seq":5,"resumed":true,"missed":2,"ref":"j1"}"#
    );
    assert_eq!(
        &*left_json("a", Some("l")).unwrap(),
        r#"{"type":"left","room":"a","ref":"l"}"#
    );
    assert_eq!(
        &*ack_json("a", "m1", 7, None).unwrap(),
        r#"{"type":"ack","room":"a","id":"m1","seq":7}"#
    );
    assert_eq!(
        &*signal_json("a", "bob", "typing").unwrap(),
        r#"{"type":"signal","room":"a","from":"bob","text":"typing"}"#
    );
    let members = [PresentMember {
        name: "ann".into(),
        connections: 2,
    }];
    assert_eq!(
        &*presence_json("a", &members, Some("p")).unwrap(),
        r#"{"type":"presence","room":"a","members":[{"name":"ann","connections":2}],"ref":"p"}"#
    );
    let mut refusal =
        Refusal::new(ErrorCode::NotJoined, "join it first").about(Some("a"), Some("x"));
    assert_eq!(
        &*refusal.to_json().unwrap(),
        r#"{"type":"error","code":"not_joined","room":"a","ref":"x","text":"join it first"}"#
    );
    refusal.id = Some("m1".into());
    refusal.reference = None;
    assert_eq!(
        &*refusal.to_json().unwrap(),
        r#"{"type":"error","code":"not_joined","room":"a","id":"m1","text":"join it first"}"#
    );
    assert_eq!(
        &*with_id(r#"{"type":"message","room":"a","seq":1,"ts":2}"#, "m-1"),
        r#"{"type":"message","room":"a","seq":1,"ts":2,"id":"m-1"}"#
    );
}

/// A JSON value built from small parts, to reach the parser's branches more often than
/// random bytes do.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("join"),
            Just("leave"),
            Just("publish"),
            Just("signal"),
            Just("presence"),
            Just("a"),
            Just("a b"),
            Just("")
        ]
        .prop_map(serde_json::Value::from),
        ".{0,70}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("room".to_owned()),
                    Just("ref".to_owned()),
                    Just("since".to_owned()),
                    Just("epoch".to_owned()),
                    Just("last".to_owned()),
                    Just("text".to_owned()),
                    Just("id".to_owned()),
                    "[a-z]{1,5}",
                ],
                inner,
                0..7
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_a_frame_or_a_bad_request(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        match parse_client_frame(&text) {
            Ok(_) => {}
            Err(refusal) => prop_assert!(
                matches!(refusal.code, ErrorCode::BadRequest | ErrorCode::BadRoom),
                "{refusal:?}"
            ),
        }
    }

    #[test]
    fn json_frames_get_a_frame_or_a_bad_request_and_answers_serialize(value in json_value()) {
        match parse_client_frame(&value.to_string()) {
            Ok(frame) => prop_assert!(crate::config::is_valid_name(frame.room())),
            Err(refusal) => {
                prop_assert!(matches!(refusal.code, ErrorCode::BadRequest | ErrorCode::BadRoom));
                let json = refusal.to_json().expect("an error frame");
                let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
                prop_assert_eq!(&back["type"], "error");
            }
        }
    }
}
