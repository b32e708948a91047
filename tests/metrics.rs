//! `/metrics` against the real binary: the exposition is parsed (prometheus-parse) and its
//! counters follow what the test's clients do (SPEC "Metrics").

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::wsgrace;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsgrace_kit::frame::OP_BINARY;
use wsgrace_kit::http::{http_get, UPGRADE};
use wsgrace_kit::raw::RawClient;
use wsgrace_kit::server::ServerProcess;
use wsgrace_kit::DEADLINE;

/// Fetches and parses `/metrics`: sample name + sorted labels → value.
async fn scrape(server: &ServerProcess) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("no response")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text"));
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parsable exposition");
    let mut values = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map(|b| b.count).unwrap_or_default()
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        values.insert(key, value);
    }
    values
}

fn get(values: &HashMap<String, f64>, key: &str) -> f64 {
    values.get(key).copied().unwrap_or(0.0)
}

/// Scrapes until every `(key, value)` holds.
async fn eventually(server: &ServerProcess, expected: &[(&str, f64)]) -> HashMap<String, f64> {
    let start = Instant::now();
    loop {
        let values = scrape(server).await;
        if expected.iter().all(|(k, v)| get(&values, k) == *v) {
            return values;
        }
        if start.elapsed() > DEADLINE {
            let seen: Vec<_> = expected.iter().map(|(k, _)| (k, get(&values, k))).collect();
            panic!("metrics never reached {expected:?}; last seen {seen:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The next text frame that is not a presence event.
async fn next_text(ws: &mut wsgrace_kit::ws::Ws) -> String {
    loop {
        match timeout(DEADLINE, ws.next()).await.expect("no message") {
            Some(Ok(Message::Text(text))) => {
                let presence = serde_json::from_str(&text)
                    .is_ok_and(|frame| wsgrace_kit::chat::is_presence_event(&frame));
                if !presence {
                    return text;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn counters_follow_connects_messages_closes_and_drops() {
    let mut server = wsgrace().start("[server]\nworkers = 1\n");
    let values = scrape(&server).await;
    assert_eq!(get(&values, "wsgrace_connections_open"), 0.0);
    assert_eq!(get(&values, "wsgrace_connections_total"), 0.0);
    assert_eq!(get(&values, "wsgrace_draining"), 0.0);
    assert!(values.contains_key("wsgrace_close_handshake_seconds_count"));

    let mut a = wsgrace_kit::ws::connect(server.ws_url("?room=m&name=a")).await;
    let mut b = wsgrace_kit::ws::connect(server.ws_url("?room=m&name=b")).await;
    next_text(&mut a).await; // welcomes
    next_text(&mut b).await;
    eventually(
        &server,
        &[
            ("wsgrace_connections_open", 2.0),
            ("wsgrace_connections_total", 2.0),
        ],
    )
    .await;

    for n in 0..3 {
        a.send(Message::Text(format!("hello {n}")))
            .await
            .expect("send");
    }
    for _ in 0..3 {
        next_text(&mut a).await;
        next_text(&mut b).await;
    }
    // 2 welcomes + b's presence_join to a + 3 messages to 2 members.
    eventually(
        &server,
        &[
            ("wsgrace_messages_in_total", 3.0),
            ("wsgrace_messages_out_total", 9.0),
        ],
    )
    .await;

    for ws in [&mut a, &mut b] {
        ws.close(None).await.expect("close");
        while let Some(Ok(_)) = timeout(DEADLINE, ws.next()).await.expect("no end") {}
    }
    eventually(
        &server,
        &[
            ("wsgrace_connections_open", 0.0),
            (
                "wsgrace_closes_total{initiator=client,mode=fire_and_forget,outcome=acked}",
                2.0,
            ),
        ],
    )
    .await;

    // Bad input: a binary frame is closed 1003 and counted as an error of a close the server
    // initiated (its close frame is the first on the wire).
    let mut bad = RawClient::connect(server.addr, "/ws?room=m").await;
    bad.send_frame(true, OP_BINARY, b"\x01").await;
    assert_eq!(bad.expect_close().await.close_code(), Some(1003));
    eventually(
        &server,
        &[
            ("wsgrace_protocol_errors_total{reason=1003}", 1.0),
            (
                "wsgrace_closes_total{initiator=server,mode=fire_and_forget,outcome=error}",
                1.0,
            ),
            ("wsgrace_connections_open", 0.0),
        ],
    )
    .await;

    // A refused upgrade.
    assert_eq!(
        http_get(server.addr, "/ws?room=no%20way", &UPGRADE).await,
        400
    );
    eventually(
        &server,
        &[("wsgrace_upgrades_refused_total{reason=bad_room}", 1.0)],
    )
    .await;

    // The drain: a late message in an awaited close is dropped and counted, while the
    // server still answers /metrics because the client holds its ack back.
    let mut late = RawClient::connect(server.addr, "/ws?room=m").await;
    late.next_frame().await.expect("welcome");
    server.sigterm();
    late.expect_close().await;
    late.send_text("too late").await;
    eventually(
        &server,
        &[
            ("wsgrace_draining", 1.0),
            ("wsgrace_messages_dropped_total{reason=after_close}", 1.0),
        ],
    )
    .await;
    late.send_close(Some(1001), "").await;
    late.expect_eof().await;
    assert!(server.wait_exit(DEADLINE).await.success());
}

#[tokio::test]
async fn every_known_series_is_there_at_zero_with_the_build_and_the_process() {
    let server = wsgrace().start("");
    let values = scrape(&server).await;
    let has = |key: &str| {
        assert_eq!(
            values.get(key).copied(),
            Some(0.0),
            "{key} at 0 from the start"
        );
    };
    for initiator in ["client", "server"] {
        for mode in ["awaited", "fire_and_forget"] {
            for outcome in ["acked", "timeout", "aborted", "error"] {
                has(&format!(
                    "wsgrace_closes_total{{initiator={initiator},mode={mode},outcome={outcome}}}"
                ));
            }
        }
    }
    for reason in wsgrace::metrics::REFUSAL_REASONS {
        has(&format!(
            "wsgrace_upgrades_refused_total{{reason={reason}}}"
        ));
    }
    for reason in [
        "after_close",
        "slow_consumer",
        "output_closed",
        "broker_unavailable",
    ] {
        has(&format!(
            "wsgrace_messages_dropped_total{{reason={reason}}}"
        ));
    }
    for result in ["resumed", "not_resumed"] {
        has(&format!("wsgrace_resumes_total{{result={result}}}"));
    }
    has("wsgrace_api_requests_total{endpoint=publish,status=200}");
    has("wsgrace_presence_redis_ops_total{op=join}");
    has("wsgrace_rooms_open");
    assert_eq!(
        values
            .get(&format!(
                "wsgrace_build_info{{version={}}}",
                env!("CARGO_PKG_VERSION")
            ))
            .copied(),
        Some(1.0),
        "{:?}",
        values
            .keys()
            .filter(|k| k.contains("build"))
            .collect::<Vec<_>>()
    );
    assert!(get(&values, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(get(&values, "process_open_fds") >= 3.0);
    assert!(get(&values, "process_max_fds") >= get(&values, "process_open_fds"));
    assert!(
        values.contains_key("process_cpu_seconds_total"),
        "{values:?}"
    );

    // A room with a member here counts, and stops counting when it is gone.
    let member = wsgrace_kit::chat::join(&server, "lobby", "ann", None).await;
    assert_eq!(get(&scrape(&server).await, "wsgrace_rooms_open"), 1.0);
    let mut member = member;
    member.tx.close().await;
    wsgrace_kit::wait::until("the room is gone", DEADLINE, || async {
        (get(&scrape(&server).await, "wsgrace_rooms_open") == 0.0).then_some(())
    })
    .await;
}
