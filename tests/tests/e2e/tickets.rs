//! Tickets: faults become tickets that resolve themselves, specialists work
//! them through the API, and storms become one incident.

use std::time::Duration;

use vitals_collector::ctl::Client;
use vitals_proto::identity::Role;
use vitals_proto::wire::{self, agent_message};
use vitals_tests::scripted::*;
use vitals_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fault_becomes_a_ticket_that_resolves_itself() {
    use vitals_collector::store::TicketFilter;
    use vitals_proto::tickets::{Kind, Status};
    let fleet = Fleet::new("tickets");
    // A check this machine always fails, and a short quiet period.
    let check = |raise: &str| {
        format!(
            "[tickets]\nquiet_period = \"1s\"\n\
             [[check]]\nid = \"memory_in_use\"\nmeasurement = \"memory.used_percent\"\n\
             direction = \"above\"\nraise = {raise}\nclear = 0.0\nhold = \"0s\"\nseverity = \"warning\"\n"
        )
    };
    let config = with_policy(&fleet, &check("0.001"));
    let policy_path = config.policy.clone().expect("policy path");
    let db = config.storage_url();
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-ticket", collector.addr));
    // The test reads the tickets straight from the collector's database.
    let store = vitals_collector::store::open(&db, 10, Duration::ZERO)
        .await
        .expect("open store");
    let open = || {
        let store = store.clone();
        async move {
            store
                .tickets(TicketFilter {
                    endpoint: Some("ws-ticket".into()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .ok()
        }
    };
    let ticket = eventually(WAIT, "a ticket for the fault", || async {
        open().await?.into_iter().next()
    })
    .await;
    assert_eq!(ticket.check_id, "memory_in_use");
    assert_eq!(ticket.subject, "memory");
    assert_eq!(ticket.status, Status::New);
    assert!(
        ticket.evidence.contains("memory.used_percent"),
        "{ticket:?}"
    );

    // The fault clears (the check is raised out of reach): the ticket
    // resolves itself after the quiet period, with the reason on record.
    std::fs::write(&policy_path, check("100.0")).expect("write policy");
    let resolved = eventually(WAIT, "the ticket auto-resolved", || async {
        let d = store.ticket(ticket.id).await.ok()??;
        (d.ticket.status == Status::Resolved).then_some(d.timeline)
    })
    .await;
    let kinds: Vec<Kind> = resolved.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![Kind::Opened, Kind::FaultCleared, Kind::AutoResolved],
        "{resolved:?}"
    );
    assert_eq!(
        open().await.expect("tickets").len(),
        1,
        "one ticket, never two"
    );
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specialists_work_tickets_through_the_api_and_viewers_only_read() {
    use vitals_collector::ctl::{TicketChange, TicketQuery};
    use vitals_proto::tickets::{Kind, Status};
    let fleet = Fleet::new("ticketapi");
    let config = with_policy(
        &fleet,
        "[[check]]\nid = \"memory_in_use\"\ntitle = \"Memory in use\"\n\
         measurement = \"memory.used_percent\"\ndirection = \"above\"\nraise = 0.001\n\
         clear = 0.0\nhold = \"0s\"\nseverity = \"critical\"\n",
    );
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-api", collector.addr));
    let viewer = fleet.specialist_profile("vera", Role::Viewer, collector.addr);
    let specialist = fleet.specialist_profile("sam", Role::Specialist, collector.addr);
    let mut sam = Client::connect(&specialist).await.expect("specialist");
    let mut watch = sam.watch_tickets().await.expect("watch");

    let open = TicketQuery {
        open_only: true,
        limit: 10,
        ..Default::default()
    };
    let ticket = eventually(WAIT, "the fault's ticket in the queue", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        c.tickets(open.clone()).await.ok()?.into_iter().next()
    })
    .await;
    assert_eq!(ticket.title, "Memory in use");
    assert_eq!(ticket.endpoint, "ws-api");
    // Critical fault on a normal endpoint: P2.
    assert_eq!(ticket.priority.as_str(), "p2");
    let first = watch.message().await.expect("stream").expect("entry");
    assert_eq!(first.kind, "opened");
    assert_eq!(first.ticket, Some(ticket.id));

    // A viewer reads but may not change anything.
    let mut vera = Client::connect(&viewer).await.expect("viewer");
    let refused = vera
        .change_ticket(ticket.id, TicketChange::Assign("vera".into()))
        .await
        .expect_err("viewer may not assign");
    assert!(
        refused.to_string().contains("needs specialist"),
        "{refused}"
    );

    // The specialist works it; each change is in the timeline with who.
    sam.change_ticket(ticket.id, TicketChange::Assign("sam".into()))
        .await
        .expect("assign");
    sam.change_ticket(ticket.id, TicketChange::Comment("called the user".into()))
        .await
        .expect("comment");
    let bad = sam
        .change_ticket(ticket.id, TicketChange::Status("on_hold".into()))
        .await
        .expect_err("unknown status");
    assert!(
        bad.to_string().contains("unknown status \"on_hold\""),
        "{bad}"
    );
    let open_one = sam
        .change_ticket(ticket.id, TicketChange::Reopen("again".into()))
        .await
        .expect_err("an open ticket cannot be reopened");
    assert!(
        open_one
            .to_string()
            .contains("only a resolved or closed ticket can be reopened"),
        "{open_one}"
    );
    // The snapshot showing the fault follows the fault on the wire, so the
    // ticket gets it a moment after it opens.
    eventually(WAIT, "the snapshot at fault time on the ticket", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        c.ticket(ticket.id).await.ok()?.snapshot
    })
    .await;
    let resolved = sam
        .change_ticket(ticket.id, TicketChange::Resolve("freed memory".into()))
        .await
        .expect("resolve");
    let (t, timeline) = (resolved.ticket, resolved.timeline);
    // A fault's ticket carries the snapshot at fault time; "memory_in_use"
    // is this test's own check, so there is no knowledge base article.
    assert!(
        resolved
            .snapshot
            .as_ref()
            .is_some_and(|s| s.memory.total_bytes > 0),
        "snapshot at fault time"
    );
    assert_eq!(resolved.knowledge, None);
    assert_eq!(t.status, Status::Resolved);
    assert_eq!(t.assignee.as_deref(), Some("sam"));
    let who: Vec<(&str, Kind)> = timeline
        .iter()
        .map(|e| (e.who.as_str(), e.kind.clone()))
        .collect();
    assert_eq!(
        who,
        vec![
            ("vitals", Kind::Opened),
            ("sam", Kind::Assigned),
            ("sam", Kind::Comment),
            ("sam", Kind::Resolved),
        ]
    );
    let kinds: Vec<String> = {
        let mut k = Vec::new();
        for _ in 0..3 {
            k.push(watch.message().await.expect("stream").expect("entry").kind);
        }
        k
    };
    assert_eq!(kinds, vec!["assigned", "comment", "resolved"]);
    // The user calls back: reopened by hand, the reason on the timeline.
    let reopened = sam
        .change_ticket(ticket.id, TicketChange::Reopen("slow again".into()))
        .await
        .expect("reopen");
    assert_eq!(reopened.ticket.status, Status::Assigned);
    assert_eq!(
        reopened.timeline.last().map(|e| e.text.as_str()),
        Some("reopened by sam: slow again")
    );

    // By hand, against a known endpoint only.
    let manual = sam
        .open_ticket(
            "ws-api",
            "Monitor flickers",
            "after lunch",
            vitals_proto::domain::Severity::Info,
        )
        .await
        .expect("open by hand")
        .ticket;
    assert_eq!(manual.title, "Monitor flickers");
    assert_eq!(manual.check_id, "manual");
    let nowhere = sam
        .open_ticket("ws-nowhere", "x", "", vitals_proto::domain::Severity::Info)
        .await
        .expect_err("unknown endpoint");
    assert!(nowhere.to_string().contains("no endpoint"), "{nowhere}");
    let listed = sam
        .tickets(TicketQuery {
            endpoint: "ws-api".into(),
            check: "manual".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("filtered list");
    assert_eq!(listed.len(), 1);
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_raising_one_check_make_one_incident_with_fifty_children() {
    use vitals_collector::ctl::TicketQuery;
    let fleet = Fleet::new("storm");
    // The default ticket rules: 10 endpoints within 10 minutes are a storm.
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let mut sessions = Vec::new();
    for i in 0..50 {
        let id = format!("ws-storm-{i:02}");
        let ch = fleet.agent_channel(collector.addr, &id).await;
        let (tx, inbound) = open_session(ch, &id).await;
        let mut inbound = inbound.expect("welcome");
        tx.send(fault_msg(1, wire::FaultState::Raised, 97.0))
            .await
            .expect("send");
        assert_eq!(next_ack(&mut inbound).await, 1);
        sessions.push((tx, inbound));
    }
    let tickets = eventually(WAIT, "fifty tickets, all in one incident", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        let t = c
            .tickets(TicketQuery {
                open_only: true,
                check: "disk_nearly_full".into(),
                limit: 100,
                ..Default::default()
            })
            .await
            .ok()?;
        (t.len() == 50 && t.iter().all(|t| t.incident.is_some())).then_some(t)
    })
    .await;
    let incident = tickets[0].incident;
    assert!(
        tickets.iter().all(|t| t.incident == incident),
        "one parent incident"
    );
    let mut c = Client::connect(&viewer).await.expect("viewer");
    let children = c
        .tickets(TicketQuery {
            incident,
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("by incident");
    assert_eq!(children.len(), 50);
    // Each child's timeline says which incident it belongs to.
    let d = c.ticket(children[0].id).await.expect("ticket");
    assert!(
        d.timeline.iter().any(|e| e
            .text
            .starts_with(&format!("part of incident {} ", incident.unwrap_or(0)))),
        "{:?}",
        d.timeline
    );
    // The shipped check has its knowledge base article attached.
    assert!(
        d.knowledge
            .as_deref()
            .is_some_and(|k| k.starts_with("# Disk nearly full")),
        "{:?}",
        d.knowledge
    );
    drop(sessions);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desks_behind_one_dead_print_server_make_one_incident() {
    use vitals_collector::ctl::TicketQuery;
    let fleet = Fleet::new("printstorm");
    // Four desks behind ps01 trip the print-server rule; the same-check
    // rule (default 10) never would.
    let config = with_policy(
        &fleet,
        &format!(
            "{}\n[[tickets.storm]]\nby = \"print_server\"\nendpoints = 4\nwindow = \"10m\"\n",
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../proto/default-policy.toml"
            ))
            .expect("default policy")
        ),
    );
    let collector = RunningCollector::start(config).await;
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let desks = [
        (
            "ws-ps-1",
            "hall-a",
            "ipp://ps01.city.example/printers/hall-a",
        ),
        (
            "ws-ps-2",
            "hall-b",
            "ipp://ps01.city.example/printers/hall-b",
        ),
        ("ws-ps-3", "annex", "ipp://ps02.city.example/printers/annex"),
        (
            "ws-ps-4",
            "hall-a",
            "ipp://ps01.city.example/printers/hall-a",
        ),
        ("ws-ps-5", "clerk", "ipp://ps01.city.example/printers/clerk"),
    ];
    let mut sessions = Vec::new();
    for (id, queue, uri) in desks {
        let ch = fleet.agent_channel(collector.addr, id).await;
        let (tx, inbound) = open_session(ch, id).await;
        let mut inbound = inbound.expect("welcome");
        // What the agent's CUPS probe reports: the queue and its server.
        let mut s = vitals_proto::domain::Snapshot::default();
        s.host.hostname = id.into();
        s.taken_at_ms = vitals_proto::now_ms();
        s.printers.push(vitals_proto::domain::PrinterInfo {
            name: queue.into(),
            source: "cups".into(),
            address: uri.into(),
            state: "stopped".into(),
            ..Default::default()
        });
        let check = if id == "ws-ps-2" {
            "printer_stopped"
        } else {
            "printer_offline"
        };
        let fault = wire::AgentMessage {
            seq: 2,
            body: Some(agent_message::Body::Fault(wire::FaultEvent {
                check_id: check.into(),
                subject: queue.into(),
                state: wire::FaultState::Raised as i32,
                severity: wire::Severity::Warning as i32,
                value: 1.0,
                evidence: format!("{queue}: unreachable"),
                at_ms: vitals_proto::now_ms(),
                via: String::new(),
            })),
        };
        for m in [
            wire::AgentMessage {
                seq: 1,
                body: Some(agent_message::Body::Snapshot(s.into())),
            },
            fault,
        ] {
            tx.send(m).await.expect("send");
        }
        // Acks may come one by one or both at once.
        while next_ack(&mut inbound).await < 2 {}
        sessions.push((tx, inbound));
    }
    let tickets = eventually(WAIT, "five tickets, four in one incident", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        let t = c
            .tickets(TicketQuery {
                open_only: true,
                limit: 100,
                ..Default::default()
            })
            .await
            .ok()?;
        (t.len() == 5 && t.iter().filter(|t| t.incident.is_some()).count() == 4).then_some(t)
    })
    .await;
    let outside: Vec<&str> = tickets
        .iter()
        .filter(|t| t.incident.is_none())
        .map(|t| t.endpoint.as_str())
        .collect();
    assert_eq!(
        outside,
        vec!["ws-ps-3"],
        "the desk on ps02 is not part of it"
    );
    let mut c = Client::connect(&viewer).await.expect("viewer");
    let linked = tickets
        .iter()
        .find(|t| t.incident.is_some())
        .expect("linked");
    let d = c.ticket(linked.id).await.expect("ticket");
    assert!(
        d.timeline
            .iter()
            .any(|e| e.text.ends_with("(print server ps01.city.example)")),
        "{:?}",
        d.timeline
    );
    drop(sessions);
    collector.stop().await;
}
