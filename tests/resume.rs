//! SPEC "Resume" with the local broker (the default), against the real binary on one node:
//! a client that reconnects with `since` and `epoch` gets what it missed, each seq exactly
//! once, also while messages keep coming, and also when that is more than
//! `session.outbound_queue`; a gap the history cannot fill (`history.size`,
//! `history.ttl_ms`), another epoch or a `since` beyond the room answer `resumed: false`
//! and replay nothing; a bad `since` or `epoch` is refused before the upgrade; a restart of
//! the process, or a room's history evicted under `history.max_bytes`, is a new epoch (told
//! to open sessions with an `epoch` frame). And SPEC "Shutdown" step 6: `going_away` with a
//! delay drawn within `shutdown.reconnect_spread_ms`, right before the close.

mod common;

use std::time::Duration;

use common::wsgrace;
use wsgrace_kit::chat::{assert_contiguous, join, query, upgrade_status, Frame, Member, Msg, WAIT};
use wsgrace_kit::http::metric;
use wsgrace_kit::traffic::{resume_rounds, spawn_talker};

/// `talker` says `count` messages `t-1`, `t-2`, ..., reading each receipt; returns the last seq.
async fn say_many(talker: &mut Member, count: u64) -> u64 {
    let mut last = 0;
    for n in 1..=count {
        let receipt = talker.say(&format!("t-{n}")).await;
        last = receipt.last().expect("a receipt").seq;
    }
    last
}

/// Asserts that nothing was replayed to `member`: the next frame is the live message `text`
/// with seq `seq`.
async fn assert_next_is_live(member: &mut Member, seq: u64, from: &str, text: &str) {
    let next = member.message().await;
    assert_eq!(
        next,
        Msg {
            seq,
            from: from.to_owned(),
            text: text.to_owned()
        },
        "something was replayed before the live message"
    );
}

#[tokio::test]
async fn a_client_that_reconnects_with_since_and_epoch_gets_what_it_missed() {
    let server = wsgrace().start("");
    let mut ann = join(&server, "r", "ann", None).await;
    assert_eq!((ann.welcome.seq, ann.welcome.resumed), (0, None));
    let epoch = ann.welcome.epoch.clone();
    let mut talker = join(&server, "r", "talker", None).await;
    assert_eq!(talker.welcome.epoch, epoch, "one room, one epoch");

    assert_eq!(say_many(&mut talker, 3).await, 3);
    let seen = ann.rx.messages_through(3).await;
    assert_contiguous("ann", &seen, 1, 3);
    drop(ann); // gone without a close handshake, as a lost network does
    for n in 4..=6 {
        talker.say(&format!("while away {n}")).await;
    }

    let mut ann = join(&server, "r", "ann", Some((3, &epoch))).await;
    ann.welcome
        .assert_resume(Some(true), Some(3), 6, epoch.as_str());
    let replayed = ann.rx.messages_through(6).await;
    assert_contiguous("ann's replay", &replayed, 4, 6);
    assert_eq!(replayed[0].text, "while away 4");
    assert_eq!(replayed[0].from, "talker");
    talker.say("live").await;
    assert_next_is_live(&mut ann, 7, "talker", "live").await;

    // Without `epoch` the history alone decides; `since` equal to the room's seq is a
    // resume with nothing missed.
    let mut bob = Member::join(server.ws_url("?room=r&name=bob&since=5")).await;
    bob.welcome.assert_resumed(Some(true), Some(2));
    assert_contiguous("bob's replay", &bob.rx.messages_through(7).await, 6, 7);
    let mut cy = Member::join(server.ws_url(&query("r", "cy", Some((7, &epoch))))).await;
    cy.welcome.assert_resume(Some(true), Some(0), 7, &epoch);
    talker.say("for everyone").await;
    assert_next_is_live(&mut cy, 8, "talker", "for everyone").await;
    assert_next_is_live(&mut bob, 8, "talker", "for everyone").await;
    assert_eq!(
        metric(server.addr, "wsgrace_resumes_total{result=\"resumed\"}").await,
        3.0
    );
    assert_eq!(
        metric(server.addr, "wsgrace_resumed_messages_total").await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_and_resume_while_messages_flow_see_every_seq_exactly_once() {
    let server = wsgrace().start("");
    const LAST: u64 = 500;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(join(&server, "busy", &format!("c{i}"), None).await);
    }
    let talker = join(&server, "busy", "talker", None).await;
    let talker = spawn_talker(talker, "t", LAST, Duration::from_millis(2));
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, member)| {
            tokio::spawn(resume_rounds(
                member,
                vec![server.addr],
                12,
                LAST,
                talker.progress.clone(),
                i as u64,
            ))
        })
        .collect();
    let mut missed = 0;
    for (i, run) in runs.into_iter().enumerate() {
        let (seen, client_missed) = tokio::time::timeout(WAIT * 3, run)
            .await
            .expect("a client did not finish in time")
            .expect("client task");
        assert_contiguous(&format!("c{i}"), &seen, 1, LAST);
        missed += client_missed;
    }
    let said = talker.task.await.expect("talker task");
    assert_contiguous("talker", &said, 1, LAST);
    assert!(
        missed > 0,
        "no resume had anything to replay: the test tested nothing"
    );
}

