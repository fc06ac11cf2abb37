//! The ticket engine: fault events in, tickets and their timelines out.
//!
//! Pure and single-writer: it holds the open tickets in memory, takes fault
//! events and the clock, and returns every change as a timeline entry for
//! the store to persist (and for the notification outbox to send). Nothing
//! here does I/O, so every rule is tested on events and a clock alone
//! (`tests.rs`: each test feeds events and clock steps and checks the
//! tickets, incidents and timeline entries that come out). Storm grouping
//! is `storm.rs`.
//!
//! Rules (from `policy.toml`'s `[tickets]`):
//! - one open ticket per (endpoint, problem, subject); a re-raised fault
//!   updates it (count, last seen, latest value and evidence). The rungs
//!   of one ladder are one problem. A check with `ticket_per = "via"` has
//!   one ticket per way in instead (`members.rs`): the DNS names asked of
//!   one resolver fail for one cause, and the ticket lists them;
//! - a cleared fault resolves its ticket after the quiet period; a fault
//!   back within the reopen window reopens that ticket;
//! - `flap_cycles` raises within `flap_window` mark a ticket flapping: it
//!   then stays open until the fault has been clear for a whole window;
//! - `storm_endpoints` endpoints raising one check within `storm_window`
//!   open a parent incident linking their tickets; it resolves with them.
//!   `[[tickets.storm]]` rules group by what endpoints share as well (a
//!   site, a subnet, a print server, a DNS server), tried first;
//! - priority is severity against the endpoint's criticality; a ticket past
//!   its response or resolve SLA escalates one tier, once per breach;
//! - a maintenance window suppresses new tickets for the endpoints it
//!   covers, and says so.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;
use vitals_proto::domain::{FaultEvent, FaultState};
use vitals_proto::ticket_rules::{Membership, Priority, TicketRules};
use vitals_proto::tickets::{Entry, Incident, Kind, Status, Ticket};

mod members;
mod storm;
mod symptoms;
#[cfg(test)]
mod tests;

use storm::Raise;
pub use storm::{BadGroupKey, GroupKey};

/// Who the engine acts as in timelines.
pub const SYSTEM: &str = "vitals";

/// What a fault ticket is for: one open ticket per key at a time. The
/// problem is the check's ladder (see [`CheckInfo::problem`]): the rungs
/// of one ladder on one subject are one ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    endpoint: String,
    problem: String,
    subject: String,
}

