//! Tickets that cover several subjects of one desk (`ticket_per = "via"`).
//!
//! When the resolver a desk asks is dead, every DNS name it checks fails;
//! when the gateway is down, every key service behind it does. That is one
//! problem with one cause, so it is one ticket: its subject is the shared
//! way in ("resolver 10.0.0.53", "gateway 10.78.0.1", as the agent reports
//! it in the event's `via`), and its members are the subjects failing now,
//! each with its own rungs and evidence. The ticket's rungs are the union
//! of its members' rungs, so ladders work across members as on one
//! subject: it clears when its last member clears.
//!
//! A subject whose event has no `via` (an older agent, a way in the agent
//! does not know) is a ticket of its own, as for any other check.

use vitals_proto::domain::{FaultEvent, FaultState};
use vitals_proto::tickets::{Entry, Kind, Ticket};

use super::{Engine, Key, SYSTEM, entry};

impl Engine {
    fn by_via(&self, check: &str) -> bool {
        self.checks.get(check).is_some_and(|c| c.by_via)
    }

    /// The ticket key of fault `e` from `endpoint`.
    pub(super) fn event_key(&self, endpoint: &str, e: &FaultEvent) -> Key {
        let problem = self.problem_of(&e.check_id);
        if self.by_via(&e.check_id) {
            // A clear goes to the ticket its subject is on, whatever way
            // in it reports now.
            if e.state == FaultState::Cleared
                && let Some(key) = self.member_key(endpoint, problem, &e.subject)
            {
                return key;
            }
            if !e.via.is_empty() {
                return Key::new(endpoint, problem, &e.via);
            }
        }
        Key::new(endpoint, problem, &e.subject)
    }

    /// The key of the open ticket of `problem` on `endpoint` that has
    /// `subject` among its members.
    fn member_key(&self, endpoint: &str, problem: &str, subject: &str) -> Option<Key> {
        self.by_endpoint
            .get(endpoint)?
            .iter()
            .rev()
            .filter_map(|id| self.tickets.get(id))
            .find(|t| {
                t.status.is_open()
                    && t.members.contains_key(subject)
                    && self.problem_of(&t.check_id) == problem
            })
            .map(|t| self.key_of(t))
    }

    /// Raise `e` joins ticket `id` as one of its members.
    pub(super) fn join(&mut self, id: u64, e: &FaultEvent) {
        let Some(t) = self.tickets.get_mut(&id) else {
            return;
        };
        let m = t.members.entry(e.subject.clone()).or_default();
        m.rungs.insert(e.check_id.clone(), e.severity);
        m.evidence = e.evidence.clone();
        t.evidence = evidence_of(t);
    }

    /// Clear `e` of one member of the ticket at `key`. `Some` when the
    /// ticket's problem still stands at the same rung through its other
    /// members (said on its timeline); `None` when the ticket must change
    /// as for any clear (a rung down, or clear altogether).
    pub(super) fn leave(&mut self, key: &Key, e: &FaultEvent, now: i64) -> Option<Vec<Entry>> {
        let id = *self.latest.get(key)?;
        let t = self.tickets.get_mut(&id).filter(|t| t.status.is_open())?;
        let member = t.members.get_mut(&e.subject)?;
        member.rungs.remove(&e.check_id);
        if member.rungs.is_empty() {
            t.members.remove(&e.subject);
        }
        t.evidence = evidence_of(t);
        if !t
            .members
            .values()
            .any(|m| m.rungs.contains_key(&e.check_id))
        {
            return None;
        }
        let still: Vec<&str> = t.members.keys().map(String::as_str).collect();
        Some(vec![entry(
            id,
            now,
            SYSTEM,
            Kind::SubjectCleared,
            &format!(
                "{} is well again; still failing: {}",
                e.subject,
                still.join(", ")
            ),
        )])
    }
}

/// A ticket's evidence from its members: how many fail through its way
/// in, then each one's own sentence.
fn evidence_of(t: &Ticket) -> String {
    match t.members.len() {
        0 => t.evidence.clone(),
        1 => t.members.values().map(|m| m.evidence.clone()).collect(),
        n => {
            let each: Vec<String> = t
                .members
                .values()
                .map(|m| {
                    let s = m.evidence.trim_end();
                    if s.ends_with('.') {
                        s.to_owned()
                    } else {
                        format!("{s}.")
                    }
                })
                .collect();
            format!("{}: {n} failing together. {}", t.subject, each.join(" "))
        }
    }
}
