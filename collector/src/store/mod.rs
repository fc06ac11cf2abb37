//! The storage interface of the collector.
//!
//! Callers (ingest, the ticket worker, the specialist service) see only
//! [`Store`] and domain types. [`Store`] is one trait per concern
//! (sessions, the ingest commit, endpoint queries, tickets, the
//! notification outbox, the audit log): the questions any backend must
//! answer. Two backends implement them: SQLite ([`sqlite`], the embedded
//! default, a `sqlite://` storage URL) and PostgreSQL ([`postgres`], for
//! replicated collectors, a `postgres://` URL); [`open`] picks by URL.

pub mod migrate;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use vitals_proto::domain::{
    EndpointDetail, EndpointSummary, FaultEvent, FaultRecord, HistoryEntry, Snapshot,
};
use vitals_proto::identity::EndpointId;
use vitals_proto::tickets::{Entry, Incident, Ticket, TicketDetail};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database migration {version}: {source}")]
    Migration {
        version: u32,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this collector knows ({known}); upgrade the collector"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored fault event of {endpoint} seq {seq} is not valid: {what}")]
    CorruptFault {
        endpoint: String,
        seq: u64,
        what: String,
    },
    #[error("stored snapshot of {endpoint} seq {seq} is not valid: {what}")]
    Corrupt {
        endpoint: String,
        seq: u64,
        what: String,
    },
    #[error("stored ticket or incident {id} is not valid: {what}")]
    CorruptTicket { id: i64, what: String },
    #[error("stored console account {name:?} is not valid: {what}")]
    CorruptAccount { name: String, what: String },
    #[error(
        "unsupported storage url \"{0}\": use sqlite://PATH (the default) or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl(String),
    #[error("storage url {url}: {what}")]
    PgConfig { url: String, what: String },
    #[error("database {url}: {what}")]
    PgOpen { url: String, what: String },
    #[error("database migration {version}: {}", postgres::describe(.source))]
    PgMigration {
        version: u32,
        source: tokio_postgres::Error,
    },
    #[error("database: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database connection pool: {0}")]
    Pool(String),
    #[error("migration to PostgreSQL: {0}")]
    Migrate(String),
    #[error("no endpoint {0} to commit records of (its session was not opened)")]
    UnknownEndpoint(String),
    #[error("storage worker stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// One failure told to more than one waiter (a specialist's action
    /// and the ticket worker that ran it).
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
    #[error("ingest is shutting down")]
    Closed,
    #[error(
        "this collector replica does not lead now (another runs the ticket engine); nothing was written"
    )]
    NotLeader,
}

/// An agent's session began.
#[derive(Debug, Clone)]
pub struct SessionOpen {
    pub endpoint: EndpointId,
    pub agent_version: String,
    pub platform: String,
    pub at_ms: i64,
    /// The machine's fingerprint from the hello; empty from older agents.
    pub machine_id: String,
}

/// Whether a session may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Yes; the highest sequence committed for the endpoint.
    Admitted(u64),
    /// The endpoint was revoked: it must enroll again.
    Revoked { reason: String },
    /// The identity is bound to another machine: a cloned image. The
    /// newcomer is recorded on the endpoint and refused.
    OtherMachine {
        bound: String,
        /// The flag is new with this attempt (so the admins are told once).
        newly_flagged: bool,
    },
}

/// An agent message to commit.
#[derive(Debug, Clone)]
pub struct Record {
    pub endpoint: EndpointId,
    pub seq: u64,
    pub received_ms: i64,
    pub body: RecordBody,
}

#[derive(Debug, Clone)]
pub enum RecordBody {
    Snapshot(Box<SnapshotRecord>),
    Fault(FaultEvent),
}

/// A snapshot as the store writes it: its stored encoding and the summary
/// columns of the endpoint list. The session that received it prepares it
/// on any runtime thread, so the one writer only binds what it is given
/// and drops little.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub taken_at_ms: i64,
    pub hostname: String,
    /// Name and version, as the endpoint list shows it.
    pub os: String,
    pub cpu_usage_percent: f64,
    pub memory_used_percent: f64,
    pub fullest_disk_percent: f64,
    /// The endpoint's network addresses, a JSON list of strings.
    pub addresses: String,
    /// The protobuf encoding of the snapshot (`wire::Snapshot`).
    pub encoded: Vec<u8>,
}

