//! Retention: what `[retention]` no longer keeps leaves the database, on
//! the leading replica, every `interval`.
//!
//! Rows go a chunk at a time, each chunk its own short transaction with a
//! pause after it, so agents' commits never wait behind a long removal.
//! Closed tickets go through the ticket engine (the one writer of
//! tickets), so what it holds and what is stored stay one. Audit entries
//! leave only after they are in an archive file: JSON lines, synced,
//! with its SHA-256 beside it (`sha256sum -c` reads it) and in the
//! database, where the audit log refuses to lose an entry no archive
//! holds; each archive is itself an audit entry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use vitals_proto::diag::AuditEntry;
use vitals_proto::shutdown::Shutdown;

use crate::config::RetentionConfig;
use crate::metrics::Metrics;
use crate::store::{AuditArchive, Store, StoreError};
use crate::tickets::{DeskError, TicketDesk};

/// Rows per removal transaction.
const CHUNK: u32 = 2000;
/// Audit entries per archive file at most.
const ARCHIVE_ENTRIES: u32 = 10_000;
/// The pause after each chunk, for the commits waiting behind it.
const BREATHE: Duration = Duration::from_millis(20);

/// The audit entry kind of an archive.
pub const ARCHIVE_KIND: &str = "audit_archive";

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tickets: {0}")]
    Desk(#[from] DeskError),
    #[error("audit archive {path}: {source}")]
    Archive {
        path: String,
        source: std::io::Error,
    },
}

/// What one pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub fault_events: u64,
    pub tickets: u64,
    pub notifications: u64,
    pub certificates: u64,
    /// Audit entries archived (and so removed).
    pub audit: u64,
    /// Archive files written.
    pub archives: Vec<PathBuf>,
    /// Bytes given back to the file system.
    pub compacted: u64,
}

impl Removed {
    fn any(&self) -> bool {
        self.fault_events + self.tickets + self.notifications + self.certificates + self.audit > 0
    }
}

pub struct Retention {
    pub store: Arc<dyn Store>,
    pub desk: TicketDesk,
    pub config: RetentionConfig,
    pub archive_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Who archives, in the audit log.
    pub replica: String,
}

impl Retention {
    /// Runs a pass every `interval` while this replica leads, until `stop`.
    pub async fn run(self, mut leading: crate::leader::Leading, mut stop: Shutdown) {
        loop {
            if !leading.now() {
                tokio::select! {
                    () = leading.until(true) => {}
                    () = stop.requested() => return,
                }
                continue;
            }
            let started = std::time::Instant::now();
            tokio::select! {
                r = self.pass(vitals_proto::now_ms()) => match r {
                    Ok(r) if r.any() => info!(
                        fault_events = r.fault_events,
                        tickets = r.tickets,
                        notifications = r.notifications,
                        certificates = r.certificates,
                        audit_archived = r.audit,
                        compacted_bytes = r.compacted,
                        took = ?started.elapsed(),
                        "retention"
                    ),
                    Ok(_) => {}
                    // The lead moved mid-pass: the new leader goes on.
                    Err(RetentionError::Store(StoreError::NotLeader))
                    | Err(RetentionError::Desk(DeskError::NotLeader)) => {}
                    Err(error) => {
                        self.metrics.error("retention");
                        warn!(%error, "retention pass failed; the next one tries again");
                    }
                },
                () = leading.until(false) => continue,
                () = stop.requested() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = leading.until(false) => {}
                () = stop.requested() => return,
            }
        }
    }

    /// One pass at `now_ms`: everything past its retention goes.
    pub async fn pass(&self, now_ms: i64) -> Result<Removed, RetentionError> {
        let before = |keep: Option<Duration>| keep.map(|k| now_ms - k.as_millis() as i64);
        let c = &self.config;
        let mut r = Removed::default();
        if let Some(t) = before(c.fault_events) {
            r.fault_events = chunks(CHUNK, |n| self.store.prune_fault_events(t, n)).await?;
            self.metrics
                .retention_removed("fault_events", r.fault_events);
        }
        if let Some(t) = before(c.closed_tickets) {
            // A ticket is several rows (timeline, evidence): fewer a step.
            r.tickets = chunks(CHUNK / 4, |n| async move {
                Ok::<_, RetentionError>(self.desk.prune(t, n).await? as u64)
            })
            .await?;
            self.metrics.retention_removed("tickets", r.tickets);
        }
        if let Some(t) = before(c.notifications) {
            r.notifications = chunks(CHUNK, |n| self.store.prune_deliveries(t, n)).await?;
            self.metrics
                .retention_removed("notifications", r.notifications);
        }
        if let Some(t) = before(c.certificates) {
            r.certificates = chunks(CHUNK, |n| self.store.prune_certificates(t, n)).await?;
            self.metrics
                .retention_removed("certificates", r.certificates);
        }
        if let Some(t) = before(c.audit) {
            loop {
                let entries = self.store.audit_unarchived(t, ARCHIVE_ENTRIES).await?;
                if entries.is_empty() {
                    break;
                }
                let n = entries.len() as u64;
                r.archives.push(self.archive(&entries, now_ms).await?);
                r.audit += n;
                self.metrics.retention_removed("audit", n);
                tokio::time::sleep(BREATHE).await;
            }
        }
        r.compacted = self.store.compact().await?;
        if let Ok(bytes) = self.store.size_bytes().await {
            self.metrics.database_bytes.set(bytes as i64);
        }
        Ok(r)
    }

