//! `loadgen`: the load generator for wsgrace's benchmarks. Each subcommand starts the
//! server as a child process, runs one bounded scenario against it over loopback, stops
//! it, and prints one JSON object on stdout (progress goes to stderr). Exit status: 0 when
//! the scenario completed, 1 when it timed out or saw failures (the JSON still says what it
//! has), 2 when it could not run at all.
//!
//! One current-thread tokio runtime: the generator shares the machine's cores with the
//! server and should cost as little as it can.

mod api_client;
mod client;
mod compare;
mod launch;
mod perf;
mod scenario_redis;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use launch::ServerOpts;
use scenarios::{Ctx, Outcome};

/// Load generator for wsgrace: hold, fanout, drain, close-latency, cluster-fanout,
/// mass-resume, rolling, presence-joins, api-publish, failover, v2-joins and v2-resume scenarios.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The server binary.
    #[arg(long, global = true, default_value = "target/release/wsgrace")]
    server: PathBuf,
    /// Base config for the server; the scenario's own keys are laid over it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// server.workers for the server (default: the config's, else one per core).
    #[arg(long, global = true)]
    workers: Option<u32>,
    /// Overall time limit of the scenario in seconds; past it, report and exit 1.
    #[arg(long, global = true, default_value_t = 120)]
    timeout_secs: u64,
    /// Echo the server's stderr (prefixed `[server]`) to ours.
    #[arg(long, global = true)]
    server_log: bool,
    /// Also run the same scenario against this server binary (e.g.
    /// target/release/baseline) right after `--server`, each with its own time limit, and
    /// print a third JSON line with both runs' key numbers and their ratio.
    #[arg(long, global = true)]
    compare: Option<PathBuf>,
    /// For `hold` and `fanout` with `--v2-rooms K`: first run the same scenario over protocol
    /// v1 (one room per connection), then as asked, and print a third JSON line with the
    /// ratio v2 / v1 (a = v1, b = v2). Not with `--compare`.
    #[arg(long, global = true, conflicts_with = "compare")]
    against_v1: bool,
    /// Every client offers `permessage-deflate` as browsers do (`Sec-WebSocket-Extensions:
    /// permessage-deflate; client_max_window_bits`) and inflates what comes compressed.
    #[arg(long, global = true)]
    deflate: bool,
    /// Run the scenario twice in one invocation, clients offering no compression (a) and then
    /// `permessage-deflate` (b), and print a third JSON line with the ratios on / off.
    #[arg(long, global = true, conflicts_with_all = ["compare", "against_v1", "deflate"])]
    deflate_compare: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N idle connections; connect rate and server RSS per connection.
    Hold(scenarios::hold::HoldArgs),
    /// N members of one room, one sends M messages; throughput, latency, losses, order.
    Fanout(scenarios::fanout::FanoutArgs),
    /// N connections (K deaf to the close frame), then SIGTERM; how the drain went.
    Drain(scenarios::drain::DrainArgs),
    /// M client-initiated close round trips; time to the close frame and to EOF.
    CloseLatency(scenarios::close_latency::CloseLatencyArgs),
    /// `fanout` across two nodes on a Redis it starts, beside one node with the local broker.
    ClusterFanout(scenarios::cluster_fanout::ClusterFanoutArgs),
    /// N clients of a room leave, K messages are sent, all resume at once.
    MassResume(scenarios::mass_resume::MassResumeArgs),
    /// Two nodes on one Redis under steady load; node A drained; its clients resume on B.
    Rolling(scenarios::rolling::RollingArgs),
    /// Two nodes on one Redis, one room of N members; RATE v2 joins (and leaves) per
    /// second: node and Redis CPU per join, with presence on and off (`--matrix`).
    PresenceJoins(scenarios::presence_joins::PresenceJoinsArgs),
    /// Publishes through the server API (`POST /api/publish`, keep-alive) to N members, on
    /// one node (local broker) and on two nodes (Redis), side by side.
    ApiPublish(scenarios::api_publish::ApiPublishArgs),
    /// Two nodes on a Sentinel set under steady traffic in many rooms; the master gets
    /// SIGKILL: the time to the new master, to /readyz 200 and to the first message
    /// delivered again, and what the senders saw meanwhile.
    Failover(scenarios::failover::FailoverArgs),
    /// C wsgrace.v2 connections each join K rooms (then leave them): joins per second,
    /// latency, server CPU per join, RSS per membership.
    V2Joins(scenarios::v2_joins::V2JoinsArgs),
    /// Clients in K rooms over one wsgrace.v2 connection miss N messages per room and
    /// resume: time, bytes, CPU; with `--v1`, the same with K v1 connections per client.
    V2Resume(scenarios::v2_resume::V2ResumeArgs),
}

impl Scenario {
    /// The same scenario over protocol v1, when it runs over v2.
    fn as_v1(&self) -> Option<Scenario> {
        match self {
            Scenario::Hold(args) if args.v2_rooms > 0 => Some(Scenario::Hold(args.as_v1())),
            Scenario::Fanout(args) if args.v2_rooms > 0 => Some(Scenario::Fanout(args.as_v1())),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Hold(_) => "hold",
            Scenario::Fanout(_) => "fanout",
            Scenario::Drain(_) => "drain",
            Scenario::CloseLatency(_) => "close-latency",
            Scenario::ClusterFanout(_) => "cluster-fanout",
            Scenario::MassResume(_) => "mass-resume",
            Scenario::Rolling(_) => "rolling",
            Scenario::PresenceJoins(_) => "presence-joins",
            Scenario::ApiPublish(_) => "api-publish",
            Scenario::Failover(_) => "failover",
            Scenario::V2Joins(_) => "v2-joins",
            Scenario::V2Resume(_) => "v2-resume",
        }
    }
}

