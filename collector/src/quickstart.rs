//! `vitals-collector quickstart`: the whole system on one machine, from
//! nothing, with one command.
//!
//! It creates (or re-uses) a data directory with a fleet CA, the collector's
//! certificate, an agent certificate for this machine and an admin
//! specialist certificate; writes `collector.toml`, `agent/agent.toml` and a
//! `vitalsctl.toml` profile; starts the collector on loopback and a
//! `vitals-agent` child process; and stops both on Ctrl-C. The PKI and the
//! database are kept between runs; the three config files belong to the
//! quickstart and are rewritten on each start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tracing::{info, warn};
use vitals_proto::identity::{EndpointId, Identity, Role};

use crate::config::CollectorConfig;
use crate::pki::{self, Ca, PkiPaths};
use crate::{Collector, Listeners};

/// Certificates with fewer days left than this are re-issued at start.
const RENEW_DAYS: i64 = 14;
const SPECIALIST: &str = "quickstart-admin";
/// The console's first account.
const CONSOLE_ADMIN: &str = "admin";

pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub console_listen: SocketAddr,
    /// Whether the agent sends echo probes to the default gateway.
    pub probe_gateway: bool,
}

/// Runs the quickstart until `shutdown` completes.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
    let data_dir = opts
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", opts.data_dir.display()))?;
    let endpoint = local_endpoint_id();
    prepare_pki(&data_dir, &endpoint)?;
    let config_path = write_collector_config(&data_dir, &opts)?;

    let agent_bin = agent_binary().await?;
    let config = CollectorConfig::load(&config_path)?;
    let collector = Collector::open(config.clone()).await?;
    let password = first_admin(&collector.accounts()).await?;
    let listeners = Listeners::bind(&config).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; is another collector running? choose other ports with --listen, \
             --metrics-listen and --console-listen"
        )
    })?;
    let addr = listeners.grpc.local_addr()?;
    let console_addr = listeners
        .console
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?
        .unwrap_or(opts.console_listen);
    let metrics_addr = listeners
        .metrics
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?
        .unwrap_or(opts.metrics_listen);
    write_client_configs(&data_dir, addr, &endpoint, opts.probe_gateway)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(collector.serve(listeners, async {
        let _ = stop_rx.await;
    }));

    let log_path = data_dir.join("agent/agent.log");
    let mut agent = start_agent(&agent_bin, &data_dir.join("agent/agent.toml"), &log_path)?;
    print_banner(&Banner {
        data_dir: &data_dir,
        listen: addr,
        metrics: metrics_addr,
        console: console_addr,
        password: password.as_deref(),
        endpoint: &endpoint,
        log: &log_path,
    });

    // Child::wait closes the child's stdin, which is the agent's signal to
    // stop; hold it here until we mean it.
    let stdin = agent.stdin.take();
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        status = agent.wait() => {
            warn!(?status, log = %log_path.display(), "agent exited; the collector keeps running until Ctrl-C");
            shutdown.await;
        }
    }
    info!("stopping agent and collector");
    drop(stdin);
    stop_agent(&mut agent).await;
    let _ = stop_tx.send(());
    server.await.context("collector task failed")??;
    Ok(())
}

/// Makes sure the console has its first admin. Returns a one-time password
/// to print when there is one to give: a new account, or one whose
/// one-time password was never used (so a new one replaces it).
async fn first_admin(
    accounts: &crate::console::accounts::Accounts,
) -> anyhow::Result<Option<String>> {
    let list = accounts.list().await?;
    match list.iter().find(|a| a.name == CONSOLE_ADMIN) {
        None if list.is_empty() => Ok(Some(
            accounts.add(CONSOLE_ADMIN, Role::Admin, vec![]).await?,
        )),
        Some(a) if a.must_change_password && !a.disabled => {
            Ok(Some(accounts.reset_password(CONSOLE_ADMIN).await?))
        }
        _ => Ok(None),
    }
}

/// An endpoint ID for this machine from its host name.
pub fn local_endpoint_id() -> EndpointId {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let cleaned: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    cleaned
        .parse()
        .unwrap_or_else(|_| "this-workstation".parse().expect("valid literal ID"))
}

