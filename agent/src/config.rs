//! `agent.toml`: typed, strict, validated before the agent connects.
//!
//! Relative paths are resolved against the folder holding the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vitals_proto::config_file::{self, ConfigFileError};
use vitals_proto::domain::ProbeKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The collector's address, `https://HOST:PORT`.
    #[serde(deserialize_with = "collector_url")]
    pub collector: String,
    /// TLS name to verify on the collector's certificate; defaults to the
    /// URL's host.
    pub server_name: Option<String>,
    /// Folder for the agent's own state (sequence counter; later the outbox).
    pub state_dir: PathBuf,
    /// This machine's fingerprint for telling cloned images apart; the OS
    /// install's own ID (`/etc/machine-id`, MachineGuid) when absent. Set
    /// it only where that ID is not unique per machine.
    pub machine_id: Option<String>,
    /// An enrollment token left by an installer, used at the first start
    /// when there is no certificate yet, then deleted; `enroll.token`
    /// beside this file when absent.
    pub enroll_token: Option<PathBuf>,
    pub tls: TlsFiles,
    #[serde(default)]
    pub link: LinkSettings,
    /// Interval, timeout and on/off per probe.
    #[serde(default)]
    pub probes: ProbeTimings,
    #[serde(default)]
    pub smart: SmartSettings,
    #[serde(default)]
    pub printers: PrinterSettings,
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub diagnostics: DiagnosticSettings,
    #[serde(default)]
    pub log: LogSettings,
}

/// `[log]`: how and where the agent writes its own log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json` (one object per line).
    pub format: vitals_proto::logging::LogFormat,
    /// A log file, rotated by size; standard error when absent (the
    /// Windows service: `logs\agent.log` beside this file).
    pub file: Option<PathBuf>,
    /// The size at which the file moves aside to `<file>.1`, in MiB.
    pub max_size_mib: u64,
    /// How many moved-aside files are kept.
    pub keep: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: Default::default(),
            file: None,
            max_size_mib: 10,
            keep: 5,
        }
    }
}

/// `[diagnostics]`: live diagnostics a specialist may run on this desk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticSettings {
    /// Off: every request is refused, saying so.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Diagnostics running at once (1 to 8); more wait briefly, then are
    /// refused as busy.
    #[serde(default = "default_max_running")]
    pub max_running: usize,
}

fn default_max_running() -> usize {
    2
}

impl Default for DiagnosticSettings {
    fn default() -> Self {
        DiagnosticSettings {
            enabled: true,
            max_running: default_max_running(),
        }
    }
}

/// Every probe's settings, from `agent.toml` or the defaults.
#[derive(Debug, Clone, Default)]
pub struct ProbeSettings {
    pub timings: ProbeTimings,
    pub smart: SmartSettings,
    pub printers: PrinterSettings,
    pub network: NetworkSettings,
}

/// A probe's default interval and timeout, in seconds.
pub fn default_timing(kind: ProbeKind) -> (u64, u64) {
    match kind {
        ProbeKind::System => (10, 5),
        ProbeKind::Sensors => (60, 10),
        ProbeKind::Smart => (3600, 60),
        ProbeKind::Os => (60, 10),
        ProbeKind::Printers => (30, 10),
        ProbeKind::NetworkPrinters => (60, 10),
        ProbeKind::Network => (30, 15),
    }
}

/// `[probes]`: a table per probe, such as `network = { interval = "10s" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeTimings {
    #[serde(default)]
    pub system: TimingOverride,
    #[serde(default)]
    pub sensors: TimingOverride,
    #[serde(default)]
    pub smart: TimingOverride,
    #[serde(default)]
    pub os: TimingOverride,
    #[serde(default)]
    pub printers: TimingOverride,
    #[serde(default)]
    pub network_printers: TimingOverride,
    #[serde(default)]
    pub network: TimingOverride,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingOverride {
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A run past this is cancelled and reported as a probe error.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub enabled: Option<bool>,
}

