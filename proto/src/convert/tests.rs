//! Round trips through the wire, and what a newer peer may send.

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
                kind: d::SupplyKind::Consumed,
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
        via: String::new(),
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
        rungs: Default::default(),
        members: [
            ("erp.city.test".to_owned(), Default::default()),
            ("files.city.test".to_owned(), Default::default()),
        ]
        .into(),
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
