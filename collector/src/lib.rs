//! The Vitals collector.
//!
//! Layers run one way (nothing below imports what stands above it):
//!
//! ```text
//! gateway (the gRPC edge: agent sessions, the Specialist service),
//! console (the web console: the same Specialist service in a browser)
//!   -> ingest, service (specialist service layer), relay (diagnostics)
//!     -> enrollment (tokens, signing, renewal, revocation)
//!     -> sessions (live agent sessions), tickets, store, pki, policy, tls,
//!        revocation (what every handshake is checked against), metrics
//! ```
//!
//! `ctl` (vitalsctl's client) stands outside these layers: it speaks the
//! public gRPC API and uses none of them.
//!
//! [`Collector::open`] checks everything that can be wrong with the
//! configuration (certificates, database) before any port is bound;
//! [`Collector::serve`] then runs until the shutdown future completes.

pub mod backup;
pub mod cluster;
pub mod config;
pub mod console;
pub mod ctl;
pub mod enrollment;
pub mod gateway;
pub mod ingest;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod quickstart;
pub mod relay;
pub mod retention;
pub mod revocation;
pub mod service;
pub mod sessions;
pub mod store;
pub mod tickets;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};
use vitals_proto::wire::agent_gateway_server::AgentGatewayServer;
use vitals_proto::wire::enrollment_server::EnrollmentServer;
use vitals_proto::wire::specialist_server::SpecialistServer;

use crate::config::CollectorConfig;
use crate::gateway::agent::AgentGatewayApi;
use crate::gateway::specialist::SpecialistApi;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::service::SpecialistService;
use crate::store::Store;

/// How long shutdown waits for streams to drain before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 pings on connections that went quiet, so a dead peer is noticed.
/// A live agent is never quiet this long (it sends a heartbeat every 30 s
/// by default and pings on its own every 20 s), and the pinger's timer
/// wakes each connection once per interval whether or not it pings: with
/// 20,000 connections a short interval is a steady cost at rest.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows for the agents' edge. Agent messages are
/// small (a snapshot is about 2 KiB), so 64 KiB in flight per stream is
/// still dozens of messages; the default 1 MiB would let each of 20,000
/// agents park a megabyte in the collector whenever ingest pushes back.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Policy(#[from] vitals_proto::policy::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("cannot watch the policy file: {0}")]
    PolicyWatch(#[from] notify::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Email(#[from] tickets::email::MailerError),
    #[error(transparent)]
    Oidc(#[from] console::oidc::OidcError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Storage(String),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// Raises the soft open-files limit to the hard limit: each agent stream
/// holds a descriptor, and the usual soft default of 1024 would cap the
/// collector far below what it can serve. Returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the signals that start a
/// graceful shutdown.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The sockets a collector serves on.
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
    /// The web console, when `[console]` is configured.
    pub console: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of a configuration.
    pub async fn bind(config: &CollectorConfig) -> Result<Self, CollectorError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| CollectorError::Bind { addr, source })
        };
        let grpc =
            bind_backlog(config.listen, ACCEPT_BACKLOG).map_err(|source| CollectorError::Bind {
                addr: config.listen,
                source,
            })?;
        let metrics = if config.metrics.enabled {
            Some(bind(config.metrics.listen).await?)
        } else {
            None
        };
        let console = match &config.console {
            Some(c) => Some(bind(c.listen).await?),
            None => None,
        };
        Ok(Listeners {
            grpc,
            metrics,
            console,
        })
    }
}

/// Connections the kernel holds for the agents' listener before they are
/// accepted: a whole site reconnecting at once (a collector restart) must
/// not find the queue full and wait out a SYN retry. The kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux).
const ACCEPT_BACKLOG: u32 = 4096;