impl SnapshotRecord {
    /// Prepares a snapshot as it came off the wire: encoded as received,
    /// summarised from its domain form.
    pub fn from_wire(w: vitals_proto::wire::Snapshot) -> SnapshotRecord {
        let encoded = prost::Message::encode_to_vec(&w);
        SnapshotRecord::with_encoding(&Snapshot::from(w), encoded)
    }

    pub fn new(s: &Snapshot) -> SnapshotRecord {
        SnapshotRecord::with_encoding(s, encode_snapshot(s))
    }

    fn with_encoding(s: &Snapshot, encoded: Vec<u8>) -> SnapshotRecord {
        let addresses: Vec<String> = s.networks().iter().map(|n| n.addr().to_string()).collect();
        SnapshotRecord {
            taken_at_ms: s.taken_at_ms,
            hostname: s.host.hostname.clone(),
            os: format!("{} {}", s.host.os_name, s.host.os_version)
                .trim()
                .to_owned(),
            cpu_usage_percent: s.cpu.usage_percent as f64,
            memory_used_percent: s.memory.used_percent() as f64,
            fullest_disk_percent: s.fullest_disk_percent() as f64,
            // A list of strings: serialising cannot fail.
            addresses: serde_json::to_string(&addresses).unwrap_or_else(|_| "[]".into()),
            encoded,
        }
    }
}

/// One endpoint's stored state as an ingest commit finds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointProgress {
    pub committed: u64,
    pub last_history_ms: i64,
}

/// What an ingest batch changes, worked out from each endpoint's stored
/// state by the rules every backend keeps: a record at or below its
/// endpoint's committed sequence is a replay and takes no effect; a
/// snapshot enters the history when taken at least `interval_ms` after the
/// newest one there (zero keeps all); the newest snapshot of the batch
/// becomes the endpoint's latest; every fault event is kept.
pub(crate) struct BatchPlan<'a> {
    /// Snapshots entering the history, in batch order.
    pub history: Vec<(&'a Record, &'a SnapshotRecord)>,
    /// Fault events to keep, in batch order.
    pub faults: Vec<(&'a Record, &'a FaultEvent)>,
    /// Each endpoint that moved, in the order first seen in the batch.
    pub advanced: Vec<Advance<'a>>,
}

/// How far one endpoint moved in a batch.
pub(crate) struct Advance<'a> {
    pub endpoint: &'a str,
    /// Its highest fresh sequence and when that record was received.
    pub seq: u64,
    pub received_ms: i64,
    /// Its newest fresh snapshot, if the batch had one.
    pub newest: Option<&'a SnapshotRecord>,
    /// When its newest history entry was taken, counting this batch's.
    pub last_history_ms: i64,
    /// How many of its snapshots entered the history.
    pub history_added: i64,
}

