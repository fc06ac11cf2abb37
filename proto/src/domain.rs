//! Domain types shared by the agent and the collector.
//!
//! These are what probes fill, what storage keeps (as JSON) and what the CLI
//! prints. They never carry protobuf types; see `convert` for the mapping.

use serde::{Deserialize, Serialize};

/// A workstation's health at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Agent wall clock when sampling started, ms since the Unix epoch.
    pub taken_at_ms: i64,
    pub host: HostInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub disks: Vec<DiskInfo>,
    pub interfaces: Vec<InterfaceInfo>,
    /// Probes that failed while this snapshot was taken. A failed probe
    /// never fails the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_errors: Vec<ProbeError>,
    #[serde(default)]
    pub temperatures: Vec<Temperature>,
    #[serde(default)]
    pub batteries: Vec<Battery>,
    #[serde(default)]
    pub smart: SmartReport,
    #[serde(default)]
    pub os: OsHealth,
    /// Local queues (CUPS, the Windows spooler) and network printers (SNMP).
    #[serde(default)]
    pub printers: Vec<PrinterInfo>,
    #[serde(default)]
    pub network: NetworkHealth,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub arch: String,
    pub uptime_secs: u64,
    /// Seconds since the Unix epoch.
    pub boot_time_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub logical_cores: u32,
    /// Average use over the last sampling window, 0 to 100.
    pub usage_percent: f32,
    /// Absent where the platform has no load average (Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<LoadAverage>,
    pub brand: String,
    /// Use of each logical core over the same window, 0 to 100.
    #[serde(default)]
    pub per_core_percent: Vec<f32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

impl MemoryInfo {
    /// Share of memory in use, 0 to 100 (0 when the total is unknown).
    pub fn used_percent(&self) -> f32 {
        percent(self.used_bytes, self.total_bytes)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub name: String,
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub removable: bool,
    /// "ssd", "hdd" or "unknown".
    pub kind: String,
    /// Zero where the file system has no inode limit (NTFS) or it is unknown.
    #[serde(default)]
    pub inodes_total: u64,
    #[serde(default)]
    pub inodes_free: u64,
}

impl DiskInfo {
    /// Share of the disk in use, 0 to 100 (0 when the size is unknown).
    pub fn used_percent(&self) -> f32 {
        percent(
            self.total_bytes.saturating_sub(self.available_bytes),
            self.total_bytes,
        )
    }

