//! PostgreSQL backend: the store of replicated collectors.
//!
//! Every replica opens the same database through a pool of connections.
//! The guarantees are the SQLite backend's, kept across replicas:
//! - an ingest commit is one transaction; it locks the rows of the
//!   endpoints it touches (`FOR NO KEY UPDATE`, in id order), so two
//!   replicas briefly holding sessions of one endpoint still apply each
//!   (endpoint, sequence) once;
//! - fault event ids are handed out in commit order: the commit takes a
//!   transaction-scoped advisory lock just before inserting them, so the
//!   ticket engine reading past its cursor never skips an event another
//!   replica committed late;
//! - the audit log refuses changes in the database (triggers);
//! - the schema is versioned (`schema_migrations`); replicas starting
//!   together migrate one at a time under an advisory lock.
//!
//! Snapshot history is partitioned by receive time ([`partitions`]):
//! retention drops whole partitions instead of deleting rows, and reads
//! stop at the per-endpoint bound as on SQLite.
//!
//! One file per concern, as for SQLite.

mod accounts;
mod audit;
mod endpoints;
mod enroll;
mod ingest;
mod outbox;
pub mod partitions;
mod retention;
mod tickets;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use vitals_proto::domain::{EndpointSummary, FaultRecord, Snapshot};

use super::{StoreError, StoreOptions};

/// Schema migrations, applied in order and recorded in `schema_migrations`.
/// Never edit a released migration: add a new one.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "retention",
        include_str!("../../../migrations/postgres/0002_retention.sql"),
    ),
];

/// Advisory lock keys (one namespace, first half "VITA").
pub(crate) const LOCK_MIGRATE: i64 = 0x5649_5441_0000_0001;
pub(crate) const LOCK_FAULT_IDS: i64 = 0x5649_5441_0000_0002;
pub(crate) const LOCK_PARTITIONS: i64 = 0x5649_5441_0000_0003;
/// Held, by its database session, by the replica that leads.
pub(crate) const LOCK_LEADER: i64 = 0x5649_5441_0000_0004;
/// With `hashtext(replica name)` as the second key: held by every running
/// replica on the leader lock's session, so the database itself says
/// which replicas are alive (`pg_locks`), and a dead replica's sessions
/// count as ended at once.
pub(crate) const LOCK_REPLICA: i32 = 0x5649_5441;

pub struct PgStore {
    pool: Pool,
    /// One connection, for the leader lock's session.
    leader_pool: Pool,
    fence: Arc<Fence>,
    history_limit: u32,
    history_interval_ms: i64,
    /// This replica's name, on the sessions it holds.
    replica: String,
    partitions: partitions::Plan,
    /// Receive times below this have a partition (see [`partitions`]).
    covered_until: AtomicI64,
}

