//! A desk in a network namespace of its own: the agent runs there as the
//! service would (`vitals-agent run`), pinging its real gateway, asking a
//! real DNS server (dnsmasq) and connecting to key services behind the
//! gateway, and streams to a collector listening on the gateway's address.
//! Each drill breaks the network with nftables inside the namespace and
//! follows the ticket on the specialists' `WatchTickets` stream: one right
//! ticket per problem, from the fault to the fix. The drills print how
//! long each step took (`--nocapture`; figures in BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vitals_collector::ctl::{Client, Profile, TicketQuery};
use vitals_proto::tickets::Ticket;
use vitals_proto::wire;
use vitals_tests::components::{Daemon, DeskNamespace, skip};
use vitals_tests::*;

use crate::probes::agent_binary;

/// The network probe's interval in these drills: a fault must reach the
/// ticket queue within one interval and a second.
const NETWORK_EVERY: Duration = Duration::from_secs(2);
/// The quiet period before a cleared ticket resolves.
const QUIET: &str = "3s";
/// How long a drill step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

/// The shipped policy's checks of what the desk itself is made of (its
/// network, interfaces, Wi-Fi and printers), with the network checks'
/// holds at zero: the drills test ticketing, not patience. The desk shares
/// this machine's disks, memory, CPU and clock, which are the machine's
/// and not the desk's (a CI machine with a full disk is not a broken
/// desk; the disk e2e tests those checks on a disk of their own). Then a
/// short quiet period and the shipped symptom rule with a short settle
/// time.
fn drill_policy() -> String {
    const DESK: &[&str] = &[
        "gateway.",
        "dns.",
        "service.",
        "interface.",
        "wifi.",
        "printer.",
    ];
    const NETWORK: &[&str] = &["gateway.", "dns.", "service."];
    let text = vitals_proto::policy::DEFAULT;
    let first = text.find("[[check]]").expect("checks");
    let mut checks = String::new();
    for block in text[first..]
        .split("[[check]]")
        .filter(|b| !b.trim().is_empty())
    {
        let measurement = block
            .lines()
            .find_map(|l| l.strip_prefix("measurement = \""))
            .unwrap_or_default();
        if !DESK.iter().any(|m| measurement.starts_with(m)) {
            continue;
        }
        let network = NETWORK.iter().any(|m| measurement.starts_with(m));
        checks.push_str("[[check]]");
        for l in block.lines() {
            if network && l.starts_with("hold = ") {
                checks.push_str("hold = \"0s\"\n");
            } else {
                checks.push_str(l);
                checks.push('\n');
            }
        }
    }
    format!(
        "{checks}\n[tickets]\nquiet_period = \"{QUIET}\"\n\n[[tickets.depends]]\n\
         cause = [\"gateway_unreachable\", \"link_down\"]\n\
         symptoms = [\"dns_failing\", \"dns_slow\", \"service_unreachable\"]\n\
         settle = \"4s\"\n"
    )
}

