//! Endpoint queries: the fleet list, one endpoint in full, its history and
//! its fault events.

use super::*;

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn list_endpoints(&self, online_only: bool) -> Result<Vec<EndpointSummary>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM endpoints {} ORDER BY last_seen_ms DESC, id",
                if online_only { "WHERE online = 1" } else { "" }
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([], summary_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn endpoint(&self, id: &str) -> Result<Option<EndpointDetail>, StoreError> {
        let id = id.to_owned();
        let bound = self.history_limit;
        self.read(move |c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS}, state_since_ms, committed_seq, latest_snapshot,
                     MIN(history_len, ?2)
                 FROM endpoints WHERE id = ?1"
            );
            let row = c
                .query_row(&sql, params![&id, bound], |r| {
                    Ok((
                        summary_from_row(r)?,
                        r.get::<_, i64>(SUMMARY_LEN)?,
                        r.get::<_, i64>(SUMMARY_LEN + 1)? as u64,
                        r.get::<_, Option<StoredSnapshot>>(SUMMARY_LEN + 2)?,
                        r.get::<_, i64>(SUMMARY_LEN + 3)? as u64,
                    ))
                })
                .optional()?;
            let Some((summary, state_since_ms, committed_seq, latest, history_len)) = row else {
                return Ok(None);
            };
            let latest = latest
                .map(|body| parse_snapshot(&id, committed_seq, &body))
                .transpose()?;
            Ok(Some(EndpointDetail {
                summary,
                latest,
                state_since_ms,
                committed_seq,
                history_len,
            }))
        })
        .await
    }

    async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = id.to_owned();
        // Not past the bound: the few entries beyond it await pruning.
        let limit = limit.min(self.history_limit);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, received_ms, body FROM snapshots WHERE endpoint_id = ?1
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, StoredSnapshot>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, received_at_ms, body) = row?;
                out.push(HistoryEntry {
                    seq,
                    received_at_ms,
                    snapshot: parse_snapshot(&id, seq, &body)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn faults(&self, id: &str, limit: u32) -> Result<Vec<FaultRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, received_ms, at_ms, check_id, state, severity, subject, value, evidence,
                        via
                 FROM fault_events WHERE endpoint_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![id, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(fault_from_row(&id, row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn snapshot_times(&self, ids: Vec<String>) -> Result<HashMap<String, i64>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT latest_snapshot_ms FROM endpoints
                 WHERE id = ?1 AND latest_snapshot IS NOT NULL",
            )?;
            let mut out = HashMap::with_capacity(ids.len());
            for id in ids {
                if let Some(ms) = stmt.query_row([&id], |r| r.get::<_, i64>(0)).optional()? {
                    out.insert(id, ms);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn presence(&self) -> Result<Vec<Presence>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT id, online, last_seen_ms FROM endpoints")?;
            let rows = stmt.query_map([], |r| {
                Ok(Presence {
                    endpoint_id: r.get(0)?,
                    online: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn wants_resync(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(
                c.query_row("SELECT resync FROM endpoints WHERE id = ?1", [&id], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
                .is_some_and(|v| v != 0),
            )
        })
        .await
    }

    async fn resync_done(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            c.execute("UPDATE endpoints SET resync = 0 WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }
}
