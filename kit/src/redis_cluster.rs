//! A Redis Cluster of the caller's own, for the cluster tests and benchmarks: `masters`
//! masters with `replicas_per_master` replicas each, every node a [`RedisServer`]
//! (`redis-server --cluster-enabled yes`, node timeout 1 s) on a free loopback port below
//! 55536 whose cluster bus port (port + 10000) is free too, joined by
//! `redis-cli --cluster create`, stopped on drop with its temp files.
//! [`RedisCluster::url`] is the `redis+cluster://` URL wsgrace takes.
//!
//! It owns these processes and their temp files only; it must not touch a system Redis, and
//! it asks the nodes with `redis-cli` (installed with `redis-server`). What a node says about
//! the cluster (`CLUSTER NODES`) is read by the pure [`ClusterView`], tested on its own.
//!
//! How a failover goes here: a killed master is suspected after the node timeout (1 s),
//! marked failed by a majority of the masters, and its replica is elected and promoted about
//! a second later (2–3 s in all on an idle machine). With Redis's default
//! `cluster-require-full-coverage yes`, which the kit keeps, every node answers
//! `CLUSTERDOWN` between the failure being agreed on and the promotion, for every slot, not
//! only the failed shard's.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::child::output_within;
use crate::port::free_cluster_port;
use crate::redis::{cli_with_password, RedisNode, RedisServer, INSTALL};
use crate::temp::temp_dir;
use crate::KitError;

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u32 = 16_384;

/// How long forming the cluster may take on a busy 2-core machine (the nodes meeting, the
/// replicas' first sync, every node agreeing); reached only on failure.
pub const FORM_DEADLINE: Duration = Duration::from_secs(60);

/// How many ports a node is tried on before its start counts as failed (another program may
/// take a port between the check and the node's bind).
const PORT_ATTEMPTS: usize = 5;

/// The node timeout: how long a node may not answer before it is suspected.
const NODE_TIMEOUT_MS: &str = "1000";

/// How to start a cluster: [`RedisCluster::builder`], then [`start`](Self::start) or
/// [`try_start`](Self::try_start).
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    password: Option<String>,
    program: Option<PathBuf>,
    args: Vec<String>,
}

impl ClusterBuilder {
    /// Every node requires `password` (`requirepass`; `masterauth` for the replicas);
    /// [`RedisCluster::url`] carries it.
    pub fn password(mut self, password: &str) -> ClusterBuilder {
        self.password = Some(password.to_owned());
        self
    }

    /// Another `redis-server` binary (`redis-cli` still comes from the PATH).
    pub fn program(mut self, program: impl Into<PathBuf>) -> ClusterBuilder {
        self.program = Some(program.into());
        self
    }