impl Key {
    fn new(endpoint: &str, problem: &str, subject: &str) -> Self {
        Key {
            endpoint: endpoint.to_owned(),
            problem: problem.to_owned(),
            subject: subject.to_owned(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Engine {
    rules: TicketRules,
    tickets: BTreeMap<u64, Ticket>,
    /// The newest ticket per (endpoint, check, subject), open or not.
    latest: HashMap<Key, u64>,
    incidents: BTreeMap<u64, Incident>,
    /// Recent raises per storm group.
    recent: HashMap<GroupKey, VecDeque<Raise>>,
    /// The open incident of each storm group.
    open_incidents: HashMap<GroupKey, u64>,
    next_ticket: u64,
    next_incident: u64,
    /// Check id to (title, measurement), from the policy.
    checks: HashMap<String, CheckInfo>,
    /// What the collector knows of each endpoint from its snapshots.
    facts: HashMap<String, Facts>,
    /// Every ticket of each endpoint, for the rules that look across a
    /// desk's tickets (symptoms and their causes).
    by_endpoint: HashMap<String, BTreeSet<u64>>,
    /// Faults raised now as symptoms of another ticket, by (endpoint,
    /// check, subject): they have no ticket of their own.
    symptoms: HashMap<Key, symptoms::Symptom>,
    /// The dependency rules in force (the policy's, or the shipped ones).
    depends: Vec<vitals_proto::ticket_rules::Dependency>,
}

/// What the engine knows of a check from the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckInfo {
    /// The title its tickets get; empty: made from the check id.
    pub title: String,
    /// The measurement it judges (printer and DNS checks group by it);
    /// empty for the faults the system raises itself.
    pub measurement: String,
    /// The problem it is a rung of: checks with the same problem on one
    /// subject share one ticket (`gateway_lossy` and `gateway_unreachable`
    /// on one gateway). Empty: the check is a problem of its own.
    pub problem: String,
    /// One ticket covers every subject reached the same way (the fault
    /// event's `via`), listing them, instead of one per subject.
    pub by_via: bool,
}

impl CheckInfo {
    /// A check that is its own problem.
    pub fn new(title: &str, measurement: &str) -> Self {
        CheckInfo {
            title: title.to_owned(),
            measurement: measurement.to_owned(),
            problem: String::new(),
            by_via: false,
        }
    }

    /// A check whose subjects reached one way share a ticket.
    pub fn by_via(mut self, by_via: bool) -> Self {
        self.by_via = by_via;
        self
    }

    /// A check that is a rung of `problem`.
    pub fn rung_of(mut self, problem: &str) -> Self {
        self.problem = problem.to_owned();
        self
    }
}

/// What an endpoint's latest snapshot says about where it sits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Its addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
    /// The DNS servers it resolves with.
    pub resolvers: Vec<String>,
    /// Print queue (or network printer) name to the host behind it.
    pub print_servers: HashMap<String, String>,
    /// The site and tags its enrollment token gave it, beside the
    /// policy's own.
    pub enrolled_site: String,
    pub enrolled_tags: Vec<String>,
}

impl Engine {
    pub fn new(rules: TicketRules) -> Self {
        Engine {
            depends: rules.dependencies().into_owned(),
            rules,
            next_ticket: 1,
            next_incident: 1,
            ..Default::default()
        }
    }

    /// An engine resuming from stored state (see `Store::ticket_state`).
    /// Storm windows start afresh: raises before a restart are not counted.
    /// `checks` as for [`Engine::set_checks`], given here so the tickets
    /// are indexed by their problems once.
    pub fn restore(
        rules: TicketRules,
        checks: HashMap<String, CheckInfo>,
        tickets: Vec<Ticket>,
        incidents: Vec<Incident>,
        max_ticket: u64,
        max_incident: u64,
    ) -> Self {
        let mut e = Engine::new(rules);
        e.checks = checks;
        for t in tickets {
            e.tickets.insert(t.id, t);
        }
        e.reindex();
        for mut i in incidents {
            // Incidents stored before groups had keys were per check.
            let key = i
                .key
                .parse::<GroupKey>()
                .unwrap_or_else(|_| GroupKey::Check(i.check_id.clone()));
            i.key = key.to_string();
            if i.resolved_ms.is_none() {
                e.open_incidents.insert(key, i.id);
            }
            e.incidents.insert(i.id, i);
        }
        e.next_ticket = max_ticket + 1;
        e.next_incident = max_incident + 1;
        e
    }

    /// The tickets and incidents `entries` touched, as they are now: what
    /// a step must persist.
    pub fn changed(&self, entries: &[Entry]) -> (Vec<Ticket>, Vec<Incident>) {
        let mut tickets: Vec<u64> = entries.iter().filter_map(|e| e.ticket).collect();
        tickets.sort_unstable();
        tickets.dedup();
        let mut incidents: Vec<u64> = entries.iter().filter_map(|e| e.incident).collect();
        incidents.sort_unstable();
        incidents.dedup();
        (
            tickets
                .iter()
                .filter_map(|id| self.tickets.get(id).cloned())
                .collect(),
            incidents
                .iter()
                .filter_map(|id| self.incidents.get(id).cloned())
                .collect(),
        )
    }

    /// Forgets resolved tickets past the reopen window and resolved
    /// incidents, which only the store needs from then on.
    pub fn prune(&mut self, now: i64) {
        let keep_ms = self.rules.reopen_window.as_millis() as i64;
        let old: Vec<u64> = self
            .tickets
            .values()
            .filter(|t| t.resolved_ms.is_some_and(|r| now - r > keep_ms) && !t.status.is_open())
            .map(|t| t.id)
            .collect();
        self.forget(&old);
        self.incidents.retain(|_, i| i.resolved_ms.is_none());
    }

    /// Forgets tickets the store no longer keeps (retention), wherever
    /// the engine still holds them.
    pub fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(t) = self.tickets.remove(id) {
                let key = self.key_of(&t);
                if self.latest.get(&key) == Some(id) {
                    self.latest.remove(&key);
                }
                if let Some(ids) = self.by_endpoint.get_mut(&t.endpoint) {
                    ids.remove(id);
                }
            }
        }
    }