/// When and how long a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub enabled: bool,
}

impl ProbeTimings {
    fn get(&self, kind: ProbeKind) -> &TimingOverride {
        match kind {
            ProbeKind::System => &self.system,
            ProbeKind::Sensors => &self.sensors,
            ProbeKind::Smart => &self.smart,
            ProbeKind::Os => &self.os,
            ProbeKind::Printers => &self.printers,
            ProbeKind::NetworkPrinters => &self.network_printers,
            ProbeKind::Network => &self.network,
        }
    }
}

impl ProbeSettings {
    /// Checks what serde cannot: sane timings and well-formed addresses.
    pub fn validate(&self) -> Result<(), String> {
        for &name in ProbeKind::ALL {
            let t = self.timing(name);
            if t.interval < Duration::from_secs(1) {
                return Err(format!("probes.{name}.interval must be at least 1s"));
            }
            if t.timeout.is_zero() || t.timeout > t.interval.max(Duration::from_secs(1)) * 2 {
                return Err(format!(
                    "probes.{name}.timeout must be above 0 and at most twice the interval"
                ));
            }
        }
        for s in &self.network.services {
            if split_host_port(&s.address).is_none() {
                return Err(format!(
                    "network.service \"{}\": address \"{}\" must be HOST:PORT",
                    s.name, s.address
                ));
            }
        }
        for p in &self.printers.network {
            if p.address.trim().is_empty() {
                return Err(format!("printers.network \"{}\": address is empty", p.name));
            }
        }
        if self.network.ping_count == 0 || self.network.ping_count > 20 {
            return Err("network.ping_count must be from 1 to 20".into());
        }
        if !self.printers.cups.is_empty()
            && self.printers.cups.parse::<tonic::transport::Uri>().is_err()
        {
            return Err(format!(
                "printers.cups \"{}\" is not a URL",
                self.printers.cups
            ));
        }
        Ok(())
    }

