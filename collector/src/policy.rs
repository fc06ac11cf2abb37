//! The running fault policy, and its hot reload.
//!
//! The policy file is watched (its folder, since editors replace files by
//! rename). On a change it is read again after a short settle time; a valid
//! policy replaces the running one and goes out to every live agent
//! session, an invalid one is refused with a clear error and the running
//! policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use vitals_proto::policy::Policy;

use crate::metrics::Metrics;

/// Writes often come in bursts (truncate, write, rename): wait this long
/// after the last event before reading.
const SETTLE: Duration = Duration::from_millis(300);

/// The policy agents should evaluate, and its changes.
pub type PolicyWatch = watch::Receiver<Arc<Policy>>;

/// Starts watching `path` for changes; the returned watcher must be kept
/// alive for as long as reloads should happen.
pub fn watch_file(
    path: PathBuf,
    initial: Policy,
    metrics: Arc<Metrics>,
) -> Result<(PolicyWatch, notify::RecommendedWatcher), notify::Error> {
    let (tx, rx) = watch::channel(Arc::new(initial));
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = events_tx.send(());
        }
    })?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        // An edit between the first load and the watch is not missed: read
        // once more now that the watch is in place (a no-op when unchanged).
        reload(&path, &tx, &metrics);
        while events.recv().await.is_some() {
            // Let the burst finish, then read once.
            loop {
                match tokio::time::timeout(SETTLE, events.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload(&path, &tx, &metrics);
        }
    });
    Ok((rx, watcher))
}

fn reload(path: &Path, tx: &watch::Sender<Arc<Policy>>, metrics: &Metrics) {
    match Policy::load(path) {
        Ok(policy) => {
            if policy.version == tx.borrow().version {
                return;
            }
            info!(
                path = %path.display(),
                version = %policy.version,
                checks = policy.checks.len(),
                "policy reloaded; sending to agents"
            );
            tx.send_replace(Arc::new(policy));
        }
        Err(e) if path.exists() => {
            metrics.error("policy");
            error!(error = %e, "policy refused; the running policy stays in force");
        }
        Err(_) => {
            // Mid-rename, or deleted: keep the running policy.
            warn!(path = %path.display(), "policy file missing; the running policy stays in force");
        }
    }
}
