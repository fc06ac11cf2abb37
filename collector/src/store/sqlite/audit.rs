//! The audit log: append-only; entries leave it only once archived
//! (`retention.rs`).

use super::*;
use vitals_proto::diag::AuditEntry;

pub(super) const AUDIT_COLUMNS: &str =
    "id, at_ms, who, role, endpoint_id, kind, params, outcome, detail, duration_ms, ticket";

pub(super) fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let params: String = r.get(6)?;
    Ok(AuditEntry {
        id: r.get::<_, i64>(0)? as u64,
        at_ms: r.get(1)?,
        who: r.get(2)?,
        role: r.get(3)?,
        endpoint_id: r.get(4)?,
        kind: r.get(5)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        outcome: r.get(7)?,
        detail: r.get(8)?,
        duration_ms: r.get::<_, i64>(9)? as u64,
        ticket: r.get::<_, Option<i64>>(10)?.map(|t| t as u64),
    })
}

/// Appends one entry on `c` (a connection or a transaction); its id.
pub(super) fn append(c: &Connection, e: &AuditEntry) -> Result<u64, StoreError> {
    c.prepare_cached(
        "INSERT INTO audit_log (at_ms, who, role, endpoint_id, kind, params, outcome,
            detail, duration_ms, ticket)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.at_ms,
        e.who,
        e.role,
        e.endpoint_id,
        e.kind,
        serde_json::to_string(&e.params).unwrap_or_default(),
        e.outcome,
        e.detail,
        e.duration_ms as i64,
        e.ticket.map(|t| t as i64),
    ])?;
    Ok(c.last_insert_rowid() as u64)
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_append(&self, e: vitals_proto::diag::AuditEntry) -> Result<u64, StoreError> {
        self.write(move |c| append(c, &e)).await
    }

    async fn audit(
        &self,
        f: crate::store::AuditFilter,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log
                 WHERE (?1 = '' OR endpoint_id = ?1) AND (?2 = '' OR who = ?2)
                   AND (?3 = '' OR kind = ?3)
                 ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![f.endpoint, f.who, f.kind, f.limit.clamp(1, 1000)],
                audit_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