    /// Writes `entries` (one unbroken run of ids) to an archive file,
    /// then records it and lets them go.
    async fn archive(
        &self,
        entries: &[AuditEntry],
        now_ms: i64,
    ) -> Result<PathBuf, RetentionError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(RetentionError::Archive {
                path: self.archive_dir.display().to_string(),
                source: std::io::Error::other("no entries to archive"),
            });
        };
        let name = format!("audit-{:012}-{:012}.jsonl", first.id, last.id);
        let path = self.archive_dir.join(&name);
        let failed = |source: std::io::Error| RetentionError::Archive {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        for e in entries {
            text.push_str(&serde_json::to_string(e).map_err(|e| failed(e.into()))?);
            text.push('\n');
        }
        let sha256 = hex(&Sha256::digest(text.as_bytes()));
        let dir = self.archive_dir.clone();
        let file = path.clone();
        let sum = format!("{sha256}  {name}\n");
        tokio::task::spawn_blocking(move || write_archive(&dir, &file, text.as_bytes(), &sum))
            .await
            .map_err(|e| failed(std::io::Error::other(e)))?
            .map_err(failed)?;
        let archive = AuditArchive {
            first_id: first.id,
            last_id: last.id,
            entries: entries.len() as u64,
            file: name.clone(),
            sha256: sha256.clone(),
            at_ms: now_ms,
        };
        let entry = AuditEntry {
            id: 0,
            at_ms: now_ms,
            who: format!("collector {}", self.replica),
            role: "system".into(),
            endpoint_id: String::new(),
            kind: ARCHIVE_KIND.into(),
            params: [
                ("file".to_owned(), name.clone()),
                ("first_id".to_owned(), first.id.to_string()),
                ("last_id".to_owned(), last.id.to_string()),
                ("sha256".to_owned(), sha256),
            ]
            .into(),
            outcome: "ok".into(),
            detail: format!(
                "{} audit entries archived to {name} and removed from the database",
                entries.len()
            ),
            duration_ms: 0,
            ticket: None,
        };
        self.store.archive_audit(archive, entry).await?;
        Ok(path)
    }
}