fn prepare_pki(data_dir: &Path, endpoint: &EndpointId) -> anyhow::Result<()> {
    let paths = PkiPaths::new(data_dir);
    let hosts = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let ca = if paths.ca_key().exists() {
        Ca::load(&paths)?
    } else {
        info!(dir = %paths.dir.display(), "creating the fleet CA");
        pki::init(data_dir, &hosts)?
    };
    let stale = |cert: &Path| pki::days_left(cert).is_none_or(|d| d < RENEW_DAYS);
    if stale(&paths.server_cert()) {
        ca.issue_server(&hosts, pki::SERVER_DAYS)?
            .write(&paths.server_cert(), &paths.server_key())?;
    }
    for (identity, days) in [
        (Identity::Endpoint(endpoint.clone()), pki::AGENT_DAYS),
        (
            Identity::specialist(SPECIALIST, Role::Admin)?,
            pki::SPECIALIST_DAYS,
        ),
    ] {
        let (cert, key) = paths.client(&identity);
        if stale(&cert) {
            ca.issue_client(&identity, days)?.write(&cert, &key)?;
        }
    }
    Ok(())
}

fn write(p: &Path, text: String) -> anyhow::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn write_collector_config(data_dir: &Path, opts: &Options) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("collector.toml");
    let text = format!(
        "# Written by `vitals-collector quickstart`; rewritten on each start.\n\
         data_dir = \".\"\n\
         listen = \"{}\"\n\n\
         [agents]\n\
         snapshot_interval = \"10s\"\n\
         heartbeat_interval = \"15s\"\n\
         idle_timeout = \"45s\"\n\n\
         [metrics]\n\
         listen = \"{}\"\n\n\
         [console]\n\
         listen = \"{}\"\n",
        opts.listen, opts.metrics_listen, opts.console_listen
    );
    write(&path, text)?;
    Ok(path)
}

/// Writes the agent's config and the vitalsctl profile for a collector
/// listening on `addr` (known only once bound, so port 0 works).
fn write_client_configs(
    data_dir: &Path,
    addr: SocketAddr,
    endpoint: &EndpointId,
    probe_gateway: bool,
) -> anyhow::Result<()> {
    let paths = PkiPaths::new(data_dir);
    let (agent_cert, agent_key) = paths.client(&Identity::Endpoint(endpoint.clone()));
    let (sp_cert, sp_key) = paths.client(&Identity::specialist(SPECIALIST, Role::Admin)?);
    let rel = |p: &Path| {
        p.strip_prefix(data_dir)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("https://{addr}");
    let agent = format!(
        "# Written by `vitals-collector quickstart`; rewritten on each start.\n\
         collector = \"{url}\"\n\
         server_name = \"localhost\"\n\
         state_dir = \"state\"\n\n\
         [tls]\n\
         ca = \"../{}\"\n\
         cert = \"../{}\"\n\
         key = \"../{}\"\n\n\
         [link]\n\
         snapshot_interval = \"10s\"\n\n\
         [network]\n\
         ping_gateway = {probe_gateway}\n",
        rel(&paths.ca_cert()),
        rel(&agent_cert),
        rel(&agent_key)
    );
    let profile = format!(
        "# vitalsctl profile written by `vitals-collector quickstart`.\n\
         collector = \"{url}\"\n\
         server_name = \"localhost\"\n\
         ca = \"{}\"\n\
         cert = \"{}\"\n\
         key = \"{}\"\n",
        rel(&paths.ca_cert()),
        rel(&sp_cert),
        rel(&sp_key)
    );
    write(&data_dir.join("agent/agent.toml"), agent)?;
    write(&data_dir.join("vitalsctl.toml"), profile)?;
    Ok(())
}

/// Finds `vitals-agent`: `$VITALS_AGENT_BIN`, else next to this executable.
/// Started through `cargo run`, it first has cargo build the agent with the
/// same profile, so one command works from a fresh checkout.
async fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VITALS_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let dir = exe.parent().context("executable has no folder")?;
    let sibling = dir.join(format!("vitals-agent{}", std::env::consts::EXE_SUFFIX));
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "vitals-agent", "--bin", "vitals-agent"]);
        if let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
            cmd.arg("--manifest-path")
                .arg(PathBuf::from(manifest_dir).join("Cargo.toml"));
        }
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        info!("building vitals-agent (cargo build -p vitals-agent)");
        let status = cmd.status().await.context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo could not build vitals-agent ({status})");
        }
    }
    if sibling.exists() {
        Ok(sibling)
    } else {
        bail!(
            "vitals-agent not found at {}; build it (cargo build --release -p vitals-agent) \
             or set VITALS_AGENT_BIN",
            sibling.display()
        )
    }
}