    pub fn rules(&self) -> &TicketRules {
        &self.rules
    }

    /// Whether the fault behind (endpoint, check, subject) is raised now: its
    /// newest ticket is open and not cleared.
    pub fn is_raised(&self, endpoint: &str, check: &str, subject: &str) -> bool {
        let key = self.key(endpoint, check, subject);
        self.latest
            .get(&key)
            .and_then(|id| self.tickets.get(id))
            .is_some_and(|t| t.status.is_open() && t.cleared_ms.is_none())
    }

    pub fn set_rules(&mut self, rules: TicketRules) {
        self.depends = rules.dependencies().into_owned();
        self.rules = rules;
    }

    /// Check id to what the policy says of it: titles for the tickets opened from
    /// now on, measurements for grouping printer and DNS faults.
    pub fn set_checks(&mut self, checks: HashMap<String, CheckInfo>) {
        // Only a change of ladders regroups the tickets.
        let regroup = checks.len() != self.checks.len()
            || checks
                .iter()
                .any(|(id, c)| self.checks.get(id).map(|o| &o.problem) != Some(&c.problem));
        self.checks = checks;
        if regroup {
            self.reindex();
        }
    }

    /// The problem `check` is a rung of: its ladder, or itself.
    fn problem_of<'a>(&'a self, check: &'a str) -> &'a str {
        self.checks
            .get(check)
            .map(|c| c.problem.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or(check)
    }

    fn key(&self, endpoint: &str, check: &str, subject: &str) -> Key {
        Key::new(endpoint, self.problem_of(check), subject)
    }

    fn key_of(&self, t: &Ticket) -> Key {
        self.key(&t.endpoint, &t.check_id, &t.subject)
    }

    /// Rebuilds the newest-ticket index: a change of checks can change
    /// which tickets are rungs of one problem.
    fn reindex(&mut self) {
        let latest: HashMap<Key, u64> = self
            .tickets
            .values()
            .map(|t| (self.key_of(t), t.id))
            .collect();
        // `tickets` is ordered by id, so the newest of each key came last.
        self.latest = latest;
        self.by_endpoint.clear();
        for t in self.tickets.values() {
            self.by_endpoint
                .entry(t.endpoint.clone())
                .or_default()
                .insert(t.id);
        }
    }

    /// Whether the rules group or place endpoints by what their snapshots
    /// say; without that, facts are not worth reading.
    pub fn needs_facts(&self) -> bool {
        self.rules.needs_facts() || self.rules.selects_by_label()
    }

    /// What `endpoint`'s latest snapshot says (see [`Facts`]).
    pub fn set_facts(&mut self, endpoint: &str, facts: Facts) {
        self.facts.insert(endpoint.to_owned(), facts);
    }

    /// The sites and tags `endpoint` belongs to.
    pub fn membership(&self, endpoint: &str) -> Membership {
        let facts = self.facts.get(endpoint);
        let addresses: Vec<IpAddr> = facts
            .map(|f| f.addresses.iter().map(|n| n.addr()).collect())
            .unwrap_or_default();
        let mut m = self.rules.membership(endpoint, &addresses);
        if let Some(f) = facts {
            let add = |list: &mut Vec<String>, name: &String| {
                if !name.is_empty() && !list.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    list.push(name.clone());
                }
            };
            add(&mut m.sites, &f.enrolled_site);
            for t in &f.enrolled_tags {
                add(&mut m.tags, t);
            }
        }
        m
    }