#[tokio::test]
async fn a_gap_beyond_the_history_is_not_resumed_and_nothing_is_replayed() {
    let server = wsgrace().start("[history]\nsize = 5\n");
    let mut talker = join(&server, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    assert_eq!(say_many(&mut talker, 10).await, 10);

    // History holds 6..=10: after 5 everything is there, after 4 seq 5 is gone.
    let mut edge = join(&server, "r", "edge", Some((5, &epoch))).await;
    edge.welcome.assert_resume(Some(true), Some(5), 10, &epoch);
    assert_contiguous("edge", &edge.rx.messages_through(10).await, 6, 10);

    let mut late = join(&server, "r", "late", Some((4, &epoch))).await;
    late.welcome.assert_resume(Some(false), None, 10, &epoch);
    talker.say("live").await;
    assert_next_is_live(&mut late, 11, "talker", "live").await;
    assert_next_is_live(&mut edge, 11, "talker", "live").await;
}

#[tokio::test]
async fn without_history_no_resume_succeeds() {
    let server = wsgrace().start("[history]\nsize = 0\n");
    let mut talker = join(&server, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    say_many(&mut talker, 2).await;
    for since in [1, 2] {
        let member = join(&server, "r", "m", Some((since, &epoch))).await;
        assert_eq!(
            (member.welcome.resumed, member.welcome.seq),
            (Some(false), 2),
            "since {since}: {:?}",
            member.welcome
        );
        member.leave().await;
    }
}

#[tokio::test]
async fn another_epoch_or_a_since_beyond_the_room_is_not_resumed() {
    let server = wsgrace().start("");
    let mut talker = join(&server, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    say_many(&mut talker, 4).await;

    let mut wrong = join(&server, "r", "wrong", Some((2, "not-the-epoch"))).await;
    wrong.welcome.assert_resume(Some(false), None, 4, &epoch);
    let mut ahead = join(&server, "r", "ahead", Some((9, &epoch))).await;
    ahead.welcome.assert_not_resumed(4);
    // The largest `since` there is: accepted, and far ahead.
    let max = i64::MAX as u64;
    let mut far = join(&server, "r", "far", Some((max, &epoch))).await;
    assert_eq!(far.welcome.resumed, Some(false), "{:?}", far.welcome);
    // A room nobody used yet: any `since` above 0 is ahead of it.
    let fresh = join(&server, "new-room", "fresh", Some((3, &epoch))).await;
    fresh.welcome.assert_not_resumed(0);
    fresh.leave().await;

    talker.say("live").await;
    for member in [&mut wrong, &mut ahead, &mut far] {
        assert_next_is_live(member, 5, "talker", "live").await;
    }
    assert_eq!(
        metric(server.addr, "wsgrace_resumes_total{result=\"not_resumed\"}").await,
        4.0
    );
}

#[tokio::test]
async fn a_bad_since_or_epoch_gets_400_before_any_upgrade() {
    let server = wsgrace().start("");
    let bad_since = [
        "since=-1",
        "since=abc",
        "since=9223372036854775808",
        "since=18446744073709551616",
        "since=",
        "since=1.5",
        "since=0x10",
        "since=%201",
        "since=1%20",
    ];
    for param in bad_since {
        let status = upgrade_status(server.addr, &format!("?room=r&{param}")).await;
        assert_eq!(status, 400, "{param}");
    }
    let long = "e".repeat(65);
    let bad_epoch = [
        "epoch=".to_owned(),
        format!("epoch={long}"),
        "epoch=a%20b".to_owned(),
        "epoch=%C3%A9".to_owned(),
        "epoch=a/b".to_owned(),
    ];
    for param in &bad_epoch {
        let status = upgrade_status(server.addr, &format!("?room=r&since=1&{param}")).await;
        assert_eq!(status, 400, "{param}");
    }
    // The edges that are fine.
    let ok = format!("?room=r&since=0&epoch={}", "e".repeat(64));
    assert_eq!(upgrade_status(server.addr, &ok).await, 101);
    let ok = "?room=r&since=9223372036854775807&epoch=A-z_0.9";
    assert_eq!(upgrade_status(server.addr, ok).await, 101);

    let refused = |reason: &str| format!("wsgrace_upgrades_refused_total{{reason=\"{reason}\"}}");
    assert_eq!(
        metric(server.addr, &refused("bad_since")).await,
        bad_since.len() as f64
    );
    assert_eq!(
        metric(server.addr, &refused("bad_epoch")).await,
        bad_epoch.len() as f64
    );
}

#[tokio::test]
async fn a_restarted_process_is_a_new_epoch() {
    let mut first = wsgrace().start("");
    let mut talker = join(&first, "r", "talker", None).await;
    let old_epoch = talker.welcome.epoch.clone();
    say_many(&mut talker, 3).await;
    first.sigterm();
    // The talker is told to go, and when it may come back, right before the close.
    match talker.next().await {
        Frame::GoingAway { reconnect_after_ms } => assert!(
            reconnect_after_ms <= 5000,
            "reconnect_after_ms {reconnect_after_ms} > shutdown.reconnect_spread_ms"
        ),
        other => panic!("expected going_away, got {other:?}"),
    }
    match talker.next().await {
        Frame::Close(code, _) => assert_eq!(code, Some(1001)),
        other => panic!("expected the shutdown close, got {other:?}"),
    }
    assert!(talker.rx.finish().await, "the close was not clean");
    assert!(first.wait_exit(WAIT).await.success());

    let second = wsgrace().start("");
    let mut back = join(&second, "r", "talker", Some((3, &old_epoch))).await;
    let welcome = back.welcome.clone();
    welcome.assert_not_resumed(0);
    assert_ne!(welcome.epoch, old_epoch, "a new process, a new epoch");
    let receipt = back.say("again").await;
    assert_eq!(receipt.last().map(|m| m.seq), Some(1), "seqs start again");
    let other = join(&second, "r", "other", None).await;
    assert_eq!(other.welcome.epoch, welcome.epoch);
    other.leave().await;
}

#[tokio::test]
async fn history_older_than_the_ttl_is_not_resumed() {
    let server = wsgrace().start("[history]\nttl_ms = 1000\n");
    let mut talker = join(&server, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    say_many(&mut talker, 2).await;
    let said = std::time::Instant::now();
    // Resumes are tried until the history has expired; the first comes well within the ttl.
    let mut attempts = 0;
    loop {
        let member = join(&server, "r", "m", Some((1, &epoch))).await;
        let welcome = member.welcome.clone();
        member.leave().await;
        attempts += 1;
        match welcome.resumed {
            Some(true) => {
                assert_eq!(welcome.missed, Some(1), "{welcome:?}");
                assert!(said.elapsed() < WAIT, "the history never expired");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(false) => {
                assert!(attempts > 1, "the first resume, right away, was refused");
                assert!(
                    said.elapsed() >= Duration::from_millis(900),
                    "expired after {:?}, before the ttl",
                    said.elapsed()
                );
                assert_eq!(welcome.seq, 2, "{welcome:?}");
                break;
            }
            None => panic!("a resume's welcome without `resumed`: {welcome:?}"),
        }
    }
    talker.say("live").await;
}

#[tokio::test]
async fn a_room_whose_history_is_evicted_tells_its_open_sessions_the_new_epoch() {
    // All rooms' history stays under 1000 bytes; the room idle longest loses it first.
    let server = wsgrace().start("[history]\nmax_bytes = 1000\n");
    let mut quiet = join(&server, "quiet", "q", None).await;
    let old_epoch = quiet.welcome.epoch.clone();
    say_many(&mut quiet, 2).await;
    let mut busy = join(&server, "busy", "b", None).await;
    let filler = "x".repeat(100);
    for _ in 0..10 {
        busy.say(&filler).await;
    }
    // Resuming into the quiet room with its old epoch fails now ...
    let late = join(&server, "quiet", "late", Some((1, &old_epoch))).await;
    assert_eq!(late.welcome.resumed, Some(false), "{:?}", late.welcome);
    assert_ne!(late.welcome.epoch, old_epoch, "{:?}", late.welcome);
    let new_epoch = late.welcome.epoch.clone();
    late.leave().await;
    // ... and its open session learns the new epoch before the room's next message.
    quiet.send("after").await;
    match quiet.next().await {
        Frame::Epoch { room, epoch, seq } => {
            assert_eq!(
                (room.as_str(), epoch.as_str()),
                ("quiet", new_epoch.as_str())
            );
            let next = quiet.message().await;
            assert_eq!(
                (next.seq, next.text.as_str()),
                (seq + 1, "after"),
                "{next:?}"
            );
        }
        other => panic!("expected an epoch frame, got {other:?}"),
    }
}

/// A replay is what the client asked for, not a sign that it reads too slowly: one longer
/// than `session.outbound_queue` must still arrive whole ("the K messages S+1 … N follow it
/// at once ... each seq exactly once"), not end in 1008 "slow consumer" (after which the
/// client would resume, be cut again, and never catch up).
#[tokio::test]
async fn a_replay_longer_than_the_outbound_queue_arrives_whole() {
    let server = wsgrace().start("[session]\noutbound_queue = 64\n");
    let mut talker = join(&server, "r", "talker", None).await;
    let epoch = talker.welcome.epoch.clone();
    assert_eq!(say_many(&mut talker, 300).await, 300);
    let mut late = join(&server, "r", "late", Some((0, &epoch))).await;
    late.welcome.assert_resumed(Some(true), Some(300));
    let replay = late.rx.messages_through(300).await;
    assert_contiguous("the replay", &replay, 1, 300);
}

#[tokio::test]
async fn since_0_in_a_new_room_is_a_resume_with_nothing_missed() {
    let server = wsgrace().start("");
    let member = Member::join(server.ws_url("?room=brand-new&name=m&since=0")).await;
    assert_eq!(
        (
            member.welcome.resumed,
            member.welcome.missed,
            member.welcome.seq
        ),
        (Some(true), Some(0), 0),
        "{:?}",
        member.welcome
    );
}

/// SPEC "Shutdown" step 6: each session's `going_away` comes right before its shutdown close
/// and suggests a delay drawn from 0 to `shutdown.reconnect_spread_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_delays_are_drawn_within_the_spread() {
    for (spread, sessions) in [(0u64, 3usize), (200, 20)] {
        let mut server = wsgrace().start(&format!("[shutdown]\nreconnect_spread_ms = {spread}\n"));
        let mut members = Vec::new();
        for i in 0..sessions {
            members.push(join(&server, "r", &format!("m{i}"), None).await);
        }
        server.sigterm();
        let mut delays = Vec::new();
        for member in &mut members {
            let delay = match member.next().await {
                Frame::GoingAway { reconnect_after_ms } => reconnect_after_ms,
                other => panic!("expected going_away, got {other:?}"),
            };
            match member.next().await {
                Frame::Close(code, _) => assert_eq!(code, Some(1001)),
                other => panic!("expected the close right after going_away, got {other:?}"),
            }
            assert!(member.rx.finish().await, "the close was not clean");
            delays.push(delay);
        }
        assert!(server.wait_exit(WAIT).await.success());
        assert!(
            delays.iter().all(|d| *d <= spread),
            "spread {spread}: {delays:?}"
        );
        if spread > 0 {
            // 20 draws from 0..=200 with fewer than 3 values: about one in 10^35.
            let mut distinct = delays.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(distinct.len() >= 3, "not drawn: {delays:?}");
        }
    }
}
