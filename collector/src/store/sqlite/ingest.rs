//! Sessions and the ingest commit: what the batcher writes, and the
//! replay rule (a record at or below its endpoint's committed sequence
//! takes no effect).

use super::*;

#[async_trait]
impl SessionStore for SqliteStore {
    async fn open_session(&self, open: &SessionOpen) -> Result<Admission, StoreError> {
        let open = open.clone();
        self.write(move |c| open_in(c, &open)).await
    }

    async fn close_session(&self, endpoint: &EndpointId, at_ms: i64) -> Result<(), StoreError> {
        let id = endpoint.to_string();
        self.write(move |c| close_in(c, &id, at_ms)).await
    }

    async fn mark_all_offline(&self, at_ms: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE endpoints SET online = 0, state_since_ms = ?1 WHERE online = 1",
                [at_ms],
            )?;
            Ok(())
        })
        .await
    }
}

/// A session begins: see [`SessionStore::open_session`].
fn open_in(c: &Connection, open: &SessionOpen) -> Result<Admission, StoreError> {
    let mut known = c.prepare_cached(
        "SELECT revoked_ms, revoke_reason, machine_id, clone_machine_id
         FROM endpoints WHERE id = ?1",
    )?;
    let known: Option<(i64, String, String, String)> = known
        .query_row([open.endpoint.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    if let Some((revoked_ms, reason, bound, flagged)) = known {
        if revoked_ms > 0 {
            return Ok(Admission::Revoked { reason });
        }
        if !bound.is_empty() && !open.machine_id.is_empty() && bound != open.machine_id {
            c.prepare_cached("UPDATE endpoints SET clone_machine_id = ?2 WHERE id = ?1")?
                .execute(params![open.endpoint.as_str(), open.machine_id])?;
            return Ok(Admission::OtherMachine {
                bound,
                newly_flagged: flagged != open.machine_id,
            });
        }
    }
    c.prepare_cached(
        "INSERT INTO endpoints (id, platform, agent_version, online, first_seen_ms, \
             last_seen_ms, state_since_ms)
         VALUES (?1, ?2, ?3, 1, ?4, ?4, ?4)
         ON CONFLICT (id) DO UPDATE SET platform = ?2, agent_version = ?3, online = 1,
             last_seen_ms = ?4, state_since_ms = ?4",
    )?
    .execute(params![
        open.endpoint.as_str(),
        open.platform,
        open.agent_version,
        open.at_ms
    ])?;
    if !open.machine_id.is_empty() {
        c.prepare_cached("UPDATE endpoints SET machine_id = ?2 WHERE id = ?1 AND machine_id = ''")?
            .execute(params![open.endpoint.as_str(), open.machine_id])?;
    }
    let seq: i64 = c
        .prepare_cached("SELECT committed_seq FROM endpoints WHERE id = ?1")?
        .query_row([open.endpoint.as_str()], |r| r.get(0))?;
    Ok(Admission::Admitted(seq as u64))
}

/// A session ends: see [`SessionStore::close_session`].
fn close_in(c: &Connection, id: &str, at_ms: i64) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE endpoints SET online = 0, last_seen_ms = MAX(last_seen_ms, ?2),
             state_since_ms = ?2 WHERE id = ?1",
    )?
    .execute(params![id, at_ms])?;
    Ok(())
}

/// How far an endpoint's history may run past its bound before it is pruned
/// back to it: a 32nd of the bound. Each ingest commit touches the end of
/// every endpoint's range it adds to; pruning as well on every commit would
/// also touch the start of each range, doubling the pages it writes. The
/// entries past the bound are never read: reads stop at the bound.
pub(super) fn prune_slack(limit: i64) -> i64 {
    (limit / 32).max(1)
}