    /// A ticket a specialist opens by hand against an endpoint. Its key is
    /// its own (check "manual", subject "#ID"), so faults never merge into it.
    pub fn open_by_hand(
        &mut self,
        endpoint: &str,
        title: &str,
        severity: vitals_proto::domain::Severity,
        description: &str,
        who: &str,
        now: i64,
    ) -> (u64, Vec<Entry>) {
        let id = self.next_ticket;
        let key = Key::new(endpoint, "manual", &format!("#{id}"));
        let event = FaultEvent {
            check_id: "manual".to_owned(),
            subject: key.subject.clone(),
            state: FaultState::Raised,
            severity,
            value: 0.0,
            evidence: description.to_owned(),
            at_ms: now,
            via: String::new(),
        };
        let member = self.membership(endpoint);
        let id = self.open(&key, &event, &member, now);
        if let Some(t) = self.tickets.get_mut(&id) {
            t.title = title.to_owned();
            t.responded = true;
        }
        let text = if description.is_empty() {
            format!("opened by {who}: {title}")
        } else {
            format!("opened by {who}: {title}: {description}")
        };
        (id, vec![entry(id, now, who, Kind::Opened, &text)])
    }

    pub fn ticket(&self, id: u64) -> Option<&Ticket> {
        self.tickets.get(&id)
    }

    pub fn tickets(&self) -> impl Iterator<Item = &Ticket> {
        self.tickets.values()
    }

    pub fn incident(&self, id: u64) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// Applies one fault event from `endpoint`.
    pub fn on_fault(&mut self, endpoint: &str, e: &FaultEvent, now_ms: i64) -> Vec<Entry> {
        let key = self.event_key(endpoint, e);
        match e.state {
            FaultState::Raised => {
                if let Some(linked) = self.as_symptom(endpoint, e, now_ms) {
                    return linked;
                }
                let mut out = self.raised(key.clone(), e, now_ms);
                if let Some(&id) = self.latest.get(&key) {
                    out.extend(self.fold_symptoms(id, e, now_ms));
                }
                out
            }
            FaultState::Cleared => {
                if let Some(done) = self.symptom_cleared(endpoint, e, now_ms) {
                    return done;
                }
                if let Some(partly) = self.leave(&key, e, now_ms) {
                    return partly;
                }
                let mut out = self.cleared(&key, e, now_ms);
                if let Some(id) = out
                    .iter()
                    .find(|x| x.kind == Kind::FaultCleared)
                    .and_then(|x| x.ticket)
                {
                    out.extend(self.release_symptoms(id, now_ms));
                }
                out
            }
        }
    }

