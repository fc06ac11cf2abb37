//! Tickets: the help desk's queue, filled from fault events.
//!
//! `engine` holds the rules (dedup, auto-resolve, reopen, flapping, storms,
//! priority and SLA, maintenance) as a pure state machine. Persisting its
//! timeline, the `Specialist` API and notifications attach to it.

pub mod email;
pub mod engine;
pub mod forward;
pub mod kb;
pub mod notify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use vitals_proto::shutdown::Shutdown;

use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};
use vitals_proto::domain::{FaultEvent, FaultState, PrinterInfo, Severity, Snapshot};
use vitals_proto::policy::Policy;
use vitals_proto::tickets::{Entry, Kind};

use crate::config::{Email, Webhook};
use crate::store::{Evidence, Store, StoreError, StoredFault, TicketStep};
use engine::{Action, CheckInfo, Engine, Facts};

/// How often time-driven rules (quiet periods, SLAs) are looked at when no
/// fault event arrives.
const TICK: Duration = Duration::from_secs(1);
/// Fault events read per step.
const BATCH: u32 = 1000;
/// How long a new ticket waits for its endpoint's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
/// How long an endpoint's facts (addresses, resolvers, print servers) are
/// trusted before its latest snapshot is read again.
const FACTS_TTL: Duration = Duration::from_secs(300);
/// How often endpoints are looked over for the offline rule.
const OFFLINE_SCAN: Duration = Duration::from_secs(15);
/// How often tickets waiting for a snapshot look for it.
const EVIDENCE_POLL_MS: i64 = 500;
/// How often the clock's rules (quiet periods, SLAs) run at most.
const CLOCK_EVERY_MS: i64 = 250;
/// The fault the collector raises for an endpoint that stopped reporting.
pub const OFFLINE_CHECK: &str = "endpoint_offline";

/// A specialist's request to the engine (the single writer).
enum Command {
    Act {
        id: u64,
        who: String,
        action: Action,
        reply: oneshot::Sender<Result<(), DeskError>>,
    },
    Open {
        endpoint: String,
        title: String,
        severity: Severity,
        description: String,
        who: String,
        reply: oneshot::Sender<Result<u64, DeskError>>,
    },
    /// A fault the collector itself saw (a cloned image, a certificate
    /// about to expire), applied like an agent's.
    Raise {
        endpoint: String,
        event: FaultEvent,
        reply: oneshot::Sender<Result<(), DeskError>>,
    },
    /// Retention: up to `limit` closed tickets unchanged since
    /// `before_ms` leave the store and the engine's memory. Only the
    /// leader's own retention task asks, so a standby refuses it.
    Prune {
        before_ms: i64,
        limit: u32,
        reply: oneshot::Sender<Result<usize, DeskError>>,
    },
}

impl Command {
    /// Answers the request with an error, applying nothing.
    fn refuse(self, why: impl Fn() -> DeskError) {
        match self {
            Command::Act { reply, .. } | Command::Raise { reply, .. } => {
                let _ = reply.send(Err(why()));
            }
            Command::Open { reply, .. } => {
                let _ = reply.send(Err(why()));
            }
            Command::Prune { reply, .. } => {
                let _ = reply.send(Err(why()));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("no ticket {0}")]
    NoTicket(u64),
    #[error("the ticket engine is not running")]
    Stopped,
    #[error(
        "this collector replica does not run the ticket engine now (another replica leads); try again through another replica"
    )]
    NotLeader,
    /// The leading replica could not be asked, or it failed: why.
    #[error("the leading replica: {0}")]
    Leader(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The way in for specialists: actions go to the engine's task, which
/// persists them like any other step; every persisted entry is broadcast
/// for `watch`.
#[derive(Clone)]
pub struct TicketDesk {
    commands: mpsc::Sender<Command>,
    changes: broadcast::Sender<Entry>,
}

impl TicketDesk {
    pub async fn act(&self, id: u64, who: &str, action: Action) -> Result<(), DeskError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Act {
                id,
                who: who.to_owned(),
                action,
                reply,
            })
            .await
            .map_err(|_| DeskError::Stopped)?;
        rx.await.map_err(|_| DeskError::Stopped)?
    }

