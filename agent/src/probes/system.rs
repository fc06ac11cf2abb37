//! The baseline probe: host, CPU, memory, disks and network interfaces,
//! read through sysinfo. Process lists are never refreshed: they are the
//! costliest thing sysinfo reads and the snapshot does not need them.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};
use vitals_proto::domain::{
    CpuInfo, DiskInfo, HostInfo, LoadAverage, MemoryInfo, ProbeError, ProbeKind,
};

use super::{Blocking, Probe, Reading, Section, probe_error};

const KIND: ProbeKind = ProbeKind::System;

/// The shortest window over which sysinfo measures CPU use (readings
/// closer together than this repeat the previous figure).
const CPU_WINDOW: std::time::Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;

/// Host, CPU, memory and disks.
#[derive(Debug, Clone, Default)]
pub struct SystemPart {
    pub host: HostInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub disks: Vec<DiskInfo>,
}

/// The sysinfo readers, kept between runs (CPU use is a difference of two
/// readings).
struct Readers {
    system: Option<System>,
    disks: Option<Disks>,
    /// Errors from constructing the readers, reported on every run.
    init_errors: Vec<ProbeError>,
    primed: bool,
}

pub struct SystemProbe {
    /// Taken out while a run is on the blocking pool; a run that hangs
    /// takes them with it and the next run starts with fresh ones.
    readers: Option<Readers>,
    blocking: Blocking,
}

impl Readers {
    fn new() -> Self {
        let mut init_errors = Vec::new();
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(|e| init_errors.push(probe_error(KIND, format!("cpu: {e}"))))
        .ok();
        let disks = Disks::new()
            .map_err(|e| init_errors.push(probe_error(KIND, format!("disks: {e}"))))
            .ok();
        Readers {
            system,
            disks,
            init_errors,
            primed: false,
        }
    }

    fn prime(&mut self) {
        if let Some(s) = &mut self.system {
            s.refresh_cpu_usage();
        }
        self.primed = true;
    }

    fn sample(&mut self) -> (SystemPart, Vec<ProbeError>) {
        let mut errors = self.init_errors.clone();
        let mut part = SystemPart {
            host: host(&mut errors),
            ..Default::default()
        };
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            system.refresh_memory();
            part.cpu = CpuInfo {
                logical_cores: system.cpus().len() as u32,
                usage_percent: system.global_cpu_usage(),
                load_average: load_average(),
                brand: system
                    .cpus()
                    .first()
                    .map(|c| c.brand().trim().to_owned())
                    .unwrap_or_default(),
                per_core_percent: system.cpus().iter().map(|c| c.usage()).collect(),
            };
            part.memory = MemoryInfo {
                total_bytes: system.total_memory(),
                used_bytes: system.used_memory(),
                available_bytes: system.available_memory(),
                swap_total_bytes: system.total_swap(),
                swap_used_bytes: system.used_swap(),
            };
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            part.disks = disks
                .iter()
                .map(|d| {
                    let (inodes_total, inodes_free) = inodes(d.mount_point());
                    DiskInfo {
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
                        inodes_total,
                        inodes_free,
                    }
                })
                .collect();
        }
        #[cfg(windows)]
        if part.disks.is_empty() {
            // sysinfo found none (it reads volumes through calls some
            // systems refuse): the drive letters themselves.
            match crate::win32::disks::drives() {
                Ok(d) => part.disks = d,
                Err(e) => errors.push(probe_error(KIND, e)),
            }
        }
        (part, errors)
    }
}

impl SystemProbe {
    pub fn new() -> Self {
        SystemProbe {
            readers: Some(Readers::new()),
            blocking: Blocking::default(),
        }
    }

    /// Samples on this thread: a first CPU reading, `window` of waiting so
    /// CPU use means something, then the sample.
    pub fn sample_blocking(
        &mut self,
        window: std::time::Duration,
    ) -> (SystemPart, Vec<ProbeError>) {
        let readers = self.readers.get_or_insert_with(Readers::new);
        readers.prime();
        std::thread::sleep(window);
        readers.sample()
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Probe for SystemProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        let mut readers = self.readers.take().unwrap_or_else(Readers::new);
        let done = self
            .blocking
            .run(move || {
                // A fresh reader needs a window before CPU use means anything.
                if !readers.primed {
                    readers.prime();
                    std::thread::sleep(CPU_WINDOW);
                }
                let out = readers.sample();
                (readers, out)
            })
            .await;
        match done {
            Ok((readers, (part, errors))) => {
                self.readers = Some(readers);
                Reading {
                    section: Some(Section::System(Box::new(part))),
                    errors,
                }
            }
            Err(e) => Reading {
                section: None,
                errors: vec![probe_error(KIND, e)],
            },
        }
    }
}

/// Total and free inodes of the file system at `mount`; (0, 0) where the
/// file system has no limit or cannot say.
#[cfg(unix)]
fn inodes(mount: &std::path::Path) -> (u64, u64) {
    rustix::fs::statvfs(mount)
        .map(|s| (s.f_files, s.f_ffree))
        .unwrap_or((0, 0))
}

#[cfg(not(unix))]
fn inodes(_mount: &std::path::Path) -> (u64, u64) {
    (0, 0)
}

fn host(errors: &mut Vec<ProbeError>) -> HostInfo {
    let mut get = |what: &str, r: Result<String, sysinfo::Error>| {
        r.map_err(|e| errors.push(probe_error(KIND, format!("{what}: {e}"))))
            .unwrap_or_default()
    };
    let hostname = get("host name", System::host_name());
    let os_name = get("os name", System::name());
    let os_version = get("os version", System::os_version());
    let kernel_version = get("kernel version", System::kernel_version());
    let uptime_secs = System::uptime()
        .map_err(|e| errors.push(probe_error(KIND, format!("uptime: {e}"))))
        .unwrap_or_default();
    let boot_time_secs = System::boot_time()
        .map_err(|e| errors.push(probe_error(KIND, format!("boot time: {e}"))))
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
        let (p, errors) = probe.sample_blocking(std::time::Duration::from_millis(50));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!p.host.hostname.is_empty());
        assert!(!p.host.kernel_version.is_empty());
        assert!(p.cpu.logical_cores >= 1);
        assert_eq!(p.cpu.per_core_percent.len(), p.cpu.logical_cores as usize);
        assert!(p.memory.total_bytes > 0);
        assert!(p.memory.used_bytes <= p.memory.total_bytes);
        assert!(p.host.uptime_secs > 0);
    }

    #[cfg(unix)]
    #[test]
    fn inodes_of_the_root_file_system() {
        let (total, free) = inodes(std::path::Path::new("/"));
        // coreutils' `stat -f` is the oracle: the same total, and free
        // within what a busy machine creates in between.
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%c %d", "/"])
            .output()
            .expect("stat runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let want: Vec<u64> = text
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        assert_eq!(total, want[0], "total inodes");
        assert!(
            free.abs_diff(want[1]) < 10_000,
            "free {free} vs {}",
            want[1]
        );
        assert!(free <= total, "{free} > {total}");
        // A path that cannot be read says so with (0, 0).
        assert_eq!(inodes(std::path::Path::new("/no/such/mount")), (0, 0));
    }
}