    fn raised(&mut self, key: Key, e: &FaultEvent, now: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        let existing = self.latest.get(&key).copied();
        let reopen_ms = self.rules.reopen_window.as_millis() as i64;
        // A raise counts as a flap cycle only when the problem was clear:
        // another rung of a problem already raised is not a new cycle.
        let mut cycle = true;
        match existing.and_then(|id| self.tickets.get_mut(&id)) {
            Some(t) if t.status.is_open() => {
                if t.rungs.is_empty() && t.cleared_ms.is_none() {
                    // A ticket from before rungs were kept: its check is raised.
                    t.rungs.insert(t.check_id.clone(), t.severity);
                }
                cycle = t.cleared_ms.is_some() || t.rungs.is_empty();
                t.raise_count += 1;
                t.last_raised_ms = now;
                t.cleared_ms = None;
                t.value = e.value;
                t.evidence = e.evidence.clone();
                t.rungs.insert(e.check_id.clone(), e.severity);
                let id = t.id;
                out.push(entry(id, now, SYSTEM, Kind::FaultRaised, &e.evidence));
                if let Some(change) = self.climb(id, &e.check_id, now) {
                    out.push(change);
                }
            }
            Some(t) if t.resolved_ms.is_some_and(|r| now - r <= reopen_ms) => {
                t.raise_count += 1;
                t.last_raised_ms = now;
                t.cleared_ms = None;
                t.resolved_ms = None;
                t.status = reopened_status(t);
                t.value = e.value;
                t.evidence = e.evidence.clone();
                t.rungs.clear();
                t.members.clear();
                t.rungs.insert(e.check_id.clone(), e.severity);
                let id = t.id;
                out.push(entry(
                    id,
                    now,
                    SYSTEM,
                    Kind::Reopened,
                    &format!("the fault returned: {}", e.evidence),
                ));
                if let Some(change) = self.climb(id, &e.check_id, now) {
                    out.push(change);
                }
            }
            _ => {
                let member = self.membership(&key.endpoint);
                if let Some(m) = self.rules.maintenance_of(&member, now) {
                    return vec![Entry {
                        ticket: None,
                        incident: None,
                        at_ms: now,
                        who: SYSTEM.into(),
                        kind: Kind::Suppressed,
                        text: format!(
                            "{} {} on {}: no ticket during maintenance ({})",
                            e.check_id,
                            key.subject,
                            key.endpoint,
                            if m.reason.is_empty() {
                                "no reason given"
                            } else {
                                &m.reason
                            }
                        ),
                    }];
                }
                let id = self.open(&key, e, &member, now);
                out.push(entry(id, now, SYSTEM, Kind::Opened, &e.evidence));
            }
        }
        let Some(&id) = self.latest.get(&key) else {
            return out;
        };
        if key.subject != e.subject {
            self.join(id, e);
        }
        if cycle {
            self.flap(id, now, &mut out);
        }
        self.storm(id, now, &mut out);
        out
    }

    fn open(&mut self, key: &Key, e: &FaultEvent, member: &Membership, now: i64) -> u64 {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let priority = Priority::of(e.severity, self.rules.criticality_of(member));
        let sla = self.rules.sla.of(priority);
        let title = self
            .checks
            .get(&e.check_id)
            .map(|c| &c.title)
            .filter(|t| !t.is_empty())
            .cloned()
            .unwrap_or_else(|| e.check_id.replace('_', " "));
        self.tickets.insert(
            id,
            Ticket {
                id,
                title,
                endpoint: key.endpoint.clone(),
                check_id: e.check_id.clone(),
                subject: key.subject.clone(),
                severity: e.severity,
                priority,
                status: Status::New,
                tier: 1,
                assignee: None,
                raise_count: 1,
                opened_ms: now,
                last_raised_ms: now,
                cleared_ms: None,
                resolved_ms: None,
                flapping: false,
                incident: None,
                value: e.value,
                evidence: e.evidence.clone(),
                response_due_ms: now + sla.response.as_millis() as i64,
                resolve_due_ms: now + sla.resolve.as_millis() as i64,
                responded: false,
                response_breached: false,
                resolve_breached: false,
                raises: VecDeque::new(),
                rungs: BTreeMap::from([(e.check_id.clone(), e.severity)]),
                members: BTreeMap::new(),
            },
        );
        self.latest.insert(key.clone(), id);
        self.by_endpoint
            .entry(key.endpoint.clone())
            .or_default()
            .insert(id);
        id
    }

    fn flap(&mut self, id: u64, now: i64, out: &mut Vec<Entry>) {
        let window = self.rules.flap_window.as_millis() as i64;
        let cycles = self.rules.flap_cycles as usize;
        let Some(t) = self.tickets.get_mut(&id) else {
            return;
        };
        t.raises.push_back(now);
        while t.raises.front().is_some_and(|r| now - r > window) {
            t.raises.pop_front();
        }
        if !t.flapping && t.raises.len() >= cycles {
            t.flapping = true;
            out.push(entry(
                id,
                now,
                SYSTEM,
                Kind::Flapping,
                &format!(
                    "raised {} times within {}; held open until stable",
                    t.raises.len(),
                    humantime::format_duration(self.rules.flap_window)
                ),
            ));
        }
    }

