//! `vitals-loadgen`: simulated agents against a real collector (or the bare
//! echo baseline), on loopback, bounded in count and time.
//!
//! ```text
//! vitals-loadgen run --spawn collector --agents 5000 --interval 10s --ramp 500 --duration 300s
//! vitals-loadgen run --spawn echo --agents 200 --interval 0 --window 16 --duration 60s
//! vitals-loadgen restart --agents 2000 --outage 10s
//! vitals-loadgen replicas --replicas 3 --agents 5000 --storage-url postgres://… --nats-url nats://…
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vitals_tests::loadgen::{self, Plan};

#[derive(Parser)]
#[command(name = "vitals-loadgen", about = "Load generator for Vitals")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Spawn {
    /// A real `vitals-collector run` process with a fresh database.
    Collector,
    /// The bare mTLS echo baseline, as its own process.
    Echo,
    /// Nothing: `--target` is already running.
    None,
}

/// How each simulated agent paces its traffic, and for how long.
#[derive(clap::Args)]
struct Pace {
    /// Time between snapshots per agent; 0 = as fast as acks allow.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Unacknowledged snapshots per agent.
    #[arg(long, default_value_t = 4)]
    window: usize,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fault events per second across all agents.
    #[arg(long, default_value_t = 0.0)]
    faults_per_sec: f64,
}

