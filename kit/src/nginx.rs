//! nginx (Debian's package) as the caller's own load balancer: the checked-in
//! `deploy/nginx/wsgrace.conf` with the caller's ports in place of 8080, 8081 and 8082, under
//! a minimal main config in a temp dir (no root daemon, no system paths). Stopped whole on
//! drop: SIGTERM to the master, which stops its workers, and the kit waits until the master
//! and every worker are gone (SIGKILL to any left after the grace period), so that no
//! `nginx: worker process` outlives the test with its listening socket.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{ChildProcess, Stop};
use crate::temp::temp_dir;
use crate::DEADLINE;

pub const NGINX: &str = "/usr/sbin/nginx";
pub const INSTALL: &str = "apt-get install -y nginx";

/// How long nginx's master may take to stop its workers and exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The deploy config as checked in.
pub const DEPLOY_CONF: &str = include_str!("../../deploy/nginx/wsgrace.conf");

/// Fails (never skips) when nginx is missing, naming the install command.
pub fn require() {
    assert!(
        Path::new(NGINX).exists(),
        "\n\n*** this test needs {NGINX}, which is missing. Install it with:\n***     {INSTALL}\n*** (scripts/test.sh does this on a fresh machine)\n"
    );
}

/// `deploy/nginx/wsgrace.conf` listening on `listen` in front of `nodes` (the checked-in file
/// names exactly two nodes, 8081 and 8082, and listens on 8080).
pub fn render_deploy_conf(listen: u16, nodes: [u16; 2]) -> String {
    let mut conf = DEPLOY_CONF.to_owned();
    for (from, to) in [
        ("127.0.0.1:8080", listen),
        ("127.0.0.1:8081", nodes[0]),
        ("127.0.0.1:8082", nodes[1]),
    ] {
        assert_eq!(
            conf.matches(from).count(),
            1,
            "deploy/nginx/wsgrace.conf should name {from} once"
        );
        conf = conf.replace(from, &format!("127.0.0.1:{to}"));
    }
    conf
}

/// The main config around `site` (an `http`-level include), everything under `prefix`.
fn main_conf(prefix: &Path, site: &Path) -> String {
    let p = prefix.display();
    format!(
        "worker_processes 1;\n\
         error_log {p}/error.log info;\n\
         pid {p}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {p}/client_body;\n\
         \x20   proxy_temp_path {p}/proxy;\n\
         \x20   fastcgi_temp_path {p}/fastcgi;\n\
         \x20   uwsgi_temp_path {p}/uwsgi;\n\
         \x20   scgi_temp_path {p}/scgi;\n\
         \x20   include {};\n\
         }}\n",
        site.display()
    )
}

/// A prefix dir with `site` written in it and the main config; returns (prefix, main conf).
fn prepare(site: &str) -> (PathBuf, PathBuf) {
    let prefix = temp_dir("nginx");
    // Workers may run as another user when the test runs as root.
    let _ = Command::new("chmod").arg("0777").arg(&prefix).status();
    let site_path = prefix.join("wsgrace.conf");
    std::fs::write(&site_path, site).expect("write the site config");
    let main = prefix.join("nginx.conf");
    std::fs::write(&main, main_conf(&prefix, &site_path)).expect("write nginx.conf");
    (prefix, main)
}

/// `nginx -t` on `site` under the kit's main config: `Ok` or nginx's own message.
pub fn check(site: &str) -> Result<(), String> {
    require();
    let (prefix, main) = prepare(site);
    let output = Command::new(NGINX)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&main)
        .arg("-t")
        .output()
        .expect("run nginx -t");
    let _ = std::fs::remove_dir_all(&prefix);
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A running nginx: its master and workers, stopped whole on drop.
pub struct Nginx {
    master: ChildProcess,
    pub addr: SocketAddr,
    prefix: PathBuf,
}

impl Nginx {
    /// Starts nginx with `site` (which listens on `listen`) and waits until it accepts.
    pub fn start(site: &str, listen: u16) -> Nginx {
        require();
        let (prefix, main) = prepare(site);
        let mut command = Command::new(NGINX);
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&main)
            .arg("-g")
            .arg("daemon off; master_process on;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let master = ChildProcess::spawn(
            &mut command,
            Stop::Term { grace: STOP_GRACE },
            Some(INSTALL),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let addr: SocketAddr = ([127, 0, 0, 1], listen).into();
        let nginx = Nginx {
            master,
            addr,
            prefix,
        };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "nginx did not listen on {addr}; its log:\n{}",
                nginx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.master.pid()
    }

    /// nginx's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.master.stop();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}