#[async_trait]
impl IngestStore for SqliteStore {
    async fn commit_batch(&self, batch: Batch) -> Result<Vec<Admission>, StoreError> {
        if batch.sessions.is_empty() && batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.history_limit as i64;
        let interval = self.history_interval_ms;
        self.write(move |c| {
            let Batch {
                sessions,
                records: batch,
            } = batch;
            let tx = c.transaction()?;
            let mut admissions = Vec::new();
            for change in &sessions {
                match change {
                    SessionChange::Open(open) => admissions.push(open_in(&tx, open)?),
                    SessionChange::Close { endpoint, at_ms } => {
                        close_in(&tx, endpoint.as_str(), *at_ms)?
                    }
                }
            }
            {
                let mut state_of = tx.prepare_cached(
                    "SELECT committed_seq, last_history_ms, history_len FROM endpoints
                     WHERE id = ?1",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO snapshots (endpoint_id, seq, received_ms, taken_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut fault = tx.prepare_cached(
                    "INSERT OR IGNORE INTO fault_events (endpoint_id, seq, received_ms, at_ms,
                         check_id, subject, state, severity, value, evidence, via)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                let mut committed = tx.prepare_cached(
                    "UPDATE endpoints SET committed_seq = ?2, last_seen_ms = MAX(last_seen_ms, ?3)
                     WHERE id = ?1",
                )?;
                let mut latest = tx.prepare_cached(
                    "UPDATE endpoints SET committed_seq = ?2,
                         last_seen_ms = MAX(last_seen_ms, ?3), hostname = ?4, os = ?5, cpu_usage_percent = ?6,
                         memory_used_percent = ?7, fullest_disk_percent = ?8,
                         latest_snapshot_ms = ?9, latest_snapshot = ?10, last_history_ms = ?11,
                         addresses = ?12, history_len = ?13
                     WHERE id = ?1",
                )?;
                // The oldest `?2` entries of an endpoint's history, found
                // from the start of its range in the (endpoint, seq) index.
                let mut prune = tx.prepare_cached(
                    "DELETE FROM snapshots WHERE id IN
                         (SELECT id FROM snapshots WHERE endpoint_id = ?1
                          ORDER BY seq LIMIT ?2)",
                )?;
                let mut history_len: HashMap<&str, i64> = HashMap::new();
                let plan = crate::store::plan_batch(&batch, interval, |id| {
                    let (committed, last_history_ms, len) = state_of.query_row([id], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get::<_, i64>(2)?))
                    })?;
                    history_len.insert(id, len);
                    Ok(crate::store::EndpointProgress {
                        committed: committed as u64,
                        last_history_ms,
                    })
                })?;
                for (r, s) in &plan.history {
                    insert.execute(params![
                        r.endpoint.as_str(),
                        r.seq as i64,
                        r.received_ms,
                        s.taken_at_ms,
                        s.encoded
                    ])?;
                }
                for (r, e) in &plan.faults {
                    fault.execute(params![
                        r.endpoint.as_str(),
                        r.seq as i64,
                        r.received_ms,
                        e.at_ms,
                        e.check_id,
                        e.subject,
                        e.state.as_str(),
                        e.severity.as_str(),
                        e.value,
                        e.evidence,
                        e.via
                    ])?;
                }
                // Only the newest snapshot of each endpoint is written as its
                // latest state.
                for a in &plan.advanced {
                    // Fault events alone move only the committed sequence.
                    let Some(s) = a.newest else {
                        committed.execute(params![a.endpoint, a.seq as i64, a.received_ms])?;
                        continue;
                    };
                    let mut len = history_len.get(a.endpoint).copied().unwrap_or(0) + a.history_added;
                    if len >= limit + prune_slack(limit) {
                        len -= prune.execute(params![a.endpoint, len - limit])? as i64;
                    }
                    latest.execute(params![
                        a.endpoint,
                        a.seq as i64,
                        a.received_ms,
                        s.hostname,
                        s.os,
                        s.cpu_usage_percent,
                        s.memory_used_percent,
                        s.fullest_disk_percent,
                        s.taken_at_ms,
                        s.encoded,
                        a.last_history_ms,
                        s.addresses,
                        len,
                    ])?;
                }
            }
            tx.commit()?;
            Ok(admissions)
        })
        .await
    }
}
