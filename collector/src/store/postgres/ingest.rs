//! Sessions and the ingest commit on PostgreSQL: the same plan as SQLite
//! (see [`crate::store::plan_batch`]), written with one statement per kind
//! of change over arrays, so a batch of thousands costs a few round trips.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use vitals_proto::identity::EndpointId;

use super::*;
use crate::store::{
    Admission, Batch, EndpointProgress, IngestStore, SessionChange, SessionOpen, SessionStore,
};

#[async_trait]
impl SessionStore for PgStore {
    async fn open_session(&self, open: &SessionOpen) -> Result<Admission, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let admission = open_in(&tx, open, &self.replica).await?;
        tx.commit().await?;
        Ok(admission)
    }

    async fn close_session(&self, endpoint: &EndpointId, at_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        close_in(&client, endpoint.as_str(), at_ms, &self.replica).await
    }

    async fn mark_all_offline(&self, at_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE endpoints SET online = FALSE, state_since_ms = $1
                 WHERE online AND session_replica = $2",
                &[&at_ms, &self.replica],
            )
            .await?;
        Ok(())
    }
}

/// A session begins: see [`SessionStore::open_session`].
async fn open_in(
    c: &impl GenericClient,
    open: &SessionOpen,
    replica: &str,
) -> Result<Admission, StoreError> {
    let id = open.endpoint.as_str();
    let known = c
        .query_opt(
            &c.prepare_cached(
                "SELECT revoked_ms, revoke_reason, machine_id, clone_machine_id
                 FROM endpoints WHERE id = $1 FOR NO KEY UPDATE",
            )
            .await?,
            &[&id],
        )
        .await?;
    if let Some(row) = known {
        let (revoked_ms, reason, bound, flagged): (i64, String, String, String) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if revoked_ms > 0 {
            return Ok(Admission::Revoked { reason });
        }
        if !bound.is_empty() && !open.machine_id.is_empty() && bound != open.machine_id {
            c.execute(
                "UPDATE endpoints SET clone_machine_id = $2 WHERE id = $1",
                &[&id, &open.machine_id],
            )
            .await?;
            return Ok(Admission::OtherMachine {
                bound,
                newly_flagged: flagged != open.machine_id,
            });
        }
    }
    let row = c
        .query_one(
            &c.prepare_cached(
                "INSERT INTO endpoints (id, platform, agent_version, online, first_seen_ms,
                     last_seen_ms, state_since_ms, machine_id, session_replica)
                 VALUES ($1, $2, $3, TRUE, $4, $4, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET platform = $2, agent_version = $3, online = TRUE,
                     last_seen_ms = $4, state_since_ms = $4, session_replica = $6,
                     machine_id = CASE WHEN endpoints.machine_id = '' THEN $5
                                       ELSE endpoints.machine_id END
                 RETURNING committed_seq",
            )
            .await?,
            &[
                &id,
                &open.platform,
                &open.agent_version,
                &open.at_ms,
                &open.machine_id,
                &replica,
            ],
        )
        .await?;
    Ok(Admission::Admitted(row.try_get::<_, i64>(0)? as u64))
}

