//! Probes against the real thing: a CUPS scheduler with an ippeveprinter
//! printer, snmpd serving the Printer MIB, and a network namespace with
//! dnsmasq and nftables. Each asserts the exact fault raised and its
//! clearing; each is skipped, with the reason printed, where its
//! components cannot run (not root, packages missing).

use std::path::PathBuf;
use std::time::Duration;

use vitals_agent::config::NetworkPrinter;
use vitals_collector::ctl::Client;
use vitals_collector::ctl::Profile;
use vitals_proto::domain::{FaultRecord, FaultState, Snapshot};
use vitals_proto::identity::Role;
use vitals_tests::components::{Cups, DeskNamespace, Snmpd, skip};
use vitals_tests::*;

/// Printer jobs pass through ippeveprinter in a few seconds; leave room.
const SLOW: Duration = Duration::from_secs(40);

async fn wait_fault(
    viewer: &Profile,
    id: &str,
    check: &str,
    subject: &str,
    state: FaultState,
) -> FaultRecord {
    eventually(SLOW, &format!("{check} {subject} {state:?}"), || async {
        faults_of(viewer, id).await?.into_iter().find(|f| {
            f.event.check_id == check && f.event.subject == subject && f.event.state == state
        })
    })
    .await
}

async fn latest(viewer: &Profile, id: &str) -> Option<Snapshot> {
    detail(viewer, id).await?.latest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cups_queue_stopped_out_of_paper_and_toner_empty_raise_and_clear() {
    const TEST: &str = "cups_queue_stopped_out_of_paper_and_toner_empty_raise_and_clear";
    let fleet = Fleet::new("cups");
    let cups = match Cups::start(&fleet.dir, &["Frontdesk"]) {
        Ok(c) => c,
        Err(why) => return skip(TEST, &why),
    };
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let mut config = fleet.agent_config("ws-print", collector.addr);
    config.printers.cups = cups.url.clone();
    let agent = RunningAgent::start(config);
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let id = "ws-print";

    eventually(SLOW, "the queue reported idle", || async {
        let s = latest(&viewer, id).await?;
        s.printers
            .iter()
            .any(|p| p.name == "Frontdesk" && p.source == "cups" && p.state == "idle")
            .then_some(())
    })
    .await;

    // A stopped queue: raised within one probe interval, then cleared.
    let disabled_at = vitals_proto::now_ms();
    cups.disable("Frontdesk", "out of order");
    let raised = wait_fault(
        &viewer,
        id,
        "printer_stopped",
        "Frontdesk",
        FaultState::Raised,
    )
    .await;
    eprintln!(
        "printer_stopped: condition to FaultRaised {} ms, to the collector {} ms (printer probe every 1 s)",
        raised.event.at_ms - disabled_at,
        raised.received_at_ms - disabled_at
    );
    assert_eq!(raised.event.value, 1.0);
    assert!(
        raised.event.evidence.contains("state stopped"),
        "{:?}",
        raised.event
    );
    cups.enable("Frontdesk");
    wait_fault(
        &viewer,
        id,
        "printer_stopped",
        "Frontdesk",
        FaultState::Cleared,
    )
    .await;

    // Out of paper: the job waits, the printer says media-empty.
    cups.set_paper(0);
    cups.print("Frontdesk");
    let paper = wait_fault(
        &viewer,
        id,
        "printer_out_of_paper",
        "Frontdesk",
        FaultState::Raised,
    )
    .await;
    assert!(
        paper.event.evidence.contains("media-empty"),
        "{:?}",
        paper.event
    );
    cups.set_paper(250);
    wait_fault(
        &viewer,
        id,
        "printer_out_of_paper",
        "Frontdesk",
        FaultState::Cleared,
    )
    .await;

    // Toner empty: CUPS learns it when a job passes through.
    cups.set_toner(0);
    cups.print("Frontdesk");
    let toner = wait_fault(
        &viewer,
        id,
        "printer_toner_empty",
        "Frontdesk",
        FaultState::Raised,
    )
    .await;
    assert!(
        toner.event.evidence.contains("toner-empty"),
        "{:?}",
        toner.event
    );
    cups.set_toner(100);
    cups.print("Frontdesk");
    wait_fault(
        &viewer,
        id,
        "printer_toner_empty",
        "Frontdesk",
        FaultState::Cleared,
    )
    .await;

    // Each fault exactly once raised and once cleared.
    let all = faults_of(&viewer, id).await.expect("faults");
    for check in [
        "printer_stopped",
        "printer_out_of_paper",
        "printer_toner_empty",
    ] {
        let n = all.iter().filter(|f| f.event.check_id == check).count();
        assert_eq!(n, 2, "{check}: {all:?}");
    }

    // A specialist asks the workstation about the queue, live: a stopped
    // queue with its reason and the job waiting in it.
    cups.disable("Frontdesk", "paper jam reported by user");
    cups.print("Frontdesk");
    let sam = fleet.specialist_profile("sam", Role::Specialist, collector.addr);
    let (progress, result) = crate::diagnostics::diagnose(
        &sam,
        vitals_collector::ctl::DiagQuery {
            endpoint: id.into(),
            kind: "printer".into(),
            params: [("name".to_owned(), "Frontdesk".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    let r = result.expect("printer diagnostic");
    assert!(r.ok, "{r:?}");
    assert!(!progress.is_empty());
    let p: vitals_proto::domain::PrinterInfo = serde_json::from_str(&r.json).expect("json");
    assert_eq!(
        (p.name.as_str(), p.state.as_str()),
        ("Frontdesk", "stopped"),
        "{p:?}"
    );
    assert!(p.queued_jobs >= 1, "{p:?}");
    assert!(r.text.contains("Frontdesk"), "{}", r.text);
    agent.stop().await;
    collector.stop().await;
}

/// Host Resources printer row and Printer-MIB supplies as snmpd serves them.
fn printer_mib(status: u8, error_bits: &str, toner: i32) -> String {
    format!(
        ".1.3.6.1.2.1.25.3.5.1.1.1 integer {status}\n\
         .1.3.6.1.2.1.25.3.5.1.2.1 octet {error_bits}\n\
         .1.3.6.1.2.1.43.10.2.1.4.1.1 counter 48213\n\
         .1.3.6.1.2.1.43.11.1.1.6.1.1 string Black Toner Cartridge\n\
         .1.3.6.1.2.1.43.11.1.1.8.1.1 integer 12500\n\
         .1.3.6.1.2.1.43.11.1.1.9.1.1 integer {toner}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snmp_printer_jam_and_empty_toner_raise_and_clear() {
    const TEST: &str = "snmp_printer_jam_and_empty_toner_raise_and_clear";
    let fleet = Fleet::new("snmp");
    let helper = PathBuf::from(env!("CARGO_BIN_EXE_vitals-snmp-pass"));
    let snmpd = match Snmpd::start(&fleet.dir, &helper, &printer_mib(3, "00 00", 10_000)) {
        Ok(s) => s,
        Err(why) => return skip(TEST, &why),
    };
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let mut config = fleet.agent_config("ws-snmp", collector.addr);
    config.printers.network = vec![NetworkPrinter {
        name: "Dispatch HP".into(),
        address: snmpd.addr.to_string(),
        community: "public".into(),
        protocol: Default::default(),
        ipp_uri: None,
    }];
    let agent = RunningAgent::start(config);
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let id = "ws-snmp";
    let seen = watch_entries(&viewer).await;

    let printer = eventually(SLOW, "the network printer read", || async {
        let s = latest(&viewer, id).await?;
        s.printers
            .into_iter()
            .find(|p| p.name == "Dispatch HP" && p.source == "snmp" && p.state == "idle")
    })
    .await;
    assert_eq!(printer.page_count, Some(48213));
    assert_eq!(printer.supplies[0].name, "Black Toner Cartridge");
    assert_eq!(printer.supplies[0].percent, Some(80.0));
    assert!(printer.reasons.is_empty(), "{printer:?}");

    // jammed is bit 5 of hrPrinterDetectedErrorState: 0x04.
    snmpd.set(&printer_mib(1, "04 00", 10_000));
    let jam = wait_fault(
        &viewer,
        id,
        "printer_jammed",
        "Dispatch HP",
        FaultState::Raised,
    )
    .await;
    assert!(jam.event.evidence.contains("media-jam"), "{:?}", jam.event);
    snmpd.set(&printer_mib(3, "00 00", 10_000));
    wait_fault(
        &viewer,
        id,
        "printer_jammed",
        "Dispatch HP",
        FaultState::Cleared,
    )
    .await;

    // noToner is bit 3: 0x10; the supply level drops to zero with it.
    snmpd.set(&printer_mib(1, "10 00", 0));
    let toner = wait_fault(
        &viewer,
        id,
        "printer_toner_empty",
        "Dispatch HP",
        FaultState::Raised,
    )
    .await;
    assert!(
        toner.event.evidence.contains("toner-empty"),
        "{:?}",
        toner.event
    );
    snmpd.set(&printer_mib(3, "00 00", 12_500));
    wait_fault(
        &viewer,
        id,
        "printer_toner_empty",
        "Dispatch HP",
        FaultState::Cleared,
    )
    .await;

    // 3 % of toner left and every error bit clear, as many printers report
    // it: the level alone is one low-supply ticket naming the cartridge.
    let at = vitals_proto::now_ms();
    snmpd.set(&printer_mib(3, "00 00", 375));
    // (The empty toner above took the low-supply rung too: a new raise.)
    let low = eventually(SLOW, "printer_supply_low raised at 3 %", || async {
        faults_of(&viewer, id).await?.into_iter().find(|f| {
            f.event.check_id == "printer_supply_low"
                && f.event.state == FaultState::Raised
                && f.event.at_ms >= at
        })
    })
    .await;
    assert!(
        low.event
            .evidence
            .contains("Black Toner Cartridge on Dispatch HP")
            && low
                .event
                .evidence
                .contains("at 3 %, reported by the printer"),
        "{:?}",
        low.event
    );
    let tickets = eventually(WAIT, "one low-supply ticket", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        let t = c
            .tickets(vitals_collector::ctl::TicketQuery {
                endpoint: id.into(),
                check: "printer_supply_low".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .ok()?;
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    let on_stream = eventually(WAIT, "the ticket on the stream", || async {
        seen.arrival(tickets[0].id, RAISED, at)
    })
    .await;
    eprintln!(
        "printer_supply_low over SNMP at 3 %: level set to the ticket on WatchTickets {} ms (network printer probe every 1 s)",
        on_stream - at
    );
    let fixed_at = vitals_proto::now_ms();
    snmpd.set(&printer_mib(3, "00 00", 12_500));
    eventually(SLOW, "printer_supply_low cleared", || async {
        faults_of(&viewer, id).await?.into_iter().find(|f| {
            f.event.check_id == "printer_supply_low"
                && f.event.state == FaultState::Cleared
                && f.event.at_ms >= fixed_at
        })
    })
    .await;
    agent.stop().await;
    collector.stop().await;
}

/// Timeline kinds that mean a fault reached a ticket.
const RAISED: &[&str] = &["opened", "reopened", "fault_raised"];

/// A specialist's `WatchTickets` stream, collected as it arrives: (when,
/// in ms since the epoch; the entry).
pub(crate) struct Seen(
    std::sync::Arc<std::sync::Mutex<Vec<(i64, vitals_proto::wire::TicketEntry)>>>,
);

impl Seen {
    /// When the first entry of `ticket` of one of `kinds` arrived, at or
    /// after `since` (ms since the epoch).
    pub(crate) fn arrival(&self, ticket: u64, kinds: &[&str], since: i64) -> Option<i64> {
        self.0
            .lock()
            .expect("entries")
            .iter()
            .find(|(at, e)| {
                *at >= since && e.ticket == Some(ticket) && kinds.contains(&e.kind.as_str())
            })
            .map(|(at, _)| *at)
    }
}

pub(crate) async fn watch_entries(viewer: &Profile) -> Seen {
    let mut stream = Client::connect(viewer)
        .await
        .expect("viewer")
        .watch_tickets()
        .await
        .expect("watch");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            into.lock()
                .expect("entries")
                .push((vitals_proto::now_ms(), e));
        }
    });
    Seen(seen)
}

/// The agent binary, built by `cargo test --workspace`; built here if not.
pub(crate) fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join(format!("vitals-agent{}", std::env::consts::EXE_SUFFIX)))
        .expect("target dir");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "vitals-agent", "--bin", "vitals-agent"])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building vitals-agent failed");
    }
    bin
}

/// Runs `vitals-agent once --json` inside the namespace; returns the
/// snapshot and the (check, subject) of every fault it would raise.
fn once_in(
    ns: &DeskNamespace,
    config: &std::path::Path,
) -> (serde_json::Value, Vec<(String, String)>) {
    let out = ns
        .command(&agent_binary())
        .args(["once", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run agent in namespace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut faults: Vec<(String, String)> = v["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| {
            (
                f["check_id"].as_str().unwrap_or_default().to_owned(),
                f["subject"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    faults.sort();
    (v["snapshot"].clone(), faults)
}

/// The network faults, leaving out the collector the placeholder config
/// names (nothing listens there; every agent checks its collector).
fn network_faults(faults: &[(String, String)]) -> Vec<(String, String)> {
    faults
        .iter()
        .filter(|(c, s)| {
            (c.starts_with("dns_") || c.starts_with("gateway_") || c == "service_unreachable")
                && !s.starts_with("collector ")
        })
        .cloned()
        .collect()
}

#[test]
fn dns_gateway_loss_and_key_service_faults_in_a_namespace() {
    const TEST: &str = "dns_gateway_loss_and_key_service_faults_in_a_namespace";
    let fleet = Fleet::new("netns");
    let hosts = [
        ("10.231.7.10", "erp.city.test"),
        ("10.231.7.11", "files.city.test"),
    ];
    let ns = match DeskNamespace::start(&fleet.dir, "e2e", 7, &hosts) {
        Ok(ns) => ns,
        Err(why) => return skip(TEST, &why),
    };
    // A key service on the gateway's side of the link.
    let service = std::net::TcpListener::bind((ns.gateway.as_str(), 0)).expect("bind service");
    let service_addr = service.local_addr().expect("addr");
    let config = Fleet::once_config(
        &fleet.dir.join("agent"),
        &format!(
            "[printers]\ncups = \"\"\n[network]\ndns = [\"erp.city.test\", \"files.city.test\"]\n\
             ping_count = 20\ntimeout = \"1s\"\n\
             [[network.service]]\nname = \"erp\"\naddress = \"{service_addr}\"\n"
        ),
    );
    let erp = format!("erp ({service_addr})");
    let pair = |c: &str, s: &str| (c.to_owned(), s.to_owned());

    // Healthy: names resolve through dnsmasq, the gateway answers every probe.
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(network_faults(&faults), vec![], "{snap}");
    assert_eq!(
        snap["network"]["dns"][0]["addresses"][0], "10.231.7.10",
        "{snap}"
    );
    assert_eq!(snap["network"]["gateway"]["address"], ns.gateway.as_str());
    assert_eq!(snap["network"]["gateway"]["received"], 20, "{snap}");
    assert_eq!(snap["network"]["services"][0]["ok"], true, "{snap}");

    // DNS broken: every configured name fails, nothing else does.
    ns.drop_matching("udp dport 53");
    ns.drop_matching("tcp dport 53");
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(
        network_faults(&faults),
        vec![
            pair("dns_failing", "erp.city.test"),
            pair("dns_failing", "files.city.test")
        ],
        "{snap}"
    );
    ns.clear();
    assert_eq!(network_faults(&once_in(&ns, &config).1), vec![], "DNS back");

    // The gateway stops answering echo requests but still answers TCP:
    // it is there (echo filtered), measured over TCP, no fault.
    let gw = &ns.gateway;
    ns.drop_incoming(&format!("ip saddr {gw} icmp type echo-reply"));
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(network_faults(&faults), vec![], "{snap}");
    assert_eq!(
        snap["network"]["gateway"]["method"], "tcp (icmp lost)",
        "{snap}"
    );
    assert_eq!(snap["network"]["gateway"]["received"], 3, "{snap}");
    assert_eq!(snap["network"]["gateway"]["loss_percent"], 0.0, "{snap}");
    // Echo requests refused on the way out (a local firewall): ICMP cannot
    // be used, TCP measures, no fault either.
    ns.clear();
    ns.drop_matching(&format!("ip daddr {gw} icmp type echo-request"));
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(network_faults(&faults), vec![], "{snap}");
    assert_eq!(snap["network"]["gateway"]["method"], "tcp", "{snap}");
    ns.clear();

    // Nothing answers at all: unreachable.
    ns.drop_incoming(&format!("ip saddr {gw} icmp type echo-reply"));
    ns.drop_incoming(&format!("ip saddr {gw} tcp sport 80"));
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(
        network_faults(&faults),
        vec![
            pair("gateway_lossy", &ns.gateway),
            pair("gateway_unreachable", &ns.gateway)
        ],
        "{snap}"
    );
    assert_eq!(snap["network"]["gateway"]["received"], 0);
    ns.clear();

    // Half the echo requests lost: lossy, not unreachable.
    ns.drop_incoming(&format!(
        "ip saddr {} icmp type echo-reply numgen random mod 100 < 50",
        ns.gateway
    ));
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(
        network_faults(&faults),
        vec![pair("gateway_lossy", &ns.gateway)],
        "{snap}"
    );
    let loss = snap["network"]["gateway"]["loss_percent"]
        .as_f64()
        .expect("loss");
    assert!((20.0..100.0).contains(&loss), "{loss}");
    ns.clear();
    assert_eq!(
        network_faults(&once_in(&ns, &config).1),
        vec![],
        "gateway back"
    );

    // The key service goes away: refused, so unreachable.
    drop(service);
    let (snap, faults) = once_in(&ns, &config);
    assert_eq!(
        network_faults(&faults),
        vec![pair("service_unreachable", &erp)],
        "{snap}"
    );
    assert!(
        snap["network"]["services"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{snap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_disk_filled_to_97_percent_opens_a_ticket_that_resolves_itself() {
    use vitals_proto::domain::FaultState;
    let fleet = Fleet::new("diskfull");
    let disk = match components::LoopDisk::new(&fleet.dir) {
        Ok(d) => d,
        Err(why) => {
            return components::skip(
                "real_disk_filled_to_97_percent_opens_a_ticket_that_resolves_itself",
                &why,
            );
        }
    };
    let config = with_policy(
        &fleet,
        "[tickets]\nquiet_period = \"1s\"\n\
         [[check]]\nid = \"disk_nearly_full\"\ntitle = \"Disk nearly full\"\n\
         measurement = \"disk.used_percent\"\n\
         direction = \"above\"\nraise = 95.0\nclear = 90.0\nhold = \"0s\"\nseverity = \"warning\"\n",
    );
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-disk", collector.addr));
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let subject = disk.mount.to_string_lossy().into_owned();
    let ours = |f: &vitals_proto::domain::FaultRecord| f.event.subject == subject;

    disk.fill_to(97.0);
    let raised = eventually(WAIT, "disk_nearly_full raised", || async {
        let f = faults_of(&viewer, "ws-disk").await?;
        f.into_iter()
            .find(|f| ours(f) && f.event.state == FaultState::Raised)
    })
    .await;
    assert_eq!(raised.event.check_id, "disk_nearly_full");
    assert!(
        (95.0..=99.0).contains(&raised.event.value),
        "{:?}",
        raised.event
    );
    // The fault is a ticket: measured value, evidence, the snapshot at
    // fault time showing the full disk, and the steps to fix it.
    let ticket = eventually(WAIT, "a ticket for the full disk", || async {
        let mut c = Client::connect(&viewer).await.ok()?;
        let t = c
            .tickets(vitals_collector::ctl::TicketQuery {
                endpoint: "ws-disk".into(),
                check: "disk_nearly_full".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .ok()?;
        t.into_iter().find(|t| t.subject == subject)
    })
    .await;
    assert_eq!(ticket.title, "Disk nearly full");
    assert_eq!(ticket.value, raised.event.value);
    assert!(ticket.evidence.contains(&subject), "{}", ticket.evidence);
    let detail = eventually(WAIT, "the ticket's snapshot at fault time", || async {
        let d = ticket_of(&viewer, ticket.id).await?;
        d.snapshot.is_some().then_some(d)
    })
    .await;
    let at_fault = detail
        .snapshot
        .as_ref()
        .and_then(|s| s.disks.iter().find(|d| d.mount_point == subject).cloned())
        .expect("the disk in the snapshot at fault time");
    assert!(at_fault.used_percent() >= 95.0, "{at_fault:?}");
    let kb = detail.knowledge.as_deref().unwrap_or_default();
    assert!(
        kb.contains("## What the user can do") && kb.contains("## What the specialist does"),
        "{kb}"
    );

    disk.empty();
    let cleared = eventually(WAIT, "disk_nearly_full cleared", || async {
        let f = faults_of(&viewer, "ws-disk").await?;
        f.into_iter()
            .find(|f| ours(f) && f.event.state == FaultState::Cleared)
    })
    .await;
    assert!(cleared.seq > raised.seq);
    assert!(cleared.event.value < 90.0, "{:?}", cleared.event);
    let all: Vec<_> = Client::connect(&viewer)
        .await
        .expect("viewer")
        .faults("ws-disk", 50)
        .await
        .expect("faults")
        .into_iter()
        .filter(ours)
        .collect();
    assert_eq!(all.len(), 2, "exactly one raise and one clear: {all:?}");
    // Clear past the quiet period: the ticket resolved itself.
    let timeline = eventually(WAIT, "the ticket auto-resolved", || async {
        let d = ticket_of(&viewer, ticket.id).await?;
        (d.ticket.status == vitals_proto::tickets::Status::Resolved).then_some(d.timeline)
    })
    .await;
    let kinds: Vec<_> = timeline.iter().map(|e| e.kind.clone()).collect();
    use vitals_proto::tickets::Kind;
    assert_eq!(
        kinds,
        vec![Kind::Opened, Kind::FaultCleared, Kind::AutoResolved],
        "{timeline:?}"
    );
    agent.stop().await;
    collector.stop().await;
    drop(disk);
}

/// The printer's own toner and paper faults, with no job ever sent to its
/// queue: CUPS alone would not know them, the printer behind the
/// driverless queue does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printer_itself_reports_toner_and_paper_out_with_no_job_sent() {
    const TEST: &str = "the_printer_itself_reports_toner_and_paper_out_with_no_job_sent";
    let fleet = Fleet::new("cupsdevice");
    let cups = match Cups::start(&fleet.dir, &["Frontdesk"]) {
        Ok(c) => c,
        Err(why) => return skip(TEST, &why),
    };
    let config = with_policy(
        &fleet,
        "[tickets]\nquiet_period = \"1s\"\n\
         [[check]]\nid = \"printer_toner_empty\"\ntitle = \"Printer toner or ink empty\"\n\
         measurement = \"printer.toner_empty\"\ndirection = \"above\"\nraise = 1.0\nclear = 0.5\n\
         severity = \"warning\"\nladder = \"printer_toner\"\nticket_per = \"via\"\n\
         [[check]]\nid = \"printer_supply_low\"\ntitle = \"Printer supply running low\"\n\
         measurement = \"printer.supply_percent\"\ndirection = \"below\"\nraise = 10.0\n\
         clear = 15.0\nseverity = \"info\"\nladder = \"printer_toner\"\nticket_per = \"via\"\n\
         [[check]]\nid = \"printer_supply_empty\"\ntitle = \"Printer supply empty\"\n\
         measurement = \"printer.supply_percent\"\ndirection = \"below\"\nraise = 0.0\n\
         clear = 5.0\nseverity = \"warning\"\nladder = \"printer_toner\"\nticket_per = \"via\"\n\
         [[check]]\nid = \"printer_out_of_paper\"\ntitle = \"Printer out of paper\"\n\
         measurement = \"printer.media_empty\"\ndirection = \"above\"\nraise = 1.0\nclear = 0.5\n\
         severity = \"warning\"\n",
    );
    let collector = RunningCollector::start(config).await;
    // ippeveprinter lists its supplies once they have been set.
    cups.set_toner(100);
    let mut agent_config = fleet.agent_config("ws-device", collector.addr);
    agent_config.printers.cups = cups.url.clone();
    // The same printer named as a network printer read over IPP, and one
    // on `auto` that has no IPP (nothing listens there) and no SNMP.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    agent_config.printers.network = vec![
        NetworkPrinter {
            name: "Lobby IPP".into(),
            address: "127.0.0.1".into(),
            community: "public".into(),
            protocol: vitals_agent::config::PrinterProtocol::Ipp,
            ipp_uri: Some(format!("ipp://{}/ipp/print", cups.printer)),
        },
        NetworkPrinter {
            name: "Cellar".into(),
            address: silent.local_addr().expect("addr").to_string(),
            community: "public".into(),
            protocol: vitals_agent::config::PrinterProtocol::Auto,
            ipp_uri: None,
        },
    ];
    let agent = RunningAgent::start(agent_config);
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let id = "ws-device";
    // What a specialist's queue sees, with when it arrived.
    let seen = watch_entries(&viewer).await;
    let arrived = |ticket: u64, kinds: &[&str]| seen.arrival(ticket, kinds, i64::MIN);

    // The queue's supplies come from the printer: its toner and its waste
    // tank, told apart.
    let queue = eventually(SLOW, "the printer's own supplies on the queue", || async {
        let s = latest(&viewer, id).await?;
        s.printers
            .into_iter()
            .find(|p| p.name == "Frontdesk" && p.supplies.len() >= 2)
    })
    .await;
    use vitals_proto::domain::SupplyKind;
    assert!(
        queue.supplies.iter().any(|s| s.kind == SupplyKind::Waste)
            && queue
                .supplies
                .iter()
                .any(|s| s.kind == SupplyKind::Consumed),
        "{:?}",
        queue.supplies
    );
    assert!(queue.error.is_empty(), "{}", queue.error);
    let network = eventually(SLOW, "the network printers read", || async {
        let s = latest(&viewer, id).await?;
        let ipp = s
            .printers
            .iter()
            .find(|p| p.name == "Lobby IPP" && !p.supplies.is_empty())?;
        let cellar = s.printers.iter().find(|p| p.name == "Cellar")?;
        Some((ipp.clone(), cellar.clone()))
    })
    .await;
    assert_eq!(
        (network.0.source.as_str(), network.0.state.as_str()),
        ("ipp", "idle"),
        "{:?}",
        network.0
    );
    assert_eq!(network.1.state, "unreachable", "{:?}", network.1);
    assert!(
        network.1.error.contains("IPP:") && network.1.error.contains("SNMP:"),
        "auto tried both: {}",
        network.1.error
    );

    // Every ticket of the endpoint that a check of `ladder` raised: the
    // toner's rungs (bit empty, level low, level empty) are one ticket.
    let tickets = |checks: &'static [&'static str]| {
        let viewer = viewer.clone();
        async move {
            let mut c = Client::connect(&viewer).await.ok()?;
            let all = c
                .tickets(vitals_collector::ctl::TicketQuery {
                    endpoint: id.into(),
                    limit: 50,
                    ..Default::default()
                })
                .await
                .ok()?;
            Some(
                all.into_iter()
                    .filter(|t| t.subject == "Frontdesk" && checks.contains(&t.check_id.as_str()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    const TONER: &[&str] = &[
        "printer_toner_empty",
        "printer_supply_low",
        "printer_supply_empty",
    ];
    const PAPER: &[&str] = &["printer_out_of_paper"];

    for (check, ladder, reason, out, back) in [
        ("printer_toner_empty", TONER, "toner-empty", 0u16, 100u16),
        ("printer_out_of_paper", PAPER, "media-empty", 0, 250),
    ] {
        let set = |level: u16| {
            if check == "printer_toner_empty" {
                cups.set_toner(level as u8);
            } else {
                cups.set_paper(level);
            }
        };
        let at = vitals_proto::now_ms();
        set(out);
        let raised = wait_fault(&viewer, id, check, "Frontdesk", FaultState::Raised).await;
        eprintln!(
            "{check} with no job: condition to FaultRaised {} ms, to the collector {} ms (printer probe every 1 s)",
            raised.event.at_ms - at,
            raised.received_at_ms - at
        );
        assert!(raised.event.evidence.contains(reason), "{:?}", raised.event);
        // The network printer over IPP says the same of itself.
        wait_fault(&viewer, id, check, "Lobby IPP", FaultState::Raised).await;
        let open = eventually(WAIT, "one ticket", || async {
            tickets(ladder).await.filter(|t| !t.is_empty())
        })
        .await;
        // Give the other rungs a probe interval to open a second one.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let open = tickets(ladder).await.unwrap_or(open);
        assert_eq!(open.len(), 1, "one ticket for the problem: {open:?}");
        let on_stream = eventually(WAIT, "the ticket on the stream", || async {
            arrived(open[0].id, &["opened", "reopened"])
        })
        .await;
        eprintln!(
            "{check} with no job: condition to the ticket on WatchTickets {} ms",
            on_stream - at
        );
        let fixed_at = vitals_proto::now_ms();
        set(back);
        wait_fault(&viewer, id, check, "Frontdesk", FaultState::Cleared).await;
        let resolved = eventually(SLOW, "the ticket auto-resolved", || async {
            let t = tickets(ladder).await?;
            (t.len() == 1 && !t[0].status.is_open()).then_some(t)
        })
        .await;
        let on_stream = eventually(WAIT, "auto-resolved on the stream", || async {
            arrived(resolved[0].id, &["auto_resolved"])
        })
        .await;
        eprintln!(
            "{check}: fix to auto-resolve {} ms, on WatchTickets {} ms (quiet period 1 s)",
            resolved[0].resolved_ms.unwrap_or_default() - fixed_at,
            on_stream - fixed_at
        );
    }
    // A cartridge at 5 %: one low-supply ticket that names it.
    let at = vitals_proto::now_ms();
    cups.set_toner(5);
    // (The 0 % drill above raised this check too: wait for a new raise.)
    let low = eventually(SLOW, "printer_supply_low raised at 5 %", || async {
        faults_of(&viewer, id).await?.into_iter().find(|f| {
            f.event.via == "Frontdesk"
                && f.event.check_id == "printer_supply_low"
                && f.event.state == FaultState::Raised
                && f.event.at_ms >= at
        })
    })
    .await;
    eprintln!(
        "printer_supply_low with no job: condition to FaultRaised {} ms (printer probe every 1 s)",
        low.event.at_ms - at
    );
    assert!(
        low.event
            .evidence
            .contains("Black Toner on Frontdesk (ipp://")
            && low
                .event
                .evidence
                .contains("at 5 %, reported by the printer"),
        "{:?}",
        low.event
    );
    let lows = eventually(WAIT, "the low-supply ticket", || async {
        tickets(&["printer_supply_low"])
            .await
            .filter(|t| t.iter().any(|t| t.status.is_open()))
    })
    .await;
    assert_eq!(
        lows.iter().filter(|t| t.status.is_open()).count(),
        1,
        "{lows:?}"
    );
    let low_ticket = lows.iter().find(|t| t.status.is_open()).expect("open").id;
    let on_stream = eventually(WAIT, "the low-supply ticket on the stream", || async {
        seen.arrival(low_ticket, RAISED, at)
    })
    .await;
    eprintln!(
        "printer_supply_low with no job: condition to the ticket on WatchTickets {} ms",
        on_stream - at
    );
    let fixed_at = vitals_proto::now_ms();
    cups.set_toner(100);
    eventually(SLOW, "printer_supply_low cleared", || async {
        faults_of(&viewer, id).await?.into_iter().find(|f| {
            f.event.via == "Frontdesk"
                && f.event.check_id == "printer_supply_low"
                && f.event.state == FaultState::Cleared
                && f.event.at_ms >= fixed_at
        })
    })
    .await;

    // Each drill raised and cleared its checks once: the toner at 0 % and
    // at 5 % each took the low-supply rung.
    let all = faults_of(&viewer, id).await.expect("faults");
    for (check, times) in [
        ("printer_toner_empty", 2),
        ("printer_out_of_paper", 2),
        ("printer_supply_low", 4),
    ] {
        let n = all
            .iter()
            .filter(|f| {
                f.event.check_id == check
                    && (f.event.subject == "Frontdesk" || f.event.via == "Frontdesk")
            })
            .count();
        assert_eq!(n, times, "{check}: {all:?}");
    }
    // No job was ever sent to the queue.
    let s = latest(&viewer, id).await.expect("snapshot");
    let q = s
        .printers
        .iter()
        .find(|p| p.name == "Frontdesk")
        .expect("queue");
    assert_eq!(q.queued_jobs, 0);
    agent.stop().await;
    collector.stop().await;
}