/// The connection settings a `postgres://` URL and the options name, with
/// TLS to the server when the URL's `sslmode` asks for it.
fn pool(url: &str, opts: &StoreOptions) -> Result<Pool, StoreError> {
    let bad = |what: String| StoreError::PgConfig {
        url: redact(url),
        what,
    };
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
    if let Some(password) = &opts.password {
        config.password(password.as_bytes());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.application_name("vitals-collector");
    // Notices (such as "already exists, skipping") are not news.
    config.options("-c client_min_messages=warning");
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => {
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        }
        _ => {
            let tls = tls_config(opts).map_err(bad)?;
            Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        }
    };
    Pool::builder(manager)
        .max_size(opts.pool_size.max(1) as usize)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// TLS to the database server: its certificate checked against the CA
/// file of the options, or against the system's trust store.
fn tls_config(opts: &StoreOptions) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in it", path.display()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "sslmode asks for TLS but the system has no trusted CA; set storage.ca_file"
                        .into(),
                );
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A URL as it may be logged: without its password.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (auth, host),
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl PgStore {
    /// Connects, applies pending migrations, and makes sure the history
    /// has partitions for now and the next spans.
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<PgStore, StoreError> {
        let pool = pool(url, opts)?;
        {
            let mut client = pool.get().await.map_err(|e| pool_error(url, e))?;
            migrate(&mut client).await?;
        }
        let leader_pool = self::pool(
            url,
            &StoreOptions {
                pool_size: 1,
                ..opts.clone()
            },
        )?;
        let store = PgStore {
            pool,
            leader_pool,
            fence: Arc::default(),
            history_limit: opts.history_limit.max(1),
            history_interval_ms: opts.history_interval.as_millis() as i64,
            replica: opts.replica.clone(),
            partitions: partitions::Plan::new(opts.history_retention()),
            covered_until: AtomicI64::new(0),
        };
        store.maintain(vitals_proto::now_ms()).await?;
        Ok(store)
    }

    /// A connection of the pool (also for moving an installation in).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::from)
    }

    /// Creates the history partitions from `now_ms` to two spans ahead and
    /// drops those wholly past retention. Runs at open and whenever a
    /// commit reaches past the partitions made so far.
    pub async fn maintain(&self, now_ms: i64) -> Result<partitions::Maintained, StoreError> {
        let mut client = self.client().await?;
        let done = self.partitions.maintain(&mut client, now_ms).await?;
        self.covered_until
            .fetch_max(done.covered_until, Ordering::Relaxed);
        Ok(done)
    }

    /// How wide each history partition is.
    pub(crate) fn partition_span_ms(&self) -> i64 {
        self.partitions.span_ms
    }

    /// Makes the history partitions holding each of `times`.
    pub(crate) async fn cover_history(
        &self,
        times: impl IntoIterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        self.partitions.cover(&mut client, times).await.map(drop)
    }

    /// Makes sure every receive time up to `received_ms` has a partition.
    async fn cover(&self, received_ms: i64) -> Result<(), StoreError> {
        if received_ms < self.covered_until.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.maintain(received_ms).await.map(drop)
    }
}

/// Whether this replica may write as the leader: once it campaigns, only
/// under the term it raised when it took the lead.
#[derive(Debug, Default)]
struct Fence {
    campaigning: std::sync::atomic::AtomicBool,
    /// The leader term this replica holds; 0: it does not lead.
    term: AtomicI64,
}

impl PgStore {
    /// Refuses the leader's writes from a replica that does not lead. The
    /// term is read under a lock on its row (`FOR SHARE`, held to the
    /// commit), so a successor raising it waits for this transaction, and
    /// this transaction fails once a successor has raised it.
    async fn fenced(&self, c: &impl GenericClient) -> Result<(), StoreError> {
        if !self.fence.campaigning.load(Ordering::Acquire) {
            return Ok(());
        }
        let mine = self.fence.term.load(Ordering::Acquire);
        if mine == 0 {
            return Err(StoreError::NotLeader);
        }
        let current: i64 = c
            .query_one(
                "SELECT leader_term FROM ticket_cursor WHERE one = 1 FOR SHARE",
                &[],
            )
            .await?
            .try_get(0)?;
        if current == mine {
            Ok(())
        } else {
            Err(StoreError::NotLeader)
        }
    }
}

impl super::LeaderStore for PgStore {
    fn campaign(&self, stop: vitals_proto::shutdown::Shutdown) -> crate::leader::Leading {
        self.fence.campaigning.store(true, Ordering::Release);
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(campaign(
            self.leader_pool.clone(),
            self.fence.clone(),
            self.replica.clone(),
            tx,
            stop,
        ));
        crate::leader::Leading::new(rx)
    }
}