    pub async fn open(
        &self,
        endpoint: &str,
        title: &str,
        severity: Severity,
        description: &str,
        who: &str,
    ) -> Result<u64, DeskError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Open {
                endpoint: endpoint.to_owned(),
                title: title.to_owned(),
                severity,
                description: description.to_owned(),
                who: who.to_owned(),
                reply,
            })
            .await
            .map_err(|_| DeskError::Stopped)?;
        rx.await.map_err(|_| DeskError::Stopped)?
    }

    /// Applies a fault the collector itself saw, as if the endpoint had
    /// reported it: the usual ticket rules (one ticket per check and
    /// subject, priority, SLA, notifications) hold.
    pub async fn raise(&self, endpoint: &str, event: FaultEvent) -> Result<(), DeskError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Raise {
                endpoint: endpoint.to_owned(),
                event,
                reply,
            })
            .await
            .map_err(|_| DeskError::Stopped)?;
        rx.await.map_err(|_| DeskError::Stopped)?
    }

    /// Removes up to `limit` tickets resolved or closed and unchanged
    /// since `before_ms` (with their timelines and evidence) through the
    /// engine, so what it holds and what is stored stay one; how many.
    pub async fn prune(&self, before_ms: i64, limit: u32) -> Result<usize, DeskError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Prune {
                before_ms,
                limit,
                reply,
            })
            .await
            .map_err(|_| DeskError::Stopped)?;
        rx.await.map_err(|_| DeskError::Stopped)?
    }

    /// Every timeline entry from now on, as it is committed (by this
    /// replica's engine, or by the leading replica's, over the bus).
    pub fn watch(&self) -> broadcast::Receiver<Entry> {
        self.changes.subscribe()
    }

    /// An entry the leading replica committed, for this replica's watchers.
    fn relay(&self, e: Entry) {
        let _ = self.changes.send(e);
    }
}

/// The desk and its command queue, before the engine task starts.
pub fn desk() -> (TicketDesk, DeskQueue) {
    let (commands, rx) = mpsc::channel(64);
    let (changes, _) = broadcast::channel(1024);
    (
        TicketDesk {
            commands,
            changes: changes.clone(),
        },
        DeskQueue { rx, changes },
    )
}

/// The engine task's end of the desk.
pub struct DeskQueue {
    rx: mpsc::Receiver<Command>,
    changes: broadcast::Sender<Entry>,
}

/// What the engine knows of each check: the policy's checks and the
/// built-in faults.
fn checks(p: &Policy) -> HashMap<String, CheckInfo> {
    vitals_proto::policy::BUILTIN_CHECKS
        .iter()
        .map(|(id, title)| ((*id).to_owned(), CheckInfo::new(title, "")))
        .chain(p.checks.iter().map(|c| {
            let info = CheckInfo::new(&c.title, &c.measurement)
                .rung_of(c.problem())
                .by_via(!c.ticket_per.is_subject());
            (c.id.clone(), info)
        }))
        .collect()
}

/// What a snapshot says about where the endpoint sits, for storm
/// grouping and sites by subnet.
pub fn facts_of(s: &Snapshot) -> Facts {
    let addresses = s.networks();
    let print_servers = s
        .printers
        .iter()
        .filter_map(|p| {
            let host = if p.source == "spooler" {
                PrinterInfo::spooler_host(&p.address)
            } else {
                host_of(&p.address)
            };
            Some((p.name.clone(), host?))
        })
        .collect();
    Facts {
        addresses,
        resolvers: s.network.resolvers.clone(),
        print_servers,
        ..Default::default()
    }
}

/// The network host behind a printer address: a device URI's host
/// (`ipp://ps01:631/printers/x`, `socket://10.0.0.9`) or a bare
/// `host[:port]`. None for local devices (USB, files).
pub fn host_of(address: &str) -> Option<String> {
    let rest = match address.split_once("://") {
        Some((scheme, rest)) => {
            let networked = ["ipp", "ipps", "http", "https", "socket", "lpd", "smb"];
            if !networked.contains(&scheme.to_ascii_lowercase().as_str()) {
                return None;
            }
            rest
        }
        None => address,
    };
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty() && host != "localhost").then(|| host.to_ascii_lowercase())
}

use crate::store::AwaitingEvidence as Awaiting;

