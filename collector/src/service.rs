//! The specialist service layer: what a specialist may ask, with the role
//! check in one place. The gRPC edge and the web console call this;
//! neither talks to storage directly.

use std::sync::Arc;

use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};
use vitals_proto::identity::Role;
use vitals_proto::ticket_rules::Membership;

use tokio::sync::broadcast;
use vitals_proto::domain::Severity;
use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vitals_proto::diag::{
    AuditEntry, DEFAULT_DEADLINE, Diagnostic, DiagnosticResult, MAX_DEADLINE,
};

use crate::relay::{Event, Relay};
use crate::store::{AuditFilter, Store, StoreError, TicketFilter};
use crate::tickets::engine::Action;
use crate::tickets::kb::KnowledgeBase;
use crate::tickets::{DeskError, TicketDesk};

/// How long a desk the store has online may take to become reachable
/// (its session opened on another replica a moment ago).
const SESSION_SETTLES: Duration = Duration::from_secs(1);

/// How a ticket change reads in the audit log: its kind and what was
/// asked (long texts cut, the timeline keeps them whole).
fn action_audit(a: &Action) -> (&'static str, BTreeMap<String, String>) {
    let short = |t: &str| t.chars().take(200).collect::<String>();
    let (kind, param) = match a {
        Action::Assign(who) => ("ticket.assign", Some(("to", who.clone()))),
        Action::Comment(t) => ("ticket.comment", Some(("text", short(t)))),
        Action::Status(s) => ("ticket.status", Some(("status", s.as_str().to_owned()))),
        Action::Resolve(t) => ("ticket.resolve", Some(("notes", short(t)))),
        Action::Escalate => ("ticket.escalate", None),
        Action::Reopen(t) => ("ticket.reopen", Some(("reason", short(t)))),
    };
    (
        kind,
        param.map(|(k, v)| (k.to_owned(), v)).into_iter().collect(),
    )
}

/// The sites and tags `policy` puts an endpoint in, by its ID and stored
/// addresses.
fn membership(policy: &vitals_proto::policy::Policy, e: &EndpointSummary) -> Membership {
    let addresses: Vec<std::net::IpAddr> =
        e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    let mut m = policy.tickets.membership(&e.endpoint_id, &addresses);
    // What its enrollment token gave it, beside the policy's own.
    let add = |list: &mut Vec<String>, name: &String| {
        if !name.is_empty() && !list.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            list.push(name.clone());
        }
    };
    add(&mut m.sites, &e.enrolled_site);
    for t in &e.enrolled_tags {
        add(&mut m.tags, t);
    }
    m
}

/// Default and largest number of history entries per request.
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 1000;

/// A requested number of entries: 0 means the default; large asks are capped.
fn page_size(limit: u32) -> u32 {
    match limit {
        0 => HISTORY_DEFAULT,
        n => n.min(HISTORY_MAX),
    }
}

/// The specialist making a request, as their certificate or console
/// account says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The sites whose endpoints they may see; empty: all (certificates
    /// are not scoped).
    pub sites: Vec<String>,
}

