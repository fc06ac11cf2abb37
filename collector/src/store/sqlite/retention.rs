//! Retention: removing old rows a chunk at a time, the audit log's
//! archives, and giving freed pages back to the file system.

use super::audit::{AUDIT_COLUMNS, append, audit_row};
use super::*;
use crate::store::{AuditArchive, RetentionStore};
use vitals_proto::diag::AuditEntry;

/// The first id of `table` whose `time` is at or after `before_ms`, read
/// in id order (ids follow time in these tables), so it costs as many
/// rows as there are older ones; one past the last id when none is.
fn first_newer(c: &Connection, table: &str, time: &str, before_ms: i64) -> rusqlite::Result<i64> {
    let first: Option<i64> = c
        .query_row(
            &format!("SELECT id FROM {table} WHERE {time} >= ?1 ORDER BY id LIMIT 1"),
            [before_ms],
            |r| r.get(0),
        )
        .optional()?;
    match first {
        Some(id) => Ok(id),
        None => c.query_row(
            &format!("SELECT COALESCE(MAX(id), 0) + 1 FROM {table}"),
            [],
            |r| r.get(0),
        ),
    }
}

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn prune_fault_events(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let cursor: i64 = tx.query_row(
                "SELECT fault_event_id FROM ticket_cursor WHERE one = 1",
                [],
                |r| r.get(0),
            )?;
            let bound = first_newer(&tx, "fault_events", "received_ms", before_ms)?;
            let n = tx.execute(
                "DELETE FROM fault_events WHERE id IN (
                     SELECT id FROM fault_events WHERE id < ?1 AND id <= ?2 ORDER BY id LIMIT ?3)",
                params![bound, cursor, limit],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune_tickets(&self, before_ms: i64, limit: u32) -> Result<Vec<u64>, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<i64> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id FROM tickets
                     WHERE status IN ('resolved', 'closed') AND updated_ms < ?1
                     ORDER BY updated_ms LIMIT ?2",
                )?;
                stmt.query_map(params![before_ms, limit], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for id in &ids {
                for sql in [
                    "DELETE FROM ticket_timeline WHERE ticket = ?1",
                    "DELETE FROM ticket_snapshots WHERE ticket = ?1",
                    "DELETE FROM ticket_awaiting WHERE ticket = ?1",
                    "DELETE FROM tickets WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)?.execute([id])?;
                }
            }
            let incidents: Vec<i64> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id FROM incidents i
                     WHERE resolved_ms IS NOT NULL AND resolved_ms < ?1
                       AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.incident = i.id)
                     LIMIT ?2",
                )?;
                stmt.query_map(params![before_ms, limit], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for id in &incidents {
                tx.prepare_cached("DELETE FROM ticket_timeline WHERE incident = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM incidents WHERE id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(ids.into_iter().map(|id| id as u64).collect())
        })
        .await
    }

    async fn prune_deliveries(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM webhook_outbox WHERE id IN (
                     SELECT id FROM webhook_outbox
                     WHERE (delivered_ms IS NOT NULL OR dead_ms IS NOT NULL) AND created_ms < ?1
                     ORDER BY created_ms LIMIT ?2)",
                params![before_ms, limit],
            )? as u64)
        })
        .await
    }

    async fn prune_certificates(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM certificates WHERE serial IN (
                     SELECT serial FROM certificates WHERE not_after_ms < ?1
                     ORDER BY not_after_ms LIMIT ?2)",
                params![before_ms, limit],
            )? as u64)
        })
        .await
    }

    async fn audit_unarchived(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log
                 WHERE id > (SELECT COALESCE(MAX(last_id), 0) FROM audit_archives)
                 ORDER BY id LIMIT ?1"
            ))?;
            let mut out = Vec::new();
            let mut rows = stmt.query([limit])?;
            // Only the unbroken run of old entries: an archive holds every
            // id in its range.
            while let Some(row) = rows.next()? {
                let e = audit_row(row)?;
                if e.at_ms >= before_ms {
                    break;
                }
                out.push(e);
            }
            Ok(out)
        })
        .await
    }

    async fn archive_audit(&self, a: AuditArchive, e: AuditEntry) -> Result<u64, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO audit_archives (first_id, last_id, entries, file, sha256, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    a.first_id as i64,
                    a.last_id as i64,
                    a.entries as i64,
                    a.file,
                    a.sha256,
                    a.at_ms
                ],
            )?;
            let id = append(&tx, &e)?;
            tx.execute(
                "DELETE FROM audit_log WHERE id BETWEEN ?1 AND ?2",
                params![a.first_id as i64, a.last_id as i64],
            )?;
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn audit_archives(&self) -> Result<Vec<AuditArchive>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT first_id, last_id, entries, file, sha256, at_ms FROM audit_archives
                 ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(AuditArchive {
                    first_id: r.get::<_, i64>(0)? as u64,
                    last_id: r.get::<_, i64>(1)? as u64,
                    entries: r.get::<_, i64>(2)? as u64,
                    file: r.get(3)?,
                    sha256: r.get(4)?,
                    at_ms: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn compact(&self) -> Result<u64, StoreError> {
        // Freed pages are reused by new rows first; only a surplus (after a
        // large removal) goes back, in steps, leaving some slack so the
        // file does not shrink only to grow again.
        const STEP: i64 = 2048;
        let mut given = 0u64;
        loop {
            let (pages, free, page_size) = self
                .write(|c| {
                    let get = |name: &str| -> rusqlite::Result<i64> {
                        c.pragma_query_value(None, name, |r| r.get(0))
                    };
                    Ok((
                        get("page_count")?,
                        get("freelist_count")?,
                        get("page_size")?,
                    ))
                })
                .await?;
            let slack = pages / 32;
            if free <= (pages / 8).max(STEP) {
                return Ok(given);
            }
            let n = (free - slack).min(STEP);
            self.write(move |c| {
                c.execute_batch(&format!("PRAGMA incremental_vacuum({n})"))?;
                Ok(())
            })
            .await?;
            given += (n * page_size) as u64;
        }
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(size(&self.path) + size(std::path::Path::new(&wal)))
    }
}