struct Worker {
    store: Arc<dyn Store>,
    engine: Engine,
    cursor: i64,
    changes: broadcast::Sender<Entry>,
    /// Tickets waiting for their endpoint's snapshot at fault time (kept in
    /// the store too, so a restart goes on waiting).
    awaiting: Vec<Awaiting>,
    /// Changes to that list not saved yet: started waiting, done waiting.
    awaiting_added: Vec<Awaiting>,
    awaiting_done: Vec<u64>,
    /// Fault events applied since this worker started.
    processed: u64,
    webhooks: Vec<Webhook>,
    email: Option<Email>,
    /// Woken when posts are queued.
    outbox: Arc<Notify>,
    /// The other replicas, told of every committed entry for their
    /// watchers.
    bus: Option<crate::cluster::Cluster>,
    /// When each endpoint's facts were last read from its snapshot.
    facts_read: HashMap<String, i64>,
    /// When this worker started: no endpoint counts as offline for longer
    /// than the collector has been watching.
    started_ms: i64,
    /// When the offline rule was last applied.
    offline_scanned_ms: i64,
    /// When tickets waiting for a snapshot last looked for it.
    evidence_checked_ms: i64,
    /// When the clock's rules last ran.
    ticked_ms: i64,
}

impl Worker {
    async fn persist(&mut self, entries: Vec<Entry>, now: i64) -> Result<(), StoreError> {
        let (tickets, incidents) = self.engine.changed(&entries);
        let snapshots = self.collect_snapshots(now).await?;
        let mut deliveries = Vec::new();
        for e in &entries {
            let event = e.kind.as_str().to_owned();
            let ticket = e.ticket.and_then(|id| self.engine.ticket(id));
            let mut targets: Vec<&str> = self
                .webhooks
                .iter()
                .filter(|w| notify::wants(w, &event))
                .map(|w| w.name.as_str())
                .collect();
            if let Some(mail) = &self.email
                && email::wants(mail, &event, ticket.map(|t| t.priority))
            {
                targets.push(email::TARGET);
            }
            if targets.is_empty() {
                continue;
            }
            let body = notify::payload(e, ticket);
            for t in targets {
                deliveries.push(crate::store::NewDelivery {
                    webhook: t.to_owned(),
                    event: event.clone(),
                    body: body.clone(),
                });
            }
        }
        let queued = !deliveries.is_empty();
        self.store
            .save_tickets(TicketStep {
                tickets,
                incidents,
                entries: entries.clone(),
                snapshots,
                deliveries,
                awaiting_added: std::mem::take(&mut self.awaiting_added),
                awaiting_done: std::mem::take(&mut self.awaiting_done),
                cursor: self.cursor,
                now_ms: now,
            })
            .await?;
        if queued {
            self.outbox.notify_one();
        }
        if let Some(bus) = &self.bus {
            forward::share_changes(bus, &entries).await;
        }
        for e in entries {
            // Nobody watching is fine.
            let _ = self.changes.send(e);
        }
        Ok(())
    }

    fn wait_for_evidence(&mut self, a: Awaiting) {
        self.awaiting_added.push(a.clone());
        self.awaiting.push(a);
    }