#[test]
fn the_drill_policy_holds_the_desk_s_checks_only() {
    let p = vitals_proto::policy::Policy::parse(&drill_policy(), "drill.toml").expect("valid");
    let ids: Vec<&str> = p.checks.iter().map(|c| c.id.as_str()).collect();
    for id in [
        "gateway_lossy",
        "dns_failing",
        "service_unreachable",
        "printer_supply_low",
        "link_down",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    for id in [
        "disk_nearly_full",
        "memory_pressure",
        "clock_skew",
        "reboot_pending",
    ] {
        assert!(!ids.contains(&id), "{id} left out");
    }
    let lossy = p
        .checks
        .iter()
        .find(|c| c.id == "gateway_lossy")
        .expect("lossy");
    assert!(lossy.hold.is_zero());
    let wifi = p.checks.iter().find(|c| c.id == "wifi_weak").expect("wifi");
    assert!(
        !wifi.hold.is_zero(),
        "only the network checks' holds are zero"
    );
}

/// A desk with its agent running, a collector on its gateway, and the
/// ticket stream of a specialist.
struct Desk {
    id: String,
    ns: DeskNamespace,
    viewer: Profile,
    entries: mpsc::UnboundedReceiver<(Instant, wire::TicketEntry)>,
    collector: Option<RunningCollector>,
    _agent: Daemon,
    _services: Vec<std::net::TcpListener>,
}

impl Desk {
    /// `Err` says why it cannot run here (not root, no dnsmasq...).
    async fn start(fleet: &Fleet, tag: &str, subnet: u8) -> Result<Desk, String> {
        let hosts = [
            ("10.20.1.10", "erp.city.test"),
            ("10.20.1.11", "files.city.test"),
        ];
        let ns = DeskNamespace::start(&fleet.dir, tag, subnet, &hosts)?;
        let id = format!("ws-{tag}");
        // Two key services behind the gateway.
        let services: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind((ns.behind.as_str(), 0)).expect("bind service"))
            .collect();
        let mut config = with_policy(fleet, &drill_policy());
        config.listen = format!("{}:0", ns.gateway).parse().expect("addr");
        let collector = RunningCollector::start(config).await;
        let agent_toml = write_agent_config(fleet, &id, collector.addr, &services);
        let agent = Daemon::spawn(
            "ip",
            &[
                "netns",
                "exec",
                &ns.name,
                &agent_binary().to_string_lossy(),
                "run",
                "--config",
                &agent_toml.to_string_lossy(),
            ],
            &fleet.dir.join(format!("agent-{tag}.log")),
        )?;
        let viewer = fleet.specialist_profile("vera", SpecialistRole::Viewer, collector.addr);
        let mut watch = Client::connect(&viewer)
            .await
            .expect("viewer")
            .watch_tickets()
            .await
            .expect("watch");
        let (tx, entries) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(e)) = watch.message().await {
                if tx.send((Instant::now(), e)).is_err() {
                    break;
                }
            }
        });
        let desk = Desk {
            id,
            ns,
            viewer,
            entries,
            collector: Some(collector),
            _agent: agent,
            _services: services,
        };
        eventually(STEP, "the desk's agent connected", || async {
            let d = Client::connect(&desk.viewer)
                .await
                .ok()?
                .endpoint(&desk.id)
                .await
                .ok()?;
            (d.committed_seq > 0).then_some(())
        })
        .await;
        Ok(desk)
    }

    /// The next entry of the ticket stream that `pred` accepts.
    async fn next(
        &mut self,
        what: &str,
        pred: impl Fn(&wire::TicketEntry) -> bool,
    ) -> (Instant, wire::TicketEntry) {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut passed = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.entries.recv()).await {
                Ok(Some((at, e))) if pred(&e) => return (at, e),
                Ok(Some((_, e))) => passed.push(e),
                Ok(None) => panic!("the ticket stream ended waiting for {what}"),
                Err(_) => panic!("no {what} within {STEP:?}; the stream had {passed:?}"),
            }
        }
    }

    /// The next ticket opening (or reopening: a problem back within the
    /// reopen window is the same ticket again) whose check is one of
    /// `checks`.
    async fn opened(&mut self, what: &str, checks: &[&str]) -> (Instant, u64) {
        loop {
            let (at, e) = self
                .next(what, |e| e.kind == "opened" || e.kind == "reopened")
                .await;
            let id = e.ticket.expect("a ticket's entry");
            let check = self.ticket(id).await.ticket.check_id;
            if checks.contains(&check.as_str()) {
                return (at, id);
            }
        }
    }

    /// Every entry that arrived so far.
    fn drain(&mut self) -> Vec<wire::TicketEntry> {
        let mut out = Vec::new();
        while let Ok((_, e)) = self.entries.try_recv() {
            out.push(e);
        }
        out
    }

    async fn client(&self) -> Client {
        Client::connect(&self.viewer).await.expect("viewer")
    }

    async fn ticket(&self, id: u64) -> vitals_proto::tickets::TicketDetail {
        self.client().await.ticket(id).await.expect("ticket")
    }

    /// The desk's open tickets.
    async fn open(&self) -> Vec<Ticket> {
        self.client()
            .await
            .tickets(TicketQuery {
                open_only: true,
                endpoint: self.id.clone(),
                limit: 50,
                ..Default::default()
            })
            .await
            .expect("tickets")
    }

    /// Waits until the desk has no open ticket.
    async fn settled(&self) {
        eventually(STEP, "no open ticket on the desk", || async {
            self.open().await.is_empty().then_some(())
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(c) = self.collector.take() {
            c.stop().await;
        }
    }
}

fn on(ticket: u64, kind: &'static str) -> impl Fn(&wire::TicketEntry) -> bool {
    move |e| e.ticket == Some(ticket) && e.kind == kind
}

fn ms(from: Instant, to: Instant) -> u128 {
    to.duration_since(from).as_millis()
}

fn write_agent_config(
    fleet: &Fleet,
    id: &str,
    collector: std::net::SocketAddr,
    services: &[std::net::TcpListener],
) -> PathBuf {
    let (cert, key) = fleet.issue(&vitals_proto::identity::Identity::Endpoint(
        id.parse().expect("id"),
    ));
    let dir = fleet.dir.join(id);
    std::fs::create_dir_all(&dir).expect("dir");
    let service = |name: &str, l: &std::net::TcpListener| {
        format!(
            "[[network.service]]\nname = \"{name}\"\naddress = \"{}\"\n",
            l.local_addr().expect("addr")
        )
    };
    let path = dir.join("agent.toml");
    let p = |p: &Path| p.display().to_string();
    std::fs::write(
        &path,
        format!(
            "collector = \"https://{collector}\"\nserver_name = \"localhost\"\n\
             state_dir = {:?}\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
             [link]\nsnapshot_interval = \"1s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [probes]\nnetwork = {{ interval = \"{}s\", timeout = \"4s\" }}\n\
             smart = {{ enabled = false }}\n\
             [printers]\ncups = \"\"\n\
             [network]\ndns = [\"erp.city.test\", \"files.city.test\"]\n\
             ping_count = 10\ntimeout = \"1s\"\n{}{}",
            p(&dir.join("state")),
            p(&fleet.paths().ca_cert()),
            p(&cert),
            p(&key),
            NETWORK_EVERY.as_secs(),
            service("erp", &services[0]),
            service("files", &services[1]),
        ),
    )
    .expect("write agent.toml");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_drills_make_one_right_ticket_each() {
    const TEST: &str = "network_drills_make_one_right_ticket_each";
    let fleet = Fleet::new("drills");
    let mut desk = match Desk::start(&fleet, "drill", 8).await {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let gw = desk.ns.gateway.clone();
    let resolver = format!("resolver {gw}");
    let open = desk.open().await;
    assert!(open.is_empty(), "a healthy desk has no ticket: {open:?}");

    // 1. The DNS server stops answering: both names fail through the one
    //    resolver, and that is one ticket listing them.
    let broke = Instant::now();
    desk.ns.drop_matching("udp dport 53");
    desk.ns.drop_matching("tcp dport 53");
    let (at, dns) = desk.opened("the DNS ticket", &["dns_failing"]).await;
    eprintln!(
        "drill dns: fault → ticket {} ms (network probe every {NETWORK_EVERY:?})",
        ms(broke, at)
    );
    eventually(STEP, "both names on the one ticket", || async {
        let t = desk.ticket(dns).await.ticket;
        (t.members.len() == 2).then_some(())
    })
    .await;
    let t = desk.ticket(dns).await.ticket;
    assert_eq!(t.subject, resolver);
    assert_eq!(
        t.members.keys().collect::<Vec<_>>(),
        vec!["erp.city.test", "files.city.test"]
    );
    assert_eq!(t.check_id, "dns_failing");
    let open = desk.open().await;
    assert_eq!(open.len(), 1, "one ticket for the desk: {open:?}");
    let fixed = Instant::now();
    desk.ns.clear();
    let (cleared, _) = desk.next("DNS cleared", on(dns, "fault_cleared")).await;
    let (resolved, _) = desk.next("DNS resolved", on(dns, "auto_resolved")).await;
    eprintln!(
        "drill dns: fix → cleared {} ms, → auto-resolved {} ms (quiet period {QUIET})",
        ms(fixed, cleared),
        ms(fixed, resolved)
    );
    desk.settled().await;
    let noise: Vec<_> = desk
        .drain()
        .into_iter()
        .filter(|e| e.kind == "opened")
        .collect();
    assert!(noise.is_empty(), "no other ticket: {noise:?}");

    // 2. Half the gateway's echo requests lost, then all, then a third:
    //    one ticket whose severity and priority rise and fall back.
    // Replies lost on their way back, as on a lossy link.
    let echo = format!("ip saddr {gw} icmp type echo-reply");
    let broke = Instant::now();
    desk.ns
        .drop_incoming(&format!("{echo} numgen inc mod 2 == 0"));
    let (at, gateway) = desk.opened("the gateway ticket", &["gateway_lossy"]).await;
    eprintln!("drill gateway: 50 % loss → ticket {} ms", ms(broke, at));
    let lossy = desk.ticket(gateway).await.ticket;
    assert_eq!(
        (lossy.check_id.as_str(), lossy.subject.as_str()),
        ("gateway_lossy", gw.as_str())
    );
    desk.ns.clear();
    let worse = Instant::now();
    // All of it: echo and the TCP cross-check alike.
    desk.ns.drop_incoming(&echo);
    desk.ns
        .drop_incoming(&format!("ip saddr {gw} tcp sport 80"));
    let (at, up) = desk
        .next("severity up", on(gateway, "severity_changed"))
        .await;
    eprintln!(
        "drill gateway: 100 % loss → priority up {} ms",
        ms(worse, at)
    );
    assert!(
        up.text.contains("gateway_unreachable raised"),
        "{}",
        up.text
    );
    let unreachable = desk.ticket(gateway).await.ticket;
    assert_eq!(unreachable.check_id, "gateway_unreachable");
    assert!(
        unreachable.priority < lossy.priority,
        "{:?} is more urgent than {:?}",
        unreachable.priority,
        lossy.priority
    );
    desk.ns.clear();
    let better = Instant::now();
    desk.ns
        .drop_incoming(&format!("{echo} numgen inc mod 10 < 3"));
    let (at, down) = desk
        .next("severity down", on(gateway, "severity_changed"))
        .await;
    eprintln!(
        "drill gateway: 30 % loss → priority down {} ms",
        ms(better, at)
    );
    assert!(
        down.text.contains("gateway_lossy still raised"),
        "{}",
        down.text
    );
    assert_eq!(desk.ticket(gateway).await.ticket.priority, lossy.priority);
    desk.ns.clear();
    let fixed = Instant::now();
    let (resolved, _) = desk
        .next("gateway resolved", on(gateway, "auto_resolved"))
        .await;
    eprintln!(
        "drill gateway: fix → auto-resolved {} ms (quiet period {QUIET})",
        ms(fixed, resolved)
    );
    desk.settled().await;
    let others: Vec<_> = desk
        .drain()
        .into_iter()
        .filter(|e| e.ticket != Some(gateway) && e.kind == "opened")
        .collect();
    assert!(others.is_empty(), "one ticket for the gateway: {others:?}");

    // 3. The gateway unreachable while DNS and both key services fail too:
    //    one ticket, the others linked to it as symptoms.
    let broke = Instant::now();
    desk.ns.drop_incoming(&echo);
    desk.ns
        .drop_incoming(&format!("ip saddr {gw} tcp sport 80"));
    desk.ns.drop_matching("udp dport 53");
    desk.ns.drop_matching("tcp dport 53");
    desk.ns
        .drop_matching(&format!("ip daddr {} tcp flags syn", desk.ns.behind));
    let (at, cause) = desk
        .opened(
            "the gateway ticket",
            &["gateway_lossy", "gateway_unreachable"],
        )
        .await;
    eprintln!("drill symptoms: fault → ticket {} ms", ms(broke, at));
    eventually(STEP, "DNS and both services linked as symptoms", || async {
        let timeline = desk.ticket(cause).await.timeline;
        let linked = |what: &str| {
            timeline
                .iter()
                .any(|e| e.kind.as_str() == "symptom" && e.text.contains(what))
        };
        (linked("dns_failing erp.city.test")
            && linked("dns_failing files.city.test")
            && linked("service_unreachable erp (")
            && linked("service_unreachable files ("))
        .then_some(())
    })
    .await;
    let open = desk.open().await;
    assert_eq!(
        open.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![cause],
        "only the cause's ticket is open: {open:?}"
    );
    // All of it recovers: the symptoms clear with their cause, no ticket
    // of their own opens.
    let fixed = Instant::now();
    desk.ns.clear();
    let (resolved, _) = desk
        .next("the cause resolved", on(cause, "auto_resolved"))
        .await;
    eprintln!(
        "drill symptoms: fix → auto-resolved {} ms (quiet period {QUIET})",
        ms(fixed, resolved)
    );
    // Past the settle time as well.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let opened: Vec<_> = desk
        .drain()
        .into_iter()
        .filter(|e| e.kind == "opened" || e.kind == "reopened")
        .collect();
    assert!(opened.is_empty(), "no symptom ticket: {opened:?}");
    assert!(desk.open().await.is_empty());
    desk.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_desk_opens_no_ticket_in_three_minutes() {
    const TEST: &str = "a_healthy_desk_opens_no_ticket_in_three_minutes";
    let fleet = Fleet::new("healthy");
    let mut desk = match Desk::start(&fleet, "calm", 9).await {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(180)).await;
    // The agent was measuring all along: its network probe ran every
    // interval and reached the collector.
    let d = desk
        .client()
        .await
        .endpoint(&desk.id)
        .await
        .expect("endpoint");
    assert!(
        d.committed_seq >= 60,
        "snapshots kept coming: {}",
        d.committed_seq
    );
    let snapshot = d.latest.expect("latest snapshot");
    assert_eq!(
        snapshot.network.gateway.as_ref().map(|g| g.received),
        Some(10),
        "the gateway answered every echo"
    );
    assert!(
        snapshot.network.dns.iter().all(|n| n.ok),
        "{:?}",
        snapshot.network.dns
    );
    let entries = desk.drain();
    assert!(
        entries.is_empty(),
        "nothing happened to any ticket in {:?}: {entries:?}",
        start.elapsed()
    );
    let faults = desk
        .client()
        .await
        .faults(&desk.id, 100)
        .await
        .expect("faults");
    assert!(faults.is_empty(), "no fault raised: {faults:?}");
    desk.stop().await;
}
