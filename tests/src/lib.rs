//! Test harness for Vitals: a fleet CA minted in the test, collectors and
//! agents started in-process on loopback, and clients for both services.
//! Nothing is mocked: every connection is real mTLS over TCP and every
//! collector stores into a real SQLite file, or, with
//! `VITALS_TEST_STORAGE=postgres`, into a database of its own on a private
//! PostgreSQL cluster the harness starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use vitals_agent::config::{
    AgentConfig, LinkSettings, NetworkSettings, PrinterSettings, ProbeTimings, TimingOverride,
    TlsFiles,
};
use vitals_collector::config::CollectorConfig;
use vitals_collector::ctl::{Client, CtlError, Profile};
use vitals_collector::pki::{self, Ca, Leaf, PkiPaths};
use vitals_collector::{Collector, Listeners};
use vitals_proto::identity::{Identity, Role};

pub use port::Port;

/// A data directory with a fleet CA, removed when dropped.
pub struct Fleet {
    pub dir: PathBuf,
    pub ca: Ca,
    /// The fleet's PostgreSQL database, when the suite runs on it.
    pub storage_url: Option<String>,
}

impl Fleet {
    pub fn new(name: &str) -> Self {
        // VITALS_TEST_LOG=debug (any tracing filter) shows what the
        // in-process collectors and agents log.
        if let Ok(filter) = std::env::var("VITALS_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = std::env::temp_dir().join(format!(
            "vitals-e2e-{}-{name}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = pki::init(&dir, &["localhost".into(), "127.0.0.1".into()]).expect("fleet CA");
        let storage_url = match std::env::var("VITALS_TEST_STORAGE").as_deref() {
            Ok("postgres") => {
                let pg = components::Postgres::shared()
                    .expect("VITALS_TEST_STORAGE=postgres: a PostgreSQL cluster");
                let db = dir.file_name().and_then(|n| n.to_str()).unwrap_or(name);
                Some(pg.database(db).expect("a database for the fleet"))
            }
            _ => None,
        };
        Fleet {
            dir,
            ca,
            storage_url,
        }
    }

    pub fn paths(&self) -> PkiPaths {
        PkiPaths::new(&self.dir)
    }

    /// Issues and writes a client certificate; returns (cert, key) paths.
    pub fn issue(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let (cert, key) = self.paths().client(identity);
        self.ca
            .issue_client(identity, 30)
            .expect("issue")
            .write(&cert, &key)
            .expect("write");
        (cert, key)
    }

    /// Writes a leaf made elsewhere (a foreign CA, an expired certificate).
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("extra/{name}.pem"));
        let key = self.dir.join(format!("extra/{name}.key"));
        leaf.write(&cert, &key).expect("write leaf");
        (cert, key)
    }

    /// A collector configuration for this fleet with fast agent intervals.
    pub fn collector_config(&self) -> CollectorConfig {
        let mut c = CollectorConfig::with_data_dir(&self.dir);
        c.storage.url = self.storage_url.clone();
        c.listen = "127.0.0.1:0".parse().expect("addr");
        c.metrics.listen = "127.0.0.1:0".parse().expect("addr");
        c.agents.snapshot_interval = Duration::from_secs(1);
        c.agents.heartbeat_interval = Duration::from_secs(1);
        c.agents.idle_timeout = Duration::from_secs(5);
        // Keep every snapshot, so tests can count them.
        c.storage.history_interval = Duration::ZERO;
        c
    }

    /// An agent configuration for `id` pointing at `collector`: fast probes,
    /// nothing that reaches beyond loopback.
    pub fn agent_config(&self, id: &str, collector: SocketAddr) -> AgentConfig {
        let (cert, key) = self.issue(&Identity::Endpoint(id.parse().expect("id")));
        AgentConfig {
            collector: format!("https://{collector}"),
            server_name: Some("localhost".into()),
            state_dir: self.dir.join(format!("agents/{id}")),
            machine_id: None,
            enroll_token: None,
            tls: TlsFiles {
                ca: self.paths().ca_cert(),
                cert,
                key,
            },
            link: LinkSettings {
                snapshot_interval: Duration::from_secs(1),
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_millis(500),
                outbox_max_messages: 1000,
                outbox_max_bytes: 64 * 1024 * 1024,
                // A dead link is noticed within 4 s.
                keepalive_interval: Duration::from_secs(2),
                keepalive_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(5),
            },
            probes: test_probe_timings(),
            smart: Default::default(),
            // No CUPS unless a test starts one and says where.
            printers: PrinterSettings {
                cups: String::new(),
                network: Vec::new(),
            },
            // Test traffic stays on loopback: the machine's gateway is not ours to ping.
            network: NetworkSettings {
                ping_gateway: false,
                ..Default::default()
            },
            diagnostics: Default::default(),
            log: Default::default(),
        }
    }

    /// Writes an agent.toml for `once --config`: only probe settings matter
    /// there, the rest just has to be valid.
    pub fn once_config(dir: &Path, extra: &str) -> PathBuf {
        std::fs::create_dir_all(dir).expect("dir");
        let path = dir.join("agent.toml");
        let text = format!(
            "collector = \"https://localhost:1\"\nstate_dir = \"state\"\n\
             [tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\
             [probes]\nsmart = {{ enabled = false }}\n{extra}\n"
        );
        std::fs::write(&path, text).expect("write agent.toml");
        path
    }

    /// A vitalsctl profile for a specialist of this fleet.
    pub fn specialist_profile(&self, name: &str, role: Role, collector: SocketAddr) -> Profile {
        let (cert, key) = self.issue(&Identity::specialist(name, role).expect("name"));
        self.profile(collector, cert, key)
    }

    /// A profile with any certificate files.
    pub fn profile(&self, collector: SocketAddr, cert: PathBuf, key: PathBuf) -> Profile {
        Profile {
            collector: Some(format!("https://{collector}")),
            server_name: Some("localhost".into()),
            ca: Some(self.paths().ca_cert()),
            cert: Some(cert),
            key: Some(key),
        }
    }

    /// A raw gRPC channel with the given client certificate (or none).
    pub async fn channel(
        &self,
        collector: SocketAddr,
        client: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Channel> {
        self.channel_from(collector, None, client).await
    }

    /// [`Fleet::channel`] from a given loopback source address (all of
    /// 127.0.0.0/8 is loopback): a peer at an address of its own.
    pub async fn channel_from(
        &self,
        collector: SocketAddr,
        from: Option<std::net::IpAddr>,
        client: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Channel> {
        let mut tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(std::fs::read(
                self.paths().ca_cert(),
            )?));
        if let Some((cert, key)) = client {
            tls = tls.identity(TlsIdentity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        Ok(Endpoint::from_shared(format!("https://{collector}"))?
            .local_address(from)
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?)
    }
}

impl Fleet {
    /// A TLS connector offering HTTP/2 with a fresh certificate for
    /// `identity` (or none), for tests that speak the bytes themselves.
    pub fn tls_connector(&self, identity: Option<&Identity>) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.paths().ca_cert()).expect("ca") {
            roots.add(c.expect("ca cert")).expect("add root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => {
                let (cert, key) = self.issue(identity);
                let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect();
                let key = PrivateKeyDer::from_pem_file(&key).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }

    /// A raw gRPC channel holding a fresh agent certificate for `id`, for
    /// tests that script the agent's side of the protocol by hand.
    pub async fn agent_channel(&self, collector: SocketAddr, id: &str) -> Channel {
        let (cert, key) = self.issue(&Identity::Endpoint(id.parse().expect("endpoint id")));
        self.channel(collector, Some((&cert, &key)))
            .await
            .expect("agent channel")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A collector serving in this process.
pub struct RunningCollector {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The web console's address, when the config has `[console]`.
    pub console_addr: Option<SocketAddr>,
    port: Port,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), vitals_collector::CollectorError>>,
}

impl RunningCollector {
    pub async fn start(config: CollectorConfig) -> Self {
        let port = Port::at(config.listen);
        Self::start_on(config, port).await
    }

    /// Starts on a held port: a fresh one, or the one an earlier
    /// collector's [`RunningCollector::stop`] handed back.
    pub async fn start_on(config: CollectorConfig, port: Port) -> Self {
        let metrics = TcpListener::bind(config.metrics.listen)
            .await
            .expect("bind metrics");
        let grpc = port.listen();
        let addr = port.addr();
        let metrics_addr = metrics.local_addr().expect("addr");
        let console = match &config.console {
            Some(c) => Some(TcpListener::bind(c.listen).await.expect("bind console")),
            None => None,
        };
        let console_addr = console.as_ref().map(|l| l.local_addr().expect("addr"));
        let collector = Collector::open(config).await.expect("collector opens");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(collector.serve(
            Listeners {
                grpc,
                metrics: Some(metrics),
                console,
            },
            async {
                let _ = stopped.await;
            },
        ));
        RunningCollector {
            addr,
            metrics_addr,
            console_addr,
            port,
            stop: Some(stop),
            task,
        }
    }

    /// Shuts down gracefully and waits for it; the port stays held until
    /// the returned [`Port`] is dropped, so a collector can start on it again.
    pub async fn stop(mut self) -> Port {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("collector stops within 20s")
            .expect("collector task");
        result.expect("collector ends cleanly");
        self.port
    }

    /// The Prometheus text from /metrics, fetched over plain HTTP/1.1,
    /// with the `replica` label a collector on PostgreSQL adds taken out
    /// (see [`without_replica_label`]), so a test's expected lines hold on
    /// either backend.
    pub async fn scrape(&self) -> String {
        without_replica_label(&self.scrape_raw().await)
    }

    /// The Prometheus text from /metrics as served.
    pub async fn scrape_raw(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }
}

/// A collector in a process of its own (the load generator's `collector`
/// command runs the same `Collector::open` and `serve` as `vitals-collector
/// run`), so a test can kill it with SIGKILL and start it again.
pub struct CollectorProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl CollectorProcess {
    /// Writes `collector.toml` for `fleet`: listening on `addr`, the
    /// fleet's data directory, fast agent intervals, every snapshot kept.
    pub fn write_config(fleet: &Fleet, addr: SocketAddr) -> PathBuf {
        let path = fleet.dir.join("collector.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\nlisten = \"{addr}\"\n\n[metrics]\nenabled = false\n\n\
                 [agents]\nsnapshot_interval = \"1s\"\nheartbeat_interval = \"1s\"\n\
                 idle_timeout = \"5s\"\n\n[storage]\nhistory_interval = \"0s\"\n{}",
                fleet.dir.display().to_string(),
                match &fleet.storage_url {
                    Some(url) => format!("url = {url:?}\n"),
                    None => String::new(),
                }
            ),
        )
        .expect("write collector.toml");
        path
    }

    /// Starts `exe collector --config CONFIG` and waits until it listens.
    pub fn spawn(exe: &Path, config: &Path, addr: SocketAddr) -> Self {
        let log = config.with_file_name("collector-process.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = std::process::Command::new(exe)
            .args(["collector", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn collector process");
        components::wait_listening(addr, Duration::from_secs(20)).expect("collector listens");
        CollectorProcess { child, addr }
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits (at most `within`) for a clean exit.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(components::sh("kill", &["-TERM", &pid]), "kill -TERM");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "collector still running {within:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A task that runs until told to stop (through the shutdown signal) and
/// ends with a result: an agent, or an agent's link.
pub struct StoppableTask<E> {
    stop: vitals_proto::shutdown::Trigger,
    task: JoinHandle<Result<(), E>>,
    what: &'static str,
}

impl<E: std::fmt::Debug + Send + 'static> StoppableTask<E> {
    pub fn spawn<F>(
        what: &'static str,
        run: impl FnOnce(vitals_proto::shutdown::Shutdown) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, rx) = vitals_proto::shutdown::channel();
        StoppableTask {
            stop,
            task: tokio::spawn(run(rx)),
            what,
        }
    }

    /// Ends it at once, as a kill would: no goodbye on its stream.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Asks it to stop and waits (at most 10 s) for a clean end.
    pub async fn stop(self) {
        self.stop.trigger();
        let what = self.what;
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap_or_else(|_| panic!("{what} stops within 10s"))
            .unwrap_or_else(|e| panic!("{what} task: {e}"))
            .unwrap_or_else(|e| panic!("{what} ends cleanly: {e:?}"));
    }
}

/// An agent running in this process.
pub struct RunningAgent(StoppableTask<vitals_agent::AgentError>);

impl RunningAgent {
    pub fn start(config: AgentConfig) -> Self {
        RunningAgent(StoppableTask::spawn("agent", |stop| {
            vitals_agent::run(config, stop)
        }))
    }

    /// Ends the agent at once, as a kill would: no goodbye on its stream.
    pub async fn kill(self) {
        self.0.kill().await
    }

    pub async fn stop(self) {
        self.0.stop().await
    }
}

/// Connects as a specialist and lists endpoints.
pub async fn list(
    profile: &Profile,
) -> Result<Vec<vitals_proto::domain::EndpointSummary>, CtlError> {
    Client::connect(profile).await?.list_endpoints(false).await
}

/// One endpoint in full, as a specialist sees it (`None` on any error, for
/// polling).
pub async fn detail(profile: &Profile, id: &str) -> Option<vitals_proto::domain::EndpointDetail> {
    Client::connect(profile).await.ok()?.endpoint(id).await.ok()
}

/// An endpoint's fault events, newest first (`None` on any error).
/// One ticket with its timeline, snapshot and knowledge, or `None` if it
/// cannot be read (yet).
pub async fn ticket_of(profile: &Profile, id: u64) -> Option<vitals_collector::ctl::TicketView> {
    Client::connect(profile).await.ok()?.ticket(id).await.ok()
}

pub async fn faults_of(
    profile: &Profile,
    id: &str,
) -> Option<Vec<vitals_proto::domain::FaultRecord>> {
    Client::connect(profile)
        .await
        .ok()?
        .faults(id, 50)
        .await
        .ok()
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn tcp_from(
    from: std::net::IpAddr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A validity window that ended yesterday.
pub fn expired_window() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
}

/// Role shorthand for tests.
pub use vitals_proto::identity::Role as SpecialistRole;
pub mod components;
pub mod console_client;
pub mod links;
pub mod loadgen;
pub mod port;
pub mod proxy;
pub mod scripted;

/// How long an end-to-end step may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Prometheus text with every sample's `replica="…"` label removed (and
/// label sets it leaves empty): one collector's series as a lone
/// collector names them.
pub fn without_replica_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(&drop_label(line, "replica"));
        out.push('\n');
    }
    out
}

fn drop_label(line: &str, label: &str) -> String {
    if line.starts_with('#') {
        return line.to_owned();
    }
    let Some(open) = line.find('{') else {
        return line.to_owned();
    };
    let Some(close) = line[open..].find('}').map(|i| open + i) else {
        return line.to_owned();
    };
    let prefix = format!("{label}=\"");
    let kept: Vec<&str> = line[open + 1..close]
        .split(',')
        .filter(|pair| !pair.is_empty() && !pair.starts_with(&prefix))
        .collect();
    if kept.is_empty() {
        format!("{}{}", &line[..open], &line[close + 1..])
    } else {
        format!(
            "{}{{{}}}{}",
            &line[..open],
            kept.join(","),
            &line[close + 1..]
        )
    }
}

/// A collector configuration whose policy is `policy_toml`.
pub fn with_policy(fleet: &Fleet, policy_toml: &str) -> vitals_collector::config::CollectorConfig {
    let path = fleet.dir.join("policy.toml");
    std::fs::write(&path, policy_toml).expect("write policy");
    let mut config = fleet.collector_config();
    config.policy = Some(path);
    config
}

/// Probe timings for test agents: the system probe every second (tests
/// wait on disks and CPU), SMART off (no drives here), the rest quick.
pub fn test_probe_timings() -> ProbeTimings {
    let every = |secs: u64| TimingOverride {
        interval: Some(Duration::from_secs(secs)),
        timeout: None,
        enabled: None,
    };
    ProbeTimings {
        system: every(1),
        sensors: every(5),
        smart: TimingOverride {
            enabled: Some(false),
            ..Default::default()
        },
        os: every(5),
        printers: every(1),
        network_printers: every(1),
        network: every(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_label_is_taken_out_and_nothing_else() {
        let text = "# HELP x y\n\
                    a_total{replica=\"east\"} 2\n\
                    b_total{kind=\"tls\",replica=\"east\"} 1\n\
                    c_bucket{replica=\"east\",le=\"0.5\"} 3\n\
                    d 4\n";
        assert_eq!(
            without_replica_label(text),
            "# HELP x y\na_total 2\nb_total{kind=\"tls\"} 1\nc_bucket{le=\"0.5\"} 3\nd 4\n"
        );
    }
}
