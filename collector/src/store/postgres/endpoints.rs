//! Endpoint queries on PostgreSQL.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};

use super::*;
use crate::store::{EndpointStore, Presence};

#[async_trait]
impl EndpointStore for PgStore {
    async fn list_endpoints(&self, online_only: bool) -> Result<Vec<EndpointSummary>, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM endpoints {} ORDER BY last_seen_ms DESC, id",
            if online_only {
                concat!("WHERE ", live_session!())
            } else {
                ""
            }
        );
        let rows = c.query(&c.prepare_cached(&sql).await?, &[]).await?;
        rows.iter().map(summary_from_row).collect()
    }

    async fn endpoint(&self, id: &str) -> Result<Option<EndpointDetail>, StoreError> {
        let c = self.client().await?;
        let bound = self.history_limit as i64;
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, state_since_ms, committed_seq, latest_snapshot,
                 (SELECT COUNT(*) FROM (SELECT 1 FROM snapshots s WHERE s.endpoint_id = e.id
                                        LIMIT $2) AS bounded)
             FROM endpoints e WHERE id = $1"
        );
        let Some(r) = c
            .query_opt(&c.prepare_cached(&sql).await?, &[&id, &bound])
            .await?
        else {
            return Ok(None);
        };
        let summary = summary_from_row(&r)?;
        let committed_seq = r.try_get::<_, i64>(SUMMARY_LEN + 1)? as u64;
        let latest = r
            .try_get::<_, Option<&[u8]>>(SUMMARY_LEN + 2)?
            .map(|body| parse_snapshot(id, committed_seq, body))
            .transpose()?;
        Ok(Some(EndpointDetail {
            summary,
            latest,
            state_since_ms: r.try_get(SUMMARY_LEN)?,
            committed_seq,
            history_len: r.try_get::<_, i64>(SUMMARY_LEN + 3)? as u64,
        }))
    }

    async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let c = self.client().await?;
        // Not past the bound, as on SQLite.
        let limit = limit.min(self.history_limit) as i64;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT seq, received_ms, body FROM snapshots WHERE endpoint_id = $1
                     ORDER BY seq DESC LIMIT $2",
                )
                .await?,
                &[&id, &limit],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let seq = r.try_get::<_, i64>(0)? as u64;
            out.push(HistoryEntry {
                seq,
                received_at_ms: r.try_get(1)?,
                snapshot: parse_snapshot(id, seq, r.try_get(2)?)?,
            });
        }
        Ok(out)
    }

    async fn faults(&self, id: &str, limit: u32) -> Result<Vec<FaultRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(&format!(
                    "SELECT {FAULT_COLUMNS} FROM fault_events WHERE endpoint_id = $1
                     ORDER BY seq DESC LIMIT $2"
                ))
                .await?,
                &[&id, &(limit as i64)],
            )
            .await?;
        rows.iter().map(|r| fault_from_row(id, r)).collect()
    }

    async fn snapshot_times(&self, ids: Vec<String>) -> Result<HashMap<String, i64>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT id, latest_snapshot_ms FROM endpoints
                     WHERE id = ANY($1) AND latest_snapshot IS NOT NULL",
                )
                .await?,
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn presence(&self) -> Result<Vec<Presence>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(concat!(
                    "SELECT id, ",
                    live_session!(),
                    ", last_seen_ms FROM endpoints"
                ))
                .await?,
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Presence {
                    endpoint_id: r.try_get(0)?,
                    online: r.try_get(1)?,
                    last_seen_ms: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn wants_resync(&self, id: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT resync FROM endpoints WHERE id = $1", &[&id])
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => false,
        })
    }

    async fn resync_done(&self, id: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute("UPDATE endpoints SET resync = false WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }
}