/// Plans an ingest batch: see [`BatchPlan`]. `state` gives an endpoint's
/// stored progress, asked once per endpoint.
pub(crate) fn plan_batch<'a>(
    records: &'a [Record],
    interval_ms: i64,
    mut state: impl FnMut(&'a str) -> Result<EndpointProgress, StoreError>,
) -> Result<BatchPlan<'a>, StoreError> {
    struct Seen<'a> {
        progress: EndpointProgress,
        advance: Option<Advance<'a>>,
    }
    let mut order: Vec<&str> = Vec::new();
    let mut seen: HashMap<&str, Seen<'a>> = HashMap::new();
    let mut plan = BatchPlan {
        history: Vec::new(),
        faults: Vec::new(),
        advanced: Vec::new(),
    };
    for r in records {
        let id = r.endpoint.as_str();
        if !seen.contains_key(id) {
            let progress = state(id)?;
            order.push(id);
            seen.insert(
                id,
                Seen {
                    progress,
                    advance: None,
                },
            );
        }
        let Some(st) = seen.get_mut(id) else {
            continue;
        };
        // Sequences of one endpoint arrive in order, so anything at or
        // below the committed one is a replay.
        if r.seq <= st.progress.committed {
            continue;
        }
        st.progress.committed = r.seq;
        let last_history_ms = st.progress.last_history_ms;
        let advance = st.advance.get_or_insert(Advance {
            endpoint: id,
            seq: r.seq,
            received_ms: r.received_ms,
            newest: None,
            last_history_ms,
            history_added: 0,
        });
        advance.seq = r.seq;
        advance.received_ms = r.received_ms;
        match &r.body {
            RecordBody::Fault(e) => plan.faults.push((r, e)),
            RecordBody::Snapshot(s) => {
                let taken = s.taken_at_ms;
                let last = st.progress.last_history_ms;
                if interval_ms == 0 || last <= 0 || taken - last >= interval_ms {
                    plan.history.push((r, s));
                    st.progress.last_history_ms = taken;
                    advance.last_history_ms = taken;
                    advance.history_added += 1;
                }
                advance.newest = Some(s);
            }
        }
    }
    for id in order {
        if let Some(advance) = seen.remove(id).and_then(|s| s.advance) {
            plan.advanced.push(advance);
        }
    }
    Ok(plan)
}

/// A value stored as JSON text (ticket and incident bodies, lists of
/// strings): plain data with string keys, so serialising cannot fail.
pub(crate) fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// A ticket or incident body read back from its JSON text.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    id: i64,
    body: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::CorruptTicket {
        id,
        what: e.to_string(),
    })
}

/// A stored fault event's columns, as either backend reads them.
pub(crate) struct FaultRow<'a> {
    pub seq: u64,
    pub received_ms: i64,
    pub at_ms: i64,
    pub check_id: String,
    pub state: &'a str,
    pub severity: &'a str,
    pub subject: String,
    pub value: f64,
    pub evidence: String,
    pub via: String,
}

impl FaultRow<'_> {
    /// The fault event, its state and severity checked: a name this
    /// collector does not know is a damaged row.
    pub fn record(self, endpoint: &str) -> Result<FaultRecord, StoreError> {
        let corrupt = |what: String| StoreError::CorruptFault {
            endpoint: endpoint.to_owned(),
            seq: self.seq,
            what,
        };
        let state = self
            .state
            .parse()
            .map_err(|e: vitals_proto::UnknownName| corrupt(format!("state \"{}\"", e.name)))?;
        let severity = self
            .severity
            .parse()
            .map_err(|e: vitals_proto::UnknownName| corrupt(format!("severity \"{}\"", e.name)))?;
        Ok(FaultRecord {
            seq: self.seq,
            received_at_ms: self.received_ms,
            event: FaultEvent {
                at_ms: self.at_ms,
                check_id: self.check_id,
                state,
                severity,
                subject: self.subject,
                value: self.value,
                evidence: self.evidence,
                via: self.via,
            },
        })
    }
}

/// A snapshot as stored: the protobuf encoding of its wire form.
pub(crate) fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    prost::Message::encode_to_vec(&vitals_proto::wire::Snapshot::from(s.clone()))
}

/// Everything the collector stores, as the questions each part of it asks.
/// A backend implements each concern's trait; [`Store`] is all of them.
pub trait Store:
    SessionStore
    + IngestStore
    + EndpointStore
    + TicketStore
    + OutboxStore
    + AuditStore
    + AccountStore
    + EnrollStore
    + LeaderStore
    + RetentionStore
    + 'static
{
}

impl<T> Store for T where
    T: SessionStore
        + IngestStore
        + EndpointStore
        + TicketStore
        + OutboxStore
        + AuditStore
        + AccountStore
        + EnrollStore
        + LeaderStore
        + RetentionStore
        + 'static
{
}

/// Leader election among replicas sharing a database.
pub trait LeaderStore: Send + Sync {
    /// Campaigns, until `stop`, to be the replica that runs the ticket
    /// engine and the notification sender. Once called, the store refuses
    /// ticket steps and delivery records while this replica does not lead.
    /// A backend one collector owns alone leads at once, always.
    fn campaign(&self, stop: vitals_proto::shutdown::Shutdown) -> crate::leader::Leading;
}

