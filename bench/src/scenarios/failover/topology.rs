//! The Redis side of a `failover` run: the processes (a Sentinel set or a Redis Cluster from
//! the kit), the URL the nodes take, the master to SIGKILL, and what the failover authority
//! said afterwards: every master it agreed on, in order (a failover can be followed by a
//! second one), and its events. Under Sentinel: what all three sentinels name, and their own
//! event stream (`PSUBSCRIBE *`: `+odown`, `+elected-leader`, `+promoted-slave`,
//! `+switch-master`, `-failover-abort-...`). On a cluster: the owner of the killed master's
//! first slot and `cluster_state` as each running node sees them (`CLUSTER NODES`, `CLUSTER
//! INFO`), agreed when every node is `ok` and names one owner; each change a node shows is
//! an event.
//!
//! It owns these processes (through the kit) and its own loopback connections to them,
//! asked without blocking the runtime (the kit's `redis-cli` helpers block: they are used
//! only before the clients start); it must not talk to the wsgrace nodes nor count what the
//! clients saw.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use wsgrace_kit::redis::RedisServer;
use wsgrace_kit::redis_cluster::{ClusterView, RedisCluster};
use wsgrace_kit::sentinel::SentinelSet;

/// The master name the sentinels monitor.
const MASTER_NAME: &str = "wsgrace-bench";

/// How long one question to a sentinel may take.
const ASK_DEADLINE: Duration = Duration::from_millis(500);

/// The most sentinel events a run keeps.
const MAX_EVENTS: usize = 200;

/// The Redis processes of one run.
pub enum Topology {
    Sentinel(Box<SentinelSet>),
    /// A cluster and the master chosen to be killed, with the first slot it serves.
    Cluster {
        cluster: RedisCluster,
        victim: u16,
        first_slot: u16,
    },
}

impl Topology {
    /// A master, `replicas` replicas and three sentinels, ready (blocking: call it before
    /// anything else runs).
    pub fn start_sentinel(replicas: usize) -> Result<Topology, String> {
        SentinelSet::try_start(MASTER_NAME, replicas)
            .map(|set| Topology::Sentinel(Box::new(set)))
            .map_err(|e| e.to_string())
    }

    /// 3 masters with `replicas` replicas each; the master to kill is the one serving the
    /// most of `rooms` (blocking, like [`start_sentinel`](Self::start_sentinel)). Answers
    /// also, per room, whether it lives on that master.
    pub fn start_cluster(
        replicas: usize,
        rooms: &[String],
    ) -> Result<(Topology, Vec<bool>), String> {
        let cluster = RedisCluster::try_start(3, replicas).map_err(|e| e.to_string())?;
        // A room's keys and channel carry `{ROOM}`: its slot is that of the room's name.
        let owners: Vec<Option<u16>> = rooms
            .iter()
            .map(|room| cluster.master_of(&format!("{{{room}}}")))
            .collect();
        let masters = cluster.master_ports();
        let victim = masters
            .iter()
            .copied()
            .max_by_key(|m| {
                (
                    owners.iter().filter(|o| **o == Some(*m)).count(),
                    u16::MAX - m,
                )
            })
            .ok_or("the cluster names no master")?;
        let first_slot = cluster
            .view()
            .map_err(|e| e.to_string())?
            .slots_of(victim)
            .first()
            .map(|(a, _)| *a)
            .ok_or("the master to kill serves no slot")?;
        let on_victim = owners.iter().map(|o| *o == Some(victim)).collect();
        Ok((
            Topology::Cluster {
                cluster,
                victim,
                first_slot,
            },
            on_victim,
        ))
    }

    /// `broker.redis_url` for the nodes.
    pub fn url(&self) -> String {
        match self {
            Topology::Sentinel(set) => set.url(),
            Topology::Cluster { cluster, .. } => cluster.url(),
        }
    }

    /// The processes' ports, for the report.
    pub fn describe(&self) -> Value {
        match self {
            Topology::Sentinel(set) => json!({
                "kind": "sentinel",
                "master": set.master.port(),
                "replicas": set.replicas.iter().map(|r| r.port()).collect::<Vec<_>>(),
                "sentinels": set.sentinels.iter().map(|s| s.port()).collect::<Vec<_>>(),
            }),
            Topology::Cluster {
                cluster,
                victim,
                first_slot,
            } => json!({
                "kind": "cluster",
                "masters": cluster.master_ports(),
                "nodes": cluster.ports(),
                "killed_master": victim,
                "its_first_slot": first_slot,
            }),
        }
    }

    /// SIGKILLs the master at once, then lets the kit reap it (and, for a cluster, note
    /// its slots); answers its port.
    pub fn kill_master(&mut self) -> u16 {
        match self {
            Topology::Sentinel(set) => {
                sigkill(&set.master);
                set.master.kill();
                set.master.port()
            }
            Topology::Cluster {
                cluster, victim, ..
            } => {
                if let Some(server) = cluster.server(*victim) {
                    sigkill(server);
                }
                cluster.kill(*victim);
                *victim
            }
        }
    }

