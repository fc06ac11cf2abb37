//! Conversions between the generated wire types and the domain types.
//!
//! Wire to domain is total: a field an older or newer peer left out becomes
//! its default, never an error, because fields are only ever added.

use crate::diag;
use crate::domain as d;
use crate::wire as w;

/// Both directions for a message whose fields match its domain struct one
/// for one. Plain fields have the same type on both sides; `lists` are
/// repeated messages; `opt` are message fields the domain always has
/// (absent on the wire reads as the default); `maybe` are optional
/// messages on both sides. `@in MODULE,` names the domain module when it
/// is not `domain`.
macro_rules! mirror {
    ($name:ident $($rest:tt)*) => {
        mirror!(@in d, $name $($rest)*);
    };
    (@in $dm:ident, $name:ident { $($f:ident),* $(,)? }
     $(lists { $($l:ident),* $(,)? })?
     $(opt { $($o:ident),* $(,)? })?
     $(maybe { $($m:ident),* $(,)? })?) => {
        impl From<$dm::$name> for w::$name {
            fn from(x: $dm::$name) -> Self {
                w::$name {
                    $($f: x.$f,)*
                    $($($l: x.$l.into_iter().map(Into::into).collect(),)*)?
                    $($($o: Some(x.$o.into()),)*)?
                    $($($m: x.$m.map(Into::into),)*)?
                }
            }
        }
        impl From<w::$name> for $dm::$name {
            fn from(x: w::$name) -> Self {
                $dm::$name {
                    $($f: x.$f,)*
                    $($($l: x.$l.into_iter().map(Into::into).collect(),)*)?
                    $($($o: x.$o.unwrap_or_default().into(),)*)?
                    $($($m: x.$m.map(Into::into),)*)?
                }
            }
        }
    };
}

mirror!(Snapshot { taken_at_ms }
    lists { disks, interfaces, probe_errors, temperatures, batteries, printers }
    opt { host, cpu, memory, smart, os, network });
mirror!(HostInfo {
    hostname,
    os_name,
    os_version,
    kernel_version,
    arch,
    uptime_secs,
    boot_time_secs
});
mirror!(CpuInfo { logical_cores, usage_percent, brand, per_core_percent } maybe { load_average });
mirror!(LoadAverage { one, five, fifteen });
mirror!(MemoryInfo {
    total_bytes,
    used_bytes,
    available_bytes,
    swap_total_bytes,
    swap_used_bytes
});
mirror!(DiskInfo {
    name,
    mount_point,
    file_system,
    total_bytes,
    available_bytes,
    removable,
    kind,
    inodes_total,
    inodes_free,
});
mirror!(InterfaceInfo {
    name,
    mac,
    addresses,
    rx_bytes,
    tx_bytes,
    rx_packets,
    tx_packets,
    rx_errors,
    tx_errors,
    mtu,
    oper_state,
    rx_dropped,
    tx_dropped,
    errors_per_min,
    drops_per_min,
    link_lost,
});
mirror!(ProbeError { probe, message });
mirror!(Temperature {
    label,
    celsius,
    max_celsius,
    critical_celsius
});
mirror!(Battery {
    name,
    charge_percent,
    health_percent,
    state,
    cycle_count
});
mirror!(SmartReport { available, reason } lists { devices });
mirror!(SmartDevice {
    device,
    model,
    serial,
    protocol,
    passed,
    temperature_celsius,
    power_on_hours,
    reallocated_sectors,
    pending_sectors,
    media_errors,
    percentage_used,
    error,
});
mirror!(OsHealth {
    reboot_required, reboot_required_since_secs, reboot_reasons, services_checked,
    failed_services, clock_offset_ms,
} lists { users });
mirror!(UserSession {
    user,
    terminal,
    host,
    login_secs
});
mirror!(PrinterInfo {
    name, source, address, state, reasons, accepting_jobs, queued_jobs,
    oldest_job_age_secs, page_count, error,
} lists { supplies });
impl From<d::Supply> for w::Supply {
    fn from(s: d::Supply) -> Self {
        w::Supply {
            name: s.name,
            percent: s.percent,
            kind: s.kind.as_str().to_owned(),
        }
    }
}

