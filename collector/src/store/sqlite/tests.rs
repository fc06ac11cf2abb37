//! The SQLite backend against real database files.

use super::*;
use crate::store::{Record, RecordBody, SnapshotRecord};
use std::time::Duration;

fn delivery(webhook: &str, event: &str, body: &str) -> crate::store::NewDelivery {
    crate::store::NewDelivery {
        webhook: webhook.into(),
        event: event.into(),
        body: body.into(),
    }
}

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
        machine_id: String::new(),
    };
    assert_eq!(
        store.open_session(&open).await.unwrap(),
        Admission::Admitted(0)
    );
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
    assert_eq!(history_seqs(&store, "ws-1", 10).await, vec![5, 4, 3]);
    // A late, older message does not roll the latest snapshot back.
    store.commit(vec![record(&id, 2, 99.0)]).await.unwrap();
    let detail = store.endpoint("ws-1").await.unwrap().unwrap();
    assert_eq!(detail.summary.cpu_usage_percent, 5.0);
    assert_eq!(
        store.open_session(&open).await.unwrap(),
        Admission::Admitted(5)
    );
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
    assert_eq!(history_seqs(&store, "ws-3", 100).await, vec![21, 11, 1]);
    let d = store.endpoint("ws-3").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 25);
    assert_eq!(d.latest.unwrap().cpu.usage_percent, 25.0);
    assert_eq!(d.summary.cpu_usage_percent, 25.0);
}

/// A batch whose newest message is a fault event after a snapshot: the
/// committed sequence is the fault's, the latest state the snapshot's, and
/// the last-seen time the later receipt.
#[tokio::test]
async fn a_fault_after_the_newest_snapshot_moves_the_committed_sequence() {
    let (_path, store, id) = store_with_endpoint("fault-after", 10, "ws-4").await;
    let mut fault = record(&id, 3, 0.0);
    fault.body = RecordBody::Fault(FaultEvent {
        check_id: "disk_nearly_full".into(),
        subject: "/".into(),
        state: FaultState::Raised,
        severity: Severity::Warning,
        value: 97.0,
        evidence: "/ at 97%".into(),
        at_ms: 3,
        via: String::new(),
    });
    store
        .commit(vec![record(&id, 1, 10.0), record(&id, 2, 20.0), fault])
        .await
        .unwrap();
    let d = store.endpoint("ws-4").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 3);
    assert_eq!(d.summary.cpu_usage_percent, 20.0);
    assert_eq!(d.latest.unwrap().taken_at_ms, 2);
    assert_eq!(d.summary.last_seen_ms, 1003);
    assert_eq!(history_seqs(&store, "ws-4", 10).await, vec![2, 1]);
    // Faults alone move the sequence and the last-seen time only.
    let mut later = record(&id, 4, 0.0);
    later.body = RecordBody::Fault(
        store.fault_events_after(0, 1).await.unwrap()[0]
            .event
            .clone(),
    );
    store.commit(vec![later]).await.unwrap();
    let d = store.endpoint("ws-4").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 4);
    assert_eq!(d.summary.last_seen_ms, 1004);
    assert_eq!(d.latest.unwrap().taken_at_ms, 2);
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
    conn.execute_batch("ALTER TABLE endpoints DROP COLUMN history_len; PRAGMA user_version = 11;")
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
            via: String::new(),
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
    let mut engine = Engine::restore(TicketRules::default(), HashMap::new(), vec![], vec![], 0, 0);
    let events = store.fault_events_after(state.cursor, 100).await.unwrap();
    assert_eq!(events.len(), 2);
    let mut entries = Vec::new();
    for f in &events {
        entries.extend(engine.on_fault(&f.endpoint, &f.event, 5000));
    }
    let (tickets, incidents) = engine.changed(&entries);
    store
        .save_tickets(TicketStep {
            tickets,
            incidents,
            entries,
            snapshots: Vec::new(),
            deliveries: vec![
                delivery("itsm", "opened", "{\"n\":1}"),
                delivery("chat", "opened", "{\"n\":2}"),
            ],
            awaiting_added: vec![crate::store::AwaitingEvidence {
                ticket: 1,
                endpoint: "ws-1".into(),
                fault_at_ms: 4900,
                since_ms: 5000,
            }],
            awaiting_done: Vec::new(),
            cursor: events[1].id,
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
        HashMap::new(),
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

/// What a session prepares from the wire is what the domain snapshot
/// would give, and the stored snapshot reads back whole.
#[tokio::test]
async fn a_snapshot_prepared_from_the_wire_reads_back_whole() {
    use vitals_proto::domain::{DiskInfo, MemoryInfo};
    let mut s = Snapshot {
        taken_at_ms: 42,
        ..Default::default()
    };
    s.host.hostname = "ws-wire".into();
    s.host.os_name = "Windows".into();
    s.host.os_version = "11".into();
    s.cpu.usage_percent = 37.5;
    s.memory = MemoryInfo {
        total_bytes: 1000,
        used_bytes: 250,
        ..Default::default()
    };
    s.disks.push(DiskInfo {
        mount_point: "C:\\".into(),
        total_bytes: 100,
        available_bytes: 10,
        ..Default::default()
    });
    let wired = SnapshotRecord::from_wire(vitals_proto::wire::Snapshot::from(s.clone()));
    assert_eq!(wired, SnapshotRecord::new(&s));
    assert_eq!(wired.os, "Windows 11");
    assert_eq!(wired.memory_used_percent, 25.0);
    assert_eq!(wired.fullest_disk_percent, 90.0);

    let (_path, store, id) = store_with_endpoint("wire", 10, "ws-wire").await;
    store
        .commit(vec![Record {
            endpoint: id,
            seq: 1,
            received_ms: 50,
            body: RecordBody::Snapshot(Box::new(wired)),
        }])
        .await
        .unwrap();
    let d = store.endpoint("ws-wire").await.unwrap().unwrap();
    assert_eq!(d.latest.as_ref(), Some(&s));
    assert_eq!(d.summary.os, "Windows 11");
    assert_eq!(store.history("ws-wire", 1).await.unwrap()[0].snapshot, s);
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
