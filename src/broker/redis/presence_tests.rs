//! The presence script against the pure [`Ledger`]: the same sequences of operations (joins,
//! leaves, kept connections, renewals, restores, sweeps, time passing, a node that stops
//! renewing), run through the ledger and through [`PRESENCE_SCRIPT`] on a real
//! `redis-server` (the kit's, on a free port), with the time given to both; after every step
//! the present names and their counts, the events published on the room's channel and the
//! rejoined count must agree. Owns nothing of the broker's tasks; must not mock Redis.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::Value;
use wsgrace_kit::redis::RedisServer;

use super::super::presence::{Ledger, PresenceChange};
use super::super::{NodeId, PresenceLimits};
use super::keys::Keys;
use super::presence_script::{parse_answer, Op, PresenceCall, PRESENCE_SCRIPT};

const TTL_MS: u64 = 1_000;
const ROOM: &str = "r";
const WAIT: Duration = Duration::from_secs(10);

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Step {
    Join(NodeId, u64, &'static str),
    Leave(NodeId, &'static str),
    Keep(NodeId, u64, &'static str, u64),
    Renew(NodeId),
    Restore(NodeId, Vec<(&'static str, u32)>),
    Sweep,
    Read,
    /// Time passes (ms).
    Advance(u64),
}

/// The ledger and the script side by side.
struct Model {
    limits: PresenceLimits,
    ledger: Ledger,
    now: u64,
    connection: MultiplexedConnection,
    channel: String,
    keys: Keys,
    stream: PubSubStream,
    /// Keeps the subscription open.
    _sink: redis::aio::PubSubSink,
}

impl Model {
    async fn start(server: &RedisServer, limits: PresenceLimits, prefix: &str) -> Model {
        let client = redis::Client::open(server.url()).expect("client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        redis::Script::new(PRESENCE_SCRIPT)
            .load_async(&mut connection)
            .await
            .expect("script load");
        let keys = Keys::new(prefix);
        let channel = keys.room(ROOM);
        let (mut sink, stream) = client.get_async_pubsub().await.expect("pubsub").split();
        sink.subscribe(&channel).await.expect("subscribe");
        Model {
            limits,
            ledger: Ledger::default(),
            now: 1_700_000_000_000,
            connection,
            channel,
            keys,
            stream,
            _sink: sink,
        }
    }

    fn call(&self, node: NodeId) -> PresenceCall {
        PresenceCall::new(self.keys.clone(), node, self.limits)
    }

    /// Runs `step` on both and compares.
    async fn step(&mut self, step: &Step, what: &str) {
        let now = self.now;
        let lease = Some(now + TTL_MS);
        let mut changes = Vec::new();
        let mut origin = String::new();
        let names_of = |counts: &[(&str, u32)]| -> Vec<(Arc<str>, u32)> {
            counts.iter().map(|(n, c)| (Arc::from(*n), *c)).collect()
        };
        let (node, op_counts);
        let op = match step {
            Step::Advance(ms) => {
                self.now += ms;
                return;
            }
            Step::Join(n, session, name) => {
                self.ledger.join(*n, name, now, lease, &mut changes);
                origin = format!("{n:x}.{session}");
                node = *n;
                Op::Join {
                    session: *session,
                    name,
                }
            }
            Step::Leave(n, name) => {
                self.ledger.leave(*n, name, now, &mut changes);
                node = *n;
                Op::Leave { name }
            }
            Step::Keep(n, session, name, ms) => {
                let until = now + ms;
                self.ledger
                    .keep(*n, *session, name, now, until, &mut changes);
                node = *n;
                Op::Keep {
                    session: *session,
                    name,
                    time: Duration::from_millis(*ms),
                }
            }
            Step::Renew(n) => {
                self.ledger.renew(*n, now, now + TTL_MS, &mut changes);
                node = *n;
                Op::Renew
            }
            Step::Restore(n, counts) => {
                op_counts = names_of(counts);
                self.ledger
                    .restore(*n, &op_counts, now, lease, &mut changes);
                node = *n;
                Op::Restore(&op_counts)
            }
            Step::Sweep => {
                self.ledger.sweep(now, &mut changes);
                node = 1;
                Op::Sweep
            }
            Step::Read => {
                self.ledger.sweep(now, &mut changes);
                node = 1;
                Op::Read
            }
        };
        let command = self.call(node).command(ROOM, &op, Some(now));
        let value: Value = command
            .query_async(&mut self.connection)
            .await
            .unwrap_or_else(|err| panic!("{what}: {step:?}: {err}"));
        let mut reload = false;
        let answer = parse_answer(value, &mut reload)
            .unwrap_or_else(|err| panic!("{what}: {step:?}: {err}"));

        // The events the ledger's changes come to, as the script publishes them.
        let present = self.ledger.len();
        let mut expected: Vec<String> = changes
            .into_iter()
            .filter_map(|change| match change {
                PresenceChange::Joined(name) => self
                    .limits
                    .tells(present)
                    .then(|| format!("J:{origin}:{name}")),
                PresenceChange::Left(name) => {
                    self.limits.tells(present + 1).then(|| format!("L::{name}"))
                }
            })
            .collect();
        expected.sort();
        let published = self.published().await;
        let mut events: Vec<String> = published
            .iter()
            .filter(|p| !p.starts_with("K:"))
            .cloned()
            .collect();
        events.sort();
        assert_eq!(events, expected, "{what}: events after {step:?}");
        if let Step::Keep(..) = step {
            // A keep of a connection the node counted tells every node when to sweep.
            let kept = published.iter().filter(|p| p.starts_with("K::")).count();
            assert!(kept <= 1, "{what}: {published:?}");
        }

        let members: Vec<(String, u32)> = self
            .ledger
            .members()
            .into_iter()
            .map(|m| (m.name.to_string(), m.connections))
            .collect();
        let mut in_redis: Vec<(String, u32)> = redis::cmd("HGETALL")
            .arg(self.keys.presence_names(ROOM))
            .query_async::<Vec<(String, u32)>>(&mut self.connection)
            .await
            .expect("HGETALL");
        in_redis.sort();
        assert_eq!(in_redis, members, "{what}: names after {step:?}");
        if let Step::Read = step {
            let read: Vec<(String, u32)> = answer
                .members
                .iter()
                .map(|m| (m.name.to_string(), m.connections))
                .collect();
            assert_eq!(read, members, "{what}: read after {step:?}");
        }
        assert_eq!(
            answer.rejoined,
            self.ledger.take_rejoined(),
            "{what}: rejoined after {step:?}"
        );
    }

    /// The payloads published since the last step (without `P:`), read up to a marker.
    async fn published(&mut self) -> Vec<String> {
        let _: () = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg("END")
            .query_async(&mut self.connection)
            .await
            .expect("PUBLISH");
        let mut payloads = Vec::new();
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no marker on the channel")
                .expect("the pub/sub stream ended");
            let payload: String = message.get_payload().expect("a text payload");
            if payload == "END" {
                return payloads;
            }
            let notice = payload
                .strip_prefix("P:")
                .unwrap_or_else(|| panic!("not a presence payload: {payload}"));
            payloads.push(notice.to_owned());
        }
    }

    async fn run(&mut self, what: &str, steps: &[Step]) {
        for step in steps {
            self.step(step, what).await;
        }
    }
}

fn limits(events_max_members: usize) -> PresenceLimits {
    PresenceLimits {
        enabled: true,
        events: true,
        events_max_members,
        ttl: Duration::from_millis(TTL_MS),
    }
}

const A: NodeId = 0xa1;
const B: NodeId = 0xb2;

#[tokio::test]
async fn the_script_keeps_the_ledgers_book() {
    use Step::*;
    let server = RedisServer::start();
    let cases: Vec<(&str, usize, Vec<Step>)> = vec![
        (
            "second tab, leaves, a kept connection rejoined on the other node",
            1_000,
            vec![
                Join(A, 1, "ann"),
                Join(B, 2, "ann"),
                Join(A, 3, "bob"),
                Read,
                Leave(A, "ann"),
                Leave(B, "ann"),
                Leave(B, "nobody"),
                Keep(A, 3, "bob", 500),
                Read,
                Advance(200),
                Join(B, 4, "bob"),
                Advance(400),
                Sweep,
                Read,
                Leave(B, "bob"),
                Read,
            ],
        ),
        (
            "a kept connection that does not come back",
            1_000,
            vec![
                Join(A, 1, "cat"),
                Keep(A, 1, "cat", 300),
                Keep(A, 1, "cat", 300),
                Advance(299),
                Sweep,
                Advance(1),
                Sweep,
                Sweep,
            ],
        ),
        (
            "a node that stops renewing",
            1_000,
            vec![
                Join(A, 1, "x"),
                Join(B, 1, "y"),
                Join(B, 2, "x"),
                Advance(TTL_MS / 2),
                Renew(B),
                Advance(TTL_MS / 2),
                Read,
                Leave(B, "x"),
                Renew(A),
                Read,
                Advance(TTL_MS / 2),
                Renew(B),
                Renew(A),
                Read,
            ],
        ),
        (
            "restores",
            1_000,
            vec![
                Join(A, 1, "ann"),
                Join(A, 2, "bob"),
                Restore(A, vec![("bob", 2), ("cat", 1), ("dog", 0)]),
                Restore(A, vec![("cat", 1), ("bob", 2)]),
                Read,
                Join(B, 1, "cat"),
                Restore(A, vec![]),
                Read,
                Restore(B, vec![("cat", 1), ("cat", 1)]),
                Read,
                Advance(TTL_MS),
                Renew(B),
                Read,
            ],
        ),
        (
            "a room past events_max_members",
            2,
            vec![
                Join(A, 1, "a"),
                Join(A, 2, "b"),
                Join(B, 3, "c"),
                Join(B, 4, "d"),
                Leave(B, "d"),
                Leave(B, "c"),
                Leave(A, "b"),
                Leave(A, "a"),
            ],
        ),
    ];
    for (case, (what, max, steps)) in cases.into_iter().enumerate() {
        let mut model = Model::start(&server, limits(max), &format!("case{case}")).await;
        model.run(what, &steps).await;
    }
}

#[tokio::test]
async fn random_sequences_agree() {
    let server = RedisServer::start();
    const NAMES: [&str; 4] = ["ann", "bob", "cat", "dog"];
    for seed in 0..6u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let max = if seed % 3 == 2 { 2 } else { 1_000 };
        let mut model = Model::start(&server, limits(max), &format!("seed{seed}")).await;
        let what = format!("seed {seed}");
        for _ in 0..150 {
            let node = if rng.bool() { A } else { B };
            let name = NAMES[rng.usize(..NAMES.len())];
            let session = rng.u64(1..4);
            let step = match rng.u32(0..100) {
                0..=29 => Step::Join(node, session, name),
                30..=44 => Step::Leave(node, name),
                45..=59 => Step::Keep(node, session, name, rng.u64(1..800)),
                60..=69 => Step::Renew(node),
                70..=74 => {
                    let counts = (0..rng.usize(0..3))
                        .map(|_| (NAMES[rng.usize(..NAMES.len())], rng.u32(0..3)))
                        .collect();
                    Step::Restore(node, counts)
                }
                75..=79 => Step::Sweep,
                80..=84 => Step::Read,
                _ => Step::Advance(rng.u64(1..400)),
            };
            model.step(&step, &what).await;
        }
    }
}

#[tokio::test]
async fn with_presence_off_the_broker_sends_nothing_and_lists_nobody() {
    use super::super::{Broker, BrokerHealth, Origin, Pending};
    use super::{RedisBroker, RedisSettings};
    use crate::config::{BrokerSettings, HistorySettings};

    let server = RedisServer::start();
    let settings = RedisSettings {
        url: server.url(),
        key_prefix: "off".to_owned(),
        presence: PresenceLimits {
            enabled: false,
            ..limits(1_000)
        },
        ..RedisSettings::new(&BrokerSettings::default(), &HistorySettings::default())
    };
    let mut broker = RedisBroker::start(settings).expect("broker");
    let mut health = broker.health();
    tokio::time::timeout(WAIT, health.wait_for(|h| *h == BrokerHealth::Up))
        .await
        .expect("up in time")
        .expect("health");
    let room: Arc<str> = Arc::from(ROOM);
    let origin = Origin {
        node: broker.node(),
        session: 1,
    };
    broker.presence_join(&room, "ann", origin);
    broker.presence_restore(&room, vec![(Arc::from("ann"), 1)]);
    broker.presence_sweep(&room);
    match broker.presence(&room) {
        Pending::Ready(Ok(members)) => assert!(members.is_empty(), "{members:?}"),
        _ => panic!("presence off answers at once, with nobody"),
    }
    // A message through the same queue: once it is published, any presence job before it
    // would have run.
    broker.publish(ROOM, "x", "y").await.expect("published");
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("off:*presence*")
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "presence off wrote {keys:?}");
}
