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
        /// Log lines as `text` or `json` (one object per line); overrides
        /// `[log] format`.
        #[arg(long, env = "VITALS_LOG_FORMAT")]
        log_format: Option<vitals_proto::logging::LogFormat>,
        /// Write the log to this file, rotated by size (`[log]
        /// max_size_mib` and `keep`); overrides `[log] file`.
        #[arg(long)]
        log_file: Option<PathBuf>,
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
    /// Write this desk's configuration: the file from the shipped skeleton
    /// if there is none, the collector's address, and the CA, certificate
    /// and key copied beside it. What is not given is left as it is.
    Configure {
        #[arg(long, env = "VITALS_AGENT_CONFIG", default_value = default_config())]
        config: PathBuf,
        /// The collector, https://HOST:PORT.
        #[arg(long)]
        collector: Option<String>,
        /// The fleet CA (PEM), copied to pki/ca.pem beside the configuration.
        #[arg(long)]
        ca: Option<String>,
        /// This desk's certificate (PEM), copied to pki/agent.pem.
        #[arg(long)]
        cert: Option<String>,
        /// This desk's private key (PEM), copied to pki/agent.key, readable
        /// by the agent's account (Windows: SYSTEM and Administrators) only.
        #[arg(long)]
        key: Option<String>,
        /// An enrollment token, kept in enroll.token beside the
        /// configuration (readable by the agent's account only): the
        /// service enrolls with it at its first start.
        #[arg(long)]
        token: Option<String>,
    },
    /// Join the fleet with an enrollment token: the key is made here and
    /// never leaves the desk; the collector signs a certificate for it.
    Enroll {
        #[arg(long, env = "VITALS_AGENT_CONFIG", default_value = default_config())]
        config: PathBuf,
        /// The collector, https://HOST:PORT (the configuration's when not given).
        #[arg(long)]
        collector: Option<String>,
        /// The token from `vitals-collector tokens create`.
        #[arg(long, env = "VITALS_ENROLL_TOKEN")]
        token: String,
        /// The endpoint ID to ask for; the host name, normalised, when not given.
        #[arg(long)]
        id: Option<String>,
        /// The fleet CA's fingerprint, sha256:<hex>, for a token without one.
        #[arg(long)]
        ca_hash: Option<String>,
        /// The fleet CA as a file, instead of a fingerprint.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Enroll again although this desk holds a valid certificate.
        #[arg(long)]
        force: bool,
    },
    /// The Windows service: register, remove, start, stop, or show it.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Register with the Service Control Manager (automatic start,
    /// restarted on failure); an existing registration is updated.
    Install {
        #[arg(long, env = "VITALS_AGENT_CONFIG", default_value = default_config())]
        config: PathBuf,
        /// Run as this account instead of LocalSystem.
        #[arg(long)]
        account: Option<String>,
        /// The account's password.
        #[arg(long, requires = "account")]
        password: Option<String>,
    },
    /// Stop the service if it runs, and remove it.
    Uninstall,
    /// Start the service and wait until it runs.
    Start,
    /// Stop the service and wait until it has delivered what it held.
    Stop,
    /// Print the service's state.
    Status,
}

static DEFAULT_CONFIG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| vitals_agent::paths::default_config().display().to_string());

fn default_config() -> &'static str {
    DEFAULT_CONFIG.as_str()
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
            log_format,
            log_file,
        } => run(config, exit_on_stdin_eof, log_format, log_file),
        Command::Configure {
            config,
            collector,
            ca,
            cert,
            key,
            token,
        } => {
            // Empty means not given (an installer passes its unset
            // properties so).
            let path = |p: Option<String>| p.filter(|p| !p.is_empty()).map(PathBuf::from);
            let files = vitals_agent::paths::DeskFiles {
                ca: path(ca),
                cert: path(cert),
                key: path(key),
            };
            let configured =
                vitals_agent::paths::configure(&config, SKELETON, collector.as_deref(), &files)
                    .and_then(|mut done| {
                        if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
                            // The files come from enrollment, not by hand.
                            done.retain(|l| !l.starts_with("not connected yet"));
                            done.push(vitals_agent::paths::keep_token(&config, t.trim())?);
                        }
                        Ok(done)
                    });
            report(configured)
        }
        Command::Enroll {
            config,
            collector,
            token,
            id,
            ca_hash,
            ca,
            force,
        } => {
            let opts = vitals_agent::enrollment::EnrollOptions {
                config,
                collector,
                token,
                id,
                ca_hash,
                ca,
                force,
            };
            match runtime() {
                Ok(rt) => {
                    report(rt.block_on(vitals_agent::enrollment::enroll_desk(&opts, SKELETON)))
                }
                Err(code) => code,
            }
        }
        Command::Service { action } => service(action),
    }
}

