//! `--compare PATH`: the same scenario against a second server binary (the baseline),
//! right after the first, and one more JSON line that puts their key numbers side by side
//! with the ratio `b / a` (a = `--server`, b = `--compare`). Which numbers count is chosen
//! per scenario below; both full reports are printed anyway.

use serde_json::{json, Map, Value};

/// Key numbers of each scenario, as JSON pointers into its report.
fn key_metrics(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "fanout" => &[
            "/deliveries_per_s",
            "/sends_per_s",
            "/duration_ms",
            "/latency/p50_ms",
            "/latency/p90_ms",
            "/latency/p99_ms",
            "/latency/max_ms",
            "/lost",
            "/out_of_order",
            "/server_rss_bytes",
            "/server_cpu_ns_per_delivery",
            "/server_writes/socket_sends",
            "/server_writes/deliveries_per_write_call",
            "/server/stop_ms",
        ],
        "drain" => &[
            "/connect/connected",
            "/closes_received",
            "/first_close_ms",
            "/last_close_ms",
            "/close_after_signal/p99_ms",
            "/answering/count",
            "/answering/clean",
            "/answering/clean_fraction",
            "/answering/last_tcp_end_ms",
            "/deaf_clients/count",
            "/deaf_clients/got_close",
            "/deaf_clients/tcp_end_after_signal/max_ms",
            "/server_exit_ms",
            "/server_cpu_drain_ms",
        ],
        "hold" => &[
            "/connect/connected",
            "/connect/failed",
            "/connect_rate_per_s",
            "/rss_before_bytes",
            "/rss_after_bytes",
            "/rss_per_conn_bytes",
            "/server/stop_ms",
        ],
        "close-latency" => &[
            "/done",
            "/failed",
            "/no_close_frame",
            "/close_to_close_frame/p50_ms",
            "/close_to_close_frame/p99_ms",
            "/close_to_eof/p50_ms",
            "/close_to_eof/p99_ms",
            "/elapsed_ms",
        ],
        _ => &[],
    }
}

/// Numbers derived from a report that it does not carry itself.
fn derived(scenario: &str, report: &Value) -> Vec<(&'static str, Option<f64>)> {
    let sum = |v: Option<&Value>| {
        v.and_then(Value::as_object)
            // fold from +0.0: an empty f64 `sum()` is -0.0.
            .map(|m| m.values().filter_map(Value::as_f64).fold(0.0, |a, b| a + b))
    };
    match scenario {
        "drain" => {
            // Answering clients whose TCP ended without a close frame: what a browser
            // reports as 1006.
            let count = report.pointer("/answering/count").and_then(Value::as_f64);
            let abnormal = sum(report.pointer("/answering/no_close_frame_1006"));
            let fraction = match (abnormal, count) {
                (Some(a), Some(c)) if c > 0.0 => Some(a / c),
                _ => None,
            };
            vec![
                ("answering_no_close_frame", abnormal),
                ("answering_no_close_frame_fraction", fraction),
                (
                    "server_exit_code",
                    report.pointer("/server_exit_code").and_then(Value::as_f64),
                ),
            ]
        }
        _ => Vec::new(),
    }
}

fn entry(a: Option<f64>, b: Option<f64>) -> Value {
    let ratio = match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => Some(((b / a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    json!({ "a": a, "b": b, "b_over_a": ratio })
}

/// The comparison line for two reports of the same scenario.
pub fn ratios(scenario: &str, a_name: &str, a: &Value, b_name: &str, b: &Value) -> Value {
    let mut metrics = Map::new();
    // Every scenario's bytes on the wire per data message the clients read (`client_wire`),
    // and fanout's for the deliveries alone.
    let wire = [
        "/client_wire/wire_bytes_per_message",
        "/delivered_wire/wire_bytes_per_message",
    ];
    for pointer in key_metrics(scenario).iter().chain(&wire) {
        let get = |r: &Value| r.pointer(pointer).and_then(Value::as_f64);
        let key = pointer.trim_start_matches('/').replace('/', ".");
        metrics.insert(key, entry(get(a), get(b)));
    }
    let (da, db) = (derived(scenario, a), derived(scenario, b));
    for ((key, va), (_, vb)) in da.into_iter().zip(db) {
        metrics.insert(key.to_string(), entry(va, vb));
    }
    let complete = |r: &Value| r.get("complete").and_then(Value::as_bool);
    json!({
        "compare": scenario,
        "a": a_name,
        "b": b_name,
        "a_complete": complete(a),
        "b_complete": complete(b),
        "metrics": metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_present_numbers() {
        let a = json!({"deliveries_per_s": 100.0, "latency": {"p50_ms": 2.0}, "complete": true});
        let b = json!({"deliveries_per_s": 50.0, "latency": {"p50_ms": 3.0}, "complete": true});
        let line = ratios("fanout", "w", &a, "b", &b);
        assert_eq!(line["metrics"]["deliveries_per_s"]["b_over_a"], json!(0.5));
        assert_eq!(line["metrics"]["latency.p50_ms"]["b_over_a"], json!(1.5));
        assert_eq!(line["metrics"]["lost"]["b_over_a"], Value::Null);
    }

    #[test]
    fn drain_abnormal_fraction() {
        let a = json!({"answering": {"count": 10, "no_close_frame_1006": {}}});
        let b = json!({"answering": {"count": 10, "no_close_frame_1006": {"eof": 6, "reset": 2}}});
        let line = ratios("drain", "w", &a, "b", &b);
        let m = &line["metrics"]["answering_no_close_frame_fraction"];
        assert_eq!(m["a"], json!(0.0));
        assert_eq!(m["b"], json!(0.8));
    }
}
