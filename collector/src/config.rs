//! `collector.toml`: typed, strict, validated before any port is bound.
//!
//! Relative paths are resolved against the folder holding the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vitals_proto::config_file::{self, ConfigFileError};

use crate::pki::PkiPaths;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Folder for the database and, unless `[tls]` says otherwise, the PKI.
    pub data_dir: PathBuf,
    /// Where agents and specialists connect (gRPC over mTLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The fault policy sent to agents; the shipped default when absent.
    pub policy: Option<PathBuf>,
    /// This collector's name among replicas sharing one PostgreSQL
    /// database: the `replica` label of its metrics (set when the storage
    /// is PostgreSQL or this is given) and the holder of the sessions it
    /// serves; the host name when absent.
    pub replica: Option<String>,
    #[serde(default)]
    pub tls: TlsFiles,
    #[serde(default)]
    pub storage: StorageConfig,
    /// Routing between replicas over NATS; a lone collector has none.
    pub cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub agents: AgentSettings,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Ticket events posted to help-desk systems.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    /// Ticket e-mail over SMTP.
    pub email: Option<Email>,
    /// The specialists' web console; not served when absent.
    pub console: Option<ConsoleConfig>,
    /// Lifetimes of the certificates the collector signs, enrollment.
    #[serde(default)]
    pub certificates: CertificateSettings,
    /// `[log]`: text (the default) or JSON lines on standard error.
    #[serde(default)]
    pub log: vitals_proto::logging::LogSettings,
    /// How long what accumulates is kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// What one peer may take: messages a second per agent, handshakes and
    /// connections per address, diagnostics in flight per specialist.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[limits]`: what one peer may take before it is refused, so a broken or
/// hostile agent, address or specialist cannot crowd out the others. Every
/// refusal is counted in the `refused` metric and logged with the peer's
/// identity and address, at most once a minute per peer and kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages a second an agent session may send, sustained. An agent
    /// sends a snapshot a minute, heartbeats and the odd fault event.
    pub agent_messages_per_sec: f64,
    /// Messages it may send at once above that rate (a fault storm on one
    /// desk, a diagnostic's progress lines); the backlog an agent declares
    /// in its hello (at most 25,000 messages, its outbox's bound) comes on
    /// top. Past it the session is closed with the reason.
    pub agent_message_burst: u32,
    /// TLS handshakes in flight from one address; more wait in no queue:
    /// the connection is closed.
    pub handshakes_per_source: usize,
    /// Connections held open from one address. A site behind one NAT
    /// address needs this above its number of desks.
    pub connections_per_source: usize,
    /// Diagnostics one specialist may have running at once.
    pub diagnostics_per_specialist: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            agent_messages_per_sec: 20.0,
            agent_message_burst: 200,
            handshakes_per_source: 64,
            connections_per_source: 2048,
            diagnostics_per_specialist: 32,
        }
    }
}

/// `[retention]`: how long the records that would otherwise grow for ever
/// are kept. Each is a duration (`"90d"`) or `"forever"`. The leading
/// replica removes what is older every `interval`, a few thousand rows at
/// a time so agents' commits are never held up for long.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often the old records are looked for.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Fault events as agents reported them, once the ticket engine has
    /// applied them.
    #[serde(with = "keep")]
    pub fault_events: Option<Duration>,
    /// Tickets resolved or closed this long ago (no change since), with
    /// their timelines and the snapshots kept as their evidence; and
    /// resolved incidents left with no ticket.
    #[serde(with = "keep")]
    pub closed_tickets: Option<Duration>,
    /// Webhook posts and mails delivered, or given up on, this long ago.
    #[serde(with = "keep")]
    pub notifications: Option<Duration>,
    /// Certificates the collector signed that expired this long ago
    /// (revoked ones too: an expired certificate is refused anyway).
    #[serde(with = "keep")]
    pub certificates: Option<Duration>,
    /// Audit entries older than this are written to a checksummed archive
    /// file (JSON lines) in `audit_archive_dir`, then leave the database;
    /// each archive is itself an audit entry.
    #[serde(with = "keep")]
    pub audit: Option<Duration>,
    /// Where audit archives go; `<data_dir>/audit-archive` when absent.
    pub audit_archive_dir: Option<PathBuf>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        RetentionConfig {
            interval: Duration::from_secs(3600),
            fault_events: Some(Duration::from_secs(90 * DAY)),
            closed_tickets: Some(Duration::from_secs(400 * DAY)),
            notifications: Some(Duration::from_secs(30 * DAY)),
            certificates: Some(Duration::from_secs(90 * DAY)),
            audit: Some(Duration::from_secs(400 * DAY)),
            audit_archive_dir: None,
        }
    }
}