/// How one lock session ended.
enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Campaigns for the leader lock until `stop`: one session at a time,
/// trying for the lock every second, holding it (and checking the session
/// every second) once it has it. A stop releases it for a standby at once.
async fn campaign(
    pool: Pool,
    fence: Arc<Fence>,
    replica: String,
    tx: tokio::sync::watch::Sender<Option<bool>>,
    mut stop: vitals_proto::shutdown::Shutdown,
) {
    const EVERY: Duration = Duration::from_secs(1);
    loop {
        let conn = tokio::select! {
            c = pool.get() => c,
            () = stop.requested() => return,
        };
        let end = match conn {
            Err(e) => SessionEnd::Lost(e.to_string()),
            Ok(conn) => {
                let end = hold(&conn, &fence, &replica, &tx, &mut stop, EVERY).await;
                // Never hand a broken or lock-holding session back.
                drop(deadpool_postgres::Object::take(conn));
                end
            }
        };
        let led = fence.term.swap(0, Ordering::AcqRel) != 0;
        tx.send_replace(Some(false));
        match end {
            SessionEnd::Stopped => {
                if led {
                    tracing::info!("stopping: leadership released");
                }
                return;
            }
            SessionEnd::Lost(error) => {
                if led {
                    tracing::warn!(%error, "leadership lost: the lock's database session ended");
                } else {
                    tracing::debug!(%error, "leader campaign: no database session");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = stop.requested() => return,
        }
    }
}

async fn hold(
    conn: &deadpool_postgres::Object,
    fence: &Fence,
    replica: &str,
    tx: &tokio::sync::watch::Sender<Option<bool>>,
    stop: &mut vitals_proto::shutdown::Shutdown,
    every: Duration,
) -> SessionEnd {
    let lost = |e: tokio_postgres::Error| SessionEnd::Lost(describe(&e));
    match conn
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_REPLICA, &replica],
        )
        .await
    {
        Err(e) => return lost(e),
        Ok(r) if !r.get::<_, bool>(0) => tracing::warn!(
            replica,
            "another running replica has this replica's name: give each its own `replica`"
        ),
        Ok(_) => {}
    }
    loop {
        match conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_LEADER])
            .await
        {
            Err(e) => return lost(e),
            Ok(r) if r.get::<_, bool>(0) => break,
            Ok(_) => {
                tx.send_replace(Some(false));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.requested() => return SessionEnd::Stopped,
        }
    }
    // A new term: whatever a predecessor still had in flight commits
    // before this (or fails after it).
    let term: i64 = match conn
        .query_one(
            "UPDATE ticket_cursor SET leader_term = leader_term + 1 WHERE one = 1
             RETURNING leader_term",
            &[],
        )
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return lost(e),
    };
    fence.term.store(term, Ordering::Release);
    tx.send_replace(Some(true));
    tracing::info!(
        term,
        "this replica leads: it runs the ticket engine and the notification sender"
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {
                if let Err(e) = conn.execute("SELECT 1", &[]).await {
                    return lost(e);
                }
            }
            () = stop.requested() => {
                fence.term.store(0, Ordering::Release);
                tx.send_replace(Some(false));
                let _ = conn
                    .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_LEADER])
                    .await;
                return SessionEnd::Stopped;
            }
        }
    }
}

/// Where the database's schema stands, applying nothing: what
/// `check-config` reports.
pub async fn migration_status(
    url: &str,
    opts: &StoreOptions,
) -> Result<super::MigrationStatus, StoreError> {
    let pool = pool(url, opts)?;
    let client = pool.get().await.map_err(|e| pool_error(url, e))?;
    Ok(super::MigrationStatus {
        applied: applied_version(&client).await?,
        known: MIGRATIONS.last().map(|m| m.0).unwrap_or(0),
    })
}

async fn applied_version(c: &impl GenericClient) -> Result<u32, StoreError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = c
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])
        .await?
        .get(0);
    Ok(v.unwrap_or(0) as u32)
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    // Replicas starting together: one migrates, the others wait here and
    // then find nothing left to do.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_MIGRATE])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    INTEGER PRIMARY KEY,
                     name       TEXT NOT NULL,
                     applied_ms BIGINT NOT NULL
                 )",
            )
            .await?;
        let current = applied_version(&*client).await?;
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let failed = |source| StoreError::PgMigration {
                version: *version,
                source,
            };
            let tx = client.transaction().await.map_err(failed)?;
            tx.batch_execute(sql).await.map_err(failed)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
                &[&(*version as i32), name, &vitals_proto::now_ms()],
            )
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
        }
        Ok(())
    }
    .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_MIGRATE])
        .await;
    result?;
    unlocked?;
    Ok(())
}

fn pool_error(url: &str, e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::PgOpen {
        url: redact(url),
        what: match e {
            deadpool_postgres::PoolError::Backend(e) => describe(&e),
            other => other.to_string(),
        },
    }
}

/// A driver error with the server's message and detail when it has them.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s = format!("{s}: {inner}");
                source = inner.source();
            }
            s
        }
    }
}

