//! `deploy/` stays usable and consistent with the server: the Kubernetes example parses, its
//! embedded config is one the server accepts, its grace period covers the drain, its probes
//! hit the right endpoints and port; the nginx config passes `nginx -t` and keeps WebSockets
//! open longer than the heartbeat.

mod common;

use std::path::Path;

use wsgrace::config::Config;
use wsgrace_kit::nginx;
use wsgrace_kit::temp::temp_file;
use yaml_rust2::{Yaml, YamlLoader};

const KUBERNETES: &str = include_str!("../deploy/kubernetes/wsgrace.yaml");

fn documents() -> Vec<Yaml> {
    YamlLoader::load_from_str(KUBERNETES).expect("deploy/kubernetes/wsgrace.yaml is valid YAML")
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|doc| doc["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/wsgrace.yaml"))
}

/// The ConfigMap's config.toml, loaded as the binary would with the Secret's URL set.
fn embedded_config(docs: &[Yaml]) -> Config {
    let text = of_kind(docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("the ConfigMap holds config.toml");
    let path = temp_file("k8s-config.toml", text);
    Config::load_with_env(&path, |name| {
        (name == "WSGRACE_REDIS_URL").then(|| "redis://:secret@redis:6379/0".to_owned())
    })
    .unwrap_or_else(|err| panic!("the ConfigMap's config.toml is refused: {err}"))
}

#[test]
fn the_kubernetes_example_matches_its_config() {
    let docs = documents();
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        of_kind(&docs, kind);
    }
    let config = embedded_config(&docs);
    assert_eq!(
        config.broker.kind,
        wsgrace::config::BrokerKind::Redis,
        "several replicas need the Redis broker"
    );

    let pod = &of_kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds is set");
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("a preStop pause");
    let drain_s = config.shutdown.drain_timeout_ms.div_ceil(1000) as i64;
    // SPEC: the process exits no later than drain_timeout_ms + 1 s after SIGTERM.
    let needed = pause + drain_s + 1;
    assert!(
        grace >= needed,
        "terminationGracePeriodSeconds {grace} < preStop {pause} s + drain {drain_s} s + 1 s"
    );

    let port = config
        .server
        .bind
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<i64>().ok())
        .expect("server.bind has a port");
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(port));
    assert!(
        config.server.bind.starts_with("0.0.0.0:"),
        "inside a pod the server listens on every interface"
    );
    let port_name = container["ports"][0]["name"].as_str();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), port_name, "{probe}");
    }

    let secret = &container["env"]
        .as_vec()
        .expect("env")
        .iter()
        .find(|var| var["name"].as_str() == Some("WSGRACE_REDIS_URL"))
        .expect("WSGRACE_REDIS_URL is set")["valueFrom"]["secretKeyRef"];
    assert!(
        secret["name"].as_str().is_some(),
        "the Redis URL comes from a Secret"
    );
    assert!(
        !KUBERNETES.contains("redis_url ="),
        "no Redis URL (and password) in the ConfigMap"
    );
}

#[test]
fn the_nginx_config_passes_nginx_t_and_outlasts_the_heartbeat() {
    let site = nginx::render_deploy_conf(wsgrace_kit::free_port(), [18081, 18082]);
    if let Err(message) = nginx::check(&site) {
        panic!("nginx -t refuses deploy/nginx/wsgrace.conf:\n{message}");
    }
    let shipped = Config::load(Path::new("config.toml")).expect("the shipped config.toml");
    let read_timeout_s: u64 = nginx::DEPLOY_CONF
        .lines()
        .find_map(|line| line.trim().strip_prefix("proxy_read_timeout "))
        .and_then(|value| value.trim_end_matches(';').strip_suffix('s'))
        .and_then(|seconds| seconds.parse().ok())
        .expect("proxy_read_timeout in seconds");
    assert!(
        read_timeout_s * 1000 > shipped.session.heartbeat_interval_ms,
        "proxy_read_timeout {read_timeout_s} s must outlast the heartbeat"
    );
    for needed in [
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_http_version 1.1;",
        "proxy_next_upstream error timeout http_502 http_503;",
    ] {
        assert!(
            nginx::DEPLOY_CONF.contains(needed),
            "deploy/nginx/wsgrace.conf lacks {needed}"
        );
    }
}
