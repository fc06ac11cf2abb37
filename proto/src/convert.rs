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
mirror!(Supply { name, percent });
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

impl From<d::EndpointSummary> for w::EndpointSummary {
    fn from(s: d::EndpointSummary) -> Self {
        w::EndpointSummary {
            endpoint_id: s.endpoint_id,
            hostname: s.hostname,
            platform: s.platform,
            os: s.os,
            online: s.online,
            first_seen_ms: s.first_seen_ms,
            last_seen_ms: s.last_seen_ms,
            agent_version: s.agent_version,
            cpu_usage_percent: s.cpu_usage_percent,
            memory_used_percent: s.memory_used_percent,
            fullest_disk_percent: s.fullest_disk_percent,
            latest_snapshot_ms: s.latest_snapshot_ms,
        }
    }
}

impl From<w::EndpointSummary> for d::EndpointSummary {
    fn from(s: w::EndpointSummary) -> Self {
        d::EndpointSummary {
            endpoint_id: s.endpoint_id,
            hostname: s.hostname,
            platform: s.platform,
            os: s.os,
            online: s.online,
            first_seen_ms: s.first_seen_ms,
            last_seen_ms: s.last_seen_ms,
            agent_version: s.agent_version,
            cpu_usage_percent: s.cpu_usage_percent,
            memory_used_percent: s.memory_used_percent,
            fullest_disk_percent: s.fullest_disk_percent,
            latest_snapshot_ms: s.latest_snapshot_ms,
        }
    }
}

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
                    })
                })
                .collect(),
            // Ticket rules stay with the collector.
            tickets: Default::default(),
        }
    }
}

/// A snake_case serde name (ticket status, priority, timeline kind).
pub fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Parses a snake_case serde name; `None` if it is not one.
pub fn parse_name<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
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
            priority: parse_name(&t.priority).unwrap_or(crate::ticket_rules::Priority::P1),
            status: parse_name(&t.status).unwrap_or(crate::tickets::Status::New),
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
            kind: name_of(&e.kind),
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
            kind: parse_name(&e.kind).unwrap_or(crate::tickets::Kind::Comment),
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
mod tests {
    use super::*;

    fn sample() -> d::Snapshot {
        d::Snapshot {
            taken_at_ms: 1_700_000_000_000,
            host: d::HostInfo {
                hostname: "dispatch-07".into(),
                os_name: "Debian GNU/Linux".into(),
                os_version: "12".into(),
                kernel_version: "6.1.0".into(),
                arch: "x86_64".into(),
                uptime_secs: 3600,
                boot_time_secs: 1_699_996_400,
            },
            cpu: d::CpuInfo {
                logical_cores: 8,
                usage_percent: 12.5,
                load_average: Some(d::LoadAverage {
                    one: 0.5,
                    five: 0.25,
                    fifteen: 0.125,
                }),
                brand: "Example CPU".into(),
                per_core_percent: vec![10.0, 15.0],
            },
            memory: d::MemoryInfo {
                total_bytes: 16 << 30,
                used_bytes: 4 << 30,
                available_bytes: 12 << 30,
                swap_total_bytes: 1 << 30,
                swap_used_bytes: 0,
            },
            disks: vec![d::DiskInfo {
                name: "/dev/sda1".into(),
                mount_point: "/".into(),
                file_system: "ext4".into(),
                total_bytes: 100,
                available_bytes: 40,
                removable: false,
                kind: "ssd".into(),
                inodes_total: 1000,
                inodes_free: 10,
            }],
            interfaces: vec![d::InterfaceInfo {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["192.0.2.10/24".into()],
                rx_bytes: 1,
                tx_bytes: 2,
                rx_packets: 3,
                tx_packets: 4,
                rx_errors: 5,
                tx_errors: 6,
                mtu: 1500,
                oper_state: "up".into(),
                rx_dropped: 7,
                tx_dropped: 8,
                errors_per_min: Some(1.5),
                drops_per_min: None,
                link_lost: true,
            }],
            probe_errors: vec![d::ProbeError {
                probe: "disks".into(),
                message: "permission denied".into(),
            }],
            temperatures: vec![d::Temperature {
                label: "coretemp Package id 0".into(),
                celsius: 55.0,
                max_celsius: Some(80.0),
                critical_celsius: Some(100.0),
            }],
            batteries: vec![d::Battery {
                name: "BAT0".into(),
                charge_percent: 80.0,
                health_percent: 71.0,
                state: "discharging".into(),
                cycle_count: Some(412),
            }],
            smart: d::SmartReport {
                available: true,
                reason: String::new(),
                devices: vec![d::SmartDevice {
                    device: "/dev/nvme0".into(),
                    model: "Example SSD".into(),
                    serial: "S1".into(),
                    protocol: "NVMe".into(),
                    passed: Some(true),
                    temperature_celsius: Some(41),
                    power_on_hours: Some(9000),
                    reallocated_sectors: None,
                    pending_sectors: None,
                    media_errors: Some(0),
                    percentage_used: Some(3),
                    error: String::new(),
                }],
            },
            os: d::OsHealth {
                reboot_required: true,
                reboot_required_since_secs: Some(1_699_000_000),
                reboot_reasons: vec!["linux-image-6.1.0".into()],
                services_checked: true,
                failed_services: vec!["cups.service".into()],
                users: vec![d::UserSession {
                    user: "ana".into(),
                    terminal: "tty1".into(),
                    host: String::new(),
                    login_secs: 1_699_999_000,
                }],
                clock_offset_ms: Some(-1500),
            },
            printers: vec![d::PrinterInfo {
                name: "Dispatch".into(),
                source: "cups".into(),
                address: "ipp://printer.example/ipp/print".into(),
                state: "stopped".into(),
                reasons: vec!["media-jam-error".into()],
                accepting_jobs: true,
                queued_jobs: 2,
                oldest_job_age_secs: Some(600),
                supplies: vec![d::Supply {
                    name: "Black Toner".into(),
                    percent: Some(4.0),
                }],
                page_count: Some(12345),
                error: String::new(),
            }],
            network: d::NetworkHealth {
                gateway: Some(d::Gateway {
                    address: "192.0.2.1".into(),
                    interface: "eth0".into(),
                    method: "icmp".into(),
                    sent: 4,
                    received: 3,
                    loss_percent: 25.0,
                    rtt_ms: Some(0.7),
                }),
                dns: vec![d::DnsCheck {
                    name: "erp.example".into(),
                    ok: false,
                    millis: 5000.0,
                    addresses: vec![],
                    error: "timed out".into(),
                }],
                services: vec![d::ServiceCheck {
                    name: "erp".into(),
                    address: "erp.example:443".into(),
                    ok: true,
                    connect_ms: Some(3.5),
                    error: String::new(),
                }],
                wifi: vec![d::WifiInfo {
                    interface: "wlan0".into(),
                    link_quality: 40.0,
                    signal_dbm: -70.0,
                }],
                resolvers: vec!["10.0.0.53".into(), "fd00::53".into()],
            },
        }
    }