/// Whether running the same transaction again may succeed: a deadlock or
/// serialization failure between replicas.
pub(crate) fn retryable(e: &StoreError) -> bool {
    let StoreError::Postgres(e) = e else {
        return false;
    };
    matches!(
        e.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// Whether an insert found no history partition for its receive time.
pub(crate) fn no_partition(e: &StoreError) -> bool {
    let StoreError::Postgres(e) = e else {
        return false;
    };
    e.code() == Some(&SqlState::CHECK_VIOLATION)
        && e.as_db_error()
            .is_some_and(|d| d.message().starts_with("no partition"))
}

/// Whether an `endpoints` row has a live session: marked online, and held
/// by a replica that is running (its [`LOCK_REPLICA`] lock is held; the
/// first key below is that constant). A replica that died could not mark
/// its sessions ended; this reads them as ended all the same.
macro_rules! live_session {
    () => {
        "(online AND (session_replica IS NULL OR hashtext(session_replica)::oid IN \
         (SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
          AND classid = 1447646273::oid \
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))))"
    };
}
pub(crate) use live_session;

const SUMMARY_COLUMNS: &str = concat!(
    "id, hostname, platform, os, ",
    live_session!(),
    " AS online, first_seen_ms, last_seen_ms, \
     agent_version, cpu_usage_percent, memory_used_percent, fullest_disk_percent, latest_snapshot_ms, \
     addresses, enrolled_site, enrolled_tags, machine_id, clone_machine_id, revoked_ms, revoke_reason"
);
const SUMMARY_LEN: usize = 19;

fn summary_from_row(r: &Row) -> Result<EndpointSummary, StoreError> {
    Ok(EndpointSummary {
        endpoint_id: r.try_get(0)?,
        hostname: r.try_get(1)?,
        platform: r.try_get(2)?,
        os: r.try_get(3)?,
        online: r.try_get(4)?,
        first_seen_ms: r.try_get(5)?,
        last_seen_ms: r.try_get(6)?,
        agent_version: r.try_get(7)?,
        cpu_usage_percent: r.try_get::<_, f64>(8)? as f32,
        memory_used_percent: r.try_get::<_, f64>(9)? as f32,
        fullest_disk_percent: r.try_get::<_, f64>(10)? as f32,
        latest_snapshot_ms: r.try_get(11)?,
        addresses: serde_json::from_str(r.try_get(12)?).unwrap_or_default(),
        enrolled_site: r.try_get(13)?,
        enrolled_tags: serde_json::from_str(r.try_get(14)?).unwrap_or_default(),
        machine_id: r.try_get(15)?,
        clone_machine_id: r.try_get(16)?,
        revoked_ms: r.try_get(17)?,
        revoke_reason: r.try_get(18)?,
    })
}

fn parse_snapshot(endpoint: &str, seq: u64, body: &[u8]) -> Result<Snapshot, StoreError> {
    <vitals_proto::wire::Snapshot as prost::Message>::decode(body)
        .map(Snapshot::from)
        .map_err(|e| StoreError::Corrupt {
            endpoint: endpoint.to_owned(),
            seq,
            what: e.to_string(),
        })
}

use super::{json_text as body_json, parse_body};

/// The fault event columns, in the order [`fault_from_row`] reads them.
const FAULT_COLUMNS: &str =
    "seq, received_ms, at_ms, check_id, state, severity, subject, value, evidence, via";

fn fault_from_row(endpoint: &str, r: &Row) -> Result<FaultRecord, StoreError> {
    super::FaultRow {
        seq: r.try_get::<_, i64>(0)? as u64,
        received_ms: r.try_get(1)?,
        at_ms: r.try_get(2)?,
        check_id: r.try_get(3)?,
        state: r.try_get(4)?,
        severity: r.try_get(5)?,
        subject: r.try_get(6)?,
        value: r.try_get(7)?,
        evidence: r.try_get(8)?,
        via: r.try_get(9)?,
    }
    .record(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_session_test_reads_the_replica_lock() {
        let key = format!("classid = {}::oid", LOCK_REPLICA);
        assert!(live_session!().contains(&key), "{}", live_session!());
    }
}