    /// The sentinels, whose event streams say how the failover went (none for a cluster:
    /// its nodes' views are polled instead).
    pub fn event_ports(&self) -> Vec<u16> {
        match self {
            Topology::Sentinel(set) => set.sentinels.iter().map(|s| s.port()).collect(),
            Topology::Cluster { .. } => Vec::new(),
        }
    }

    /// Who each authority names as the master now (`None`: no answer in time, or, on a
    /// cluster, a node not `cluster_state:ok`); for a cluster also logs each change a node
    /// shows into `events` (`seen` holds what each showed last).
    async fn named(&self, events: &EventLog, seen: &mut Vec<String>) -> Vec<Option<u16>> {
        match self {
            Topology::Sentinel(set) => {
                let mut named = Vec::new();
                for sentinel in &set.sentinels {
                    named.push(sentinel_master(sentinel.port(), set.name()).await);
                }
                named
            }
            Topology::Cluster {
                cluster,
                victim,
                first_slot,
            } => {
                let ports: Vec<u16> = cluster
                    .ports()
                    .into_iter()
                    .filter(|p| p != victim)
                    .collect();
                seen.resize(ports.len(), String::new());
                let mut named = Vec::new();
                for (i, port) in ports.iter().enumerate() {
                    let (state, owner) = cluster_node_view(*port, *first_slot).await;
                    let shown = format!(
                        "node {port}: cluster_state:{} owner of slot {first_slot}: {}",
                        state.as_deref().unwrap_or("?"),
                        owner.map_or("?".to_owned(), |o| o.to_string())
                    );
                    if seen[i] != shown {
                        if events.borrow().len() < MAX_EVENTS {
                            events.borrow_mut().push((Instant::now(), i, shown.clone()));
                        }
                        seen[i] = shown;
                    }
                    named.push(owner.filter(|_| state.as_deref() == Some("ok")));
                }
                named
            }
        }
    }
}

/// SIGKILL to `server` now (the kit's `kill` asks the cluster for its view first).
fn sigkill(server: &RedisServer) {
    if let Some(pid) = server.pid().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid of a child the kit started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A cluster node's `cluster_state` and the master it sees serving `slot`.
async fn cluster_node_view(port: u16, slot: u16) -> (Option<String>, Option<u16>) {
    let ask = |command: &'static str| async move {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut stream = BufReader::new(stream);
        stream.get_mut().write_all(command.as_bytes()).await.ok()?;
        read_reply(&mut stream).await.ok()?.into_iter().next()
    };
    let info = tokio::time::timeout(ASK_DEADLINE, ask("CLUSTER INFO\r\n"))
        .await
        .ok()
        .flatten();
    let state = info.and_then(|text| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("cluster_state:").map(str::to_owned))
    });
    let nodes = tokio::time::timeout(ASK_DEADLINE, ask("CLUSTER NODES\r\n"))
        .await
        .ok()
        .flatten();
    let owner = nodes
        .and_then(|text| ClusterView::parse(&text).ok())
        .and_then(|view| view.master_of_slot(slot));
    (state, owner)
}

/// `SENTINEL get-master-addr-by-name NAME` on a fresh loopback connection: the port, or
/// `None` if the sentinel does not answer in time or names none.
async fn sentinel_master(port: u16, name: &str) -> Option<u16> {
    let ask = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut stream = BufReader::new(stream);
        let command = format!("SENTINEL get-master-addr-by-name {name}\r\n");
        stream.get_mut().write_all(command.as_bytes()).await.ok()?;
        let answer = read_reply(&mut stream).await.ok()?;
        answer.get(1)?.parse().ok()
    };
    tokio::time::timeout(ASK_DEADLINE, ask).await.ok().flatten()
}

/// One RESP reply as strings: an array's elements (bulk strings, integers, simple
/// strings), or a single value as a one-element list; a nil array or an error is empty.
async fn read_reply(stream: &mut BufReader<TcpStream>) -> std::io::Result<Vec<String>> {
    let header = read_line(stream).await?;
    let Some(count) = header.strip_prefix('*') else {
        return Ok(match header.as_bytes().first() {
            Some(b'-') | None => Vec::new(),
            Some(b'$') => vec![read_bulk(stream, &header).await?],
            Some(_) => vec![header[1..].to_owned()],
        });
    };
    let count: i64 = count.parse().map_err(std::io::Error::other)?;
    let mut items = Vec::new();
    for _ in 0..count.max(0) {
        let line = read_line(stream).await?;
        items.push(if line.starts_with('$') {
            read_bulk(stream, &line).await?
        } else {
            line.get(1..).unwrap_or_default().to_owned()
        });
    }
    Ok(items)
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches("\r\n").to_owned())
}