/// A supply kind from a newer agent that this side does not know reads
/// as unknown.
impl From<w::Supply> for d::Supply {
    fn from(s: w::Supply) -> Self {
        d::Supply {
            name: s.name,
            percent: s.percent,
            kind: s.kind.parse().unwrap_or_default(),
        }
    }
}
mirror!(NetworkHealth { resolvers } lists { dns, services, wifi } maybe { gateway });
mirror!(Gateway {
    address,
    interface,
    method,
    sent,
    received,
    loss_percent,
    rtt_ms
});
mirror!(DnsCheck {
    name,
    ok,
    millis,
    addresses,
    error
});
mirror!(ServiceCheck {
    name,
    address,
    ok,
    connect_ms,
    error
});
mirror!(WifiInfo {
    interface,
    link_quality,
    signal_dbm
});

mirror!(EndpointSummary {
    endpoint_id,
    hostname,
    platform,
    os,
    online,
    first_seen_ms,
    last_seen_ms,
    agent_version,
    cpu_usage_percent,
    memory_used_percent,
    fullest_disk_percent,
    latest_snapshot_ms,
    addresses,
    enrolled_site,
    enrolled_tags,
    machine_id,
    clone_machine_id,
    revoked_ms,
    revoke_reason,
});

impl From<d::EndpointDetail> for w::EndpointDetail {
    fn from(e: d::EndpointDetail) -> Self {
        w::EndpointDetail {
            summary: Some(e.summary.into()),
            latest: e.latest.map(Into::into),
            state_since_ms: e.state_since_ms,
            committed_seq: e.committed_seq,
            history_len: e.history_len,
        }
    }
}

impl From<w::EndpointDetail> for d::EndpointDetail {
    fn from(e: w::EndpointDetail) -> Self {
        d::EndpointDetail {
            summary: e.summary.unwrap_or_default().into(),
            latest: e.latest.map(Into::into),
            state_since_ms: e.state_since_ms,
            committed_seq: e.committed_seq,
            history_len: e.history_len,
        }
    }
}

impl From<d::HistoryEntry> for w::HistoryEntry {
    fn from(h: d::HistoryEntry) -> Self {
        w::HistoryEntry {
            seq: h.seq,
            received_at_ms: h.received_at_ms,
            snapshot: Some(h.snapshot.into()),
        }
    }
}

impl From<w::HistoryEntry> for d::HistoryEntry {
    fn from(h: w::HistoryEntry) -> Self {
        d::HistoryEntry {
            seq: h.seq,
            received_at_ms: h.received_at_ms,
            snapshot: h.snapshot.unwrap_or_default().into(),
        }
    }
}

/// A fault event from the wire. Fails when the state is missing, since a
/// fault that is neither raised nor cleared means nothing.
impl TryFrom<w::FaultEvent> for d::FaultEvent {
    type Error = String;

    fn try_from(e: w::FaultEvent) -> Result<Self, String> {
        let state = match w::FaultState::try_from(e.state) {
            Ok(w::FaultState::Raised) => d::FaultState::Raised,
            Ok(w::FaultState::Cleared) => d::FaultState::Cleared,
            _ => return Err(format!("fault event \"{}\" has no valid state", e.check_id)),
        };
        if e.check_id.is_empty() {
            return Err("fault event without a check_id".into());
        }
        let severity = severity_from_wire(e.severity);
        Ok(d::FaultEvent {
            check_id: e.check_id,
            subject: e.subject,
            state,
            severity,
            value: e.value,
            evidence: e.evidence,
            at_ms: e.at_ms,
            via: e.via,
        })
    }
}

impl From<d::FaultEvent> for w::FaultEvent {
    fn from(e: d::FaultEvent) -> Self {
        w::FaultEvent {
            check_id: e.check_id,
            subject: e.subject,
            state: match e.state {
                d::FaultState::Raised => w::FaultState::Raised,
                d::FaultState::Cleared => w::FaultState::Cleared,
            } as i32,
            severity: severity_to_wire(e.severity) as i32,
            value: e.value,
            evidence: e.evidence,
            at_ms: e.at_ms,
            via: e.via,
        }
    }
}

impl From<d::FaultRecord> for w::FaultRecord {
    fn from(r: d::FaultRecord) -> Self {
        w::FaultRecord {
            seq: r.seq,
            received_at_ms: r.received_at_ms,
            event: Some(r.event.into()),
        }
    }
}

impl TryFrom<w::FaultRecord> for d::FaultRecord {
    type Error = String;

    fn try_from(r: w::FaultRecord) -> Result<Self, String> {
        Ok(d::FaultRecord {
            seq: r.seq,
            received_at_ms: r.received_at_ms,
            event: r.event.ok_or("fault record without event")?.try_into()?,
        })
    }
}

