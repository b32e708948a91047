//! The process's metric handles, registered once, and their Prometheus exposition.
//!
//! Sessions, the upgrade route and the drain record into [`metrics()`]; `/metrics` serves
//! [`encode`]. The exposition text is produced by `prometheus-client` (OpenMetrics text
//! format), never formatted by hand. This module must not decide anything: it only counts.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::close::CloseRecord;

/// Labels of `wsgrace_closes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// `client` or `server`.
    pub initiator: &'static str,
    /// `awaited` or `fire_and_forget`.
    pub mode: &'static str,
    /// `acked`, `timeout`, `aborted` or `error`.
    pub outcome: &'static str,
}

/// Labels of counters split by a reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels of `wsgrace_resumes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `resumed` or `not_resumed`.
    pub result: &'static str,
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From a peer, after an awaited close frame or the peer's close.
    AfterClose,
    /// To a client that does not read.
    SlowConsumer,
    /// To a session whose output is closed (its close frame is sent).
    OutputClosed,
    /// From a peer: the broker could not take the message (the sender got an `error`).
    BrokerUnavailable,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::AfterClose => "after_close",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::OutputClosed => "output_closed",
            DropReason::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Sessions open now.
    pub connections_open: Gauge,
    /// Sessions ever started.
    pub connections_total: Counter,
    /// Ended sessions by who closed, the mode and the result.
    pub closes: Family<CloseLabels, Counter>,
    /// Text messages received from clients.
    pub messages_in: Counter,
    /// Text messages queued to clients.
    pub messages_out: Counter,
    /// Messages dropped, by reason.
    pub messages_dropped: Family<ReasonLabels, Counter>,
    /// From the server's close frame to the peer's ack.
    pub close_handshake_seconds: Histogram,
    /// 1 while draining.
    pub draining: Gauge,
    /// Upgrades answered with an HTTP error, by reason.
    pub upgrades_refused: Family<ReasonLabels, Counter>,
    /// Sessions failed for bad input, by close code.
    pub protocol_errors: Family<ReasonLabels, Counter>,
    /// Closed connections still reading the peer's last bytes (lingering close).
    pub connections_lingering: Gauge,
    /// 1 while the broker is reachable (always 1 with the local broker).
    pub broker_up: Gauge,
    /// Broker operations that failed: connection attempts, refused publishes, snapshots.
    pub broker_errors: Counter,
    /// Joins that asked to resume, by whether they were resumed.
    pub resumes: Family<ResultLabels, Counter>,
    /// Messages replayed to resumed sessions.
    pub resumed_messages: Counter,
    /// HTTP request heads that took longer than `server.request_timeout_ms` (answered 408).
    pub request_timeouts: Counter,
    /// Sessions open now, by protocol (`v1`, `v2`).
    pub connections_by_protocol: Family<ProtocolLabels, Gauge>,
    /// Room memberships open now (a v1 session has one, a v2 session one per joined room).
    pub room_joins_open: Gauge,
    /// Publishes that repeated a dedupe key (a v2 `id`, an API `idempotency_key`) and were
    /// not published again.
    pub publishes_deduplicated: Counter,
    /// v2 `signal`s sent.
    pub signals: Counter,
    /// Presence events told to this node's members (`presence_join`, `presence_leave`).
    pub presence_events: Family<KindLabels, Counter>,
    /// This node's sessions counted present in a room now (one per session and room).
    pub presence_members: Gauge,
    /// Sessions that went away without leaving and were kept present (a deferred leave).
    pub presence_kept: Counter,
    /// Kept connections whose time ran out while their name was present again (a rejoin in
    /// time, or another tab): the leave nobody saw.
    pub presence_kept_rejoined: Counter,
    /// Presence events not queued for a member that was behind on reading (its queue half
    /// full): it gets the room's whole list once it has caught up instead.
    pub presence_deferred: Counter,
    /// Rooms' lists sent to members that were behind (`presence` frames with no `ref`).
    pub presence_resyncs: Counter,
    /// Such lists read again because the room changed while they were read (with Redis the
    /// read's answer could be older than an event already sent).
    pub presence_list_rereads: Counter,
    /// Presence operations sent to Redis, by operation.
    pub presence_redis_ops: Family<OpLabels, Counter>,
    /// Server API requests, by endpoint and HTTP status.
    pub api_requests: Family<ApiLabels, Counter>,
    /// Rooms with at least one member on this node now.
    pub rooms_open: Gauge,
}

/// Labels of `wsgrace_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// The crate's version.
    version: &'static str,
}

/// Every upgrade refusal reason (`wsgrace_upgrades_refused_total{reason}`), listed so that
/// each series exists at 0 from the start.
pub const REFUSAL_REASONS: [&str; 14] = [
    "draining",
    "broker_unavailable",
    "origin",
    "bad_subprotocol",
    "bad_room",
    "bad_name",
    "bad_since",
    "bad_epoch",
    "bad_query",
    "unauthorized",
    "forbidden",
    "per_ip_limit",
    "max_connections",
    "handshake",
];

