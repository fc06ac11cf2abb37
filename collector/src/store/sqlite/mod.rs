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
//!
//! One file per concern, each implementing that concern's storage trait:
//! `ingest.rs` (sessions and the commit), `endpoints.rs`, `tickets.rs`,
//! `outbox.rs` (notification deliveries), `audit.rs`, `accounts.rs`,
//! `enroll.rs` (tokens, certificates, revocation).

mod accounts;
mod audit;
mod endpoints;
mod enroll;
mod ingest;
mod outbox;
mod retention;
#[cfg(test)]
mod tests;
mod tickets;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry, Snapshot};
use vitals_proto::identity::EndpointId;

use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use super::{
    Account, AccountStore, Admission, AuditStore, Batch, Delivery, DeliveryOutcome, EndpointStore,
    EnrollStore, EnrollToken, IngestStore, IssuedCert, NewEnrollment, OutboxStore, Presence,
    Revocations, SessionChange, SessionOpen, SessionStore, StoreError, StoredFault, TicketFilter,
    TicketState, TicketStep, TicketStore, TokenRefusal,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records the
/// last one applied. Never edit a released migration: add a new one.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/sqlite/0001_endpoints_snapshots.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_fault_events.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_tickets.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/sqlite/0004_webhook_outbox.sql"),
    ),
    (5, include_str!("../../../migrations/sqlite/0005_audit.sql")),
    (
        6,
        include_str!("../../../migrations/sqlite/0006_ticket_awaiting.sql"),
    ),
    (
        7,
        include_str!("../../../migrations/sqlite/0007_fault_via.sql"),
    ),
    (
        8,
        include_str!("../../../migrations/sqlite/0008_console_accounts.sql"),
    ),
    (
        9,
        include_str!("../../../migrations/sqlite/0009_console_totp.sql"),
    ),
    (
        10,
        include_str!("../../../migrations/sqlite/0010_endpoint_addresses.sql"),
    ),
    (
        11,
        include_str!("../../../migrations/sqlite/0011_enrollment.sql"),
    ),
    (
        12,
        include_str!("../../../migrations/sqlite/0012_history_len.sql"),
    ),
    (
        13,
        include_str!("../../../migrations/sqlite/0013_retention.sql"),
    ),
];

/// One connection, taken in turn. The lock is async so callers queue as
/// tasks: a blocking thread is taken only once the connection is free. (With
/// a blocking lock, ten thousand desks reconnecting at once each held a
/// blocking-pool thread waiting on the reader, and the pool grew to
/// hundreds of threads.)
type Conn = Arc<tokio::sync::Mutex<Connection>>;

pub struct SqliteStore {
    writer: Conn,
    reader: Conn,
    history_limit: u32,
    history_interval_ms: i64,
    path: std::path::PathBuf,
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
        let at = path.clone();
        let (writer, reader) = tokio::task::spawn_blocking(move || {
            let writer = connect(&at)?;
            incremental_vacuum(&writer)?;
            migrate(&writer)?;
            let reader = connect(&at)?;
            Ok::<_, StoreError>((writer, reader))
        })
        .await??;
        Ok(SqliteStore {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            reader: Arc::new(tokio::sync::Mutex::new(reader)),
            history_limit: history_limit.max(1),
            history_interval_ms: history_interval.as_millis() as i64,
            path,
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
    conn: Conn,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let mut guard = conn.lock_owned().await;
    // A panic while holding the lock leaves the connection usable: SQLite
    // rolls back an unfinished transaction when the next one begins.
    tokio::task::spawn_blocking(move || f(&mut guard)).await?
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    // Checkpoints come every 64 MiB of WAL instead of SQLite's 4 MiB: every
    // ingest commit rewrites the last index page of each endpoint it
    // touches, and a checkpoint copies each page once however often it was
    // rewritten since the last one, so rarer checkpoints copy far less.
    //
    // Switching a new file to WAL takes a lock for which SQLite does not
    // always call the busy handler, so a second opener racing for it (a
    // collector starting with an admin command beside it) retries the
    // settings, which are all idempotent, for as long as the busy timeout.
    const SETTINGS: &str = "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;
         PRAGMA mmap_size = 268435456;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 16384;";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.execute_batch(SETTINGS) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => {
                done.map_err(open_err)?;
                return Ok(conn);
            }
        }
    }
}

