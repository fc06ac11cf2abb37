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
            Ok(c) => vitals_agent::probe_settings(&c),
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
    print!(
        "{}",
        vitals_proto::report::snapshot_text(&snapshot, snapshot.taken_at_ms)
    );
    if faults.is_empty() {
        println!("\nFaults     none under this policy");
    }
    for f in &faults {
        println!(
            "FAULT      [{}] {}: {}",
            f.severity.as_str(),
            f.check_id,
            f.evidence
        );
    }
    ExitCode::SUCCESS
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
        let (trigger, shutdown) = vitals_proto::shutdown::channel();
        tokio::spawn(async move {
            wait_for_stop(exit_on_stdin_eof).await;
            tracing::info!("stopping");
            trigger.trigger();
        });
        match vitals_agent::run(config, shutdown).await {
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
        .with_ansi(vitals_proto::colour_on_stderr())
        .init();
}
