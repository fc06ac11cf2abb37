//! What the templates show, worked out in Rust: times as text, SLA clocks,
//! ticket rows. Templates only print these; no rule lives in a template.

use vitals_proto::domain::EndpointSummary;
use vitals_proto::identity::Role;
use vitals_proto::report::ago;
use vitals_proto::ticket_rules::Membership;
use vitals_proto::tickets::Ticket;

use super::sessions::Session;

/// The frame around every signed-in page: who is signed in, the CSRF token
/// for its forms, which navigation item is current, what it may do.
pub struct Chrome {
    pub account: String,
    pub role: &'static str,
    pub csrf: String,
    pub nav: &'static str,
    pub can_act: bool,
    pub is_admin: bool,
}

impl Chrome {
    pub fn new(s: &Session, nav: &'static str) -> Self {
        Chrome {
            account: s.account.clone(),
            role: s.role.as_str(),
            csrf: s.csrf.clone(),
            nav,
            can_act: s.role.allows(Role::Specialist),
            is_admin: s.role.allows(Role::Admin),
        }
    }

    /// `aria-current` for a navigation item.
    pub fn current(&self, item: &str) -> &'static str {
        if self.nav == item { "page" } else { "false" }
    }
}

/// A value for a URL's query string.
pub fn query_value(s: &str) -> String {
    askama::filters::urlencode_strict(s)
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// An RFC 3339 time in UTC, to the second; "-" when unset.
pub fn at(ms: i64) -> String {
    if ms <= 0 {
        "-".into()
    } else {
        vitals_proto::rfc3339_seconds(ms)
    }
}

/// A length of time, coarse: "3h 5m", "2d 4h", "45s".
pub fn span(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// An SLA clock: time left, or how long ago it was missed.
pub struct Clock {
    pub text: String,
    /// "late", "soon" (under an hour) or "ok"; a class for the colour, the
    /// text says the same in words.
    pub state: &'static str,
}

pub fn clock(due_ms: i64, now_ms: i64, done: bool) -> Clock {
    if done {
        return Clock {
            text: "met".into(),
            state: "ok",
        };
    }
    let left = due_ms - now_ms;
    if left < 0 {
        Clock {
            text: format!("{} overdue", span(left)),
            state: "late",
        }
    } else {
        Clock {
            text: format!("{} left", span(left)),
            state: if left < 3_600_000 { "soon" } else { "ok" },
        }
    }
}

/// One line of the queue.
pub struct QueueRow {
    pub id: u64,
    pub title: String,
    pub subject: String,
    pub endpoint: String,
    pub priority: &'static str,
    pub status: &'static str,
    pub assignee: String,
    pub incident: String,
    pub sla: Clock,
    pub raised: String,
    pub flapping: bool,
}

impl QueueRow {
    pub fn new(t: &Ticket, now_ms: i64) -> Self {
        let sla = if t.status.is_open() {
            clock(t.resolve_due_ms, now_ms, false)
        } else {
            Clock {
                text: t.status.as_str().replace('_', " "),
                state: "ok",
            }
        };
        QueueRow {
            id: t.id,
            title: t.title.clone(),
            subject: t.subject.clone(),
            endpoint: t.endpoint.clone(),
            priority: t.priority.as_str(),
            status: t.status.as_str(),
            assignee: t.assignee.clone().unwrap_or_default(),
            incident: t.incident.map(|i| i.to_string()).unwrap_or_default(),
            sla,
            raised: ago(t.last_raised_ms, now_ms),
            flapping: t.flapping,
        }
    }
}

/// One line of the fleet.
pub struct FleetRow {
    pub id: String,
    pub host: String,
    pub online: bool,
    pub os: String,
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub seen: String,
    pub tickets: usize,
    pub sites: Vec<String>,
    pub tags: Vec<String>,
}

impl FleetRow {
    pub fn new(e: &EndpointSummary, m: &Membership, tickets: usize, now_ms: i64) -> Self {
        let pct = |v: f32, seen: bool| {
            if seen { format!("{v:.0}%") } else { "-".into() }
        };
        let seen = e.latest_snapshot_ms > 0;
        FleetRow {
            id: e.endpoint_id.clone(),
            host: e.hostname.clone(),
            online: e.online,
            os: e.os.clone(),
            cpu: pct(e.cpu_usage_percent, seen),
            memory: pct(e.memory_used_percent, seen),
            disk: pct(e.fullest_disk_percent, seen),
            seen: ago(e.last_seen_ms, now_ms),
            tickets,
            sites: m.sites.clone(),
            tags: m.tags.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_say_left_overdue_and_soon() {
        let now = 10_000_000;
        let c = clock(now + 2 * 3_600_000 + 5 * 60_000, now, false);
        assert_eq!((c.text.as_str(), c.state), ("2h 5m left", "ok"));
        let c = clock(now + 30 * 60_000, now, false);
        assert_eq!((c.text.as_str(), c.state), ("30m left", "soon"));
        let c = clock(now - 90_000, now, false);
        assert_eq!((c.text.as_str(), c.state), ("1m overdue", "late"));
        assert_eq!(clock(now - 1, now, true).text, "met");
        assert_eq!(span(3 * 86_400_000 + 7_200_000), "3d 2h");
    }
}