    /// The timing of the probe called `name`: its override, else the default.
    pub fn timing(&self, kind: ProbeKind) -> Timing {
        let (interval, timeout) = default_timing(kind);
        let o = self.timings.get(kind);
        Timing {
            interval: o.interval.unwrap_or(Duration::from_secs(interval)),
            timeout: o.timeout.unwrap_or(Duration::from_secs(timeout)),
            enabled: o.enabled.unwrap_or(true),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartSettings {
    /// The smartctl program (smartmontools 7 or later, for JSON output).
    #[serde(default = "default_smartctl")]
    pub smartctl: PathBuf,
}

impl Default for SmartSettings {
    fn default() -> Self {
        SmartSettings {
            smartctl: default_smartctl(),
        }
    }
}

/// `smartctl` on the PATH; on Windows, where smartmontools' installer
/// does not add itself to the PATH, its install folder first.
fn default_smartctl() -> PathBuf {
    if cfg!(windows) {
        let base = std::env::var_os("ProgramFiles").unwrap_or_else(|| r"C:\Program Files".into());
        let installed = PathBuf::from(base).join(r"smartmontools\bin\smartctl.exe");
        if installed.exists() {
            return installed;
        }
    }
    PathBuf::from("smartctl")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterSettings {
    /// The local CUPS scheduler; an empty string skips CUPS.
    #[serde(default = "default_cups")]
    pub cups: String,
    /// Network printers read over SNMP v2c.
    #[serde(default)]
    pub network: Vec<NetworkPrinter>,
}

impl Default for PrinterSettings {
    fn default() -> Self {
        PrinterSettings {
            cups: default_cups(),
            network: Vec::new(),
        }
    }
}

fn default_cups() -> String {
    "http://localhost:631".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkPrinter {
    /// What the help desk calls it, such as "Dispatch 2nd floor".
    pub name: String,
    /// HOST or HOST:PORT (SNMP, port 161 by default).
    pub address: String,
    #[serde(default = "default_community")]
    pub community: String,
    /// How it is read: `snmp` (the default), `ipp` (the printer's own
    /// Get-Printer-Attributes), or `auto` (IPP first, SNMP if IPP does not
    /// answer).
    #[serde(default)]
    pub protocol: PrinterProtocol,
    /// The printer's IPP URI; by default `ipp://HOST/ipp/print`.
    #[serde(default)]
    pub ipp_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrinterProtocol {
    #[default]
    Snmp,
    Ipp,
    Auto,
}

impl NetworkPrinter {
    /// Where the printer answers IPP.
    pub fn ipp_uri(&self) -> String {
        self.ipp_uri.clone().unwrap_or_else(|| {
            let host = self
                .address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(h, p)| {
                    // HOST:PORT is SNMP's port; a bare IPv6 address keeps its colons.
                    let port = p.chars().all(|c| c.is_ascii_digit());
                    if port && (!h.contains(':') || h.ends_with(']')) {
                        h
                    } else {
                        &self.address
                    }
                });
            format!("ipp://{host}/ipp/print")
        })
    }
}

fn default_community() -> String {
    "public".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Names to resolve through the system resolver on every run.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Key services whose TCP reachability is measured.
    #[serde(default, rename = "service")]
    pub services: Vec<KeyService>,
    /// Whether to probe the default gateway at all.
    #[serde(default = "yes")]
    pub ping_gateway: bool,
    /// Echo probes sent to the default gateway per run.
    #[serde(default = "default_ping_count")]
    pub ping_count: u32,
    /// How long one echo, lookup or connect may take.
    #[serde(default = "default_net_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            dns: Vec::new(),
            services: Vec::new(),
            ping_gateway: true,
            ping_count: default_ping_count(),
            timeout: default_net_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_ping_count() -> u32 {
    4
}
fn default_net_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyService {
    pub name: String,
    /// HOST:PORT.
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The fleet CA the collector's certificate must chain to.
    pub ca: PathBuf,
    /// This agent's certificate; its endpoint ID is read from it.
    pub cert: PathBuf,
    /// This agent's private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// Snapshot interval until the collector's welcome sets its own.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// First reconnect delay; doubles on each failure, with full jitter.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Messages the outbox holds while the collector is unreachable; past
    /// this the oldest snapshots are dropped (fault events never). Older
    /// configurations call it `max_pending`.
    #[serde(default = "default_outbox_max_messages", alias = "max_pending")]
    pub outbox_max_messages: usize,
    /// The outbox file (`<state_dir>/outbox.log`) holds at most
    /// this much; past it the oldest snapshots are dropped, events never.
    #[serde(default = "default_outbox_max_bytes")]
    pub outbox_max_bytes: u64,
    /// HTTP/2 ping interval on the stream, so a link that died silently (a
    /// router lost its state, a cable pulled) is noticed.
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Connecting, the TLS handshake and the collector's welcome together
    /// must finish within this, or the attempt is abandoned and retried.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a ping may go unanswered before the link counts as dead.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

fn default_keepalive_interval() -> Duration {
    Duration::from_secs(20)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_outbox_max_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            snapshot_interval: default_snapshot_interval(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            outbox_max_messages: default_outbox_max_messages(),
            outbox_max_bytes: default_outbox_max_bytes(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

fn default_snapshot_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
/// Full jitter spreads a fleet's reconnects evenly over the ceiling, so the
/// ceiling is also how long a fleet takes to come back after an outage:
/// 15 s brings 2,000 desks back at about 130 sessions a second.
fn default_reconnect_max() -> Duration {
    Duration::from_secs(15)
}
/// Bodies stay in the outbox file and memory holds about 50 bytes per
/// message, so the count bound is generous: two weeks of one snapshot a
/// minute. `outbox_max_bytes` is the bound that usually applies.
fn default_outbox_max_messages() -> usize {
    20_000
}

fn collector_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_collector_url(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn check_collector_url(s: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = s
        .parse()
        .map_err(|e| format!("collector \"{s}\" is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "collector \"{s}\" must use https:// (the link is always mTLS)"
        ));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!(
            "collector \"{s}\" must name a host and a port, like https://collector:7443"
        ));
    }
    Ok(())
}

/// Splits "host:port" (or "[v6]:port") into its parts.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut c: AgentConfig = config_file::load(path)?;
        c.state_dir = config_file::resolve(path, &c.state_dir);
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            *p = config_file::resolve(path, p);
        }
        if let Some(f) = &mut c.log.file {
            *f = config_file::resolve(path, f);
        }
        c.enroll_token = Some(match &c.enroll_token {
            Some(p) => config_file::resolve(path, p),
            None => path.parent().unwrap_or(Path::new(".")).join("enroll.token"),
        });
        let invalid = |message: &str| ConfigError::Invalid {
            file: path.display().to_string(),
            message: message.to_owned(),
        };
        if c.log.max_size_mib == 0
            || c.log.max_size_mib > 1024
            || c.log.keep == 0
            || c.log.keep > 100
        {
            return Err(invalid(
                "log.max_size_mib must be 1 to 1024 and log.keep 1 to 100",
            ));
        }
        let l = &c.link;
        if l.snapshot_interval < Duration::from_secs(1) {
            return Err(invalid("link.snapshot_interval must be at least 1s"));
        }
        if l.reconnect_min.is_zero() || l.reconnect_max < l.reconnect_min {
            return Err(invalid(
                "link.reconnect_min must be above 0 and at most link.reconnect_max",
            ));
        }
        if l.keepalive_interval < Duration::from_secs(1)
            || l.keepalive_timeout < Duration::from_secs(1)
        {
            return Err(invalid(
                "link.keepalive_interval and link.keepalive_timeout must be at least 1s",
            ));
        }
        if l.outbox_max_messages == 0 {
            return Err(invalid("link.outbox_max_messages must be at least 1"));
        }
        c.probe_settings().validate().map_err(|m| invalid(&m))?;
        if !(1..=8).contains(&c.diagnostics.max_running) {
            return Err(invalid("diagnostics.max_running must be from 1 to 8"));
        }
        Ok(c)
    }

    pub fn probe_settings(&self) -> ProbeSettings {
        ProbeSettings {
            timings: self.probes.clone(),
            smart: self.smart.clone(),
            printers: self.printers.clone(),
            network: self.network.clone(),
        }
    }

    /// The TLS name the collector's certificate must carry.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            self.collector
                .parse::<tonic::transport::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"collector = "https://collector.example:7443"
state_dir = "state"

[tls]
ca = "pki/ca.pem"
cert = "pki/agent.pem"
key = "pki/agent.key"
"#;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vitals-acfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn good_file_resolves_paths() {
        let path = write("good", GOOD);
        let c = AgentConfig::load(&path).unwrap();
        let dir = path.parent().unwrap();
        assert_eq!(c.tls.ca, dir.join("pki/ca.pem"));
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.server_name(), "collector.example");
        assert_eq!(c.link.snapshot_interval, Duration::from_secs(60));
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let path = write("typo", &format!("{GOOD}\n[link]\nintrval = \"5s\"\n"));
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml:10: unknown field \"intrval\""),
            "{err}"
        );
    }

    #[test]
    fn network_printers_name_their_protocol_and_ipp_address() {
        let text = format!(
            "{GOOD}\n[[printers.network]]\nname = \"A\"\naddress = \"10.0.0.9:161\"\nprotocol = \"auto\"\n\
             [[printers.network]]\nname = \"B\"\naddress = \"[fe80::1]:161\"\n\
             [[printers.network]]\nname = \"C\"\naddress = \"p.local\"\nprotocol = \"ipp\"\n\
             ipp_uri = \"ipps://p.local:443/ipp/print\"\n"
        );
        let c = AgentConfig::load(&write("protocols", &text)).unwrap();
        let n = &c.printers.network;
        assert_eq!(
            (n[0].protocol, n[0].ipp_uri().as_str()),
            (PrinterProtocol::Auto, "ipp://10.0.0.9/ipp/print")
        );
        assert_eq!(
            (n[1].protocol, n[1].ipp_uri().as_str()),
            (PrinterProtocol::Snmp, "ipp://[fe80::1]/ipp/print")
        );
        assert_eq!(n[2].ipp_uri(), "ipps://p.local:443/ipp/print");
        let bad = format!(
            "{GOOD}\n[[printers.network]]\nname = \"D\"\naddress = \"x\"\nprotocol = \"fax\"\n"
        );
        let err = AgentConfig::load(&write("bad-protocol", &bad))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant") && err.contains("fax"),
            "{err}"
        );
    }

    #[test]
    fn the_outbox_bound_keeps_its_older_name() {
        let old = write("old-name", &format!("{GOOD}\n[link]\nmax_pending = 7\n"));
        assert_eq!(AgentConfig::load(&old).unwrap().link.outbox_max_messages, 7);
        let new = write(
            "new-name",
            &format!("{GOOD}\n[link]\noutbox_max_messages = 9\n"),
        );
        assert_eq!(AgentConfig::load(&new).unwrap().link.outbox_max_messages, 9);
    }

    #[test]
    fn plain_http_collector_is_refused_with_line() {
        let text = GOOD.replace("https://collector.example:7443", "http://collector:7443");
        let path = write("http", &text);
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml:1: collector \"http://collector:7443\" must use https://"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let c = AgentConfig::load(&path).unwrap();
        let p = c.probe_settings();
        assert_eq!(p.network.services.len(), 2);
        assert_eq!(
            p.timing(ProbeKind::Smart).interval,
            Duration::from_secs(3600)
        );
        assert_eq!(
            p.timing(ProbeKind::Network).timeout,
            Duration::from_secs(15)
        );
    }

    #[test]
    fn the_log_section_is_read_and_checked() {
        let path = write(
            "log",
            &format!("{GOOD}[log]\nformat = \"json\"\nfile = \"logs/a.log\"\nkeep = 2\n"),
        );
        let c = AgentConfig::load(&path).unwrap();
        assert_eq!(c.log.format, vitals_proto::logging::LogFormat::Json);
        assert_eq!(c.log.file, Some(path.parent().unwrap().join("logs/a.log")));
        assert_eq!((c.log.max_size_mib, c.log.keep), (10, 2));
        let bad = |extra: &str| {
            let path = write("log-bad", &format!("{GOOD}{extra}"));
            AgentConfig::load(&path).unwrap_err().to_string()
        };
        assert!(bad("[log]\nkeep = 0\n").contains("log.keep 1 to 100"));
        let e = bad("[log]\nformat = \"xml\"\n");
        assert!(e.contains("agent.toml:") && e.contains("xml"), "{e}");
    }

    #[test]
    fn probe_settings_are_checked() {
        let bad = |extra: &str| {
            let path = write("probes-bad", &format!("{GOOD}{extra}"));
            AgentConfig::load(&path).unwrap_err().to_string()
        };
        assert!(
            bad("[probes]\nnetwork = { interval = \"100ms\" }\n")
                .contains("probes.network.interval must be at least 1s")
        );
        assert!(
            bad("[diagnostics]\nmax_running = 0\n")
                .contains("diagnostics.max_running must be from 1 to 8")
        );
        assert!(
            bad("[[network.service]]\nname = \"erp\"\naddress = \"erp.example\"\n")
                .contains("network.service \"erp\": address \"erp.example\" must be HOST:PORT")
        );
        assert!(
            bad("[probes]\nprinter = { enabled = false }\n").contains("unknown field \"printer\"")
        );
        assert!(bad("[network]\nping_count = 0\n").contains("ping_count must be from 1 to 20"));
    }

    #[test]
    fn url_checks() {
        assert!(check_collector_url("https://[::1]:7443").is_ok());
        assert!(check_collector_url("https://collector").is_err());
        assert!(check_collector_url("not a url").is_err());
    }
}