/// Agent sessions: when an endpoint is online.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records that an endpoint's session began (creating the endpoint on
    /// first contact, binding it to the hello's machine if it has none)
    /// and returns the highest sequence committed for it; or refuses it,
    /// changing nothing but the clone flag, when the endpoint is revoked or
    /// bound to another machine.
    async fn open_session(&self, open: &SessionOpen) -> Result<Admission, StoreError>;

    /// Records that an endpoint's session ended.
    async fn close_session(&self, endpoint: &EndpointId, at_ms: i64) -> Result<(), StoreError>;

    /// Marks every endpoint offline. Called at start-up: no session survives
    /// a collector restart.
    async fn mark_all_offline(&self, at_ms: i64) -> Result<(), StoreError>;
}

/// The ingest commit: what makes an acknowledgement true.
#[async_trait]
pub trait IngestStore: Send + Sync {
    /// Commits session changes and agent messages in one transaction: the
    /// session changes first, in order, then the records. Records of one
    /// endpoint come in sequence order; a record at or below the endpoint's
    /// committed sequence is a replay and takes no effect. The newest
    /// snapshot becomes the endpoint's latest; history keeps a downsampled,
    /// bounded series; every fault event is kept. When this returns `Ok`
    /// every record and session change is durable, and the answer holds one
    /// admission per opened session, in order.
    async fn commit_batch(&self, batch: Batch) -> Result<Vec<Admission>, StoreError>;

    /// Commits agent messages alone (see [`IngestStore::commit_batch`]).
    async fn commit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.commit_batch(Batch {
            sessions: Vec::new(),
            records,
        })
        .await
        .map(drop)
    }
}

/// What one ingest transaction writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub sessions: Vec<SessionChange>,
    pub records: Vec<Record>,
}

/// A session beginning or ending, written with the ingest commit.
#[derive(Debug, Clone)]
pub enum SessionChange {
    /// As [`SessionStore::open_session`]; its admission is in the answer.
    Open(SessionOpen),
    /// As [`SessionStore::close_session`].
    Close { endpoint: EndpointId, at_ms: i64 },
}

/// What specialists read about endpoints.
#[async_trait]
pub trait EndpointStore: Send + Sync {
    /// Every endpoint, most recently seen first.
    async fn list_endpoints(&self, online_only: bool) -> Result<Vec<EndpointSummary>, StoreError>;

    /// One endpoint in full, or `None` if never seen.
    async fn endpoint(&self, id: &str) -> Result<Option<EndpointDetail>, StoreError>;

    /// Stored snapshots of an endpoint, newest first, at most `limit`.
    async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Fault events of an endpoint, newest first, at most `limit`.
    async fn faults(&self, id: &str, limit: u32) -> Result<Vec<FaultRecord>, StoreError>;

    /// When the latest snapshot of each of `ids` was taken (endpoints
    /// without one are left out): one cheap read for many endpoints.
    async fn snapshot_times(&self, ids: Vec<String>) -> Result<HashMap<String, i64>, StoreError>;

    /// Every endpoint's id, whether it has a session and when it was last
    /// seen: what the offline rule needs, without the summaries.
    async fn presence(&self) -> Result<Vec<Presence>, StoreError>;

    /// Whether the endpoint's agent should tell again what it holds
    /// raised (set on every endpoint by a restore, and on new ones).
    async fn wants_resync(&self, id: &str) -> Result<bool, StoreError>;

    /// The agent has told it: no resync at its next welcome.
    async fn resync_done(&self, id: &str) -> Result<(), StoreError>;
}

/// One endpoint's connection state, for the offline rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub endpoint_id: String,
    pub online: bool,
    pub last_seen_ms: i64,
}

/// The ticket engine's input, state and steps, and the specialists' reads.
#[async_trait]
pub trait TicketStore: Send + Sync {
    /// Fault events committed after `after` (their storage id), oldest
    /// first: the ticket engine's input.
    async fn fault_events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredFault>, StoreError>;

    /// What the ticket engine resumes from.
    async fn ticket_state(&self) -> Result<TicketState, StoreError>;