/// Raises RLIMIT_NOFILE to its hard limit (the server child inherits it); returns the
/// limit now in force.
fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = raise_nofile();
    eprintln!("loadgen: RLIMIT_NOFILE {nofile}");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot build the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    client::set_offer_deflate(cli.deflate);
    if cli.deflate_compare {
        let (off_code, off_report) = run_once(&cli, &cli.scenario, &cli.server, nofile, &runtime);
        println!("{off_report}");
        eprintln!("loadgen: now with permessage-deflate offered");
        client::set_offer_deflate(true);
        let (on_code, on_report) = run_once(&cli, &cli.scenario, &cli.server, nofile, &runtime);
        println!("{on_report}");
        let name = cli.scenario.name();
        println!(
            "{}",
            compare::ratios(name, "deflate_off", &off_report, "deflate_on", &on_report)
        );
        return ExitCode::from(off_code.max(on_code));
    }
    if cli.against_v1 {
        let Some(v1) = cli.scenario.as_v1() else {
            eprintln!("loadgen: --against-v1 needs hold or fanout with --v2-rooms K > 0");
            return ExitCode::from(2);
        };
        let (v1_code, v1_report) = run_once(&cli, &v1, &cli.server, nofile, &runtime);
        println!("{v1_report}");
        eprintln!("loadgen: now over wsgrace.v2");
        let (v2_code, v2_report) = run_once(&cli, &cli.scenario, &cli.server, nofile, &runtime);
        println!("{v2_report}");
        let name = cli.scenario.name();
        println!(
            "{}",
            compare::ratios(name, "v1", &v1_report, "v2", &v2_report)
        );
        return ExitCode::from(v1_code.max(v2_code));
    }
    let (code, report) = run_once(&cli, &cli.scenario, &cli.server, nofile, &runtime);
    println!("{report}");
    let Some(other) = &cli.compare else {
        return ExitCode::from(code);
    };
    eprintln!("loadgen: now against {}", other.display());
    let (other_code, other_report) = run_once(&cli, &cli.scenario, other, nofile, &runtime);
    println!("{other_report}");
    println!(
        "{}",
        compare::ratios(
            cli.scenario.name(),
            &cli.server.display().to_string(),
            &report,
            &other.display().to_string(),
            &other_report,
        )
    );
    ExitCode::from(code.max(other_code))
}

/// Runs `scenario` once against `binary`: the exit status and the JSON report.
fn run_once(
    cli: &Cli,
    scenario: &Scenario,
    binary: &std::path::Path,
    nofile: libc::rlim_t,
    runtime: &tokio::runtime::Runtime,
) -> (u8, serde_json::Value) {
    let ctx = Ctx {
        server: ServerOpts {
            binary: binary.to_path_buf(),
            config: cli.config.clone(),
            workers: cli.workers,
            echo_log: cli.server_log,
        },
        deadline: tokio::time::Instant::now() + Duration::from_secs(cli.timeout_secs),
        nofile,
    };
    client::reset_wire_counts();
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(runtime, async {
        match scenario {
            Scenario::Hold(args) => scenarios::hold::run(&ctx, args).await,
            Scenario::Fanout(args) => scenarios::fanout::run(&ctx, args).await,
            Scenario::Drain(args) => scenarios::drain::run(&ctx, args).await,
            Scenario::CloseLatency(args) => scenarios::close_latency::run(&ctx, args).await,
            Scenario::ClusterFanout(args) => scenarios::cluster_fanout::run(&ctx, args).await,
            Scenario::MassResume(args) => scenarios::mass_resume::run(&ctx, args).await,
            Scenario::Rolling(args) => scenarios::rolling::run(&ctx, args).await,
            Scenario::PresenceJoins(args) => scenarios::presence_joins::run(&ctx, args).await,
            Scenario::ApiPublish(args) => scenarios::api_publish::run(&ctx, args).await,
            Scenario::Failover(args) => scenarios::failover::run(&ctx, args).await,
            Scenario::V2Joins(args) => scenarios::v2_joins::run(&ctx, args).await,
            Scenario::V2Resume(args) => scenarios::v2_resume::run(&ctx, args).await,
        }
    });
    // Client tasks still alive are dropped with the LocalSet; nothing waits on them.
    drop(local);
    let binary = binary.display().to_string();
    match result {
        Ok(Outcome { mut report, ok }) => {
            if let Some(obj) = report.as_object_mut() {
                obj.insert("nofile_limit".into(), json!(nofile));
                obj.insert("timeout_secs".into(), json!(cli.timeout_secs));
                obj.insert("server_binary".into(), json!(binary));
                obj.insert("deflate_offered".into(), json!(client::offers_deflate()));
                obj.insert(
                    "client_wire".into(),
                    client::wire_json(client::wire_counts()),
                );
            }
            (if ok { 0 } else { 1 }, report)
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            let report = json!({
                "scenario": scenario.name(),
                "error": e,
                "complete": false,
                "server_binary": binary,
            });
            (2, report)
        }
    }
}
