//! What only the SQLite backend does, against real database files: its
//! history count and prune slack, schema versions, legacy JSON rows and
//! the audit triggers. The store suite both backends pass is in the
//! end-to-end tests (`tests/tests/e2e/store.rs`).

use super::*;
use crate::store::{Record, RecordBody, SnapshotRecord};
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
        machine_id: String::new(),
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
        body: RecordBody::Snapshot(Box::new(SnapshotRecord::new(&snapshot))),
    }
}

/// A fresh store keeping `bound` snapshots per endpoint, with a session
/// open for endpoint `id`.
async fn store_with_endpoint(
    name: &str,
    bound: u32,
    id: &str,
) -> (std::path::PathBuf, SqliteStore, EndpointId) {
    let path = temp_db(name);
    let store = SqliteStore::open(&path, bound, Duration::ZERO)
        .await
        .unwrap();
    let id: EndpointId = id.parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    (path, store, id)
}

/// The sequences an endpoint's history holds, newest first.
async fn history_seqs(store: &SqliteStore, id: &str, limit: u32) -> Vec<u64> {
    let history = store.history(id, limit).await.unwrap();
    history.iter().map(|h| h.seq).collect()
}

/// The history bound holds across batches of every size, by the kept count,
/// and a database from before the count was kept gets it counted.
#[tokio::test]
async fn history_count_follows_inserts_prunes_and_the_migration() {
    let (path, store, id) = store_with_endpoint("histlen", 4, "ws-h").await;
    let mut seq = 0;
    for size in [1, 2, 3, 1, 7, 1, 1, 4, 9] {
        let batch: Vec<_> = (0..size)
            .map(|_| {
                seq += 1;
                record(&id, seq, 1.0)
            })
            .collect();
        store.commit(batch).await.unwrap();
        let kept = history_seqs(&store, "ws-h", 100).await;
        let expected: Vec<u64> = (seq.saturating_sub(3).max(1)..=seq).rev().collect();
        assert_eq!(kept, expected, "after a batch of {size}");
        let detail = store.endpoint("ws-h").await.unwrap().unwrap();
        assert_eq!(detail.history_len, kept.len() as u64);
    }
    drop(store);
    // As a database of schema 11 would be: no count column.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE endpoints DROP COLUMN history_len; ALTER TABLE endpoints DROP COLUMN resync;
         PRAGMA user_version = 11;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, 4, Duration::ZERO).await.unwrap();
    assert_eq!(
        store.endpoint("ws-h").await.unwrap().unwrap().history_len,
        4
    );
    store.commit(vec![record(&id, seq + 1, 1.0)]).await.unwrap();
    let kept = store.history("ws-h", 100).await.unwrap();
    assert_eq!(kept.len(), 4);
    assert_eq!(kept[0].seq, seq + 1);
}

