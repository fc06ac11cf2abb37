//! The ticket engine: fault events in, tickets and their timelines out.
//!
//! Pure and single-writer: it holds the open tickets in memory, takes fault
//! events and the clock, and returns every change as a timeline entry for
//! the store to persist (and, later, for webhooks to send). Nothing here
//! does I/O, so every rule is tested as a table of events.
//!
//! Rules (from `policy.toml`'s `[tickets]`):
//! - one open ticket per (endpoint, check, subject); a re-raised fault
//!   updates it (count, last seen, latest value and evidence);
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use vitals_proto::domain::{FaultEvent, FaultState};
use vitals_proto::ticket_rules::{Membership, Priority, StormBy, TicketRules};
use vitals_proto::tickets::{Entry, Incident, Kind, Status, Ticket};

/// Who the engine acts as in timelines.
pub const SYSTEM: &str = "vitals";

type Key = (String, String, String);

#[derive(Debug, Default)]
pub struct Engine {
    rules: TicketRules,
    tickets: BTreeMap<u64, Ticket>,
    /// The newest ticket per (endpoint, check, subject), open or not.
    latest: HashMap<Key, u64>,
    incidents: BTreeMap<u64, Incident>,
    /// Recent raises per storm group: (when, endpoint, ticket).
    recent: HashMap<String, VecDeque<(i64, String, u64)>>,
    next_ticket: u64,
    next_incident: u64,
    /// Check id to (title, measurement), from the policy.
    checks: HashMap<String, (String, String)>,
    /// What the collector knows of each endpoint from its snapshots.
    facts: HashMap<String, Facts>,
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
}

/// A group a raise counts in for storm detection.
struct Group {
    key: String,
    /// For messages: "print server ps01", "site city-hall", "check x".
    label: String,
    threshold: u32,
    window: Duration,
}

impl Engine {
    pub fn new(rules: TicketRules) -> Self {
        Engine {
            rules,
            next_ticket: 1,
            next_incident: 1,
            ..Default::default()
        }
    }