/// The agent writes its log to `log`, rotated by size (10 MiB, five
/// kept); what it prints before its log is set up (a configuration
/// error, a panic) goes to `<log>.stderr`, emptied at each start.
fn start_agent(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let mut stderr_path = log.as_os_str().to_owned();
    stderr_path.push(".stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("cannot open {}", Path::new(&stderr_path).display()))?;
    Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--log-file")
        .arg(log)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits for the agent to stop (its stdin is closed by now), killing it if
/// it has not exited within a few seconds.
async fn stop_agent(agent: &mut Child) {
    if tokio::time::timeout(Duration::from_secs(5), agent.wait())
        .await
        .is_err()
    {
        warn!("agent did not stop in time; killing it");
        let _ = agent.kill().await;
    }
}

struct Banner<'a> {
    data_dir: &'a Path,
    listen: SocketAddr,
    metrics: SocketAddr,
    console: SocketAddr,
    password: Option<&'a str>,
    endpoint: &'a EndpointId,
    log: &'a Path,
}

fn print_banner(b: &Banner<'_>) {
    let Banner {
        data_dir,
        listen,
        metrics,
        console,
        password,
        endpoint,
        log,
    } = *b;
    let shown = |p: &Path| {
        std::env::current_dir()
            .ok()
            .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| p.to_path_buf())
            .display()
            .to_string()
    };
    let in_default_place = shown(data_dir) == "vitals-data";
    let release = std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent()
                .and_then(|d| d.file_name())
                .map(|n| n == "release")
        })
        .unwrap_or(false);
    let ctl = if std::env::var_os("CARGO").is_some() {
        format!(
            "cargo run{} -p vitals-collector --bin vitalsctl --",
            if release { " --release" } else { "" }
        )
    } else {
        std::env::current_exe()
            .ok()
            .and_then(|e| {
                e.parent()
                    .map(|d| d.join("vitalsctl").display().to_string())
            })
            .unwrap_or_else(|| "vitalsctl".into())
    };
    let profile = if in_default_place {
        String::new()
    } else {
        format!(" --profile {}", shown(&data_dir.join("vitalsctl.toml")))
    };
    // Written in one piece, and a closed stdout (a pipe whose reader went
    // away) must not bring the system down.
    use std::io::Write;
    let banner = format!(
        "\nVitals quickstart is running.\n\
         \n  console    http://{console}/  {signin}\
         \n  collector  https://{listen}  (mTLS, TLS 1.3)\
         \n  metrics    http://{metrics}/metrics\
         \n  agent      endpoint \"{endpoint}\", log {log}\
         \n  data       {data}  (fleet CA, certificates, SQLite database)\
         \n\nIn another terminal, from this folder:\
         \n  {ctl}{profile} endpoints list\
         \n  {ctl}{profile} endpoints show {endpoint}\
         \n\nCtrl-C stops everything.\n",
        log = shown(log),
        data = shown(data_dir),
        signin = match password {
            Some(p) => format!(
                "sign in as \"{CONSOLE_ADMIN}\" with the one-time password {p}\
                 \n             (you choose your own at the first sign-in)"
            ),
            None => format!(
                "sign in as \"{CONSOLE_ADMIN}\"; a forgotten password: \
                 vitals-collector users --config {} reset-password {CONSOLE_ADMIN}",
                shown(&data_dir.join("collector.toml"))
            ),
        },
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
}
