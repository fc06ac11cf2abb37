//! Probes: read-only samplers of the workstation's state.
//!
//! Each probe reads one area (system, sensors, SMART, OS, printers, network
//! printers, network) on its own interval, under its own hard timeout, and
//! returns a [`Reading`]: its [`Section`] of the snapshot plus any errors.
//! A probe that fails or hangs records a [`ProbeError`]; the rest of the
//! snapshot stands. A hung probe is cancelled, never waited on.
//!
//! [`Latest`] merges readings into the current [`Snapshot`]; the sample loop
//! judges checks on it after every reading and sends it on the snapshot
//! interval.

pub mod cups;
pub mod network;
pub mod os;
pub mod scm;
pub mod sensors;
pub mod smart;
pub mod snmp;
pub mod spooler;
pub mod system;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vitals_proto::domain::{
    Battery, InterfaceInfo, NetworkHealth, OsHealth, PrinterInfo, ProbeError, SmartReport,
    Snapshot, Temperature,
};

pub use vitals_proto::domain::ProbeKind;

use crate::config::{ProbeSettings, Timing};

/// One probe's part of a snapshot.
#[derive(Debug, Clone)]
pub enum Section {
    System(Box<system::SystemPart>),
    Sensors {
        temperatures: Vec<Temperature>,
        batteries: Vec<Battery>,
    },
    Smart(SmartReport),
    Os(OsHealth),
    /// Local queues; replaces the printers with a local source.
    Queues(Vec<PrinterInfo>),
    /// Network printers; replaces the printers read over SNMP or IPP.
    NetworkPrinters(Vec<PrinterInfo>),
    Network {
        interfaces: Vec<InterfaceInfo>,
        health: NetworkHealth,
    },
}

impl Section {
    pub fn apply(self, s: &mut Snapshot) {
        match self {
            Section::System(p) => {
                let p = *p;
                s.host = p.host;
                s.cpu = p.cpu;
                s.memory = p.memory;
                s.disks = p.disks;
            }
            Section::Sensors {
                temperatures,
                batteries,
            } => {
                s.temperatures = temperatures;
                s.batteries = batteries;
            }
            Section::Smart(r) => s.smart = r,
            Section::Os(o) => s.os = o,
            Section::Queues(q) => {
                s.printers.retain(|p| snmp::is_network(&p.source));
                s.printers.extend(q);
            }
            Section::NetworkPrinters(n) => {
                s.printers.retain(|p| !snmp::is_network(&p.source));
                s.printers.extend(n);
            }
            Section::Network { interfaces, health } => {
                s.interfaces = interfaces;
                s.network = health;
            }
        }
    }
}

/// What one run of a probe produced.
#[derive(Debug, Clone)]
pub struct Reading {
    pub section: Option<Section>,
    pub errors: Vec<ProbeError>,
}

impl Reading {
    pub fn ok(section: Section) -> Self {
        Reading {
            section: Some(section),
            errors: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
pub trait Probe: Send {
    /// Which probe it is: its errors, its `[probes]` settings and the
    /// measurements it takes are named by it.
    fn kind(&self) -> ProbeKind;
    /// Reads once. Errors go into the reading, never out of it.
    async fn run(&mut self) -> Reading;
}

/// Every probe the configuration asks for, with its timing.
pub fn build(config: &ProbeSettings, clock_offset: watch::Receiver<Option<i64>>) -> Vec<Scheduled> {
    let all: Vec<Box<dyn Probe>> = vec![
        Box::new(system::SystemProbe::new()),
        Box::new(sensors::SensorsProbe::new()),
        Box::new(smart::SmartProbe::new(config.smart.smartctl.clone())),
        Box::new(os::OsProbe::new(clock_offset)),
        #[cfg(not(windows))]
        Box::new(cups::CupsProbe::new(config.printers.cups.clone())),
        #[cfg(windows)]
        Box::new(spooler::SpoolerProbe),
        Box::new(snmp::SnmpProbe::new(config.printers.network.clone())),
        Box::new(network::NetworkProbe::new(config.network.clone())),
    ];
    all.into_iter()
        .map(|probe| Scheduled {
            timing: config.timing(probe.kind()),
            probe,
        })
        .filter(|s| s.timing.enabled)
        .collect()
}

pub struct Scheduled {
    pub probe: Box<dyn Probe>,
    pub timing: Timing,
}

/// Runs a probe once under its timeout. A probe past its timeout is
/// cancelled and the reading says so.
pub async fn run_with_timeout(probe: &mut dyn Probe, timeout: Duration) -> Reading {
    let kind = probe.kind();
    match tokio::time::timeout(timeout, probe.run()).await {
        Ok(reading) => reading,
        Err(_) => Reading {
            section: None,
            errors: vec![probe_error(
                kind,
                format!(
                    "timed out after {}; cancelled",
                    humantime::format_duration(timeout)
                ),
            )],
        },
    }
}

/// [`run_with_timeout`], with a panic inside the run (a parser of a
/// library fed a malformed answer from a printer or a disk) caught as the
/// run's error: the probe runs again at its next interval instead of its
/// task ending and its last reading standing for ever.
pub async fn run_guarded(probe: &mut dyn Probe, timeout: Duration) -> Reading {
    use futures_util::FutureExt;
    let kind = probe.kind();
    match std::panic::AssertUnwindSafe(run_with_timeout(probe, timeout))
        .catch_unwind()
        .await
    {
        Ok(reading) => reading,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::warn!(probe = %kind, %why, "probe run panicked; it runs again at its next interval");
            Reading {
                section: None,
                errors: vec![probe_error(kind, format!("probe run failed: {why}"))],
            }
        }
    }
}

/// Spawns one task per probe; each sends `(kind, reading)` on its interval
/// until `shutdown` or until the receiver is gone.
pub fn spawn_all(
    probes: Vec<Scheduled>,
    tx: mpsc::Sender<(ProbeKind, Reading)>,
    shutdown: vitals_proto::shutdown::Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    probes
        .into_iter()
        .map(|mut s| {
            let tx = tx.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let started = tokio::time::Instant::now();
                    let reading = run_guarded(s.probe.as_mut(), s.timing.timeout).await;
                    if tx.send((s.probe.kind(), reading)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(started + s.timing.interval) => {}
                        () = shutdown.requested() => return,
                    }
                }
            })
        })
        .collect()
}

