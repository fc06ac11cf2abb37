//! Moving an installation from SQLite to PostgreSQL: every table copied
//! in one PostgreSQL transaction (all or nothing), ids kept (the ticket
//! engine's cursor and the audit log refer to them), snapshots written by
//! older releases as JSON re-encoded as protobuf, and every table's row
//! count checked against the source before the commit.

use std::path::Path;

use deadpool_postgres::GenericClient;
use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use super::postgres::PgStore;
use super::{StoreError, StoreOptions};

/// How a column is read from SQLite and bound for PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    NullText,
    Int,
    NullInt,
    Real,
    /// SQLite's 0/1 as a BOOLEAN.
    Bool,
    /// A stored snapshot: protobuf, or the JSON of older releases.
    Snapshot,
    NullSnapshot,
}

use Kind::*;

/// The tables in copy order, with the columns both schemas share.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "endpoints",
        &[
            ("id", Text),
            ("hostname", Text),
            ("platform", Text),
            ("os", Text),
            ("agent_version", Text),
            ("online", Bool),
            ("first_seen_ms", Int),
            ("last_seen_ms", Int),
            ("state_since_ms", Int),
            ("committed_seq", Int),
            ("cpu_usage_percent", Real),
            ("memory_used_percent", Real),
            ("fullest_disk_percent", Real),
            ("latest_snapshot_ms", Int),
            ("latest_snapshot", NullSnapshot),
            ("last_history_ms", Int),
            ("addresses", Text),
            ("enrolled_site", Text),
            ("enrolled_tags", Text),
            ("machine_id", Text),
            ("clone_machine_id", Text),
            ("revoked_ms", Int),
            ("revoke_reason", Text),
        ],
    ),
    (
        "snapshots",
        &[
            ("endpoint_id", Text),
            ("seq", Int),
            ("received_ms", Int),
            ("taken_ms", Int),
            ("body", Snapshot),
        ],
    ),
    (
        "fault_events",
        &[
            ("id", Int),
            ("endpoint_id", Text),
            ("seq", Int),
            ("received_ms", Int),
            ("at_ms", Int),
            ("check_id", Text),
            ("subject", Text),
            ("state", Text),
            ("severity", Text),
            ("value", Real),
            ("evidence", Text),
            ("via", Text),
        ],
    ),
    (
        "tickets",
        &[
            ("id", Int),
            ("endpoint_id", Text),
            ("check_id", Text),
            ("subject", Text),
            ("status", Text),
            ("priority", Text),
            ("assignee", NullText),
            ("incident", NullInt),
            ("opened_ms", Int),
            ("updated_ms", Int),
            ("body", Text),
        ],
    ),
    (
        "incidents",
        &[
            ("id", Int),
            ("check_id", Text),
            ("opened_ms", Int),
            ("resolved_ms", NullInt),
            ("body", Text),
        ],
    ),
    (
        "ticket_timeline",
        &[
            ("id", Int),
            ("ticket", NullInt),
            ("incident", NullInt),
            ("at_ms", Int),
            ("who", Text),
            ("kind", Text),
            ("text", Text),
        ],
    ),
    (
        "ticket_snapshots",
        &[("ticket", Int), ("at_ms", Int), ("body", Snapshot)],
    ),
    (
        "ticket_awaiting",
        &[
            ("ticket", Int),
            ("endpoint_id", Text),
            ("fault_at_ms", Int),
            ("since_ms", Int),
        ],
    ),
    (
        "webhook_outbox",
        &[
            ("id", Int),
            ("webhook", Text),
            ("event", Text),
            ("body", Text),
            ("created_ms", Int),
            ("attempts", Int),
            ("next_attempt_ms", Int),
            ("delivered_ms", NullInt),
            ("dead_ms", NullInt),
            ("last_error", NullText),
        ],
    ),
    (
        "audit_log",
        &[
            ("id", Int),
            ("at_ms", Int),
            ("who", Text),
            ("role", Text),
            ("endpoint_id", Text),
            ("kind", Text),
            ("params", Text),
            ("outcome", Text),
            ("detail", Text),
            ("duration_ms", Int),
            ("ticket", NullInt),
        ],
    ),
    (
        "console_accounts",
        &[
            ("name", Text),
            ("role", Text),
            ("sites", Text),
            ("password_hash", Text),
            ("must_change", Bool),
            ("disabled", Bool),
            ("created_ms", Int),
            ("updated_ms", Int),
            ("totp_secret", NullText),
            ("recovery_codes", Text),
        ],
    ),
    (
        "enroll_tokens",
        &[
            ("id", Text),
            ("secret_hash", Text),
            ("max_uses", Int),
            ("used", Int),
            ("expires_ms", Int),
            ("site", Text),
            ("tags", Text),
            ("id_pattern", Text),
            ("reenroll", Bool),
            ("created_ms", Int),
            ("created_by", Text),
            ("last_used_ms", Int),
            ("last_used_by", Text),
            ("revoked_ms", Int),
        ],
    ),
    (
        "certificates",
        &[
            ("serial", Text),
            ("kind", Text),
            ("subject", Text),
            ("issued_ms", Int),
            ("not_after_ms", Int),
            ("via", Text),
            ("revoked_ms", Int),
            ("revoke_reason", Text),
        ],
    ),
    (
        "revoked_specialists",
        &[("name", Text), ("revoked_ms", Int), ("reason", Text)],
    ),
    (
        "audit_archives",
        &[
            ("id", Int),
            ("first_id", Int),
            ("last_id", Int),
            ("entries", Int),
            ("file", Text),
            ("sha256", Text),
            ("at_ms", Int),
        ],
    ),
];

