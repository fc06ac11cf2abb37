//! `vitals-agent`: the workstation agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use vitals_agent::config::AgentConfig;

#[derive(Parser)]
#[command(name = "vitals-agent", version, about = "Vitals workstation agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a service: sample and stream to the collector.
    Run {
        /// Configuration file.
        #[arg(long, env = "VITALS_AGENT_CONFIG", default_value = default_config())]
        config: PathBuf,
        /// Stop when standard input closes (for a supervising parent).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Run every probe once and print the findings and the faults the
    /// policy would raise; nothing is sent anywhere.
    Once {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// Take probe settings (printers, DNS names, services, timings)
        /// from this agent.toml; the defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Judge against this policy.toml instead of the shipped default.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Check a configuration file and the certificates it names, then exit.
    CheckConfig {
        #[arg(long, env = "VITALS_AGENT_CONFIG", default_value = default_config())]
        config: PathBuf,
    },
}

fn default_config() -> &'static str {
    if cfg!(windows) {
        r"C:\ProgramData\Vitals\agent.toml"
    } else {
        "/etc/vitals/agent.toml"
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Once {
            json,
            config,
            policy,
        } => once(json, config, policy),
        Command::CheckConfig { config } => match load(&config) {
            Ok((_, id)) => {
                println!("{}: ok (endpoint {id})", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run {
            config,
            exit_on_stdin_eof,
        } => run(config, exit_on_stdin_eof),
    }
}

fn load(path: &std::path::Path) -> Result<(AgentConfig, String), ExitCode> {
    let config = AgentConfig::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    for (what, p) in [
        ("tls.ca", &config.tls.ca),
        ("tls.cert", &config.tls.cert),
        ("tls.key", &config.tls.key),
    ] {
        if let Err(e) = std::fs::metadata(p) {
            eprintln!("error: {}: {what}: {}: {e}", path.display(), p.display());
            return Err(ExitCode::from(2));
        }
    }
    let id = vitals_agent::check_tls_files(&config).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok((config, id.to_string()))
}

fn once(json: bool, config: Option<PathBuf>, policy: Option<PathBuf>) -> ExitCode {
    let settings = match &config {
        Some(path) => match AgentConfig::load(path) {
            Ok(c) => c.probe_settings(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Default::default(),
    };
    let policy = match &policy {
        Some(path) => match vitals_proto::policy::Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => vitals_proto::policy::Policy::default_policy(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (_clock_tx, clock_rx) = watch::channel(None);
    let snapshot = runtime.block_on(vitals_agent::probes::snapshot_once(
        vitals_agent::probes::build(&settings, clock_rx),
    ));
    // What the policy would raise now, ignoring hold times.
    let faults = vitals_agent::checks::Checks::evaluate_once(policy, &snapshot);
    if json {
        let out = serde_json::json!({ "snapshot": snapshot, "faults": faults });
        match serde_json::to_string_pretty(&out) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let h = &snapshot.host;
    println!(
        "{} — {} {} (kernel {}, {})",
        h.hostname, h.os_name, h.os_version, h.kernel_version, h.arch
    );
    println!("uptime   {}", humanize_secs(h.uptime_secs));
    println!(
        "cpu      {:.1}% of {} cores",
        snapshot.cpu.usage_percent, snapshot.cpu.logical_cores
    );
    let m = &snapshot.memory;
    println!(
        "memory   {:.1} / {:.1} GiB ({:.0}%)",
        gib(m.used_bytes),
        gib(m.total_bytes),
        m.used_percent()
    );
    for d in &snapshot.disks {
        println!(
            "disk     {:<20} {:>6.1} GiB  {:>3.0}% used  {}",
            d.mount_point,
            gib(d.total_bytes),
            d.used_percent(),
            d.file_system
        );
    }
    for t in &snapshot.temperatures {
        println!("temp     {:<20} {:>5.1} °C", t.label, t.celsius);
    }
    for b in &snapshot.batteries {
        println!(
            "battery  {:<20} {:>3.0}% charged, {:.0}% of design capacity, {}",
            b.name, b.charge_percent, b.health_percent, b.state
        );
    }
    if snapshot.smart.available {
        for d in &snapshot.smart.devices {
            let verdict = match (d.passed, d.error.as_str()) {
                (_, e) if !e.is_empty() => e.to_owned(),
                (Some(true), _) => "PASSED".into(),
                (Some(false), _) => "FAILING".into(),
                (None, _) => "no verdict".into(),
            };
            println!("smart    {:<20} {} {}", d.device, d.model, verdict);
        }
    } else {
        println!("smart    unavailable: {}", snapshot.smart.reason);
    }
    let os = &snapshot.os;
    if os.reboot_required {
        println!("os       reboot pending ({})", os.reboot_reasons.join(", "));
    }
    if os.services_checked {
        if os.failed_services.is_empty() {
            println!("os       no failed services");
        } else {
            println!("os       failed: {}", os.failed_services.join(", "));
        }
    }
    for u in &os.users {
        println!("user     {:<12} {} {}", u.user, u.terminal, u.host);
    }
    for i in &snapshot.interfaces {
        println!(
            "net      {:<12} {:<8} {}",
            i.name,
            i.oper_state,
            i.addresses.join(" ")
        );
    }
    let n = &snapshot.network;
    if let Some(g) = &n.gateway {
        println!(
            "gateway  {} via {}: {}/{} answered ({}){}",
            g.address,
            g.interface,
            g.received,
            g.sent,
            g.method,
            g.rtt_ms.map(|r| format!(", {r:.1} ms")).unwrap_or_default()
        );
    }
    for d in &n.dns {
        if d.ok {
            println!(
                "dns      {:<20} {:.0} ms {}",
                d.name,
                d.millis,
                d.addresses.join(" ")
            );
        } else {
            println!("dns      {:<20} FAILED {}", d.name, d.error);
        }
    }
    for c in &n.services {
        match c.connect_ms {
            Some(ms) => println!("service  {:<20} {} {:.1} ms", c.name, c.address, ms),
            None => println!("service  {:<20} {} FAILED {}", c.name, c.address, c.error),
        }
    }
    for w in &n.wifi {
        println!("wifi     {:<12} {:.0} dBm", w.interface, w.signal_dbm);
    }
    for p in &snapshot.printers {
        println!(
            "printer  {:<20} {} {} {}{}",
            p.name,
            p.source,
            p.state,
            p.reasons.join(","),
            if p.queued_jobs > 0 {
                format!(" ({} jobs)", p.queued_jobs)
            } else {
                String::new()
            }
        );
    }
    for e in &snapshot.probe_errors {
        println!("problem  {}: {}", e.probe, e.message);
    }
    if faults.is_empty() {
        println!("faults   none under the default policy");
    }
    for f in &faults {
        println!(
            "FAULT    [{}] {} {}: {}",
            f.severity.as_str(),
            f.check_id,
            f.subject,
            f.evidence
        );
    }
    ExitCode::SUCCESS
}

fn humanize_secs(s: u64) -> String {
    format!("{}d {}h {}m", s / 86_400, s % 86_400 / 3600, s % 3600 / 60)
}

fn run(config_path: PathBuf, exit_on_stdin_eof: bool) -> ExitCode {
    init_tracing();
    let (config, _) = match load(&config_path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // One thread is plenty for one stream and a sampler, and keeps the
    // agent's footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_stop(exit_on_stdin_eof).await;
            tracing::info!("stopping");
            let _ = stop_tx.send(true);
        });
        match vitals_agent::run(config, stop_rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "agent stopped");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_stop(exit_on_stdin_eof: bool) {
    let stdin_closed = async {
        if exit_on_stdin_eof {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return stdin_closed.await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = stdin_closed => {}
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