/// The bulk string announced by `header` (`$LEN`; `$-1` is nil, read as empty).
async fn read_bulk(stream: &mut BufReader<TcpStream>, header: &str) -> std::io::Result<String> {
    let len: i64 = header[1..].parse().map_err(std::io::Error::other)?;
    let Ok(len) = usize::try_from(len) else {
        return Ok(String::new());
    };
    let mut buf = vec![0u8; len + 2];
    stream.read_exact(&mut buf).await?;
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What the authority said after the kill: when a first sentinel named another master, and
/// every master all of them agreed on, in order.
#[derive(Default)]
pub struct Switches {
    first_named: Cell<Option<Instant>>,
    agreed: RefCell<Vec<(Instant, u16)>>,
}

impl Switches {
    /// The first master all sentinels agreed on after the kill, and when.
    pub fn first_agreed(&self) -> Option<(Instant, u16)> {
        self.agreed.borrow().first().copied()
    }

    /// `{first, all, port, later: [{ms, port}]}`, times in ms after `killed`.
    pub fn json(&self, killed: Instant) -> Value {
        let since = |at: Instant| super::super::ms(at.saturating_duration_since(killed));
        let agreed = self.agreed.borrow();
        let later: Vec<Value> = agreed
            .iter()
            .skip(1)
            .map(|(at, port)| json!({"ms": since(*at), "port": port}))
            .collect();
        json!({
            "first": self.first_named.get().map(since),
            "all": agreed.first().map(|(at, _)| since(*at)),
            "port": agreed.first().map(|(_, port)| *port),
            "later": later,
        })
    }
}

/// Asks the authority every `poll` and records each master all of it agrees on that
/// differs from the one before (`old` at the start); runs until aborted.
pub async fn watch_switches(
    topology: Rc<Topology>,
    old: u16,
    switches: Rc<Switches>,
    events: EventLog,
    poll: Duration,
) {
    let mut current = old;
    let mut seen = Vec::new();
    loop {
        let named = topology.named(&events, &mut seen).await;
        let now = Instant::now();
        if switches.first_named.get().is_none() && named.iter().flatten().any(|p| *p != old) {
            switches.first_named.set(Some(now));
        }
        if let Some(Some(port)) = named.first() {
            if *port != current && named.iter().all(|n| *n == Some(*port)) {
                current = *port;
                switches.agreed.borrow_mut().push((now, current));
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// The sentinels' events: (when, which sentinel, `channel message`).
pub type EventLog = Rc<RefCell<Vec<(Instant, usize, String)>>>;

/// `PSUBSCRIBE *` on the sentinel at `port` and keeps every event it publishes (up to
/// [`MAX_EVENTS`] in all); runs until aborted or the sentinel goes away.
pub async fn watch_events(port: u16, sentinel: usize, log: EventLog) {
    let Ok(Ok(stream)) =
        tokio::time::timeout(ASK_DEADLINE, TcpStream::connect(("127.0.0.1", port))).await
    else {
        return;
    };
    let mut stream = BufReader::new(stream);
    if stream
        .get_mut()
        .write_all(b"PSUBSCRIBE *\r\n")
        .await
        .is_err()
    {
        return;
    }
    while let Ok(reply) = read_reply(&mut stream).await {
        // ["pmessage", pattern, channel, message]
        if let [kind, _, channel, message] = reply.as_slice() {
            if kind == "pmessage" && log.borrow().len() < MAX_EVENTS {
                let text = format!("{channel} {message}");
                log.borrow_mut().push((Instant::now(), sentinel, text));
            }
        }
    }
}

/// The events from `killed` on, each as `"+1234 ms s0 +odown master ..."` (`sN`: the
/// sentinel or cluster node that said it).
pub fn events_json(log: &EventLog, killed: Instant) -> Value {
    let lines: Vec<String> = log
        .borrow()
        .iter()
        .filter(|(at, _, _)| *at >= killed)
        .map(|(at, sentinel, text)| {
            let ms = at.saturating_duration_since(killed).as_millis();
            let text: String = text.chars().take(120).collect();
            format!("+{ms} ms s{sentinel} {text}")
        })
        .collect();
    json!(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replies a sentinel gives, from a loopback listener: an address, none, and a
    /// pub/sub event after the subscription's confirmation.
    #[tokio::test]
    async fn sentinel_replies_are_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let canned: &[u8] = b"*2\r\n$9\r\n127.0.0.1\r\n$5\r\n40053\r\n*-1\r\n\
            *3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n\
            *4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$6\r\n+odown\r\n$13\r\nmaster x 1 2 \r\n";
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            socket.write_all(canned).await.expect("write");
        });
        let mut stream = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        let address = read_reply(&mut stream).await.expect("a reply");
        assert_eq!(address, ["127.0.0.1", "40053"]);
        assert!(read_reply(&mut stream).await.expect("nil").is_empty());
        let confirmation = read_reply(&mut stream).await.expect("a reply");
        assert_eq!(confirmation, ["psubscribe", "*", "1"]);
        let event = read_reply(&mut stream).await.expect("an event");
        assert_eq!(event, ["pmessage", "*", "+odown", "master x 1 2 "]);
    }
}