impl From<&crate::policy::Policy> for w::Policy {
    fn from(p: &crate::policy::Policy) -> Self {
        use crate::policy::Direction;
        w::Policy {
            version: p.version.clone(),
            checks: p
                .checks
                .iter()
                .map(|c| w::Check {
                    id: c.id.clone(),
                    measurement: c.measurement.clone(),
                    direction: match c.direction {
                        Direction::Above => w::Direction::Above,
                        Direction::Below => w::Direction::Below,
                    } as i32,
                    raise: c.raise,
                    clear: c.clear,
                    hold_ms: c.hold.as_millis() as u64,
                    severity: severity_to_wire(c.severity) as i32,
                    title: c.title.clone(),
                    ladder: c.ladder.clone().unwrap_or_default(),
                    ticket_per: c.ticket_per.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

/// A policy from the wire. Checks an agent cannot evaluate (an unknown
/// direction or measurement from a newer collector) are left out, not
/// fatal: the rest of the policy still applies.
impl From<w::Policy> for crate::policy::Policy {
    fn from(p: w::Policy) -> Self {
        use crate::policy::{Check, Direction, probe_of};
        crate::policy::Policy {
            version: p.version,
            checks: p
                .checks
                .into_iter()
                .filter_map(|c| {
                    let direction = match w::Direction::try_from(c.direction) {
                        Ok(w::Direction::Above) => Direction::Above,
                        Ok(w::Direction::Below) => Direction::Below,
                        _ => return None,
                    };
                    probe_of(&c.measurement)?;
                    Some(Check {
                        id: c.id,
                        title: c.title,
                        measurement: c.measurement,
                        direction,
                        raise: c.raise,
                        clear: c.clear,
                        hold: std::time::Duration::from_millis(c.hold_ms),
                        severity: severity_from_wire(c.severity),
                        ladder: Some(c.ladder).filter(|l| !l.is_empty()),
                        ticket_per: if c.ticket_per == "via" {
                            crate::policy::TicketPer::Via
                        } else {
                            crate::policy::TicketPer::Subject
                        },
                    })
                })
                .collect(),
            // Ticket rules stay with the collector.
            tickets: Default::default(),
        }
    }
}

impl From<&crate::tickets::Ticket> for w::Ticket {
    fn from(t: &crate::tickets::Ticket) -> Self {
        w::Ticket {
            id: t.id,
            title: t.title.clone(),
            endpoint_id: t.endpoint.clone(),
            check_id: t.check_id.clone(),
            subject: t.subject.clone(),
            severity: severity_to_wire(t.severity) as i32,
            priority: t.priority.as_str().to_owned(),
            status: t.status.as_str().to_owned(),
            tier: u32::from(t.tier),
            assignee: t.assignee.clone().unwrap_or_default(),
            raise_count: t.raise_count,
            opened_ms: t.opened_ms,
            last_raised_ms: t.last_raised_ms,
            cleared_ms: t.cleared_ms,
            resolved_ms: t.resolved_ms,
            flapping: t.flapping,
            incident: t.incident,
            value: t.value,
            evidence: t.evidence.clone(),
            response_due_ms: t.response_due_ms,
            resolve_due_ms: t.resolve_due_ms,
            members: t.members.keys().cloned().collect(),
        }
    }
}

/// A ticket as a client reads it. Unknown (newer) statuses and priorities
/// read as the nearest safe value rather than failing the whole list.
impl From<w::Ticket> for crate::tickets::Ticket {
    fn from(t: w::Ticket) -> Self {
        crate::tickets::Ticket {
            id: t.id,
            title: t.title,
            endpoint: t.endpoint_id,
            check_id: t.check_id,
            subject: t.subject,
            severity: severity_from_wire(t.severity),
            priority: t
                .priority
                .parse()
                .unwrap_or(crate::ticket_rules::Priority::P1),
            status: t.status.parse().unwrap_or(crate::tickets::Status::New),
            tier: u8::try_from(t.tier).unwrap_or(3),
            assignee: (!t.assignee.is_empty()).then_some(t.assignee),
            raise_count: t.raise_count,
            opened_ms: t.opened_ms,
            last_raised_ms: t.last_raised_ms,
            cleared_ms: t.cleared_ms,
            resolved_ms: t.resolved_ms,
            flapping: t.flapping,
            incident: t.incident,
            value: t.value,
            evidence: t.evidence,
            response_due_ms: t.response_due_ms,
            resolve_due_ms: t.resolve_due_ms,
            responded: false,
            response_breached: false,
            resolve_breached: false,
            raises: Default::default(),
            rungs: Default::default(),
            // What a client is told of each subject is its name.
            members: t
                .members
                .into_iter()
                .map(|m| (m, Default::default()))
                .collect(),
        }
    }
}

impl From<crate::tickets::TicketDetail> for w::TicketDetail {
    fn from(d: crate::tickets::TicketDetail) -> Self {
        w::TicketDetail {
            ticket: Some((&d.ticket).into()),
            timeline: d.timeline.iter().map(Into::into).collect(),
            snapshot_at_fault: d.snapshot.map(Into::into),
            knowledge: d.knowledge.unwrap_or_default(),
        }
    }
}

impl From<w::TicketDetail> for crate::tickets::TicketDetail {
    fn from(d: w::TicketDetail) -> Self {
        crate::tickets::TicketDetail {
            ticket: d.ticket.unwrap_or_default().into(),
            timeline: d.timeline.into_iter().map(Into::into).collect(),
            snapshot: d.snapshot_at_fault.map(Into::into),
            knowledge: (!d.knowledge.is_empty()).then_some(d.knowledge),
        }
    }
}

impl From<&crate::tickets::Entry> for w::TicketEntry {
    fn from(e: &crate::tickets::Entry) -> Self {
        w::TicketEntry {
            ticket: e.ticket,
            incident: e.incident,
            at_ms: e.at_ms,
            who: e.who.clone(),
            kind: e.kind.as_str().to_owned(),
            text: e.text.clone(),
        }
    }
}

impl From<w::TicketEntry> for crate::tickets::Entry {
    fn from(e: w::TicketEntry) -> Self {
        crate::tickets::Entry {
            ticket: e.ticket,
            incident: e.incident,
            at_ms: e.at_ms,
            who: e.who,
            kind: e.kind.parse().unwrap_or(crate::tickets::Kind::Comment),
            text: e.text,
        }
    }
}

pub fn severity_to_wire_i32(s: d::Severity) -> i32 {
    severity_to_wire(s) as i32
}

pub fn severity_from_wire_i32(s: i32) -> d::Severity {
    severity_from_wire(s)
}

fn severity_to_wire(s: d::Severity) -> w::Severity {
    match s {
        d::Severity::Info => w::Severity::Info,
        d::Severity::Warning => w::Severity::Warning,
        d::Severity::Critical => w::Severity::Critical,
    }
}

/// An unknown (newer) severity is kept as the most urgent we know.
fn severity_from_wire(s: i32) -> d::Severity {
    match w::Severity::try_from(s) {
        Ok(w::Severity::Info) => d::Severity::Info,
        Ok(w::Severity::Warning) | Ok(w::Severity::Unspecified) => d::Severity::Warning,
        _ => d::Severity::Critical,
    }
}

mirror!(@in diag, DiagnosticResult { ok, error, text, json, run_ms });

impl From<diag::DiagnosticRequest> for w::DiagnosticRequest {
    fn from(r: diag::DiagnosticRequest) -> Self {
        w::DiagnosticRequest {
            id: r.id,
            kind: r.kind,
            params: r.params.into_iter().collect(),
            timeout_ms: r.timeout.as_millis() as u64,
        }
    }
}

impl From<w::DiagnosticRequest> for diag::DiagnosticRequest {
    fn from(r: w::DiagnosticRequest) -> Self {
        diag::DiagnosticRequest {
            id: r.id,
            kind: r.kind,
            params: r.params.into_iter().collect(),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
        }
    }
}

impl From<w::DiagnosticUpdate> for diag::DiagnosticUpdate {
    fn from(u: w::DiagnosticUpdate) -> Self {
        use w::diagnostic_update::Body;
        diag::DiagnosticUpdate {
            id: u.id,
            body: u.body.map(|b| match b {
                Body::Progress(text) => diag::UpdateBody::Progress(text),
                Body::Result(r) => diag::UpdateBody::Result(r.into()),
            }),
        }
    }
}

impl From<diag::DiagnosticUpdate> for w::DiagnosticUpdate {
    fn from(u: diag::DiagnosticUpdate) -> Self {
        use w::diagnostic_update::Body;
        w::DiagnosticUpdate {
            id: u.id,
            body: u.body.map(|b| match b {
                diag::UpdateBody::Progress(text) => Body::Progress(text),
                diag::UpdateBody::Result(r) => Body::Result(r.into()),
            }),
        }
    }
}

mirror!(@in diag, AuditEntry { id, at_ms, who, role, endpoint_id, kind, outcome, detail, duration_ms, ticket }
    lists { params });

#[cfg(test)]
mod tests;
