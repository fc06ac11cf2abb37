//! Tickets, incidents and their timelines: what the collector's ticket
//! engine keeps, the store persists, and specialists read.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::{Severity, Snapshot};
use crate::ticket_rules::Priority;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Assigned,
    InProgress,
    WaitingOnUser,
    WaitingOnVendor,
    Escalated,
    Resolved,
    Closed,
}

impl Status {
    pub fn is_open(self) -> bool {
        !matches!(self, Status::Resolved | Status::Closed)
    }
}

crate::text_enum!(Status {
    New => "new",
    Assigned => "assigned",
    InProgress => "in_progress",
    WaitingOnUser => "waiting_on_user",
    WaitingOnVendor => "waiting_on_vendor",
    Escalated => "escalated",
    Resolved => "resolved",
    Closed => "closed",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: u64,
    /// What a specialist reads in the queue, such as "Disk nearly full".
    #[serde(default)]
    pub title: String,
    pub endpoint: String,
    pub check_id: String,
    pub subject: String,
    pub severity: Severity,
    pub priority: Priority,
    pub status: Status,
    /// 1 and 2 are support tiers; 3 is the vendor.
    pub tier: u8,
    pub assignee: Option<String>,
    /// Times the fault was raised while this ticket existed.
    pub raise_count: u32,
    pub opened_ms: i64,
    pub last_raised_ms: i64,
    /// Set while the fault is clear; the quiet period runs from here.
    pub cleared_ms: Option<i64>,
    pub resolved_ms: Option<i64>,
    pub flapping: bool,
    pub incident: Option<u64>,
    pub value: f64,
    pub evidence: String,
    /// SLA deadlines, from the priority when the ticket opened.
    pub response_due_ms: i64,
    pub resolve_due_ms: i64,
    /// A person has acted on it (assign, comment, status).
    pub responded: bool,
    /// The response and resolve SLAs already escalated (once each).
    pub response_breached: bool,
    pub resolve_breached: bool,
    /// Raise times within the flap window.
    pub raises: VecDeque<i64>,
    /// The checks raised on it now, with their severities: the rungs of
    /// its problem's ladder (one, for a check that has no ladder). The
    /// ticket's severity is the highest rung's.
    #[serde(default)]
    pub rungs: std::collections::BTreeMap<String, Severity>,
    /// For a ticket of a check with `ticket_per = "via"` (its subject is
    /// then the shared way in, "resolver 10.0.0.53"): the subjects raised
    /// on it now, each with its own rungs and evidence. Empty otherwise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub members: std::collections::BTreeMap<String, Member>,
}

/// One subject of a ticket that covers several (see [`Ticket::members`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Its checks raised now, with their severities.
    pub rungs: std::collections::BTreeMap<String, Severity>,
    /// The evidence of its latest raise.
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    /// The check its tickets share; empty when it spans checks (a print
    /// server's or a DNS server's faults).
    pub check_id: String,
    /// The storm group: "check:ID", "site:NAME|ID", "subnet:NET|ID",
    /// "print_server:HOST", "dns_server:ADDRESS".
    #[serde(default)]
    pub key: String,
    /// What its tickets share, for people: "print server ps01".
    #[serde(default)]
    pub title: String,
    pub opened_ms: i64,
    pub resolved_ms: Option<i64>,
    pub tickets: Vec<u64>,
}

/// What happened, for a ticket's timeline (and for notifications, whose
/// event names these are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Opened,
    FaultRaised,
    FaultCleared,
    Reopened,
    Flapping,
    AutoResolved,
    Escalated,
    Linked,
    IncidentOpened,
    IncidentResolved,
    /// No ticket: a maintenance window covers the endpoint.
    Suppressed,
    Assigned,
    Comment,
    StatusChanged,
    Resolved,
    /// A higher rung of the problem raised, or the highest cleared while a
    /// lower one stands: severity and priority moved.
    SeverityChanged,
    /// A fault on the same desk linked to this ticket as a symptom of its
    /// cause (or one that stopped being a symptom).
    Symptom,
    /// One of the subjects a ticket covers is well again; others are not.
    SubjectCleared,
}

crate::text_enum!(Kind {
    Opened => "opened",
    FaultRaised => "fault_raised",
    FaultCleared => "fault_cleared",
    Reopened => "reopened",
    Flapping => "flapping",
    AutoResolved => "auto_resolved",
    Escalated => "escalated",
    Linked => "linked",
    IncidentOpened => "incident_opened",
    IncidentResolved => "incident_resolved",
    Suppressed => "suppressed",
    Assigned => "assigned",
    Comment => "comment",
    StatusChanged => "status_changed",
    Resolved => "resolved",
    SeverityChanged => "severity_changed",
    Symptom => "symptom",
    SubjectCleared => "subject_cleared",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The ticket, or none for incident-wide and suppression entries.
    pub ticket: Option<u64>,
    pub incident: Option<u64>,
    pub at_ms: i64,
    pub who: String,
    pub kind: Kind,
    pub text: String,
}

/// A ticket as a specialist opens it: the ticket, its timeline (oldest
/// first), the endpoint's snapshot when it was raised, and the knowledge
/// base's remediation steps for its check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketDetail {
    pub ticket: Ticket,
    pub timeline: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<String>,
}