/// A long history runs a little past its bound between prunes, but reads
/// never see past the bound.
#[tokio::test]
async fn history_beyond_the_bound_is_never_read() {
    let (path, store, id) = store_with_endpoint("slack", 64, "ws-s").await;
    let slack = ingest::prune_slack(64) as u64;
    assert_eq!(slack, 2);
    let conn = Connection::open(&path).unwrap();
    let mut stored_max = 0;
    for seq in 1..=200 {
        store.commit(vec![record(&id, seq, 1.0)]).await.unwrap();
        let stored = conn
            .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64;
        assert!(stored < 64 + slack, "{stored} stored after {seq}");
        stored_max = stored_max.max(stored);
        let kept = store.history("ws-s", 1000).await.unwrap();
        assert_eq!(kept.len() as u64, seq.min(64));
        assert_eq!(kept[0].seq, seq);
        assert_eq!(kept.last().unwrap().seq, seq.saturating_sub(63).max(1));
        let detail = store.endpoint("ws-s").await.unwrap().unwrap();
        assert_eq!(detail.history_len, seq.min(64));
    }
    assert_eq!(stored_max, 64 + slack - 1);
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
    // Once an archive holds entry 1, it (and only it) may go.
    use crate::store::RetentionStore;
    store
        .archive_audit(
            crate::store::AuditArchive {
                first_id: 1,
                last_id: 1,
                entries: 1,
                file: "audit-1-1.jsonl".into(),
                sha256: String::new(),
                at_ms: 5,
            },
            vitals_proto::diag::AuditEntry {
                kind: "audit_archive".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let left: i64 = c
        .query_row("SELECT COUNT(*) FROM audit_log WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0, "the archived entry left");
    let err = c
        .execute("DELETE FROM audit_log WHERE id = 2", [])
        .unwrap_err()
        .to_string();
    assert!(err.contains("only archived entries leave it"), "{err}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn snapshots_are_stored_as_protobuf_and_older_json_rows_still_read() {
    let path = temp_db("encoding");
    let store = SqliteStore::open(&path, 10, Duration::ZERO).await.unwrap();
    let id: EndpointId = "ws-enc".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    store.commit(vec![record(&id, 1, 12.5)]).await.unwrap();
    let (kind, len, first): (String, i64, Vec<u8>) = store
        .read(|c| {
            Ok(c.query_row(
                "SELECT typeof(body), length(body), body FROM snapshots WHERE endpoint_id = 'ws-enc'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(kind, "blob");
    let as_json = serde_json::to_string(&store.history("ws-enc", 1).await.unwrap()[0].snapshot)
        .unwrap()
        .len() as i64;
    assert!(len * 2 < as_json, "protobuf {len} bytes, JSON {as_json}");
    assert_ne!(first.first(), Some(&b'{'));

    // A row written by an older release, as JSON text, reads back.
    let mut old = Snapshot::default();
    old.host.hostname = "from-json".into();
    old.taken_at_ms = 7;
    let text = serde_json::to_string(&old).unwrap();
    store
        .write(move |c| {
            c.execute(
                "UPDATE endpoints SET latest_snapshot = ?1 WHERE id = 'ws-enc'",
                [&text],
            )?;
            c.execute(
                "UPDATE snapshots SET body = ?1 WHERE endpoint_id = 'ws-enc'",
                [&text],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let detail = store.endpoint("ws-enc").await.unwrap().unwrap();
    assert_eq!(detail.latest.unwrap().host.hostname, "from-json");
    let history = store.history("ws-enc", 1).await.unwrap();
    assert_eq!(history[0].snapshot, old);

    // A damaged row is an error naming the endpoint, not a panic.
    store
        .write(|c| {
            c.execute(
                "UPDATE snapshots SET body = x'ffff' WHERE endpoint_id = 'ws-enc'",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let err = store.history("ws-enc", 1).await.unwrap_err().to_string();
    assert!(err.contains("ws-enc"), "{err}");
}

/// Two processes opening a new file at once (a collector starting and an
/// admin command beside it) both get a fully migrated database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openers_racing_on_a_new_file_migrate_one_after_the_other() {
    for round in 0..5 {
        let path = temp_db(&format!("race-{round}"));
        let (a, b) = tokio::join!(
            SqliteStore::open(&path, 10, Duration::ZERO),
            SqliteStore::open(&path, 10, Duration::ZERO)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let id: EndpointId = "ws-race".parse().unwrap();
        a.open_session(&session(&id)).await.unwrap();
        assert!(b.endpoint("ws-race").await.unwrap().is_some());
        let status = migration_status(&path).await.unwrap();
        assert_eq!(status.applied, status.known);
    }
}

/// Space freed by retention goes back to the file system, and a file made
/// before incremental vacuum existed is converted once when opened.
#[tokio::test]
async fn removed_rows_give_their_space_back() {
    use crate::store::{RetentionStore, TicketStep, TicketStore};
    let (path, store, id) = store_with_endpoint("compact", 4, "ws-c").await;
    let mode = |p: &std::path::Path| -> i64 {
        Connection::open(p)
            .unwrap()
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(mode(&path), 2, "a new file is incremental from the start");
    let evidence = "x".repeat(4000);
    for chunk in 0..10u64 {
        let batch = (0..500u64)
            .map(|i| {
                let seq = chunk * 500 + i + 1;
                Record {
                    endpoint: id.clone(),
                    seq,
                    received_ms: 1000,
                    body: RecordBody::Fault(vitals_proto::domain::FaultEvent {
                        check_id: "disk_nearly_full".into(),
                        subject: format!("/d{seq}"),
                        state: vitals_proto::domain::FaultState::Raised,
                        severity: vitals_proto::domain::Severity::Warning,
                        value: 97.0,
                        evidence: evidence.clone(),
                        at_ms: 1000,
                        via: String::new(),
                    }),
                }
            })
            .collect();
        store.commit(batch).await.unwrap();
    }
    let last = store.fault_events_after(4990, 100).await.unwrap();
    store
        .save_tickets(TicketStep {
            cursor: last.last().unwrap().id,
            now_ms: 2000,
            ..Default::default()
        })
        .await
        .unwrap();
    checkpoint(&store).await;
    let full = std::fs::metadata(&path).unwrap().len();
    let mut removed = 0;
    loop {
        let n = store.prune_fault_events(5000, 2000).await.unwrap();
        removed += n;
        if n < 2000 {
            break;
        }
    }
    assert_eq!(removed, 5000);
    let given = store.compact().await.unwrap();
    checkpoint(&store).await;
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(given > full / 2, "gave back {given} of {full} bytes");
    // A few MiB of free pages stay as slack for the next inserts.
    assert!(after < full / 2, "{full} bytes, then {after}");
    assert_eq!(store.compact().await.unwrap(), 0, "nothing more to give");
    drop(store);

    // As a file from before: no auto-vacuum. Opening converts it.
    let c = Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA auto_vacuum = 0; VACUUM;").unwrap();
    drop(c);
    assert_eq!(mode(&path), 0);
    let store = SqliteStore::open(&path, 4, Duration::ZERO).await.unwrap();
    assert_eq!(mode(&path), 2);
    assert_eq!(
        store
            .endpoint("ws-c")
            .await
            .unwrap()
            .unwrap()
            .summary
            .endpoint_id,
        "ws-c"
    );
}

/// Folds the WAL into the file, so the file's size is the database's.
async fn checkpoint(store: &SqliteStore) {
    store
        .write(|c| {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
            Ok(())
        })
        .await
        .unwrap();
}