/// Repeats a removal of up to `size` rows until fewer come back, with a
/// pause after each; the total.
async fn chunks<F, Fut, E>(size: u32, mut once: F) -> Result<u64, E>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    let mut total = 0;
    loop {
        let n = once(size).await?;
        total += n;
        if n < u64::from(size) {
            return Ok(total);
        }
        tokio::time::sleep(BREATHE).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The archive and its checksum file, each synced and renamed into place,
/// then the folder synced: durable before a single entry is removed.
fn write_archive(dir: &Path, file: &Path, bytes: &[u8], sum: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    vitals_proto::files::replace(file, bytes, true)?;
    let mut sum_path = file.as_os_str().to_owned();
    sum_path.push(".sha256");
    vitals_proto::files::replace(Path::new(&sum_path), sum.as_bytes(), true)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Checks an archive file against the checksum beside it; the number of
/// entries it holds.
pub fn verify_archive(file: &Path) -> Result<u64, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut sum_path = file.as_os_str().to_owned();
    sum_path.push(".sha256");
    let sum = std::fs::read_to_string(&sum_path)
        .map_err(|e| format!("{}: {e}", Path::new(&sum_path).display()))?;
    let want = sum.split_whitespace().next().unwrap_or_default();
    let got = hex(&Sha256::digest(&bytes));
    if want != got {
        return Err(format!(
            "{}: SHA-256 {got} does not match {want} in its .sha256 file",
            file.display()
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        serde_json::from_str::<AuditEntry>(line)
            .map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{Record, RecordBody, SessionOpen};
    use crate::tickets::engine::Action;
    use vitals_proto::domain::{FaultEvent, FaultState, Severity};
    use vitals_proto::identity::EndpointId;

    const DAY_MS: i64 = 86_400_000;

    fn fault(id: &EndpointId, seq: u64, state: FaultState, received_ms: i64) -> Record {
        Record {
            endpoint: id.clone(),
            seq,
            received_ms,
            body: RecordBody::Fault(FaultEvent {
                check_id: "disk_nearly_full".into(),
                subject: "/".into(),
                state,
                severity: Severity::Warning,
                value: 97.0,
                evidence: "/ at 97%".into(),
                at_ms: received_ms,
                via: String::new(),
            }),
        }
    }

    /// A whole pass against a real database and a running ticket engine:
    /// what is past its time goes (closed tickets from the engine's memory
    /// too), the audit's old entries are in a file that checks out, and
    /// the archive is an audit entry of its own.
    #[tokio::test]
    async fn a_pass_removes_what_is_past_its_time_and_archives_the_audit() {
        let dir = std::env::temp_dir().join(format!("vitals-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.join("vitals.db"), 10, Duration::ZERO)
                .await
                .unwrap(),
        );
        let id: EndpointId = "ws-1".parse().unwrap();
        store
            .open_session(&SessionOpen {
                endpoint: id.clone(),
                agent_version: String::new(),
                platform: String::new(),
                at_ms: 1,
                machine_id: String::new(),
            })
            .await
            .unwrap();
        let now = vitals_proto::now_ms();
        store
            .commit(vec![
                fault(&id, 1, FaultState::Raised, now - 200 * DAY_MS),
                fault(&id, 2, FaultState::Cleared, now - 200 * DAY_MS),
            ])
            .await
            .unwrap();
        for (n, at) in [(1, now - 500 * DAY_MS), (2, now - 450 * DAY_MS), (3, now)] {
            store
                .audit_append(AuditEntry {
                    at_ms: at,
                    who: format!("specialist {n}"),
                    kind: "network".into(),
                    outcome: "ok".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }

        let (trigger, stop) = vitals_proto::shutdown::channel();
        let (desk, queue) = crate::tickets::desk();
        let policy =
            tokio::sync::watch::channel(Arc::new(vitals_proto::policy::Policy::default_policy())).1;
        tokio::spawn(crate::tickets::supervise(
            store.clone(),
            policy,
            Arc::new(tokio::sync::Notify::new()),
            queue,
            crate::tickets::Outbound::default(),
            stop.clone(),
            crate::tickets::Lead {
                leading: crate::leader::Leading::always(),
                to_leader: None,
            },
        ));
        // The engine applies both events: one ticket, the cursor past them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.ticket_state().await.unwrap().cursor < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine did not run"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        desk.act(1, "sam", Action::Resolve("disk cleaned".into()))
            .await
            .unwrap();

        let retention = Retention {
            store: store.clone(),
            desk: desk.clone(),
            config: RetentionConfig::default(),
            archive_dir: dir.join("audit-archive"),
            metrics: Arc::new(Metrics::new()),
            replica: "test".into(),
        };
        // Today, with the defaults: the fault events are 200 days old
        // (kept 90), the ticket was resolved just now (kept 400 days), two
        // audit entries are past 400 days.
        let r = retention.pass(now).await.unwrap();
        assert_eq!((r.fault_events, r.tickets, r.audit), (2, 0, 2), "{r:?}");
        assert_eq!(r.archives.len(), 1);
        assert_eq!(verify_archive(&r.archives[0]), Ok(2));
        let text = std::fs::read_to_string(&r.archives[0]).unwrap();
        assert!(
            text.contains("specialist 1") && text.contains("specialist 2"),
            "{text}"
        );
        assert!(!text.contains("specialist 3"));
        let audit = store
            .audit(crate::store::AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let kinds: Vec<&str> = audit.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec![ARCHIVE_KIND, "network"]);
        assert_eq!(
            audit[0].params["sha256"],
            store.audit_archives().await.unwrap()[0].sha256
        );
        assert!(store.ticket(1).await.unwrap().is_some());

        // A damaged archive is found out.
        let mut bytes = std::fs::read(&r.archives[0]).unwrap();
        bytes[10] ^= 1;
        let copy = dir.join("copy.jsonl");
        std::fs::write(&copy, &bytes).unwrap();
        std::fs::copy(
            format!("{}.sha256", r.archives[0].display()),
            dir.join("copy.jsonl.sha256"),
        )
        .unwrap();
        assert!(
            verify_archive(&copy)
                .unwrap_err()
                .contains("does not match")
        );

        // 401 days on, the resolved ticket goes, from the engine too.
        let r = retention.pass(now + 401 * DAY_MS).await.unwrap();
        assert_eq!(r.tickets, 1, "{r:?}");
        assert!(store.ticket(1).await.unwrap().is_none());
        assert!(matches!(
            desk.act(1, "sam", Action::Comment("still there?".into()))
                .await,
            Err(DeskError::NoTicket(1))
        ));
        drop(trigger);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