impl Caller {
    /// A caller who sees every site.
    pub fn everywhere(name: impl Into<String>, role: Role) -> Self {
        Caller {
            name: name.into(),
            role,
            sites: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{caller} has role {has}; this needs {needs}")]
    Forbidden {
        caller: String,
        has: Role,
        needs: Role,
    },
    #[error("{0}")]
    NotFound(String),
    /// The endpoint is outside the caller's sites.
    #[error("{0}")]
    OutOfScope(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unavailable(String),
    /// The endpoint has no session, so nothing can be asked of it now.
    #[error("{0}")]
    Offline(String),
    #[error("no result within the deadline of {}", humantime::format_duration(*.0))]
    DeadlineExceeded(Duration),
    /// The endpoint went away mid-run, or the run failed on the agent.
    #[error("{0}")]
    Aborted(String),
    /// The caller has as many running as it may; not audited (a flood of
    /// these would bury the audit log), counted and logged instead.
    #[error("{0}")]
    Busy(String),
}

impl From<DeskError> for ServiceError {
    fn from(e: DeskError) -> Self {
        match e {
            DeskError::NoTicket(id) => ServiceError::NotFound(format!("no ticket {id}")),
            DeskError::Stopped | DeskError::NotLeader | DeskError::Leader(_) => {
                ServiceError::Unavailable(e.to_string())
            }
            DeskError::Store(s) => ServiceError::Store(s),
        }
    }
}

#[derive(Clone)]
pub struct SpecialistService {
    store: Arc<dyn Store>,
    desk: TicketDesk,
    kb: KnowledgeBase,
    relay: Arc<Relay>,
    /// The running policy: its `[[tickets.site]]` and `[[tickets.tag]]`
    /// place endpoints, for site scoping and the fleet's filters.
    policy: tokio::sync::watch::Receiver<Arc<vitals_proto::policy::Policy>>,
    /// Revocation and certificate renewal.
    enrollment: Arc<crate::enrollment::Enrollment>,
    /// Diagnostics in flight per specialist (by name).
    diag_slots: Arc<crate::limits::Slots<String>>,
}

/// A specialist's diagnostic request.
#[derive(Debug, Clone, Default)]
pub struct DiagRequest {
    pub endpoint: String,
    pub kind: String,
    pub params: BTreeMap<String, String>,
    /// Zero: the default.
    pub deadline: Duration,
    /// Zero: answer at once if the endpoint is offline.
    pub wait_offline: Duration,
    pub ticket: Option<u64>,
}

/// What a running diagnostic reports, in order; the last is a result or
/// an error.
#[derive(Debug, Clone, PartialEq)]
pub enum DiagEvent {
    Progress {
        text: String,
        elapsed_ms: u64,
    },
    Result {
        result: DiagnosticResult,
        elapsed_ms: u64,
    },
}

impl SpecialistService {
    pub fn new(
        store: Arc<dyn Store>,
        desk: TicketDesk,
        kb: KnowledgeBase,
        relay: Arc<Relay>,
        policy: tokio::sync::watch::Receiver<Arc<vitals_proto::policy::Policy>>,
        enrollment: Arc<crate::enrollment::Enrollment>,
    ) -> Self {
        SpecialistService {
            store,
            desk,
            kb,
            relay,
            policy,
            enrollment,
            diag_slots: crate::limits::Slots::new(
                crate::config::LimitsConfig::default().diagnostics_per_specialist,
            ),
        }
    }

    /// At most `n` diagnostics running at once per specialist.
    pub fn limit_diagnostics(mut self, n: usize) -> Self {
        self.diag_slots = crate::limits::Slots::new(n);
        self
    }

    /// Why a client certificate is refused now, if it is (revoked since
    /// its connection's handshake).
    pub fn certificate_refusal(
        &self,
        identity: &vitals_proto::identity::Identity,
        cert: &crate::pki::CertFacts,
    ) -> Option<String> {
        self.enrollment
            .revoked
            .refusal(identity, cert)
            .map(|why| format!("{why}: this certificate is no longer accepted"))
    }

    /// Revokes an endpoint (admin): its stream is cut, its certificates
    /// refused from the next handshake on; it must enroll again. Audited.
    pub async fn revoke_endpoint(
        &self,
        caller: &Caller,
        id: &str,
        reason: &str,
    ) -> Result<EndpointDetail, ServiceError> {
        Self::authorize(caller, Role::Admin)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "a reason is required (it is shown with the endpoint and in the audit log)".into(),
            ));
        }
        let detail = self.endpoint(caller, id).await?;
        let endpoint: vitals_proto::identity::EndpointId =
            id.parse()
                .map_err(|e: vitals_proto::identity::IdentityError| {
                    ServiceError::InvalidArgument(e.to_string())
                })?;
        let reason: String = reason.chars().take(500).collect();
        let params = BTreeMap::from([("reason".to_owned(), reason.clone())]);
        if detail.summary.revoked_ms > 0 {
            self.record(
                caller,
                "endpoint.revoke",
                id,
                params,
                None,
                "refused",
                "already revoked",
            )
            .await;
            return Err(ServiceError::InvalidArgument(format!(
                "{id} is already revoked; it must enroll again"
            )));
        }
        self.enrollment.revoke_endpoint(&endpoint, &reason).await?;
        self.record(caller, "endpoint.revoke", id, params, None, "ok", "")
            .await;
        self.endpoint(caller, id).await
    }