    #[test]
    fn snapshot_round_trips_through_the_wire() {
        let s = sample();
        let back: d::Snapshot = w::Snapshot::from(s.clone()).into();
        assert_eq!(back, s);
    }

    #[test]
    fn fault_events_round_trip_and_bad_ones_are_refused() {
        let e = d::FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            state: d::FaultState::Raised,
            severity: d::Severity::Critical,
            value: 97.5,
            evidence: "/ is 97.5% full".into(),
            at_ms: 42,
        };
        let back: d::FaultEvent = w::FaultEvent::from(e.clone()).try_into().unwrap();
        assert_eq!(back, e);
        let mut bad = w::FaultEvent::from(e);
        bad.state = 0;
        assert!(d::FaultEvent::try_from(bad.clone()).is_err());
        bad.state = 77;
        assert!(d::FaultEvent::try_from(bad.clone()).is_err());
        bad.state = w::FaultState::Cleared as i32;
        bad.check_id.clear();
        assert!(d::FaultEvent::try_from(bad).is_err());
    }

    #[test]
    fn policy_round_trips_and_unknown_checks_are_skipped() {
        let p = crate::policy::Policy::default_policy();
        let mut wire = w::Policy::from(&p);
        assert_eq!(crate::policy::Policy::from(wire.clone()), p);
        wire.checks[0].measurement = "printer.jammed_in_future".into();
        wire.checks[1].direction = 9;
        let back = crate::policy::Policy::from(wire);
        assert_eq!(back.checks.len(), p.checks.len() - 2);
    }

    #[test]
    fn tickets_and_entries_round_trip() {
        use crate::ticket_rules::Priority;
        use crate::tickets::{Entry, Kind, Status, Ticket};
        let t = Ticket {
            id: 7,
            title: "Printer jammed".into(),
            endpoint: "dispatch-07".into(),
            check_id: "printer_jammed".into(),
            subject: "Frontdesk".into(),
            severity: d::Severity::Warning,
            priority: Priority::P2,
            status: Status::WaitingOnVendor,
            tier: 2,
            assignee: Some("ana".into()),
            raise_count: 3,
            opened_ms: 1,
            last_raised_ms: 2,
            cleared_ms: Some(3),
            resolved_ms: None,
            flapping: true,
            incident: Some(4),
            value: 1.0,
            evidence: "media-jam".into(),
            response_due_ms: 5,
            resolve_due_ms: 6,
            responded: false,
            response_breached: false,
            resolve_breached: false,
            raises: Default::default(),
        };
        let back: Ticket = w::Ticket::from(&t).into();
        assert_eq!(back, t);
        let e = Entry {
            ticket: Some(7),
            incident: None,
            at_ms: 9,
            who: "ana".into(),
            kind: Kind::AutoResolved,
            text: "auto-resolved".into(),
        };
        let wire = w::TicketEntry::from(&e);
        assert_eq!(wire.kind, "auto_resolved");
        assert_eq!(Entry::from(wire), e);
    }

    #[test]
    fn missing_wire_sections_become_defaults() {
        let back: d::Snapshot = w::Snapshot {
            taken_at_ms: 5,
            ..Default::default()
        }
        .into();
        assert_eq!(back.taken_at_ms, 5);
        assert_eq!(back.host, d::HostInfo::default());
        assert!(back.cpu.load_average.is_none());
    }
}
