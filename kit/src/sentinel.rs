//! A Redis Sentinel set of the caller's own, for failover tests: a master, its replicas
//! (`--replicaof`; one, or more so that a promoted master has a replica too) and three sentinels (`redis-server --sentinel` with a generated
//! `sentinel.conf`: quorum 2, down after 1 s, failover timeout 3 s), each a
//! [`RedisServer`] on a free loopback port, stopped on drop. [`SentinelSet::url`] is the
//! `redis+sentinel://` URL wsgrace takes.
//!
//! It owns these processes and their temp files only; it must not touch a system Redis,
//! and it asks the servers with `redis-cli` (installed with `redis-server`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::redis::cli;
use crate::redis::{RedisNode, RedisServer, START_DEADLINE};
use crate::temp::temp_dir;
use crate::KitError;

/// A master, its replica and three sentinels monitoring it under one name.
pub struct SentinelSet {
    name: String,
    password: Option<String>,
    /// The master at the start (after a failover: the old master).
    pub master: RedisServer,
    /// The replicas at the start (after a failover, one of them is the master).
    pub replicas: Vec<RedisServer>,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
    conf_dir: PathBuf,
}

impl SentinelSet {
    /// Starts the set under the master name `name` and waits until the replica is in sync
    /// and every sentinel knows the replica and the two other sentinels; panics with the
    /// reason otherwise.
    pub fn start(name: &str) -> SentinelSet {
        SentinelSet::try_start(name, 1).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start`](Self::start) with `replicas` replicas.
    pub fn start_with_replicas(name: &str, replicas: usize) -> SentinelSet {
        SentinelSet::try_start(name, replicas).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start_with_replicas`](Self::start_with_replicas), answering why it failed instead
    /// of panicking.
    pub fn try_start(name: &str, replicas: usize) -> Result<SentinelSet, KitError> {
        SentinelSet::try_start_with(name, replicas, None)
    }

    /// [`try_start`](Self::try_start) with the master and the replicas requiring `password`
    /// (`requirepass`, `masterauth`; the sentinels know it as `auth-pass` and need none
    /// themselves).
    pub fn try_start_with(
        name: &str,
        replicas: usize,
        password: Option<&str>,
    ) -> Result<SentinelSet, KitError> {
        let data_node = || {
            let node = RedisNode::new();
            match password {
                Some(password) => node.password(password).args(["--masterauth", password]),
                None => node,
            }
        };
        let master = data_node().try_start()?;
        let replicas = (0..replicas)
            .map(|_| {
                data_node()
                    .args(["--replicaof", "127.0.0.1", &master.port().to_string()])
                    .try_start()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conf_dir = temp_dir("sentinels");
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            port = master.port()
        ) + &password.map_or(String::new(), |pw| {
            format!("sentinel auth-pass {name} {pw}\n")
        });
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let path = conf_dir.join(format!("sentinel-{n}.conf"));
            std::fs::write(&path, &conf)
                .map_err(|err| KitError::io(format!("write {}", path.display()), err))?;
            sentinels.push(
                RedisNode::new()
                    .config_file(path)
                    .args(["--sentinel"])
                    .try_start()?,
            );
        }
        let set = SentinelSet {
            name: name.to_owned(),
            password: password.map(str::to_owned),
            master,
            replicas,
            sentinels,
            conf_dir,
        };
        set.wait_ready()?;
        Ok(set)
    }

    /// The master's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `redis+sentinel://[:PASSWORD@]127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/NAME/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |pw| format!(":{pw}@"));
        format!("redis+sentinel://{auth}{}/{}/0", hosts.join(","), self.name)
    }

    /// The master's port as the first sentinel that answers names it now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let answer = cli(
                sentinel.port(),
                &["SENTINEL", "get-master-addr-by-name", &self.name],
            )
            .ok()?;
            answer.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Waits until every sentinel names a master other than `old` (a failover is over), up
    /// to `deadline`; answers the new master's port.
    pub fn wait_failover(&self, old: u16, deadline: Duration) -> Result<u16, KitError> {
        let start = Instant::now();
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|sentinel| {
                    let answer = cli(
                        sentinel.port(),
                        &["SENTINEL", "get-master-addr-by-name", &self.name],
                    )
                    .ok()?;
                    answer.lines().nth(1)?.trim().parse().ok()
                })
                .collect();
            if let Some(Some(port)) = named.first() {
                if *port != old && named.iter().all(|n| *n == Some(*port)) {
                    return Ok(*port);
                }
            }
            if start.elapsed() > deadline {
                return Err(KitError::Timeout {
                    what: format!("the sentinels to name a new master (they name {named:?})"),
                    deadline,
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until every replica's link is up and every sentinel knows every replica and
    /// the two other sentinels.
    fn wait_ready(&self) -> Result<(), KitError> {
        let start = Instant::now();
        loop {
            let synced = self.replicas.iter().all(|replica| {
                let mut args = vec!["INFO", "replication"];
                if let Some(password) = &self.password {
                    args.splice(0..0, ["--no-auth-warning", "-a", password.as_str()]);
                }
                cli(replica.port(), &args).is_ok_and(|info| info.contains("master_link_status:up"))
            });
            let replicas = u32::try_from(self.replicas.len()).unwrap_or(u32::MAX);
            let known = self.sentinels.iter().all(|sentinel| {
                cli(sentinel.port(), &["SENTINEL", "master", &self.name]).is_ok_and(|answer| {
                    let fields: Vec<&str> = answer.lines().map(str::trim).collect();
                    let value = |key: &str| {
                        fields
                            .iter()
                            .position(|f| *f == key)
                            .and_then(|i| fields.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    value("num-slaves") == Some(replicas) && value("num-other-sentinels") == Some(2)
                })
            });
            if synced && known {
                return Ok(());
            }
            if start.elapsed() > START_DEADLINE {
                return Err(KitError::Timeout {
                    what: format!(
                        "the Sentinel set (replica in sync: {synced}, sentinels ready: {known})"
                    ),
                    deadline: START_DEADLINE,
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            sentinel.kill();
        }
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}
