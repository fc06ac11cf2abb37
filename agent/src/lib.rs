//! The Vitals agent.
//!
//! - [`probes`] sample the workstation into a domain `Snapshot`, one task
//!   per probe, each under its own interval and timeout.
//! - [`checks`] judge the collector's policy on the current picture and
//!   turn state changes into fault events.
//! - [`link`] holds the stream to the collector (the agent's only gRPC
//!   edge), numbers messages and keeps them in its outbox until
//!   acknowledged.
//! - [`diag`] runs the diagnostics a specialist asks for through the link.
//! - [`seq`] is the sequence counter, monotonic across restarts.
//! - [`enrollment`] joins the fleet with a token (the key made here).
//! - [`config`] is `agent.toml`.
//! - `win32` (Windows only) holds the Win32 calls behind the Windows
//!   readers and service: the one module allowed unsafe code.
//!
//! [`run`] wires them: each probe runs on its own interval under its own
//! timeout; the sample loop judges the policy after every reading (fault
//! events leave at once) and sends a snapshot on every snapshot interval
//! (the collector's welcome may change it) to the link task.

pub mod checks;
pub mod config;
pub mod diag;
pub mod enrollment;
pub mod link;
pub mod logging;
pub mod paths;
pub mod probes;
pub mod seq;
#[cfg(windows)]
#[allow(unsafe_code)]
pub mod win32;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use vitals_proto::identity::{EndpointId, Identity};

use crate::checks::Checks;
use crate::config::AgentConfig;
use crate::link::{FromCollector, Link, LinkError, Outgoing};
use crate::probes::{Latest, Scheduled};
use vitals_proto::policy::Policy;
use vitals_proto::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {message}")]
    Certificate { path: String, message: String },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Reads the endpoint ID from the agent's own certificate.
