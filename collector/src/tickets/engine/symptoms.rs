//! Symptoms and their causes on one desk (`[[tickets.depends]]`).
//!
//! With the gateway unreachable, a desk's DNS and key services fail too;
//! a help desk wants the one cause, not three tickets. While a cause is
//! raised, a symptom that raises is linked to the cause's ticket (a
//! `symptom` timeline entry) and opens no ticket of its own. Probes run on
//! their own intervals, so a symptom often reports first: when a cause
//! raises, the symptom tickets its desk opened within the rule's window,
//! and that nobody has touched yet, are folded under it (resolved, with
//! the reason). When the cause clears, its symptoms settle: those still
//! raised when the rule's `settle` time has run stand on their own (their
//! tickets open, or reopen), those that clear meanwhile were only symptoms.
//! Symptoms clear a probe or two after their cause; without the wait,
//! every recovery would open and resolve a ticket per symptom.
//!
//! Which symptoms are linked lives in memory, like storm windows: after a
//! restart a symptom still raised waits for its next raise to be ticketed.

use vitals_proto::domain::{FaultEvent, FaultState};
use vitals_proto::tickets::{Entry, Kind, Status};

use super::{Engine, Key, SYSTEM, entry};

/// One fault a folded ticket held.
struct Fault {
    check: String,
    severity: vitals_proto::domain::Severity,
    subject: String,
    evidence: String,
    via: String,
}

/// A fault raised now as a symptom of the `cause` ticket.
#[derive(Debug, Clone)]
pub(super) struct Symptom {
    cause: u64,
    event: FaultEvent,
    /// Set once the cause cleared: when it stands on its own if still raised.
    settles_at: Option<i64>,
}

impl Engine {
    /// The ticket of a cause of `check` raised now on `endpoint`, if any.
    fn active_cause(&self, endpoint: &str, check: &str) -> Option<u64> {
        let ids = self.by_endpoint.get(endpoint)?;
        self.depends
            .iter()
            .filter(|d| d.symptoms.iter().any(|s| s == check))
            .find_map(|d| {
                ids.iter().copied().find(|id| {
                    self.tickets.get(id).is_some_and(|t| {
                        t.status.is_open()
                            && t.cleared_ms.is_none()
                            && (t.rungs.keys().any(|r| d.cause.contains(r))
                                || d.cause.contains(&t.check_id))
                    })
                })
            })
    }

    /// A raise of a symptom while its cause stands: linked, no ticket.
    pub(super) fn as_symptom(
        &mut self,
        endpoint: &str,
        e: &FaultEvent,
        now: i64,
    ) -> Option<Vec<Entry>> {
        let cause = self.active_cause(endpoint, &e.check_id)?;
        self.symptoms.insert(
            Key::new(endpoint, &e.check_id, &e.subject),
            Symptom {
                cause,
                event: e.clone(),
                settles_at: None,
            },
        );
        Some(vec![entry(
            cause,
            now,
            SYSTEM,
            Kind::Symptom,
            &format!("symptom: {} {}: {}", e.check_id, e.subject, e.evidence),
        )])
    }

    /// A linked symptom clears: said on its cause's ticket.
    pub(super) fn symptom_cleared(
        &mut self,
        endpoint: &str,
        e: &FaultEvent,
        now: i64,
    ) -> Option<Vec<Entry>> {
        let s = self
            .symptoms
            .remove(&Key::new(endpoint, &e.check_id, &e.subject))?;
        Some(vec![entry(
            s.cause,
            now,
            SYSTEM,
            Kind::Symptom,
            &format!("symptom cleared: {} {}", e.check_id, e.subject),
        )])
    }

