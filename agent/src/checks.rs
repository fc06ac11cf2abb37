//! Checks: the collector's policy evaluated on every sample.
//!
//! Each (check, subject) pair has its own state. A value past the raise
//! level starts a hold; if it is still past when the hold has run, the fault
//! is raised. A raised fault clears only when the value is back past the
//! clear level (hysteresis), so a value hovering at the edge does not flap.
//! Events come out of [`Checks::evaluate`] at once, not at the next report.

use std::collections::HashMap;

use vitals_proto::domain::{FaultEvent, FaultState, Snapshot};
use vitals_proto::policy::{Check, Policy};

/// One measured value: (measurement, subject, value).
pub type Measure = (&'static str, String, f64);

/// Everything a snapshot measures, per subject.
pub fn measurements(s: &Snapshot) -> Vec<Measure> {
    let mut out = vec![
        (
            "cpu.usage_percent",
            "cpu".to_owned(),
            s.cpu.usage_percent as f64,
        ),
        (
            "memory.used_percent",
            "memory".to_owned(),
            s.memory.used_percent() as f64,
        ),
    ];
    if s.memory.swap_total_bytes > 0 {
        let swap = s.memory.swap_used_bytes as f64 * 100.0 / s.memory.swap_total_bytes as f64;
        out.push(("swap.used_percent", "swap".to_owned(), swap));
    }
    for d in &s.disks {
        if d.total_bytes > 0 {
            out.push((
                "disk.used_percent",
                d.mount_point.clone(),
                d.used_percent() as f64,
            ));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Past the raise level since this time (ms), waiting out the hold.
    Pending(i64),
    Raised,
}

#[derive(Debug, Default)]
pub struct Checks {
    policy: Option<Policy>,
    state: HashMap<(String, String), State>,
}

impl Checks {
    pub fn new(policy: Policy) -> Self {
        Checks {
            policy: Some(policy),
            state: HashMap::new(),
        }
    }

    pub fn policy_version(&self) -> &str {
        self.policy
            .as_ref()
            .map(|p| p.version.as_str())
            .unwrap_or("")
    }

    /// Replaces the policy. Faults of checks that are gone, or whose levels
    /// changed, are cleared and judged afresh on the next sample.
    pub fn set_policy(&mut self, policy: Policy, now_ms: i64) -> Vec<FaultEvent> {
        let old = self.policy.replace(policy);
        let mut events = Vec::new();
        let Some(old) = old else { return events };
        let keep = |id: &str| {
            let before = old.checks.iter().find(|c| c.id == id);
            let after = self
                .policy
                .as_ref()
                .and_then(|p| p.checks.iter().find(|c| c.id == id));
            before.is_some() && before == after
        };
        let gone: Vec<(String, String)> = self
            .state
            .keys()
            .filter(|(id, _)| !keep(id))
            .cloned()
            .collect();
        for key in gone {
            if self.state.remove(&key) == Some(State::Raised)
                && let Some(check) = old.checks.iter().find(|c| c.id == key.0)
            {
                events.push(event(
                    check,
                    &key.1,
                    FaultState::Cleared,
                    0.0,
                    now_ms,
                    "the policy no longer holds this check as it was".into(),
                ));
            }
        }
        events
    }

    /// Judges one sample; returns the faults raised and cleared by it.
    pub fn evaluate(&mut self, snapshot: &Snapshot, now_ms: i64) -> Vec<FaultEvent> {
        self.judge(snapshot, now_ms, false)
    }

    /// Judges one sample on its own, as if every hold had already run: the
    /// faults this policy would raise now.
    pub fn evaluate_once(policy: Policy, snapshot: &Snapshot) -> Vec<FaultEvent> {
        Checks::new(policy).judge(snapshot, snapshot.taken_at_ms, true)
    }

    fn judge(&mut self, snapshot: &Snapshot, now_ms: i64, ignore_hold: bool) -> Vec<FaultEvent> {
        let Some(policy) = &self.policy else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for (measurement, subject, value) in measurements(snapshot) {
            for check in policy
                .checks
                .iter()
                .filter(|c| c.measurement == measurement)
            {
                let key = (check.id.clone(), subject.clone());
                let state = self.state.get(&key).copied();
                match state {
                    Some(State::Raised) => {
                        if check.clears(value) {
                            self.state.remove(&key);
                            events.push(event(
                                check,
                                &subject,
                                FaultState::Cleared,
                                value,
                                now_ms,
                                format!(
                                    "{subject}: {} back to {value:.1} (clears below {})",
                                    check.measurement, check.clear
                                ),
                            ));
                        }
                    }
                    _ if !check.raises(value) => {
                        self.state.remove(&key);
                    }
                    pending => {
                        let since = match pending {
                            Some(State::Pending(t)) => t,
                            _ => now_ms,
                        };
                        let held = now_ms - since >= check.hold.as_millis() as i64;
                        if ignore_hold || held {
                            self.state.insert(key, State::Raised);
                            events.push(event(
                                check,
                                &subject,
                                FaultState::Raised,
                                value,
                                now_ms,
                                format!(
                                    "{subject}: {} at {value:.1} (raises at {}, held {}s)",
                                    check.measurement,
                                    check.raise,
                                    (now_ms - since) / 1000
                                ),
                            ));
                        } else {
                            self.state.insert(key, State::Pending(since));
                        }
                    }
                }
            }
        }
        events
    }
}

fn event(
    check: &Check,
    subject: &str,
    state: FaultState,
    value: f64,
    at_ms: i64,
    evidence: String,
) -> FaultEvent {
    FaultEvent {
        check_id: check.id.clone(),
        subject: subject.to_owned(),
        state,
        severity: check.severity,
        value,
        evidence,
        at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vitals_proto::domain::{DiskInfo, Severity};
    use vitals_proto::policy::Direction;

    fn policy(hold_secs: u64) -> Policy {
        Policy {
            version: "t".into(),
            checks: vec![Check {
                id: "disk_nearly_full".into(),
                title: String::new(),
                measurement: "disk.used_percent".into(),
                direction: Direction::Above,
                raise: 95.0,
                clear: 90.0,
                hold: Duration::from_secs(hold_secs),
                severity: Severity::Warning,
            }],
        }
    }

    fn disk(used_percent: u64) -> Snapshot {
        Snapshot {
            disks: vec![DiskInfo {
                mount_point: "/srv".into(),
                total_bytes: 100,
                available_bytes: 100 - used_percent,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Feeds (seconds, used %) samples; returns (second, state) of events.
    fn run(hold: u64, samples: &[(i64, u64)]) -> Vec<(i64, FaultState)> {
        let mut c = Checks::new(policy(hold));
        samples
            .iter()
            .flat_map(|(t, used)| {
                c.evaluate(&disk(*used), t * 1000)
                    .into_iter()
                    .map(move |e| (t, e))
            })
            .map(|(t, e)| (*t, e.state))
            .collect()
    }

    #[test]
    fn raise_after_hold_and_clear_with_hysteresis() {
        use FaultState::*;
        // (samples, expected events) table.
        // (hold seconds, samples as (second, used %), expected events)
        type Case<'a> = (u64, &'a [(i64, u64)], &'a [(i64, FaultState)]);
        let cases: &[Case] = &[
            // No hold: raised at once, cleared only below 90.
            (
                0,
                &[(0, 97), (1, 93), (2, 92), (3, 89)],
                &[(0, Raised), (3, Cleared)],
            ),
            // Hold 60 s: a short spike raises nothing.
            (60, &[(0, 97), (30, 97), (40, 80), (50, 97), (100, 97)], &[]),
            // Held long enough: raised when the hold has run.
            (
                60,
                &[(0, 97), (30, 97), (60, 96), (61, 97)],
                &[(60, Raised)],
            ),
            // Hovering at the edge does not flap.
            (
                0,
                &[(0, 95), (1, 94), (2, 95), (3, 91), (4, 96)],
                &[(0, Raised)],
            ),
            // Re-raised after a real clear.
            (
                0,
                &[(0, 99), (1, 50), (2, 99)],
                &[(0, Raised), (1, Cleared), (2, Raised)],
            ),
        ];
        for (hold, samples, expected) in cases {
            assert_eq!(
                &run(*hold, samples),
                expected,
                "hold {hold}, samples {samples:?}"
            );
        }
    }

    #[test]
    fn events_carry_value_subject_and_evidence() {
        let mut c = Checks::new(policy(0));
        let e = c.evaluate(&disk(97), 5_000).pop().unwrap();
        assert_eq!(e.check_id, "disk_nearly_full");
        assert_eq!(e.subject, "/srv");
        assert_eq!(e.value, 97.0);
        assert_eq!(e.at_ms, 5_000);
        assert!(
            e.evidence.contains("/srv: disk.used_percent at 97.0"),
            "{}",
            e.evidence
        );
    }

    #[test]
    fn once_ignores_hold_and_policy_change_clears() {
        let events = Checks::evaluate_once(policy(600), &disk(99));
        assert_eq!(events.len(), 1);
        let mut c = Checks::new(policy(0));
        assert_eq!(c.evaluate(&disk(99), 0).len(), 1);
        let mut changed = policy(0);
        changed.checks[0].raise = 99.5;
        let cleared = c.set_policy(changed, 10);
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, FaultState::Cleared);
        // Judged afresh under the new levels: 99 no longer raises.
        assert!(c.evaluate(&disk(99), 20).is_empty());
    }
}