    /// One engine step, atomically: changed tickets and incidents, their
    /// timeline entries, and the new fault event cursor.
    async fn save_tickets(&self, step: TicketStep) -> Result<(), StoreError>;

    /// Tickets matching `filter`, most urgent and newest first.
    async fn tickets(&self, filter: TicketFilter) -> Result<Vec<Ticket>, StoreError>;
    /// How many tickets are open, per priority and per endpoint.
    async fn open_ticket_counts(&self) -> Result<OpenCounts, StoreError>;

    /// One ticket with its timeline (oldest entry first) and the snapshot
    /// kept when it was raised; `knowledge` is left for the caller.
    async fn ticket(&self, id: u64) -> Result<Option<TicketDetail>, StoreError>;
}

/// The notification outbox (webhook posts and mails), written by the
/// ticket engine's steps and drained by the delivery worker.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Deliveries due at `now_ms` (not delivered, not dead), oldest first.
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError>;

    /// Records the outcome of one delivery attempt.
    async fn delivery_outcome(&self, id: i64, outcome: DeliveryOutcome) -> Result<(), StoreError>;
}

/// An enrollment token as stored: its secret only as a hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnrollToken {
    /// The public half, shown in lists and the audit log.
    pub id: String,
    /// SHA-256 of the secret half, hex.
    pub secret_hash: String,
    /// 0: any number of uses.
    pub max_uses: u32,
    pub used: u32,
    pub expires_ms: i64,
    pub site: String,
    pub tags: Vec<String>,
    /// Endpoint IDs it may enroll (`*` wildcards); empty: any.
    pub id_pattern: String,
    /// May take over the ID of an endpoint already enrolled.
    pub reenroll: bool,
    pub created_ms: i64,
    pub created_by: String,
    pub last_used_ms: i64,
    pub last_used_by: String,
    /// 0: not revoked.
    pub revoked_ms: i64,
}

/// A certificate the collector signed, by serial.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IssuedCert {
    /// Hex, lower case, as the CRL lists it.
    pub serial: String,
    /// `endpoint` or `specialist`.
    pub kind: String,
    /// The endpoint ID or the specialist's name.
    pub subject: String,
    pub issued_ms: i64,
    pub not_after_ms: i64,
    /// enroll, renew, renew_expired, issue.
    pub via: String,
    pub revoked_ms: i64,
    pub revoke_reason: String,
}

/// A desk joining with a token, applied in one transaction.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub token_id: String,
    pub endpoint: EndpointId,
    pub hostname: String,
    pub machine_id: String,
    pub certificate: IssuedCert,
    pub at_ms: i64,
}

/// Why a token did not enroll a desk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown enrollment token")]
    Unknown,
    #[error("the enrollment token was revoked")]
    Revoked,
    #[error("the enrollment token expired")]
    Expired,
    #[error("the enrollment token has no uses left")]
    UsedUp,
    #[error(
        "endpoint {0} is already enrolled; revoke it first, or use a token that allows re-enrolling"
    )]
    Clash(String),
}

/// Every revocation in force: what handshakes are checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revocations {
    /// Revoked certificate serials with when and why, for the CRL.
    pub serials: Vec<(String, i64, String)>,
    /// Revoked endpoints with when: any certificate naming them that was
    /// issued before is refused (certificates made by hand included).
    pub endpoints: Vec<(String, i64)>,
    /// Revoked specialists by name, the same way.
    pub specialists: Vec<(String, i64)>,
}

/// Why a token cannot be used now, if it cannot.
pub(crate) fn unusable_token(t: &EnrollToken, now_ms: i64) -> Option<TokenRefusal> {
    if t.revoked_ms > 0 {
        Some(TokenRefusal::Revoked)
    } else if t.expires_ms <= now_ms {
        Some(TokenRefusal::Expired)
    } else if t.max_uses > 0 && t.used >= t.max_uses {
        Some(TokenRefusal::UsedUp)
    } else {
        None
    }
}