/// Tables whose ids come from a sequence on PostgreSQL: moved past the
/// copied ids.
const SEQUENCED: &[&str] = &[
    "fault_events",
    "ticket_timeline",
    "webhook_outbox",
    "audit_log",
    "audit_archives",
];

/// Rows per insert statement.
const CHUNK: usize = 2000;

/// What a migration moved: each table with its row count (source and
/// target agree, or nothing was committed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    pub tables: Vec<(String, u64)>,
    pub ticket_cursor: i64,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (table, n) in &self.tables {
            writeln!(f, "  {table:<20} {n:>10}")?;
        }
        write!(f, "  ticket cursor        {:>10}", self.ticket_cursor)
    }
}

/// One column's values from the source, ready to bind as an array.
enum Column {
    Text(Vec<String>),
    NullText(Vec<Option<String>>),
    Int(Vec<i64>),
    NullInt(Vec<Option<i64>>),
    Real(Vec<f64>),
    Bool(Vec<bool>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn new(kind: Kind) -> Column {
        match kind {
            Text => Column::Text(Vec::new()),
            NullText => Column::NullText(Vec::new()),
            Int => Column::Int(Vec::new()),
            NullInt => Column::NullInt(Vec::new()),
            Real => Column::Real(Vec::new()),
            Bool => Column::Bool(Vec::new()),
            Snapshot | NullSnapshot => Column::Bytes(Vec::new()),
        }
    }

    fn sql_type(kind: Kind) -> &'static str {
        match kind {
            Text | NullText => "text[]",
            Int | NullInt => "bigint[]",
            Real => "float8[]",
            Bool => "boolean[]",
            Snapshot | NullSnapshot => "bytea[]",
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::NullText(v) => v,
            Column::Int(v) => v,
            Column::NullInt(v) => v,
            Column::Real(v) => v,
            Column::Bool(v) => v,
            Column::Bytes(v) => v,
        }
    }
}

/// Reads one value of a source row into its column, or says what is wrong
/// with it.
fn push(col: &mut Column, kind: Kind, value: Value, table: &str, name: &str) -> Result<(), String> {
    let bad = |v: &Value| format!("{table}.{name}: unexpected value {v:?}");
    match (col, value) {
        (Column::Text(c), Value::Text(s)) => c.push(s),
        (Column::NullText(c), Value::Text(s)) => c.push(Some(s)),
        (Column::NullText(c), Value::Null) => c.push(None),
        (Column::Int(c), Value::Integer(i)) => c.push(i),
        (Column::NullInt(c), Value::Integer(i)) => c.push(Some(i)),
        (Column::NullInt(c), Value::Null) => c.push(None),
        (Column::Real(c), Value::Real(r)) => c.push(r),
        (Column::Real(c), Value::Integer(i)) => c.push(i as f64),
        (Column::Bool(c), Value::Integer(i)) => c.push(i != 0),
        (Column::Bytes(c), Value::Null) if kind == NullSnapshot => c.push(None),
        (Column::Bytes(c), Value::Blob(b)) => c.push(Some(b)),
        // A snapshot an older release stored as JSON of the domain type.
        (Column::Bytes(c), Value::Text(t)) => {
            let s: vitals_proto::domain::Snapshot =
                serde_json::from_str(&t).map_err(|e| format!("{table}.{name}: {e}"))?;
            c.push(Some(super::encode_snapshot(&s)));
        }
        (_, v) => return Err(bad(&v)),
    }
    Ok(())
}