    /// After cause `e` raised on ticket `cause`: the desk's recent,
    /// untouched symptom tickets are folded under it.
    pub(super) fn fold_symptoms(&mut self, cause: u64, e: &FaultEvent, now: i64) -> Vec<Entry> {
        // Most raises are no one's cause: leave before any work.
        if !self.depends.iter().any(|d| d.cause.contains(&e.check_id)) {
            return Vec::new();
        }
        let Some(endpoint) = self.tickets.get(&cause).map(|t| t.endpoint.clone()) else {
            return Vec::new();
        };
        let deps: Vec<_> = self
            .depends
            .iter()
            .filter(|d| d.cause.contains(&e.check_id))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for d in &deps {
            let since = now - d.window.as_millis() as i64;
            let ids: Vec<u64> = self
                .by_endpoint
                .get(&endpoint)
                .map(|ids| ids.iter().copied().collect())
                .unwrap_or_default();
            for id in ids.into_iter().filter(|id| *id != cause) {
                let Some(t) = self.tickets.get_mut(&id) else {
                    continue;
                };
                let symptom = t.rungs.keys().any(|r| d.symptoms.contains(r))
                    || (t.rungs.is_empty() && d.symptoms.contains(&t.check_id));
                if !symptom
                    || !t.status.is_open()
                    || t.cleared_ms.is_some()
                    || t.responded
                    || t.opened_ms < since
                {
                    continue;
                }
                t.status = Status::Resolved;
                t.resolved_ms = Some(now);
                // Each subject it covers, with its rungs, is a symptom; a
                // ticket of many subjects reached one way brings them all.
                let (value, via) = (t.value, t.subject.clone());
                let faults: Vec<Fault> = if t.members.is_empty() {
                    let rungs = if t.rungs.is_empty() {
                        vec![(t.check_id.clone(), t.severity)]
                    } else {
                        t.rungs.iter().map(|(c, s)| (c.clone(), *s)).collect()
                    };
                    rungs
                        .into_iter()
                        .map(|(check, severity)| Fault {
                            check,
                            severity,
                            subject: t.subject.clone(),
                            evidence: t.evidence.clone(),
                            via: String::new(),
                        })
                        .collect()
                } else {
                    std::mem::take(&mut t.members)
                        .into_iter()
                        .flat_map(|(subject, m)| {
                            let via = via.clone();
                            m.rungs.into_iter().map(move |(check, severity)| Fault {
                                check,
                                severity,
                                subject: subject.clone(),
                                evidence: m.evidence.clone(),
                                via: via.clone(),
                            })
                        })
                        .collect()
                };
                out.push(entry(
                    id,
                    now,
                    SYSTEM,
                    Kind::Symptom,
                    &format!(
                        "a symptom of ticket {cause} ({} {}); resolved here, followed there",
                        e.check_id, e.subject
                    ),
                ));
                for f in faults {
                    out.push(entry(
                        cause,
                        now,
                        SYSTEM,
                        Kind::Symptom,
                        &format!("symptom: {} {}: {}", f.check, f.subject, f.evidence),
                    ));
                    self.symptoms.insert(
                        Key::new(&endpoint, &f.check, &f.subject),
                        Symptom {
                            cause,
                            event: FaultEvent {
                                check_id: f.check,
                                subject: f.subject,
                                state: FaultState::Raised,
                                severity: f.severity,
                                value,
                                evidence: f.evidence,
                                at_ms: now,
                                via: f.via,
                            },
                            settles_at: None,
                        },
                    );
                }
            }
        }
        out
    }

    /// The cause on ticket `cause` cleared: its symptoms start to settle.
    pub(super) fn release_symptoms(&mut self, cause: u64, now: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut due_now = false;
        for s in self
            .symptoms
            .values_mut()
            .filter(|s| s.cause == cause && s.settles_at.is_none())
        {
            let settle = self
                .depends
                .iter()
                .filter(|d| d.symptoms.contains(&s.event.check_id))
                .map(|d| d.settle)
                .max()
                .unwrap_or_default();
            s.settles_at = Some(now + settle.as_millis() as i64);
            due_now |= settle.is_zero();
            out.push(entry(
                cause,
                now,
                SYSTEM,
                Kind::Symptom,
                &format!(
                    "the cause cleared; {} {} still raised stands on its own unless it clears within {}",
                    s.event.check_id,
                    s.event.subject,
                    humantime::format_duration(settle)
                ),
            ));
        }
        if due_now {
            out.extend(self.settle_symptoms(now));
        }
        out
    }

    /// Symptoms whose cause cleared `settle` ago and that are still raised:
    /// linked again if another cause stands now, else on their own.
    pub(super) fn settle_symptoms(&mut self, now: i64) -> Vec<Entry> {
        if self.symptoms.values().all(|s| s.settles_at.is_none()) {
            return Vec::new();
        }
        let due: Vec<Key> = self
            .symptoms
            .iter()
            .filter(|(_, s)| s.settles_at.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in due {
            let Some(s) = self.symptoms.remove(&k) else {
                continue;
            };
            if let Some(linked) = self.as_symptom(&k.endpoint, &s.event, now) {
                out.extend(linked);
                continue;
            }
            let key = self.event_key(&k.endpoint, &s.event);
            out.extend(self.raised(key, &s.event, now));
        }
        out
    }
}
