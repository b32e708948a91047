//! Scenario tests of the v2 client's core ([`RoomsCore`]): the server's frames as JSON text,
//! the app's calls, and the exact outputs each one answers (frames to send, events, retry
//! delays): three rooms over one connection, publishes waiting for their room and confirmed
//! by their copy or an ack, a reconnect that rejoins each room from its own position and
//! resends what was not confirmed, refusals routed to the publish, join or leave they name,
//! leaves, and room events only from joined rooms.

use super::*;
use crate::client::wire_v2::{parse_rooms_frame, JoinStart, Member};

const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(10),
};

fn core() -> RoomsCore {
    RoomsCore::new("p", 8, BACKOFF)
}

/// Feeds the server frame `json`.
fn server(core: &mut RoomsCore, json: &str) -> Vec<Output> {
    core.on_frame(parse_rooms_frame(json), 0.5)
}

fn join(room: &str, start: JoinStart, reference: &str) -> Output {
    Output::Send(ClientFrame::Join {
        room: room.into(),
        start,
        reference: reference.into(),
    })
}

fn since(seq: u64) -> JoinStart {
    JoinStart::Since(Resume {
        since: seq,
        epoch: Some("e1".into()),
    })
}

fn publish(room: &str, text: &str, id: &str) -> Output {
    Output::Send(ClientFrame::Publish {
        room: room.into(),
        text: text.into(),
        id: id.into(),
    })
}

fn joined(room: &str, seq: u64, resumed: Option<bool>, missed: Option<u64>) -> Output {
    Output::Emit(RoomEvent::Joined {
        room: room.into(),
        epoch: Some("e1".into()),
        seq: Some(seq),
        resumed,
        missed,
    })
}

fn message(room: &str, from: &str, text: &str, seq: u64, id: Option<&str>) -> Output {
    Output::Emit(RoomEvent::Message {
        room: room.into(),
        from: from.into(),
        text: text.into(),
        seq,
        ts: Some(1000 + seq),
        id: id.map(str::to_owned),
    })
}

fn published(room: &str, id: &str, seq: u64) -> Output {
    Output::Emit(RoomEvent::Published {
        room: room.into(),
        id: id.into(),
        seq: Some(seq),
    })
}

fn left(room: &str) -> Output {
    Output::Emit(RoomEvent::Left { room: room.into() })
}

