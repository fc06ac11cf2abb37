//! `vitals-console-bench`: the web console against a city-sized database.
//!
//! Seeds a fresh data directory with `--endpoints` endpoints (each with a
//! stored snapshot and a day of history points) and fault events that the
//! ticket engine turns into `--tickets` open tickets, starts a real
//! `vitals-collector run` process on it with the console on loopback, and
//! measures, as a browser would see them over HTTP:
//!
//! - server time per page (queue, its live fragment, fleet first and last
//!   page, fleet search and sort, an endpoint, a ticket): p50, p99, max;
//! - page weight (HTML and the style sheet and scripts it loads, as sent);
//! - with `--browser`: the time from a ticket change to the queue's DOM
//!   update in the system Chromium (`tests/console/latency.mjs`);
//! - the collector's CPU and memory at rest, first with no console session,
//!   then with `--sessions` signed-in sessions holding the queue's live
//!   stream open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use vitals_collector::console::accounts::Accounts;
use vitals_collector::store::{self, Record, RecordBody, SessionOpen, SnapshotRecord};
use vitals_proto::domain::{
    CpuInfo, DiskInfo, FaultEvent, FaultState, Gateway, HostInfo, MemoryInfo, Severity, Snapshot,
};
use vitals_proto::identity::{EndpointId, Role};
use vitals_tests::console_client::{ConsoleClient as Browser, field};
use vitals_tests::loadgen::procstat::Sampler;

#[derive(Parser)]
#[command(
    name = "vitals-console-bench",
    about = "The web console on a city-sized database"
)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    endpoints: u64,
    #[arg(long, default_value_t = 5_000)]
    tickets: u64,
    /// Requests per page measured.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Console sessions with a live stream during the at-rest measurement.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Length of each at-rest measurement.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    rest: Duration,
    /// Also measure ticket change to DOM update in Chromium.
    #[arg(long)]
    browser: bool,
    #[arg(long, default_value = "target/console-bench")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:18480")]
    console: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:18443")]
    grpc: SocketAddr,
}

const ACCOUNT: &str = "bench";
const PASSWORD: &str = "bench password of some length";
const CHECKS: &[(&str, &str)] = &[
    ("disk_nearly_full", "/"),
    ("printer_jammed", "Frontdesk"),
    ("memory_pressure", "memory"),
    ("service_unreachable", "erp.city.local:443"),
];