impl Pace {
    /// A fleet at this pace, with no diagnostics, storm or metrics yet.
    fn plan(
        &self,
        target: SocketAddr,
        agents: usize,
        ramp: f64,
        data_dir: PathBuf,
        id_prefix: String,
    ) -> Plan {
        Plan {
            target,
            agents,
            interval: self.interval,
            window: self.window,
            ramp_per_sec: ramp,
            duration: self.duration,
            storm_after: None,
            faults_per_sec: self.faults_per_sec,
            data_dir,
            id_prefix,
            diagnostics: 0,
            diag_concurrency: 1,
            metrics_url: None,
            diag_target: None,
            soak: None,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run simulated agents.
    Run {
        #[arg(long, value_enum, default_value_t = Spawn::Collector)]
        spawn: Spawn,
        /// Data directory holding the fleet CA (created if missing).
        #[arg(long, default_value = "target/loadgen-data")]
        data_dir: PathBuf,
        /// Where the server listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:17443")]
        target: SocketAddr,
        /// With --spawn none: the server's PID, to sample its CPU and RSS.
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[command(flatten)]
        pace: Pace,
        /// Agents connected per second during the ramp.
        #[arg(long, default_value_t = 500.0)]
        ramp: f64,
        /// Drop and re-open every stream at once this long after the ramp.
        #[arg(long, value_parser = humantime::parse_duration)]
        storm_after: Option<Duration>,
        #[arg(long, default_value = "lg")]
        prefix: String,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// With --spawn collector: its `storage.history_interval` ("0s" stores
        /// every snapshot in the history; default: the collector's default).
        #[arg(long)]
        history_interval: Option<String>,
        /// With --spawn collector: its `storage.url` (an empty PostgreSQL
        /// database, say; default: a fresh SQLite file in the data dir).
        #[arg(long)]
        storage_url: Option<String>,
        /// After the ramp, relay this many diagnostics to the agents.
        #[arg(long, default_value_t = 0)]
        diagnostics: usize,
        /// Diagnostics in flight at once.
        #[arg(long, default_value_t = 1)]
        diag_concurrency: usize,
        /// With --spawn none: the collector's metrics URL to read during the
        /// run (a spawned collector serves them on the target port + 1).
        #[arg(long)]
        metrics_url: Option<String>,
    },
    /// Hold a fleet against a fresh collector (short retention) for long:
    /// fault events, a diagnostics trickle, a reconnect storm at a period,
    /// and a timeline row a minute (CSV) of memory, CPU, database size,
    /// fault to ticket latency and diagnostics.
    Soak {
        #[arg(long, default_value = "target/loadgen-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:17443")]
        target: SocketAddr,
        #[arg(long, default_value_t = 10000)]
        agents: usize,
        /// Time between snapshots per agent.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 20.0)]
        faults_per_sec: f64,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        storm_every: Duration,
        #[arg(long, default_value_t = 2.0)]
        diag_per_sec: f64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        sample_every: Duration,
        /// Growth is measured from the end of this.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        warm_up: Duration,
        #[arg(long, default_value_t = 500.0)]
        ramp: f64,
        #[arg(long, default_value = "sk")]
        prefix: String,
        /// The timeline as CSV here.
        #[arg(long, default_value = "target/soak.csv")]
        csv: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Kill a collector process with SIGKILL under a fleet of agent links,
    /// start it again, and measure the reconnect storm and backlog drain.
    Restart {
        #[arg(long, default_value = "target/loadgen-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:17443")]
        target: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        /// How long the collector stays down.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        outage: Duration,
        /// Snapshots each agent queues during the outage (plus a fault event).
        #[arg(long, default_value_t = 2)]
        backlog: usize,
        #[arg(long, default_value = "rs")]
        prefix: String,
        /// Give up this long after the restart.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        limit: Duration,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Start N collector replicas on one PostgreSQL database and one NATS
    /// server (both already running; the database empty), give each an
    /// equal share of the agents, and relay diagnostics through the first
    /// replica to its own agents and to the second's.
    Replicas {
        #[arg(long, default_value = "target/loadgen-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// The first replica's address; the next ones listen two ports
        /// further each (their metrics on the port after).
        #[arg(long, default_value = "127.0.0.1:17443")]
        target: SocketAddr,
        /// Agents in all, split evenly over the replicas.
        #[arg(long, default_value_t = 3000)]
        agents: usize,
        #[command(flatten)]
        pace: Pace,
        /// Agents connected per second per replica during the ramp.
        #[arg(long, default_value_t = 500.0)]
        ramp: f64,
        /// Diagnostics to each of the first two replicas' agents, all sent
        /// through the first replica.
        #[arg(long, default_value_t = 0)]
        diagnostics: usize,
        #[arg(long, default_value_t = 1)]
        diag_concurrency: usize,
        /// The replicas' shared `storage.url` (an empty PostgreSQL database).
        #[arg(long)]
        storage_url: String,
        /// Their `cluster.nats_url`.
        #[arg(long)]
        nats_url: String,
        /// `kill -9` the leading replica this long after the start, and time
        /// the takeover.
        #[arg(long, value_parser = humantime::parse_duration)]
        kill_leader_after: Option<Duration>,
        #[arg(long, default_value = "rp")]
        prefix: String,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One slice of a `restart` fleet, steered by the `restart` command
    /// through stdin and stdout (not for use by hand).
    #[command(hide = true)]
    RestartWorker {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        backlog: usize,
    },
    /// Run a collector from its configuration file in this process, as
    /// `vitals-collector run` does (the end-to-end suite starts and kills it
    /// as a process of its own).
    Collector {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve the echo baseline (used by `run --spawn echo`).
    EchoServer {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::Soak {
            data_dir,
            target,
            agents,
            interval,
            duration,
            faults_per_sec,
            storm_every,
            diag_per_sec,
            sample_every,
            warm_up,
            ramp,
            prefix,
            csv,
            json,
        } => {
            anyhow::ensure!(
                target.ip().is_loopback(),
                "the target must be a loopback address"
            );
            anyhow::ensure!(agents > 0, "agents must be at least 1");
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            ensure_pki(&data_dir)?;
            let policy = std::path::absolute(data_dir.join("soak-policy.toml"))?;
            std::fs::write(
                &policy,
                format!("{}{SOAK_TICKETS}", vitals_proto::policy::DEFAULT),
            )?;
            let _ = std::fs::remove_dir_all(data_dir.join("audit-archive"));
            let mut server = spawn_collector(
                &data_dir,
                target,
                None,
                None,
                true,
                None,
                &soak_extra(&policy),
            )?;
            wait_for_port(target)?;
            let pace = Pace {
                interval,
                window: 4,
                duration,
                faults_per_sec,
            };
            let plan = Plan {
                metrics_url: Some(format!("http://{}/metrics", metrics_addr(target))),
                soak: Some(loadgen::soak::SoakPlan {
                    storm_every,
                    diag_per_sec,
                    sample_every,
                    db_files: ["vitals.db", "vitals.db-wal"]
                        .iter()
                        .map(|f| data_dir.join(f))
                        .collect(),
                    warm_up,
                }),
                ..pace.plan(target, agents, ramp, data_dir.clone(), prefix)
            };
            let report = rt.block_on(loadgen::run(plan, Some(server.id())));
            stop(&mut server);
            let report = report?;
            if let Some(s) = &report.soak {
                std::fs::write(&csv, s.csv())?;
            }
            print_report(&report.table(), &report, json)
        }
        Cmd::Restart {
            data_dir,
            target,
            agents,
            outage,
            backlog,
            prefix,
            limit,
            json,
        } => {
            anyhow::ensure!(
                target.ip().is_loopback(),
                "the target must be a loopback address"
            );
            ensure_pki(&data_dir)?;
            let plan = loadgen::restart::RestartPlan {
                target,
                agents,
                outage,
                backlog_snapshots: backlog,
                data_dir: data_dir.clone(),
                prefix,
                limit,
            };
            let mut fresh = true;
            let spawn = || {
                let child = spawn_collector(
                    &data_dir,
                    target,
                    None,
                    None,
                    fresh,
                    None,
                    &Extra::default(),
                )?;
                fresh = false;
                wait_for_port(target)?;
                Ok(child)
            };
            let exe = std::env::current_exe()?;
            let (report, mut collector) = rt.block_on(loadgen::restart::run(&plan, &exe, spawn))?;
            stop(&mut collector);
            print_report(&report.table(), &report, json)
        }
        Cmd::Replicas {
            data_dir,
            replicas,
            target,
            agents,
            pace,
            ramp,
            diagnostics,
            diag_concurrency,
            storage_url,
            nats_url,
            kill_leader_after,
            prefix,
            json,
        } => {
            anyhow::ensure!(
                target.ip().is_loopback(),
                "the target must be a loopback address"
            );
            anyhow::ensure!(
                replicas > 0 && agents >= replicas && pace.window > 0,
                "replicas, agents (at least one per replica) and window must be at least 1"
            );
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            ensure_pki(&data_dir)?;
            let mut children = Vec::new();
            let mut running = Vec::new();
            for i in 0..replicas {
                let at = SocketAddr::new(target.ip(), target.port() + 2 * i as u16);
                let name = format!("r{i}");
                let child = spawn_collector(
                    &data_dir,
                    at,
                    None,
                    Some(&storage_url),
                    false,
                    Some((&name, &nats_url)),
                    &Extra::default(),
                )?;
                running.push(loadgen::replicas::Replica {
                    name,
                    target: at,
                    metrics_url: format!("http://{}/metrics", metrics_addr(at)),
                    pid: child.id(),
                });
                children.push(child);
                // The first one runs the migrations alone.
                wait_for_port(at)?;
            }
            let plan = loadgen::replicas::ReplicaPlan {
                replicas: running,
                fleet: Plan {
                    diagnostics,
                    diag_concurrency,
                    ..pace.plan(target, agents, ramp, data_dir.clone(), prefix)
                },
                kill_leader_after,
            };
            let report = rt.block_on(loadgen::replicas::run(plan));
            for child in &mut children {
                stop(child);
            }
            let report = report?;
            print_report(&report.table(), &report, json)
        }
        Cmd::RestartWorker {
            target,
            data_dir,
            prefix,
            first,
            count,
            backlog,
        } => rt.block_on(loadgen::restart::worker(loadgen::restart::WorkerPlan {
            target,
            data_dir,
            prefix,
            first,
            count,
            backlog_snapshots: backlog,
        })),
        Cmd::Collector { config } => rt.block_on(async move {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .try_init();
            let config = vitals_collector::config::CollectorConfig::load(&config)?;
            let collector = vitals_collector::Collector::open(config.clone()).await?;
            let listeners = vitals_collector::Listeners::bind(&config).await?;
            collector
                .serve(listeners, vitals_collector::shutdown_signal())
                .await?;
            Ok(())
        }),
        Cmd::EchoServer { data_dir, listen } => rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            loadgen::echo::serve(&data_dir, listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        }),
        Cmd::Run {
            spawn,
            data_dir,
            target,
            server_pid,
            agents,
            pace,
            ramp,
            storm_after,
            prefix,
            json,
            history_interval,
            storage_url,
            diagnostics,
            diag_concurrency,
            metrics_url,
        } => {
            anyhow::ensure!(
                target.ip().is_loopback(),
                "the target must be a loopback address"
            );
            anyhow::ensure!(
                agents > 0 && pace.window > 0,
                "agents and window must be at least 1"
            );
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            ensure_pki(&data_dir)?;
            let mut server = match spawn {
                Spawn::Collector => Some(spawn_collector(
                    &data_dir,
                    target,
                    history_interval,
                    storage_url.as_deref(),
                    true,
                    None,
                    &Extra::default(),
                )?),
                Spawn::Echo => Some(spawn_echo(&data_dir, target)?),
                Spawn::None => None,
            };
            if server.is_some() {
                wait_for_port(target)?;
            }
            let pid = server.as_ref().map(Child::id).or(server_pid);
            let plan = Plan {
                storm_after,
                diagnostics,
                diag_concurrency,
                metrics_url: match spawn {
                    Spawn::Collector => Some(format!("http://{}/metrics", metrics_addr(target))),
                    _ => metrics_url,
                },
                ..pace.plan(target, agents, ramp, data_dir.clone(), prefix)
            };
            let report = rt.block_on(loadgen::run(plan, pid));
            if let Some(child) = &mut server {
                stop(child);
            }
            let report = report?;
            print_report(&report.table(), &report, json)
        }
    }
}

/// The table on stdout, and the JSON in `json` (or on stdout too).
fn print_report(
    table: &str,
    report: &impl serde::Serialize,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!("{table}");
    let text = serde_json::to_string_pretty(report)?;
    match json {
        Some(path) => std::fs::write(&path, &text)?,
        None => println!("{text}"),
    }
    Ok(())
}

fn ensure_pki(data_dir: &Path) -> anyhow::Result<()> {
    let paths = vitals_collector::pki::PkiPaths::new(data_dir);
    if !paths.ca_key().exists() {
        vitals_collector::pki::init(data_dir, &["localhost".into(), "127.0.0.1".into()])?;
    }
    Ok(())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        p.exists(),
        "{} not found; build the workspace first",
        p.display()
    );
    Ok(p)
}

/// Starts `vitals-collector run`; `fresh` starts from an empty database
/// (certificates stay cached), otherwise the last one is kept. A replica
/// (its name, the NATS URL) gets a configuration file and log of its own.
fn spawn_collector(
    data_dir: &Path,
    target: SocketAddr,
    history_interval: Option<String>,
    storage_url: Option<&str>,
    fresh: bool,
    replica: Option<(&str, &str)>,
    extra: &Extra,
) -> anyhow::Result<Child> {
    if fresh {
        for f in ["vitals.db", "vitals.db-wal", "vitals.db-shm"] {
            let _ = std::fs::remove_file(data_dir.join(f));
        }
    }
    let suffix = replica
        .map(|(name, _)| format!("-{name}"))
        .unwrap_or_default();
    let config = data_dir.join(format!("loadgen-collector{suffix}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = \".\"\nlisten = \"{target}\"\n{}{}\n[metrics]\nenabled = true\nlisten = \"{}\"\n\n\
             {}[storage]\n{}",
            replica
                .map(|(name, _)| format!("replica = {name:?}\n"))
                .unwrap_or_default(),
            &extra.top,
            metrics_addr(target),
            replica
                .map(|(_, nats)| format!("[cluster]\nnats_url = {nats:?}\n\n"))
                .unwrap_or_default(),
            history_interval
                .map(|h| format!("history_interval = \"{h}\"\n"))
                .unwrap_or_default()
                + &storage_url
                    .map(|u| format!("url = {u:?}\n"))
                    .unwrap_or_default()
                + extra.storage
                + LIFTED_LIMITS
                + extra.tables
        ),
    )?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join(format!("collector{suffix}.log")))?;
    Ok(Command::new(sibling("vitals-collector")?)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// The whole simulated fleet connects from one loopback address, and the
/// ingest ceiling runs send as fast as acks allow: the per-address and
/// per-agent limits of `[limits]` are lifted for the load generator's
/// collectors (the hostile-client tests hold them to their defaults).
const LIFTED_LIMITS: &str = "\n[limits]\nagent_messages_per_sec = 1000000.0\n\
                             agent_message_burst = 1000000\nhandshakes_per_source = 1000000\n\
                             connections_per_source = 1000000\ndiagnostics_per_specialist = 100000\n";

/// More of a spawned collector's configuration: top-level keys, keys of
/// its `[storage]` table, and whole tables after it.
#[derive(Default)]
struct Extra {
    top: String,
    storage: &'static str,
    tables: &'static str,
}

/// The soak's collector: history kept short per endpoint, retention in
/// minutes, and ticket rules that resolve and forget a quiet fault within
/// minutes, so every table reaches its steady size within the hour.
fn soak_extra(policy: &Path) -> Extra {
    Extra {
        top: format!("policy = {:?}\n", policy.display().to_string()),
        storage: "history_per_endpoint = 10\n",
        tables: "\n[retention]\ninterval = \"1m\"\nfault_events = \"5m\"\nclosed_tickets = \"5m\"\n\
             notifications = \"5m\"\naudit = \"10m\"\n",
    }
}

/// Ticket rules appended to the shipped policy for the soak: a cleared
/// fault resolves after 30 s, one returning after a minute is a new
/// ticket; storms need 1,000 desks within a minute (the soak's faults are
/// independent desks, not one outage).
const SOAK_TICKETS: &str = "\n[tickets]\nquiet_period = \"30s\"\nreopen_window = \"1m\"\n\
                            storm_endpoints = 1000\nstorm_window = \"1m\"\n";

/// Where a spawned collector serves its metrics: the next port.
fn metrics_addr(target: SocketAddr) -> SocketAddr {
    SocketAddr::new(target.ip(), target.port().wrapping_add(1))
}

fn spawn_echo(data_dir: &Path, target: SocketAddr) -> anyhow::Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args(["echo-server", "--listen", &target.to_string(), "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .spawn()?)
}

fn wait_for_port(target: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if std::net::TcpStream::connect(target).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("server did not start listening on {target}")
}

/// SIGTERM (a graceful stop), then a kill if it lingers.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
