//! The Vitals agent.
//!
//! - [`probes`] sample the workstation into a domain `Snapshot`.
//! - [`link`] holds the stream to the collector (the agent's only gRPC
//!   edge), numbers messages and keeps them until acknowledged.
//! - [`config`] is `agent.toml`.
//!
//! [`run`] wires them: a sampler task sends a snapshot on every interval
//! (the collector's welcome may change it) to the link task.

pub mod checks;
pub mod config;
pub mod link;
pub mod probes;
pub mod seq;

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use vitals_proto::identity::{EndpointId, Identity};

use crate::checks::Checks;
use crate::config::AgentConfig;
use crate::link::{Link, LinkError, Outgoing};
use crate::probes::Sampler;
use vitals_proto::policy::Policy;

/// A sample that takes longer than this is abandoned (a hung mount, say)
/// and the next one starts with fresh readers.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {message}")]
    Certificate { path: String, message: String },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Completes once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let endpoint_id = check_tls_files(&config)?;
    let (interval_tx, interval_rx) = watch::channel(config.link.snapshot_interval);
    // Until the collector sends its own, the shipped default applies.
    let (policy_tx, policy_rx) = watch::channel(Policy::default_policy());
    let link = Link::new(config, endpoint_id.clone(), interval_tx, policy_tx)?;
    info!(endpoint = %endpoint_id, "agent starting");
    let (snap_tx, snap_rx) = mpsc::channel(16);
    let sampler = tokio::spawn(sample_loop(
        snap_tx,
        interval_rx,
        policy_rx,
        shutdown.clone(),
    ));
    let result = link.run(snap_rx, shutdown).await;
    sampler.abort();
    Ok(result?)
}

/// Samples on the interval, judges each sample against the policy, and
/// hands fault events (first) and the snapshot to the link.
async fn sample_loop(
    tx: mpsc::Sender<Outgoing>,
    mut interval: watch::Receiver<Duration>,
    mut policy: watch::Receiver<Policy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut checks = Checks::new(policy.borrow_and_update().clone());
    let mut first = Sampler::new();
    first.prime();
    let mut sampler = Some(first);
    // Give the first CPU reading a window before the first snapshot.
    tokio::time::sleep(Duration::from_millis(250)).await;
    loop {
        // Compared by version: `changed()` below marks a change seen before
        // this point is reached.
        let new_policy = {
            let p = policy.borrow_and_update();
            (p.version != checks.policy_version()).then(|| p.clone())
        };
        if let Some(p) = new_policy {
            for event in checks.set_policy(p, vitals_proto::now_ms()) {
                if tx.send(Outgoing::Fault(event)).await.is_err() {
                    return;
                }
            }
        }
        let mut s = sampler.take().unwrap_or_default();
        let job = tokio::task::spawn_blocking(move || {
            let snapshot = s.sample();
            (s, snapshot)
        });
        match tokio::time::timeout(SAMPLE_TIMEOUT, job).await {
            Ok(Ok((s, snapshot))) => {
                sampler = Some(s);
                for event in checks.evaluate(&snapshot, snapshot.taken_at_ms) {
                    info!(check = %event.check_id, subject = %event.subject, state = event.state.as_str(), value = event.value, "fault");
                    if tx.send(Outgoing::Fault(event)).await.is_err() {
                        return;
                    }
                }
                if tx
                    .send(Outgoing::Snapshot(Box::new(snapshot)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Err(error)) => warn!(%error, "sampling failed"),
            Err(_) => warn!(timeout = ?SAMPLE_TIMEOUT, "sampling hung; abandoned"),
        }
        let every = *interval.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = interval.changed() => {}
            _ = policy.changed() => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}