fn snapshot(i: u64, at_ms: i64) -> Snapshot {
    let f = |k: u64| ((i * 7919 + k * 104_729) % 100) as f32;
    let gib = 1024 * 1024 * 1024u64;
    Snapshot {
        taken_at_ms: at_ms,
        host: HostInfo {
            hostname: format!("desk-{i:05}.city.local"),
            os_name: if i.is_multiple_of(3) {
                "Windows"
            } else {
                "Debian GNU/Linux"
            }
            .into(),
            os_version: if i.is_multiple_of(3) {
                "11 (26100)"
            } else {
                "12"
            }
            .into(),
            kernel_version: "6.1.0".into(),
            arch: "x86_64".into(),
            uptime_secs: 3600 * (i % 200),
            ..Default::default()
        },
        cpu: CpuInfo {
            logical_cores: 4,
            usage_percent: f(1),
            brand: "Intel Core i5".into(),
            ..Default::default()
        },
        memory: MemoryInfo {
            total_bytes: 16 * gib,
            used_bytes: (16 * gib) * (f(2) as u64) / 100,
            available_bytes: 16 * gib - (16 * gib) * (f(2) as u64) / 100,
            ..Default::default()
        },
        disks: vec![DiskInfo {
            name: "nvme0n1p2".into(),
            mount_point: "/".into(),
            file_system: "ext4".into(),
            total_bytes: 256 * gib,
            available_bytes: 256 * gib * (100 - f(3) as u64) / 100,
            kind: "ssd".into(),
            ..Default::default()
        }],
        network: vitals_proto::domain::NetworkHealth {
            gateway: Some(Gateway {
                address: "10.0.0.1".into(),
                interface: "eth0".into(),
                method: "icmp".into(),
                sent: 4,
                received: 4,
                loss_percent: 0.0,
                rtt_ms: Some(0.5 + f(4) / 50.0),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A fresh database: endpoints, their snapshots (the last one current, a
/// day of history for the first few), fault events, the bench account.
async fn seed(args: &Args, data: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data)?;
    vitals_collector::pki::init(data, &["localhost".into(), "127.0.0.1".into()])?;
    let url = format!("sqlite://{}", data.join("vitals.db").display());
    let store = store::open(&url, 1440, Duration::ZERO).await?;
    let now = vitals_proto::now_ms();
    let started = Instant::now();
    let ids: Vec<EndpointId> = (0..args.endpoints)
        .map(|i| format!("ws-{i:05}").parse())
        .collect::<Result<_, _>>()?;
    let mut batch = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        store
            .open_session(&SessionOpen {
                endpoint: id.clone(),
                agent_version: "0.1.0".into(),
                platform: if i.is_multiple_of(3) {
                    "windows"
                } else {
                    "linux"
                }
                .into(),
                at_ms: now - 86_400_000,
                machine_id: String::new(),
            })
            .await?;
        // A day of readings, one per 10 minutes, for the first 20 desks; one
        // for the rest.
        let points = if i < 20 { 144 } else { 1 };
        for p in 0..points {
            let at = now - (points - 1 - p) * 600_000;
            batch.push(Record {
                endpoint: id.clone(),
                seq: p as u64 + 1,
                received_ms: at,
                body: RecordBody::Snapshot(Box::new(SnapshotRecord::new(&snapshot(
                    i as u64 + p as u64,
                    at,
                )))),
            });
        }
        if batch.len() >= 1000 {
            store.commit(std::mem::take(&mut batch)).await?;
        }
    }
    store.commit(std::mem::take(&mut batch)).await?;
    for n in 0..args.tickets {
        let i = (n * 4) % args.endpoints;
        let (check, subject) = CHECKS[(n % CHECKS.len() as u64) as usize];
        let seq = if i < 20 { 145 } else { 2 } + n / args.endpoints.max(1);
        batch.push(Record {
            endpoint: ids[i as usize].clone(),
            seq,
            received_ms: now,
            body: RecordBody::Fault(FaultEvent {
                check_id: check.into(),
                subject: subject.into(),
                state: FaultState::Raised,
                severity: if n.is_multiple_of(10) {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                value: 97.0,
                evidence: format!("{check} on ws-{i:05}"),
                at_ms: now,
                via: String::new(),
            }),
        });
        if batch.len() >= 1000 {
            store.commit(std::mem::take(&mut batch)).await?;
        }
    }
    store.commit(batch).await?;
    let accounts = Accounts::new(store.clone());
    accounts.add(ACCOUNT, Role::Specialist, vec![]).await?;
    accounts.set_password(ACCOUNT, PASSWORD).await?;
    println!(
        "seeded {} endpoints, {} fault events in {:.1} s",
        args.endpoints,
        args.tickets,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The collector process, killed when the bench ends, however it ends.
struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_collector(args: &Args, data: &Path) -> anyhow::Result<Collector> {
    for addr in [args.grpc, args.console] {
        anyhow::ensure!(
            std::net::TcpListener::bind(addr).is_ok(),
            "{addr} is in use (a collector left running?)"
        );
    }
    let config = data.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \".\"\nlisten = \"{}\"\n\n[metrics]\nenabled = false\n\n\
             [console]\nlisten = \"{}\"\n",
            args.grpc, args.console
        ),
    )?;
    let exe = std::env::current_exe()?.with_file_name("vitals-collector");
    anyhow::ensure!(
        exe.exists(),
        "{} not found; build the workspace first",
        exe.display()
    );
    let log = std::fs::File::create(data.join("collector.log"))?;
    Ok(Collector(
        Command::new(exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = args.data_dir.clone();
    seed(&args, &data).await?;
    let mut collector = spawn_collector(&args, &data)?;
    let base = format!("http://{}", args.console);
    let started = Instant::now();
    let browser = loop {
        match Browser::sign_in(&base, ACCOUNT, PASSWORD).await {
            Ok(b) => break b,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                if let Some(status) = collector.0.try_wait()? {
                    anyhow::bail!(
                        "the collector exited ({status}); see {}",
                        data.join("collector.log").display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e),
        }
    };
    // The ticket engine works through the fault events at start.
    let want = format!("<strong>{}</strong> open", args.tickets);
    loop {
        let (_, _, html) = browser.get("/queue/rows").await?;
        if html.contains(&want) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "tickets not ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "collector ready with {} open tickets in {:.1} s",
        args.tickets,
        started.elapsed().as_secs_f64()
    );

    let (_, _, queue) = browser.get("/").await?;
    let ticket = queue
        .split("href=\"/tickets/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("1")
        .to_owned();
    let last_page = args.endpoints.div_ceil(50);
    let pages = [
        // The HTTP stack, sessions and compression alone: the baseline.
        ("baseline: a static file", "/static/console.js".to_owned()),
        ("queue", "/".to_owned()),
        ("queue live fragment", "/queue/rows".to_owned()),
        ("queue, p1 only", "/?priority=p1".to_owned()),
        ("fleet, first page", "/fleet".to_owned()),
        ("fleet, last page", format!("/fleet?page={last_page}")),
        ("fleet, search", "/fleet?q=ws-1234".to_owned()),
        ("fleet, by CPU desc", "/fleet?sort=-cpu".to_owned()),
        (
            "endpoint (a day of history)",
            "/endpoints/ws-00004".to_owned(),
        ),
        ("ticket", format!("/tickets/{ticket}")),
    ];
    let (mut assets, mut assets_gz) = (0, 0);
    for a in [
        "/static/console.css",
        "/static/htmx.min.js",
        "/static/console.js",
    ] {
        assets += browser.fetch(a, false).await?.1;
        assets_gz += browser.fetch(a, true).await?.1;
    }
    println!(
        "\nstyle sheet and scripts: {:.1} KB, {:.1} KB gzipped (cached for an hour)",
        assets as f64 / 1024.0,
        assets_gz as f64 / 1024.0
    );
    println!(
        "\n{:<30} {:>7} {:>7} {:>7} {:>9} {:>9} {:>13}",
        "page (gzip, as browsers ask)",
        "p50 ms",
        "p99 ms",
        "max ms",
        "HTML KB",
        "gzip KB",
        "+assets gz KB"
    );
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(args.requests);
        let mut gz = 0;
        for _ in 0..args.requests {
            let (t, n, _) = browser.fetch(path, true).await?;
            times.push(t);
            gz = n;
        }
        let plain = browser.get(path).await?.1;
        times.sort();
        println!(
            "{name:<30} {:>7.1} {:>7.1} {:>7.1} {:>9.1} {:>9.1} {:>13.1}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
            plain as f64 / 1024.0,
            gz as f64 / 1024.0,
            (gz + assets_gz) as f64 / 1024.0
        );
    }

    if args.browser {
        browser_latency(&browser, &base, &ticket).await?;
    }

    let pid = collector.0.id();
    let rest = |label: &'static str| async move {
        let s = Sampler::start(pid);
        tokio::time::sleep(args.rest).await;
        let r = s.stop();
        println!(
            "at rest, {label}: CPU {:.2} % of a core (max {:.1} %), RSS {:.1} MiB ({} samples)",
            r.cpu_avg_percent, r.cpu_max_percent, r.rss_end_mib, r.samples
        );
    };
    println!();
    rest("no console session").await;
    let mut streams = Vec::new();
    for _ in 0..args.sessions {
        let b = Browser::sign_in(&base, ACCOUNT, PASSWORD).await?;
        let r = b
            .http
            .get(format!("{base}/events/tickets"))
            .header(reqwest::header::COOKIE, &b.cookie)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "event stream: {}", r.status());
        streams.push((b, r));
    }
    rest("20 signed-in sessions with the queue's live stream open").await;
    drop(streams);
    drop(collector);
    Ok(())
}

/// Ticket changes (assign, alternating between two names) posted while
/// Chromium shows the queue; the page script reports when the queue's DOM
/// changed.
async fn browser_latency(b: &Browser, base: &str, ticket: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let kit = vitals_tests::components::BrowserKit::find().map_err(|e| anyhow::anyhow!(e))?;
    let mut child = tokio::process::Command::new(&kit.node)
        .arg(kit.dir.join("latency.mjs"))
        .env("CONSOLE_URL", base)
        .env("ACCOUNT", ACCOUNT)
        .env("PASSWORD", PASSWORD)
        .env("CHROMIUM", &kit.chromium)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Some(l) = lines.next_line().await? {
        if l == "READY" {
            break;
        }
    }
    let (_, _, html) = b.get(&format!("/tickets/{ticket}")).await?;
    let csrf = field(&html, "csrf")
        .ok_or_else(|| anyhow::anyhow!("no csrf"))?
        .to_owned();
    let mut delays = Vec::new();
    for n in 0..20usize {
        let who = if n % 2 == 0 { "ana" } else { "sam" };
        let r = b
            .http
            .post(format!("{base}/tickets/{ticket}/act"))
            .header(reqwest::header::COOKIE, &b.cookie)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!("csrf={csrf}&action=assign&text={who}"))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_redirection(), "assign: {}", r.status());
        let committed = vitals_proto::now_ms();
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no DOM update within 5 s"))??
            .unwrap_or_default();
        let at: i64 = line.strip_prefix("DOM ").unwrap_or("0").parse()?;
        delays.push(Duration::from_millis((at - committed).max(0) as u64));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    delays.sort();
    println!(
        "\nticket change committed -> queue DOM updated in Chromium ({} changes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        percentile(&delays, 1.0)
    );
    let _ = child.kill().await;
    Ok(())
}