/// Enrollment tokens, signed certificates and revocation.
#[async_trait]
pub trait EnrollStore: Send + Sync {
    async fn create_token(&self, token: EnrollToken) -> Result<(), StoreError>;
    /// Every token, newest first.
    async fn tokens(&self) -> Result<Vec<EnrollToken>, StoreError>;
    async fn token(&self, id: &str) -> Result<Option<EnrollToken>, StoreError>;
    /// Revokes a token; false if there is none by that id.
    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError>;
    /// Uses the token once and enrolls the endpoint with its certificate,
    /// site and tags, bound to its machine, in one transaction; refused
    /// (nothing changed) if the token is not usable at `at_ms` or the ID
    /// belongs to an enrolled endpoint the token may not take over.
    async fn enroll(&self, e: NewEnrollment) -> Result<Result<(), TokenRefusal>, StoreError>;
    /// Records a certificate signed outside enrollment (renewal, by hand).
    async fn record_certificate(&self, cert: IssuedCert) -> Result<(), StoreError>;
    async fn certificate(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError>;
    /// Revokes an endpoint and every certificate recorded for it; returns
    /// false if no such endpoint was ever seen or enrolled.
    async fn revoke_endpoint(&self, id: &str, reason: &str, at_ms: i64)
    -> Result<bool, StoreError>;
    /// Revokes a specialist: every certificate of theirs issued until now
    /// (recorded or made by hand); returns how many recorded ones.
    async fn revoke_specialist(
        &self,
        name: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<u64, StoreError>;
    /// Binds an endpoint to a machine and clears its clone flag.
    async fn bind_machine(&self, id: &str, machine_id: &str) -> Result<bool, StoreError>;
    /// Every revocation in force.
    async fn revocations(&self) -> Result<Revocations, StoreError>;
}

/// A local account of the web console.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub name: String,
    pub role: vitals_proto::identity::Role,
    /// The sites it may see; empty: all.
    pub sites: Vec<String>,
    /// argon2id, as a PHC string.
    pub password_hash: String,
    /// A one-time password: it must be changed at the next login.
    pub must_change_password: bool,
    pub disabled: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The TOTP secret (base32), once a second factor is enrolled.
    pub totp_secret: Option<String>,
    /// SHA-256 hashes of the recovery codes not used yet.
    pub recovery_codes: Vec<String>,
}

/// The console's local accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Adds an account; `false` if one of that name exists (nothing changes).
    async fn create_account(&self, account: Account) -> Result<bool, StoreError>;

    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;

    /// Every account, by name.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;

    /// Replaces an account's role, sites, hash and flags; `false` if there
    /// is no such account.
    async fn update_account(&self, account: Account) -> Result<bool, StoreError>;
}

/// The audit log of diagnostics: append-only.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends to the audit log; returns the entry's id. Nothing changes
    /// or removes an entry.
    async fn audit_append(&self, entry: vitals_proto::diag::AuditEntry) -> Result<u64, StoreError>;

    /// Audit entries, newest first.
    async fn audit(
        &self,
        filter: AuditFilter,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, StoreError>;
}

