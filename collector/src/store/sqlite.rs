//! SQLite backend: the embedded default, nothing to install.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that
//! has returned is on disk before the collector acknowledges it; neither a
//! `kill -9` nor a power cut loses an acknowledged message. Batching many
//! messages per transaction keeps the fsync cost per message small.
//!
//! One connection writes and one reads; WAL lets readers run beside the
//! writer. Both are used from blocking tasks so the async runtime never
//! waits on disk. Each connection keeps up to 64 MiB of pages cached and
//! maps up to 256 MiB of the file, so hot index pages are not read through
//! system calls on every insert.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use vitals_proto::domain::{
    EndpointDetail, EndpointSummary, FaultEvent, FaultRecord, FaultState, HistoryEntry, Severity,
    Snapshot,
};
use vitals_proto::identity::EndpointId;

use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use super::{
    Delivery, DeliveryOutcome, Record, RecordBody, SessionOpen, Store, StoreError, TicketFilter,
    TicketState, TicketStep,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records the
/// last one applied. Never edit a released migration: add a new one.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_endpoints_snapshots.sql"),
    ),
    (
        2,
        include_str!("../../migrations/sqlite/0002_fault_events.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_tickets.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_webhook_outbox.sql"),
    ),
    (5, include_str!("../../migrations/sqlite/0005_audit.sql")),
    (
        6,
        include_str!("../../migrations/sqlite/0006_ticket_awaiting.sql"),
    ),
];

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    history_limit: u32,
    history_interval_ms: i64,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies migrations.
    /// `history_interval`: a snapshot enters the history when it was taken at
    /// least this long after the newest one already there (zero keeps all).
    pub async fn open(
        path: &Path,
        history_limit: u32,
        history_interval: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let (writer, reader) = tokio::task::spawn_blocking(move || {
            let writer = connect(&path)?;
            migrate(&writer)?;
            let reader = connect(&path)?;
            Ok::<_, StoreError>((writer, reader))
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            history_limit: history_limit.max(1),
            history_interval_ms: history_interval.as_millis() as i64,
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        with(self.writer.clone(), f).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        with(self.reader.clone(), f).await
    }
}

async fn with<T: Send + 'static>(
    conn: Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || {
        // A panic while holding the lock leaves the connection usable: SQLite
        // rolls back an unfinished transaction when the next one begins.
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| StoreError::Worker(e.to_string()))?
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -65536;
         PRAGMA mmap_size = 268435456;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(open_err)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let apply = || -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply().map_err(|source| StoreError::Migration {
            version: *version,
            source,
        })?;
    }
    Ok(())
}

const SUMMARY_COLUMNS: &str = "id, hostname, platform, os, online, first_seen_ms, last_seen_ms, \
     agent_version, cpu_usage_percent, memory_used_percent, fullest_disk_percent, latest_snapshot_ms";

fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointSummary> {
    Ok(EndpointSummary {
        endpoint_id: r.get(0)?,
        hostname: r.get(1)?,
        platform: r.get(2)?,
        os: r.get(3)?,
        online: r.get(4)?,
        first_seen_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        agent_version: r.get(7)?,
        cpu_usage_percent: r.get::<_, f64>(8)? as f32,
        memory_used_percent: r.get::<_, f64>(9)? as f32,
        fullest_disk_percent: r.get::<_, f64>(10)? as f32,
        latest_snapshot_ms: r.get(11)?,
    })
}

fn parse_snapshot(endpoint: &str, seq: u64, body: &str) -> Result<Snapshot, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt {
        endpoint: endpoint.to_owned(),
        seq,
        source,
    })
}