/// Copies the SQLite database at `from` into the empty PostgreSQL
/// database at `to` (its schema made first). Refuses a target that holds
/// anything.
pub async fn sqlite_to_postgres(
    from: &Path,
    to: &str,
    opts: &StoreOptions,
) -> Result<Moved, StoreError> {
    if !from.is_file() {
        return Err(StoreError::Migrate(format!(
            "{}: no such database file",
            from.display()
        )));
    }
    // The source brought up to this release's schema first, so every
    // column read below exists.
    drop(super::sqlite::SqliteStore::open(from, opts.history_limit, opts.history_interval).await?);
    let target = PgStore::open(to, opts).await?;
    let mut client = target.client().await?;
    for (table, _) in TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .get(0);
        if n > 0 {
            return Err(StoreError::Migrate(format!(
                "the target database already holds {n} row(s) in {table}; migrate into an empty database"
            )));
        }
    }
    let source = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: from.display().to_string(),
        source,
    })?;
    let source = std::sync::Arc::new(std::sync::Mutex::new(source));
    // History partitions for every receive time to be copied, made before
    // the copy's transaction (which then holds the history table).
    let span = target.partition_span_ms();
    let starts: Vec<i64> = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<i64>, StoreError> {
            let conn = source.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare(&format!(
                "SELECT DISTINCT (received_ms / {span}) * {span} FROM snapshots"
            ))?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<i64>, _>>()?)
        })
        .await??
    };
    target.cover_history(starts).await?;
    let tx = client.transaction().await?;
    let mut moved = Moved::default();
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let expected: i64 = read(&source, format!("SELECT COUNT(*) FROM {table}"), |r| {
            r.get(0)
        })
        .await?;
        let mut offset = 0i64;
        loop {
            let cols = columns.to_vec();
            let table_name = table.to_string();
            let sql = format!(
                "SELECT {} FROM {table} ORDER BY rowid LIMIT {CHUNK} OFFSET {offset}",
                names.join(", ")
            );
            let chunk = {
                let source = source.clone();
                tokio::task::spawn_blocking(move || -> Result<(Vec<Column>, usize), StoreError> {
                    let conn = source.lock().unwrap_or_else(|p| p.into_inner());
                    let mut stmt = conn.prepare(&sql)?;
                    let mut rows = stmt.query([])?;
                    let mut out: Vec<Column> = cols.iter().map(|c| Column::new(c.1)).collect();
                    let mut n = 0;
                    while let Some(row) = rows.next()? {
                        for (i, (name, kind)) in cols.iter().enumerate() {
                            let v: Value = row.get(i)?;
                            push(&mut out[i], *kind, v, &table_name, name)
                                .map_err(StoreError::Migrate)?;
                        }
                        n += 1;
                    }
                    Ok((out, n))
                })
                .await??
            };
            let (values, n) = chunk;
            if n == 0 {
                break;
            }
            let placeholders: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("${}::{}", i + 1, Column::sql_type(c.1)))
                .collect();
            let insert = format!(
                "INSERT INTO {table} ({}) SELECT * FROM UNNEST({})",
                names.join(", "),
                placeholders.join(", ")
            );
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Column::as_sql).collect();
            tx.execute(&insert, &params).await?;
            offset += n as i64;
        }
        let copied: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .get(0);
        if copied != expected {
            return Err(StoreError::Migrate(format!(
                "{table}: {expected} row(s) in the source, {copied} copied; nothing was committed"
            )));
        }
        moved.tables.push((table.to_string(), copied as u64));
    }
    let cursor: i64 = read(
        &source,
        "SELECT fault_event_id FROM ticket_cursor WHERE one = 1".into(),
        |r| r.get(0),
    )
    .await?;
    tx.execute(
        "UPDATE ticket_cursor SET fault_event_id = $1 WHERE one = 1",
        &[&cursor],
    )
    .await?;
    moved.ticket_cursor = cursor;
    // The source collector is stopped: no session survives the move.
    tx.execute("UPDATE endpoints SET online = FALSE WHERE online", &[])
        .await?;
    for table in SEQUENCED {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                               COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(moved)
}

async fn read<T: Send + 'static>(
    source: &std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
    sql: String,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let conn = source.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.query_row(&sql, [], f)?)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_of_older_releases_are_re_encoded_and_bad_values_named() {
        let mut s = vitals_proto::domain::Snapshot::default();
        s.host.hostname = "from-json".into();
        let mut col = Column::new(Snapshot);
        let json = serde_json::to_string(&s).unwrap();
        push(&mut col, Snapshot, Value::Text(json), "snapshots", "body").unwrap();
        push(
            &mut col,
            Snapshot,
            Value::Blob(vec![8, 1]),
            "snapshots",
            "body",
        )
        .unwrap();
        let Column::Bytes(bodies) = &col else {
            panic!("a bytes column");
        };
        assert_eq!(
            bodies[0].as_deref(),
            Some(super::super::encode_snapshot(&s).as_slice())
        );
        assert_eq!(bodies[1].as_deref(), Some(&[8u8, 1][..]));
        // NULL only where the column allows it.
        let err = push(&mut col, Snapshot, Value::Null, "snapshots", "body").unwrap_err();
        assert!(err.contains("snapshots.body"), "{err}");
        let mut ints = Column::new(Int);
        let err = push(&mut ints, Int, Value::Text("x".into()), "tickets", "id").unwrap_err();
        assert!(err.contains("tickets.id"), "{err}");
        let mut flags = Column::new(Bool);
        push(&mut flags, Bool, Value::Integer(1), "t", "c").unwrap();
        assert!(matches!(flags, Column::Bool(ref v) if v == &[true]));
    }
}
