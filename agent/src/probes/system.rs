//! The baseline probe: host, CPU, memory, disks and network interfaces,
//! read through sysinfo. Process lists are never refreshed: they are the
//! costliest thing sysinfo reads and the snapshot does not need them.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};
use vitals_proto::domain::{
    CpuInfo, DiskInfo, HostInfo, InterfaceInfo, LoadAverage, MemoryInfo, ProbeError, Snapshot,
};

use super::probe_error;

pub struct SystemProbe {
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    /// Errors from constructing the readers, reported in every snapshot.
    init_errors: Vec<ProbeError>,
}

impl SystemProbe {
    pub fn new() -> Self {
        let mut init_errors = Vec::new();
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(|e| init_errors.push(probe_error("cpu", e)))
        .ok();
        let disks = Disks::new()
            .map_err(|e| init_errors.push(probe_error("disks", e)))
            .ok();
        let networks = Networks::new()
            .map_err(|e| init_errors.push(probe_error("network", e)))
            .ok();
        SystemProbe {
            system,
            disks,
            networks,
            init_errors,
        }
    }

    /// Takes the first CPU reading, so the next `fill` can report use.
    pub fn prime(&mut self) {
        if let Some(s) = &mut self.system {
            s.refresh_cpu_usage();
        }
    }

    pub fn fill(&mut self, snapshot: &mut Snapshot, errors: &mut Vec<ProbeError>) {
        errors.extend(self.init_errors.iter().cloned());
        snapshot.host = host(errors);
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            system.refresh_memory();
            snapshot.cpu = CpuInfo {
                logical_cores: system.cpus().len() as u32,
                usage_percent: system.global_cpu_usage(),
                load_average: load_average(),
                brand: system
                    .cpus()
                    .first()
                    .map(|c| c.brand().trim().to_owned())
                    .unwrap_or_default(),
            };
            snapshot.memory = MemoryInfo {
                total_bytes: system.total_memory(),
                used_bytes: system.used_memory(),
                available_bytes: system.available_memory(),
                swap_total_bytes: system.total_swap(),
                swap_used_bytes: system.used_swap(),
            };
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            snapshot.disks = disks
                .iter()
                .map(|d| DiskInfo {
                    name: d.name().to_string_lossy().into_owned(),
                    mount_point: d.mount_point().display().to_string(),
                    file_system: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                    removable: d.is_removable(),
                    kind: match d.kind() {
                        sysinfo::DiskKind::SSD => "ssd",
                        sysinfo::DiskKind::HDD => "hdd",
                        _ => "unknown",
                    }
                    .to_owned(),
                })
                .collect();
        }
        if let Some(networks) = &mut self.networks {
            networks.refresh(true);
            let mut interfaces: Vec<InterfaceInfo> = networks
                .iter()
                .map(|(name, n)| InterfaceInfo {
                    name: name.to_string_lossy().into_owned(),
                    mac: if n.mac_address().is_unspecified() {
                        String::new()
                    } else {
                        n.mac_address().to_string()
                    },
                    addresses: n.ip_networks().iter().map(|a| a.to_string()).collect(),
                    rx_bytes: n.total_received(),
                    tx_bytes: n.total_transmitted(),
                    rx_packets: n.total_packets_received(),
                    tx_packets: n.total_packets_transmitted(),
                    rx_errors: n.total_errors_on_received(),
                    tx_errors: n.total_errors_on_transmitted(),
                    mtu: n.mtu(),
                })
                .collect();
            interfaces.sort_by(|a, b| a.name.cmp(&b.name));
            snapshot.interfaces = interfaces;
        }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

fn host(errors: &mut Vec<ProbeError>) -> HostInfo {
    let mut get = |what: &str, r: Result<String, sysinfo::Error>| {
        r.map_err(|e| errors.push(probe_error("host", format!("{what}: {e}"))))
            .unwrap_or_default()
    };
    let hostname = get("host name", System::host_name());
    let os_name = get("os name", System::name());
    let os_version = get("os version", System::os_version());
    let kernel_version = get("kernel version", System::kernel_version());
    let uptime_secs = System::uptime()
        .map_err(|e| errors.push(probe_error("host", format!("uptime: {e}"))))
        .unwrap_or_default();
    let boot_time_secs = System::boot_time()
        .map_err(|e| errors.push(probe_error("host", format!("boot time: {e}"))))
        .unwrap_or_default();
    HostInfo {
        hostname,
        os_name,
        os_version,
        kernel_version,
        arch: System::cpu_arch(),
        uptime_secs,
        boot_time_secs,
    }
}

/// Load averages; Windows has none, which is not an error.
fn load_average() -> Option<LoadAverage> {
    if cfg!(windows) {
        return None;
    }
    System::load_average().ok().map(|l| LoadAverage {
        one: l.one,
        five: l.five,
        fifteen: l.fifteen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_baseline_on_this_machine() {
        let mut probe = SystemProbe::new();
        probe.prime();
        let mut s = Snapshot::default();
        let mut errors = Vec::new();
        probe.fill(&mut s, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!s.host.hostname.is_empty());
        assert!(!s.host.kernel_version.is_empty());
        assert!(s.cpu.logical_cores >= 1);
        assert!(s.memory.total_bytes > 0);
        assert!(s.memory.used_bytes <= s.memory.total_bytes);
        // Every Linux and Windows machine has a loopback or network interface.
        assert!(!s.interfaces.is_empty());
        assert!(s.host.uptime_secs > 0);
    }
}