    /// Resolves a cloned-image flag (admin): the endpoint's identity is
    /// bound to `machine` from now on. Audited.
    pub async fn bind_endpoint(
        &self,
        caller: &Caller,
        id: &str,
        machine: &str,
    ) -> Result<EndpointDetail, ServiceError> {
        Self::authorize(caller, Role::Admin)?;
        let detail = self.endpoint(caller, id).await?;
        let machine = machine.trim();
        let known = [&detail.summary.machine_id, &detail.summary.clone_machine_id];
        if machine.is_empty() || !known.iter().any(|m| m.as_str() == machine) {
            return Err(ServiceError::InvalidArgument(format!(
                "machine must be one of the two seen: {} (bound) or {} (refused)",
                detail.summary.machine_id,
                if detail.summary.clone_machine_id.is_empty() {
                    "none"
                } else {
                    &detail.summary.clone_machine_id
                }
            )));
        }
        self.store.bind_machine(id, machine).await?;
        let params = BTreeMap::from([("machine".to_owned(), machine.to_owned())]);
        self.record(caller, "endpoint.bind", id, params, None, "ok", "")
            .await;
        self.endpoint(caller, id).await
    }

    /// A new certificate for the caller's own new key (any role): same
    /// name and role, the configured lifetime. Audited by enrollment.
    pub async fn renew_certificate(
        &self,
        identity: &vitals_proto::identity::Identity,
        current: &crate::pki::CertFacts,
        csr_pem: &str,
    ) -> Result<crate::enrollment::Issued, ServiceError> {
        self.enrollment
            .renew(identity, current, csr_pem)
            .await
            .map_err(|e| match e {
                crate::enrollment::EnrollError::Store(s) => ServiceError::Store(s),
                other => ServiceError::InvalidArgument(other.to_string()),
            })
    }

    /// The sites and tags an endpoint is in, by the running policy.
    pub fn membership(&self, e: &EndpointSummary) -> Membership {
        membership(&self.policy.borrow(), e)
    }

    /// Whether `caller` may see an endpoint in these sites.
    fn sees(caller: &Caller, m: &Membership) -> bool {
        caller.sites.is_empty() || m.sites.iter().any(|s| caller.sites.contains(s))
    }