/// Runs every probe once, concurrently, and merges the readings.
pub async fn snapshot_once(probes: Vec<Scheduled>) -> Snapshot {
    let mut set = tokio::task::JoinSet::new();
    let mut kinds = std::collections::HashMap::new();
    for mut s in probes {
        let kind = s.probe.kind();
        let task = set.spawn(async move {
            let reading = run_with_timeout(s.probe.as_mut(), s.timing.timeout).await;
            (kind, reading)
        });
        kinds.insert(task.id(), kind);
    }
    let mut latest = Latest::default();
    while let Some(done) = set.join_next().await {
        match done {
            Ok((kind, reading)) => latest.absorb(kind, reading),
            Err(e) => {
                // A panicked probe: its task's id says which it was.
                if let Some(&kind) = kinds.get(&e.id()) {
                    latest.absorb(
                        kind,
                        Reading {
                            section: None,
                            errors: vec![probe_error(kind, format!("probe task failed: {e}"))],
                        },
                    );
                }
            }
        }
    }
    latest.snapshot(vitals_proto::now_ms())
}

/// The current picture: every probe's latest section and errors.
#[derive(Debug, Default)]
pub struct Latest {
    snapshot: Snapshot,
    errors: BTreeMap<ProbeKind, Vec<ProbeError>>,
    /// Probes that have reported at least once.
    seen: Vec<ProbeKind>,
}

impl Latest {
    pub fn absorb(&mut self, name: ProbeKind, reading: Reading) {
        if let Some(section) = reading.section {
            section.apply(&mut self.snapshot);
        }
        self.errors.insert(name, reading.errors);
        if !self.seen.contains(&name) {
            self.seen.push(name);
        }
    }

    pub fn has_reported(&self, name: ProbeKind) -> bool {
        self.seen.contains(&name)
    }

    /// The snapshot as of `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        let mut s = self.snapshot.clone();
        s.taken_at_ms = now_ms;
        s.probe_errors = self.errors.values().flatten().cloned().collect();
        s
    }
}

/// Blocking work for a probe, on the blocking pool. If an earlier run is
/// still stuck there (a hung mount, a wedged driver), no second one is
/// started: the probe reports that instead of piling up threads.
#[derive(Debug, Default, Clone)]
pub(crate) struct Blocking {
    busy: Arc<AtomicBool>,
}

impl Blocking {
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err("the previous run is still hung; not started again".into());
        }
        let busy = self.busy.clone();
        tokio::task::spawn_blocking(move || {
            let out = work();
            busy.store(false, Ordering::Release);
            out
        })
        .await
        .map_err(|e| format!("probe thread failed: {e}"))
    }
}

/// A baseline snapshot (host, CPU, memory, disks) taken on this thread,
/// for tools that need a realistic body without the full probe set.
pub fn system_snapshot(window: Duration) -> Snapshot {
    let mut probe = system::SystemProbe::new();
    let mut s = Snapshot {
        taken_at_ms: vitals_proto::now_ms(),
        ..Default::default()
    };
    let (part, errors) = probe.sample_blocking(window);
    Section::System(Box::new(part)).apply(&mut s);
    s.probe_errors = errors;
    s
}

/// A supply's level against its capacity, 0 to 100, as the Printer MIB
/// and PWG 5100.13 give them; `None` where either is unknown (both use
/// negative values for "unknown" and "some left").
pub(crate) fn level_percent(level: Option<i32>, max: Option<i32>) -> Option<f32> {
    match (level, max) {
        (Some(l), Some(m)) if l >= 0 && m > 0 => Some((l as f32 * 100.0 / m as f32).min(100.0)),
        _ => None,
    }
}

