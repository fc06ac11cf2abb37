//! Diagnostics on request: the catalog in [`vitals_proto::diag`], run by
//! the agent when the collector relays a specialist's request.
//!
//! Everything here is read-only and reuses the probes. A request is parsed
//! again against the catalog (the agent runs nothing else), waits briefly
//! for one of its slots (`[diagnostics] max_running`) or is refused as
//! busy, runs under its
//! timeout, reports progress as it goes, and ends with one result whose
//! size is bounded. A cancel from the collector stops it. The agent itself
//! runs at low CPU and I/O priority (its service unit), and so do these.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::info;
use vitals_proto::diag::{Diagnostic, MAX_DEADLINE, MAX_OUTPUT_BYTES, NetworkParams};
use vitals_proto::domain::{DiskInfo, OsHealth, PrinterInfo, ProbeKind, Snapshot};

use crate::config::{KeyService, ProbeSettings};
use crate::probes::{self, Probe, Reading, Section};

/// How long a request waits for a free slot before it is refused as busy.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Directory entries the biggest-directories walk visits at most.
const WALK_LIMIT: u64 = 200_000;

/// A request from the collector, and the end of a run: the domain types
/// both sides share.
pub use vitals_proto::diag::{DiagnosticRequest as Request, DiagnosticResult as Outcome};

/// What goes back to the collector.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Progress { id: u64, text: String },
    Done { id: u64, result: Outcome },
}

/// A run that ended without a result of its own.
fn failed(error: String, started: Instant) -> Outcome {
    Outcome {
        ok: false,
        error,
        run_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    }
}

/// Runs requests; one per agent.
pub struct Runner {
    settings: Arc<ProbeSettings>,
    clock: watch::Receiver<Option<i64>>,
    slots: Arc<Semaphore>,
    max_running: usize,
    running: Arc<std::sync::Mutex<HashMap<u64, AbortHandle>>>,
    out: mpsc::Sender<Update>,
}

impl Runner {
    pub fn new(
        settings: ProbeSettings,
        clock: watch::Receiver<Option<i64>>,
        out: mpsc::Sender<Update>,
        max_running: usize,
    ) -> Self {
        Runner {
            settings: Arc::new(settings),
            clock,
            max_running,
            slots: Arc::new(Semaphore::new(max_running)),
            running: Arc::default(),
            out,
        }
    }