/// Labels of `wsgrace_api_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `publish`, `disconnect`, `history`, `presence`, or `other` (an unknown path).
    pub endpoint: &'static str,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of `wsgrace_presence_events_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `presence_join` or `presence_leave`.
    pub kind: &'static str,
}

/// Labels of `wsgrace_presence_redis_ops_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `join`, `leave`, `keep`, `renew`, `read`, `restore`, `sweep`.
    pub op: &'static str,
}

/// Labels of `wsgrace_connections_by_protocol`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `v1` or `v2`.
    pub protocol: &'static str,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            closes: Family::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            messages_dropped: Family::default(),
            // 100 µs .. ~13 s
            close_handshake_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            draining: Gauge::default(),
            upgrades_refused: Family::default(),
            protocol_errors: Family::default(),
            connections_lingering: Gauge::default(),
            broker_up: Gauge::default(),
            broker_errors: Counter::default(),
            resumes: Family::default(),
            resumed_messages: Counter::default(),
            request_timeouts: Counter::default(),
            connections_by_protocol: Family::default(),
            room_joins_open: Gauge::default(),
            publishes_deduplicated: Counter::default(),
            signals: Counter::default(),
            api_requests: Family::default(),
            rooms_open: Gauge::default(),
            presence_events: Family::default(),
            presence_members: Gauge::default(),
            presence_kept: Counter::default(),
            presence_kept_rejoined: Counter::default(),
            presence_deferred: Counter::default(),
            presence_resyncs: Counter::default(),
            presence_list_rereads: Counter::default(),
            presence_redis_ops: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "wsgrace_connections_open",
            "WebSocket sessions open now",
            metrics.connections_open.clone(),
        );
        registry.register(
            "wsgrace_connections",
            "WebSocket sessions started",
            metrics.connections_total.clone(),
        );
        registry.register(
            "wsgrace_closes",
            "Ended sessions by initiator, close mode and outcome",
            metrics.closes.clone(),
        );
        registry.register(
            "wsgrace_messages_in",
            "Text messages received from clients",
            metrics.messages_in.clone(),
        );
        registry.register(
            "wsgrace_messages_out",
            "Text messages queued to clients",
            metrics.messages_out.clone(),
        );
        registry.register(
            "wsgrace_messages_dropped",
            "Messages dropped, by reason",
            metrics.messages_dropped.clone(),
        );
        registry.register(
            "wsgrace_close_handshake_seconds",
            "Time from the server's close frame to the peer's ack",
            metrics.close_handshake_seconds.clone(),
        );
        registry.register(
            "wsgrace_connections_lingering",
            "Closed connections still reading the peer's last bytes before the socket closes",
            metrics.connections_lingering.clone(),
        );
        registry.register(
            "wsgrace_draining",
            "1 while the server drains",
            metrics.draining.clone(),
        );
        registry.register(
            "wsgrace_upgrades_refused",
            "Upgrades answered with an HTTP error, by reason",
            metrics.upgrades_refused.clone(),
        );
        registry.register(
            "wsgrace_protocol_errors",
            "Sessions failed for bad input, by close code",
            metrics.protocol_errors.clone(),
        );
        registry.register(
            "wsgrace_broker_up",
            "1 while the broker is reachable",
            metrics.broker_up.clone(),
        );
        registry.register(
            "wsgrace_broker_errors",
            "Broker operations that failed",
            metrics.broker_errors.clone(),
        );
        registry.register(
            "wsgrace_resumes",
            "Joins that asked to resume, by result",
            metrics.resumes.clone(),
        );
        registry.register(
            "wsgrace_resumed_messages",
            "Messages replayed to resumed sessions",
            metrics.resumed_messages.clone(),
        );
        registry.register(
            "wsgrace_request_timeouts",
            "HTTP request heads that took longer than server.request_timeout_ms (answered 408)",
            metrics.request_timeouts.clone(),
        );
        registry.register(
            "wsgrace_connections_by_protocol",
            "WebSocket sessions open now, by protocol (v1: one room, v2: wsgrace.v2)",
            metrics.connections_by_protocol.clone(),
        );
        registry.register(
            "wsgrace_room_joins_open",
            "Room memberships open now (one per v1 session, one per joined room of a v2 session)",
            metrics.room_joins_open.clone(),
        );
        registry.register(
            "wsgrace_publishes_deduplicated",
            "Publishes that repeated a message id or idempotency key and were not published again",
            metrics.publishes_deduplicated.clone(),
        );
        registry.register(
            "wsgrace_api_requests",
            "Server API requests, by endpoint and HTTP status",
            metrics.api_requests.clone(),
        );
        registry.register(
            "wsgrace_signals",
            "wsgrace.v2 signals sent",
            metrics.signals.clone(),
        );
        registry.register(
            "wsgrace_presence_events",
            "Presence events told to this node's members, by kind",
            metrics.presence_events.clone(),
        );
        registry.register(
            "wsgrace_presence_members",
            "This node's sessions counted present in a room now (one per session and room)",
            metrics.presence_members.clone(),
        );
        registry.register(
            "wsgrace_presence_kept",
            "Sessions that went away without leaving and were kept present for a while",
            metrics.presence_kept.clone(),
        );
        registry.register(
            "wsgrace_presence_kept_rejoined",
            "Kept sessions whose time ran out with their name present again: leaves nobody saw",
            metrics.presence_kept_rejoined.clone(),
        );
        registry.register(
            "wsgrace_presence_deferred",
            "Presence events not queued for a member behind on reading; it gets the room's list once caught up",
            metrics.presence_deferred.clone(),
        );
        registry.register(
            "wsgrace_presence_resyncs",
            "Rooms' presence lists sent to members that were behind on reading",
            metrics.presence_resyncs.clone(),
        );
        registry.register(
            "wsgrace_presence_list_rereads",
            "Presence lists for members that were behind, read again because the room changed during the read",
            metrics.presence_list_rereads.clone(),
        );
        registry.register(
            "wsgrace_presence_redis_ops",
            "Presence operations sent to Redis, by operation",
            metrics.presence_redis_ops.clone(),
        );
        registry.register(
            "wsgrace_rooms_open",
            "Rooms with at least one member on this node now",
            metrics.rooms_open.clone(),
        );
        registry.register(
            "wsgrace_build",
            "The server's version",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        metrics.create_zero_series();
        for kind in ["presence_join", "presence_leave"] {
            let _ = metrics.presence_events.get_or_create(&KindLabels { kind });
        }
        for protocol in ["v1", "v2"] {
            // Present at 0 from the start.
            let _ = metrics
                .connections_by_protocol
                .get_or_create(&ProtocolLabels { protocol });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts an ended session.
    pub fn record_close(&self, record: &CloseRecord) {
        self.closes
            .get_or_create(&CloseLabels {
                initiator: record.initiator.as_str(),
                mode: record.mode.as_str(),
                outcome: record.result.as_str(),
            })
            .inc();
    }

    /// Counts `n` dropped messages.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.messages_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc_by(n);
    }

    /// Counts a refused upgrade.
    pub fn refused(&self, reason: &'static str) {
        self.upgrades_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a session failed with `code`.
    pub fn protocol_error(&self, code: u16) {
        let reason = match code {
            1002 => "1002",
            1003 => "1003",
            1007 => "1007",
            1008 => "1008",
            1009 => "1009",
            _ => "other",
        };
        self.protocol_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

impl Metrics {
    /// Creates every labelled series whose labels are known in advance, at 0, so that a
    /// dashboard or an alert sees a flat 0 rather than no series until the first event.
    fn create_zero_series(&self) {
        for initiator in ["client", "server"] {
            for mode in ["awaited", "fire_and_forget"] {
                for outcome in ["acked", "timeout", "aborted", "error"] {
                    let _ = self.closes.get_or_create(&CloseLabels {
                        initiator,
                        mode,
                        outcome,
                    });
                }
            }
        }
        for reason in [
            DropReason::AfterClose,
            DropReason::SlowConsumer,
            DropReason::OutputClosed,
            DropReason::BrokerUnavailable,
        ] {
            let _ = self.messages_dropped.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
        for reason in REFUSAL_REASONS {
            let _ = self
                .upgrades_refused
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in ["1002", "1003", "1007", "1008", "1009", "other"] {
            let _ = self.protocol_errors.get_or_create(&ReasonLabels { reason });
        }
        for result in ["resumed", "not_resumed"] {
            let _ = self.resumes.get_or_create(&ResultLabels { result });
        }
        for op in ["join", "leave", "keep", "renew", "read", "restore", "sweep"] {
            let _ = self.presence_redis_ops.get_or_create(&OpLabels { op });
        }
        for (endpoint, statuses) in [
            ("publish", &[200, 400, 401, 413, 503][..]),
            ("disconnect", &[200, 400, 401, 413, 503][..]),
            ("history", &[200, 400, 401, 503][..]),
            ("presence", &[200, 400, 401, 503][..]),
            ("other", &[401, 404][..]),
        ] {
            for &status in statuses {
                let _ = self
                    .api_requests
                    .get_or_create(&ApiLabels { endpoint, status });
            }
        }
    }

    /// Counts a join that asked to resume: `Some(k)` resumed with `k` messages replayed,
    /// `None` not resumed.
    pub fn resume(&self, replayed: Option<u64>) {
        let result = match replayed {
            Some(_) => "resumed",
            None => "not_resumed",
        };
        self.resumes.get_or_create(&ResultLabels { result }).inc();
        if let Some(k) = replayed {
            self.resumed_messages.inc_by(k);
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The exposition text of every metric.
pub fn encode() -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics().registry)?;
    Ok(text)
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