/// A snapshot as stored: JSON of the domain type. Serialising a plain
/// struct of strings and numbers cannot fail.
fn json(s: &Snapshot) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[async_trait]
impl Store for SqliteStore {
    async fn open_session(&self, open: &SessionOpen) -> Result<u64, StoreError> {
        let open = open.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO endpoints (id, platform, agent_version, online, first_seen_ms, \
                     last_seen_ms, state_since_ms)
                 VALUES (?1, ?2, ?3, 1, ?4, ?4, ?4)
                 ON CONFLICT (id) DO UPDATE SET platform = ?2, agent_version = ?3, online = 1,
                     last_seen_ms = ?4, state_since_ms = ?4",
                params![
                    open.endpoint.as_str(),
                    open.platform,
                    open.agent_version,
                    open.at_ms
                ],
            )?;
            let seq: i64 = c.query_row(
                "SELECT committed_seq FROM endpoints WHERE id = ?1",
                [open.endpoint.as_str()],
                |r| r.get(0),
            )?;
            Ok(seq as u64)
        })
        .await
    }

    async fn close_session(&self, endpoint: &EndpointId, at_ms: i64) -> Result<(), StoreError> {
        let id = endpoint.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE endpoints SET online = 0, last_seen_ms = MAX(last_seen_ms, ?2),
                     state_since_ms = ?2 WHERE id = ?1",
                params![id, at_ms],
            )?;
            Ok(())
        })
        .await
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

    async fn commit(&self, batch: Vec<Record>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let limit = self.history_limit as i64;
        let interval = self.history_interval_ms;
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut state_of = tx.prepare_cached(
                    "SELECT committed_seq, last_history_ms FROM endpoints WHERE id = ?1",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO snapshots (endpoint_id, seq, received_ms, taken_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut fault = tx.prepare_cached(
                    "INSERT OR IGNORE INTO fault_events (endpoint_id, seq, received_ms, at_ms,
                         check_id, subject, state, severity, value, evidence)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                let mut committed = tx.prepare_cached(
                    "UPDATE endpoints SET committed_seq = ?2, last_seen_ms = MAX(last_seen_ms, ?3)
                     WHERE id = ?1",
                )?;
                let mut latest = tx.prepare_cached(
                    "UPDATE endpoints SET last_seen_ms = MAX(last_seen_ms, ?3),
                         hostname = ?4, os = ?5, cpu_usage_percent = ?6,
                         memory_used_percent = ?7, fullest_disk_percent = ?8,
                         latest_snapshot_ms = ?9, latest_snapshot = ?10, last_history_ms = ?11
                     WHERE id = ?1",
                )?;
                let mut prune = tx.prepare_cached(
                    "DELETE FROM snapshots WHERE endpoint_id = ?1 AND seq <=
                         (SELECT seq FROM snapshots WHERE endpoint_id = ?1
                          ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                )?;
                // Per endpoint: what is committed, the newest record of this
                // batch, and whether history grew.
                struct State<'a> {
                    committed: u64,
                    last_history_ms: i64,
                    newest: Option<(&'a Record, &'a Snapshot)>,
                    history_grew: bool,
                    /// Highest fresh sequence and its receive time.
                    advanced: Option<(u64, i64)>,
                }
                let mut states: HashMap<&str, State> = HashMap::new();
                for r in &batch {
                    let id = r.endpoint.as_str();
                    if !states.contains_key(id) {
                        let (committed, last_history_ms) = state_of
                            .query_row([id], |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)))?;
                        states.insert(
                            id,
                            State {
                                committed: committed as u64,
                                last_history_ms,
                                newest: None,
                                history_grew: false,
                                advanced: None,
                            },
                        );
                    }
                    let Some(st) = states.get_mut(id) else {
                        continue;
                    };
                    // Sequences of one endpoint arrive in order, so anything
                    // at or below the committed one is a replay.
                    if r.seq <= st.committed {
                        continue;
                    }
                    st.committed = r.seq;
                    st.advanced = Some((r.seq, r.received_ms));
                    let snapshot = match &r.body {
                        RecordBody::Fault(e) => {
                            fault.execute(params![
                                id,
                                r.seq as i64,
                                r.received_ms,
                                e.at_ms,
                                e.check_id,
                                e.subject,
                                e.state.as_str(),
                                e.severity.as_str(),
                                e.value,
                                e.evidence
                            ])?;
                            continue;
                        }
                        RecordBody::Snapshot(s) => s,
                    };
                    st.newest = Some((r, snapshot));
                    let taken = snapshot.taken_at_ms;
                    if interval == 0
                        || st.last_history_ms <= 0
                        || taken - st.last_history_ms >= interval
                    {
                        insert.execute(params![
                            id,
                            r.seq as i64,
                            r.received_ms,
                            taken,
                            json(snapshot)
                        ])?;
                        st.last_history_ms = taken;
                        st.history_grew = true;
                    }
                }
                // Only the newest snapshot of each endpoint is written as its
                // latest state.
                for (id, st) in states {
                    let Some((seq, received_ms)) = st.advanced else {
                        continue;
                    };
                    // Fault events alone move only the committed sequence.
                    committed.execute(params![id, seq as i64, received_ms])?;
                    let Some((r, s)) = st.newest else { continue };
                    latest.execute(params![
                        id,
                        r.seq as i64,
                        r.received_ms,
                        s.host.hostname,
                        format!("{} {}", s.host.os_name, s.host.os_version).trim(),
                        s.cpu.usage_percent as f64,
                        s.memory.used_percent() as f64,
                        s.fullest_disk_percent() as f64,
                        s.taken_at_ms,
                        json(s),
                        st.last_history_ms,
                    ])?;
                    if st.history_grew {
                        prune.execute(params![id, limit])?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

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
        self.read(move |c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS}, state_since_ms, committed_seq, latest_snapshot,
                     (SELECT COUNT(*) FROM snapshots WHERE endpoint_id = endpoints.id)
                 FROM endpoints WHERE id = ?1"
            );
            let row = c
                .query_row(&sql, [&id], |r| {
                    Ok((
                        summary_from_row(r)?,
                        r.get::<_, i64>(12)?,
                        r.get::<_, i64>(13)? as u64,
                        r.get::<_, Option<String>>(14)?,
                        r.get::<_, i64>(15)? as u64,
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, received_ms, body FROM snapshots WHERE endpoint_id = ?1
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
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
                "SELECT seq, received_ms, at_ms, check_id, state, severity, subject, value, evidence
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

    async fn fault_events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, FaultEvent)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, received_ms, at_ms, check_id, state, severity, subject, value, evidence,
                        id, endpoint_id
                 FROM fault_events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let endpoint: String = row.get(10)?;
                let record = fault_from_row(&endpoint, row)?;
                out.push((row.get(9)?, endpoint, record.event));
            }
            Ok(out)
        })
        .await
    }

    async fn ticket_state(&self) -> Result<TicketState, StoreError> {
        self.read(|c| {
            let mut state = TicketState::default();
            let mut stmt = c.prepare(
                "SELECT id, body FROM tickets
                 WHERE status NOT IN ('resolved', 'closed')
                    OR id IN (SELECT MAX(id) FROM tickets GROUP BY endpoint_id, check_id, subject)
                 ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                state
                    .tickets
                    .push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            let mut stmt =
                c.prepare("SELECT id, body FROM incidents WHERE resolved_ms IS NULL ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                state
                    .incidents
                    .push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            state.max_ticket = c.query_row("SELECT COALESCE(MAX(id), 0) FROM tickets", [], |r| {
                r.get::<_, i64>(0)
            })? as u64;
            state.max_incident =
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM incidents", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
            state.cursor = c.query_row(
                "SELECT fault_event_id FROM ticket_cursor WHERE one = 1",
                [],
                |r| r.get(0),
            )?;
            let mut stmt = c.prepare(
                "SELECT ticket, endpoint_id, fault_at_ms, since_ms FROM ticket_awaiting
                 ORDER BY ticket",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(crate::store::AwaitingEvidence {
                    ticket: r.get::<_, i64>(0)? as u64,
                    endpoint: r.get(1)?,
                    fault_at_ms: r.get(2)?,
                    since_ms: r.get(3)?,
                })
            })?;
            for row in rows {
                state.awaiting.push(row?);
            }
            Ok(state)
        })
        .await
    }

    async fn save_tickets(&self, step: TicketStep) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT INTO tickets (id, endpoint_id, check_id, subject, status, priority,
                                          assignee, incident, opened_ms, updated_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                        priority = excluded.priority, assignee = excluded.assignee,
                        incident = excluded.incident, updated_ms = excluded.updated_ms,
                        body = excluded.body",
                )?;
                for t in &step.tickets {
                    put.execute(params![
                        t.id as i64,
                        t.endpoint,
                        t.check_id,
                        t.subject,
                        t.status.as_str(),
                        t.priority.as_str(),
                        t.assignee,
                        t.incident.map(|i| i as i64),
                        t.opened_ms,
                        step.now_ms,
                        body_json(t),
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO incidents (id, check_id, opened_ms, resolved_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms,
                        body = excluded.body",
                )?;
                for i in &step.incidents {
                    put.execute(params![
                        i.id as i64,
                        i.check_id,
                        i.opened_ms,
                        i.resolved_ms,
                        body_json(i),
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO ticket_timeline (ticket, incident, at_ms, who, kind, text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for e in &step.entries {
                    put.execute(params![
                        e.ticket.map(|t| t as i64),
                        e.incident.map(|i| i as i64),
                        e.at_ms,
                        e.who,
                        vitals_proto::convert::name_of(&e.kind),
                        e.text,
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO ticket_snapshots (ticket, at_ms, body) VALUES (?1, ?2, ?3)",
                )?;
                for (ticket, snapshot) in &step.snapshots {
                    put.execute(params![*ticket as i64, step.now_ms, json(snapshot)])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO webhook_outbox (webhook, event, body, created_ms, next_attempt_ms)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                )?;
                for (webhook, event, body) in &step.deliveries {
                    put.execute(params![webhook, event, body, step.now_ms])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT OR REPLACE INTO ticket_awaiting (ticket, endpoint_id, fault_at_ms, since_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for a in &step.awaiting_added {
                    put.execute(params![a.ticket as i64, a.endpoint, a.fault_at_ms, a.since_ms])?;
                }
                let mut done = tx.prepare_cached("DELETE FROM ticket_awaiting WHERE ticket = ?1")?;
                for t in &step.awaiting_done {
                    done.execute(params![*t as i64])?;
                }
                tx.execute(
                    "UPDATE ticket_cursor SET fault_event_id = ?1 WHERE one = 1",
                    params![step.cursor],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn tickets(&self, filter: TicketFilter) -> Result<Vec<Ticket>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, body FROM tickets
                 WHERE (?1 = 0 OR status NOT IN ('resolved', 'closed'))
                   AND (?2 IS NULL OR endpoint_id = ?2)
                   AND (?3 IS NULL OR check_id = ?3)
                   AND (?4 IS NULL OR incident = ?4)
                   AND (?5 IS NULL OR status = ?5)
                   AND (?6 IS NULL OR priority = ?6)
                   AND (?7 IS NULL OR assignee = ?7)
                 ORDER BY priority, id DESC LIMIT ?8",
            )?;
            let mut rows = stmt.query(params![
                filter.open_only,
                filter.endpoint,
                filter.check_id,
                filter.incident.map(|i| i as i64),
                filter.status,
                filter.priority,
                filter.assignee,
                filter.limit.max(1),
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, webhook, event, body, attempts FROM webhook_outbox
                 WHERE delivered_ms IS NULL AND dead_ms IS NULL AND next_attempt_ms <= ?1
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    webhook: r.get(1)?,
                    event: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delivery_outcome(&self, id: i64, outcome: DeliveryOutcome) -> Result<(), StoreError> {
        self.write(move |c| {
            match outcome {
                DeliveryOutcome::Delivered { at_ms } => c.execute(
                    "UPDATE webhook_outbox SET delivered_ms = ?2, attempts = attempts + 1,
                        last_error = NULL WHERE id = ?1",
                    params![id, at_ms],
                )?,
                DeliveryOutcome::Retry { next_ms, error } => c.execute(
                    "UPDATE webhook_outbox SET next_attempt_ms = ?2, attempts = attempts + 1,
                        last_error = ?3 WHERE id = ?1",
                    params![id, next_ms, error],
                )?,
                DeliveryOutcome::Dead { at_ms, error } => c.execute(
                    "UPDATE webhook_outbox SET dead_ms = ?2, attempts = attempts + 1,
                        last_error = ?3 WHERE id = ?1",
                    params![id, at_ms, error],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn audit_append(&self, e: vitals_proto::diag::AuditEntry) -> Result<u64, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO audit_log (at_ms, who, role, endpoint_id, kind, params, outcome,
                    detail, duration_ms, ticket)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
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
                ],
            )?;
            Ok(c.last_insert_rowid() as u64)
        })
        .await
    }

    async fn audit(
        &self,
        f: super::AuditFilter,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at_ms, who, role, endpoint_id, kind, params, outcome, detail,
                        duration_ms, ticket
                 FROM audit_log
                 WHERE (?1 = '' OR endpoint_id = ?1) AND (?2 = '' OR who = ?2)
                   AND (?3 = '' OR kind = ?3)
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![f.endpoint, f.who, f.kind, f.limit.clamp(1, 1000)],
                |r| {
                    let params: String = r.get(6)?;
                    Ok(vitals_proto::diag::AuditEntry {
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
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ticket(&self, id: u64) -> Result<Option<TicketDetail>, StoreError> {
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM tickets WHERE id = ?1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(body) = body else { return Ok(None) };
            let ticket: Ticket = parse_body(id as i64, &body)?;
            let mut stmt = c.prepare_cached(
                "SELECT incident, at_ms, who, kind, text FROM ticket_timeline
                 WHERE ticket = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![id as i64])?;
            let mut entries = Vec::new();
            while let Some(r) = rows.next()? {
                let kind: String = r.get(3)?;
                entries.push(Entry {
                    ticket: Some(id),
                    incident: r.get::<_, Option<i64>>(0)?.map(|i| i as u64),
                    at_ms: r.get(1)?,
                    who: r.get(2)?,
                    kind: serde_json::from_value(serde_json::Value::String(kind.clone())).map_err(
                        |_| StoreError::CorruptTicket {
                            id: id as i64,
                            what: format!("timeline kind \"{kind}\""),
                        },
                    )?,
                    text: r.get(4)?,
                });
            }
            let snapshot: Option<String> = c
                .query_row(
                    "SELECT body FROM ticket_snapshots WHERE ticket = ?1 ORDER BY at_ms DESC LIMIT 1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let snapshot = snapshot
                .map(|b| parse_snapshot(&ticket.endpoint, 0, &b))
                .transpose()?;
            Ok(Some(TicketDetail {
                ticket,
                timeline: entries,
                snapshot,
                knowledge: None,
            }))
        })
        .await
    }
}

fn body_json<T: serde::Serialize>(v: &T) -> String {
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn parse_body<T: serde::de::DeserializeOwned>(id: i64, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::CorruptTicket {
        id,
        what: e.to_string(),
    })
}

fn fault_from_row(endpoint: &str, r: &rusqlite::Row<'_>) -> Result<FaultRecord, StoreError> {
    let seq = r.get::<_, i64>(0)? as u64;
    let corrupt = |what: String| StoreError::CorruptFault {
        endpoint: endpoint.to_owned(),
        seq,
        what,
    };
    let state = match r.get::<_, String>(4)?.as_str() {
        "raised" => FaultState::Raised,
        "cleared" => FaultState::Cleared,
        other => return Err(corrupt(format!("state \"{other}\""))),
    };
    let severity = match r.get::<_, String>(5)?.as_str() {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "critical" => Severity::Critical,
        other => return Err(corrupt(format!("severity \"{other}\""))),
    };
    Ok(FaultRecord {
        seq,
        received_at_ms: r.get(1)?,
        event: FaultEvent {
            at_ms: r.get(2)?,
            check_id: r.get(3)?,
            state,
            severity,
            subject: r.get(6)?,
            value: r.get(7)?,
            evidence: r.get(8)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vitals-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("vitals.db")
    }

    fn session(id: &EndpointId) -> SessionOpen {
        SessionOpen {
            endpoint: id.clone(),
            agent_version: String::new(),
            platform: String::new(),
            at_ms: 1,
        }
    }

    fn record(id: &EndpointId, seq: u64, cpu: f32) -> Record {
        let mut snapshot = Snapshot::default();
        snapshot.host.hostname = format!("host-{id}");
        snapshot.cpu.usage_percent = cpu;
        snapshot.taken_at_ms = seq as i64;
        Record {
            endpoint: id.clone(),
            seq,
            received_ms: 1000 + seq as i64,
            body: RecordBody::Snapshot(Box::new(snapshot)),
        }
    }

    #[tokio::test]
    async fn commits_are_idempotent_and_history_is_bounded() {
        let path = temp_db("idem");
        let store = SqliteStore::open(&path, 3, Duration::ZERO).await.unwrap();
        let id: EndpointId = "ws-1".parse().unwrap();
        let open = SessionOpen {
            endpoint: id.clone(),
            agent_version: "0.1.0".into(),
            platform: "linux/x86_64".into(),
            at_ms: 5,
        };
        assert_eq!(store.open_session(&open).await.unwrap(), 0);
        let batch: Vec<_> = (1..=5).map(|s| record(&id, s, s as f32)).collect();
        store.commit(batch.clone()).await.unwrap();
        // A replay of the same sequences changes nothing.
        store.commit(batch.clone()).await.unwrap();
        let detail = store.endpoint("ws-1").await.unwrap().unwrap();
        assert_eq!(detail.committed_seq, 5);
        assert_eq!(detail.history_len, 3);
        assert_eq!(detail.summary.cpu_usage_percent, 5.0);
        assert_eq!(detail.summary.hostname, "host-ws-1");
        assert!(detail.summary.online);
        let seqs: Vec<u64> = store
            .history("ws-1", 10)
            .await
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        // A late, older message does not roll the latest snapshot back.
        store.commit(vec![record(&id, 2, 99.0)]).await.unwrap();
        let detail = store.endpoint("ws-1").await.unwrap().unwrap();
        assert_eq!(detail.summary.cpu_usage_percent, 5.0);
        assert_eq!(store.open_session(&open).await.unwrap(), 5);
        store.close_session(&id, 50).await.unwrap();
        assert!(store.list_endpoints(true).await.unwrap().is_empty());
        assert_eq!(store.list_endpoints(false).await.unwrap().len(), 1);
        assert!(store.endpoint("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn history_is_downsampled_but_latest_is_always_newest() {
        let path = temp_db("downsample");
        let store = SqliteStore::open(&path, 100, Duration::from_millis(10))
            .await
            .unwrap();
        let id: EndpointId = "ws-3".parse().unwrap();
        store.open_session(&session(&id)).await.unwrap();
        // record() takes each snapshot at `seq` ms: one every millisecond.
        store
            .commit((1..=25).map(|s| record(&id, s, s as f32)).collect())
            .await
            .unwrap();
        let seqs: Vec<u64> = store
            .history("ws-3", 100)
            .await
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(seqs, vec![21, 11, 1]);
        let d = store.endpoint("ws-3").await.unwrap().unwrap();
        assert_eq!(d.committed_seq, 25);
        assert_eq!(d.latest.unwrap().cpu.usage_percent, 25.0);
        assert_eq!(d.summary.cpu_usage_percent, 25.0);
    }

    #[tokio::test]
    async fn survives_reopen_and_refuses_newer_schema() {
        let path = temp_db("reopen");
        {
            let store = SqliteStore::open(&path, 10, Duration::ZERO).await.unwrap();
            let id: EndpointId = "ws-2".parse().unwrap();
            store.open_session(&session(&id)).await.unwrap();
            store.commit(vec![record(&id, 7, 1.0)]).await.unwrap();
            store.mark_all_offline(2).await.unwrap();
        }
        let store = SqliteStore::open(&path, 10, Duration::ZERO).await.unwrap();
        let d = store.endpoint("ws-2").await.unwrap().unwrap();
        assert_eq!(d.committed_seq, 7);
        assert!(!d.summary.online);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path, 10, Duration::ZERO).await,
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[tokio::test]
    async fn the_audit_log_only_grows() {
        let path = temp_db("audit");
        let store = SqliteStore::open(&path, 3, Duration::ZERO).await.unwrap();
        for (who, kind) in [("sam", "network"), ("ana", "disk"), ("sam", "os")] {
            store
                .audit_append(vitals_proto::diag::AuditEntry {
                    at_ms: 1,
                    who: who.into(),
                    role: "specialist".into(),
                    endpoint_id: "ws-1".into(),
                    kind: kind.into(),
                    params: [("root".to_owned(), "/".to_owned())].into(),
                    outcome: "ok".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let sams = store
            .audit(crate::store::AuditFilter {
                who: "sam".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let kinds: Vec<&str> = sams.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["os", "network"], "newest first");
        assert_eq!(sams[0].params["root"], "/");
        // Not even the collector's own connection can change or remove one.
        let c = rusqlite::Connection::open(&path).unwrap();
        for sql in [
            "UPDATE audit_log SET outcome = 'ok' WHERE id = 1",
            "DELETE FROM audit_log WHERE id = 1",
        ] {
            let err = c.execute(sql, []).unwrap_err().to_string();
            assert!(err.contains("the audit log is append-only"), "{sql}: {err}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn the_ticket_engine_resumes_exactly_where_it_stopped() {
        use crate::tickets::engine::Engine;
        use vitals_proto::ticket_rules::TicketRules;
        let path = temp_db("tickets");
        let store = SqliteStore::open(&path, 10, Duration::ZERO).await.unwrap();
        let id: EndpointId = "ws-1".parse().unwrap();
        store.open_session(&session(&id)).await.unwrap();
        let fault = |seq: u64, state: FaultState| Record {
            endpoint: id.clone(),
            seq,
            received_ms: 1000,
            body: RecordBody::Fault(FaultEvent {
                check_id: "disk_nearly_full".into(),
                subject: "/".into(),
                state,
                severity: Severity::Warning,
                value: 97.0,
                evidence: "/ at 97%".into(),
                at_ms: 1000,
            }),
        };
        store
            .commit(vec![
                fault(1, FaultState::Raised),
                fault(2, FaultState::Raised),
            ])
            .await
            .unwrap();

        // One step: both events read, one ticket, cursor past both.
        let state = store.ticket_state().await.unwrap();
        assert_eq!(state.cursor, 0);
        let mut engine = Engine::restore(TicketRules::default(), vec![], vec![], 0, 0);
        let events = store.fault_events_after(state.cursor, 100).await.unwrap();
        assert_eq!(events.len(), 2);
        let mut entries = Vec::new();
        for (_, ep, e) in &events {
            entries.extend(engine.on_fault(ep, e, 5000));
        }
        let (tickets, incidents) = engine.changed(&entries);
        store
            .save_tickets(TicketStep {
                tickets,
                incidents,
                entries,
                snapshots: Vec::new(),
                deliveries: vec![
                    ("itsm".into(), "opened".into(), "{\"n\":1}".into()),
                    ("chat".into(), "opened".into(), "{\"n\":2}".into()),
                ],
                awaiting_added: vec![crate::store::AwaitingEvidence {
                    ticket: 1,
                    endpoint: "ws-1".into(),
                    fault_at_ms: 4900,
                    since_ms: 5000,
                }],
                awaiting_done: Vec::new(),
                cursor: events[1].0,
                now_ms: 5000,
            })
            .await
            .unwrap();

        // After a restart nothing is read twice; the ticket is there, still
        // waiting for its evidence.
        drop(store);
        let store = SqliteStore::open(&path, 10, Duration::ZERO).await.unwrap();
        let state = store.ticket_state().await.unwrap();
        assert_eq!(state.tickets.len(), 1);
        assert_eq!(state.max_ticket, 1);
        assert_eq!(
            state
                .awaiting
                .iter()
                .map(|a| (a.ticket, a.fault_at_ms))
                .collect::<Vec<_>>(),
            vec![(1, 4900)]
        );
        store
            .save_tickets(TicketStep {
                awaiting_done: vec![1],
                cursor: state.cursor,
                now_ms: 6000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(store.ticket_state().await.unwrap().awaiting.is_empty());
        assert!(
            store
                .fault_events_after(state.cursor, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let d = store.ticket(1).await.unwrap().unwrap();
        let (t, timeline) = (d.ticket, d.timeline);
        assert_eq!(t.raise_count, 2);
        assert_eq!(t.endpoint, "ws-1");
        let kinds: Vec<_> = timeline.iter().map(|e| e.kind.clone()).collect();
        use vitals_proto::tickets::Kind;
        assert_eq!(kinds, vec![Kind::Opened, Kind::FaultRaised]);
        let open = store
            .tickets(crate::store::TicketFilter {
                open_only: true,
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        let engine = Engine::restore(
            TicketRules::default(),
            state.tickets,
            state.incidents,
            state.max_ticket,
            state.max_incident,
        );
        assert_eq!(engine.ticket(1).unwrap().raise_count, 2);

        // The webhook outbox survived the restart with the step; a retry
        // waits for its time, a delivered or dead post is never due again.
        let due = store.due_deliveries(5000, 10).await.unwrap();
        let names: Vec<_> = due
            .iter()
            .map(|d| (d.webhook.as_str(), d.attempts))
            .collect();
        assert_eq!(names, vec![("itsm", 0), ("chat", 0)]);
        assert_eq!(due[0].body, "{\"n\":1}");
        use crate::store::DeliveryOutcome;
        store
            .delivery_outcome(due[0].id, DeliveryOutcome::Delivered { at_ms: 5001 })
            .await
            .unwrap();
        store
            .delivery_outcome(
                due[1].id,
                DeliveryOutcome::Retry {
                    next_ms: 9000,
                    error: "503".into(),
                },
            )
            .await
            .unwrap();
        assert!(store.due_deliveries(8999, 10).await.unwrap().is_empty());
        let again = store.due_deliveries(9000, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (due[1].id, 1));
        store
            .delivery_outcome(
                due[1].id,
                DeliveryOutcome::Dead {
                    at_ms: 9001,
                    error: "gone".into(),
                },
            )
            .await
            .unwrap();
        assert!(store.due_deliveries(i64::MAX, 10).await.unwrap().is_empty());
        let _ = std::fs::remove_file(&path);
    }
}