    fn cleared(&mut self, key: &Key, e: &FaultEvent, now: i64) -> Vec<Entry> {
        let Some(t) = self
            .latest
            .get(key)
            .and_then(|id| self.tickets.get_mut(id))
            .filter(|t| t.status.is_open())
        else {
            return Vec::new();
        };
        t.rungs.remove(&e.check_id);
        if !t.rungs.is_empty() {
            // A lower rung still stands: the problem is not over, it eases.
            let id = t.id;
            return self.climb(id, &e.check_id, now).into_iter().collect();
        }
        t.cleared_ms = Some(now);
        t.value = e.value;
        vec![entry(t.id, now, SYSTEM, Kind::FaultCleared, &e.evidence)]
    }

    /// After `check` changed on ticket `id`: the ticket takes the severity,
    /// priority, check and title of its highest rung still raised, and says
    /// so when that changed.
    fn climb(&mut self, id: u64, check: &str, now: i64) -> Option<Entry> {
        // Most raises leave the severity where it is: decide that first,
        // before any lookup of the endpoint's criticality.
        let (top, severity, endpoint) = {
            let t = self.tickets.get(&id)?;
            let (top, severity) = t.rungs.iter().max_by_key(|(_, s)| **s)?;
            if *severity == t.severity {
                return None;
            }
            (top.clone(), *severity, t.endpoint.clone())
        };
        let criticality = self.rules.criticality_of(&self.membership(&endpoint));
        let title = self
            .checks
            .get(&top)
            .map(|c| c.title.clone())
            .filter(|t| !t.is_empty());
        let t = self.tickets.get_mut(&id)?;
        let priority = Priority::of(severity, criticality);
        let what = if severity > t.severity {
            format!("{check} raised")
        } else {
            format!("{check} cleared, {top} still raised")
        };
        let text = format!(
            "{what}: severity {} → {}, priority {} → {}",
            t.severity.as_str(),
            severity.as_str(),
            t.priority.as_str().to_uppercase(),
            priority.as_str().to_uppercase()
        );
        if priority < t.priority {
            // More urgent: the deadlines of the new priority, from the start.
            let sla = self.rules.sla.of(priority);
            t.response_due_ms = t
                .response_due_ms
                .min(t.opened_ms + sla.response.as_millis() as i64);
            t.resolve_due_ms = t
                .resolve_due_ms
                .min(t.opened_ms + sla.resolve.as_millis() as i64);
        }
        t.severity = severity;
        t.priority = priority;
        t.check_id = top;
        if let Some(title) = title {
            t.title = title;
        }
        Some(entry(id, now, SYSTEM, Kind::SeverityChanged, &text))
    }

    /// Time passing: auto-resolve after the quiet period, SLA escalation,
    /// incidents resolving with their tickets.
    pub fn tick(&mut self, now: i64) -> Vec<Entry> {
        let mut out = self.settle_symptoms(now);
        let quiet = self.rules.quiet_period.as_millis() as i64;
        let flap_window = self.rules.flap_window.as_millis() as i64;
        for t in self.tickets.values_mut().filter(|t| t.status.is_open()) {
            if let Some(cleared) = t.cleared_ms {
                let wait = if t.flapping { flap_window } else { quiet };
                if now - cleared >= wait {
                    t.status = Status::Resolved;
                    t.resolved_ms = Some(now);
                    t.flapping = false;
                    t.raises.clear();
                    out.push(entry(
                        t.id,
                        now,
                        SYSTEM,
                        Kind::AutoResolved,
                        &format!(
                            "auto-resolved: clear for {}",
                            humantime::format_duration(std::time::Duration::from_millis(
                                (now - cleared) as u64 / 1000 * 1000
                            ))
                        ),
                    ));
                    continue;
                }
            }
            let breach = if !t.responded && !t.response_breached && now > t.response_due_ms {
                t.response_breached = true;
                Some("response")
            } else if !t.resolve_breached && now > t.resolve_due_ms {
                t.resolve_breached = true;
                Some("resolve")
            } else {
                None
            };
            if let Some(what) = breach
                && t.tier < 3
            {
                t.tier += 1;
                t.status = Status::Escalated;
                out.push(entry(
                    t.id,
                    now,
                    SYSTEM,
                    Kind::Escalated,
                    &format!(
                        "{} SLA for {} missed; escalated to {}",
                        what,
                        t.priority.as_str().to_uppercase(),
                        tier_name(t.tier)
                    ),
                ));
            }
        }
        for i in self
            .incidents
            .values_mut()
            .filter(|i| i.resolved_ms.is_none())
        {
            let all_done = i
                .tickets
                .iter()
                .all(|id| self.tickets.get(id).is_none_or(|t| !t.status.is_open()));
            if all_done && !i.tickets.is_empty() {
                i.resolved_ms = Some(now);
                self.open_incidents.retain(|_, id| *id != i.id);
                out.push(Entry {
                    ticket: None,
                    incident: Some(i.id),
                    at_ms: now,
                    who: SYSTEM.into(),
                    kind: Kind::IncidentResolved,
                    text: format!("all {} tickets resolved", i.tickets.len()),
                });
            }
        }
        out
    }