/// Prints what a command did, line by line, or its error (exit 2).
fn report<E: std::fmt::Display>(result: Result<Vec<String>, E>) -> ExitCode {
    match result {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The one-thread runtime the command line's network steps run on.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start runtime: {e}");
            ExitCode::FAILURE
        })
}

/// The configuration a fresh Windows desk starts from.
const SKELETON: &str = include_str!("../../deploy/windows/agent.toml");

#[cfg(not(windows))]
fn service(_action: ServiceAction) -> ExitCode {
    eprintln!(
        "error: `vitals-agent service` manages the Windows service; on Linux install \
         deploy/systemd/vitals-agent.service (see the README)"
    );
    ExitCode::from(2)
}

#[cfg(windows)]
fn service(action: ServiceAction) -> ExitCode {
    use vitals_agent::win32::service as svc;
    let result = match action {
        ServiceAction::Install {
            config,
            account,
            password,
        } => (|| {
            let config =
                std::path::absolute(&config).map_err(|e| format!("{}: {e}", config.display()))?;
            let (agent, _) =
                load(&config).map_err(|_| "the configuration is not usable".to_owned())?;
            vitals_agent::paths::protect(&agent)?;
            let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
            svc::install(
                &exe,
                &config,
                account.map(|name| svc::Account { name, password }),
            )?;
            Ok(format!(
                "{} installed (automatic start, restarted on failure): {} run --config {}\n\
                 start it with: vitals-agent service start",
                svc::NAME,
                exe.display(),
                config.display()
            ))
        })(),
        ServiceAction::Uninstall => svc::uninstall().map(|removed| {
            if removed {
                format!("{} stopped and removed", svc::NAME)
            } else {
                format!("{} is not installed", svc::NAME)
            }
        }),
        ServiceAction::Start => svc::start().map(|()| format!("{} running", svc::NAME)),
        ServiceAction::Stop => svc::stop().map(|()| format!("{} stopped", svc::NAME)),
        ServiceAction::Status => svc::state().map(|s| format!("{} {s}", svc::NAME)),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The configuration the service was registered with.
#[cfg(windows)]
static SERVICE_CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The agent as the Service Control Manager runs it: logs to a rotating
/// file beside the configuration and warnings to the event log; stops
/// when the SCM asks, after delivering what it holds.
#[cfg(windows)]
fn service_body(stop: vitals_proto::shutdown::Shutdown, stopping: &dyn Fn()) -> u32 {
    use tracing_subscriber::layer::SubscriberExt;
    let Some(config_path) = SERVICE_CONFIG.get() else {
        return 2;
    };
    let settings = log_settings(config_path);
    let logs = settings
        .file
        .clone()
        .unwrap_or_else(|| vitals_agent::paths::log_file(config_path));
    let subscriber = tracing_subscriber::registry()
        .with(vitals_proto::logging::env_filter())
        .with(vitals_agent::logging::layer(
            &settings,
            settings.format,
            Some(logs.as_path()),
        ))
        .with(vitals_agent::logging::EventLogLayer::open());
    let _ = tracing::subscriber::set_global_default(subscriber);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start runtime: {e}");
            return 1;
        }
    };
    tracing::info!(config = %config_path.display(), "started by the Service Control Manager");
    let mut asked = stop.clone();
    let result = runtime.block_on(async move {
        // Installed with a token: enroll first (retrying while the
        // collector cannot be reached).
        if vitals_agent::enrollment::token_file(config_path).exists() {
            tokio::select! {
                r = vitals_agent::enrollment::enroll_pending(config_path, SKELETON) => {
                    if let Err(e) = r {
                        tracing::error!("enrollment: {e}");
                    }
                }
                () = asked.requested() => return Ok(()),
            }
        }
        // A desk installed before its certificate arrived waits for it,
        // saying so once per change, instead of failing and restarting.
        let mut said = String::new();
        let config = loop {
            match ready(config_path) {
                Ok((c, _)) => break c,
                Err(e) => {
                    if e != said {
                        tracing::error!("not connecting yet, checking again every 30 s: {e}");
                        said = e;
                    }
                    tokio::select! {
                        () = asked.requested() => return Ok(()),
                        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                    }
                }
            }
        };
        let agent = vitals_agent::run(config, stop);
        tokio::pin!(agent);
        tokio::select! {
            r = &mut agent => return r,
            () = asked.requested() => {}
        }
        tracing::info!("the Service Control Manager asked to stop");
        stopping();
        agent.await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            1
        }
    }
}

