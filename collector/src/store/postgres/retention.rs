//! Retention on PostgreSQL: old rows removed a chunk at a time, the audit
//! log's archives. Space is left to autovacuum; snapshot history goes a
//! partition at a time (`partitions.rs`).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::audit::{AUDIT_COLUMNS, append, audit_row};
use super::*;
use crate::store::{AuditArchive, RetentionStore};
use vitals_proto::diag::AuditEntry;

#[async_trait]
impl RetentionStore for PgStore {
    async fn prune_fault_events(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let c = self.client().await?;
        // Ids follow commit order and so receive time: the oldest ids
        // first, never past the engine's cursor.
        let n = c
            .execute(
                "DELETE FROM fault_events WHERE id IN (
                     SELECT id FROM fault_events
                     WHERE id <= (SELECT fault_event_id FROM ticket_cursor WHERE one = 1)
                       AND received_ms < $1
                     ORDER BY id LIMIT $2)",
                &[&before_ms, &(limit as i64)],
            )
            .await?;
        Ok(n)
    }

    async fn prune_tickets(&self, before_ms: i64, limit: u32) -> Result<Vec<u64>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        self.fenced(&tx).await?;
        let ids: Vec<i64> = tx
            .query(
                "SELECT id FROM tickets
                 WHERE status IN ('resolved', 'closed') AND updated_ms < $1
                 ORDER BY updated_ms LIMIT $2",
                &[&before_ms, &(limit as i64)],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for sql in [
            "DELETE FROM ticket_timeline WHERE ticket = ANY($1)",
            "DELETE FROM ticket_snapshots WHERE ticket = ANY($1)",
            "DELETE FROM ticket_awaiting WHERE ticket = ANY($1)",
            "DELETE FROM tickets WHERE id = ANY($1)",
        ] {
            tx.execute(sql, &[&ids]).await?;
        }
        let incidents: Vec<i64> = tx
            .query(
                "SELECT id FROM incidents i
                 WHERE resolved_ms IS NOT NULL AND resolved_ms < $1
                   AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.incident = i.id)
                 LIMIT $2",
                &[&before_ms, &(limit as i64)],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        tx.execute(
            "DELETE FROM ticket_timeline WHERE incident = ANY($1)",
            &[&incidents],
        )
        .await?;
        tx.execute("DELETE FROM incidents WHERE id = ANY($1)", &[&incidents])
            .await?;
        tx.commit().await?;
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }

    async fn prune_deliveries(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let c = self.client().await?;
        Ok(c.execute(
            "DELETE FROM webhook_outbox WHERE id IN (
                 SELECT id FROM webhook_outbox
                 WHERE (delivered_ms IS NOT NULL OR dead_ms IS NOT NULL) AND created_ms < $1
                 ORDER BY created_ms LIMIT $2)",
            &[&before_ms, &(limit as i64)],
        )
        .await?)
    }

    async fn prune_certificates(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let c = self.client().await?;
        Ok(c.execute(
            "DELETE FROM certificates WHERE serial IN (
                 SELECT serial FROM certificates WHERE not_after_ms < $1
                 ORDER BY not_after_ms LIMIT $2)",
            &[&before_ms, &(limit as i64)],
        )
        .await?)
    }

    async fn audit_unarchived(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log
                     WHERE id > (SELECT COALESCE(MAX(last_id), 0) FROM audit_archives)
                     ORDER BY id LIMIT $1"
                ),
                &[&(limit as i64)],
            )
            .await?;
        let mut out = Vec::new();
        // Only the unbroken run of old entries: an archive holds every id
        // in its range.
        for r in &rows {
            let e = audit_row(r)?;
            if e.at_ms >= before_ms {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    async fn archive_audit(&self, a: AuditArchive, e: AuditEntry) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO audit_archives (first_id, last_id, entries, file, sha256, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &(a.first_id as i64),
                &(a.last_id as i64),
                &(a.entries as i64),
                &a.file,
                &a.sha256,
                &a.at_ms,
            ],
        )
        .await?;
        let id = append(&tx, &e).await?;
        tx.execute(
            "DELETE FROM audit_log WHERE id BETWEEN $1 AND $2",
            &[&(a.first_id as i64), &(a.last_id as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn audit_archives(&self) -> Result<Vec<AuditArchive>, StoreError> {
        let c = self.client().await?;
        c.query(
            "SELECT first_id, last_id, entries, file, sha256, at_ms FROM audit_archives
             ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AuditArchive {
                first_id: r.try_get::<_, i64>(0)? as u64,
                last_id: r.try_get::<_, i64>(1)? as u64,
                entries: r.try_get::<_, i64>(2)? as u64,
                file: r.try_get(3)?,
                sha256: r.try_get(4)?,
                at_ms: r.try_get(5)?,
            })
        })
        .collect()
    }

    async fn compact(&self) -> Result<u64, StoreError> {
        // Autovacuum makes removed rows' space reusable; nothing to do.
        Ok(0)
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?;
        Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
    }
}