    /// Starts a request; its updates arrive on the runner's channel.
    pub fn start(&self, r: Request) {
        let started = Instant::now();
        let out = self.out.clone();
        let diagnostic = match Diagnostic::parse(&r.kind, &r.params) {
            Ok(d) => d,
            Err(why) => {
                let result = failed(format!("refused: {why}"), started);
                tokio::spawn(async move { out.send(Update::Done { id: r.id, result }).await });
                return;
            }
        };
        let (settings, clock, slots) = (
            self.settings.clone(),
            self.clock.clone(),
            self.slots.clone(),
        );
        let running = self.running.clone();
        let max_running = self.max_running;
        let id = r.id;
        let timeout = r.timeout.min(MAX_DEADLINE);
        let task = tokio::spawn(async move {
            let permit = match tokio::time::timeout(QUEUE_WAIT, slots.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    let result = failed(
                        format!("busy: {max_running} diagnostics already running on this endpoint"),
                        started,
                    );
                    let _ = out.send(Update::Done { id, result }).await;
                    return;
                }
            };
            info!(id, kind = %diagnostic.kind(), "diagnostic started");
            let progress = Progress {
                id,
                out: out.clone(),
            };
            let run = run(&diagnostic, &settings, clock, &progress);
            let mut result = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(report)) => report.into_outcome(started),
                Ok(Err(e)) => failed(e, started),
                Err(_) => failed(
                    format!("timed out after {}", humantime::format_duration(timeout)),
                    started,
                ),
            };
            if result.text.len() + result.json.len() > MAX_OUTPUT_BYTES {
                result = failed(
                    format!(
                        "output too large ({} bytes; at most {MAX_OUTPUT_BYTES})",
                        result.text.len() + result.json.len()
                    ),
                    started,
                );
            }
            drop(permit);
            info!(
                id,
                ok = result.ok,
                run_ms = result.run_ms,
                "diagnostic finished"
            );
            let _ = out.send(Update::Done { id, result }).await;
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task.abort_handle());
    }

    /// Stops a request (its specialist went away, or its deadline passed).
    pub fn cancel(&self, id: u64) {
        let handle = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(h) = handle {
            h.abort();
            info!(id, "diagnostic cancelled");
            let out = self.out.clone();
            tokio::spawn(async move {
                let result = Outcome {
                    error: "cancelled".into(),
                    ..Default::default()
                };
                let _ = out.send(Update::Done { id, result }).await;
            });
        }
    }

    /// How many are running or waiting for a slot.
    pub fn active(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

struct Progress {
    id: u64,
    out: mpsc::Sender<Update>,
}

impl Progress {
    async fn say(&self, text: impl Into<String>) {
        let _ = self
            .out
            .send(Update::Progress {
                id: self.id,
                text: text.into(),
            })
            .await;
    }
}

/// A finished run: text for people and the same, structured.
struct Report {
    text: String,
    json: serde_json::Value,
}

impl Report {
    fn into_outcome(self, started: Instant) -> Outcome {
        Outcome {
            ok: true,
            error: String::new(),
            text: self.text,
            json: self.json.to_string(),
            run_ms: started.elapsed().as_millis() as u64,
        }
    }
}

async fn run(
    d: &Diagnostic,
    settings: &ProbeSettings,
    clock: watch::Receiver<Option<i64>>,
    progress: &Progress,
) -> Result<Report, String> {
    match d {
        Diagnostic::Network(p) => network(p, settings, progress).await,
        Diagnostic::Printer { name } => printer(name, settings, progress).await,
        Diagnostic::Disk { root, top } => disk(root, *top, settings, progress).await,
        Diagnostic::Os => os(clock, progress).await,
        Diagnostic::Snapshot => {
            progress.say("running every probe").await;
            let s = probes::snapshot_once(probes::build(settings, clock)).await;
            Ok(snapshot_report(&s))
        }
        Diagnostic::Full(p) => {
            let mut text = String::new();
            let mut json = serde_json::Map::new();
            let parts: [(&str, Result<Report, String>); 4] = [
                ("network", Box::pin(network(p, settings, progress)).await),
                ("printers", Box::pin(printers(settings, progress)).await),
                ("disk", Box::pin(disk("/", 10, settings, progress)).await),
                ("os", Box::pin(os(clock.clone(), progress)).await),
            ];
            for (name, part) in parts {
                match part {
                    Ok(r) => {
                        text.push_str(&format!("== {name}\n{}\n", r.text));
                        json.insert(name.into(), r.json);
                    }
                    Err(e) => {
                        text.push_str(&format!("== {name}\nfailed: {e}\n\n"));
                        json.insert(name.into(), serde_json::json!({ "error": e }));
                    }
                }
            }
            progress.say("running every probe").await;
            let s = probes::snapshot_once(probes::build(settings, clock)).await;
            text.push_str(&format!("== snapshot\n{}", snapshot_report(&s).text));
            json.insert("snapshot".into(), to_json(&s));
            Ok(Report {
                text,
                json: serde_json::Value::Object(json),
            })
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn errors_text(r: &Reading) -> String {
    r.errors
        .iter()
        .map(|e| format!("probe error: {}\n", e.message))
        .collect()
}

async fn network(
    p: &NetworkParams,
    settings: &ProbeSettings,
    progress: &Progress,
) -> Result<Report, String> {
    let mut net = settings.network.clone();
    net.dns = p.names.clone();
    // The collector (added to the key services by the agent) stays: it is
    // the path this diagnostic came in on.
    net.services.retain(|s| s.name == "collector");
    for t in &p.targets {
        net.services.push(KeyService {
            name: t.clone(),
            address: t.clone(),
        });
    }
    // The gateway is probed only where the agent's settings allow it.
    net.ping_count = p.count;
    let gateway = if net.ping_gateway {
        format!("{} gateway echo probes", p.count)
    } else {
        "gateway not probed (this agent's settings)".to_owned()
    };
    progress
        .say(format!(
            "{gateway}; {} lookups; {} connects",
            net.dns.len(),
            net.services.len()
        ))
        .await;
    let mut probe = probes::network::NetworkProbe::new(net.clone());
    let budget = net.timeout * (p.count + 2) + Duration::from_secs(5);
    let reading = probes::run_with_timeout(&mut probe, budget).await;
    let mut s = Snapshot::default();
    let errors = errors_text(&reading);
    if let Some(section) = reading.section {
        section.apply(&mut s);
    }
    let text = format!("{errors}{}", vitals_proto::report::network_text(&s));
    Ok(Report {
        text,
        json: serde_json::json!({
            "interfaces": to_json(&s.interfaces),
            "health": to_json(&s.network),
            "errors": to_json(&reading.errors),
        }),
    })
}

/// Every printer the agent knows: CUPS queues and configured network
/// printers.
async fn read_printers(settings: &ProbeSettings) -> (Vec<PrinterInfo>, Vec<String>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut cups = probes::cups::CupsProbe::new(settings.printers.cups.clone());
    let mut snmp = probes::snmp::SnmpProbe::new(settings.printers.network.clone());
    let probes: [(&mut dyn Probe, Duration); 2] = [
        (&mut cups, settings.timing(ProbeKind::Printers).timeout),
        (
            &mut snmp,
            settings.timing(ProbeKind::NetworkPrinters).timeout,
        ),
    ];
    for (probe, timeout) in probes {
        let r = probes::run_with_timeout(probe, timeout).await;
        errors.extend(r.errors.iter().map(|e| e.message.clone()));
        if let Some(Section::Queues(q) | Section::NetworkPrinters(q)) = r.section {
            found.extend(q);
        }
    }
    (found, errors)
}

async fn printer(
    name: &str,
    settings: &ProbeSettings,
    progress: &Progress,
) -> Result<Report, String> {
    progress
        .say("reading CUPS queues and network printers")
        .await;
    let (all, errors) = read_printers(settings).await;
    let Some(p) = all.iter().find(|p| p.name == name) else {
        let known: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        let mut why = format!(
            "no printer \"{name}\" (known: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        if !errors.is_empty() {
            why.push_str(&format!("; {}", errors.join("; ")));
        }
        return Err(why);
    };
    let mut s = Snapshot::default();
    s.printers.push(p.clone());
    Ok(Report {
        text: vitals_proto::report::printers_text(&s),
        json: to_json(p),
    })
}

async fn printers(settings: &ProbeSettings, progress: &Progress) -> Result<Report, String> {
    progress
        .say("reading CUPS queues and network printers")
        .await;
    let (all, errors) = read_printers(settings).await;
    let s = Snapshot {
        printers: all,
        ..Default::default()
    };
    let mut text = vitals_proto::report::printers_text(&s);
    for e in &errors {
        text.push_str(&format!("probe error: {e}\n"));
    }
    Ok(Report {
        text,
        json: serde_json::json!({ "printers": to_json(&s.printers), "errors": errors }),
    })
}

#[derive(Debug, Serialize)]
struct DirSize {
    path: String,
    bytes: u64,
}

async fn disk(
    root: &str,
    top: u32,
    settings: &ProbeSettings,
    progress: &Progress,
) -> Result<Report, String> {
    progress.say("reading disks").await;
    let mut system = probes::system::SystemProbe::new();
    let reading =
        probes::run_with_timeout(&mut system, settings.timing(ProbeKind::System).timeout).await;
    let mut s = Snapshot::default();
    if let Some(section) = reading.section {
        section.apply(&mut s);
    }
    let disk: Option<DiskInfo> = s
        .disks
        .iter()
        .filter(|d| Path::new(root).starts_with(&d.mount_point))
        .max_by_key(|d| d.mount_point.len())
        .cloned();
    progress.say("reading SMART").await;
    let mut smart = probes::smart::SmartProbe::new(settings.smart.smartctl.clone());
    let reading =
        probes::run_with_timeout(&mut smart, settings.timing(ProbeKind::Smart).timeout).await;
    if let Some(section) = reading.section {
        section.apply(&mut s);
    }
    progress
        .say(format!("measuring the biggest directories under {root}"))
        .await;
    let walk_root = PathBuf::from(root);
    let (dirs, visited, complete) =
        tokio::task::spawn_blocking(move || biggest_dirs(&walk_root, top as usize))
            .await
            .map_err(|e| format!("directory walk failed: {e}"))??;
    let mut text = String::new();
    match &disk {
        Some(d) => text.push_str(&format!(
            "{} ({}) on {}: {:.1}% used, {} free of {}\n",
            d.mount_point,
            d.file_system,
            d.name,
            d.used_percent(),
            human(d.available_bytes),
            human(d.total_bytes)
        )),
        None => text.push_str(&format!("no disk found holding {root}\n")),
    }
    if s.smart.available {
        for dev in &s.smart.devices {
            text.push_str(&format!(
                "SMART {}: {}\n",
                dev.device,
                match dev.passed {
                    Some(true) => "passed",
                    Some(false) => "FAILING",
                    None => "no verdict",
                }
            ));
        }
    } else {
        text.push_str(&format!("SMART unavailable: {}\n", s.smart.reason));
    }
    text.push_str(&format!(
        "\nBiggest directories under {root} ({visited} entries{}):\n",
        if complete {
            ""
        } else {
            ", walk stopped at its limit"
        }
    ));
    for d in &dirs {
        text.push_str(&format!("{:>10}  {}\n", human(d.bytes), d.path));
    }
    Ok(Report {
        text,
        json: serde_json::json!({
            "disk": to_json(&disk),
            "smart": to_json(&s.smart),
            "biggest": to_json(&dirs),
            "entries_visited": visited,
            "complete": complete,
        }),
    })
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The `top` biggest directories directly under `root`, by the size of
/// everything below them, staying on `root`'s file system and visiting at
/// most [`WALK_LIMIT`] entries. Returns them, the entries visited, and
/// whether the walk finished.
fn biggest_dirs(root: &Path, top: usize) -> Result<(Vec<DirSize>, u64, bool), String> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let device = device_of(&meta);
    let mut visited = 0u64;
    let mut sizes = Vec::new();
    let children = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for child in children.flatten() {
        let Ok(m) = child.path().symlink_metadata() else {
            continue;
        };
        if !m.is_dir() || device_of(&m) != device {
            continue;
        }
        let bytes = dir_size(&child.path(), device, &mut visited);
        sizes.push(DirSize {
            path: child.path().display().to_string(),
            bytes,
        });
        if visited >= WALK_LIMIT {
            break;
        }
    }
    sizes.sort_by_key(|d| std::cmp::Reverse(d.bytes));
    sizes.truncate(top);
    Ok((sizes, visited, visited < WALK_LIMIT))
}

fn dir_size(dir: &Path, device: u64, visited: &mut u64) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            *visited += 1;
            if *visited >= WALK_LIMIT {
                return total;
            }
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                if device_of(&m) == device {
                    stack.push(e.path());
                }
            } else {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(unix)]
fn device_of(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.dev()
}

#[cfg(not(unix))]
fn device_of(_m: &std::fs::Metadata) -> u64 {
    0
}

async fn os(clock: watch::Receiver<Option<i64>>, progress: &Progress) -> Result<Report, String> {
    progress
        .say("reading services, reboot markers and sessions")
        .await;
    let mut probe = probes::os::OsProbe::new(clock);
    let reading = probes::run_with_timeout(&mut probe, Duration::from_secs(10)).await;
    let mut s = Snapshot::default();
    let errors = errors_text(&reading);
    if let Some(section) = reading.section {
        section.apply(&mut s);
    }
    progress.say("reading recent critical log entries").await;
    let log = critical_log().await;
    let mut text = format!(
        "{errors}{}",
        vitals_proto::report::os_text(&s, vitals_proto::now_ms())
    );
    text.push_str("\nRecent critical log entries:\n");
    match &log {
        Ok(lines) if lines.is_empty() => text.push_str("  none\n"),
        Ok(lines) => {
            for l in lines {
                text.push_str(&format!("  {l}\n"));
            }
        }
        Err(e) => text.push_str(&format!("  unavailable: {e}\n")),
    }
    let os: &OsHealth = &s.os;
    Ok(Report {
        text,
        json: serde_json::json!({
            "os": to_json(os),
            "host": to_json(&s.host),
            "critical_log": match &log { Ok(l) => to_json(l), Err(e) => serde_json::json!({ "error": e }) },
            "errors": to_json(&reading.errors),
        }),
    })
}

/// The last 50 critical and error entries of the System event log.
#[cfg(windows)]
async fn critical_log() -> Result<Vec<String>, String> {
    let entries = tokio::task::spawn_blocking(|| crate::win32::eventlog::critical_entries(50));
    let entries = tokio::time::timeout(Duration::from_secs(10), entries)
        .await
        .map_err(|_| "the event log did not answer within 10s".to_owned())?
        .map_err(|e| format!("event log reader: {e}"))??;
    Ok(entries.iter().map(EventEntry::line).collect())
}

/// One event log entry, as the System log's XML gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventEntry {
    /// `TimeCreated/@SystemTime`, ISO 8601 UTC.
    pub time: String,
    /// 1 critical, 2 error, 3 warning, 4 information.
    pub level: u8,
    pub provider: String,
    pub event_id: u32,
    /// The publisher's message, where it could be formatted.
    pub message: String,
}

impl EventEntry {
    pub fn line(&self) -> String {
        let level = match self.level {
            1 => "critical",
            2 => "error",
            3 => "warning",
            _ => "information",
        };
        let time = self
            .time
            .split('.')
            .next()
            .unwrap_or(&self.time)
            .trim_end_matches('Z');
        let mut line = format!("{time} {level} {} {}", self.provider, self.event_id);
        if !self.message.is_empty() {
            line.push_str(": ");
            line.push_str(&self.message);
        }
        line
    }
}

/// The fields of an event's XML (`EvtRender` with `EvtRenderEventXml`)
/// the log lines show; `None` when it is not an event.
pub fn parse_event_xml(xml: &str) -> Option<EventEntry> {
    let system = xml.split("<System>").nth(1)?.split("</System>").next()?;
    let attr = |element: &str, name: &str| -> Option<String> {
        let start = system.find(&format!("<{element} "))?;
        let rest = &system[start..];
        let rest = &rest[..rest.find('>')?];
        let key = format!("{name}='");
        let (quote, at) = match rest.find(&key) {
            Some(at) => ('\'', at + key.len()),
            None => ('"', rest.find(&format!("{name}=\""))? + name.len() + 2),
        };
        let value = &rest[at..];
        Some(value[..value.find(quote)?].to_owned())
    };
    let text = |element: &str| -> Option<String> {
        let open = system.find(&format!("<{element}"))?;
        let rest = &system[open..];
        let rest = &rest[rest.find('>')? + 1..];
        Some(rest[..rest.find('<')?].trim().to_owned())
    };
    Some(EventEntry {
        time: attr("TimeCreated", "SystemTime").unwrap_or_default(),
        level: text("Level").and_then(|l| l.parse().ok()).unwrap_or(0),
        provider: attr("Provider", "Name")?,
        event_id: text("EventID").and_then(|l| l.parse().ok()).unwrap_or(0),
        message: String::new(),
    })
}

/// The last 50 journal entries at priority critical or worse.
#[cfg(not(windows))]
async fn critical_log() -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("journalctl")
        .args([
            "-p",
            "0..2",
            "-n",
            "50",
            "--no-pager",
            "-o",
            "short-iso",
            "-q",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .map_err(|_| "journalctl did not answer within 10s".to_owned())?
        .map_err(|e| format!("journalctl: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("journalctl: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn snapshot_report(s: &Snapshot) -> Report {
    Report {
        text: vitals_proto::report::snapshot_text(s, vitals_proto::now_ms()),
        json: to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn system_log_entries_from_their_xml() {
        // Recorded from a workstation's System log (EvtRenderEventXml).
        let xml = "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>\
            <Provider Name='Service Control Manager' Guid='{555908d1-a6d7-4695-8e1e-26931d2012f4}' \
            EventSourceName='Service Control Manager'/><EventID Qualifiers='49152'>7031</EventID>\
            <Version>0</Version><Level>2</Level><Task>0</Task><Opcode>0</Opcode>\
            <Keywords>0x8080000000000000</Keywords><TimeCreated SystemTime='2026-11-30T14:02:11.5283651Z'/>\
            <EventRecordID>48213</EventRecordID><Channel>System</Channel><Computer>WS-0412</Computer>\
            </System><EventData><Data Name='param1'>Print Spooler</Data></EventData></Event>";
        let mut e = parse_event_xml(xml).expect("an event");
        assert_eq!(
            (e.time.as_str(), e.level, e.provider.as_str(), e.event_id),
            (
                "2026-11-30T14:02:11.5283651Z",
                2,
                "Service Control Manager",
                7031
            )
        );
        e.message = "The Print Spooler service terminated unexpectedly.".into();
        assert_eq!(
            e.line(),
            "2026-11-30T14:02:11 error Service Control Manager 7031: The Print Spooler service terminated unexpectedly."
        );
        let double = r#"<Event><System><Provider Name="disk"/><EventID>7</EventID><Level>1</Level><TimeCreated SystemTime="2026-11-30T01:00:00.000Z"/></System></Event>"#;
        let e = parse_event_xml(double).expect("an event");
        assert_eq!((e.provider.as_str(), e.event_id, e.level), ("disk", 7, 1));
        assert_eq!(e.line(), "2026-11-30T01:00:00 critical disk 7");
        assert_eq!(parse_event_xml("<Events/>"), None);
    }

    #[test]
    fn biggest_directories_are_found_and_bounded() {
        let root = std::env::temp_dir().join(format!("vitals-diag-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, bytes) in [
            ("big/sub", 300_000usize),
            ("medium", 100_000),
            ("small", 10),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("f"), vec![0u8; bytes]).unwrap();
        }
        std::fs::write(root.join("loose-file"), vec![0u8; 1_000_000]).unwrap();
        let (dirs, visited, complete) = biggest_dirs(&root, 2).unwrap();
        let names: Vec<(&str, u64)> = dirs
            .iter()
            .map(|d| {
                let name = std::path::Path::new(&d.path).file_name().unwrap();
                (name.to_str().unwrap(), d.bytes)
            })
            .collect();
        assert_eq!(names, vec![("big", 300_000), ("medium", 100_000)]);
        assert!(complete && visited >= 4, "{visited}");
        assert!(biggest_dirs(&root.join("loose-file"), 2).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn requests_outside_the_catalog_are_refused_without_running() {
        let (tx, mut rx) = mpsc::channel(8);
        let (_clock_tx, clock) = watch::channel(None);
        let runner = Runner::new(ProbeSettings::default(), clock, tx, 2);
        runner.start(Request {
            id: 7,
            kind: "shell".into(),
            params: BTreeMap::from([("cmd".into(), "id".into())]),
            timeout: Duration::from_secs(5),
        });
        match rx.recv().await {
            Some(Update::Done { id: 7, result }) => {
                assert!(!result.ok);
                assert!(
                    result
                        .error
                        .starts_with("refused: unknown diagnostic \"shell\""),
                    "{}",
                    result.error
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(runner.active(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_run_says_so() {
        let (tx, mut rx) = mpsc::channel(64);
        let (_clock_tx, clock) = watch::channel(None);
        let runner = Runner::new(ProbeSettings::default(), clock, tx, 2);
        // A disk walk of the whole system takes a while; cancel it at once.
        runner.start(Request {
            id: 9,
            kind: "disk".into(),
            params: BTreeMap::from([("root".into(), "/".into())]),
            timeout: Duration::from_secs(60),
        });
        runner.cancel(9);
        loop {
            match rx.recv().await {
                Some(Update::Done { id: 9, result }) => {
                    assert_eq!(result.error, "cancelled");
                    break;
                }
                Some(Update::Progress { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(runner.active(), 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_request_beyond_the_slots_waits_briefly_then_is_refused_as_busy() {
        use std::os::unix::fs::PermissionsExt;
        // A smartctl that takes its time keeps a disk diagnostic busy.
        let dir = std::env::temp_dir().join(format!("vitals-diag-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let smartctl = dir.join("smartctl");
        std::fs::write(&smartctl, "#!/bin/sh\nsleep 10\n").unwrap();
        std::fs::set_permissions(&smartctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut settings = ProbeSettings::default();
        settings.smart.smartctl = smartctl;
        let (tx, mut rx) = mpsc::channel(64);
        let (_clock_tx, clock) = watch::channel(None);
        let runner = Runner::new(settings, clock, tx, 1);
        runner.start(Request {
            id: 1,
            kind: "disk".into(),
            params: BTreeMap::from([("root".into(), dir.display().to_string())]),
            timeout: Duration::from_secs(30),
        });
        // Wait until the first holds its slot (it reports progress then).
        loop {
            if let Some(Update::Progress { id: 1, .. }) = rx.recv().await {
                break;
            }
        }
        let asked = Instant::now();
        runner.start(Request {
            id: 2,
            kind: "os".into(),
            params: BTreeMap::new(),
            timeout: Duration::from_secs(30),
        });
        let refused = loop {
            match rx.recv().await {
                Some(Update::Done { id: 2, result }) => break result,
                Some(_) => {}
                None => panic!("runner gone"),
            }
        };
        assert!(asked.elapsed() >= QUEUE_WAIT, "{:?}", asked.elapsed());
        assert_eq!(
            refused.error,
            "busy: 1 diagnostics already running on this endpoint"
        );
        runner.cancel(1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