/// A retention period: a duration, or `"forever"` (`None`).
mod keep {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "forever" {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e} in \"{text}\" (a duration such as \"90d\", or \"forever\")"
            ))
        })
    }
}

/// `[cluster]`: the NATS server replicas route live traffic through (a
/// desk's session moving, diagnostics to the replica holding its stream,
/// desk actions to the leader).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT` (or `tls://…`); several, comma-separated, for a
    /// NATS cluster.
    pub nats_url: String,
    /// The CA certificate (PEM) that signed the NATS server's, which makes
    /// the link TLS.
    pub nats_ca_file: Option<PathBuf>,
    /// A file holding `user:password` for the NATS server, read at start.
    pub nats_credentials_file: Option<PathBuf>,
}

/// `[certificates]`: what enrollment and renewal sign.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// An enrolled or renewed desk's certificate lasts this long; the agent
    /// renews it over its stream at two thirds of it.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub agent_lifetime: Duration,
    /// The same for a specialist renewing with `vitalsctl`.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub specialist_lifetime: Duration,
    /// A desk whose certificate expired while it was away may still renew
    /// for this long after expiry, by proving it holds the old key.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub renewal_grace: Duration,
    /// Enrollment calls per second from one source address, and the burst
    /// allowed above it.
    #[serde(default = "default_enroll_rate")]
    pub enroll_rate: f64,
    #[serde(default = "default_enroll_burst")]
    pub enroll_burst: u32,
}

fn default_cert_lifetime() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_grace() -> Duration {
    Duration::from_secs(90 * 86_400)
}

fn default_enroll_rate() -> f64 {
    5.0
}

fn default_enroll_burst() -> u32 {
    50
}

impl Default for CertificateSettings {
    fn default() -> Self {
        CertificateSettings {
            agent_lifetime: default_cert_lifetime(),
            specialist_lifetime: default_cert_lifetime(),
            renewal_grace: default_grace(),
            enroll_rate: default_enroll_rate(),
            enroll_burst: default_enroll_burst(),
        }
    }
}

/// `[console]`: where the web console listens, and how browsers reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// The browser-facing certificate and key (PEM; a city's own CA for
    /// browsers, not the fleet CA). Without them the console speaks plain
    /// HTTP, which is allowed only on a loopback address.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A session ends after this long without a request.
    #[serde(default = "default_console_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Failed logins per account, and per source address, before logins
    /// pause for `login_lockout`.
    #[serde(default = "default_login_attempts")]
    pub login_attempts: u32,
    #[serde(default = "default_login_lockout", with = "humantime_serde")]
    pub login_lockout: Duration,
    /// Every local account must have a second factor (TOTP): one without
    /// is sent to enroll right after its password.
    #[serde(default)]
    pub require_totp: bool,
    /// Single sign-on with the city's OpenID Connect provider.
    pub oidc: Option<OidcConfig>,
}

/// `[console.oidc]`: the city's sign-in service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; discovery is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, read at start; without it the console is a
    /// public client (PKCE alone).
    pub client_secret_file: Option<PathBuf>,
    /// This console's `/oidc/callback` as the provider has it registered.
    pub redirect_url: String,
    /// The sign-in button's words.
    #[serde(default = "default_oidc_label")]
    pub label: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the person (the subject when absent).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim (a string or a list, such as groups) mapped to a role.
    pub role_claim: String,
    /// Claim values and the role each gives; the highest wins, none: no entry.
    pub roles: std::collections::BTreeMap<String, vitals_proto::identity::Role>,
    /// The claim listing the sites a person may see (all when absent).
    pub site_claim: Option<String>,
    /// When set, only these local accounts may sign in with a password
    /// (the break-glass admins); everyone else uses single sign-on.
    #[serde(default)]
    pub break_glass: Vec<String>,
    /// An extra root certificate for a provider behind the city's own CA.
    pub ca: Option<PathBuf>,
}