    /// Extra arguments for every node, after the kit's own (so they win), e.g.
    /// `["--cluster-require-full-coverage", "no"]`.
    pub fn args<I, S>(mut self, args: I) -> ClusterBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the cluster and waits until it is formed (see [`RedisCluster::try_start`]);
    /// panics with the reason otherwise.
    pub fn start(self) -> RedisCluster {
        self.try_start().unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start`](Self::start), answering why it failed instead of panicking.
    pub fn try_start(self) -> Result<RedisCluster, KitError> {
        if self.masters < 3 {
            return Err(KitError::Unexpected(format!(
                "a Redis Cluster needs at least 3 masters (`redis-cli --cluster create`), \
                 not {}",
                self.masters
            )));
        }
        let dir = temp_dir("redis-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            seeds: Vec::new(),
            password: self.password.clone(),
            known_slots: Mutex::new(BTreeMap::new()),
            dir,
        };
        for _ in 0..self.masters * (1 + self.replicas_per_master) {
            let node = self.start_node(&cluster.dir)?;
            cluster.nodes.push(node);
        }
        cluster.create(self.replicas_per_master)?;
        let view = cluster.wait_formed(self.masters, self.replicas_per_master, FORM_DEADLINE)?;
        cluster.seeds = view.master_ports();
        cluster.remember_slots(&view);
        Ok(cluster)
    }

    /// One node on a free cluster port, checked to be the process the kit started (not
    /// another program's Redis on a port taken meanwhile); tried on other ports if not.
    fn start_node(&self, dir: &std::path::Path) -> Result<RedisServer, KitError> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_cluster_port().ok_or_else(|| {
                KitError::Unexpected(
                    "no free loopback port below 55536 with its cluster bus port free".into(),
                )
            })?;
            let log = dir.join(format!("redis-{port}.log"));
            let mut node = RedisNode::new().port(port).args([
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.join(format!("nodes-{port}.conf"))
                    .to_string_lossy()
                    .into_owned(),
                "--cluster-node-timeout".to_owned(),
                NODE_TIMEOUT_MS.to_owned(),
                // A replica may always stand for election, however long its link was down
                // (a busy machine): the failover never stalls for want of a valid replica.
                "--cluster-replica-validity-factor".to_owned(),
                "0".to_owned(),
                // Redis 7 waits 5 s before a diskless full sync by default.
                "--repl-diskless-sync-delay".to_owned(),
                "0".to_owned(),
                "--logfile".to_owned(),
                log.to_string_lossy().into_owned(),
            ]);
            if let Some(program) = &self.program {
                node = node.program(program);
            }
            if let Some(password) = &self.password {
                node = node.password(password).args(["--masterauth", password]);
            }
            node = node.args(self.args.iter().cloned());
            match node.try_start() {
                Ok(server) => {
                    let info =
                        cli_with_password(port, self.password.as_deref(), &["INFO", "server"]);
                    let ours = server.pid().map(|pid| format!("process_id:{pid}"));
                    match (info, ours) {
                        (Ok(info), Some(ours)) if info.lines().any(|l| l.trim() == ours) => {
                            return Ok(server)
                        }
                        (info, _) => {
                            last = Some(KitError::Unexpected(format!(
                                "port {port} is answered by another Redis than the one \
                                 started there ({info:?})"
                            )))
                        }
                    }
                }
                Err(KitError::ExitedAtStart { what, status, .. }) => {
                    last = Some(KitError::ExitedAtStart {
                        what,
                        status,
                        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
                    })
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| KitError::Unexpected("no node started".into())))
    }
}

/// A Redis Cluster: its nodes, each a [`RedisServer`], and what the cluster says about them.
pub struct RedisCluster {
    /// In start order; a killed node stays here, not running.
    nodes: Vec<RedisServer>,
    /// The masters when the cluster was formed, by their first slot: [`Self::url`].
    seeds: Vec<u16>,
    password: Option<String>,
    /// The slots each master had when last seen (at the start, and just before a
    /// [`kill`](Self::kill)): what [`wait_failover`](Self::wait_failover) waits for.
    known_slots: Mutex<BTreeMap<u16, Vec<(u16, u16)>>>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3) with `replicas_per_master` replicas each and
    /// waits until the cluster is formed (see [`try_start`](Self::try_start)); panics with
    /// the reason otherwise.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        RedisCluster::builder(masters, replicas_per_master).start()
    }

    /// [`start`](Self::start), answering why it failed instead of panicking: formed means
    /// every node says `cluster_state:ok`, knows every other node and sees the same
    /// `masters` masters covering all 16384 slots, and every replica's link to its master
    /// is up (its first sync done). A machine without `redis-server` or `redis-cli` fails
    /// with the command that installs them.
    pub fn try_start(masters: usize, replicas_per_master: usize) -> Result<RedisCluster, KitError> {
        RedisCluster::builder(masters, replicas_per_master).try_start()
    }

    /// A cluster to start with a password, another binary or more arguments.
    pub fn builder(masters: usize, replicas_per_master: usize) -> ClusterBuilder {
        ClusterBuilder {
            masters,
            replicas_per_master,
            password: None,
            program: None,
            args: Vec::new(),
        }
    }

    /// `redis+cluster://[:PASSWORD@]127.0.0.1:P1,127.0.0.1:P2,...`: the masters when the
    /// cluster was formed (the URL stays the same after a failover, as an operator's would).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .seeds
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |pw| format!(":{pw}@"));
        format!("redis+cluster://{auth}{}", hosts.join(","))
    }

    /// Every node's port, in start order (killed ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The node on `port`.
    pub fn server(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|node| node.port() == port)
    }

    /// The node on `port`, e.g. to [`restart`](RedisServer::restart) a killed one: it comes
    /// back empty and, its nodes file kept, rejoins the cluster (a killed master as a replica
    /// of its shard's new master).
    pub fn server_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|node| node.port() == port)
    }

    /// Every node, in start order.
    pub fn servers(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter()
    }

    /// The cluster as the first running node that answers sees it now.
    pub fn view(&self) -> Result<ClusterView, KitError> {
        let mut last = None;
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            match self.command(node.port(), &["CLUSTER", "NODES"]) {
                Ok(text) => return ClusterView::parse(&text),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| KitError::Unexpected("no node of the cluster runs".into())))
    }

    /// The current masters (owning slots, not failed) by their first slot, as a running
    /// node sees them; empty if none answers.
    pub fn master_ports(&self) -> Vec<u16> {
        self.view()
            .map(|view| view.master_ports())
            .unwrap_or_default()
    }

    /// The replicas of the master on `port`, as a running node sees them.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.view()
            .map(|view| view.replicas_of(port))
            .unwrap_or_default()
    }

    /// The hash slot of `key_or_channel` (`CLUSTER KEYSLOT`, hash tags honoured).
    pub fn keyslot(&self, key_or_channel: &str) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .find_map(|node| {
                self.command(node.port(), &["CLUSTER", "KEYSLOT", key_or_channel])
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// The port of the master that serves `key_or_channel` now (a sharded channel lives in
    /// its name's slot, like a key), as a running node sees it.
    pub fn master_of(&self, key_or_channel: &str) -> Option<u16> {
        let slot = self.keyslot(key_or_channel)?;
        self.view().ok()?.master_of_slot(slot)
    }

    /// `redis-cli ARGS...` on the node on `port` (no redirection followed): its raw output.
    pub fn command(&self, port: u16, args: &[&str]) -> Result<String, KitError> {
        cli_with_password(port, self.password.as_deref(), args)
    }

    /// SIGKILLs the node on `port`: it loses everything. Panics if no node of this cluster
    /// has that port. The slots it served (if a master) are remembered for
    /// [`wait_failover`](Self::wait_failover).
    pub fn kill(&mut self, port: u16) {
        if let Ok(view) = self.view() {
            self.remember_slots(&view);
        }
        let node = self
            .server_mut(port)
            .unwrap_or_else(|| panic!("no node of this cluster has port {port}"));
        node.kill();
    }

    /// Waits, up to `deadline`, until the slots the master on `old` served belong to another
    /// master in the view of every running node (`old` excluded) and every one of them says
    /// `cluster_state:ok`: a replica of it was promoted and the cluster knows. Answers the
    /// new master's port.
    pub fn wait_failover(&self, old: u16, deadline: Duration) -> Result<u16, KitError> {
        let mut slots = self.slots_known_of(old);
        if slots.is_empty() {
            // Never seen serving: ask now (a failover not killed through the kit).
            if let Ok(view) = self.view() {
                self.remember_slots(&view);
            }
            slots = self.slots_known_of(old);
        }
        let Some(&(first, _)) = slots.first() else {
            return Err(KitError::Unexpected(format!(
                "port {old} is not known as a master of this cluster"
            )));
        };
        let start = Instant::now();
        loop {
            let mut states = Vec::new();
            let mut owners = HashSet::new();
            for node in self
                .nodes
                .iter()
                .filter(|node| node.is_running() && node.port() != old)
            {
                let ok = self
                    .command(node.port(), &["CLUSTER", "INFO"])
                    .is_ok_and(|info| cluster_info_field(&info, "cluster_state") == Some("ok"));
                let owner = self
                    .command(node.port(), &["CLUSTER", "NODES"])
                    .ok()
                    .and_then(|text| ClusterView::parse(&text).ok())
                    .and_then(|view| {
                        let owner = view.master_of_slot(first)?;
                        slots
                            .iter()
                            .all(|&(a, b)| {
                                view.master_of_slot(a) == Some(owner)
                                    && view.master_of_slot(b) == Some(owner)
                            })
                            .then_some(owner)
                    });
                states.push((node.port(), ok, owner));
                owners.insert(owner);
            }
            let all_ok = states.iter().all(|(_, ok, _)| *ok);
            let agreed = match owners.iter().collect::<Vec<_>>().as_slice() {
                [Some(new)] if *new != old => Some(*new),
                _ => None,
            };
            if let (true, Some(new)) = (all_ok, agreed) {
                self.remember_slots_of(new, slots);
                return Ok(new);
            }
            if start.elapsed() > deadline {
                return Err(KitError::Timeout {
                    what: format!(
                        "a replica of {old} to take its slots, seen by every node \
                         (port, cluster_state ok, owner of slot {first}: {states:?})"
                    ),
                    deadline,
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits, up to `deadline`, until every running node says `cluster_state:ok`, they all
    /// agree on the masters and on whose replica each running replica is, and every running
    /// node serves slots or is a replica whose link is up: after a restart of a killed
    /// node, say. Answers the view of one of them.
    pub fn wait_stable(&self, deadline: Duration) -> Result<ClusterView, KitError> {
        let start = Instant::now();
        loop {
            match self.stable_view() {
                Ok(view) => return Ok(view),
                Err(why) if start.elapsed() > deadline => {
                    return Err(KitError::Timeout {
                        what: format!("the cluster to be stable ({why})"),
                        deadline,
                        stderr: String::new(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `redis-cli --cluster create` over every node.
    fn create(&self, replicas_per_master: usize) -> Result<(), KitError> {
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port()));
        }
        command
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes");
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let output = output_within(&mut command, FORM_DEADLINE, Some(INSTALL))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("All 16384 slots covered") {
            return Err(KitError::Unexpected(format!(
                "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// Polls until the cluster is formed as [`try_start`](Self::try_start) says.
    fn wait_formed(
        &self,
        masters: usize,
        replicas_per_master: usize,
        deadline: Duration,
    ) -> Result<ClusterView, KitError> {
        let start = Instant::now();
        loop {
            let formed = self.stable_view().and_then(|view| {
                let (m, r) = (view.master_ports().len(), view.replica_count());
                if m == masters && r == masters * replicas_per_master {
                    Ok(view)
                } else {
                    Err(format!("{m} masters and {r} replicas"))
                }
            });
            match formed {
                Ok(view) => return Ok(view),
                Err(why) if start.elapsed() > deadline => {
                    return Err(KitError::Timeout {
                        what: format!("the Redis Cluster to form ({why})"),
                        deadline,
                        stderr: String::new(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The view of every running node when they all say `cluster_state:ok`, know each other,
    /// agree on the masters (all slots covered) and on whose replica each running replica
    /// is, and each one is, by its own account, a master serving slots or a replica whose
    /// link is up; why not otherwise.
    fn stable_view(&self) -> Result<ClusterView, String> {
        let running: Vec<u16> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(RedisServer::port)
            .collect();
        let mut agreed: Option<(ClusterView, Shape)> = None;
        for &port in &running {
            let info = self
                .command(port, &["CLUSTER", "INFO"])
                .map_err(|err| err.to_string())?;
            if cluster_info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("{port} says cluster_state is not ok"));
            }
            let view = self
                .command(port, &["CLUSTER", "NODES"])
                .map_err(|err| err.to_string())
                .and_then(|text| ClusterView::parse(&text).map_err(|err| err.to_string()))?;
            if view.covered_slots() != SLOTS {
                return Err(format!("{port} sees {} slots served", view.covered_slots()));
            }
            let known: HashSet<u16> = view.nodes.iter().map(|node| node.port).collect();
            if let Some(missing) = running.iter().find(|port| !known.contains(port)) {
                return Err(format!("{port} does not know {missing}"));
            }
            match view.myself() {
                Some(me) if me.is_serving_master() => {}
                Some(me) if me.is_replica() => {
                    let info = self
                        .command(port, &["INFO", "replication"])
                        .map_err(|err| err.to_string())?;
                    if cluster_info_field(&info, "master_link_status") != Some("up") {
                        return Err(format!("the replica {port}'s link is not up"));
                    }
                }
                _ => return Err(format!("{port} is neither serving slots nor a replica")),
            }
            let shape = view.shape(&running);
            match &agreed {
                Some((_, first)) if *first != shape => {
                    return Err(format!(
                        "{port} sees (masters, (replica, master)) {shape:?}, another node {first:?}"
                    ))
                }
                Some(_) => {}
                None => agreed = Some((view, shape)),
            }
        }
        agreed
            .map(|(view, _)| view)
            .ok_or_else(|| "no node of the cluster runs".to_owned())
    }

    /// Notes the slots of every master of `view`.
    fn remember_slots(&self, view: &ClusterView) {
        for port in view.master_ports() {
            self.remember_slots_of(port, view.slots_of(port));
        }
    }

    fn remember_slots_of(&self, port: u16, slots: Vec<(u16, u16)>) {
        if let Ok(mut known) = self.known_slots.lock() {
            known.insert(port, slots);
        }
    }

    fn slots_known_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.known_slots
            .lock()
            .ok()
            .and_then(|known| known.get(&port).cloned())
            .unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Every node first: a running node rewrites its nodes file.
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `field` in an `INFO` or `CLUSTER INFO` answer (`field:value` lines).
fn cluster_info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key == field).then_some(value)
    })
}

/// The masters, and each replica among some nodes with its master: what every node must
/// agree on.
type Shape = (Vec<u16>, Vec<(u16, Option<u16>)>);

/// One line of `CLUSTER NODES`: a node as another node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    pub flags: Vec<String>,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// The slot ranges it serves, inclusive (importing and migrating entries left out).
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Flagged `fail` (agreed failed) or `fail?` (suspected by the one asked).
    pub fn is_failed(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }

    /// A master that serves slots and is not known to have failed.
    pub fn is_serving_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail") && !self.slots.is_empty()
    }

    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }
}

/// The cluster as one node sees it: its `CLUSTER NODES` answer, parsed. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeLine>,
}

impl ClusterView {
    /// Parses a `CLUSTER NODES` answer: `ID IP:PORT@BUS[,HOSTNAME] FLAGS MASTER PING PONG
    /// EPOCH LINK SLOT...` a line.
    pub fn parse(text: &str) -> Result<ClusterView, KitError> {
        let bad = |line: &str| KitError::Unexpected(format!("a CLUSTER NODES line: {line:?}"));
        let mut nodes = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, addr, flags, master, _ping, _pong, _epoch, _link, slots @ ..] =
                fields.as_slice()
            else {
                return Err(bad(line));
            };
            let port = addr
                .split(['@', ','])
                .next()
                .and_then(|host_port| host_port.rsplit_once(':'))
                .and_then(|(_, port)| port.parse().ok())
                .ok_or_else(|| bad(line))?;
            let mut ranges = Vec::new();
            for slot in slots.iter().filter(|s| !s.starts_with('[')) {
                let (a, b) = slot.split_once('-').unwrap_or((slot, slot));
                match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) if a <= b => ranges.push((a, b)),
                    _ => return Err(bad(line)),
                }
            }
            nodes.push(NodeLine {
                id: (*id).to_owned(),
                port,
                flags: flags.split(',').map(str::to_owned).collect(),
                master_id: (*master != "-").then(|| (*master).to_owned()),
                slots: ranges,
            });
        }
        Ok(ClusterView { nodes })
    }

    /// The node that answered.
    pub fn myself(&self) -> Option<&NodeLine> {
        self.nodes.iter().find(|node| node.has_flag("myself"))
    }

    /// The masters, and each replica among `ports` with its master's port, by port.
    fn shape(&self, ports: &[u16]) -> Shape {
        let mut replicas: Vec<(u16, Option<u16>)> = self
            .nodes
            .iter()
            .filter(|node| node.is_replica() && ports.contains(&node.port))
            .map(|node| {
                let master = self
                    .nodes
                    .iter()
                    .find(|m| Some(&m.id) == node.master_id.as_ref())
                    .map(|m| m.port);
                (node.port, master)
            })
            .collect();
        replicas.sort_unstable();
        (self.master_ports(), replicas)
    }

    /// The masters serving slots, not failed, by their first slot.
    pub fn master_ports(&self) -> Vec<u16> {
        let mut masters: Vec<&NodeLine> = self
            .nodes
            .iter()
            .filter(|node| node.is_serving_master())
            .collect();
        masters.sort_by_key(|node| node.slots.iter().map(|(a, _)| *a).min());
        masters.iter().map(|node| node.port).collect()
    }

    /// The master serving `slot` (not failed).
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_serving_master())
            .find(|node| node.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|node| node.port)
    }

    /// The slot ranges the node on `port` serves.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .map(|node| node.slots.clone())
            .unwrap_or_default()
    }

    /// The replicas of the node on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let Some(master) = self.nodes.iter().find(|node| node.port == port) else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter(|node| node.is_replica() && node.master_id.as_deref() == Some(&master.id))
            .map(|node| node.port)
            .collect()
    }

    /// How many nodes are replicas.
    pub fn replica_count(&self) -> usize {
        self.nodes.iter().filter(|node| node.is_replica()).count()
    }

    /// How many slots the serving masters cover together.
    pub fn covered_slots(&self) -> u32 {
        let mut covered = vec![false; SLOTS as usize];
        for node in self.nodes.iter().filter(|node| node.is_serving_master()) {
            for &(a, b) in &node.slots {
                for slot in a..=b {
                    if let Some(seen) = covered.get_mut(usize::from(slot)) {
                        *seen = true;
                    }
                }
            }
        }
        u32::try_from(covered.iter().filter(|seen| **seen).count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMED: &str = "\
e0b7 127.0.0.1:21001@31001 myself,master - 0 1796545272000 1 connected 0-5460
8c7f 127.0.0.1:21004@31004 slave 7ef3 0 1796545273029 2 connected
7ef3 127.0.0.1:21002@31002 master - 0 1796545273129 2 connected 5461-10922
b4e2 127.0.0.1:21003@31003 master - 0 1796545273000 3 connected 10923-16382 16383 [16383->-e0b7]
dd25 127.0.0.1:21006@31006 slave e0b7 0 1796545273129 1 connected
3762 127.0.0.1:21005@31005,redis-5 slave b4e2 0 1796545273029 3 connected
";

    const FAILED_OVER: &str = "\
e0b7 127.0.0.1:21001@31001 master,fail - 1796545280807 1796545280305 1 disconnected
dd25 127.0.0.1:21006@31006 master - 0 1796545283327 7 connected 0-5460
8c7f 127.0.0.1:21004@31004 slave 7ef3 0 1796545283125 2 connected
7ef3 127.0.0.1:21002@31002 myself,master - 0 1796545283000 2 connected 5461-10922
3762 127.0.0.1:21005@31005 slave b4e2 0 1796545283126 3 connected
b4e2 127.0.0.1:21003@31003 master - 0 1796545283126 3 connected 10923-16383
";

    #[test]
    fn a_formed_cluster_is_read() {
        let view = ClusterView::parse(FORMED).expect("parses");
        assert_eq!(view.master_ports(), vec![21001, 21002, 21003]);
        assert_eq!(view.covered_slots(), SLOTS);
        assert_eq!(view.replica_count(), 3);
        assert_eq!(view.replicas_of(21001), vec![21006]);
        assert_eq!(view.replicas_of(21006), Vec::<u16>::new());
        assert_eq!(view.master_of_slot(0), Some(21001));
        assert_eq!(view.master_of_slot(5461), Some(21002));
        assert_eq!(view.master_of_slot(16383), Some(21003));
        assert_eq!(view.slots_of(21003), vec![(10923, 16382), (16383, 16383)]);
        assert_eq!(view.nodes[5].port, 21005, "a hostname after the bus port");
    }

    #[test]
    fn a_failed_master_serves_nothing_and_its_replica_does() {
        let view = ClusterView::parse(FAILED_OVER).expect("parses");
        assert_eq!(view.master_ports(), vec![21006, 21002, 21003]);
        assert_eq!(view.master_of_slot(100), Some(21006));
        assert_eq!(view.covered_slots(), SLOTS);
        // Suspected but not agreed failed: it still serves, as the cluster says.
        let suspected = FORMED.replace("myself,master", "master,fail?");
        let view = ClusterView::parse(&suspected).expect("parses");
        assert_eq!(view.master_of_slot(100), Some(21001));
        let failed = FORMED.replace("myself,master", "master,fail");
        let view = ClusterView::parse(&failed).expect("parses");
        assert_eq!(view.master_of_slot(100), None);
        assert_eq!(view.covered_slots(), SLOTS - 5461);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for text in [
            "e0b7 127.0.0.1:21001@31001 master",
            "e0b7 nohost master - 0 0 1 connected",
            "e0b7 127.0.0.1:21001@31001 master - 0 0 1 connected 9-3",
            "e0b7 127.0.0.1:21001@31001 master - 0 0 1 connected x",
            "e0b7 127.0.0.1:21001@31001 master - 0 0 1 connected 99999",
        ] {
            assert!(ClusterView::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn info_fields() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(cluster_info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(cluster_info_field(info, "cluster_slots"), None);
    }
}