/// A session ends: see [`SessionStore::close_session`]. Only the
/// replica holding the session closes it: an older session ending on one
/// replica after a newer one opened on another leaves the endpoint online.
async fn close_in(
    c: &impl GenericClient,
    id: &str,
    at_ms: i64,
    replica: &str,
) -> Result<(), StoreError> {
    c.execute(
        &c.prepare_cached(
            "UPDATE endpoints SET online = FALSE, last_seen_ms = GREATEST(last_seen_ms, $2),
                 state_since_ms = $2 WHERE id = $1 AND session_replica = $3",
        )
        .await?,
        &[&id, &at_ms, &replica],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl IngestStore for PgStore {
    async fn commit_batch(&self, batch: Batch) -> Result<Vec<Admission>, StoreError> {
        if batch.sessions.is_empty() && batch.records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(newest) = batch.records.iter().map(|r| r.received_ms).max() {
            self.cover(newest).await?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_once(&batch).await {
                Ok(admissions) => return Ok(admissions),
                // Two replicas briefly committing for one endpoint can
                // deadlock; the database aborts one, which runs again.
                Err(e) if retryable(&e) && attempt < 5 => continue,
                // A receive time past the partitions made (a clock jump):
                // make them and run again.
                Err(e) if no_partition(&e) && attempt < 5 => {
                    self.cover_history(batch.records.iter().map(|r| r.received_ms))
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl PgStore {
    async fn commit_once(&self, batch: &Batch) -> Result<Vec<Admission>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut admissions = Vec::new();
        for change in &batch.sessions {
            match change {
                SessionChange::Open(open) => {
                    admissions.push(open_in(&tx, open, &self.replica).await?)
                }
                SessionChange::Close { endpoint, at_ms } => {
                    close_in(&tx, endpoint.as_str(), *at_ms, &self.replica).await?
                }
            }
        }
        if batch.records.is_empty() {
            tx.commit().await?;
            return Ok(admissions);
        }
        // Each endpoint's progress, its row locked until commit (in id
        // order, so two replicas never wait on each other in a circle).
        let mut ids: Vec<&str> = batch.records.iter().map(|r| r.endpoint.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT id, committed_seq, last_history_ms FROM endpoints
                     WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
                )
                .await?,
                &[&ids],
            )
            .await?;
        let mut progress: HashMap<String, EndpointProgress> = HashMap::with_capacity(rows.len());
        for row in rows {
            progress.insert(
                row.try_get(0)?,
                EndpointProgress {
                    committed: row.try_get::<_, i64>(1)? as u64,
                    last_history_ms: row.try_get(2)?,
                },
            );
        }
        let plan = crate::store::plan_batch(&batch.records, self.history_interval_ms, |id| {
            progress
                .get(id)
                .copied()
                .ok_or_else(|| StoreError::UnknownEndpoint(id.to_owned()))
        })?;

        if !plan.history.is_empty() {
            let n = plan.history.len();
            let (mut ids, mut seqs, mut received, mut taken, mut bodies) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (r, s) in &plan.history {
                ids.push(r.endpoint.as_str());
                seqs.push(r.seq as i64);
                received.push(r.received_ms);
                taken.push(s.taken_at_ms);
                bodies.push(s.encoded.as_slice());
            }
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO snapshots (endpoint_id, seq, received_ms, taken_ms, body)
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                          $5::bytea[])",
                )
                .await?,
                &[&ids, &seqs, &received, &taken, &bodies],
            )
            .await?;
        }

        let latest: Vec<_> = plan
            .advanced
            .iter()
            .filter_map(|a| a.newest.map(|s| (a, s)))
            .collect();
        if !latest.is_empty() {
            let n = latest.len();
            let mut cols = LatestColumns::with_capacity(n);
            for (a, s) in &latest {
                cols.ids.push(a.endpoint);
                cols.seqs.push(a.seq as i64);
                cols.received.push(a.received_ms);
                cols.hostnames.push(&s.hostname);
                cols.os.push(&s.os);
                cols.cpu.push(s.cpu_usage_percent);
                cols.memory.push(s.memory_used_percent);
                cols.disk.push(s.fullest_disk_percent);
                cols.taken.push(s.taken_at_ms);
                cols.bodies.push(s.encoded.as_slice());
                cols.last_history.push(a.last_history_ms);
                cols.addresses.push(&s.addresses);
            }
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE endpoints e SET committed_seq = u.seq,
                         last_seen_ms = GREATEST(e.last_seen_ms, u.received),
                         hostname = u.hostname, os = u.os, cpu_usage_percent = u.cpu,
                         memory_used_percent = u.memory, fullest_disk_percent = u.disk,
                         latest_snapshot_ms = u.taken, latest_snapshot = u.body,
                         last_history_ms = u.last_history, addresses = u.addresses
                     FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                                 $6::float8[], $7::float8[], $8::float8[], $9::bigint[],
                                 $10::bytea[], $11::bigint[], $12::text[])
                          AS u(id, seq, received, hostname, os, cpu, memory, disk, taken, body,
                               last_history, addresses)
                     WHERE e.id = u.id",
                )
                .await?,
                &[
                    &cols.ids,
                    &cols.seqs,
                    &cols.received,
                    &cols.hostnames,
                    &cols.os,
                    &cols.cpu,
                    &cols.memory,
                    &cols.disk,
                    &cols.taken,
                    &cols.bodies,
                    &cols.last_history,
                    &cols.addresses,
                ],
            )
            .await?;
        }

        // Fault events alone move only the committed sequence.
        let moved: Vec<_> = plan
            .advanced
            .iter()
            .filter(|a| a.newest.is_none())
            .collect();
        if !moved.is_empty() {
            let ids: Vec<&str> = moved.iter().map(|a| a.endpoint).collect();
            let seqs: Vec<i64> = moved.iter().map(|a| a.seq as i64).collect();
            let received: Vec<i64> = moved.iter().map(|a| a.received_ms).collect();
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE endpoints e SET committed_seq = u.seq,
                         last_seen_ms = GREATEST(e.last_seen_ms, u.received)
                     FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(id, seq, received)
                     WHERE e.id = u.id",
                )
                .await?,
                &[&ids, &seqs, &received],
            )
            .await?;
        }

        if !plan.faults.is_empty() {
            let n = plan.faults.len();
            let mut cols = FaultColumns::with_capacity(n);
            for (r, e) in &plan.faults {
                cols.ids.push(r.endpoint.as_str());
                cols.seqs.push(r.seq as i64);
                cols.received.push(r.received_ms);
                cols.at.push(e.at_ms);
                cols.checks.push(&e.check_id);
                cols.subjects.push(&e.subject);
                cols.states.push(e.state.as_str());
                cols.severities.push(e.severity.as_str());
                cols.values.push(e.value);
                cols.evidence.push(&e.evidence);
                cols.via.push(&e.via);
            }
            // Ids in commit order: held from here to the commit, the lock
            // lets no other transaction take fault ids in between.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_FAULT_IDS])
                .await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO fault_events (endpoint_id, seq, received_ms, at_ms, check_id,
                         subject, state, severity, value, evidence, via)
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                          $5::text[], $6::text[], $7::text[], $8::text[],
                                          $9::float8[], $10::text[], $11::text[])
                     ON CONFLICT (endpoint_id, seq) DO NOTHING",
                )
                .await?,
                &[
                    &cols.ids,
                    &cols.seqs,
                    &cols.received,
                    &cols.at,
                    &cols.checks,
                    &cols.subjects,
                    &cols.states,
                    &cols.severities,
                    &cols.values,
                    &cols.evidence,
                    &cols.via,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(admissions)
    }
}

