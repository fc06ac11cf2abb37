//! The store suite: one set of tests run against both backends, SQLite
//! (a real file) and PostgreSQL (a private cluster started by the test).
//! Each test is written once against the storage interface; `both!` runs
//! it on each backend. Tests of what only PostgreSQL does (replicas
//! committing side by side, partitions) follow.

// The suite's bodies are plain functions the generated tests call, where
// an unwrap says "this must hold" as in any test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vitals_collector::store::{
    self, Admission, AuditFilter, AwaitingEvidence, DeliveryOutcome, NewDelivery, Record,
    RecordBody, SessionOpen, SnapshotRecord, Store, StoreOptions, TicketFilter, TicketStep,
};
use vitals_proto::domain::{FaultEvent, FaultState, Severity, Snapshot};
use vitals_proto::identity::EndpointId;
use vitals_tests::components::{Postgres, skip};

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of a backend, by URL (so it can be opened
/// again, as after a restart or by a second replica).
fn fresh_url(backend: Backend, name: &str) -> Option<String> {
    match backend {
        Backend::Sqlite => {
            let dir =
                std::env::temp_dir().join(format!("vitals-suite-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Some(format!("sqlite://{}", dir.join("vitals.db").display()))
        }
        Backend::Postgres => match Postgres::shared() {
            Ok(pg) => Some(pg.database(&format!("suite_{name}")).unwrap()),
            Err(why) => {
                skip(&format!("store::{name}::postgres"), &why);
                None
            }
        },
    }
}

fn options(bound: u32, interval: Duration) -> StoreOptions {
    let mut opts = StoreOptions::new(bound, interval);
    opts.pool_size = 4;
    opts
}

async fn open(url: &str, bound: u32, interval: Duration) -> Arc<dyn Store> {
    store::open_with(url, &options(bound, interval))
        .await
        .unwrap()
}

/// Runs a suite test on each backend.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                if let Some(url) = super::fresh_url(super::Backend::Sqlite, stringify!($name)) {
                    super::$name(&url).await;
                }
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(url) = super::fresh_url(super::Backend::Postgres, stringify!($name)) {
                    super::$name(&url).await;
                }
            }
        }
    };
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
        received_ms: vitals_proto::now_ms(),
        body: RecordBody::Snapshot(Box::new(SnapshotRecord::new(&snapshot))),
    }
}

fn fault(id: &EndpointId, seq: u64, state: FaultState) -> Record {
    Record {
        endpoint: id.clone(),
        seq,
        received_ms: vitals_proto::now_ms(),
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
    }
}

async fn history_seqs(store: &dyn Store, id: &str, limit: u32) -> Vec<u64> {
    let history = store.history(id, limit).await.unwrap();
    history.iter().map(|h| h.seq).collect()
}

