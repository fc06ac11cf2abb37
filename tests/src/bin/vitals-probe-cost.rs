//! `vitals-probe-cost`: what the agent's probes cost, in CPU and wall
//! time, on this machine.
//!
//! Runs every probe `--rounds` times, one probe at a time and then all
//! together as the agent's full snapshot, and reports the process CPU
//! (user + system, child processes such as smartctl and systemctl
//! included) per run. Waiting on the network costs wall time, not CPU.
//!
//! `--with-components` (root) first starts a CUPS scheduler with three
//! queues on an ippeveprinter printer and snmpd with two network printers,
//! and points the probes at them, plus DNS names and a key service on
//! loopback, so the printer and network probes have real work to do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;
use vitals_agent::config::{KeyService, NetworkPrinter, ProbeSettings};
use vitals_agent::probes::{self, Scheduled};
use vitals_tests::components::{Cups, Snmpd};

#[derive(Parser)]
#[command(
    name = "vitals-probe-cost",
    about = "CPU and wall time of the agent's probes"
)]
struct Args {
    /// Runs of each probe, and of the full snapshot.
    #[arg(long, default_value_t = 50)]
    rounds: u32,
    /// Start CUPS and snmpd (root) so printer probes read real devices.
    #[arg(long)]
    with_components: bool,
    /// Probe settings from this agent.toml instead of the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// User + system CPU of this process and its waited-for children, in
/// clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks() -> u64 {
    vitals_tests::loadgen::procstat::cpu_ticks("self", true).unwrap_or(0)
}

const TICK_MS: f64 = 10.0;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("vitals-probe-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut settings: ProbeSettings = match &args.config {
        Some(p) => vitals_agent::config::AgentConfig::load(p)?.probe_settings(),
        None => ProbeSettings::default(),
    };
    // Keep benchmark traffic on this machine.
    settings.network.ping_gateway = false;
    let mut _keep = Vec::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    if args.with_components {
        let cups = Cups::start(&dir, &["Frontdesk", "Dispatch", "Finance"])
            .map_err(|e| anyhow::anyhow!("CUPS: {e}"))?;
        settings.printers.cups = cups.url.clone();
        let helper = std::env::current_exe()?
            .with_file_name(format!("vitals-snmp-pass{}", std::env::consts::EXE_SUFFIX));
        let mib = ".1.3.6.1.2.1.25.3.5.1.1.1 integer 3\n.1.3.6.1.2.1.25.3.5.1.2.1 octet 00 00\n\
                   .1.3.6.1.2.1.43.10.2.1.4.1.1 counter 48213\n\
                   .1.3.6.1.2.1.43.11.1.1.6.1.1 string Black Toner\n\
                   .1.3.6.1.2.1.43.11.1.1.8.1.1 integer 100\n\
                   .1.3.6.1.2.1.43.11.1.1.9.1.1 integer 60\n";
        let snmpd = Snmpd::start(&dir, &helper, mib).map_err(|e| anyhow::anyhow!("snmpd: {e}"))?;
        settings.printers.network = ["Dispatch HP", "Finance Color"]
            .iter()
            .map(|n| NetworkPrinter {
                name: (*n).into(),
                address: snmpd.addr.to_string(),
                community: "public".into(),
                protocol: Default::default(),
                ipp_uri: None,
            })
            .collect();
        settings.network.dns = vec!["localhost".into()];
        settings.network.services = vec![KeyService {
            name: "erp".into(),
            address: listener.local_addr()?.to_string(),
        }];
        _keep.push(Box::new(cups) as Box<dyn std::any::Any>);
        _keep.push(Box::new(snmpd));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_tx, clock) = watch::channel(Some(0));
    let build = || probes::build(&settings, clock.clone());

    println!(
        "{:<18} {:>8} {:>12} {:>12}",
        "probe", "runs", "cpu ms/run", "wall ms p50"
    );
    for mut s in build() {
        // The first run primes readers (CPU window, sensor lists): not counted.
        runtime.block_on(probes::run_with_timeout(s.probe.as_mut(), s.timing.timeout));
        let (cpu, wall) = measure(args.rounds, || {
            runtime.block_on(probes::run_with_timeout(s.probe.as_mut(), s.timing.timeout))
        });
        println!(
            "{:<18} {:>8} {:>12.2} {:>12.1}",
            s.probe.kind().as_str(),
            args.rounds,
            cpu,
            wall
        );
    }
    let mut all: Vec<Scheduled> = build();
    // One after another: the CPU is what a full snapshot costs; the wall
    // time is the sum (the agent runs them side by side).
    let full = |all: &mut Vec<Scheduled>| {
        runtime.block_on(async {
            for s in all.iter_mut() {
                probes::run_with_timeout(s.probe.as_mut(), s.timing.timeout).await;
            }
        })
    };
    full(&mut all);
    let (cpu, wall) = measure(args.rounds, || full(&mut all));
    println!(
        "{:<18} {:>8} {:>12.2} {:>12.1}",
        "all (in sequence)", args.rounds, cpu, wall
    );
    drop(_keep);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// (CPU ms per run, median wall ms) over `rounds` runs of `f`.
fn measure<T>(rounds: u32, mut f: impl FnMut() -> T) -> (f64, f64) {
    let before = cpu_ticks();
    let mut walls = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        walls.push(t.elapsed());
    }
    walls.sort();
    let cpu = (cpu_ticks() - before) as f64 * TICK_MS / f64::from(rounds.max(1));
    let wall = walls
        .get(walls.len() / 2)
        .copied()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
        * 1000.0;
    (cpu, wall)
}