/// The columns of the latest-snapshot update, one array each.
struct LatestColumns<'a> {
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    received: Vec<i64>,
    hostnames: Vec<&'a str>,
    os: Vec<&'a str>,
    cpu: Vec<f64>,
    memory: Vec<f64>,
    disk: Vec<f64>,
    taken: Vec<i64>,
    bodies: Vec<&'a [u8]>,
    last_history: Vec<i64>,
    addresses: Vec<&'a str>,
}

impl LatestColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        LatestColumns {
            ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            hostnames: Vec::with_capacity(n),
            os: Vec::with_capacity(n),
            cpu: Vec::with_capacity(n),
            memory: Vec::with_capacity(n),
            disk: Vec::with_capacity(n),
            taken: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            last_history: Vec::with_capacity(n),
            addresses: Vec::with_capacity(n),
        }
    }
}

/// The columns of the fault event insert, one array each.
struct FaultColumns<'a> {
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    received: Vec<i64>,
    at: Vec<i64>,
    checks: Vec<&'a str>,
    subjects: Vec<&'a str>,
    states: Vec<&'a str>,
    severities: Vec<&'a str>,
    values: Vec<f64>,
    evidence: Vec<&'a str>,
    via: Vec<&'a str>,
}

impl FaultColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        FaultColumns {
            ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            checks: Vec::with_capacity(n),
            subjects: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            severities: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            evidence: Vec::with_capacity(n),
            via: Vec::with_capacity(n),
        }
    }
}