/// Removing what `[retention]` no longer keeps. Each call removes at most
/// `limit` rows in one short transaction and says how many it removed, so
/// a caller repeats until fewer come back and agents' commits wait for
/// no more than one such transaction at a time.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Fault events received before `before_ms` that the ticket engine
    /// has applied (at or below its cursor).
    async fn prune_fault_events(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Tickets resolved or closed and unchanged since before `before_ms`,
    /// with their timelines, evidence snapshots and waits; then resolved
    /// incidents from before then that hold no ticket any more, with
    /// theirs. Returns the tickets removed. A ticket engine's write
    /// (fenced on PostgreSQL like its steps).
    async fn prune_tickets(&self, before_ms: i64, limit: u32) -> Result<Vec<u64>, StoreError>;

    /// Notifications delivered or given up on, created before `before_ms`.
    async fn prune_deliveries(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Signed certificates that expired before `before_ms`.
    async fn prune_certificates(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;

    /// Audit entries from before `before_ms` not yet archived, oldest
    /// first, at most `limit`.
    async fn audit_unarchived(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, StoreError>;

    /// In one transaction: records `archive` (a file holding the entries
    /// `first_id..=last_id`, already durable), appends `entry` (the
    /// archive's own audit entry), and removes the archived entries.
    /// Returns the new entry's id.
    async fn archive_audit(
        &self,
        archive: AuditArchive,
        entry: vitals_proto::diag::AuditEntry,
    ) -> Result<u64, StoreError>;

    /// Archives recorded so far, oldest first.
    async fn audit_archives(&self) -> Result<Vec<AuditArchive>, StoreError>;

    /// Gives space freed by removals back to the file system where the
    /// backend does not do it itself (SQLite: an incremental vacuum down
    /// to a little slack; PostgreSQL's autovacuum needs nothing). Returns
    /// the bytes given back.
    async fn compact(&self) -> Result<u64, StoreError>;

    /// The database's size on disk in bytes (SQLite: the file and its
    /// WAL; PostgreSQL: `pg_database_size`).
    async fn size_bytes(&self) -> Result<u64, StoreError>;
}

/// An audit archive file and the entries it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditArchive {
    pub first_id: u64,
    pub last_id: u64,
    pub entries: u64,
    /// The file's name in the archive folder.
    pub file: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub at_ms: i64,
}

/// A committed fault event with its storage id (the engine's cursor) and
/// the endpoint it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFault {
    pub id: i64,
    pub endpoint: String,
    pub event: FaultEvent,
}

/// The ticket engine's persisted state: every open ticket, the newest ticket
/// of each (endpoint, check, subject) (for reopening), open incidents, the
/// highest ids used, and the fault event cursor.
#[derive(Debug, Clone, Default)]
pub struct TicketState {
    pub tickets: Vec<Ticket>,
    pub incidents: Vec<Incident>,
    pub max_ticket: u64,
    pub max_incident: u64,
    pub cursor: i64,
    /// Tickets still waiting for their evidence snapshot.
    pub awaiting: Vec<AwaitingEvidence>,
}

/// A ticket waiting for the snapshot that shows its fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingEvidence {
    pub ticket: u64,
    pub endpoint: String,
    /// When the agent saw the fault, by its own clock (as the snapshot's
    /// time is), so clock skew does not matter.
    pub fault_at_ms: i64,
    /// When the collector started waiting, by its clock.
    pub since_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct TicketStep {
    pub tickets: Vec<Ticket>,
    pub incidents: Vec<Incident>,
    pub entries: Vec<Entry>,
    /// Endpoint snapshots to keep with tickets (opened or reopened now).
    pub snapshots: Vec<Evidence>,
    /// Notifications announcing these entries.
    pub deliveries: Vec<NewDelivery>,
    /// Tickets that start waiting for their evidence snapshot, and tickets
    /// that stopped waiting (found it, or waited long enough).
    pub awaiting_added: Vec<AwaitingEvidence>,
    pub awaiting_done: Vec<u64>,
    pub cursor: i64,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    /// Only open tickets (not resolved or closed).
    pub open_only: bool,
    pub endpoint: Option<String>,
    pub check_id: Option<String>,
    pub incident: Option<u64>,
    /// A status name, such as "in_progress".
    pub status: Option<String>,
    /// "p1" to "p4".
    pub priority: Option<String>,
    pub assignee: Option<String>,
    /// Only tickets nobody is assigned to.
    pub unassigned: bool,
    pub limit: u32,
}

/// Open tickets counted per priority ("p1".."p4") and per endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenCounts {
    pub by_priority: std::collections::BTreeMap<String, u64>,
    pub by_endpoint: std::collections::HashMap<String, u64>,
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other.to_string()),
        }
    }
}

/// How a store keeps history, and how it reaches a database server.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Snapshots read back per endpoint (and kept, on SQLite).
    pub history_limit: u32,
    /// Downsampling of the history (zero keeps every snapshot).
    pub history_interval: std::time::Duration,
    /// How long history is kept on PostgreSQL, where it is dropped by
    /// partition; `None`: the bound's span (`history_limit` entries one
    /// `history_interval` apart), at least a day.
    pub retention: Option<std::time::Duration>,
    /// The database password, when the URL has none.
    pub password: Option<String>,
    /// The CA that signed the database server's certificate (TLS).
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections to the database server.
    pub pool_size: u32,
    /// This collector's name among replicas sharing the database.
    pub replica: String,
}