    /// The endpoints `caller` may see, each with its sites and tags.
    pub async fn fleet(
        &self,
        caller: &Caller,
        online_only: bool,
    ) -> Result<Vec<(EndpointSummary, Membership)>, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        let list = self.store.list_endpoints(online_only).await?;
        let policy = self.policy.borrow().clone();
        Ok(list
            .into_iter()
            .map(|e| {
                let m = membership(&policy, &e);
                (e, m)
            })
            .filter(|(_, m)| Self::sees(caller, m))
            .collect())
    }

    /// The IDs of the endpoints a site-scoped caller may see; `None` for a
    /// caller who sees all.
    async fn scope(
        &self,
        caller: &Caller,
    ) -> Result<Option<std::collections::HashSet<String>>, ServiceError> {
        if caller.sites.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.fleet(caller, false)
                .await?
                .into_iter()
                .map(|(e, _)| e.endpoint_id)
                .collect(),
        ))
    }

    /// The one role check: whether `caller` may do what needs `needs`.
    pub fn authorize(caller: &Caller, needs: Role) -> Result<(), ServiceError> {
        if caller.role.allows(needs) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden {
                caller: caller.name.clone(),
                has: caller.role,
                needs,
            })
        }
    }

    pub async fn list_endpoints(
        &self,
        caller: &Caller,
        online_only: bool,
    ) -> Result<Vec<EndpointSummary>, ServiceError> {
        if caller.sites.is_empty() {
            Self::authorize(caller, Role::Viewer)?;
            return Ok(self.store.list_endpoints(online_only).await?);
        }
        Ok(self
            .fleet(caller, online_only)
            .await?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    pub async fn endpoint(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<EndpointDetail, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        if id.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "endpoint_id is required".into(),
            ));
        }
        let d = self
            .store
            .endpoint(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no endpoint \"{id}\"")))?;
        if !Self::sees(caller, &self.membership(&d.summary)) {
            return Err(ServiceError::OutOfScope(format!(
                "{id} is not in your sites ({})",
                caller.sites.join(", ")
            )));
        }
        Ok(d)
    }

    pub async fn history(
        &self,
        caller: &Caller,
        id: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, ServiceError> {
        // Checks the role and that the endpoint exists.
        self.endpoint(caller, id).await?;
        Ok(self.store.history(id, page_size(limit)).await?)
    }

    pub async fn faults(
        &self,
        caller: &Caller,
        id: &str,
        limit: u32,
    ) -> Result<Vec<FaultRecord>, ServiceError> {
        self.endpoint(caller, id).await?;
        Ok(self.store.faults(id, page_size(limit)).await?)
    }

    pub async fn tickets(
        &self,
        caller: &Caller,
        mut filter: TicketFilter,
    ) -> Result<Vec<Ticket>, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        let limit = page_size(filter.limit);
        let Some(seen) = self.scope(caller).await? else {
            filter.limit = limit;
            return Ok(self.store.tickets(filter).await?);
        };
        filter.limit = u32::MAX;
        let mut all = self.store.tickets(filter).await?;
        all.retain(|t| seen.contains(&t.endpoint));
        all.truncate(limit as usize);
        Ok(all)
    }

    pub async fn ticket(&self, caller: &Caller, id: u64) -> Result<TicketDetail, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        let mut d = self
            .store
            .ticket(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no ticket {id}")))?;
        if !caller.sites.is_empty() {
            // Its endpoint's scope is the ticket's.
            self.endpoint(caller, &d.ticket.endpoint).await?;
        }
        d.knowledge = self.kb.article(&d.ticket.check_id);
        Ok(d)
    }

    /// A specialist's change to a ticket; returns the ticket as it is now.
    pub async fn act(
        &self,
        caller: &Caller,
        id: u64,
        action: Action,
    ) -> Result<TicketDetail, ServiceError> {
        Self::authorize(caller, Role::Specialist)?;
        // Exists, and is within the caller's sites.
        let before = self.ticket(caller, id).await?.ticket;
        match &action {
            Action::Assign(who) if who.trim().is_empty() => {
                return Err(ServiceError::InvalidArgument("assign to whom?".into()));
            }
            Action::Comment(text) | Action::Resolve(text) if text.trim().is_empty() => {
                return Err(ServiceError::InvalidArgument(
                    "a comment or resolution needs text".into(),
                ));
            }
            Action::Reopen(_) if before.status.is_open() => {
                return Err(ServiceError::InvalidArgument(format!(
                    "ticket {id} is {}; only a resolved or closed ticket can be reopened",
                    before.status.as_str()
                )));
            }
            _ => {}
        }
        let (kind, params) = action_audit(&action);
        let done = self.desk.act(id, &caller.name, action).await;
        let (outcome, detail) = match &done {
            Ok(()) => ("ok", String::new()),
            Err(e) => ("failed", e.to_string()),
        };
        self.record(
            caller,
            kind,
            &before.endpoint,
            params,
            Some(id),
            outcome,
            &detail,
        )
        .await;
        done?;
        self.ticket(caller, id).await
    }

    /// Appends a line to the audit log for something a person did that is
    /// not a diagnostic (a ticket change, a sign-in, an account change).
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        caller: &Caller,
        kind: &str,
        endpoint: &str,
        params: BTreeMap<String, String>,
        ticket: Option<u64>,
        outcome: &str,
        detail: &str,
    ) {
        let entry = AuditEntry {
            at_ms: vitals_proto::now_ms(),
            who: caller.name.clone(),
            role: caller.role.as_str().to_owned(),
            endpoint_id: endpoint.to_owned(),
            kind: kind.to_owned(),
            params,
            ticket,
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
            ..Default::default()
        };
        if let Err(error) = self.store.audit_append(entry).await {
            tracing::error!(%error, "cannot write the audit log");
        }
    }

    /// Open tickets per priority and per endpoint, for the queue's and the
    /// fleet's counts.
    pub async fn open_ticket_counts(
        &self,
        caller: &Caller,
    ) -> Result<crate::store::OpenCounts, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        if caller.sites.is_empty() {
            return Ok(self.store.open_ticket_counts().await?);
        }
        let mut counts = crate::store::OpenCounts::default();
        let seen = self.scope(caller).await?.unwrap_or_default();
        let open = TicketFilter {
            open_only: true,
            limit: u32::MAX,
            ..Default::default()
        };
        for t in self.store.tickets(open).await? {
            if seen.contains(&t.endpoint) {
                *counts
                    .by_priority
                    .entry(t.priority.as_str().to_owned())
                    .or_default() += 1;
                *counts.by_endpoint.entry(t.endpoint).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// A ticket opened by hand against a known endpoint.
    pub async fn open_ticket(
        &self,
        caller: &Caller,
        endpoint: &str,
        title: &str,
        severity: Severity,
        description: &str,
    ) -> Result<TicketDetail, ServiceError> {
        Self::authorize(caller, Role::Specialist)?;
        if title.trim().is_empty() {
            return Err(ServiceError::InvalidArgument(
                "a ticket needs a title".into(),
            ));
        }
        self.endpoint(caller, endpoint).await?;
        let id = self
            .desk
            .open(endpoint, title, severity, description, &caller.name)
            .await?;
        self.ticket(caller, id).await
    }

    /// Every ticket change from now on.
    pub fn watch(&self, caller: &Caller) -> Result<broadcast::Receiver<Entry>, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        Ok(self.desk.watch())
    }

    /// Runs a diagnostic on a connected endpoint (role specialist). Every
    /// request, refused or not, ends up in the audit log. The events end
    /// with the result, or an error; dropping the receiver cancels the run
    /// on the agent.
    pub async fn run_diagnostic(
        &self,
        caller: &Caller,
        r: DiagRequest,
    ) -> Result<mpsc::Receiver<Result<DiagEvent, ServiceError>>, ServiceError> {
        let started = Instant::now();
        let Some(slot) = self.diag_slots.try_hold(&caller.name) else {
            return Err(ServiceError::Busy(format!(
                "{} has {} diagnostics running, the most at once; wait for one to end",
                caller.name,
                self.diag_slots.max()
            )));
        };
        let audit = AuditEntry {
            at_ms: vitals_proto::now_ms(),
            who: caller.name.clone(),
            role: caller.role.as_str().to_owned(),
            endpoint_id: r.endpoint.clone(),
            kind: r.kind.clone(),
            params: r.params.clone(),
            ticket: r.ticket,
            ..Default::default()
        };
        let deadline = if r.deadline.is_zero() {
            DEFAULT_DEADLINE
        } else {
            r.deadline
        };
        match self.start_diagnostic(caller, &r, deadline).await {
            Ok(running) => {
                let (tx, rx) = mpsc::channel(64);
                let this = self.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    this.follow(running, deadline, started, audit, tx).await
                });
                Ok(rx)
            }
            Err(e) => {
                let outcome = match &e {
                    ServiceError::Offline(_) => "offline",
                    _ => "refused",
                };
                self.audit_end(audit, outcome, &e.to_string(), started)
                    .await;
                Err(e)
            }
        }
    }

    async fn start_diagnostic(
        &self,
        caller: &Caller,
        r: &DiagRequest,
        deadline: Duration,
    ) -> Result<crate::relay::Running, ServiceError> {
        Self::authorize(caller, Role::Specialist)?;
        Diagnostic::parse(&r.kind, &r.params).map_err(ServiceError::InvalidArgument)?;
        if r.deadline > MAX_DEADLINE {
            return Err(ServiceError::InvalidArgument(format!(
                "deadline {} is over the most, {}",
                humantime::format_duration(r.deadline),
                humantime::format_duration(MAX_DEADLINE)
            )));
        }
        let endpoint = self.endpoint(caller, &r.endpoint).await?;
        if let Some(t) = r.ticket {
            self.ticket(caller, t).await?;
        }
        let bus = |e: crate::cluster::ClusterError| ServiceError::Unavailable(e.to_string());
        let mut online = self
            .relay
            .wait_online(&r.endpoint, r.wait_offline)
            .await
            .map_err(bus)?;
        // The store says a replica holds it: a session that opened a moment
        // ago may not be reachable from the other replicas yet.
        let settle = tokio::time::Instant::now() + SESSION_SETTLES;
        while !online && endpoint.summary.online && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
            online = self
                .relay
                .wait_online(&r.endpoint, Duration::ZERO)
                .await
                .map_err(bus)?;
        }
        if !online {
            let ms = endpoint.summary.last_seen_ms;
            let since = if ms > 0 {
                vitals_proto::rfc3339_seconds(ms)
            } else {
                "never".into()
            };
            return Err(ServiceError::Offline(format!(
                "{} is offline (last seen {since})",
                r.endpoint
            )));
        }
        self.relay
            .run(&r.endpoint, &r.kind, r.params.clone(), deadline)
            .await
            .map_err(bus)?
            .ok_or_else(|| ServiceError::Offline(format!("{} went offline", r.endpoint)))
    }

    /// Relays a run's events to its specialist until the result, the
    /// deadline, the endpoint going away, or the specialist leaving.
    async fn follow(
        self,
        mut running: crate::relay::Running,
        deadline: Duration,
        started: Instant,
        audit: AuditEntry,
        tx: mpsc::Sender<Result<DiagEvent, ServiceError>>,
    ) {
        let ms = || started.elapsed().as_millis() as u64;
        let end = tokio::time::Instant::now() + deadline;
        // The run's last word for the specialist goes out only after its
        // audit row is written: whoever sees the outcome finds it audited.
        let (outcome, detail, last) = loop {
            tokio::select! {
                () = tx.closed() => {
                    self.relay.cancel(running.id);
                    break ("cancelled", "the specialist went away".to_owned(), None);
                }
                () = tokio::time::sleep_until(end) => {
                    self.relay.cancel(running.id);
                    let timed_out = ServiceError::DeadlineExceeded(deadline);
                    let why = timed_out.to_string();
                    break ("timed_out", why, Some(Err(timed_out)));
                }
                e = running.next() => match e {
                    Some(Event::Progress(text)) => {
                        let _ = tx.try_send(Ok(DiagEvent::Progress { text, elapsed_ms: ms() }));
                    }
                    Some(Event::Result(result)) => {
                        let (outcome, detail) = if result.ok {
                            ("ok", format!("ran {} ms on the agent", result.run_ms))
                        } else {
                            ("failed", result.error.clone())
                        };
                        if let Some(t) = audit.ticket {
                            self.attach(&audit, t, &result, ms()).await;
                        }
                        let elapsed_ms = ms();
                        break (outcome, detail, Some(Ok(DiagEvent::Result { result, elapsed_ms })));
                    }
                    Some(Event::Lost(why)) => {
                        let lost = ServiceError::Unavailable(why.clone());
                        break ("disconnected", why, Some(Err(lost)));
                    }
                    Some(Event::Disconnected) | None => {
                        let why = format!(
                            "{} disconnected before the diagnostic finished",
                            audit.endpoint_id
                        );
                        let aborted = ServiceError::Aborted(why.clone());
                        break ("disconnected", why, Some(Err(aborted)));
                    }
                }
            }
        };
        self.audit_end(audit, outcome, &detail, started).await;
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    }

    async fn attach(&self, audit: &AuditEntry, ticket: u64, result: &DiagnosticResult, ms: u64) {
        let head = if result.ok {
            format!(
                "diagnostic {} on {} ({ms} ms):",
                audit.kind, audit.endpoint_id
            )
        } else {
            format!(
                "diagnostic {} on {} failed: {}",
                audit.kind, audit.endpoint_id, result.error
            )
        };
        let text = format!("{head}\n{}", result.text);
        if let Err(error) = self
            .desk
            .act(ticket, &audit.who, Action::Comment(text))
            .await
        {
            tracing::warn!(ticket, %error, "cannot attach a diagnostic to its ticket");
        }
    }

    async fn audit_end(&self, mut a: AuditEntry, outcome: &str, detail: &str, started: Instant) {
        a.outcome = outcome.to_owned();
        a.detail = detail.to_owned();
        a.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(error) = self.store.audit_append(a).await {
            tracing::error!(%error, "cannot write the audit log");
        }
    }

    /// The audit log, newest first (role viewer).
    pub async fn audit(
        &self,
        caller: &Caller,
        filter: AuditFilter,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        Self::authorize(caller, Role::Viewer)?;
        let Some(seen) = self.scope(caller).await? else {
            return Ok(self.store.audit(filter).await?);
        };
        // A site-scoped caller reads what was done to its endpoints, and
        // its own sign-ins and changes.
        let limit = page_size(filter.limit) as usize;
        let mut all = self
            .store
            .audit(AuditFilter {
                limit: u32::MAX,
                ..filter
            })
            .await?;
        all.retain(|e| seen.contains(&e.endpoint_id) || e.who == caller.name);
        all.truncate(limit);
        Ok(all)
    }
}
