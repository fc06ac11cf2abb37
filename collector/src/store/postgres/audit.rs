//! The audit log on PostgreSQL: append-only (the schema's triggers refuse
//! any change, and any removal of an entry no archive holds).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::*;
use crate::store::{AuditFilter, AuditStore};
use vitals_proto::diag::AuditEntry;

pub(super) const AUDIT_COLUMNS: &str =
    "id, at_ms, who, role, endpoint_id, kind, params, outcome, detail, duration_ms, ticket";

pub(super) fn audit_row(r: &tokio_postgres::Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: r.try_get::<_, i64>(0)? as u64,
        at_ms: r.try_get(1)?,
        who: r.try_get(2)?,
        role: r.try_get(3)?,
        endpoint_id: r.try_get(4)?,
        kind: r.try_get(5)?,
        params: serde_json::from_str(r.try_get(6)?).unwrap_or_default(),
        outcome: r.try_get(7)?,
        detail: r.try_get(8)?,
        duration_ms: r.try_get::<_, i64>(9)? as u64,
        ticket: r.try_get::<_, Option<i64>>(10)?.map(|t| t as u64),
    })
}

/// Appends one entry on `c` (a client or a transaction); its id.
pub(super) async fn append(c: &impl GenericClient, e: &AuditEntry) -> Result<u64, StoreError> {
    let row = c
        .query_one(
            &c.prepare_cached(
                "INSERT INTO audit_log (at_ms, who, role, endpoint_id, kind, params, outcome,
                    detail, duration_ms, ticket)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .await?,
            &[
                &e.at_ms,
                &e.who,
                &e.role,
                &e.endpoint_id,
                &e.kind,
                &serde_json::to_string(&e.params).unwrap_or_default(),
                &e.outcome,
                &e.detail,
                &(e.duration_ms as i64),
                &e.ticket.map(|t| t as i64),
            ],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? as u64)
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_append(&self, e: vitals_proto::diag::AuditEntry) -> Result<u64, StoreError> {
        append(&self.client().await?, &e).await
    }

    async fn audit(
        &self,
        f: AuditFilter,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log
                     WHERE ($1 = '' OR endpoint_id = $1) AND ($2 = '' OR who = $2)
                       AND ($3 = '' OR kind = $3)
                     ORDER BY id DESC LIMIT $4"
                ))
                .await?,
                &[
                    &f.endpoint,
                    &f.who,
                    &f.kind,
                    &(f.limit.clamp(1, 1000) as i64),
                ],
            )
            .await?;
        rows.iter().map(audit_row).collect()
    }
}