impl StoreOptions {
    pub fn new(history_limit: u32, history_interval: std::time::Duration) -> StoreOptions {
        StoreOptions {
            history_limit,
            history_interval,
            retention: None,
            password: None,
            ca_file: None,
            pool_size: 16,
            replica: String::new(),
        }
    }

    /// How long history is kept (see [`StoreOptions::retention`]).
    pub fn history_retention(&self) -> std::time::Duration {
        const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
        self.retention
            .unwrap_or_else(|| (self.history_interval * self.history_limit).max(DAY))
    }
}

/// Which backend a storage URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    /// `sqlite://PATH`, or a bare path.
    Sqlite(&'a str),
    /// `postgres://…` or `postgresql://…`, the whole URL.
    Postgres(&'a str),
}

impl<'a> Backend<'a> {
    pub fn of(url: &'a str) -> Result<Backend<'a>, StoreError> {
        if let Some(p) = url.strip_prefix("sqlite://") {
            Ok(Backend::Sqlite(p))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres(url))
        } else if url.contains("://") {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        } else {
            Ok(Backend::Sqlite(url))
        }
    }
}

/// Opens the store a URL names, keeping `history_limit` snapshots per
/// endpoint one `history_interval` apart (see [`open_with`]).
pub async fn open(
    url: &str,
    history_limit: u32,
    history_interval: std::time::Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::new(history_limit, history_interval)).await
}

/// Where a database's schema stands against what this collector knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The last migration applied (0: a new database).
    pub applied: u32,
    /// The last migration this collector has.
    pub known: u32,
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied == self.known {
            write!(f, "schema version {}, up to date", self.applied)
        } else if self.applied > self.known {
            write!(
                f,
                "schema version {} is newer than this collector knows ({}); upgrade the collector",
                self.applied, self.known
            )
        } else {
            let pending: Vec<String> = (self.applied + 1..=self.known)
                .map(|v| v.to_string())
                .collect();
            write!(
                f,
                "schema version {} of {}; pending migrations {} are applied when the collector starts",
                self.applied,
                self.known,
                pending.join(", ")
            )
        }
    }
}

/// Reads where the database's schema stands, applying nothing (a missing
/// SQLite file is a new database).
pub async fn migration_status(
    url: &str,
    opts: &StoreOptions,
) -> Result<MigrationStatus, StoreError> {
    match Backend::of(url)? {
        Backend::Sqlite(path) => sqlite::migration_status(std::path::Path::new(path)).await,
        Backend::Postgres(url) => postgres::migration_status(url, opts).await,
    }
}

/// Opens the store a URL names: `sqlite://PATH` (or a bare path) is
/// SQLite, `postgres://…` PostgreSQL. Pending migrations are applied.
pub async fn open_with(url: &str, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match Backend::of(url)? {
        Backend::Sqlite(path) => Ok(Arc::new(
            sqlite::SqliteStore::open(
                std::path::Path::new(path),
                opts.history_limit,
                opts.history_interval,
            )
            .await?,
        )),
        Backend::Postgres(url) => Ok(Arc::new(postgres::PgStore::open(url, opts).await?)),
    }
}

/// The snapshot that shows a ticket's fault, kept with the ticket.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub ticket: u64,
    pub snapshot: Snapshot,
}

/// A notification to queue in the outbox, in the same transaction as the
/// ticket step that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The target: a webhook's name, or the e-mail target.
    pub webhook: String,
    /// The ticket event it tells of, such as "opened".
    pub event: String,
    /// The JSON payload.
    pub body: String,
}

/// A webhook post waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    pub event: String,
    pub body: String,
    pub attempts: u32,
}

/// Which audit entries to list; empty fields match all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub endpoint: String,
    pub who: String,
    pub kind: String,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered {
        at_ms: i64,
    },
    /// Try again at `next_ms`.
    Retry {
        next_ms: i64,
        error: String,
    },
    /// Attempts exhausted; kept with the error for the record.
    Dead {
        at_ms: i64,
        error: String,
    },
}