/// A listener with an accept queue of `backlog` (the runtime's own `bind`
/// asks for 1024).
fn bind_backlog(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A collector whose configuration, certificates and database are checked
/// and ready.
pub struct Collector {
    config: CollectorConfig,
    tls: Arc<tls::ServerTls>,
    /// Revocations in force, checked at every handshake.
    revoked: Arc<revocation::Revoked>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    policy: Arc<vitals_proto::policy::Policy>,
    /// The console's browser-facing TLS, when it has a certificate.
    console_tls: Option<Arc<rustls::ServerConfig>>,
    /// The console's single sign-on, when configured.
    oidc: Option<Arc<console::oidc::Oidc>>,
}

/// What a collector loads from files before it opens its store.
struct Parts {
    policy: vitals_proto::policy::Policy,
    tls: Arc<tls::ServerTls>,
    console_tls: Option<Arc<rustls::ServerConfig>>,
    oidc: Option<Arc<console::oidc::Oidc>>,
    revoked: Arc<revocation::Revoked>,
}

impl Parts {
    fn load(config: &CollectorConfig) -> Result<Parts, CollectorError> {
        if let Some(limit) = raise_open_files_limit() {
            tracing::debug!(limit, "open files limit");
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| CollectorError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let policy = match &config.policy {
            Some(path) => vitals_proto::policy::Policy::load(path)?,
            None => vitals_proto::policy::Policy::default_policy(),
        };
        let revoked = Arc::new(revocation::Revoked::default());
        let tls = Arc::new(tls::ServerTls::new(config.server_files(), revoked.clone())?);
        let console_tls = match config.console.as_ref().map(|c| (&c.cert, &c.key)) {
            Some((Some(cert), Some(key))) => Some(tls::browser_config(cert, key)?),
            _ => None,
        };
        let oidc = match config.console.as_ref().and_then(|c| c.oidc.as_ref()) {
            Some(o) => Some(Arc::new(console::oidc::Oidc::new(o)?)),
            None => None,
        };
        Ok(Parts {
            policy,
            tls,
            console_tls,
            oidc,
            revoked,
        })
    }
}

impl Collector {
    /// Checks everything [`Collector::open`] loads from files (policy,
    /// certificates, console keys) without opening the store.
    pub fn check_files(config: &CollectorConfig) -> Result<(), CollectorError> {
        Parts::load(config).map(drop)
    }
}

impl Collector {
    /// Loads certificates, opens the database and applies migrations. No
    /// port is bound yet.
    pub async fn open(config: CollectorConfig) -> Result<Self, CollectorError> {
        let Parts {
            policy,
            tls,
            console_tls,
            oidc,
            revoked,
        } = Parts::load(&config)?;
        let store = store::open_with(
            &config.storage_url(),
            &config.store_options().map_err(CollectorError::Storage)?,
        )
        .await?;
        // No session survives a restart.
        store.mark_all_offline(vitals_proto::now_ms()).await?;
        // Replicas (PostgreSQL, or a name given) label every series with
        // their name; a lone collector's series stay as they were.
        let replicated = config.replica.is_some()
            || matches!(
                store::Backend::of(&config.storage_url()),
                Ok(store::Backend::Postgres(_))
            );
        let metrics = Arc::new(if replicated {
            Metrics::for_replica(&config.replica_name())
        } else {
            Metrics::new()
        });
        revoked.load(&store.revocations().await?);
        Ok(Collector {
            config,
            tls,
            revoked,
            store,
            metrics,
            policy: Arc::new(policy),
            console_tls,
            oidc,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The web console's accounts in this collector's database.
    pub fn accounts(&self) -> console::accounts::Accounts {
        console::accounts::Accounts::new(self.store.clone())
    }

    /// Serves until `shutdown` completes, then stops accepting, ends agent
    /// sessions (their in-flight commits still acknowledged), commits what
    /// is queued and returns.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CollectorError> {
        let Collector {
            config,
            tls,
            revoked,
            store,
            metrics,
            policy,
            console_tls,
            oidc,
        } = self;
        let (trigger, stop) = vitals_proto::shutdown::channel();
        let stopped = || {
            let mut stop = stop.clone();
            async move { stop.requested().await }
        };

        // Ingest notifies this after each commit holding fault events.
        let faults_committed = Arc::new(tokio::sync::Notify::new());
        // The one registry of live agent sessions: ingest attaches and
        // detaches them, the relay finds them.
        let sessions = Arc::new(sessions::Sessions::default());
        let (ingest, batcher) = Ingest::start(
            store.clone(),
            sessions.clone(),
            metrics.clone(),
            faults_committed.clone(),
        );
        if let Some(listener) = listeners.metrics {
            info!(addr = %listener.local_addr().map_err(|source| CollectorError::Bind { addr: config.metrics.listen, source })?, "metrics on /metrics");
            let metrics = metrics.clone();
            let stopped = stopped();
            tokio::spawn(async move {
                if let Err(error) = metrics::serve(listener, metrics, stopped).await {
                    warn!(%error, "metrics server stopped");
                }
            });
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AgentGatewayServer<AgentGatewayApi>>()
            .await;
        health
            .set_serving::<SpecialistServer<SpecialistApi>>()
            .await;
        // Server reflection in both protocol versions: v1, and v1alpha for
        // the clients that speak only that (Python's grpcio-reflection,
        // older grpcurl, Postman, Evans).
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(vitals_proto::wire::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let reflection = reflection().build_v1()?;

        let addr = listeners
            .grpc
            .local_addr()
            .map_err(|source| CollectorError::Bind {
                addr: config.listen,
                source,
            })?;
        let refusals = Arc::new(gateway::refusals::Refusals::default());
        let incoming = tls::accept_loop(
            listeners.grpc,
            tls.config.clone(),
            metrics.clone(),
            stop.clone(),
            (&config.limits).into(),
            refusals.clone(),
        );
        info!(version = %policy.version, checks = policy.checks.len(), "fault policy");
        // The watcher lives as long as the server; without a policy file the
        // shipped default never changes.
        let (policy, _watcher) = match &config.policy {
            Some(path) => {
                let (rx, w) = policy::watch_file(path.clone(), (*policy).clone(), metrics.clone())?;
                (rx, Some(w))
            }
            None => (watch::channel(policy).1, None),
        };
        let (desk, desk_queue) = tickets::desk();
        let kb = tickets::kb::KnowledgeBase::new(Some(config.data_dir.join("kb")));
        let mailer = match &config.email {
            Some(e) => Some(tickets::email::Mailer::new(e)?),
            None => None,
        };
        let leading = store.campaign(stop.clone());
        metrics.watch_leadership(leading.clone(), stop.clone());
        // The other replicas, over the bus: sessions, diagnostics, desk
        // actions for the leader.
        let cluster = match &config.cluster {
            Some(c) => {
                let cluster = cluster::Cluster::connect(c, &config.replica_name()).await?;
                tickets::forward::serve(
                    cluster.clone(),
                    desk.clone(),
                    leading.clone(),
                    stop.clone(),
                );
                tickets::forward::watch_changes(&cluster, desk.clone(), stop.clone());
                Some(cluster)
            }
            None => None,
        };
        // The ticket engine wakes for fault commits here and, with replicas,
        // for those of the others, over the bus.
        let engine_wake = match &cluster {
            Some(c) => c.share_fault_wakes(faults_committed, stop.clone()),
            None => faults_committed,
        };
        let outbound = tickets::Outbound {
            webhooks: config.webhooks.clone(),
            email: config.email.clone(),
            wake: Arc::new(tokio::sync::Notify::new()),
            bus: cluster.clone(),
        };
        tokio::spawn(tickets::notify::deliver(
            store.clone(),
            tickets::notify::Targets {
                webhooks: outbound.webhooks.clone(),
                mailer,
                kb: kb.clone(),
            },
            metrics.clone(),
            outbound.wake.clone(),
            stop.clone(),
            leading.clone(),
        ));
        tokio::spawn(
            retention::Retention {
                store: store.clone(),
                desk: desk.clone(),
                config: config.retention.clone(),
                archive_dir: config.audit_archive_dir(),
                metrics: metrics.clone(),
                replica: config.replica_name(),
            }
            .run(leading.clone(), stop.clone()),
        );
        tokio::spawn(tickets::supervise(
            store.clone(),
            policy.clone(),
            engine_wake,
            desk_queue,
            outbound,
            stop.clone(),
            tickets::Lead {
                leading,
                to_leader: cluster.clone(),
            },
        ));
        let relay = Arc::new(relay::Relay::new(sessions, cluster));
        let enrollment = Arc::new(
            enrollment::Enrollment::open(
                store.clone(),
                &pki::PkiPaths::new(&config.data_dir),
                tls.files.trust_files(),
                config.certificates.clone(),
                relay.clone(),
                revoked,
            )
            .await?,
        );
        enrollment.clone().refresh(stop.clone());
        {
            let enrollment = enrollment.clone();
            tls.clone().watch(stop.clone(), move || enrollment.reload());
        }
        enrollment.audit_refused_handshakes(stop.clone());
        enrollment::watch_expiry(
            [tls.files.cert.clone(), tls.files.ca.clone()].into(),
            desk.clone(),
            stop.clone(),
        );
        let service = SpecialistService::new(
            store.clone(),
            desk.clone(),
            kb,
            relay.clone(),
            policy.clone(),
            enrollment.clone(),
        )
        .limit_diagnostics(config.limits.diagnostics_per_specialist);
        let gateway = AgentGatewayApi::new(
            ingest.clone(),
            config.agents.clone(),
            policy,
            stop.clone(),
            gateway::agent::AgentWiring {
                store: store.clone(),
                relay,
                enrollment: enrollment.clone(),
                desk,
                limits: config.limits.clone(),
                refusals: refusals.clone(),
            },
        );
        // Clients without a fleet certificate reach this server only:
        // enrollment, and health checking (a container's probe, a load
        // balancer's check).
        let enroll_server = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(15))
            .http2_max_pending_accept_reset_streams(Some(20))
            .max_concurrent_streams(Some(16))
            .http2_max_header_list_size(16 * 1024)
            .add_service(health_service.clone())
            .add_service(
                EnrollmentServer::new(gateway::enrollment::EnrollmentApi::new(enrollment))
                    .max_decoding_message_size(gateway::enrollment::MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming.anonymous), stopped());
        tokio::spawn(async move {
            if let Err(error) = enroll_server.await {
                warn!(%error, "enrollment server stopped");
            }
        });
        if let (Some(listener), Some(c)) = (listeners.console, &config.console) {
            let console = Arc::new(console::Console::new(
                service.clone(),
                console::accounts::Accounts::new(store.clone()),
                c,
                oidc,
                stop.clone(),
            ));
            let scheme = if console_tls.is_some() {
                "https"
            } else {
                "http"
            };
            match listener.local_addr() {
                Ok(a) => info!(url = %format!("{scheme}://{a}/"), "web console"),
                Err(error) => warn!(%error, "web console address"),
            }
            let stopped = stopped();
            tokio::spawn(async move {
                if let Err(error) = console::serve(console, listener, console_tls, stopped).await {
                    warn!(%error, "web console stopped");
                }
            });
        }
        let specialist =
            SpecialistApi::new(service, stop.clone(), refusals.clone(), metrics.clone());
        drop(ingest);
        let server = tonic::transport::Server::builder()
            // HTTP/2 from a hostile client: a connection opening streams and
            // resetting them at once (rapid reset) is closed after 20; no
            // connection holds more than 128 streams (an agent uses one, a
            // specialist a few) or sends more than 16 KiB of headers.
            .http2_max_pending_accept_reset_streams(Some(20))
            .max_concurrent_streams(Some(128))
            .http2_max_header_list_size(16 * 1024)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(
                AgentGatewayServer::new(gateway)
                    .max_decoding_message_size(gateway::agent::MAX_MESSAGE),
            )
            .add_service(SpecialistServer::new(specialist))
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming.verified), stopped());
        let mut server = tokio::spawn(server);
        info!(%addr, "collector serving (mTLS, TLS 1.3)");

        let outcome = tokio::select! {
            r = &mut server => r,
            () = shutdown => {
                info!("shutting down: draining agent sessions");
                trigger.trigger();
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!(grace = ?SHUTDOWN_GRACE, "streams did not drain in time; closing them");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        trigger.trigger();
        // The batcher ends once every session has let go of ingest; it
        // commits what is queued first.
        if tokio::time::timeout(SHUTDOWN_GRACE, batcher).await.is_err() {
            warn!("ingest did not finish in time");
        }
        info!("collector stopped");
        match outcome {
            Ok(r) => r.map_err(CollectorError::from),
            Err(join) => {
                warn!(error = %join, "server task failed");
                Ok(())
            }
        }
    }
}
