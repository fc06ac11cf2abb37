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
}

impl DiskInfo {
    /// Share of the disk in use, 0 to 100 (0 when the size is unknown).
    pub fn used_percent(&self) -> f32 {
        percent(
            self.total_bytes.saturating_sub(self.available_bytes),
            self.total_bytes,
        )
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    /// Which probe failed, such as "disks".
    pub probe: String,
    pub message: String,
}

impl Snapshot {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    Raised,
    Cleared,
}

impl FaultState {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultState::Raised => "raised",
            FaultState::Cleared => "cleared",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

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