    /// A specialist's action on a ticket. `None` if there is no such ticket.
    pub fn act(&mut self, id: u64, who: &str, action: Action, now: i64) -> Option<Vec<Entry>> {
        let t = self.tickets.get_mut(&id)?;
        t.responded = true;
        let e = match action {
            Action::Assign(to) => {
                t.assignee = Some(to.clone());
                if t.status == Status::New {
                    t.status = Status::Assigned;
                }
                entry(id, now, who, Kind::Assigned, &format!("assigned to {to}"))
            }
            Action::Comment(text) => entry(id, now, who, Kind::Comment, &text),
            Action::Status(s) => {
                let before = t.status;
                t.status = s;
                if !s.is_open() {
                    t.resolved_ms.get_or_insert(now);
                } else {
                    t.resolved_ms = None;
                }
                entry(
                    id,
                    now,
                    who,
                    Kind::StatusChanged,
                    &format!("{} → {}", before.as_str(), s.as_str()),
                )
            }
            Action::Resolve(notes) => {
                t.status = Status::Resolved;
                t.resolved_ms = Some(now);
                entry(id, now, who, Kind::Resolved, &notes)
            }
            Action::Reopen(reason) => {
                t.status = reopened_status(t);
                t.resolved_ms = None;
                t.cleared_ms = None;
                let text = if reason.is_empty() {
                    format!("reopened by {who}")
                } else {
                    format!("reopened by {who}: {reason}")
                };
                entry(id, now, who, Kind::Reopened, &text)
            }
            Action::Escalate => {
                t.tier = (t.tier + 1).min(3);
                t.status = Status::Escalated;
                entry(
                    id,
                    now,
                    who,
                    Kind::Escalated,
                    &format!("escalated to {}", tier_name(t.tier)),
                )
            }
        };
        Some(vec![e])
    }
}

/// What a specialist can do to a ticket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Assign(String),
    Comment(String),
    Status(Status),
    Resolve(String),
    Escalate,
    /// Back to new (or assigned, if it has someone), with the reason.
    Reopen(String),
}

/// Where a reopened ticket goes: back to its assignee if it has one.
fn reopened_status(t: &Ticket) -> Status {
    if t.assignee.is_some() {
        Status::Assigned
    } else {
        Status::New
    }
}

fn tier_name(tier: u8) -> &'static str {
    match tier {
        1 => "tier 1",
        2 => "tier 2",
        _ => "the vendor",
    }
}

fn entry(ticket: u64, at_ms: i64, who: &str, kind: Kind, text: &str) -> Entry {
    Entry {
        ticket: Some(ticket),
        incident: None,
        at_ms,
        who: who.to_owned(),
        kind,
        text: text.to_owned(),
    }
}