both!(commits_are_idempotent_and_history_is_bounded);
async fn commits_are_idempotent_and_history_is_bounded(url: &str) {
    let store = open(url, 3, Duration::ZERO).await;
    // As in a running collector, which campaigns from the start: on
    // PostgreSQL that is what shows its sessions are live.
    let (_running, running) = vitals_proto::shutdown::channel();
    let mut leading = store.campaign(running);
    tokio::time::timeout(Duration::from_secs(10), leading.decided())
        .await
        .expect("campaigning");
    let id: EndpointId = "ws-1".parse().unwrap();
    let hello = SessionOpen {
        endpoint: id.clone(),
        agent_version: "0.1.0".into(),
        platform: "linux/x86_64".into(),
        at_ms: 5,
        machine_id: String::new(),
    };
    assert_eq!(
        store.open_session(&hello).await.unwrap(),
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
    assert_eq!(detail.summary.platform, "linux/x86_64");
    assert!(detail.summary.online);
    assert_eq!(history_seqs(&*store, "ws-1", 10).await, vec![5, 4, 3]);
    // A late, older message does not roll the latest snapshot back.
    store.commit(vec![record(&id, 2, 99.0)]).await.unwrap();
    let detail = store.endpoint("ws-1").await.unwrap().unwrap();
    assert_eq!(detail.summary.cpu_usage_percent, 5.0);
    assert_eq!(
        store.open_session(&hello).await.unwrap(),
        Admission::Admitted(5)
    );
    store.close_session(&id, 50).await.unwrap();
    assert!(store.list_endpoints(true).await.unwrap().is_empty());
    assert_eq!(store.list_endpoints(false).await.unwrap().len(), 1);
    assert!(store.endpoint("nope").await.unwrap().is_none());
    let presence = store.presence().await.unwrap();
    assert_eq!(presence.len(), 1);
    assert!(!presence[0].online);
    let times = store
        .snapshot_times(vec!["ws-1".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(times, HashMap::from([("ws-1".to_owned(), 5)]));

    // After a restart (or on another replica) everything reads the same.
    store.mark_all_offline(60).await.unwrap();
    drop(store);
    let store = open(url, 3, Duration::ZERO).await;
    let detail = store.endpoint("ws-1").await.unwrap().unwrap();
    assert_eq!((detail.committed_seq, detail.history_len), (5, 3));
    assert_eq!(detail.latest.unwrap().cpu.usage_percent, 5.0);
}

both!(history_is_downsampled_but_latest_is_always_newest);
async fn history_is_downsampled_but_latest_is_always_newest(url: &str) {
    let store = open(url, 100, Duration::from_millis(10)).await;
    let id: EndpointId = "ws-3".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    // record() takes each snapshot at `seq` ms: one every millisecond.
    store
        .commit((1..=25).map(|s| record(&id, s, s as f32)).collect())
        .await
        .unwrap();
    assert_eq!(history_seqs(&*store, "ws-3", 100).await, vec![21, 11, 1]);
    // The downsampling carries across batches.
    store
        .commit((26..=31).map(|s| record(&id, s, s as f32)).collect())
        .await
        .unwrap();
    assert_eq!(
        history_seqs(&*store, "ws-3", 100).await,
        vec![31, 21, 11, 1]
    );
    let d = store.endpoint("ws-3").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 31);
    assert_eq!(d.latest.unwrap().cpu.usage_percent, 31.0);
    assert_eq!(d.summary.cpu_usage_percent, 31.0);
}

both!(a_fault_after_the_newest_snapshot_moves_the_committed_sequence);
/// A batch whose newest message is a fault event after a snapshot: the
/// committed sequence is the fault's, the latest state the snapshot's.
async fn a_fault_after_the_newest_snapshot_moves_the_committed_sequence(url: &str) {
    let store = open(url, 10, Duration::ZERO).await;
    let id: EndpointId = "ws-4".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    let mut first = record(&id, 1, 10.0);
    first.received_ms = 1001;
    let mut second = record(&id, 2, 20.0);
    second.received_ms = 1002;
    let mut raised = fault(&id, 3, FaultState::Raised);
    raised.received_ms = vitals_proto::now_ms();
    store
        .commit(vec![first, second, raised.clone()])
        .await
        .unwrap();
    let d = store.endpoint("ws-4").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 3);
    assert_eq!(d.summary.cpu_usage_percent, 20.0);
    assert_eq!(d.latest.unwrap().taken_at_ms, 2);
    assert_eq!(d.summary.last_seen_ms, raised.received_ms);
    assert_eq!(history_seqs(&*store, "ws-4", 10).await, vec![2, 1]);
    // Faults alone move the sequence and the last-seen time only.
    let mut later = fault(&id, 4, FaultState::Cleared);
    later.received_ms = raised.received_ms + 5;
    store.commit(vec![later]).await.unwrap();
    let d = store.endpoint("ws-4").await.unwrap().unwrap();
    assert_eq!(d.committed_seq, 4);
    assert_eq!(d.summary.last_seen_ms, raised.received_ms + 5);
    assert_eq!(d.latest.unwrap().taken_at_ms, 2);
    let faults = store.faults("ws-4", 10).await.unwrap();
    let states: Vec<_> = faults.iter().map(|f| (f.seq, f.event.state)).collect();
    assert_eq!(
        states,
        vec![(4, FaultState::Cleared), (3, FaultState::Raised)]
    );
}

both!(a_snapshot_prepared_from_the_wire_reads_back_whole);
/// What a session prepares from the wire reads back whole.
async fn a_snapshot_prepared_from_the_wire_reads_back_whole(url: &str) {
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
    let store = open(url, 10, Duration::ZERO).await;
    let id: EndpointId = "ws-wire".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    store
        .commit(vec![Record {
            endpoint: id,
            seq: 1,
            received_ms: vitals_proto::now_ms(),
            body: RecordBody::Snapshot(Box::new(wired)),
        }])
        .await
        .unwrap();
    let d = store.endpoint("ws-wire").await.unwrap().unwrap();
    assert_eq!(d.latest.as_ref(), Some(&s));
    assert_eq!(d.summary.os, "Windows 11");
    assert_eq!(d.summary.memory_used_percent, 25.0);
    assert_eq!(d.summary.fullest_disk_percent, 90.0);
    assert_eq!(store.history("ws-wire", 1).await.unwrap()[0].snapshot, s);
}

both!(admission_follows_revocation_and_the_bound_machine);
/// Sessions and batches in one commit; revoked and cloned endpoints refused.
async fn admission_follows_revocation_and_the_bound_machine(url: &str) {
    let store = open(url, 10, Duration::ZERO).await;
    let id: EndpointId = "ws-m".parse().unwrap();
    let mut hello = session(&id);
    hello.machine_id = "machine-a".into();
    let admissions = store
        .commit_batch(store::Batch {
            sessions: vec![store::SessionChange::Open(hello.clone())],
            records: vec![record(&id, 1, 1.0)],
        })
        .await
        .unwrap();
    assert_eq!(admissions, vec![Admission::Admitted(0)]);
    assert_eq!(
        store.endpoint("ws-m").await.unwrap().unwrap().committed_seq,
        1
    );
    let mut clone = hello.clone();
    clone.machine_id = "machine-b".into();
    assert_eq!(
        store.open_session(&clone).await.unwrap(),
        Admission::OtherMachine {
            bound: "machine-a".into(),
            newly_flagged: true
        }
    );
    assert_eq!(
        store.open_session(&clone).await.unwrap(),
        Admission::OtherMachine {
            bound: "machine-a".into(),
            newly_flagged: false
        }
    );
    assert_eq!(
        store
            .endpoint("ws-m")
            .await
            .unwrap()
            .unwrap()
            .summary
            .clone_machine_id,
        "machine-b"
    );
    assert!(store.bind_machine("ws-m", "machine-b").await.unwrap());
    assert_eq!(
        store.open_session(&clone).await.unwrap(),
        Admission::Admitted(1)
    );
    assert!(store.revoke_endpoint("ws-m", "stolen", 7).await.unwrap());
    assert!(!store.revoke_endpoint("never-seen", "x", 7).await.unwrap());
    assert_eq!(
        store.open_session(&clone).await.unwrap(),
        Admission::Revoked {
            reason: "stolen".into()
        }
    );
    let revocations = store.revocations().await.unwrap();
    assert_eq!(revocations.endpoints, vec![("ws-m".to_owned(), 7)]);
}

both!(enrollment_uses_tokens_and_records_certificates);
/// Tokens are used once each up to their limit, certificates recorded and
/// revoked with their subject.
async fn enrollment_uses_tokens_and_records_certificates(url: &str) {
    use vitals_collector::store::{EnrollToken, IssuedCert, NewEnrollment, TokenRefusal};
    let store = open(url, 10, Duration::ZERO).await;
    let now = vitals_proto::now_ms();
    store
        .create_token(EnrollToken {
            id: "tok1".into(),
            secret_hash: "ab".into(),
            max_uses: 1,
            expires_ms: now + 60_000,
            site: "city-hall".into(),
            tags: vec!["finance".into()],
            created_ms: now,
            created_by: "admin".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cert = |serial: &str, subject: &str| IssuedCert {
        serial: serial.into(),
        kind: "endpoint".into(),
        subject: subject.into(),
        issued_ms: now,
        not_after_ms: now + 1000,
        via: "enroll".into(),
        ..Default::default()
    };
    let enrollment = |id: &str, serial: &str| NewEnrollment {
        token_id: "tok1".into(),
        endpoint: id.parse().unwrap(),
        hostname: id.into(),
        machine_id: format!("m-{id}"),
        certificate: cert(serial, id),
        at_ms: now,
    };
    assert_eq!(
        store.enroll(enrollment("ws-e1", "01")).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.enroll(enrollment("ws-e2", "02")).await.unwrap(),
        Err(TokenRefusal::UsedUp)
    );
    let token = store.token("tok1").await.unwrap().unwrap();
    assert_eq!((token.used, token.last_used_by.as_str()), (1, "ws-e1"));
    let d = store.endpoint("ws-e1").await.unwrap().unwrap();
    assert_eq!(d.summary.enrolled_site, "city-hall");
    assert_eq!(d.summary.enrolled_tags, vec!["finance".to_owned()]);
    assert_eq!(d.summary.machine_id, "m-ws-e1");
    assert_eq!(
        store.certificate("01").await.unwrap().unwrap().subject,
        "ws-e1"
    );
    assert!(store.revoke_token("tok1", now).await.unwrap());
    assert!(!store.revoke_token("nope", now).await.unwrap());
    assert_eq!(store.tokens().await.unwrap()[0].revoked_ms, now);
    store
        .record_certificate(IssuedCert {
            kind: "specialist".into(),
            via: "issue".into(),
            ..cert("03", "sam")
        })
        .await
        .unwrap();
    assert_eq!(
        store.revoke_specialist("sam", "left", now).await.unwrap(),
        1
    );
    assert!(store.revoke_endpoint("ws-e1", "lost", now).await.unwrap());
    let r = store.revocations().await.unwrap();
    let serials: Vec<&str> = r.serials.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(serials, vec!["01", "03"]);
    assert_eq!(r.specialists, vec![("sam".to_owned(), now)]);
}

both!(console_accounts_round_trip);
async fn console_accounts_round_trip(url: &str) {
    use vitals_collector::store::Account;
    use vitals_proto::identity::Role;
    let store = open(url, 10, Duration::ZERO).await;
    let mut a = Account {
        name: "ana".into(),
        role: Role::Specialist,
        sites: vec!["north".into()],
        password_hash: "$argon2id$x".into(),
        must_change_password: true,
        disabled: false,
        created_ms: 1,
        updated_ms: 1,
        totp_secret: None,
        recovery_codes: vec![],
    };
    assert!(store.create_account(a.clone()).await.unwrap());
    assert!(!store.create_account(a.clone()).await.unwrap());
    a.totp_secret = Some("JBSWY3DP".into());
    a.recovery_codes = vec!["h1".into()];
    a.must_change_password = false;
    assert!(store.update_account(a.clone()).await.unwrap());
    assert_eq!(store.account("ana").await.unwrap(), Some(a.clone()));
    assert_eq!(store.accounts().await.unwrap(), vec![a]);
    assert!(store.account("bob").await.unwrap().is_none());
}

both!(the_audit_log_filters_newest_first);
async fn the_audit_log_filters_newest_first(url: &str) {
    let store = open(url, 3, Duration::ZERO).await;
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
                ticket: Some(4),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let sams = store
        .audit(AuditFilter {
            who: "sam".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = sams.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["os", "network"], "newest first");
    assert_eq!(sams[0].params["root"], "/");
    assert_eq!(sams[0].ticket, Some(4));
}

/// One ticket engine step over `faults` from a fresh engine, saved with
/// the evidence snapshot of ticket 1 (returned), `deliveries` and
/// `awaiting`, the cursor moved past the last fault.
async fn engine_step(
    store: &dyn Store,
    faults: &[store::StoredFault],
    deliveries: Vec<NewDelivery>,
    awaiting_added: Vec<AwaitingEvidence>,
) -> Snapshot {
    let mut engine = vitals_collector::tickets::engine::Engine::restore(
        vitals_proto::ticket_rules::TicketRules::default(),
        HashMap::new(),
        vec![],
        vec![],
        0,
        0,
    );
    let mut entries = Vec::new();
    for f in faults {
        entries.extend(engine.on_fault(&f.endpoint, &f.event, 5000));
    }
    let (tickets, incidents) = engine.changed(&entries);
    let mut evidence = Snapshot::default();
    evidence.host.hostname = "at-fault-time".into();
    store
        .save_tickets(TicketStep {
            tickets,
            incidents,
            entries,
            snapshots: vec![store::Evidence {
                ticket: 1,
                snapshot: evidence.clone(),
            }],
            deliveries,
            awaiting_added,
            awaiting_done: Vec::new(),
            cursor: faults.last().map(|f| f.id).unwrap_or(0),
            now_ms: 5000,
        })
        .await
        .unwrap();
    evidence
}

both!(retention_removes_only_what_is_past_its_time);
async fn retention_removes_only_what_is_past_its_time(url: &str) {
    use vitals_collector::store::{AuditArchive, IssuedCert};
    use vitals_proto::tickets::Status;
    let store = open(url, 10, Duration::ZERO).await;
    let id: EndpointId = "ws-1".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    store
        .commit(vec![
            fault(&id, 1, FaultState::Raised),
            fault(&id, 2, FaultState::Cleared),
            fault(&id, 3, FaultState::Raised),
        ])
        .await
        .unwrap();
    let now = vitals_proto::now_ms();
    let later = now + 60_000;

    // Fault events: none the ticket engine has not applied, none newer
    // than the cut, and no more than asked at a time.
    assert_eq!(store.prune_fault_events(later, 100).await.unwrap(), 0);
    let faults = store.fault_events_after(0, 10).await.unwrap();
    assert_eq!(faults.len(), 3);
    let delivery = |event: &str| NewDelivery {
        webhook: "helpdesk".into(),
        event: event.into(),
        body: "{}".into(),
    };
    engine_step(
        &*store,
        &faults[..2],
        vec![delivery("opened"), delivery("cleared")],
        vec![],
    )
    .await;
    assert_eq!(
        store.prune_fault_events(now - 60_000, 100).await.unwrap(),
        0
    );
    assert_eq!(store.prune_fault_events(later, 1).await.unwrap(), 1);
    assert_eq!(store.prune_fault_events(later, 100).await.unwrap(), 1);
    assert_eq!(store.prune_fault_events(later, 100).await.unwrap(), 0);
    let left = store.fault_events_after(0, 10).await.unwrap();
    assert_eq!(left, faults[2..].to_vec(), "past the cursor, it stays");

    // Tickets: an open one stays; a resolved one goes with its timeline
    // and evidence once it has not changed since the cut.
    assert!(store.prune_tickets(later, 100).await.unwrap().is_empty());
    let mut ticket = store.ticket(1).await.unwrap().unwrap().ticket;
    ticket.status = Status::Resolved;
    ticket.resolved_ms = Some(6000);
    store
        .save_tickets(TicketStep {
            tickets: vec![ticket],
            cursor: faults[1].id,
            now_ms: 6000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.prune_tickets(5999, 100).await.unwrap().is_empty());
    assert_eq!(store.prune_tickets(6001, 100).await.unwrap(), vec![1]);
    assert!(store.ticket(1).await.unwrap().is_none());
    let state = store.ticket_state().await.unwrap();
    assert!(state.tickets.is_empty(), "{:?}", state.tickets);
    assert_eq!(state.max_ticket, 0);

    // Notifications: only those delivered or given up on.
    let due = store.due_deliveries(later, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    store
        .delivery_outcome(due[0].id, DeliveryOutcome::Delivered { at_ms: 7000 })
        .await
        .unwrap();
    assert_eq!(store.prune_deliveries(later, 100).await.unwrap(), 1);
    let due = store.due_deliveries(later, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the one still to send stays");
    assert_eq!(due[0].event, "cleared");

    // Certificates: those expired before the cut.
    for (serial, not_after_ms) in [("0a", 1000), ("0b", later + 86_400_000)] {
        store
            .record_certificate(IssuedCert {
                serial: serial.into(),
                kind: "endpoint".into(),
                subject: "ws-1".into(),
                issued_ms: 1,
                not_after_ms,
                via: "issue".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(store.prune_certificates(now, 100).await.unwrap(), 1);
    assert!(store.certificate("0a").await.unwrap().is_none());
    assert!(store.certificate("0b").await.unwrap().is_some());

    // The audit log: the unbroken run of old entries is offered; archived,
    // they leave, and the archive is itself an entry.
    for at_ms in [1, 2, later + 1000, 3] {
        store
            .audit_append(vitals_proto::diag::AuditEntry {
                at_ms,
                who: "sam".into(),
                kind: "network".into(),
                outcome: "ok".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let old = store.audit_unarchived(now, 10).await.unwrap();
    let ids: Vec<u64> = old.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2], "stops at the first newer entry");
    let archived = AuditArchive {
        first_id: 1,
        last_id: 2,
        entries: 2,
        file: "audit-1-2.jsonl".into(),
        sha256: "ab".repeat(32),
        at_ms: now,
    };
    let entry = store
        .archive_audit(
            archived.clone(),
            vitals_proto::diag::AuditEntry {
                at_ms: now,
                who: "collector".into(),
                kind: "audit_archive".into(),
                outcome: "ok".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(entry, 5);
    let all = store
        .audit(AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![5, 4, 3]);
    assert_eq!(store.audit_archives().await.unwrap(), vec![archived]);
    let next: Vec<u64> = store
        .audit_unarchived(later + 2000, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(next, vec![3, 4, 5]);

    assert!(store.size_bytes().await.unwrap() > 0);
    store.compact().await.unwrap();
}

both!(the_ticket_engine_resumes_exactly_where_it_stopped);
async fn the_ticket_engine_resumes_exactly_where_it_stopped(url: &str) {
    use vitals_proto::tickets::Kind;
    let store = open(url, 10, Duration::ZERO).await;
    let id: EndpointId = "ws-1".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    store
        .commit(vec![
            fault(&id, 1, FaultState::Raised),
            fault(&id, 2, FaultState::Raised),
        ])
        .await
        .unwrap();

    // One step: both events read, one ticket, cursor past both.
    let state = store.ticket_state().await.unwrap();
    assert_eq!(state.cursor, 0);
    let events = store.fault_events_after(state.cursor, 100).await.unwrap();
    assert_eq!(events.len(), 2);
    let delivery = |webhook: &str, body: &str| NewDelivery {
        webhook: webhook.into(),
        event: "opened".into(),
        body: body.into(),
    };
    let evidence = engine_step(
        &*store,
        &events,
        vec![delivery("itsm", "{\"n\":1}"), delivery("chat", "{\"n\":2}")],
        vec![AwaitingEvidence {
            ticket: 1,
            endpoint: "ws-1".into(),
            fault_at_ms: 4900,
            since_ms: 5000,
        }],
    )
    .await;

    // After a restart nothing is read twice; the ticket is there, still
    // waiting for its evidence.
    drop(store);
    let store = open(url, 10, Duration::ZERO).await;
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
    assert_eq!(d.ticket.raise_count, 2);
    assert_eq!(d.ticket.endpoint, "ws-1");
    assert_eq!(d.snapshot, Some(evidence));
    let kinds: Vec<_> = d.timeline.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(kinds, vec![Kind::Opened, Kind::FaultRaised]);
    let open_tickets = store
        .tickets(TicketFilter {
            open_only: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open_tickets.len(), 1);
    let by_endpoint = store
        .tickets(TicketFilter {
            endpoint: Some("ws-2".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(by_endpoint.is_empty());
    let counts = store.open_ticket_counts().await.unwrap();
    assert_eq!(counts.by_endpoint.get("ws-1"), Some(&1));

    // The outbox survived the restart with the step; a retry waits for
    // its time, a delivered or dead post is never due again.
    let due = store.due_deliveries(5000, 10).await.unwrap();
    let names: Vec<_> = due
        .iter()
        .map(|d| (d.webhook.as_str(), d.attempts))
        .collect();
    assert_eq!(names, vec![("itsm", 0), ("chat", 0)]);
    assert_eq!(due[0].body, "{\"n\":1}");
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
}

// What only PostgreSQL does.

fn postgres_or_skip(test: &str) -> Option<&'static Postgres> {
    match Postgres::shared() {
        Ok(pg) => Some(pg),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// Two replicas (two stores on one database) committing the same
/// endpoint's messages side by side, as when an agent reconnects through
/// the balancer to another replica while the old session's commit is in
/// flight: every sequence is stored once, the committed sequence is the
/// highest, and fault events come out of `fault_events_after` in an order
/// a cursor can follow without missing one.
#[tokio::test]
async fn replicas_committing_one_endpoint_store_each_sequence_once() {
    let Some(pg) =
        postgres_or_skip("store::replicas_committing_one_endpoint_store_each_sequence_once")
    else {
        return;
    };
    let url = pg.database("suite_replicas").unwrap();
    let a = open(&url, 10_000, Duration::ZERO).await;
    let b = open(&url, 10_000, Duration::ZERO).await;
    let ids: Vec<EndpointId> = (0..4)
        .map(|i| format!("ws-r{i}").parse().unwrap())
        .collect();
    for id in &ids {
        a.open_session(&session(id)).await.unwrap();
    }
    // Both replicas get every message (each endpoint's in order, in
    // overlapping batches), half of them faults.
    let messages = |id: &EndpointId| -> Vec<Record> {
        (1..=200)
            .map(|seq| {
                if seq % 2 == 0 {
                    fault(id, seq, FaultState::Raised)
                } else {
                    record(id, seq, seq as f32)
                }
            })
            .collect()
    };
    let mut tasks = Vec::new();
    for (n, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let all: Vec<Vec<Record>> = ids.iter().map(messages).collect();
            let chunk = if n == 0 { 7 } else { 11 };
            for start in (0..200).step_by(chunk) {
                let mut batch = Vec::new();
                for per_endpoint in &all {
                    batch.extend(
                        per_endpoint[start..(start + chunk).min(200)]
                            .iter()
                            .cloned(),
                    );
                }
                store.commit(batch).await.unwrap();
            }
        }));
    }
    // Meanwhile a ticket-engine-like reader follows the fault cursor.
    let reader = {
        let store = a.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            while seen.len() < 400 {
                for f in store.fault_events_after(cursor, 50).await.unwrap() {
                    assert!(f.id > cursor);
                    cursor = f.id;
                    seen.push(f.id);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the cursor reader saw every fault event")
        .unwrap();
    assert_eq!(seen.len(), 400, "each fault event once, none skipped");
    for id in &ids {
        let d = b.endpoint(id.as_str()).await.unwrap().unwrap();
        assert_eq!(d.committed_seq, 200);
        assert_eq!(d.latest.unwrap().cpu.usage_percent, 199.0);
        let history = b.history(id.as_str(), 1000).await.unwrap();
        assert_eq!(history.len(), 100, "{id}: every snapshot once");
        assert_eq!(b.faults(id.as_str(), 1000).await.unwrap().len(), 100);
    }
    let counted = pg
        .sql(
            &url_db(&url),
            "SELECT COUNT(*), COUNT(DISTINCT (endpoint_id, seq)) FROM snapshots",
        )
        .unwrap();
    assert_eq!(counted, "400|400");
}

/// The database name of a cluster URL.
fn url_db(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap();
    path.split('?').next().unwrap().to_owned()
}

/// The audit log refuses change and removal in the database itself, from
/// any connection, and history partitions past retention are dropped
/// whole.
#[tokio::test]
async fn postgres_keeps_the_audit_append_only_and_drops_old_partitions() {
    let Some(pg) =
        postgres_or_skip("store::postgres_keeps_the_audit_append_only_and_drops_old_partitions")
    else {
        return;
    };
    let url = pg.database("suite_pg_only").unwrap();
    let db = url_db(&url);
    let mut opts = options(10, Duration::ZERO);
    opts.retention = Some(Duration::from_secs(86_400));
    let store = store::open_with(&url, &opts).await.unwrap();
    store
        .audit_append(vitals_proto::diag::AuditEntry {
            who: "sam".into(),
            kind: "network".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET outcome = 'changed'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = pg.sql(&db, sql).unwrap_err();
        assert!(err.contains("the audit log is append-only"), "{sql}: {err}");
    }
    assert_eq!(pg.sql(&db, "SELECT outcome FROM audit_log").unwrap(), "ok");

    // Partitions exist for now and ahead; a snapshot received two days
    // ago has one made for it on demand, and it goes with its partition.
    let pg_store = vitals_collector::store::postgres::PgStore::open(&url, &opts)
        .await
        .unwrap();
    let id: EndpointId = "ws-old".parse().unwrap();
    store.open_session(&session(&id)).await.unwrap();
    let now = vitals_proto::now_ms();
    let mut old = record(&id, 1, 1.0);
    old.received_ms = now - 2 * 86_400_000;
    store.commit(vec![old]).await.unwrap();
    store.commit(vec![record(&id, 2, 2.0)]).await.unwrap();
    assert_eq!(history_seqs(&*store, "ws-old", 10).await, vec![2, 1]);
    let done = pg_store.maintain(now).await.unwrap();
    assert_eq!(done.dropped.len(), 1, "{done:?}");
    assert_eq!(history_seqs(&*store, "ws-old", 10).await, vec![2]);
    let parts: i64 = pg
        .sql(
            &db,
            "SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'snapshots'::regclass",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(parts >= 3, "{parts} partitions");
    // The latest snapshot is the endpoint's, not the history's: it stays.
    let d = store.endpoint("ws-old").await.unwrap().unwrap();
    assert_eq!(d.latest.unwrap().cpu.usage_percent, 2.0);
}

/// An installation that started on SQLite moves to PostgreSQL whole:
/// endpoints with their history and latest snapshots, fault events with
/// their ids (the ticket cursor refers to them), tickets with timelines
/// and evidence, the outbox, the audit log, accounts, tokens and
/// certificates. The moved database answers every read as the old one
/// did, and new rows continue past the moved ids. A database that holds
/// anything is refused.
#[tokio::test]
async fn migrate_moves_an_installation_from_sqlite_to_postgres() {
    use vitals_collector::store::{Account, EnrollToken, IssuedCert};
    let Some(pg) = postgres_or_skip("store::migrate_moves_an_installation_from_sqlite_to_postgres")
    else {
        return;
    };
    let sqlite_url = fresh_url(Backend::Sqlite, "migrate_source").unwrap();
    let source = open(&sqlite_url, 50, Duration::ZERO).await;
    let ids: Vec<EndpointId> = (0..5)
        .map(|i| format!("ws-mv{i}").parse().unwrap())
        .collect();
    for id in &ids {
        source.open_session(&session(id)).await.unwrap();
        let mut batch: Vec<Record> = (1..=30).map(|s| record(id, s, s as f32)).collect();
        batch.push(fault(id, 31, FaultState::Raised));
        source.commit(batch).await.unwrap();
    }
    source.close_session(&ids[0], 99).await.unwrap();
    // The ticket engine has read the first three fault events.
    let faults = source.fault_events_after(0, 100).await.unwrap();
    let evidence = engine_step(
        &*source,
        &faults[..3],
        vec![NewDelivery {
            webhook: "itsm".into(),
            event: "opened".into(),
            body: "{}".into(),
        }],
        Vec::new(),
    )
    .await;
    source
        .audit_append(vitals_proto::diag::AuditEntry {
            who: "sam".into(),
            kind: "network".into(),
            endpoint_id: "ws-mv1".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    source
        .create_account(Account {
            name: "ana".into(),
            role: vitals_proto::identity::Role::Admin,
            sites: vec![],
            password_hash: "$argon2id$x".into(),
            must_change_password: false,
            disabled: true,
            created_ms: 1,
            updated_ms: 2,
            totp_secret: Some("JBSWY3DP".into()),
            recovery_codes: vec!["h".into()],
        })
        .await
        .unwrap();
    source
        .create_token(EnrollToken {
            id: "tok".into(),
            secret_hash: "ab".into(),
            max_uses: 3,
            expires_ms: 9,
            created_ms: 1,
            created_by: "admin".into(),
            reenroll: true,
            ..Default::default()
        })
        .await
        .unwrap();
    source
        .record_certificate(IssuedCert {
            serial: "0a".into(),
            kind: "endpoint".into(),
            subject: "ws-mv2".into(),
            via: "renew".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    source.revoke_endpoint("ws-mv2", "lost", 77).await.unwrap();

    let target = pg.database("suite_migrate").unwrap();
    let path = sqlite_url.strip_prefix("sqlite://").unwrap();
    let moved = store::migrate::sqlite_to_postgres(
        std::path::Path::new(path),
        &target,
        &options(50, Duration::ZERO),
    )
    .await
    .unwrap();
    let count = |t: &str| {
        moved
            .tables
            .iter()
            .find(|(n, _)| n == t)
            .map(|(_, n)| *n)
            .unwrap()
    };
    assert_eq!(count("endpoints"), 5);
    assert_eq!(count("snapshots"), 150);
    assert_eq!(count("fault_events"), 5);
    assert_eq!(count("audit_log"), 1);
    assert_eq!(moved.ticket_cursor, faults[2].id);

    let moved_store = open(&target, 50, Duration::ZERO).await;
    // Every endpoint as it was, offline: the source collector is stopped,
    // and no session survives the move.
    let mut was = source.list_endpoints(false).await.unwrap();
    assert!(was.iter().any(|e| e.online));
    for e in &mut was {
        e.online = false;
    }
    assert_eq!(moved_store.list_endpoints(false).await.unwrap(), was);
    for id in &ids {
        let (a, b) = (
            source.endpoint(id.as_str()).await.unwrap().unwrap(),
            moved_store.endpoint(id.as_str()).await.unwrap().unwrap(),
        );
        assert_eq!(a.latest, b.latest);
        assert_eq!(
            (a.committed_seq, a.history_len, a.state_since_ms),
            (b.committed_seq, b.history_len, b.state_since_ms)
        );
        let (ha, hb) = (
            source.history(id.as_str(), 50).await.unwrap(),
            moved_store.history(id.as_str(), 50).await.unwrap(),
        );
        assert_eq!(ha.len(), 30);
        assert!(
            ha.iter()
                .zip(&hb)
                .all(|(x, y)| x.seq == y.seq && x.snapshot == y.snapshot)
        );
        assert_eq!(
            source.faults(id.as_str(), 10).await.unwrap(),
            moved_store.faults(id.as_str(), 10).await.unwrap()
        );
    }
    assert_eq!(
        moved_store.fault_events_after(0, 100).await.unwrap(),
        faults,
        "fault events keep their ids"
    );
    let (ta, tb) = (
        source.ticket(1).await.unwrap().unwrap(),
        moved_store.ticket(1).await.unwrap().unwrap(),
    );
    assert_eq!(tb.snapshot, Some(evidence));
    assert_eq!(ta.timeline, tb.timeline);
    assert_eq!(ta.ticket.raise_count, tb.ticket.raise_count);
    let (state, was) = (
        moved_store.ticket_state().await.unwrap(),
        source.ticket_state().await.unwrap(),
    );
    assert_eq!(state.cursor, faults[2].id);
    assert_eq!((state.max_ticket, state.tickets.len()), (3, 3));
    assert_eq!(state.tickets, was.tickets);
    assert_eq!(
        moved_store.due_deliveries(i64::MAX, 10).await.unwrap(),
        source.due_deliveries(i64::MAX, 10).await.unwrap()
    );
    assert_eq!(
        moved_store.accounts().await.unwrap(),
        source.accounts().await.unwrap()
    );
    assert_eq!(
        moved_store.tokens().await.unwrap(),
        source.tokens().await.unwrap()
    );
    assert_eq!(
        moved_store.revocations().await.unwrap(),
        source.revocations().await.unwrap()
    );
    let audit = |s: Arc<dyn Store>| async move {
        s.audit(AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
    };
    assert_eq!(
        audit(moved_store.clone()).await,
        audit(source.clone()).await
    );
    // New rows continue past the moved ids.
    moved_store
        .commit(vec![fault(&ids[0], 32, FaultState::Cleared)])
        .await
        .unwrap();
    let after = moved_store
        .fault_events_after(faults[4].id, 10)
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    let next_audit = moved_store
        .audit_append(vitals_proto::diag::AuditEntry {
            who: "sam".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next_audit, 2);

    // A second run finds the target in use and changes nothing.
    let err = store::migrate::sqlite_to_postgres(
        std::path::Path::new(path),
        &target,
        &options(50, Duration::ZERO),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("already holds"), "{err}");
    assert_eq!(moved_store.list_endpoints(false).await.unwrap().len(), 5);
}

/// Replicas elect one leader through the database: it alone may write
/// ticket steps and delivery records. When its lock session ends (a stop,
/// or its database connection killed as a crash would), a standby leads
/// within seconds, and the old leader's writes are refused from then on.
#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over() {
    use vitals_collector::leader::Leading;
    let Some(pg) = postgres_or_skip("store::one_replica_leads_and_a_standby_takes_over") else {
        return;
    };
    let url = pg.database("suite_leader").unwrap();
    let db = url_db(&url);
    let replica = |name: &str| {
        let mut o = options(10, Duration::ZERO);
        o.replica = name.into();
        o
    };
    let a = store::open_with(&url, &replica("a")).await.unwrap();
    let b = store::open_with(&url, &replica("b")).await.unwrap();
    let (stop_a, stop_a_rx) = vitals_proto::shutdown::channel();
    let (_stop_b, stop_b_rx) = vitals_proto::shutdown::channel();
    let mut lead_a = a.campaign(stop_a_rx);
    tokio::time::timeout(Duration::from_secs(10), lead_a.until(true))
        .await
        .expect("the first replica leads");
    let mut lead_b: Leading = b.campaign(stop_b_rx);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!lead_b.now(), "one leader at a time");
    let step = |cursor| TicketStep {
        cursor,
        now_ms: 1,
        ..Default::default()
    };
    a.save_tickets(step(1)).await.unwrap();
    let err = b.save_tickets(step(2)).await.unwrap_err();
    assert!(matches!(err, store::StoreError::NotLeader), "{err}");
    assert_eq!(b.ticket_state().await.unwrap().cursor, 1);

    // A crash: the leader's lock session is cut off by the server.
    pg.sql(
        &db,
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND objid = 4 AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), lead_b.until(true))
        .await
        .expect("the standby leads");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took over in {took:?}");
    b.save_tickets(step(3)).await.unwrap();
    let err = a.save_tickets(step(4)).await.unwrap_err();
    assert!(matches!(err, store::StoreError::NotLeader), "{err}");
    assert_eq!(a.ticket_state().await.unwrap().cursor, 3);
    // The old leader campaigns again and stays a standby.
    tokio::time::timeout(Duration::from_secs(5), lead_a.until(false))
        .await
        .expect("the old leader knows it lost");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!lead_a.now());
    // A stopped standby changes nothing; the leader stays.
    stop_a.trigger();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lead_b.now());
}

/// A replica that dies cannot close its sessions; the database's own
/// record of its lock session says it is gone, so the offline rule sees
/// its desks as without a session while the other replicas' stay online.
#[tokio::test]
async fn a_dead_replicas_sessions_count_as_ended() {
    let Some(pg) = postgres_or_skip("store::a_dead_replicas_sessions_count_as_ended") else {
        return;
    };
    let url = pg.database("suite_dead_replica").unwrap();
    let replica = |name: &str| {
        let mut o = options(10, Duration::ZERO);
        o.replica = name.into();
        o
    };
    let a = store::open_with(&url, &replica("a")).await.unwrap();
    let b = store::open_with(&url, &replica("b")).await.unwrap();
    let (on_a, on_b): (EndpointId, EndpointId) =
        ("ws-on-a".parse().unwrap(), "ws-on-b".parse().unwrap());
    a.open_session(&session(&on_a)).await.unwrap();
    b.open_session(&session(&on_b)).await.unwrap();
    let (stop_a, stop_a_rx) = vitals_proto::shutdown::channel();
    let (_stop_b, stop_b_rx) = vitals_proto::shutdown::channel();
    let mut lead_a = a.campaign(stop_a_rx);
    let mut lead_b = b.campaign(stop_b_rx);
    tokio::time::timeout(Duration::from_secs(10), async {
        lead_a.decided().await;
        lead_b.decided().await;
    })
    .await
    .expect("both replicas running");
    let online = |p: Vec<store::Presence>| -> Vec<String> {
        let mut v: Vec<String> = p
            .into_iter()
            .filter(|p| p.online)
            .map(|p| p.endpoint_id)
            .collect();
        v.sort();
        v
    };
    assert_eq!(online(b.presence().await.unwrap()), ["ws-on-a", "ws-on-b"]);
    // Replica a is gone without a word: its database session ends.
    stop_a.trigger();
    drop(a);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = online(b.presence().await.unwrap());
        if now == ["ws-on-b"] {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "a dead replica's desk still online: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every view says so: the list of desks online, the desk itself.
    let listed: Vec<String> = b
        .list_endpoints(true)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.endpoint_id)
        .collect();
    assert_eq!(listed, ["ws-on-b"]);
    let gone = b.endpoint("ws-on-a").await.unwrap().expect("known desk");
    assert!(!gone.summary.online);
    // The desk reconnecting to a live replica is online again.
    b.open_session(&session(&on_a)).await.unwrap();
    assert_eq!(online(b.presence().await.unwrap()), ["ws-on-a", "ws-on-b"]);
}

/// A collector on PostgreSQL labels its metrics with its replica name and
/// says whether it leads; alone on its database, it leads at once.
#[tokio::test]
async fn a_replica_labels_its_metrics_and_says_it_leads() {
    let Some(pg) = postgres_or_skip("store::a_replica_labels_its_metrics_and_says_it_leads") else {
        return;
    };
    let fleet = vitals_tests::Fleet::new("replica-metrics");
    let mut config = fleet.collector_config();
    config.storage.url = Some(pg.database("suite_replica_metrics").unwrap());
    config.replica = Some("east".into());
    let collector = vitals_tests::RunningCollector::start(config).await;
    vitals_tests::eventually(Duration::from_secs(10), "the replica leads", || async {
        collector
            .scrape_raw()
            .await
            .contains("vitals_collector_leader{replica=\"east\"} 1")
            .then_some(())
    })
    .await;
    let raw = collector.scrape_raw().await;
    assert!(
        raw.contains("vitals_collector_connected_agents{replica=\"east\"} 0"),
        "{raw}"
    );
    collector.stop().await;
}