/// A `message` frame of `room` at `seq`.
fn msg(room: &str, from: &str, text: &str, seq: u64, id: Option<&str>) -> String {
    let id = id.map(|id| format!(r#","id":"{id}""#)).unwrap_or_default();
    format!(
        r#"{{"type":"message","room":"{room}","from":"{from}","text":"{text}","seq":{seq},"ts":{}{id}}}"#,
        1000 + seq
    )
}

/// A connected core in rooms a, b, c (joined at seq 10, 20, 30).
fn in_three_rooms() -> RoomsCore {
    let mut core = core();
    for room in ["a", "b", "c"] {
        assert_eq!(core.join(room, &JoinOptions::default()), Ok(vec![]));
    }
    server(&mut core, r#"{"type":"hello","name":"ann"}"#);
    for (room, seq, reference) in [("a", 10, "j1"), ("b", 20, "j2"), ("c", 30, "j3")] {
        let frame = format!(
            r#"{{"type":"joined","room":"{room}","epoch":"e1","seq":{seq},"ref":"{reference}"}}"#
        );
        assert_eq!(server(&mut core, &frame), [joined(room, seq, None, None)]);
    }
    core
}

#[test]
fn the_hello_joins_every_room_and_each_room_delivers_its_seqs_once_in_order() {
    let mut core = core();
    core.join("a", &JoinOptions::default()).ok();
    core.join(
        "b",
        &JoinOptions {
            last: Some(2),
            resume: None,
        },
    )
    .ok();
    assert_eq!(
        server(&mut core, r#"{"type":"hello","name":"ann"}"#),
        [
            Output::Emit(RoomEvent::Hello { name: "ann".into() }),
            join("a", JoinStart::Present, "j1"),
            join("b", JoinStart::Last(2), "j2"),
        ]
    );
    assert!(server(&mut core, r#"{"type":"hello","name":"ann"}"#).is_empty());
    server(
        &mut core,
        r#"{"type":"joined","room":"a","epoch":"e1","seq":10,"ref":"j1"}"#,
    );
    server(
        &mut core,
        r#"{"type":"joined","room":"b","epoch":"e1","seq":20,"ref":"j2"}"#,
    );
    // (frame, what the app gets)
    let table: Vec<(String, Vec<Output>)> = vec![
        (
            msg("b", "bob", "old", 19, None),
            vec![message("b", "bob", "old", 19, None)],
        ),
        (
            msg("b", "bob", "last", 20, None),
            vec![message("b", "bob", "last", 20, None)],
        ),
        (msg("a", "bob", "x", 10, None), vec![]),
        (
            msg("a", "bob", "x", 11, None),
            vec![message("a", "bob", "x", 11, None)],
        ),
        (msg("a", "bob", "x", 11, None), vec![]),
        (
            msg("b", "bob", "y", 21, None),
            vec![message("b", "bob", "y", 21, None)],
        ),
        (msg("z", "bob", "not ours", 1, None), vec![]),
        (
            msg("a", "bob", "x", 12, None),
            vec![message("a", "bob", "x", 12, None)],
        ),
    ];
    for (frame, expected) in table {
        assert_eq!(server(&mut core, &frame), expected, "{frame}");
    }
    assert_eq!(
        core.position("a"),
        Some(Resume {
            since: 12,
            epoch: Some("e1".into())
        })
    );
    assert_eq!(core.rooms(), ["a", "b"]);
}

#[test]
fn a_publish_waits_for_its_room_and_is_confirmed_by_its_copy_or_an_ack() {
    let mut core = core();
    assert_eq!(
        core.publish("a", "early"),
        Err(RoomError::NotJoined("a".into()))
    );
    core.join("a", &JoinOptions::default()).ok();
    let (first, out) = core.publish("a", "early").expect("queued");
    assert_eq!((first.as_str(), out), ("p.1", vec![]));
    server(&mut core, r#"{"type":"hello","name":"ann"}"#);
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"joined","room":"a","epoch":"e1","seq":0,"ref":"j1"}"#
        ),
        [joined("a", 0, None, None), publish("a", "early", "p.1")]
    );
    let (second, out) = core.publish("a", "now").expect("sent");
    assert_eq!(out, [publish("a", "now", "p.2")]);
    assert_eq!(
        server(&mut core, &msg("a", "ann", "early", 1, Some(&first))),
        [
            message("a", "ann", "early", 1, Some("p.1")),
            published("a", "p.1", 1)
        ]
    );
    assert_eq!(
        server(&mut core, r#"{"type":"ack","room":"a","id":"p.2","seq":2}"#),
        [published("a", "p.2", 2)]
    );
    assert!(server(&mut core, r#"{"type":"ack","room":"a","id":"p.2","seq":2}"#).is_empty());
    assert!(core.unconfirmed().is_empty(), "{second}");
}

#[test]
fn a_reconnect_rejoins_each_room_from_its_position_and_resends_unconfirmed_publishes() {
    let mut core = in_three_rooms();
    server(&mut core, &msg("a", "bob", "x", 11, None));
    let (id, out) = core.publish("b", "lost copy").expect("sent");
    assert_eq!(out, [publish("b", "lost copy", "p.1")]);
    assert!(core.on_connection_lost().is_empty());
    assert_eq!(
        core.publish("c", "while away").map(|(_, out)| out),
        Ok(vec![])
    );
    assert_eq!(
        server(&mut core, r#"{"type":"hello","name":"ann"}"#),
        [
            Output::Emit(RoomEvent::Hello { name: "ann".into() }),
            join("a", since(11), "j4"),
            join("b", since(20), "j5"),
            join("c", since(30), "j6"),
        ]
    );
    let table: Vec<(&str, Vec<Output>)> = vec![
        (
            r#"{"type":"joined","room":"a","epoch":"e1","seq":13,"resumed":true,"missed":2,"ref":"j4"}"#,
            vec![joined("a", 13, Some(true), Some(2))],
        ),
        (
            r#"{"type":"joined","room":"b","epoch":"e1","seq":21,"resumed":true,"missed":1,"ref":"j5"}"#,
            vec![
                joined("b", 21, Some(true), Some(1)),
                publish("b", "lost copy", "p.1"),
            ],
        ),
        (
            r#"{"type":"joined","room":"c","epoch":"e2","seq":0,"resumed":false,"ref":"j6"}"#,
            vec![
                Output::Emit(RoomEvent::Joined {
                    room: "c".into(),
                    epoch: Some("e2".into()),
                    seq: Some(0),
                    resumed: Some(false),
                    missed: None,
                }),
                Output::Emit(RoomEvent::Gap {
                    room: "c".into(),
                    previous_epoch: Some("e1".into()),
                    previous_seq: 30,
                    epoch: Some("e2".into()),
                    seq: Some(0),
                }),
                publish("c", "while away", "p.2"),
            ],
        ),
    ];
    for (frame, expected) in table {
        assert_eq!(server(&mut core, frame), expected, "{frame}");
    }
    // b's replay holds the copy that was lost (no id on a replay, say): delivered once;
    // the resend's ack confirms it.
    assert_eq!(
        server(&mut core, &msg("b", "ann", "lost copy", 21, None)),
        [message("b", "ann", "lost copy", 21, None)]
    );
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"ack","room":"b","id":"p.1","seq":21}"#
        ),
        [published("b", &id, 21)]
    );
    assert_eq!(
        core.unconfirmed(),
        [("c".to_owned(), "p.2".to_owned(), "while away".to_owned())]
    );
}

#[test]
fn refusals_go_to_the_publish_join_or_leave_they_name() {
    let mut core = in_three_rooms();
    let (id, _) = core.publish("a", "t").expect("sent");
    // unavailable: retried after a delay, same id.
    let refused =
        format!(r#"{{"type":"error","code":"unavailable","room":"a","id":"{id}","text":"down"}}"#);
    assert_eq!(
        server(&mut core, &refused),
        [Output::RetryPublish {
            id: id.clone(),
            attempt: 0,
            after: Duration::from_millis(250)
        }]
    );
    assert_eq!(core.retry_publish(&id, 0), [publish("a", "t", "p.1")]);
    assert!(core.retry_publish(&id, 0).is_empty(), "once");
    // Any other code: given up.
    let refused =
        format!(r#"{{"type":"error","code":"bad_request","room":"a","id":"{id}","text":"why"}}"#);
    assert_eq!(
        server(&mut core, &refused),
        [Output::Emit(RoomEvent::PublishFailed {
            room: "a".into(),
            id: id.clone(),
            text: "t".into(),
            reason: PublishFailure::Refused {
                code: ErrorCode::BadRequest,
                text: "why".into()
            },
        })]
    );
    // A join refused as unavailable is retried; refused as forbidden, the room ends
    // and its waiting publishes fail.
    core.join("d", &JoinOptions::default()).ok();
    core.join("e", &JoinOptions::default()).ok();
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"error","code":"unavailable","room":"d","ref":"j4","text":"down"}"#
        ),
        [Output::RetryJoin {
            room: "d".into(),
            attempt: 0,
            after: Duration::from_millis(250)
        }]
    );
    assert_eq!(
        core.retry_join("d", 0),
        [join("d", JoinStart::Present, "j6")]
    );
    let (waiting, _) = core.publish("e", "never").expect("queued");
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"error","code":"forbidden","room":"e","ref":"j5","text":"no"}"#
        ),
        [
            Output::Emit(RoomEvent::JoinRefused {
                room: "e".into(),
                code: ErrorCode::Forbidden,
                text: "no".into()
            }),
            Output::Emit(RoomEvent::PublishFailed {
                room: "e".into(),
                id: waiting,
                text: "never".into(),
                reason: PublishFailure::Refused {
                    code: ErrorCode::Forbidden,
                    text: "no".into()
                },
            }),
        ]
    );
    assert_eq!(core.rooms(), ["a", "b", "c", "d"]);
    // A leave refused (not_joined): left all the same.
    assert_eq!(
        core.leave("c"),
        Ok(vec![Output::Send(ClientFrame::Leave {
            room: "c".into(),
            reference: "l7".into()
        })])
    );
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"error","code":"not_joined","room":"c","ref":"l7","text":"?"}"#
        ),
        [left("c")]
    );
    // Anything else: an event.
    assert_eq!(
        server(
            &mut core,
            r#"{"type":"error","code":"bad_request","text":"not JSON"}"#
        ),
        [Output::Emit(RoomEvent::Refused {
            code: ErrorCode::BadRequest,
            room: None,
            text: "not JSON".into()
        })]
    );
}