pub fn endpoint_id_from_cert(path: &Path) -> Result<EndpointId, AgentError> {
    let err = |message: String| AgentError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| err(format!("not a PEM certificate: {e}")))?;
    match Identity::from_cert_der(&pem.contents) {
        Ok(Identity::Endpoint(id)) => Ok(id),
        Ok(other) => Err(err(format!(
            "certificate is for {other}, not an agent (endpoint) certificate"
        ))),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Checks the TLS files a configuration names (the CA holds a certificate,
/// the key is a private key, the certificate names an endpoint) and
/// returns the endpoint ID, so a bad file is reported at start-up rather
/// than as a failed connection later.
pub fn check_tls_files(config: &AgentConfig) -> Result<EndpointId, AgentError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |path: &Path, message: String| AgentError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let ca = &config.tls.ca;
    let roots = CertificateDer::pem_file_iter(ca)
        .map_err(|e| err(ca, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(ca, format!("bad PEM: {e}")))?;
    if roots.is_empty() {
        return Err(err(ca, "no CA certificate in file".into()));
    }
    let key = &config.tls.key;
    PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(key, format!("no usable private key: {e}")))?;
    endpoint_id_from_cert(&config.tls.cert)
}

/// Runs the agent until shutdown is requested.
pub async fn run(config: AgentConfig, shutdown: Shutdown) -> Result<(), AgentError> {
    let endpoint_id = check_tls_files(&config)?;
    let (interval_tx, interval_rx) = watch::channel(config.link.snapshot_interval);
    // Until the collector sends its own, the shipped default applies.
    let (policy_tx, policy_rx) = watch::channel(Policy::default_policy());
    let (clock_tx, clock_rx) = watch::channel(None);
    let (resync_tx, resync_rx) = watch::channel(None);
    let settings = probe_settings(&config);
    let probes = probes::build(&settings, clock_rx.clone());
    let (diag_tx, diag_rx) = mpsc::channel(64);
    let diagnostics = config
        .diagnostics
        .enabled
        .then(|| diag::Runner::new(settings, clock_rx, diag_tx, config.diagnostics.max_running));
    let mut link = Link::new(
        config,
        endpoint_id.clone(),
        FromCollector {
            interval: interval_tx,
            policy: policy_tx,
            clock_offset: clock_tx,
            resync: resync_tx,
        },
    )?;
    if let Some(runner) = diagnostics {
        link.serve_diagnostics(runner, diag_rx);
    }
    info!(endpoint = %endpoint_id, probes = probes.len(), "agent starting");
    let (out_tx, out_rx) = mpsc::channel(64);
    let sampler = tokio::spawn(sample_loop(
        probes,
        out_tx,
        interval_rx,
        policy_rx,
        resync_rx,
        shutdown.clone(),
    ));
    let result = link.run(out_rx, shutdown).await;
    sampler.abort();
    Ok(result?)
}

/// The probe settings, with the collector itself added to the key
/// services unless `agent.toml` already names it.
pub fn probe_settings(config: &AgentConfig) -> config::ProbeSettings {
    let mut settings = config.probe_settings();
    if let Ok(uri) = config.collector.parse::<tonic::transport::Uri>()
        && let (Some(host), Some(port)) = (uri.host(), uri.port_u16())
    {
        let address = format!("{host}:{port}");
        if !settings
            .network
            .services
            .iter()
            .any(|s| s.address == address)
        {
            settings.network.services.push(config::KeyService {
                name: "collector".into(),
                address,
            });
        }
    }
    settings
}

/// Runs every probe on its own interval; after each reading, judges the
/// policy on the current picture and hands fault events to the link at
/// once, a raise followed by the snapshot it was judged on. Sends the whole
/// snapshot on the snapshot interval, the first as soon as the system
/// probe has reported.
async fn sample_loop(
    probes: Vec<Scheduled>,
    tx: mpsc::Sender<Outgoing>,
    mut interval: watch::Receiver<Duration>,
    mut policy: watch::Receiver<Policy>,
    mut resync: watch::Receiver<Option<link::Resync>>,
    mut shutdown: Shutdown,
) {
    let mut checks = Checks::new(policy.borrow_and_update().clone());
    let (readings_tx, mut readings) = mpsc::channel(32);
    let tasks = probes::spawn_all(probes, readings_tx, shutdown.clone());
    let _abort = AbortOnDrop(tasks);
    let mut latest = Latest::default();
    let mut logged: HashMap<probes::ProbeKind, Vec<String>> = HashMap::new();
    let mut next_snapshot: Option<tokio::time::Instant> = None;
    loop {
        let deadline = next_snapshot;
        tokio::select! {
            got = readings.recv() => {
                let Some((name, reading)) = got else { return };
                log_changes(&mut logged, name, &reading);
                latest.absorb(name, reading);
                let now = vitals_proto::now_ms();
                let snapshot = latest.snapshot(now);
                let mut raised = false;
                for event in checks.evaluate(&snapshot, now) {
                    info!(check = %event.check_id, subject = %event.subject, state = event.state.as_str(), value = event.value, "fault");
                    raised |= event.state == vitals_proto::domain::FaultState::Raised;
                    if tx.send(Outgoing::Fault(event)).await.is_err() {
                        return;
                    }
                }
                if raised && next_snapshot.is_some() {
                    // The evidence goes right behind the fault: the snapshot
                    // it was judged on, for the ticket it opens.
                    if tx.send(Outgoing::Snapshot(Box::new(snapshot))).await.is_err() {
                        return;
                    }
                    next_snapshot = Some(tokio::time::Instant::now() + *interval.borrow_and_update());
                } else if next_snapshot.is_none() && latest.has_reported(probes::ProbeKind::System) {
                    next_snapshot = Some(tokio::time::Instant::now());
                }
            }
            () = sleep_until_opt(deadline) => {
                let snapshot = latest.snapshot(vitals_proto::now_ms());
                if tx.send(Outgoing::Snapshot(Box::new(snapshot))).await.is_err() {
                    return;
                }
                next_snapshot = Some(tokio::time::Instant::now() + *interval.borrow_and_update());
            }
            Ok(()) = interval.changed() => {
                if next_snapshot.is_some() {
                    next_snapshot = Some(tokio::time::Instant::now() + *interval.borrow_and_update());
                }
            }
            Ok(()) = policy.changed() => {
                let p = policy.borrow_and_update().clone();
                if p.version != checks.policy_version() {
                    for event in checks.set_policy(p, vitals_proto::now_ms()) {
                        if tx.send(Outgoing::Fault(event)).await.is_err() {
                            return;
                        }
                    }
                    // Judge the current picture under the new policy now.
                    let now = vitals_proto::now_ms();
                    for event in checks.evaluate(&latest.snapshot(now), now) {
                        if tx.send(Outgoing::Fault(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(()) = resync.changed() => {
                let believed = resync.borrow_and_update().clone().unwrap_or_default();
                let now = vitals_proto::now_ms();
                let events = checks.resync(&latest.snapshot(now), &believed, now);
                for event in events {
                    info!(check = %event.check_id, subject = %event.subject, state = event.state.as_str(), "fault (resync)");
                    if tx.send(Outgoing::Fault(event)).await.is_err() {
                        return;
                    }
                }
            }
            () = shutdown.requested() => return,
        }
    }
}

/// Logs a probe's errors when they change, and its recovery, rather than
/// on every run: a workstation without CUPS should not fill its log with
/// the same line every 30 seconds.
fn log_changes(
    logged: &mut HashMap<probes::ProbeKind, Vec<String>>,
    name: probes::ProbeKind,
    reading: &probes::Reading,
) {
    let now: Vec<String> = reading.errors.iter().map(|e| e.message.clone()).collect();
    let before = logged.get(&name).cloned().unwrap_or_default();
    if now == before {
        return;
    }
    if now.is_empty() {
        info!(probe = %name, "probe recovered");
    }
    for e in now.iter().filter(|e| !before.contains(e)) {
        warn!(probe = %name, error = %e, "probe error");
    }
    logged.insert(name, now);
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Stops the probe tasks when the sample loop ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