fn default_oidc_label() -> String {
    "Sign in with the city's account".into()
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

fn default_name_claim() -> String {
    "preferred_username".into()
}

impl ConsoleConfig {
    /// Whether browsers reach it over TLS.
    pub fn tls(&self) -> bool {
        self.cert.is_some()
    }
}

fn default_console_idle() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_login_attempts() -> u32 {
    5
}

fn default_login_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `[email]`: ticket events of chosen priorities mailed to the help desk,
/// through the same durable outbox as webhooks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// The SMTP relay's host name (checked against its certificate).
    pub server: String,
    /// Default: 465 with `tls = "tls"`, 587 with "starttls", 25 with "none".
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: EmailTls,
    pub username: Option<String>,
    /// A file holding the password (first line), kept out of this file.
    pub password_file: Option<PathBuf>,
    /// Extra trusted root for a relay with a city-internal certificate (PEM).
    pub ca: Option<PathBuf>,
    /// The sender, such as "Vitals <vitals@city.example>".
    pub from: String,
    pub to: Vec<String>,
    /// Ticket priorities to mail; default p1 and p2.
    #[serde(default = "email_priorities")]
    pub priorities: Vec<vitals_proto::ticket_rules::Priority>,
    /// Timeline kinds to mail; default opened, reopened and escalated.
    #[serde(default = "email_events")]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, which must succeed.
    #[default]
    Starttls,
    /// No encryption: only for a relay on the same host or a trusted wire.
    None,
}

fn email_priorities() -> Vec<vitals_proto::ticket_rules::Priority> {
    use vitals_proto::ticket_rules::Priority;
    vec![Priority::P1, Priority::P2]
}

fn email_events() -> Vec<String> {
    ["opened", "reopened", "escalated"]
        .map(str::to_owned)
        .to_vec()
}

impl Email {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            EmailTls::Tls => 465,
            EmailTls::Starttls => 587,
            EmailTls::None => 25,
        })
    }
}

/// `[[webhook]]`: ticket events as signed JSON POSTs, kept in a durable
/// outbox and retried with backoff until the receiver answers 2xx.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A short name, used in logs and the outbox.
    pub name: String,
    /// `https://…` (or `http://` on a trusted network).
    pub url: String,
    /// Key for the `X-Vitals-Signature` HMAC-SHA256 header.
    pub secret: String,
    /// Timeline kinds to send (opened, reopened, auto_resolved, escalated,
    /// incident_opened…); all when empty.
    #[serde(default)]
    pub events: Vec<String>,
}

/// Certificate files; each defaults to the data directory's `pki/` folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The fleet CA every client certificate must chain to.
    pub ca: Option<PathBuf>,
    /// The collector's server certificate chain.
    pub cert: Option<PathBuf>,
    /// The collector's private key.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` (default `<data_dir>/vitals.db`) or
    /// `postgres://USER@HOST:PORT/DATABASE[?sslmode=require]`.
    pub url: Option<String>,
    /// A file holding the database password (PostgreSQL), read at start;
    /// `VITALS_STORAGE_PASSWORD` in the environment also works.
    pub password_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the database server's, for
    /// `sslmode=require`; the system's trusted CAs without it.
    pub ca_file: Option<PathBuf>,
    /// Connections to the database server (PostgreSQL).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// How long snapshot history is kept on PostgreSQL, where it is
    /// dropped a partition at a time; default: `history_per_endpoint`
    /// snapshots `history_interval` apart, at least a day.
    #[serde(default, with = "humantime_serde")]
    pub history_retention: Option<Duration>,
    /// Snapshots kept per endpoint; older ones are pruned.
    #[serde(default = "default_history")]
    pub history_per_endpoint: u32,
    /// Downsampling: a snapshot enters the history when taken at least this
    /// long after the newest one there. The latest snapshot is always kept.
    /// "0s" keeps every snapshot.
    #[serde(default = "default_history_interval", with = "humantime_serde")]
    pub history_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            password_file: None,
            ca_file: None,
            pool_size: default_pool_size(),
            history_retention: None,
            history_per_endpoint: default_history(),
            history_interval: default_history_interval(),
        }
    }
}

