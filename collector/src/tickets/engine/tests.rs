//! The engine's rules, each test an input of fault events and clock
//! steps with the tickets, incidents and timeline entries expected.

use super::*;
use std::time::Duration;
use vitals_proto::ticket_rules::StormBy;

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
        via: String::new(),
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
            CheckInfo::new("", "printer.offline"),
        ),
        (
            "printer_queue_stuck".to_owned(),
            CheckInfo::new("", "printer.oldest_job_minutes"),
        ),
        ("dns_failing".to_owned(), CheckInfo::new("", "dns.failed")),
        (
            "disk_nearly_full".to_owned(),
            CheckInfo::new("", "disk.used_percent"),
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
    // A desk its enrollment token put in the dispatch center (no address
    // there, no pattern): critical too; one tagged kiosk by its token: low.
    e.set_facts(
        "ws-enrolled",
        Facts {
            enrolled_site: "dispatch-center".into(),
            ..Default::default()
        },
    );
    e.set_facts(
        "ws-token-kiosk",
        Facts {
            enrolled_tags: vec!["Kiosk".into()],
            ..Default::default()
        },
    );
    assert!(e.needs_facts(), "rules by site need each endpoint's labels");
    raise(&mut e, "ws-enrolled", 62 * MIN);
    assert_eq!(e.ticket(4).unwrap().priority, Priority::P2);
    raise(&mut e, "ws-token-kiosk", 62 * MIN);
    assert_eq!(e.ticket(5).unwrap().priority, Priority::P4);
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
        CheckInfo::new("Disk nearly full", "disk.used_percent"),
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

/// One step of a table test: a raise or a clear of `disk_nearly_full` on
/// an endpoint, or the clock.
enum Step {
    Raise(&'static str, i64),
    Clear(&'static str, i64),
    Tick(i64),
}

/// Runs `steps` on a fresh engine and returns the entry kinds of each.
fn run(steps: &[Step]) -> Vec<Vec<Kind>> {
    let mut e = Engine::new(rules());
    steps
        .iter()
        .map(|s| match s {
            Step::Raise(ep, at) => kinds(&raise(&mut e, ep, *at)),
            Step::Clear(ep, at) => kinds(&clear(&mut e, ep, *at)),
            Step::Tick(at) => kinds(&e.tick(*at)),
        })
        .collect()
}

/// A table row: what it shows, the steps, and each step's entry kinds.
type Row = (&'static str, &'static [Step], &'static [&'static [Kind]]);

#[test]
fn a_ticket_s_life_as_a_table() {
    use Kind::*;
    use Step::*;
    let table: &[Row] = &[
        ("a raise opens", &[Raise("ws-1", 0)], &[&[Opened]]),
        (
            "a second raise updates",
            &[Raise("ws-1", 0), Raise("ws-1", MIN)],
            &[&[Opened], &[FaultRaised]],
        ),
        (
            "a clear resolves only after the quiet period",
            &[
                Raise("ws-1", 0),
                Clear("ws-1", MIN),
                Tick(5 * MIN),
                Tick(11 * MIN),
            ],
            &[&[Opened], &[FaultCleared], &[], &[AutoResolved]],
        ),
        (
            "back within the reopen window reopens",
            &[
                Raise("ws-1", 0),
                Clear("ws-1", MIN),
                Tick(11 * MIN),
                Raise("ws-1", 30 * MIN),
            ],
            &[&[Opened], &[FaultCleared], &[AutoResolved], &[Reopened]],
        ),
        (
            "back after the reopen window is a new ticket",
            &[
                Raise("ws-1", 0),
                Clear("ws-1", MIN),
                Tick(11 * MIN),
                Raise("ws-1", 80 * MIN),
            ],
            &[&[Opened], &[FaultCleared], &[AutoResolved], &[Opened]],
        ),
        (
            "a clear without a ticket does nothing",
            &[Clear("ws-1", 0)],
            &[&[]],
        ),
        (
            "endpoints have their own tickets",
            &[Raise("ws-1", 0), Raise("ws-2", 0)],
            &[&[Opened], &[Opened]],
        ),
    ];
    for (name, steps, expected) in table {
        let got = run(steps);
        let expected: Vec<Vec<Kind>> = expected.iter().map(|k| k.to_vec()).collect();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn rungs_of_one_ladder_on_one_subject_are_one_ticket_whose_severity_follows_the_highest() {
    use Kind::*;
    let mut e = Engine::new(rules());
    e.set_checks(HashMap::from([
        (
            "gateway_lossy".to_owned(),
            CheckInfo::new("Gateway losing packets", "gateway.loss_percent")
                .rung_of("gateway.loss_percent"),
        ),
        (
            "gateway_unreachable".to_owned(),
            CheckInfo::new("Gateway unreachable", "gateway.loss_percent")
                .rung_of("gateway.loss_percent"),
        ),
    ]));
    let f = |check: &str, state, severity| fault(check, state, severity);
    let step = |e: &mut Engine, check: &str, state, severity, at| {
        kinds(&e.on_fault("ws-1", &f(check, state, severity), at))
    };
    use FaultState::{Cleared, Raised};
    use Severity::{Critical, Warning};
    assert_eq!(
        step(&mut e, "gateway_lossy", Raised, Warning, 0),
        vec![Opened]
    );
    let p3 = e.ticket(1).unwrap().priority;
    // The higher rung: the same ticket, more severe and more urgent.
    assert_eq!(
        step(&mut e, "gateway_unreachable", Raised, Critical, MIN),
        vec![FaultRaised, SeverityChanged]
    );
    let t = e.ticket(1).unwrap();
    assert_eq!(
        (t.severity, t.check_id.as_str()),
        (Critical, "gateway_unreachable")
    );
    assert_eq!(t.title, "Gateway unreachable");
    assert!(
        t.priority < p3,
        "{:?} is more urgent than {p3:?}",
        t.priority
    );
    // The higher clears, the lower stands: it eases, it is not over.
    assert_eq!(
        step(&mut e, "gateway_unreachable", Cleared, Critical, 2 * MIN),
        vec![SeverityChanged]
    );
    let t = e.ticket(1).unwrap();
    assert_eq!((t.severity, t.priority, t.cleared_ms), (Warning, p3, None));
    // A rung moving while the problem stands is not a flap cycle (three
    // raises make one in these rules).
    step(&mut e, "gateway_unreachable", Raised, Critical, 3 * MIN);
    step(&mut e, "gateway_unreachable", Cleared, Critical, 4 * MIN);
    assert!(!e.ticket(1).unwrap().flapping);
    assert!(
        e.tick(30 * MIN).is_empty(),
        "not resolved while a rung stands"
    );
    // The last rung clears: then the quiet period, then resolved.
    assert_eq!(
        step(&mut e, "gateway_lossy", Cleared, Warning, 31 * MIN),
        vec![FaultCleared]
    );
    assert_eq!(kinds(&e.tick(42 * MIN)), vec![AutoResolved]);
    assert_eq!(e.tickets().count(), 1);
    // Another subject, or a check of another problem, is a ticket of its own.
    let mut other = f("gateway_lossy", Raised, Warning);
    other.subject = "10.0.0.2".into();
    assert_eq!(kinds(&e.on_fault("ws-1", &other, 43 * MIN)), vec![Opened]);
    assert_eq!(kinds(&raise(&mut e, "ws-1", 43 * MIN)), vec![Opened]);
    assert_eq!(e.tickets().count(), 3);
}

/// A fault of `check` on `subject`, raised or cleared.
fn on(
    e: &mut Engine,
    ep: &str,
    check: &str,
    subject: &str,
    state: FaultState,
    at: i64,
) -> Vec<Kind> {
    let mut f = fault(check, state, Severity::Critical);
    f.subject = subject.into();
    kinds(&e.on_fault(ep, &f, at))
}

#[test]
fn symptoms_follow_their_cause_on_one_desk() {
    use FaultState::{Cleared, Raised};
    use Kind::*;
    // The shipped rule: with the gateway unreachable, DNS and key services
    // failing on that desk are symptoms.
    let mut e = Engine::new(rules());
    let gw = "10.0.0.1";
    assert_eq!(
        on(&mut e, "ws-1", "gateway_unreachable", gw, Raised, 0),
        vec![Opened]
    );
    assert_eq!(
        on(&mut e, "ws-1", "dns_failing", "erp", Raised, MIN),
        vec![Symptom]
    );
    assert_eq!(
        on(
            &mut e,
            "ws-1",
            "service_unreachable",
            "erp (10.0.0.9:443)",
            Raised,
            MIN
        ),
        vec![Symptom]
    );
    // Another desk's DNS is its own problem.
    assert_eq!(
        on(&mut e, "ws-2", "dns_failing", "erp", Raised, MIN),
        vec![Opened]
    );
    assert_eq!(e.tickets().count(), 2);
    assert_eq!(
        e.tickets().filter(|t| t.endpoint == "ws-1").count(),
        1,
        "the desk has only its cause's ticket"
    );
    // A symptom clearing is said on the cause.
    assert_eq!(
        on(&mut e, "ws-1", "dns_failing", "erp", Cleared, 2 * MIN),
        vec![Symptom]
    );
    // The cause clears: the service still down stands on its own once
    // the symptoms have had their time to settle (30 s by default).
    assert_eq!(
        on(&mut e, "ws-1", "gateway_unreachable", gw, Cleared, 3 * MIN),
        vec![FaultCleared, Symptom]
    );
    assert!(e.tick(3 * MIN + 29_000).is_empty());
    assert_eq!(kinds(&e.tick(3 * MIN + 30_000)), vec![Opened]);
    let own = e
        .tickets()
        .find(|t| t.check_id == "service_unreachable")
        .unwrap();
    assert_eq!(
        (own.endpoint.as_str(), own.subject.as_str()),
        ("ws-1", "erp (10.0.0.9:443)")
    );
    assert_eq!(e.tickets().count(), 3);
}

#[test]
fn a_symptom_that_reported_first_is_folded_under_its_cause() {
    use FaultState::{Cleared, Raised};
    use Kind::*;
    let mut e = Engine::new(rules());
    // DNS's probe ran first: it has a ticket already.
    assert_eq!(
        on(&mut e, "ws-1", "dns_failing", "erp", Raised, 0),
        vec![Opened]
    );
    // A specialist already works this one: it is left alone.
    assert_eq!(
        on(&mut e, "ws-1", "dns_failing", "files", Raised, 0),
        vec![Opened]
    );
    e.act(2, "ana", Action::Comment("looking".into()), MIN)
        .unwrap();
    // The gateway's probe reports a minute later: the cause.
    assert_eq!(
        on(
            &mut e,
            "ws-1",
            "gateway_unreachable",
            "10.0.0.1",
            Raised,
            MIN
        ),
        vec![Opened, Symptom, Symptom]
    );
    assert_eq!(e.ticket(1).unwrap().status, Status::Resolved);
    assert!(
        e.ticket(2).unwrap().status.is_open(),
        "a worked ticket stays"
    );
    // The cause clears while DNS is still failing: its ticket reopens.
    assert_eq!(
        on(
            &mut e,
            "ws-1",
            "gateway_unreachable",
            "10.0.0.1",
            Cleared,
            2 * MIN
        ),
        vec![FaultCleared, Symptom]
    );
    assert_eq!(kinds(&e.tick(3 * MIN)), vec![Reopened]);
    assert!(e.ticket(1).unwrap().status.is_open());
    // Past the window, an older symptom ticket is not folded.
    let mut late = Engine::new(rules());
    assert_eq!(
        on(&mut late, "ws-1", "dns_failing", "erp", Raised, 0),
        vec![Opened]
    );
    assert_eq!(
        on(
            &mut late,
            "ws-1",
            "gateway_unreachable",
            "10.0.0.1",
            Raised,
            6 * MIN
        ),
        vec![Opened]
    );
}

/// The shipped DNS ladder, one ticket per resolver.
fn dns_checks(e: &mut Engine) {
    e.set_checks(HashMap::from([
        (
            "dns_failing".to_owned(),
            CheckInfo::new("DNS not resolving", "dns.failed")
                .rung_of("dns")
                .by_via(true),
        ),
        (
            "dns_slow".to_owned(),
            CheckInfo::new("DNS slow", "dns.resolve_ms")
                .rung_of("dns")
                .by_via(true),
        ),
    ]));
}

/// A DNS fault on `name` asked of `via`.
fn dns(
    e: &mut Engine,
    check: &str,
    name: &str,
    via: &str,
    state: FaultState,
    at: i64,
) -> Vec<Kind> {
    let severity = if check == "dns_slow" {
        Severity::Info
    } else {
        Severity::Critical
    };
    let mut f = fault(check, state, severity);
    f.subject = name.into();
    f.via = via.into();
    f.evidence = format!("{name} does not resolve through {via}");
    kinds(&e.on_fault("ws-1", &f, at))
}

#[test]
fn names_failing_through_one_resolver_are_one_ticket_listing_them() {
    use FaultState::{Cleared, Raised};
    use Kind::*;
    let r = "resolver 10.0.0.53";
    let mut e = Engine::new(rules());
    dns_checks(&mut e);
    // Each row: the event, then the entries it makes.
    type DnsRow<'a> = (&'a str, &'a str, &'a str, FaultState, &'a [Kind]);
    let table: &[DnsRow] = &[
        ("dns_failing", "erp", r, Raised, &[Opened]),
        ("dns_failing", "files", r, Raised, &[FaultRaised]),
        // Another resolver is another way in: its own ticket.
        (
            "dns_failing",
            "intra",
            "resolver 10.9.9.9",
            Raised,
            &[Opened],
        ),
        // One name well again, the other not: the ticket stands.
        ("dns_failing", "erp", r, Cleared, &[SubjectCleared]),
        // The last one lower on the ladder: it eases.
        ("dns_slow", "erp", r, Raised, &[FaultRaised]),
        ("dns_failing", "files", r, Cleared, &[SeverityChanged]),
        // A clear reported with another way in still finds its ticket.
        ("dns_slow", "erp", "", Cleared, &[FaultCleared]),
    ];
    for (i, (check, name, via, state, expected)) in table.iter().enumerate() {
        let at = i as i64 * MIN;
        let got = dns(&mut e, check, name, via, *state, at);
        assert_eq!(got, expected.to_vec(), "row {i}: {check} {name} {state:?}");
        if i == 1 {
            let t = e.ticket(1).unwrap();
            assert_eq!(t.subject, r);
            assert_eq!(t.members.keys().collect::<Vec<_>>(), vec!["erp", "files"]);
            assert_eq!(
                t.evidence,
                "resolver 10.0.0.53: 2 failing together. \
                 erp does not resolve through resolver 10.0.0.53. \
                 files does not resolve through resolver 10.0.0.53."
            );
        }
        if i == 4 {
            let t = e.ticket(1).unwrap();
            assert_eq!(t.severity, Severity::Critical, "files still fails");
            assert_eq!(
                t.members["erp"].rungs.keys().collect::<Vec<_>>(),
                vec!["dns_slow"]
            );
        }
    }
    let t = e.ticket(1).unwrap();
    assert!(t.cleared_ms.is_some() && t.members.is_empty());
    assert_eq!(e.tickets().count(), 2);
    // Back after it resolved: the same ticket reopens, for the names failing now.
    e.tick(30 * MIN);
    assert_eq!(
        dns(&mut e, "dns_failing", "files", r, Raised, 31 * MIN),
        vec![Reopened, SeverityChanged]
    );
    assert_eq!(
        e.ticket(1).unwrap().members.keys().collect::<Vec<_>>(),
        vec!["files"]
    );
    // Without a way in (an older agent), each name is its own ticket.
    assert_eq!(
        dns(&mut e, "dns_failing", "mail", "", Raised, 32 * MIN),
        vec![Opened]
    );
    assert_eq!(e.tickets().last().unwrap().subject, "mail");
}

#[test]
fn names_of_one_resolver_fold_under_the_gateway_and_come_back_together() {
    use FaultState::{Cleared, Raised};
    use Kind::*;
    let r = "resolver 10.0.0.53";
    let mut e = Engine::new(rules());
    dns_checks(&mut e);
    assert_eq!(
        dns(&mut e, "dns_failing", "erp", r, Raised, 0),
        vec![Opened]
    );
    assert_eq!(
        dns(&mut e, "dns_failing", "files", r, Raised, 0),
        vec![FaultRaised]
    );
    // The gateway's probe reports: the one DNS ticket folds, both names
    // become symptoms of the gateway's ticket.
    assert_eq!(
        on(
            &mut e,
            "ws-1",
            "gateway_unreachable",
            "10.0.0.1",
            Raised,
            MIN
        ),
        vec![Opened, Symptom, Symptom, Symptom]
    );
    assert_eq!(e.ticket(1).unwrap().status, Status::Resolved);
    // The gateway is back, DNS still fails: one ticket again, both names on it.
    assert_eq!(
        on(
            &mut e,
            "ws-1",
            "gateway_unreachable",
            "10.0.0.1",
            Cleared,
            2 * MIN
        ),
        vec![FaultCleared, Symptom, Symptom]
    );
    assert_eq!(kinds(&e.tick(3 * MIN)), vec![Reopened, FaultRaised]);
    let t = e.ticket(1).unwrap();
    assert!(t.status.is_open());
    assert_eq!(t.members.keys().collect::<Vec<_>>(), vec!["erp", "files"]);
    assert_eq!(e.tickets().count(), 2);
}

#[test]
fn symptoms_that_clear_with_their_cause_open_nothing() {
    use FaultState::{Cleared, Raised};
    use Kind::*;
    let mut e = Engine::new(rules());
    let gw = "10.0.0.1";
    let svc = "erp (10.9.0.9:443)";
    on(&mut e, "ws-1", "gateway_unreachable", gw, Raised, 0);
    on(&mut e, "ws-1", "dns_failing", "erp", Raised, 0);
    on(&mut e, "ws-1", "service_unreachable", svc, Raised, 0);
    // Everything recovers within one probe of the cause.
    let mut all = on(&mut e, "ws-1", "gateway_unreachable", gw, Cleared, MIN);
    all.extend(on(
        &mut e,
        "ws-1",
        "dns_failing",
        "erp",
        Cleared,
        MIN + 2000,
    ));
    all.extend(on(
        &mut e,
        "ws-1",
        "service_unreachable",
        svc,
        Cleared,
        MIN + 2000,
    ));
    all.extend(kinds(&e.tick(2 * MIN)));
    assert!(!all.contains(&Opened), "{all:?}");
    assert_eq!(e.tickets().count(), 1, "only the cause's ticket");
    // The cause back before a symptom settled: it is the cause's again.
    on(&mut e, "ws-1", "gateway_unreachable", gw, Raised, 20 * MIN);
    on(&mut e, "ws-1", "dns_failing", "erp", Raised, 20 * MIN);
    on(&mut e, "ws-1", "gateway_unreachable", gw, Cleared, 21 * MIN);
    on(
        &mut e,
        "ws-1",
        "gateway_unreachable",
        gw,
        Raised,
        21 * MIN + 10_000,
    );
    assert_eq!(kinds(&e.tick(22 * MIN)), vec![Symptom]);
    assert_eq!(e.tickets().count(), 1);
}