    /// An engine resuming from stored state (see `Store::ticket_state`).
    /// Storm windows start afresh: raises before a restart are not counted.
    pub fn restore(
        rules: TicketRules,
        tickets: Vec<Ticket>,
        incidents: Vec<Incident>,
        max_ticket: u64,
        max_incident: u64,
    ) -> Self {
        let mut e = Engine::new(rules);
        for t in tickets {
            let key = (t.endpoint.clone(), t.check_id.clone(), t.subject.clone());
            let newer = e.latest.get(&key).is_some_and(|id| *id > t.id);
            if !newer {
                e.latest.insert(key, t.id);
            }
            e.tickets.insert(t.id, t);
        }
        for mut i in incidents {
            if i.key.is_empty() {
                i.key = format!("check:{}", i.check_id);
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
        for id in old {
            if let Some(t) = self.tickets.remove(&id) {
                let key = (t.endpoint, t.check_id, t.subject);
                if self.latest.get(&key) == Some(&id) {
                    self.latest.remove(&key);
                }
            }
        }
        self.incidents.retain(|_, i| i.resolved_ms.is_none());
    }

    pub fn rules(&self) -> &TicketRules {
        &self.rules
    }

    /// Whether the fault behind (endpoint, check, subject) is raised now: its
    /// newest ticket is open and not cleared.
    pub fn is_raised(&self, endpoint: &str, check: &str, subject: &str) -> bool {
        let key = (endpoint.to_owned(), check.to_owned(), subject.to_owned());
        self.latest
            .get(&key)
            .and_then(|id| self.tickets.get(id))
            .is_some_and(|t| t.status.is_open() && t.cleared_ms.is_none())
    }

    pub fn set_rules(&mut self, rules: TicketRules) {
        self.rules = rules;
    }

    /// Check id to (title, measurement): titles for the tickets opened from
    /// now on, measurements for grouping printer and DNS faults.
    pub fn set_checks(&mut self, checks: HashMap<String, (String, String)>) {
        self.checks = checks;
    }

    /// Whether the rules group or place endpoints by what their snapshots
    /// say; without that, facts are not worth reading.
    pub fn needs_facts(&self) -> bool {
        self.rules.needs_facts()
    }

    /// What `endpoint`'s latest snapshot says (see [`Facts`]).
    pub fn set_facts(&mut self, endpoint: &str, facts: Facts) {
        self.facts.insert(endpoint.to_owned(), facts);
    }

    /// The sites and tags `endpoint` belongs to.
    pub fn membership(&self, endpoint: &str) -> Membership {
        let addresses: Vec<IpAddr> = self
            .facts
            .get(endpoint)
            .map(|f| f.addresses.iter().map(|n| n.addr()).collect())
            .unwrap_or_default();
        self.rules.membership(endpoint, &addresses)
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
        let key = (endpoint.to_owned(), "manual".to_owned(), format!("#{id}"));
        let event = FaultEvent {
            check_id: key.1.clone(),
            subject: key.2.clone(),
            state: FaultState::Raised,
            severity,
            value: 0.0,
            evidence: description.to_owned(),
            at_ms: now,
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
        let key = (endpoint.to_owned(), e.check_id.clone(), e.subject.clone());
        match e.state {
            FaultState::Raised => self.raised(key, e, now_ms),
            FaultState::Cleared => self.cleared(&key, e, now_ms),
        }
    }

    fn raised(&mut self, key: Key, e: &FaultEvent, now: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        let existing = self.latest.get(&key).copied();
        let reopen_ms = self.rules.reopen_window.as_millis() as i64;
        match existing.and_then(|id| self.tickets.get_mut(&id)) {
            Some(t) if t.status.is_open() => {
                t.raise_count += 1;
                t.last_raised_ms = now;
                t.cleared_ms = None;
                t.value = e.value;
                t.evidence = e.evidence.clone();
                out.push(entry(t.id, now, SYSTEM, Kind::FaultRaised, &e.evidence));
            }
            Some(t) if t.resolved_ms.is_some_and(|r| now - r <= reopen_ms) => {
                t.raise_count += 1;
                t.last_raised_ms = now;
                t.cleared_ms = None;
                t.resolved_ms = None;
                t.status = if t.assignee.is_some() {
                    Status::Assigned
                } else {
                    Status::New
                };
                t.value = e.value;
                t.evidence = e.evidence.clone();
                out.push(entry(
                    t.id,
                    now,
                    SYSTEM,
                    Kind::Reopened,
                    &format!("the fault returned: {}", e.evidence),
                ));
            }
            _ => {
                let member = self.membership(&key.0);
                if let Some(m) = self.rules.maintenance_of(&member, now) {
                    return vec![Entry {
                        ticket: None,
                        incident: None,
                        at_ms: now,
                        who: SYSTEM.into(),
                        kind: Kind::Suppressed,
                        text: format!(
                            "{} {} on {}: no ticket during maintenance ({})",
                            key.1,
                            key.2,
                            key.0,
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
        self.flap(id, now, &mut out);
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
            .get(&key.1)
            .map(|(t, _)| t)
            .filter(|t| !t.is_empty())
            .cloned()
            .unwrap_or_else(|| key.1.replace('_', " "));
        self.tickets.insert(
            id,
            Ticket {
                id,
                title,
                endpoint: key.0.clone(),
                check_id: key.1.clone(),
                subject: key.2.clone(),
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
            },
        );
        self.latest.insert(key.clone(), id);
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

    /// The storm groups a raise of `check` on `subject` at `endpoint`
    /// counts in, the most specific first, the same-check rule last.
    fn groups(&self, endpoint: &str, check: &str, subject: &str) -> Vec<Group> {
        let mut out = Vec::new();
        let facts = self.facts.get(endpoint);
        let measurement = self
            .checks
            .get(check)
            .map(|(_, m)| m.as_str())
            .unwrap_or("");
        for rule in &self.rules.storms {
            let mut add = |key: String, label: String| {
                out.push(Group {
                    key,
                    label,
                    threshold: rule.endpoints,
                    window: rule.window,
                })
            };
            match rule.by {
                StormBy::PrintServer => {
                    if measurement.starts_with("printer.")
                        && let Some(host) = facts.and_then(|f| f.print_servers.get(subject))
                    {
                        add(
                            format!("print_server:{host}"),
                            format!("print server {host}"),
                        );
                    }
                }
                StormBy::DnsServer => {
                    if measurement.starts_with("dns.") {
                        for r in facts.map(|f| f.resolvers.as_slice()).unwrap_or_default() {
                            add(format!("dns_server:{r}"), format!("DNS server {r}"));
                        }
                    }
                }
                StormBy::Site => {
                    for site in self.membership(endpoint).sites {
                        add(
                            format!("site:{site}|{check}"),
                            format!("{check} at site {site}"),
                        );
                    }
                }
                StormBy::Subnet => {
                    let nets = facts.map(|f| f.addresses.as_slice()).unwrap_or_default();
                    for n in nets {
                        let a = n.addr();
                        let shared = match a {
                            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                            IpAddr::V6(v6) => {
                                !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
                            }
                        };
                        if !shared {
                            continue;
                        }
                        let net = match (a, rule.prefix) {
                            (IpAddr::V4(_), Some(p)) => IpNet::new(a, p).map(|n| n.trunc()).ok(),
                            _ => Some(n.trunc()),
                        };
                        if let Some(net) = net {
                            add(
                                format!("subnet:{net}|{check}"),
                                format!("{check} on subnet {net}"),
                            );
                        }
                    }
                }
            }
        }
        out.push(Group {
            key: format!("check:{check}"),
            label: check.to_owned(),
            threshold: self.rules.storm_endpoints,
            window: self.rules.storm_window,
        });
        out
    }

    fn storm(&mut self, id: u64, now: i64, out: &mut Vec<Entry>) {
        let Some(t) = self.tickets.get(&id) else {
            return;
        };
        let (check, endpoint, subject) =
            (t.check_id.clone(), t.endpoint.clone(), t.subject.clone());
        let linked = t.incident.is_some();
        let groups = self.groups(&endpoint, &check, &subject);
        // Every group counts the raise; the first to trip takes the ticket.
        for g in &groups {
            let window = g.window.as_millis() as i64;
            let recent = self.recent.entry(g.key.clone()).or_default();
            recent.retain(|(at, ep, _)| now - at <= window && *ep != endpoint);
            recent.push_back((now, endpoint.clone(), id));
        }
        if linked {
            return;
        }
        for g in groups {
            let open_incident = self
                .incidents
                .values()
                .find(|i| i.key == g.key && i.resolved_ms.is_none())
                .map(|i| i.id);
            let count = self.recent.get(&g.key).map_or(0, VecDeque::len);
            if open_incident.is_none() && count < g.threshold as usize {
                continue;
            }
            let incident = match open_incident {
                Some(i) => i,
                None => {
                    let i = self.next_incident;
                    self.next_incident += 1;
                    let per_check = g.key.starts_with("check:") || g.key.contains('|');
                    self.incidents.insert(
                        i,
                        Incident {
                            id: i,
                            check_id: if per_check {
                                check.clone()
                            } else {
                                String::new()
                            },
                            key: g.key.clone(),
                            title: g.label.clone(),
                            opened_ms: now,
                            resolved_ms: None,
                            tickets: Vec::new(),
                        },
                    );
                    out.push(Entry {
                        ticket: None,
                        incident: Some(i),
                        at_ms: now,
                        who: SYSTEM.into(),
                        kind: Kind::IncidentOpened,
                        text: format!(
                            "{} endpoints raised {} within {}",
                            count,
                            g.label,
                            humantime::format_duration(g.window)
                        ),
                    });
                    i
                }
            };
            // A new incident gathers the open tickets that tripped it; an
            // open one only takes this ticket in.
            let to_link: Vec<u64> = if open_incident.is_some() {
                vec![id]
            } else {
                self.recent
                    .get(&g.key)
                    .map(|r| r.iter().map(|(_, _, t)| *t).collect())
                    .unwrap_or_default()
            };
            for tid in to_link {
                let Some(t) = self
                    .tickets
                    .get_mut(&tid)
                    .filter(|t| t.status.is_open() && t.incident.is_none())
                else {
                    continue;
                };
                t.incident = Some(incident);
                if let Some(i) = self.incidents.get_mut(&incident) {
                    i.tickets.push(tid);
                }
                out.push(Entry {
                    ticket: Some(tid),
                    incident: Some(incident),
                    at_ms: now,
                    who: SYSTEM.into(),
                    kind: Kind::Linked,
                    text: format!("part of incident {incident} ({})", g.label),
                });
            }
            return;
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
        t.cleared_ms = Some(now);
        t.value = e.value;
        vec![entry(t.id, now, SYSTEM, Kind::FaultCleared, &e.evidence)]
    }

    /// Time passing: auto-resolve after the quiet period, SLA escalation,
    /// incidents resolving with their tickets.
    pub fn tick(&mut self, now: i64) -> Vec<Entry> {
        let mut out = Vec::new();
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
                t.status = if t.assignee.is_some() {
                    Status::Assigned
                } else {
                    Status::New
                };
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
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Assign(String),
    Comment(String),
    Status(Status),
    Resolve(String),
    Escalate,
    /// Back to new (or assigned, if it has someone), with the reason.
    Reopen(String),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    fn rules() -> TicketRules {
        TicketRules {
            quiet_period: Duration::from_secs(600),
            reopen_window: Duration::from_secs(3600),
            flap_cycles: 3,
            flap_window: Duration::from_secs(3600),
            storm_endpoints: 5,
            storm_window: Duration::from_secs(600),
            ..Default::default()
        }
    }

    use vitals_proto::domain::Severity;

    fn fault(check: &str, state: FaultState, severity: Severity) -> FaultEvent {
        FaultEvent {
            check_id: check.into(),
            subject: "/".into(),
            state,
            severity,
            value: 97.0,
            evidence: format!("{check} evidence"),
            at_ms: 0,
        }
    }

    fn raise(e: &mut Engine, ep: &str, at: i64) -> Vec<Entry> {
        e.on_fault(
            ep,
            &fault("disk_nearly_full", FaultState::Raised, Severity::Warning),
            at,
        )
    }

    fn clear(e: &mut Engine, ep: &str, at: i64) -> Vec<Entry> {
        e.on_fault(
            ep,
            &fault("disk_nearly_full", FaultState::Cleared, Severity::Warning),
            at,
        )
    }

    fn kinds(entries: &[Entry]) -> Vec<Kind> {
        entries.iter().map(|e| e.kind.clone()).collect()
    }

    #[test]
    fn re_raised_fault_updates_the_one_open_ticket() {
        let mut e = Engine::new(rules());
        assert_eq!(kinds(&raise(&mut e, "ws-1", 0)), vec![Kind::Opened]);
        assert_eq!(kinds(&raise(&mut e, "ws-1", MIN)), vec![Kind::FaultRaised]);
        assert_eq!(e.tickets().count(), 1);
        let t = e.ticket(1).unwrap();
        assert_eq!(t.raise_count, 2);
        assert_eq!(t.last_raised_ms, MIN);
        // Another subject or endpoint is another ticket.
        let mut other = fault("disk_nearly_full", FaultState::Raised, Severity::Warning);
        other.subject = "/home".into();
        assert_eq!(
            kinds(&e.on_fault("ws-1", &other, 2 * MIN)),
            vec![Kind::Opened]
        );
        assert_eq!(kinds(&raise(&mut e, "ws-2", 2 * MIN)), vec![Kind::Opened]);
        assert_eq!(e.tickets().count(), 3);
    }

    #[test]
    fn cleared_fault_resolves_after_the_quiet_period_and_returns_reopen() {
        let mut e = Engine::new(rules());
        raise(&mut e, "ws-1", 0);
        assert_eq!(kinds(&clear(&mut e, "ws-1", MIN)), vec![Kind::FaultCleared]);
        assert!(e.tick(5 * MIN).is_empty(), "quiet period still running");
        let resolved = e.tick(11 * MIN);
        assert_eq!(kinds(&resolved), vec![Kind::AutoResolved]);
        assert!(resolved[0].text.contains("auto-resolved: clear for 10m"));
        assert_eq!(e.ticket(1).unwrap().status, Status::Resolved);
        // Back within the reopen window: the same ticket reopens.
        assert_eq!(
            kinds(&raise(&mut e, "ws-1", 30 * MIN)),
            vec![Kind::Reopened]
        );
        assert_eq!(e.ticket(1).unwrap().status, Status::New);
        assert_eq!(e.tickets().count(), 1);
        // A fault returning within the quiet period never resolved at all.
        clear(&mut e, "ws-1", 31 * MIN);
        assert_eq!(
            kinds(&raise(&mut e, "ws-1", 33 * MIN)),
            vec![Kind::FaultRaised]
        );
        assert!(e.tick(45 * MIN).is_empty());
        // Past the reopen window: a new ticket.
        clear(&mut e, "ws-1", 50 * MIN);
        e.tick(61 * MIN);
        assert_eq!(kinds(&raise(&mut e, "ws-1", 200 * MIN)), vec![Kind::Opened]);
        assert_eq!(e.tickets().count(), 2);
    }

    #[test]
    fn flapping_is_marked_once_and_stops_the_churn() {
        let mut e = Engine::new(rules());
        let mut all = Vec::new();
        for i in 0..6 {
            all.extend(raise(&mut e, "ws-1", i * 2 * MIN));
            all.extend(clear(&mut e, "ws-1", i * 2 * MIN + MIN));
            all.extend(e.tick(i * 2 * MIN + MIN + 1));
        }
        let flaps = all.iter().filter(|x| x.kind == Kind::Flapping).count();
        assert_eq!(flaps, 1, "{:?}", kinds(&all));
        assert_eq!(e.tickets().count(), 1, "no new tickets while flapping");
        let t = e.ticket(1).unwrap();
        assert!(t.flapping && t.status.is_open());
        // Clear past the quiet period is not enough while flapping...
        assert!(e.tick(11 * MIN + 15 * MIN).is_empty());
        // ...a whole flap window clear is.
        assert_eq!(
            kinds(&e.tick(11 * MIN + 61 * MIN)),
            vec![Kind::AutoResolved]
        );
    }

    #[test]
    fn a_storm_becomes_one_incident_with_every_ticket_linked() {
        let mut e = Engine::new(rules());
        let mut all = Vec::new();
        for i in 0..50 {
            all.extend(raise(&mut e, &format!("ws-{i:02}"), i * 1000));
        }
        let opened: Vec<&Entry> = all
            .iter()
            .filter(|x| x.kind == Kind::IncidentOpened)
            .collect();
        assert_eq!(opened.len(), 1, "one parent, not one per endpoint");
        let incident = e.incident(1).unwrap();
        assert_eq!(incident.tickets.len(), 50);
        assert!(e.tickets().all(|t| t.incident == Some(1)));
        // The same check elsewhere later joins the open incident.
        raise(&mut e, "ws-99", 60_000);
        assert_eq!(e.incident(1).unwrap().tickets.len(), 51);
        // It resolves with its children.
        for t in e.tickets().map(|t| t.endpoint.clone()).collect::<Vec<_>>() {
            clear(&mut e, &t, 2 * MIN);
        }
        let done = e.tick(13 * MIN);
        assert_eq!(
            done.iter()
                .filter(|x| x.kind == Kind::IncidentResolved)
                .count(),
            1
        );
        // Too few endpoints, or spread too thin in time: no incident.
        let mut quiet = Engine::new(rules());
        for i in 0..4 {
            raise(&mut quiet, &format!("ws-{i}"), 0);
        }
        for i in 4..8 {
            raise(&mut quiet, &format!("ws-{i}"), i * 20 * MIN);
        }
        assert!(quiet.incident(1).is_none());
    }

    use vitals_proto::ticket_rules::{
        Criticality, CriticalityRule, EndpointGroup, MaintenanceWindow, StormRule,
    };

    fn group(name: &str, endpoints: &[&str], subnets: &[&str]) -> EndpointGroup {
        EndpointGroup {
            name: name.into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            subnets: subnets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn storm(by: StormBy, endpoints: u32, prefix: Option<u8>) -> StormRule {
        StormRule {
            by,
            endpoints,
            window: Duration::from_secs(600),
            prefix,
        }
    }

    /// Printer and DNS checks as the default policy names them.
    fn with_checks(e: &mut Engine) {
        e.set_checks(HashMap::from([
            (
                "printer_offline".to_owned(),
                (String::new(), "printer.offline".to_owned()),
            ),
            (
                "printer_queue_stuck".to_owned(),
                (String::new(), "printer.oldest_job_minutes".to_owned()),
            ),
            (
                "dns_failing".to_owned(),
                (String::new(), "dns.failed".to_owned()),
            ),
            (
                "disk_nearly_full".to_owned(),
                (String::new(), "disk.used_percent".to_owned()),
            ),
        ]));
    }

    fn raise_on(e: &mut Engine, ep: &str, check: &str, subject: &str, at: i64) -> Vec<Entry> {
        let mut f = fault(check, FaultState::Raised, Severity::Warning);
        f.subject = subject.into();
        e.on_fault(ep, &f, at)
    }

    fn incidents_opened(entries: &[Entry]) -> Vec<&str> {
        entries
            .iter()
            .filter(|x| x.kind == Kind::IncidentOpened)
            .map(|x| x.text.as_str())
            .collect()
    }

    #[test]
    fn a_dead_print_server_is_one_incident_across_printer_checks() {
        let mut r = rules();
        r.storms.push(storm(StormBy::PrintServer, 3, None));
        let mut e = Engine::new(r);
        with_checks(&mut e);
        // Desks with queues on ps01 (different queue names, different
        // printer checks) and one desk whose queue is on ps02.
        for (ep, queue, server) in [
            ("ws-1", "hall-a", "ps01"),
            ("ws-2", "hall-b", "ps01"),
            ("ws-3", "hall-a", "ps01"),
            ("ws-4", "annex", "ps02"),
        ] {
            e.set_facts(
                ep,
                Facts {
                    print_servers: HashMap::from([(queue.to_owned(), server.to_owned())]),
                    ..Default::default()
                },
            );
        }
        let mut all = Vec::new();
        all.extend(raise_on(&mut e, "ws-1", "printer_offline", "hall-a", 0));
        all.extend(raise_on(&mut e, "ws-4", "printer_offline", "annex", 1000));
        all.extend(raise_on(
            &mut e,
            "ws-2",
            "printer_queue_stuck",
            "hall-b",
            2000,
        ));
        assert!(incidents_opened(&all).is_empty(), "two desks on ps01 only");
        all.extend(raise_on(&mut e, "ws-3", "printer_offline", "hall-a", 3000));
        assert_eq!(
            incidents_opened(&all),
            vec!["3 endpoints raised print server ps01 within 10m"]
        );
        let i = e.incident(1).unwrap();
        assert_eq!(
            (i.key.as_str(), i.check_id.as_str()),
            ("print_server:ps01", "")
        );
        assert_eq!(i.tickets, vec![1, 3, 4], "ps02's desk stays out");
        // A disk fault on a desk of ps01 has nothing to do with it.
        raise_on(&mut e, "ws-1", "disk_nearly_full", "/", 4000);
        assert_eq!(e.ticket(5).unwrap().incident, None);
    }

    #[test]
    fn desks_sharing_a_failing_dns_server_are_one_incident() {
        let mut r = rules();
        r.storms.push(storm(StormBy::DnsServer, 3, None));
        let mut e = Engine::new(r);
        with_checks(&mut e);
        for (i, server) in ["10.0.0.53", "10.0.0.53", "10.9.9.9", "10.0.0.53"]
            .iter()
            .enumerate()
        {
            e.set_facts(
                &format!("ws-{i}"),
                Facts {
                    resolvers: vec![server.to_string()],
                    ..Default::default()
                },
            );
        }
        let mut all = Vec::new();
        for (i, name) in ["erp.city", "mail.city", "erp.city", "gis.city"]
            .iter()
            .enumerate()
        {
            all.extend(raise_on(
                &mut e,
                &format!("ws-{i}"),
                "dns_failing",
                name,
                i as i64,
            ));
        }
        assert_eq!(
            incidents_opened(&all),
            vec!["3 endpoints raised DNS server 10.0.0.53 within 10m"]
        );
        assert_eq!(e.incident(1).unwrap().tickets, vec![1, 2, 4]);
    }

    #[test]
    fn sites_and_subnets_group_with_their_own_thresholds() {
        let mut r = rules();
        // The same-check rule stays out of the way here.
        r.storm_endpoints = 50;
        r.sites.push(group("city-hall", &["ch-*"], &[]));
        r.storms.push(storm(StormBy::Site, 2, None));
        r.storms.push(storm(StormBy::Subnet, 3, Some(24)));
        let mut e = Engine::new(r);
        with_checks(&mut e);
        let mut all = Vec::new();
        // Two at city hall: the site's own threshold (2) trips.
        all.extend(raise(&mut e, "ch-1", 0));
        all.extend(raise(&mut e, "ch-2", 1));
        assert_eq!(
            incidents_opened(&all),
            vec!["2 endpoints raised disk_nearly_full at site city-hall within 10m"]
        );
        // Three desks on 10.4.7.0/24 (addresses from their snapshots, the
        // interface prefix overridden to /24); one on another subnet.
        for (ep, addr) in [
            ("ws-a", "10.4.7.10/16"),
            ("ws-b", "10.4.7.11/16"),
            ("ws-c", "10.4.8.12/16"),
            ("ws-d", "10.4.7.13/16"),
        ] {
            e.set_facts(
                ep,
                Facts {
                    addresses: vec![addr.parse().unwrap(), "127.0.0.1/8".parse().unwrap()],
                    ..Default::default()
                },
            );
        }
        let mut all = Vec::new();
        for ep in ["ws-a", "ws-b", "ws-c", "ws-d"] {
            all.extend(raise(&mut e, ep, 10));
        }
        assert_eq!(
            incidents_opened(&all),
            vec!["3 endpoints raised disk_nearly_full on subnet 10.4.7.0/24 within 10m"]
        );
        assert_eq!(e.incident(2).unwrap().tickets.len(), 3);
        assert_eq!(
            e.ticket(5).unwrap().incident,
            None,
            "ws-c is on 10.4.8.0/24"
        );
    }

    #[test]
    fn criticality_and_maintenance_by_site_and_tag() {
        let mut r = rules();
        r.sites
            .push(group("dispatch-center", &[], &["10.20.0.0/16"]));
        r.tags.push(group("kiosk", &["lobby-*"], &[]));
        r.criticality.push(CriticalityRule {
            endpoints: String::new(),
            site: "dispatch-center".into(),
            tag: String::new(),
            level: Criticality::Critical,
        });
        r.criticality.push(CriticalityRule {
            endpoints: String::new(),
            site: String::new(),
            tag: "kiosk".into(),
            level: Criticality::Low,
        });
        let at = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
        r.maintenance.push(MaintenanceWindow {
            endpoints: String::new(),
            site: String::new(),
            tag: "kiosk".into(),
            start: at(0),
            end: at(60 * MIN),
            reason: "kiosk refresh".into(),
        });
        r.validate().unwrap();
        let mut e = Engine::new(r);
        // The console is at the dispatch center by its address.
        e.set_facts(
            "console-7",
            Facts {
                addresses: vec!["10.20.3.4/24".parse().unwrap()],
                ..Default::default()
            },
        );
        raise(&mut e, "console-7", 0);
        raise(&mut e, "ws-9", 0);
        assert_eq!(e.ticket(1).unwrap().priority, Priority::P2);
        assert_eq!(e.ticket(2).unwrap().priority, Priority::P3);
        let out = raise(&mut e, "lobby-2", MIN);
        assert_eq!(kinds(&out), vec![Kind::Suppressed]);
        assert!(out[0].text.contains("kiosk refresh"), "{}", out[0].text);
        raise(&mut e, "lobby-2", 61 * MIN);
        assert_eq!(e.ticket(3).unwrap().priority, Priority::P4);
    }

    #[test]
    fn priority_follows_criticality_and_sla_escalates_once_per_breach() {
        let mut r = rules();
        r.criticality
            .push(vitals_proto::ticket_rules::CriticalityRule {
                endpoints: "DISPATCH-*".into(),
                site: String::new(),
                tag: String::new(),
                level: vitals_proto::ticket_rules::Criticality::Critical,
            });
        r.criticality
            .push(vitals_proto::ticket_rules::CriticalityRule {
                endpoints: "kiosk-*".into(),
                site: String::new(),
                tag: String::new(),
                level: vitals_proto::ticket_rules::Criticality::Low,
            });
        let mut e = Engine::new(r.clone());
        raise(&mut e, "dispatch-07", 0);
        raise(&mut e, "kiosk-lobby", 0);
        assert_eq!(e.ticket(1).unwrap().priority, Priority::P2);
        assert_eq!(e.ticket(2).unwrap().priority, Priority::P4);
        // P2: respond within 1 h. Nobody did.
        let esc = e.tick(61 * MIN);
        assert_eq!(kinds(&esc), vec![Kind::Escalated]);
        assert!(
            esc[0]
                .text
                .contains("response SLA for P2 missed; escalated to tier 2")
        );
        assert!(e.tick(62 * MIN).is_empty(), "once per breach");
        // Resolve SLA (8 h) missed too: one more tier.
        let esc = e.tick(8 * 60 * MIN + 1);
        assert_eq!(kinds(&esc), vec![Kind::Escalated]);
        assert_eq!(e.ticket(1).unwrap().tier, 3);
        // A ticket someone acted on does not breach its response SLA.
        let mut e = Engine::new(r);
        raise(&mut e, "dispatch-07", 0);
        e.act(1, "ana", Action::Assign("ana".into()), MIN).unwrap();
        assert!(e.tick(61 * MIN).is_empty());
        assert_eq!(e.ticket(1).unwrap().status, Status::Assigned);
    }

    #[test]
    fn maintenance_suppresses_new_tickets_and_says_so() {
        let mut r = rules();
        let at = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
        r.maintenance
            .push(vitals_proto::ticket_rules::MaintenanceWindow {
                endpoints: "lab-*".into(),
                site: String::new(),
                tag: String::new(),
                start: at(0),
                end: at(60 * MIN),
                reason: "patching".into(),
            });
        let mut e = Engine::new(r);
        let out = raise(&mut e, "lab-3", MIN);
        assert_eq!(kinds(&out), vec![Kind::Suppressed]);
        assert!(
            out[0].text.contains("maintenance (patching)"),
            "{}",
            out[0].text
        );
        assert_eq!(out[0].ticket, None);
        assert_eq!(e.tickets().count(), 0);
        // Others are not covered; after the window the same fault tickets.
        assert_eq!(kinds(&raise(&mut e, "ws-1", MIN)), vec![Kind::Opened]);
        assert_eq!(kinds(&raise(&mut e, "lab-3", 61 * MIN)), vec![Kind::Opened]);
    }

    #[test]
    fn tickets_by_hand_and_titles_from_the_policy() {
        let mut e = Engine::new(rules());
        e.set_checks(HashMap::from([(
            "disk_nearly_full".to_owned(),
            (
                "Disk nearly full".to_owned(),
                "disk.used_percent".to_owned(),
            ),
        )]));
        raise(&mut e, "ws-1", 0);
        assert_eq!(e.ticket(1).unwrap().title, "Disk nearly full");
        let (id, out) = e.open_by_hand(
            "ws-1",
            "Monitor flickers",
            Severity::Info,
            "user reports flicker after lunch",
            "ana",
            MIN,
        );
        assert_eq!(id, 2);
        assert_eq!(out[0].who, "ana");
        assert!(out[0].text.contains("Monitor flickers"));
        let t = e.ticket(2).unwrap();
        assert_eq!((t.check_id.as_str(), t.subject.as_str()), ("manual", "#2"));
        // A fault on the same endpoint never lands on the hand-made ticket.
        raise(&mut e, "ws-1", 2 * MIN);
        assert_eq!(e.ticket(2).unwrap().raise_count, 1);
    }

    #[test]
    fn specialist_actions_are_timeline_entries_with_who() {
        let mut e = Engine::new(rules());
        raise(&mut e, "ws-1", 0);
        let a = e.act(1, "ana", Action::Assign("bo".into()), MIN).unwrap();
        assert_eq!(a[0].who, "ana");
        assert_eq!(a[0].text, "assigned to bo");
        let s = e
            .act(1, "bo", Action::Status(Status::WaitingOnUser), 2 * MIN)
            .unwrap();
        assert_eq!(s[0].text, "assigned → waiting_on_user");
        e.act(
            1,
            "bo",
            Action::Resolve("replaced the toner".into()),
            3 * MIN,
        )
        .unwrap();
        assert_eq!(e.ticket(1).unwrap().status, Status::Resolved);
        // Reopened by hand, with the reason on record.
        let r = e
            .act(
                1,
                "ana",
                Action::Reopen("toner streaks again".into()),
                4 * MIN,
            )
            .unwrap();
        assert_eq!(r[0].kind, Kind::Reopened);
        assert_eq!(r[0].text, "reopened by ana: toner streaks again");
        let t = e.ticket(1).unwrap();
        assert_eq!((t.status, t.resolved_ms), (Status::Assigned, None));
        // Or by status.
        e.act(1, "bo", Action::Resolve("done".into()), 5 * MIN)
            .unwrap();
        e.act(1, "bo", Action::Status(Status::InProgress), 6 * MIN)
            .unwrap();
        assert_eq!(e.ticket(1).unwrap().resolved_ms, None);
        assert!(e.act(99, "bo", Action::Escalate, 0).is_none());
    }
}