    /// Snapshots for tickets waiting for one: the endpoint's first taken
    /// at or after the fault, which shows it (an agent sends a fault before
    /// the snapshot of that sample). A ticket waits at most
    /// `SNAPSHOT_WAIT`, then takes what there is.
    async fn collect_snapshots(&mut self, now: i64) -> Result<Vec<Evidence>, StoreError> {
        // A busy fleet can have thousands of tickets waiting for their
        // next snapshot; looking for them on every step would make each
        // step cost the size of that queue.
        if self.awaiting.is_empty() || now - self.evidence_checked_ms < EVIDENCE_POLL_MS {
            return Ok(Vec::new());
        }
        self.evidence_checked_ms = now;
        let mut ids: Vec<String> = self.awaiting.iter().map(|a| a.endpoint.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        // One cheap read for all of them: when each latest snapshot was
        // taken. Only the endpoints that have what a ticket waits for are
        // read in full, once each.
        let taken = self.store.snapshot_times(ids).await?;
        let mut found = Vec::new();
        let mut still = Vec::new();
        let mut read: HashMap<String, Option<Snapshot>> = HashMap::new();
        for a in std::mem::take(&mut self.awaiting) {
            let waited = now - a.since_ms >= SNAPSHOT_WAIT.as_millis() as i64;
            let ready = taken.get(&a.endpoint).is_some_and(|t| *t >= a.fault_at_ms);
            if !ready && !waited {
                still.push(a);
                continue;
            }
            let latest = match read.get(&a.endpoint) {
                Some(s) => s.clone(),
                None => {
                    let s = if taken.contains_key(&a.endpoint) {
                        self.store
                            .endpoint(&a.endpoint)
                            .await?
                            .and_then(|d| d.latest)
                    } else {
                        None
                    };
                    read.insert(a.endpoint.clone(), s.clone());
                    s
                }
            };
            self.awaiting_done.push(a.ticket);
            if let Some(snapshot) = latest {
                found.push(Evidence {
                    ticket: a.ticket,
                    snapshot,
                });
            }
        }
        self.awaiting = still;
        Ok(found)
    }

    /// Reads `endpoint`'s facts from its latest snapshot, at most once per
    /// [`FACTS_TTL`].
    async fn refresh_facts(&mut self, endpoint: &str, now: i64) -> Result<(), StoreError> {
        let fresh = self
            .facts_read
            .get(endpoint)
            .is_some_and(|at| now - at < FACTS_TTL.as_millis() as i64);
        if fresh {
            return Ok(());
        }
        let Some(d) = self.store.endpoint(endpoint).await? else {
            return Ok(());
        };
        let mut facts = d.latest.as_ref().map(facts_of).unwrap_or_default();
        facts.enrolled_site = d.summary.enrolled_site.clone();
        facts.enrolled_tags = d.summary.enrolled_tags.clone();
        self.engine.set_facts(endpoint, facts);
        // No snapshot yet (a fault ahead of the first one): ask again next time.
        if d.latest.is_some() {
            self.facts_read.insert(endpoint.to_owned(), now);
        }
        Ok(())
    }

    /// Fault events past the cursor and the clock; true if a full batch
    /// was read (more are waiting).
    async fn step(&mut self) -> Result<bool, StoreError> {
        let now = vitals_proto::now_ms();
        let events = self.store.fault_events_after(self.cursor, BATCH).await?;
        let full = events.len() == BATCH as usize;
        let before = self.cursor;
        if self.engine.needs_facts() {
            for f in &events {
                if f.event.state == FaultState::Raised {
                    self.refresh_facts(&f.endpoint, now).await?;
                }
            }
        }
        let mut entries = Vec::new();
        for StoredFault {
            id,
            endpoint,
            event,
        } in events
        {
            let out = self.engine.on_fault(&endpoint, &event, now);
            // The evidence: a ticket opened or reopened on a fault gets
            // the snapshot showing it.
            for e in &out {
                if let (Some(ticket), Kind::Opened | Kind::Reopened) = (e.ticket, &e.kind) {
                    self.wait_for_evidence(Awaiting {
                        ticket,
                        endpoint: endpoint.clone(),
                        fault_at_ms: event.at_ms,
                        since_ms: now,
                    });
                }
            }
            entries.extend(out);
            self.cursor = id;
            self.processed += 1;
        }
        entries.extend(self.offline(now).await?);
        // The clock's rules walk every open ticket; a busy step rate need
        // not walk them more often than a few times a second.
        let clock_due = now - self.ticked_ms >= CLOCK_EVERY_MS;
        if clock_due {
            self.ticked_ms = now;
            entries.extend(self.engine.tick(now));
        }
        if !entries.is_empty() || self.cursor != before {
            self.persist(entries, now).await?;
        } else if !self.awaiting.is_empty() {
            let snapshots = self.collect_snapshots(now).await?;
            if !snapshots.is_empty() || !self.awaiting_done.is_empty() {
                self.store
                    .save_tickets(TicketStep {
                        snapshots,
                        awaiting_added: std::mem::take(&mut self.awaiting_added),
                        awaiting_done: std::mem::take(&mut self.awaiting_done),
                        cursor: self.cursor,
                        now_ms: now,
                        ..Default::default()
                    })
                    .await?;
            }
        }
        if clock_due {
            self.engine.prune(now);
        }
        Ok(full)
    }

    /// The offline rule: raises `endpoint_offline` for endpoints critical
    /// enough that have had no session for the rule's time (counted from
    /// the later of their last contact and this collector's start), and
    /// clears it when they are back.
    async fn offline(&mut self, now: i64) -> Result<Vec<Entry>, StoreError> {
        let rule = self.engine.rules().offline.clone();
        let every = OFFLINE_SCAN.min(rule.after / 2);
        if now - self.offline_scanned_ms < every.as_millis() as i64 {
            return Ok(Vec::new());
        }
        self.offline_scanned_ms = now;
        let mut entries = Vec::new();
        for e in self.store.presence().await? {
            let id = &e.endpoint_id;
            let raised = self.engine.is_raised(id, OFFLINE_CHECK, "");
            let silent_ms = now - e.last_seen_ms.max(self.started_ms);
            let due = rule.enabled && !e.online && silent_ms >= rule.after.as_millis() as i64;
            if due && !raised {
                if self.engine.needs_facts() {
                    self.refresh_facts(id, now).await?;
                }
                let member = self.engine.membership(id);
                if self.engine.rules().criticality_of(&member) < rule.criticality {
                    continue;
                }
                let since = vitals_proto::rfc3339_seconds(e.last_seen_ms);
                let event = vitals_proto::domain::FaultEvent {
                    check_id: OFFLINE_CHECK.into(),
                    subject: String::new(),
                    state: FaultState::Raised,
                    severity: vitals_proto::domain::Severity::Critical,
                    value: (silent_ms / 60_000) as f64,
                    evidence: format!(
                        "no contact from the agent since {since} ({} min)",
                        silent_ms / 60_000
                    ),
                    at_ms: now,
                    via: String::new(),
                };
                let out = self.engine.on_fault(id, &event, now);
                for o in &out {
                    if let (Some(ticket), Kind::Opened | Kind::Reopened) = (o.ticket, &o.kind) {
                        // The last snapshot before it went quiet.
                        self.wait_for_evidence(Awaiting {
                            ticket,
                            endpoint: id.clone(),
                            fault_at_ms: 0,
                            since_ms: now,
                        });
                    }
                }
                entries.extend(out);
            } else if raised && e.online {
                let event = vitals_proto::domain::FaultEvent {
                    check_id: OFFLINE_CHECK.into(),
                    subject: String::new(),
                    state: FaultState::Cleared,
                    severity: vitals_proto::domain::Severity::Critical,
                    value: 0.0,
                    evidence: "the agent is connected again".into(),
                    at_ms: now,
                    via: String::new(),
                };
                entries.extend(self.engine.on_fault(id, &event, now));
            }
        }
        Ok(entries)
    }

    async fn command(&mut self, c: Command) -> Result<(), StoreError> {
        let now = vitals_proto::now_ms();
        match c {
            Command::Act {
                id,
                who,
                action,
                reply,
            } => match self.engine.act(id, &who, action, now) {
                Some(entries) => {
                    let done = self.persist(entries, now).await.map_err(Arc::new);
                    let _ = reply.send(done.clone().map_err(|e| StoreError::Shared(e).into()));
                    done.map_err(StoreError::Shared)
                }
                None => {
                    let _ = reply.send(Err(DeskError::NoTicket(id)));
                    Ok(())
                }
            },
            Command::Open {
                endpoint,
                title,
                severity,
                description,
                who,
                reply,
            } => {
                let (id, entries) =
                    self.engine
                        .open_by_hand(&endpoint, &title, severity, &description, &who, now);
                let done = self.persist(entries, now).await.map_err(Arc::new);
                let answer = match &done {
                    Ok(()) => Ok(id),
                    Err(e) => Err(StoreError::Shared(e.clone()).into()),
                };
                let _ = reply.send(answer);
                done.map_err(StoreError::Shared)
            }
            Command::Raise {
                endpoint,
                event,
                reply,
            } => {
                let entries = self.engine.on_fault(&endpoint, &event, now);
                let done = self.persist(entries, now).await.map_err(Arc::new);
                let _ = reply.send(done.clone().map_err(|e| StoreError::Shared(e).into()));
                done.map_err(StoreError::Shared)
            }
            Command::Prune {
                before_ms,
                limit,
                reply,
            } => {
                let done = self
                    .store
                    .prune_tickets(before_ms, limit)
                    .await
                    .map_err(Arc::new);
                if let Ok(ids) = &done {
                    self.engine.forget(ids);
                }
                let _ = reply.send(match &done {
                    Ok(ids) => Ok(ids.len()),
                    Err(e) => Err(StoreError::Shared(e.clone()).into()),
                });
                done.map(drop).map_err(StoreError::Shared)
            }
        }
    }
}

impl Worker {
    /// A worker resuming from the stored state at its cursor, under
    /// `policy`, sending committed entries to `changes` and notifications
    /// to `out`.
    async fn resume(
        store: Arc<dyn Store>,
        policy: &Policy,
        changes: broadcast::Sender<Entry>,
        out: &Outbound,
    ) -> Result<Worker, StoreError> {
        let state = store.ticket_state().await?;
        info!(
            tickets = state.tickets.len(),
            cursor = state.cursor,
            awaiting_evidence = state.awaiting.len(),
            "ticket engine starting"
        );
        let engine = Engine::restore(
            policy.tickets.clone(),
            checks(policy),
            state.tickets,
            state.incidents,
            state.max_ticket,
            state.max_incident,
        );
        Ok(Worker {
            store,
            engine,
            cursor: state.cursor,
            changes,
            awaiting: state.awaiting,
            awaiting_added: Vec::new(),
            awaiting_done: Vec::new(),
            processed: 0,
            webhooks: out.webhooks.clone(),
            email: out.email.clone(),
            outbox: out.wake.clone(),
            bus: out.bus.clone(),
            facts_read: HashMap::new(),
            started_ms: vitals_proto::now_ms(),
            offline_scanned_ms: 0,
            evidence_checked_ms: 0,
            ticked_ms: 0,
        })
    }
}

/// Works through every fault event already committed past the cursor, as
/// the engine does after a restart, and returns how many it took. For
/// benchmarks and tools; the running collector uses [`supervise`].
pub async fn process_backlog(store: Arc<dyn Store>, policy: &Policy) -> Result<u64, StoreError> {
    let (changes, _) = broadcast::channel(16);
    let mut w = Worker::resume(store, policy, changes, &Outbound::default()).await?;
    while w.step().await? {}
    Ok(w.processed)
}

/// Runs the ticket engine until shutdown is requested: reads fault events past
/// its cursor whenever ingest commits some (`wake`) and at least every
/// second, takes specialists' commands, and persists each step with the
/// cursor in one transaction.
async fn run(
    store: Arc<dyn Store>,
    policy: &mut watch::Receiver<Arc<Policy>>,
    wake: &Notify,
    queue: &mut DeskQueue,
    out: &Outbound,
    stop: &mut Shutdown,
    first: Option<Command>,
) -> Result<(), StoreError> {
    let current = policy.borrow_and_update().clone();
    let mut w = Worker::resume(store, &current, queue.changes.clone(), out).await?;
    if let Some(c) = first {
        w.command(c).await?;
    }
    loop {
        if policy.has_changed().unwrap_or(false) {
            let p = policy.borrow_and_update().clone();
            w.engine.set_rules(p.tickets.clone());
            w.engine.set_checks(checks(&p));
        }
        if w.step().await? {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
            Some(c) = queue.rx.recv() => w.command(c).await?,
            () = stop.requested() => return Ok(()),
        }
    }
}

/// Where the engine's notifications go: the configured webhooks and
/// e-mail, and the delivery task to wake when posts are queued.
#[derive(Clone, Default)]
pub struct Outbound {
    pub webhooks: Vec<Webhook>,
    pub email: Option<Email>,
    pub wake: Arc<Notify>,
    /// Replicas on one database: committed entries go to the others'
    /// watchers too.
    pub bus: Option<crate::cluster::Cluster>,
}

/// Whether this replica leads, and where requests go while it does not
/// (the leader, over the bus; without one they are refused).
pub struct Lead {
    pub leading: crate::leader::Leading,
    pub to_leader: Option<crate::cluster::Cluster>,
}

/// Runs the engine, restarting it from the stored state after a storage
/// error (a full disk, a locked file) instead of giving up on tickets.
pub async fn supervise(
    store: Arc<dyn Store>,
    mut policy: watch::Receiver<Arc<Policy>>,
    wake: Arc<Notify>,
    mut queue: DeskQueue,
    out: Outbound,
    mut stop: Shutdown,
    lead: Lead,
) {
    let Lead {
        mut leading,
        to_leader,
    } = lead;
    let mut queued = None;
    loop {
        // Another replica runs the engine: specialists' requests here go
        // to it over the bus (or, without one, are refused, applying
        // nothing) until this one leads.
        if !leading.now() {
            let mut decided = leading.clone();
            tokio::select! {
                // Taking the lead wins over a request waiting beside it.
                biased;
                () = leading.until(true) => {}
                // Requests wait for the first try for the lead.
                Some(c) = async {
                    decided.decided().await;
                    queue.rx.recv().await
                } => {
                    if leading.now() {
                        // The lead came with the request: it is applied by
                        // the engine, not refused.
                        queued = Some(c);
                    } else if let Some(cluster) = &to_leader {
                        forward::to_leader(cluster.clone(), c);
                    } else {
                        c.refuse(|| DeskError::NotLeader);
                    }
                }
                () = stop.requested() => return,
            }
            continue;
        }
        let ran = tokio::select! {
            r = run(
                store.clone(),
                &mut policy,
                &wake,
                &mut queue,
                &out,
                &mut stop,
                queued.take(),
            ) => Some(r),
            // Dropping the engine mid-step rolls its transaction back: the
            // next leader resumes from the stored state.
            () = leading.until(false) => None,
        };
        match ran {
            Some(Ok(())) => return,
            Some(Err(StoreError::NotLeader)) | None => {
                info!("this replica no longer leads: its ticket engine stops");
            }
            Some(Err(error)) => {
                warn!(%error, "ticket engine stopped; restarting from the stored state");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_proto::domain::{InterfaceInfo, PrinterInfo};

    #[test]
    fn windows_printers_group_by_their_print_server_not_their_port() {
        let printer = |name: &str, address: &str| PrinterInfo {
            name: name.into(),
            source: "spooler".into(),
            address: address.into(),
            ..Default::default()
        };
        let s = Snapshot {
            printers: vec![
                printer("Hall A", "\\\\PS01\\IP_10.20.5.31"),
                printer("Desk", "IP_10.20.5.40"),
                printer("Label", "USB001"),
                printer("Old", "LPT1:"),
            ],
            ..Default::default()
        };
        let f = facts_of(&s);
        assert_eq!(
            f.print_servers.get("Hall A").map(String::as_str),
            Some("ps01")
        );
        assert_eq!(
            f.print_servers.get("Desk").map(String::as_str),
            Some("10.20.5.40")
        );
        assert_eq!(
            f.print_servers.get("Label"),
            None,
            "a USB port is no print server"
        );
        assert_eq!(f.print_servers.get("Old"), None);
    }

    #[test]
    fn print_server_hosts_from_device_uris_and_addresses() {
        for (address, host) in [
            (
                "ipp://PS01.city.example:631/printers/hall-a",
                Some("ps01.city.example"),
            ),
            ("ipps://ps02/ipp/print", Some("ps02")),
            ("socket://10.1.2.3:9100", Some("10.1.2.3")),
            ("lpd://user@10.1.2.4/queue", Some("10.1.2.4")),
            ("ipp://[fd00::9]:631/ipp", Some("fd00::9")),
            ("10.1.2.5:161", Some("10.1.2.5")),
            ("10.1.2.6", Some("10.1.2.6")),
            ("usb://HP/LaserJet?serial=1", None),
            ("ipp://localhost:631/printers/pdf", None),
            ("", None),
        ] {
            assert_eq!(host_of(address).as_deref(), host, "{address}");
        }
    }

    #[test]
    fn facts_from_a_snapshot() {
        let mut s = Snapshot::default();
        s.interfaces.push(InterfaceInfo {
            name: "eth0".into(),
            addresses: vec!["10.4.7.10/24".into(), "fe80::1/64".into()],
            ..Default::default()
        });
        s.interfaces.push(InterfaceInfo {
            name: "lo".into(),
            addresses: vec!["127.0.0.1/8".into()],
            ..Default::default()
        });
        s.printers.push(PrinterInfo {
            name: "hall-a".into(),
            address: "ipp://ps01:631/printers/hall-a".into(),
            ..Default::default()
        });
        s.printers.push(PrinterInfo {
            name: "desk-usb".into(),
            address: "usb://HP/x".into(),
            ..Default::default()
        });
        s.network.resolvers = vec!["10.0.0.53".into()];
        let f = facts_of(&s);
        let nets: Vec<String> = f.addresses.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, vec!["10.4.7.10/24", "fe80::1/64"]);
        assert_eq!(f.resolvers, vec!["10.0.0.53"]);
        assert_eq!(
            f.print_servers,
            HashMap::from([("hall-a".to_owned(), "ps01".to_owned())])
        );
    }
}