/// Makes the file give pages back on request (`PRAGMA incremental_vacuum`,
/// after retention removed rows); a file made before this is rewritten
/// once (`VACUUM`).
fn incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    // The mode takes effect with a VACUUM (instant on a new, empty file).
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    let started = std::time::Instant::now();
    if tables > 0 {
        tracing::info!(
            "rewriting the database once so that space freed by retention can be given back"
        );
    }
    conn.execute_batch("VACUUM")?;
    if tables > 0 {
        tracing::info!(took = ?started.elapsed(), "database rewritten");
    }
    Ok(())
}

/// Where a database file's schema stands, applying nothing.
pub async fn migration_status(path: &Path) -> Result<crate::store::MigrationStatus, StoreError> {
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if !path.exists() {
        return Ok(crate::store::MigrationStatus { applied: 0, known });
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let applied: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(crate::store::MigrationStatus { applied, known })
    })
    .await?
}

/// Applies pending migrations, each in a transaction that takes the write
/// lock before it reads the schema version: two processes opening a new
/// file at once (a collector starting, `tokens create` beside it) migrate
/// one after the other instead of both applying the same migration.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    loop {
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        let current: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        let Some((version, sql)) = MIGRATIONS.iter().find(|m| m.0 > current) else {
            tx.commit()?;
            return Ok(());
        };
        let apply = || -> rusqlite::Result<()> {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)
        };
        apply().map_err(|source| StoreError::Migration {
            version: *version,
            source,
        })?;
        tx.commit().map_err(|source| StoreError::Migration {
            version: *version,
            source,
        })?;
    }
}

/// One collector owns a database file: it always leads.
impl crate::store::LeaderStore for SqliteStore {
    fn campaign(&self, _stop: vitals_proto::shutdown::Shutdown) -> crate::leader::Leading {
        crate::leader::Leading::always()
    }
}

const SUMMARY_COLUMNS: &str = "id, hostname, platform, os, online, first_seen_ms, last_seen_ms, \
     agent_version, cpu_usage_percent, memory_used_percent, fullest_disk_percent, latest_snapshot_ms, \
     addresses, enrolled_site, enrolled_tags, machine_id, clone_machine_id, revoked_ms, revoke_reason";
/// How many columns [`SUMMARY_COLUMNS`] names: what follows it in a query
/// starts at this index.
const SUMMARY_LEN: usize = 19;

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
        addresses: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
        enrolled_site: r.get(13)?,
        enrolled_tags: serde_json::from_str(&r.get::<_, String>(14)?).unwrap_or_default(),
        machine_id: r.get(15)?,
        clone_machine_id: r.get(16)?,
        revoked_ms: r.get(17)?,
        revoke_reason: r.get(18)?,
    })
}

/// A stored snapshot: its `vitals.v1.Snapshot` protobuf encoding (a
/// BLOB), or JSON of the domain type as older releases wrote it (TEXT).
/// Both read back; new rows are always protobuf, about a third of the JSON.
struct StoredSnapshot(Vec<u8>);

impl rusqlite::types::FromSql for StoredSnapshot {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match v {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                Ok(StoredSnapshot(b.to_vec()))
            }
            _ => Err(rusqlite::types::FromSqlError::InvalidType),
        }
    }
}

fn parse_snapshot(endpoint: &str, seq: u64, body: &StoredSnapshot) -> Result<Snapshot, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        endpoint: endpoint.to_owned(),
        seq,
        what,
    };
    let body = body.0.as_slice();
    // A protobuf snapshot starts with a field tag, never with '{'.
    if body.first() == Some(&b'{') {
        return serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()));
    }
    <vitals_proto::wire::Snapshot as prost::Message>::decode(body)
        .map(Snapshot::from)
        .map_err(|e| corrupt(e.to_string()))
}

use super::{json_text as body_json, parse_body};

fn fault_from_row(endpoint: &str, r: &rusqlite::Row<'_>) -> Result<FaultRecord, StoreError> {
    let (state, severity): (String, String) = (r.get(4)?, r.get(5)?);
    crate::store::FaultRow {
        seq: r.get::<_, i64>(0)? as u64,
        received_ms: r.get(1)?,
        at_ms: r.get(2)?,
        check_id: r.get(3)?,
        state: &state,
        severity: &severity,
        subject: r.get(6)?,
        value: r.get(7)?,
        evidence: r.get(8)?,
        via: r.get(9)?,
    }
    .record(endpoint)
}