pub(crate) fn probe_error(probe: ProbeKind, message: impl std::fmt::Display) -> ProbeError {
    ProbeError {
        probe: probe.as_str().to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe whose library panics on every other answer.
    struct Fragile(u32);

    #[async_trait::async_trait]
    impl Probe for Fragile {
        fn kind(&self) -> ProbeKind {
            ProbeKind::Printers
        }
        async fn run(&mut self) -> Reading {
            self.0 += 1;
            if self.0 % 2 == 1 {
                let data = [1u8, 2, 3];
                let len = usize::from(self.0 as u8) + 30_000;
                // As a parser trusting a length from the wire would.
                let _ = std::hint::black_box(&data[..len]);
            }
            Reading {
                section: None,
                errors: Vec::new(),
            }
        }
    }

    /// A run that panics becomes that run's error, and the probe goes on
    /// at its next interval.
    #[tokio::test]
    async fn a_panicking_run_is_an_error_and_the_probe_goes_on() {
        let (tx, mut rx) = mpsc::channel(8);
        let (_trigger, stop) = vitals_proto::shutdown::channel();
        let probe = Scheduled {
            probe: Box::new(Fragile(0)),
            timing: crate::config::Timing {
                interval: Duration::from_millis(10),
                timeout: Duration::from_secs(5),
                enabled: true,
            },
        };
        let _tasks = spawn_all(vec![probe], tx, stop);
        let (kind, first) = rx.recv().await.expect("first reading");
        assert_eq!(kind, ProbeKind::Printers);
        assert_eq!(first.errors.len(), 1);
        assert!(
            first.errors[0]
                .message
                .contains("probe run failed: range end index"),
            "{:?}",
            first.errors
        );
        let (_, second) = rx.recv().await.expect("the probe ran again");
        assert!(second.errors.is_empty());
    }

    /// A probe that never finishes, as a wedged driver or mount would.
    struct Hung {
        blocking: Blocking,
        in_kernel: bool,
    }

    #[async_trait::async_trait]
    impl Probe for Hung {
        fn kind(&self) -> ProbeKind {
            ProbeKind::Smart
        }
        async fn run(&mut self) -> Reading {
            if self.in_kernel {
                let r = self
                    .blocking
                    .run(|| std::thread::sleep(Duration::from_millis(500)))
                    .await;
                return Reading {
                    section: None,
                    errors: r
                        .err()
                        .map(|e| probe_error(ProbeKind::Smart, e))
                        .into_iter()
                        .collect(),
                };
            }
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_hung_probe_is_cancelled_and_reported() {
        let mut p = Hung {
            blocking: Blocking::default(),
            in_kernel: false,
        };
        let started = std::time::Instant::now();
        let r = run_with_timeout(&mut p, Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(r.section.is_none());
        assert_eq!(r.errors[0].probe, "smart");
        assert!(
            r.errors[0]
                .message
                .contains("timed out after 100ms; cancelled")
        );
    }

    #[tokio::test]
    async fn stuck_blocking_work_is_not_started_twice() {
        let mut p = Hung {
            blocking: Blocking::default(),
            in_kernel: true,
        };
        // The first run times out while its thread is still stuck...
        let first = run_with_timeout(&mut p, Duration::from_millis(50)).await;
        assert!(first.errors[0].message.contains("timed out"));
        // ...so the next one refuses to pile another thread on it.
        let second = run_with_timeout(&mut p, Duration::from_millis(50)).await;
        assert!(
            second.errors[0].message.contains("still hung"),
            "{:?}",
            second.errors
        );
    }

    #[test]
    fn latest_keeps_the_last_good_section_and_current_errors() {
        let mut l = Latest::default();
        l.absorb(
            ProbeKind::Os,
            Reading::ok(Section::Os(OsHealth {
                reboot_required: true,
                ..Default::default()
            })),
        );
        l.absorb(
            ProbeKind::Os,
            Reading {
                section: None,
                errors: vec![probe_error(ProbeKind::Os, "timed out after 10s; cancelled")],
            },
        );
        let s = l.snapshot(5);
        assert_eq!(s.taken_at_ms, 5);
        assert!(s.os.reboot_required, "the last reading stands");
        assert_eq!(s.probe_errors.len(), 1);
        l.absorb(ProbeKind::Os, Reading::ok(Section::Os(OsHealth::default())));
        let s = l.snapshot(6);
        assert!(!s.os.reboot_required);
        assert!(s.probe_errors.is_empty(), "errors are current, not sticky");
        assert!(l.has_reported(ProbeKind::Os) && !l.has_reported(ProbeKind::System));
    }

    #[test]
    fn printer_sections_replace_only_their_own_source() {
        let printer = |name: &str, source: &str| PrinterInfo {
            name: name.into(),
            source: source.into(),
            ..Default::default()
        };
        let mut s = Snapshot::default();
        Section::Queues(vec![printer("Frontdesk", "cups")]).apply(&mut s);
        Section::NetworkPrinters(vec![printer("Dispatch HP", "snmp")]).apply(&mut s);
        Section::Queues(vec![printer("Lobby", "cups")]).apply(&mut s);
        let names: Vec<&str> = s.printers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["Dispatch HP", "Lobby"]);
    }
}