/// The configuration and the files it names, checked; the endpoint ID
/// from the certificate.
fn ready(path: &std::path::Path) -> Result<(AgentConfig, String), String> {
    let config = AgentConfig::load(path).map_err(|e| e.to_string())?;
    for (what, p) in [
        ("tls.ca", &config.tls.ca),
        ("tls.cert", &config.tls.cert),
        ("tls.key", &config.tls.key),
    ] {
        if let Err(e) = std::fs::metadata(p) {
            return Err(format!("{}: {what}: {}: {e}", path.display(), p.display()));
        }
    }
    let id = vitals_agent::check_tls_files(&config).map_err(|e| e.to_string())?;
    Ok((config, id.to_string()))
}

fn load(path: &std::path::Path) -> Result<(AgentConfig, String), ExitCode> {
    ready(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
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

fn run(
    config_path: PathBuf,
    exit_on_stdin_eof: bool,
    log_format: Option<vitals_proto::logging::LogFormat>,
    log_file: Option<PathBuf>,
) -> ExitCode {
    #[cfg(windows)]
    {
        let _ =
            SERVICE_CONFIG.set(std::path::absolute(&config_path).unwrap_or(config_path.clone()));
        match vitals_agent::win32::service::dispatch(service_body) {
            Ok(Some(code)) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
            // Started from a console: run in it.
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    init_run_log(&config_path, log_format, log_file);
    if let Err(code) = enroll_first(&config_path) {
        return code;
    }
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

/// A desk's first start with a token left by its installer: enroll.
fn enroll_first(config_path: &std::path::Path) -> Result<(), ExitCode> {
    if !vitals_agent::enrollment::token_file(config_path).exists() {
        return Ok(());
    }
    runtime()?
        .block_on(vitals_agent::enrollment::enroll_pending(
            config_path,
            SKELETON,
        ))
        .map(|_| ())
        .map_err(|e| {
            tracing::error!("enrollment: {e}");
            ExitCode::from(2)
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

/// The `[log]` section of the configuration when it can be read; the
/// defaults otherwise (the full load that follows says what is wrong).
fn log_settings(config_path: &std::path::Path) -> vitals_agent::config::LogSettings {
    AgentConfig::load(config_path)
        .map(|c| c.log)
        .unwrap_or_default()
}

/// The log of `run`: the flags first, then the configuration's `[log]`.
fn init_run_log(
    config_path: &std::path::Path,
    format: Option<vitals_proto::logging::LogFormat>,
    file: Option<PathBuf>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    let settings = log_settings(config_path);
    let file = file.or_else(|| settings.file.clone());
    let subscriber = tracing_subscriber::registry()
        .with(vitals_proto::logging::env_filter())
        .with(vitals_agent::logging::layer(
            &settings,
            format.unwrap_or(settings.format),
            file.as_deref(),
        ));
    let _ = tracing::subscriber::set_global_default(subscriber);
}