/// What the collector tells agents in its welcome, and how it watches them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// How often agents sample and send a snapshot.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// How often an otherwise idle agent sends a heartbeat.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A session with no message for this long is closed and the endpoint
    /// marked offline.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            snapshot_interval: default_snapshot_interval(),
            heartbeat_interval: default_heartbeat(),
            idle_timeout: default_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus `/metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Plain HTTP; keep it on loopback unless a scraper needs it elsewhere.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_pool_size() -> u32 {
    16
}
fn default_history() -> u32 {
    1440
}
fn default_history_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_snapshot_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}
fn default_idle() -> Duration {
    Duration::from_secs(90)
}
fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl CollectorConfig {
    /// A configuration with every default, for a data directory.
    pub fn with_data_dir(data_dir: &Path) -> Self {
        CollectorConfig {
            data_dir: data_dir.to_path_buf(),
            listen: default_listen(),
            policy: None,
            replica: None,
            tls: TlsFiles::default(),
            storage: StorageConfig::default(),
            cluster: None,
            agents: AgentSettings::default(),
            metrics: MetricsConfig::default(),
            webhooks: Vec::new(),
            email: None,
            console: None,
            certificates: CertificateSettings::default(),
            log: Default::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
        }
    }

    /// Loads, resolves relative paths against the file's folder, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: CollectorConfig = config_file::load(path)?;
        config.data_dir = config_file::resolve(path, &config.data_dir);
        if let Some(p) = &mut config.policy {
            *p = config_file::resolve(path, p);
        }
        for p in [
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.storage.password_file,
            &mut config.storage.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = config_file::resolve(path, p);
        }
        if let Some(p) = &mut config.retention.audit_archive_dir {
            *p = config_file::resolve(path, p);
        }
        if let Some(c) = &mut config.cluster {
            for p in [&mut c.nats_ca_file, &mut c.nats_credentials_file]
                .into_iter()
                .flatten()
            {
                *p = config_file::resolve(path, p);
            }
        }
        if let Some(e) = &mut config.email {
            for p in [&mut e.password_file, &mut e.ca].into_iter().flatten() {
                *p = config_file::resolve(path, p);
            }
        }
        if let Some(c) = &mut config.console {
            for p in [&mut c.cert, &mut c.key].into_iter().flatten() {
                *p = config_file::resolve(path, p);
            }
            if let Some(o) = &mut c.oidc {
                for p in [&mut o.client_secret_file, &mut o.ca].into_iter().flatten() {
                    *p = config_file::resolve(path, p);
                }
            }
        }
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let l = &self.limits;
        if !(l.agent_messages_per_sec.is_finite() && l.agent_messages_per_sec > 0.0) {
            return Err(invalid(
                "limits.agent_messages_per_sec must be a number above 0".into(),
            ));
        }
        for (name, v) in [
            ("agent_message_burst", l.agent_message_burst as usize),
            ("handshakes_per_source", l.handshakes_per_source),
            ("connections_per_source", l.connections_per_source),
            ("diagnostics_per_specialist", l.diagnostics_per_specialist),
        ] {
            if v == 0 {
                return Err(invalid(format!("limits.{name} must be at least 1")));
            }
        }
        let a = &self.agents;
        if a.snapshot_interval < Duration::from_secs(1) {
            return Err(invalid(
                "agents.snapshot_interval must be at least 1s".into(),
            ));
        }
        if a.heartbeat_interval < Duration::from_secs(1) {
            return Err(invalid(
                "agents.heartbeat_interval must be at least 1s".into(),
            ));
        }
        if a.idle_timeout <= a.heartbeat_interval {
            return Err(invalid(format!(
                "agents.idle_timeout ({}) must be longer than agents.heartbeat_interval ({})",
                humantime::format_duration(a.idle_timeout),
                humantime::format_duration(a.heartbeat_interval)
            )));
        }
        let r = &self.retention;
        if r.interval < Duration::from_secs(1) {
            return Err(invalid("retention.interval must be at least 1s".into()));
        }
        for (name, keep) in [
            ("fault_events", r.fault_events),
            ("closed_tickets", r.closed_tickets),
            ("notifications", r.notifications),
            ("certificates", r.certificates),
            ("audit", r.audit),
        ] {
            if keep.is_some_and(|k| k < Duration::from_secs(60)) {
                return Err(invalid(format!(
                    "retention.{name} must be at least 1m (or \"forever\")"
                )));
            }
        }
        if let Some(k) = r.certificates
            && k < self.certificates.renewal_grace
        {
            return Err(invalid(format!(
                "retention.certificates ({}) must be at least certificates.renewal_grace ({}): \
                 an expired certificate is renewed within that grace",
                humantime::format_duration(k),
                humantime::format_duration(self.certificates.renewal_grace)
            )));
        }
        let certs = &self.certificates;
        for (name, lifetime) in [
            ("agent_lifetime", certs.agent_lifetime),
            ("specialist_lifetime", certs.specialist_lifetime),
        ] {
            if lifetime < Duration::from_secs(3) {
                return Err(invalid(format!("certificates.{name} must be at least 3s")));
            }
        }
        if certs.enroll_rate.is_nan() || certs.enroll_rate <= 0.0 || certs.enroll_burst == 0 {
            return Err(invalid(
                "certificates.enroll_rate and enroll_burst must be above 0".into(),
            ));
        }
        if let Some(c) = &self.console {
            if c.cert.is_some() != c.key.is_some() {
                return Err(invalid("console: cert and key go together".into()));
            }
            if !c.tls() && !c.listen.ip().is_loopback() {
                return Err(invalid(format!(
                    "console: listen = \"{}\" is not a loopback address, so the console needs \
                     cert and key (browsers would send passwords in the clear)",
                    c.listen
                )));
            }
            if c.idle_timeout < Duration::from_secs(60) || c.login_attempts == 0 {
                return Err(invalid(
                    "console: idle_timeout is at least 1m and login_attempts at least 1".into(),
                ));
            }
            if let Some(o) = &c.oidc {
                if o.roles.is_empty() {
                    return Err(invalid(
                        "console.oidc: roles maps no claim value to a role, so nobody could sign in"
                            .into(),
                    ));
                }
                if !o.scopes.iter().any(|s| s == "openid") {
                    return Err(invalid(
                        "console.oidc: scopes must include \"openid\"".into(),
                    ));
                }
            }
        }
        if let Some(e) = &self.email {
            if e.server.trim().is_empty() {
                return Err(invalid("email.server must be set".into()));
            }
            for address in std::iter::once(&e.from).chain(&e.to) {
                if address.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(invalid(format!(
                        "email: \"{address}\" is not a mail address"
                    )));
                }
            }
            if e.to.is_empty() {
                return Err(invalid("email.to must name at least one recipient".into()));
            }
            if e.username.is_some() != e.password_file.is_some() {
                return Err(invalid(
                    "email: username and password_file go together".into(),
                ));
            }
            for ev in &e.events {
                if ev.parse::<vitals_proto::tickets::Kind>().is_err() {
                    return Err(invalid(format!("email: unknown event \"{ev}\"")));
                }
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if w.name == crate::tickets::email::TARGET {
                return Err(invalid(format!(
                    "webhook name \"{}\" is reserved for [email]",
                    w.name
                )));
            }
            if w.name.trim().is_empty() || self.webhooks[..i].iter().any(|o| o.name == w.name) {
                return Err(invalid(format!(
                    "webhook #{}: name must be set and unique",
                    i + 1
                )));
            }
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(invalid(format!(
                    "webhook \"{}\": url \"{}\" must start with https:// or http://",
                    w.name, w.url
                )));
            }
            if w.secret.len() < 16 {
                return Err(invalid(format!(
                    "webhook \"{}\": secret must be at least 16 characters",
                    w.name
                )));
            }
            for e in &w.events {
                if e.parse::<vitals_proto::tickets::Kind>().is_err() {
                    return Err(invalid(format!(
                        "webhook \"{}\": unknown event \"{e}\"",
                        w.name
                    )));
                }
            }
        }
        if self.storage.history_per_endpoint == 0 {
            return Err(invalid(
                "storage.history_per_endpoint must be at least 1".into(),
            ));
        }
        if let Some(url) = &self.storage.url {
            crate::store::Backend::of(url).map_err(|e| invalid(format!("storage.url: {e}")))?;
        }
        if self.storage.pool_size == 0 {
            return Err(invalid("storage.pool_size must be at least 1".into()));
        }
        if let Some(c) = &self.cluster {
            if !matches!(
                crate::store::Backend::of(&self.storage_url()),
                Ok(crate::store::Backend::Postgres(_))
            ) {
                return Err(invalid(
                    "cluster: replicas share a PostgreSQL database, so [cluster] needs \
                     storage.url = \"postgres://…\""
                        .into(),
                ));
            }
            if let Err(e) = crate::cluster::servers(&c.nats_url) {
                return Err(invalid(format!("cluster.nats_url: {e}")));
            }
        }
        Ok(())
    }

    pub fn ca_path(&self) -> PathBuf {
        self.tls
            .ca
            .clone()
            .unwrap_or_else(|| PkiPaths::new(&self.data_dir).ca_cert())
    }
    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| PkiPaths::new(&self.data_dir).server_cert())
    }
    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| PkiPaths::new(&self.data_dir).server_key())
    }
    /// The gRPC port's TLS files.
    pub fn server_files(&self) -> crate::tls::ServerFiles {
        crate::tls::ServerFiles {
            ca: self.ca_path(),
            ca_next: Some(PkiPaths::new(&self.data_dir).ca_next_cert()),
            cert: self.cert_path(),
            key: self.key_path(),
        }
    }

    /// How the store is opened: history, and the database server's
    /// password and CA. The password comes from `storage.password_file`,
    /// else from `VITALS_STORAGE_PASSWORD`.
    pub fn store_options(&self) -> Result<crate::store::StoreOptions, String> {
        let mut opts = crate::store::StoreOptions::new(
            self.storage.history_per_endpoint,
            self.storage.history_interval,
        );
        opts.retention = self.storage.history_retention;
        opts.ca_file = self.storage.ca_file.clone();
        opts.pool_size = self.storage.pool_size;
        opts.replica = self.replica_name();
        opts.password = match &self.storage.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("storage.password_file {}: {e}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => std::env::var("VITALS_STORAGE_PASSWORD").ok(),
        };
        Ok(opts)
    }

    /// This collector's name among replicas: `replica`, else the host name.
    /// Where the audit archives are written.
    pub fn audit_archive_dir(&self) -> PathBuf {
        self.retention
            .audit_archive_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-archive"))
    }

    pub fn replica_name(&self) -> String {
        self.replica
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    pub fn storage_url(&self) -> String {
        self.storage
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("vitals.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vitals-ccfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn minimal_file_gets_defaults_and_resolved_paths() {
        let path = write("min", "data_dir = \"data\"\n");
        let c = CollectorConfig::load(&path).unwrap();
        assert_eq!(c.data_dir, path.parent().unwrap().join("data"));
        assert_eq!(c.listen.port(), 7443);
        assert!(c.metrics.listen.ip().is_loopback());
        assert_eq!(c.ca_path(), c.data_dir.join("pki/ca.pem"));
        assert_eq!(c.limits, LimitsConfig::default());
    }

    #[test]
    fn the_shipped_example_loads_with_the_defaults_it_documents() {
        let path = write("deploy", include_str!("../../deploy/collector.toml"));
        let c = CollectorConfig::load(&path).expect("deploy/collector.toml loads");
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.retention, RetentionConfig::default());
    }

    #[test]
    fn the_policy_path_is_read_beside_the_file() {
        let path = write("pol", "data_dir = \".\"\npolicy = \"city-policy.toml\"\n");
        let c = CollectorConfig::load(&path).unwrap();
        assert_eq!(
            c.policy.as_deref(),
            Some(path.parent().unwrap().join("city-policy.toml").as_path())
        );
    }

    #[test]
    fn limits_are_read_and_a_zero_is_refused() {
        let c = CollectorConfig::load(&write(
            "lim",
            "data_dir = \".\"\n[limits]\nagent_messages_per_sec = 5.5\nconnections_per_source = 9\n",
        ))
        .unwrap();
        assert_eq!(c.limits.agent_messages_per_sec, 5.5);
        assert_eq!(c.limits.connections_per_source, 9);
        assert_eq!(c.limits.handshakes_per_source, 64);
        let e = CollectorConfig::load(&write(
            "lim0",
            "data_dir = \".\"\n[limits]\nhandshakes_per_source = 0\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("limits.handshakes_per_source must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn single_sign_on_is_read_with_its_role_map_and_checked() {
        let c = CollectorConfig::load(&write(
            "con-oidc",
            "data_dir = \".\"\n[console]\nlisten = \"127.0.0.1:8443\"\n\
             [console.oidc]\nissuer = \"https://sso.city.example\"\nclient_id = \"vitals\"\n\
             client_secret_file = \"oidc-secret\"\n\
             redirect_url = \"https://vitals.city.example/oidc/callback\"\n\
             role_claim = \"groups\"\nroles = { helpdesk = \"specialist\", leads = \"admin\" }\n",
        ))
        .unwrap();
        let o = c.console.and_then(|c| c.oidc).expect("oidc");
        assert_eq!(o.roles["leads"], vitals_proto::identity::Role::Admin);
        assert_eq!(
            (o.name_claim.as_str(), o.scopes.len()),
            ("preferred_username", 2)
        );
        assert_eq!(
            o.client_secret_file.as_deref(),
            Some(c.data_dir.join("oidc-secret").as_path())
        );
        for (name, extra, expect) in [
            ("oidc-norole", "roles = {}\n", "roles maps no claim value"),
            ("oidc-badrole", "roles = { x = \"boss\" }\n", "boss"),
            (
                "oidc-typo",
                "roles = { x = \"admin\" }\nrole_clam = \"g\"\n",
                "role_clam",
            ),
        ] {
            let err = CollectorConfig::load(&write(
                name,
                &format!(
                    "data_dir = \".\"\n[console]\nlisten = \"127.0.0.1:8443\"\n[console.oidc]\n\
                     issuer = \"https://sso\"\nclient_id = \"v\"\nredirect_url = \"https://v/cb\"\n\
                     role_claim = \"groups\"\n{extra}"
                ),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(expect), "{name}: {err}");
        }
    }

    #[test]
    fn the_console_speaks_plain_http_only_on_loopback() {
        let c = CollectorConfig::load(&write(
            "con-lo",
            "data_dir = \".\"\n[console]\nlisten = \"127.0.0.1:8443\"\n",
        ))
        .unwrap();
        let console = c.console.expect("a console");
        assert!(!console.tls());
        assert_eq!(console.idle_timeout, Duration::from_secs(1800));
        assert_eq!(
            (console.login_attempts, console.login_lockout.as_secs()),
            (5, 900)
        );
        let err = CollectorConfig::load(&write(
            "con-any",
            "data_dir = \".\"\n[console]\nlisten = \"0.0.0.0:8443\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("not a loopback address, so the console needs cert and key"),
            "{err}"
        );
        let c = CollectorConfig::load(&write(
            "con-tls",
            "data_dir = \".\"\n[console]\nlisten = \"0.0.0.0:8443\"\ncert = \"web.pem\"\nkey = \"web.key\"\n",
        ))
        .unwrap();
        let console = c.console.expect("a console");
        assert!(console.tls());
        assert_eq!(
            console.cert.as_deref(),
            Some(c.data_dir.join("web.pem").as_path())
        );
        let err = CollectorConfig::load(&write(
            "con-half",
            "data_dir = \".\"\n[console]\nlisten = \"127.0.0.1:8443\"\ncert = \"web.pem\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("cert and key go together"), "{err}");
    }

    #[test]
    fn typo_is_named_with_line() {
        let path = write(
            "typo",
            "data_dir = \".\"\n[agents]\nsnapshot_intrval = \"5s\"\n",
        );
        let err = CollectorConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("collector.toml:3: unknown field \"snapshot_intrval\""),
            "{err}"
        );
    }

    #[test]
    fn retention_is_read_and_checked() {
        let path = write(
            "ret",
            "data_dir = \"/v\"\n[retention]\nfault_events = \"30d\"\naudit = \"forever\"\n\
             audit_archive_dir = \"arch\"\n",
        );
        let c = CollectorConfig::load(&path).unwrap();
        assert_eq!(
            c.retention.fault_events,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.retention.audit, None);
        assert_eq!(
            c.retention.notifications,
            RetentionConfig::default().notifications
        );
        assert_eq!(c.audit_archive_dir(), path.parent().unwrap().join("arch"));
        let bad = |body: &str| {
            let path = write(
                "ret-bad",
                &format!("data_dir = \".\"\n[retention]\n{body}\n"),
            );
            CollectorConfig::load(&path).unwrap_err().to_string()
        };
        let e = bad("closed_tickets = \"soon\"");
        assert!(
            e.contains("collector.toml:3:") && e.contains("\"forever\""),
            "{e}"
        );
        assert!(
            bad("notifications = \"5s\"").contains("retention.notifications must be at least 1m")
        );
        assert!(bad("certificates = \"1h\"").contains("at least certificates.renewal_grace"));
        assert!(bad("audti = \"1d\"").contains("unknown field \"audti\""));
    }

    #[test]
    fn bad_duration_and_bad_relation() {
        let path = write(
            "dur",
            "data_dir = \".\"\n[agents]\nidle_timeout = \"soon\"\n",
        );
        let err = CollectorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("collector.toml:3:"), "{err}");
        let path = write(
            "rel",
            "data_dir = \".\"\n[agents]\nidle_timeout = \"10s\"\nheartbeat_interval = \"30s\"\n",
        );
        let err = CollectorConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("idle_timeout (10s) must be longer"), "{err}");
    }

    #[test]
    fn webhooks_and_email_are_checked() {
        let ok = write(
            "notify",
            "data_dir = \".\"\n[[webhook]]\nname = \"itsm\"\nurl = \"https://itsm.example/hook\"\n\
             secret = \"0123456789abcdef\"\nevents = [\"opened\"]\n\
             [email]\nserver = \"smtp.city.example\"\ntls = \"tls\"\n\
             from = \"Vitals <vitals@city.example>\"\nto = [\"desk@city.example\"]\npriorities = [\"p1\"]\n",
        );
        let c = CollectorConfig::load(&ok).unwrap();
        let e = c.email.unwrap();
        assert_eq!(e.port(), 465);
        assert_eq!(e.events, vec!["opened", "reopened", "escalated"]);
        for (text, expect) in [
            (
                "[[webhook]]\nname = \"a\"\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"\n",
                "must start with https:// or http://",
            ),
            (
                "[[webhook]]\nname = \"a\"\nurl = \"https://x\"\nsecret = \"short\"\n",
                "secret must be at least 16 characters",
            ),
            (
                "[[webhook]]\nname = \"email\"\nurl = \"https://x\"\nsecret = \"0123456789abcdef\"\n",
                "reserved for [email]",
            ),
            (
                "[email]\nserver = \"s\"\nfrom = \"not an address\"\nto = [\"d@c.example\"]\n",
                "\"not an address\" is not a mail address",
            ),
            (
                "[email]\nserver = \"s\"\nfrom = \"v@c.example\"\nto = [\"d@c.example\"]\npriorities = [\"p9\"]\n",
                "collector.toml:6: unknown variant \"p9\"",
            ),
            (
                "[email]\nserver = \"s\"\nfrom = \"v@c.example\"\nto = [\"d@c.example\"]\nusername = \"u\"\n",
                "username and password_file go together",
            ),
        ] {
            let path = write("bad-notify", &format!("data_dir = \".\"\n{text}"));
            let err = CollectorConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }
}