#[test]
fn a_leave_fails_the_rooms_unconfirmed_publishes_and_ends_with_left() {
    let mut core = in_three_rooms();
    let (id, _) = core.publish("a", "t").expect("sent");
    assert_eq!(
        core.leave("a"),
        Ok(vec![
            Output::Emit(RoomEvent::PublishFailed {
                room: "a".into(),
                id,
                text: "t".into(),
                reason: PublishFailure::Left
            }),
            Output::Send(ClientFrame::Leave {
                room: "a".into(),
                reference: "l4".into()
            }),
        ])
    );
    assert!(server(&mut core, &msg("a", "bob", "after", 11, None)).is_empty());
    assert_eq!(
        server(&mut core, r#"{"type":"left","room":"a","ref":"l4"}"#),
        [left("a")]
    );
    assert_eq!(core.leave("a"), Err(RoomError::NotJoined("a".into())));
    // A leave on its way when the connection drops is done; a leave while
    // disconnected is done at once.
    core.leave("b").ok();
    assert_eq!(core.on_connection_lost(), [left("b")]);
    assert_eq!(core.leave("c"), Ok(vec![left("c")]));
    assert!(core.rooms().is_empty());
}

#[test]
fn room_events_come_only_from_joined_rooms() {
    let mut core = in_three_rooms();
    core.join("d", &JoinOptions::default()).ok(); // on its way
    let table: Vec<(&str, Vec<Output>)> = vec![
        (
            r#"{"type":"signal","room":"a","from":"bob","text":"typing"}"#,
            vec![Output::Emit(RoomEvent::Signal {
                room: "a".into(),
                from: "bob".into(),
                text: "typing".into(),
            })],
        ),
        (
            r#"{"type":"signal","room":"d","from":"bob","text":"typing"}"#,
            vec![],
        ),
        (
            r#"{"type":"presence","room":"a","members":[{"name":"ann","connections":1}],"ref":"p1"}"#,
            vec![Output::Emit(RoomEvent::Presence {
                room: "a".into(),
                members: vec![Member {
                    name: "ann".into(),
                    connections: 1,
                }],
            })],
        ),
        (r#"{"type":"presence","room":"z","members":[]}"#, vec![]),
        (
            r#"{"type":"presence_join","room":"b","name":"bob"}"#,
            vec![Output::Emit(RoomEvent::PresenceJoin {
                room: "b".into(),
                name: "bob".into(),
            })],
        ),
        (
            r#"{"type":"presence_leave","room":"c","name":"bob"}"#,
            vec![Output::Emit(RoomEvent::PresenceLeave {
                room: "c".into(),
                name: "bob".into(),
            })],
        ),
        (
            r#"{"type":"presence_leave","room":"d","name":"bob"}"#,
            vec![],
        ),
        (
            r#"{"type":"epoch","room":"a","epoch":"e2","seq":0}"#,
            vec![Output::Emit(RoomEvent::Epoch {
                room: "a".into(),
                epoch: Some("e2".into()),
                seq: Some(0),
            })],
        ),
        (
            r#"{"type":"epoch","room":"d","epoch":"e2","seq":0}"#,
            vec![],
        ),
        (r#"{"type":"going_away","reconnect_after_ms":5}"#, vec![]),
        (r#"{"type":"welcome"}"#, vec![]),
    ];
    for (frame, expected) in table {
        assert_eq!(server(&mut core, frame), expected, "{frame}");
    }
    assert_eq!(
        core.signal("a", "typing"),
        Ok(vec![Output::Send(ClientFrame::Signal {
            room: "a".into(),
            text: "typing".into()
        })])
    );
    assert_eq!(
        core.signal("d", "typing"),
        Err(RoomError::NotReady("d".into()))
    );
    assert!(core.presence("b").is_ok());
    assert_eq!(core.presence("z"), Err(RoomError::NotJoined("z".into())));
}

#[test]
fn the_outbox_is_bounded() {
    let mut core = RoomsCore::new("p", 2, BACKOFF);
    core.join("a", &JoinOptions::default()).ok();
    assert!(core.publish("a", "1").is_ok());
    assert!(core.publish("a", "2").is_ok());
    assert_eq!(core.publish("a", "3"), Err(RoomError::OutboxFull(2)));
}