    /// Share of inodes in use, 0 to 100; `None` where there is no limit.
    pub fn inodes_used_percent(&self) -> Option<f32> {
        (self.inodes_total > 0).then(|| {
            percent(
                self.inodes_total.saturating_sub(self.inodes_free),
                self.inodes_total,
            )
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub mac: String,
    /// Addresses with prefix length, such as "192.0.2.10/24".
    pub addresses: Vec<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub mtu: u64,
    /// Operational state: "up", "down", "dormant", "unknown"...
    #[serde(default)]
    pub oper_state: String,
    #[serde(default)]
    pub rx_dropped: u64,
    #[serde(default)]
    pub tx_dropped: u64,
    /// Errors (both directions) per minute since the previous sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_per_min: Option<f32>,
    /// Drops (both directions) per minute since the previous sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops_per_min: Option<f32>,
    /// Was up earlier while the agent ran, and is down now.
    #[serde(default)]
    pub link_lost: bool,
}

/// The agent's probes: each reads one area on its own interval. The name
/// is how `agent.toml`'s `[probes]`, probe errors and the policy's
/// measurement table call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// Host, CPU, memory, disks (sysinfo).
    System,
    /// Temperatures and batteries.
    Sensors,
    /// Disk health (`smartctl`).
    Smart,
    /// Reboot markers, services, sessions, clock.
    Os,
    /// Local print queues (CUPS, the Windows spooler).
    Printers,
    /// Network printers over SNMP.
    NetworkPrinters,
    /// Interfaces, gateway, DNS, key services, Wi-Fi.
    Network,
}

crate::text_enum!(ProbeKind {
    System => "system",
    Sensors => "sensors",
    Smart => "smart",
    Os => "os",
    Printers => "printers",
    NetworkPrinters => "network_printers",
    Network => "network",
});

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    /// Which probe failed: a [`ProbeKind`]'s name. Kept as text, so a
    /// collector shows the errors of probes newer than itself.
    pub probe: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub label: String,
    pub celsius: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_celsius: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_celsius: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Battery {
    pub name: String,
    /// Charge, 0 to 100.
    pub charge_percent: f32,
    /// Full capacity now against design capacity, 0 to 100.
    pub health_percent: f32,
    /// "charging", "discharging", "full", "empty" or "unknown".
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_count: Option<u32>,
}

/// Disk health as the drives report it through SMART.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmartReport {
    /// False when SMART could not be read at all; `reason` says why.
    pub available: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default)]
    pub devices: Vec<SmartDevice>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmartDevice {
    pub device: String,
    pub model: String,
    pub serial: String,
    /// "ATA", "NVMe", "SCSI".
    pub protocol: String,
    /// The drive's own overall verdict; `None` if it gave none.
    pub passed: Option<bool>,
    pub temperature_celsius: Option<i64>,
    pub power_on_hours: Option<u64>,
    pub reallocated_sectors: Option<u64>,
    pub pending_sectors: Option<u64>,
    pub media_errors: Option<u64>,
    /// NVMe endurance used, percent.
    pub percentage_used: Option<u64>,
    /// A device-level read error (the rest of the report stands).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OsHealth {
    pub reboot_required: bool,
    /// When the reboot became pending, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_required_since_secs: Option<u64>,
    /// Why (packages or markers that asked for it).
    #[serde(default)]
    pub reboot_reasons: Vec<String>,
    /// False when the service manager could not be asked; see probe errors.
    pub services_checked: bool,
    #[serde(default)]
    pub failed_services: Vec<String>,
    #[serde(default)]
    pub users: Vec<UserSession>,
    /// Collector clock minus agent clock, from the last welcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSession {
    pub user: String,
    /// Terminal or seat, such as "tty1", ":0", "pts/0", "console".
    pub terminal: String,
    /// Remote host for remote sessions; empty when local.
    pub host: String,
    /// Login time, seconds since the Unix epoch.
    pub login_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrinterInfo {
    pub name: String,
    /// "cups", "spooler", or "snmp" or "ipp" for a network printer.
    pub source: String,
    /// Device URI or network address.
    pub address: String,
    /// "idle", "processing", "stopped" or "unreachable".
    pub state: String,
    /// IPP keywords (media-empty, toner-low, media-jam, offline, paused...);
    /// network printers' SNMP error bits are mapped to the same words.
    pub reasons: Vec<String>,
    pub accepting_jobs: bool,
    pub queued_jobs: u32,
    /// Age of the oldest job not yet completed, seconds.
    pub oldest_job_age_secs: Option<u64>,
    pub supplies: Vec<Supply>,
    pub page_count: Option<u64>,
    /// Why the printer could not be read, when it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl PrinterInfo {
    /// The network host behind a printer the Windows spooler lists, from
    /// its address: the print server of a connected printer
    /// (`\\ps01\IP_10.20.5.31`), or the host of a standard TCP/IP port
    /// (`IP_10.20.5.31`, `10.20.5.31_1`); `None` for a local port (`USB001`,
    /// `LPT1:`, `PORTPROMPT:`).
    pub fn spooler_host(address: &str) -> Option<String> {
        if let Some(unc) = address.strip_prefix("\\\\") {
            let server = unc.split('\\').next().unwrap_or("");
            return (!server.is_empty()).then(|| server.to_ascii_lowercase());
        }
        let host = address.strip_prefix("IP_").unwrap_or(address);
        let host = host.split('_').next().unwrap_or(host);
        host.parse::<std::net::IpAddr>().ok().map(|a| a.to_string())
    }

    /// Whether any reason starts with `prefix` ("media-empty" matches
    /// "media-empty-error" and "media-empty-warning" too).
    pub fn has_reason(&self, prefix: &str) -> bool {
        self.reasons.iter().any(|r| r.starts_with(prefix))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Supply {
    pub name: String,
    /// Level against capacity, 0 to 100; `None` where the printer does not say.
    pub percent: Option<f32>,
    /// Whether it is used up (toner, ink) or filled up (a waste container,
    /// whose level means something else), where the printer says.
    #[serde(default)]
    pub kind: SupplyKind,
}

/// What a supply's level measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SupplyKind {
    /// The printer does not say.
    #[default]
    Unknown,
    /// Used up as the printer prints: toner, ink, staples.
    Consumed,
    /// Filled as the printer prints: waste toner or ink.
    Waste,
}

crate::text_enum!(SupplyKind {
    Unknown => "",
    Consumed => "consumed",
    Waste => "waste",
});

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(default)]
    pub dns: Vec<DnsCheck>,
    #[serde(default)]
    pub services: Vec<ServiceCheck>,
    #[serde(default)]
    pub wifi: Vec<WifiInfo>,
    /// The DNS servers the system resolver uses, in order.
    #[serde(default)]
    pub resolvers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gateway {
    pub address: String,
    pub interface: String,
    /// "icmp" or "tcp" (a refused connection still proves the gateway answers).
    pub method: String,
    pub sent: u32,
    pub received: u32,
    pub loss_percent: f32,
    /// Average round trip of the answered probes, milliseconds.
    pub rtt_ms: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsCheck {
    pub name: String,
    pub ok: bool,
    pub millis: f32,
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceCheck {
    pub name: String,
    /// host:port as configured.
    pub address: String,
    pub ok: bool,
    pub connect_ms: Option<f32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WifiInfo {
    pub interface: String,
    /// Link quality as the driver reports it (out of 70 on most Linux drivers).
    pub link_quality: f32,
    pub signal_dbm: f32,
}

impl Snapshot {
    /// The endpoint's own networks from its interfaces (`10.1.2.3/24`; a
    /// bare address as a host network), loopback left out.
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .filter_map(|a| {
                a.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| a.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .filter(|n| !n.addr().is_loopback())
            .collect()
    }

    /// The use of the fullest disk, 0 to 100 (0 with no disks).
    pub fn fullest_disk_percent(&self) -> f32 {
        self.disks
            .iter()
            .map(DiskInfo::used_percent)
            .fold(0.0, f32::max)
    }
}

fn percent(part: u64, whole: u64) -> f32 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64) as f32
    }
}

/// A check changed state on a workstation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// The policy check, such as "disk_nearly_full".
    pub check_id: String,
    /// What the check looked at: a mount point, a printer queue, a DNS name.
    pub subject: String,
    pub state: FaultState,
    pub severity: Severity,
    /// The measured value at the change, in the check's unit.
    pub value: f64,
    /// What a specialist should read first.
    pub evidence: String,
    /// Agent wall clock at the change, ms since the Unix epoch.
    pub at_ms: i64,
    /// What the subject is reached through, where the agent knows it: the
    /// resolver a DNS name was asked of ("resolver 10.0.0.53"), the
    /// gateway in front of a key service. Subjects failing through the
    /// same way in share a cause; empty when nothing is shared.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultState {
    Raised,
    Cleared,
}

crate::text_enum!(FaultState {
    Raised => "raised",
    Cleared => "cleared",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

crate::text_enum!(Severity {
    Info => "info",
    Warning => "warning",
    Critical => "critical",
});

/// A stored fault event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub seq: u64,
    pub received_at_ms: i64,
    pub event: FaultEvent,
}

/// What the collector knows of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub endpoint_id: String,
    pub hostname: String,
    pub platform: String,
    pub os: String,
    pub online: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    pub cpu_usage_percent: f32,
    pub memory_used_percent: f32,
    pub fullest_disk_percent: f32,
    /// 0 until the first snapshot arrives.
    pub latest_snapshot_ms: i64,
    /// IP addresses from the latest snapshot, loopback left out.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The site its enrollment token placed it in (besides the policy's).
    #[serde(default)]
    pub enrolled_site: String,
    /// The tags its enrollment token gave it.
    #[serde(default)]
    pub enrolled_tags: Vec<String>,
    /// The machine its certificate is bound to (empty: not yet known).
    #[serde(default)]
    pub machine_id: String,
    /// A second machine that presented its identity and was refused: a
    /// cloned image, until an admin resolves it.
    #[serde(default)]
    pub clone_machine_id: String,
    /// When it was revoked (0: never); it must enroll again.
    #[serde(default)]
    pub revoked_ms: i64,
    #[serde(default)]
    pub revoke_reason: String,
}

impl EndpointSummary {
    /// What its enrollment token placed it in, as people read it
    /// ("site north, tags dispatch, 24x7"); `None` if nothing.
    pub fn enrollment_text(&self) -> Option<String> {
        if self.enrolled_site.is_empty() && self.enrolled_tags.is_empty() {
            return None;
        }
        let site = if self.enrolled_site.is_empty() {
            "-"
        } else {
            &self.enrolled_site
        };
        let tags = if self.enrolled_tags.is_empty() {
            "-".to_owned()
        } else {
            self.enrolled_tags.join(", ")
        };
        Some(format!("site {site}, tags {tags}"))
    }
}

/// One endpoint in full.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointDetail {
    pub summary: EndpointSummary,
    pub latest: Option<Snapshot>,
    /// When the current session began (online) or the last one ended.
    pub state_since_ms: i64,
    pub committed_seq: u64,
    pub history_len: u64,
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub received_at_ms: i64,
    pub snapshot: Snapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_percent_handles_empty_and_full() {
        let mut d = DiskInfo {
            total_bytes: 200,
            available_bytes: 50,
            ..Default::default()
        };
        assert_eq!(d.used_percent(), 75.0);
        d.total_bytes = 0;
        assert_eq!(d.used_percent(), 0.0);
        // More available than total (a racy read) must not underflow.
        d.total_bytes = 10;
        d.available_bytes = 20;
        assert_eq!(d.used_percent(), 0.0);
    }

    #[test]
    fn fullest_disk_is_the_maximum() {
        let s = Snapshot {
            disks: vec![
                DiskInfo {
                    total_bytes: 100,
                    available_bytes: 90,
                    ..Default::default()
                },
                DiskInfo {
                    total_bytes: 100,
                    available_bytes: 3,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(s.fullest_disk_percent(), 97.0);
    }
}
