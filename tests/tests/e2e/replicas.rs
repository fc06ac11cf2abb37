//! Collector replicas sharing PostgreSQL and routing live traffic over a
//! real NATS server: a specialist on one replica diagnoses a desk held by
//! another (progress, cancellation, audit, waiting for it to come online),
//! a desk's newer session on one replica ends its older one on another,
//! desk actions reach the leader from any replica, and a bus outage fails
//! only what crosses replicas, with a clear error, until it is back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vitals_collector::config::ClusterConfig;
use vitals_collector::ctl::{Client, DiagQuery, TicketChange};
use vitals_proto::identity::Role;
use vitals_tests::links::{LinkAgent, numbered_event};
use vitals_tests::*;

use crate::diagnostics::diagnose;

/// PostgreSQL and a NATS server for `test`, or why they cannot run here.
fn components(
    test: &str,
    fleet: &Fleet,
) -> Option<(&'static components::Postgres, components::Nats)> {
    let pg = match components::Postgres::shared() {
        Ok(pg) => pg,
        Err(why) => {
            components::skip(test, &why);
            return None;
        }
    };
    match components::Nats::start(&fleet.dir.join("nats")) {
        Ok(nats) => Some((pg, nats)),
        Err(why) => {
            components::skip(test, &why);
            None
        }
    }
}

/// A replica serving in this process: the fleet's database, the bus.
async fn replica(fleet: &Fleet, name: &str, nats: &components::Nats) -> RunningCollector {
    let mut c = fleet.collector_config();
    c.replica = Some(name.into());
    c.cluster = Some(ClusterConfig {
        nats_url: nats.url(),
        nats_ca_file: None,
        nats_credentials_file: None,
    });
    RunningCollector::start(c).await
}

fn query(endpoint: &str, kind: &str, params: &[(&str, &str)]) -> DiagQuery {
    DiagQuery {
        endpoint: endpoint.into(),
        kind: kind.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_route_sessions_diagnostics_and_desk_actions_over_nats() {
    const TEST: &str = "replicas::replicas_route_sessions_diagnostics_and_desk_actions_over_nats";
    let mut fleet = Fleet::new("replicas-route");
    let Some((pg, mut nats)) = components(TEST, &fleet) else {
        return;
    };
    fleet.storage_url = Some(pg.database("replicas_route").expect("database"));
    let a = replica(&fleet, "a", &nats).await;
    eventually(WAIT, "replica a leads", || async {
        a.scrape_raw()
            .await
            .contains("vitals_collector_leader{replica=\"a\"} 1")
            .then_some(())
    })
    .await;
    let b = replica(&fleet, "b", &nats).await;
    let c = replica(&fleet, "c", &nats).await;
    let sam = fleet.specialist_profile("sam", Role::Specialist, a.addr);
    let vera = fleet.specialist_profile("vera", Role::Viewer, a.addr);

    // A specialist on a diagnoses a desk whose stream is on c.
    let agent = RunningAgent::start(fleet.agent_config("ws-far", c.addr));
    eventually(WAIT, "ws-far online", || async {
        detail(&vera, "ws-far").await.filter(|d| d.summary.online)
    })
    .await;
    let started = Instant::now();
    let (progress, result) = diagnose(&sam, query("ws-far", "os", &[])).await;
    let r = result.expect("os result through replica c");
    assert!(r.ok, "{r:?}");
    assert!(!r.text.is_empty(), "{r:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!(
        "cross-replica os diagnostic: {took:?}, {} progress lines",
        progress.len()
    );
    let audited = eventually(WAIT, "the run audited", || async {
        let mut c = Client::connect(&vera).await.ok()?;
        let a = c.audit("ws-far", "", "os", 10).await.ok()?;
        a.into_iter().find(|e| e.who == "sam")
    })
    .await;
    assert_eq!(audited.outcome, "ok", "{audited:?}");

    // The specialist goes away mid-run: the run is cancelled, and audited.
    {
        let mut client = Client::connect(&sam).await.expect("connect");
        let mut stream = client
            .run_diagnostic(query("ws-far", "disk", &[("root", "/")]))
            .await
            .expect("start");
        let _first = stream.message().await.expect("progress");
    }
    let cancelled = eventually(WAIT, "the abandoned run audited", || async {
        let mut c = Client::connect(&vera).await.ok()?;
        let a = c.audit("ws-far", "", "disk", 10).await.ok()?;
        a.into_iter().next()
    })
    .await;
    assert_eq!(cancelled.outcome, "cancelled", "{cancelled:?}");

    // The desk dies mid-run on c: a clear error on a, not a hang.
    let mut client = Client::connect(&sam).await.expect("connect");
    let mut stream = client
        .run_diagnostic(query("ws-far", "disk", &[("root", "/")]))
        .await
        .expect("start");
    let _first = stream.message().await.expect("progress");
    agent.kill().await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("an answer, not a hang");
    let s = end.expect_err("the run cannot finish");
    assert_eq!(s.code(), tonic::Code::Aborted, "{s}");
    assert!(s.message().contains("ws-far disconnected"), "{s}");

    // Offline everywhere: said at once; with a wait, the run goes as soon
    // as the desk connects, to any replica.
    eventually(WAIT, "ws-far offline", || async {
        detail(&vera, "ws-far").await.filter(|d| !d.summary.online)
    })
    .await;
    let (_, offline) = diagnose(&sam, query("ws-far", "os", &[])).await;
    assert_eq!(offline.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let waiting = {
        let sam = sam.clone();
        let q = DiagQuery {
            wait_offline: Duration::from_secs(20),
            ..query("ws-late", "os", &[])
        };
        // Known to the store first, so the request is for a real desk.
        let early = RunningAgent::start(fleet.agent_config("ws-late", b.addr));
        eventually(WAIT, "ws-late seen", || async {
            detail(&vera, "ws-late").await.filter(|d| d.summary.online)
        })
        .await;
        early.kill().await;
        eventually(WAIT, "ws-late offline", || async {
            detail(&vera, "ws-late").await.filter(|d| !d.summary.online)
        })
        .await;
        tokio::spawn(async move { diagnose(&sam, q).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = RunningAgent::start(fleet.agent_config("ws-late", b.addr));
    let (_, waited) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting run ends")
        .expect("task");
    assert!(waited.expect("run after the desk came online on b").ok);

    // A desk's newer session on c ends its older one on b.
    let first = LinkAgent::start("ws-moved", fleet.agent_config("ws-moved", b.addr));
    eventually(WAIT, "ws-moved on b", || async {
        (first.status.borrow().sessions == 1).then_some(())
    })
    .await;
    let mut moved = fleet.agent_config("ws-moved", c.addr);
    moved.state_dir = fleet.dir.join("agents/ws-moved-again");
    let second = LinkAgent::start("ws-moved", moved);
    eventually(WAIT, "ws-moved on c", || async {
        (second.status.borrow().sessions >= 1).then_some(())
    })
    .await;
    eventually(WAIT, "b ended its older session", || async {
        (first.status.borrow().sessions >= 2 || !first.status.borrow().connected).then_some(())
    })
    .await;
    first.kill().await;
    second.kill().await;

    // Desk actions on standbys reach the leader, and a watcher on a
    // standby sees what the leader commits.
    let on_b = fleet.specialist_profile("sam", Role::Specialist, b.addr);
    let on_c = fleet.specialist_profile("sam", Role::Specialist, c.addr);
    let mut watch_c = Client::connect(&on_c)
        .await
        .expect("connect c")
        .watch_tickets()
        .await
        .expect("watch on standby c");
    let opened = Client::connect(&on_b)
        .await
        .expect("connect b")
        .open_ticket(
            "ws-late",
            "Printer offline at the front desk",
            "",
            vitals_proto::domain::Severity::Warning,
        )
        .await
        .expect("a ticket opened through standby b");
    let id = opened.ticket.id;
    let commented = Client::connect(&on_c)
        .await
        .expect("connect c")
        .change_ticket(id, TicketChange::Comment("cable reseated".into()))
        .await
        .expect("a comment through standby c");
    assert!(
        commented
            .timeline
            .iter()
            .any(|e| e.text == "cable reseated" && e.who == "sam"),
        "{:?}",
        commented.timeline
    );
    let seen = tokio::time::timeout(WAIT, async {
        let mut kinds = Vec::new();
        while let Some(e) = watch_c.message().await.expect("watch stream") {
            if e.ticket == Some(id) {
                kinds.push((e.kind.clone(), e.text.clone()));
                if e.text == "cable reseated" {
                    return kinds;
                }
            }
        }
        panic!("the watch on c ended: {kinds:?}");
    })
    .await
    .expect("the leader's entries reach the watcher on standby c");
    assert_eq!(seen[0].0, "opened", "{seen:?}");
    let missing = Client::connect(&on_c)
        .await
        .expect("connect c")
        .change_ticket(999_999, TicketChange::Comment("x".into()))
        .await
        .expect_err("no such ticket");
    assert!(
        missing.to_string().contains("no ticket 999999"),
        "{missing}"
    );

    // The bus goes down: ingest goes on, a run across replicas fails with
    // the reason, and works again once the bus is back.
    let link = LinkAgent::start("ws-bus", fleet.agent_config("ws-bus", b.addr));
    let far = RunningAgent::start(fleet.agent_config("ws-far", c.addr));
    eventually(WAIT, "ws-far back on c", || async {
        detail(&vera, "ws-far").await.filter(|d| d.summary.online)
    })
    .await;
    nats.pause();
    for n in 1..=5 {
        link.send(numbered_event(n)).await;
    }
    eventually(WAIT, "ws-bus acked without the bus", || async {
        link.drained().then_some(())
    })
    .await;
    let down = eventually(WAIT, "a run across replicas fails on the bus", || async {
        match diagnose(&sam, query("ws-far", "os", &[])).await.1 {
            Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
            _ => None,
        }
    })
    .await;
    assert!(
        down.message().contains("NATS at nats://127.0.0.1"),
        "{down}"
    );
    nats.resume().expect("nats again");
    eventually(
        Duration::from_secs(30),
        "runs across replicas again",
        || async {
            diagnose(&sam, query("ws-far", "os", &[]))
                .await
                .1
                .ok()
                .filter(|r| r.ok)
        },
    )
    .await;

    link.kill().await;
    far.stop().await;
    late.stop().await;
    for r in [c, b, a] {
        r.stop().await;
    }
}

/// Three replica processes behind HAProxy, with PostgreSQL, NATS and a
/// webhook receiver: 200 desks spread over them; a specialist on one
/// replica diagnoses a desk held by another; the replica holding a third
/// of the desks is killed with SIGKILL and they move to the others; then
/// the ticket leader is killed mid-storm. Every numbered event is stored
/// once, every ticket counts each raise once, and every webhook the
/// outbox holds reaches the receiver, none doubled at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_lose_nothing_through_two_kills() {
    use crate::nothing_lost::{
        assert_exactly_once, drained, engine_caught_up, open_store, spawn_collector,
    };
    use std::net::SocketAddr;
    const TEST: &str = "replicas::three_replicas_behind_haproxy_lose_nothing_through_two_kills";
    const AGENTS: usize = 200;
    const ROUNDS: u64 = 30;
    const SECRET: &str = "a-long-shared-webhook-secret";
    let mut fleet = Fleet::new("replicas-haproxy");
    let Some((pg, nats)) = components(TEST, &fleet) else {
        return;
    };
    let url = pg.database("replicas_haproxy").expect("database");
    let db = url
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .expect("database name")
        .to_owned();
    fleet.storage_url = Some(url);
    let (receiver, mut posts) = crate::notifications::webhook_receiver(0).await;
    let config = |name: &str| {
        let addr: SocketAddr = format!("127.0.0.1:{}", components::free_port())
            .parse()
            .expect("addr");
        let shared = CollectorProcess::write_config(&fleet, addr);
        let text = std::fs::read_to_string(&shared).expect("config");
        let path = fleet.dir.join(format!("collector-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "replica = \"{name}\"\n{text}\n[cluster]\nnats_url = \"{}\"\n\n\
                 [[webhook]]\nname = \"desk\"\nurl = \"http://{receiver}/hook\"\n\
                 secret = \"{SECRET}\"\nevents = [\"opened\"]\n",
                nats.url()
            ),
        )
        .expect("config");
        (path, addr)
    };
    let sql = |q: &str| pg.sql(&db, q).expect("sql");
    let leader_port = || crate::nothing_lost::leader_port(pg, &db);
    let held = || -> BTreeMap<String, usize> {
        sql("SELECT session_replica, count(*) FROM endpoints WHERE online GROUP BY 1")
            .lines()
            .filter_map(|l| {
                let (r, n) = l.split_once('|')?;
                Some((r.to_owned(), n.parse().ok()?))
            })
            .collect()
    };
    let (config_a, addr_a) = config("a");
    let (config_b, addr_b) = config("b");
    let (config_c, addr_c) = config("c");
    let mut a = Some(spawn_collector(&config_a, addr_a));
    eventually(Duration::from_secs(20), "replica a leads", || async {
        (leader_port() != "0").then_some(())
    })
    .await;
    let first_leader = leader_port();
    let mut b = Some(spawn_collector(&config_b, addr_b));
    let mut c = Some(spawn_collector(&config_c, addr_c));
    let haproxy = components::Haproxy::start(&fleet.dir.join("haproxy"), &[addr_a, addr_b, addr_c])
        .expect("haproxy");

    let agents: Vec<LinkAgent> = (0..AGENTS)
        .map(|i| {
            let id = format!("ws-h{i:03}");
            LinkAgent::start(&id, fleet.agent_config(&id, haproxy.addr))
        })
        .collect();
    let spread = eventually(
        Duration::from_secs(60),
        "200 desks spread over 3 replicas",
        || async {
            let h = held();
            (h.values().sum::<usize>() == AGENTS && h.len() == 3).then_some(h)
        },
    )
    .await;
    eprintln!("desks per replica through HAProxy: {spread:?}");

    // A specialist on each replica diagnoses a desk that another holds.
    let desk = RunningAgent::start(fleet.agent_config("ws-diag", haproxy.addr));
    let holder = eventually(WAIT, "ws-diag held", || async {
        let r = sql("SELECT session_replica FROM endpoints WHERE id = 'ws-diag' AND online");
        (!r.is_empty()).then_some(r)
    })
    .await;
    let asker = [("a", addr_a), ("b", addr_b), ("c", addr_c)]
        .into_iter()
        .find(|(n, _)| *n != holder)
        .expect("another replica");
    let sam = fleet.specialist_profile("sam", Role::Specialist, asker.1);
    let (_, result) = diagnose(&sam, query("ws-diag", "os", &[])).await;
    assert!(
        result.expect("a diagnostic across replicas").ok,
        "asked {}, held by {holder}",
        asker.0
    );
    desk.stop().await;

    let mut failover = None;
    let mut moved = 0;
    for round in 1..=ROUNDS {
        for agent in &agents {
            agent.send(numbered_event(round)).await;
        }
        if round == 10 {
            // The standby holding most desks (about a third) dies.
            let h = held();
            let (victim, n) = ["b", "c"]
                .into_iter()
                .map(|r| (r, h.get(r).copied().unwrap_or(0)))
                .max_by_key(|(_, n)| *n)
                .expect("a standby");
            moved = n;
            eprintln!("killing replica {victim} holding {n} desks");
            let process = if victim == "b" { b.take() } else { c.take() };
            process.expect("running").kill9();
        }
        if round == 20 {
            a.take().expect("running").kill9();
            let killed = Instant::now();
            eventually(Duration::from_secs(20), "a standby leads", || async {
                let now = leader_port();
                (now != "0" && now != first_leader).then_some(())
            })
            .await;
            failover = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = failover.expect("the leader was killed");
    eprintln!("{moved} desks moved after the kill; the leader was replaced in {failover:?}");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    drained(&agents, Duration::from_secs(90)).await;
    engine_caught_up(&fleet).await;

    // Every webhook the outbox holds reaches the receiver, once per
    // ticket opened.
    let outbox: BTreeMap<String, bool> =
        sql("SELECT id, delivered_ms IS NOT NULL FROM webhook_outbox WHERE webhook = 'desk'")
            .lines()
            .filter_map(|l| l.split_once('|').map(|(i, d)| (i.to_owned(), d == "t")))
            .collect();
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened: BTreeMap<u64, usize> = BTreeMap::new();
    eventually(Duration::from_secs(60), "every webhook delivered", || {
        let done = sql(
            "SELECT count(*) FROM webhook_outbox WHERE webhook = 'desk' AND delivered_ms IS NULL",
        ) == "0";
        async move { done.then_some(()) }
    })
    .await;
    while let Ok((headers, body, _)) = posts.try_recv() {
        let id = headers
            .get("x-vitals-delivery")
            .cloned()
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let ticket = v["ticket"]["id"].as_u64().expect("ticket id");
        if delivered.insert(id, ticket).is_none() {
            *opened.entry(ticket).or_default() += 1;
        }
    }
    assert_eq!(
        delivered.keys().cloned().collect::<Vec<_>>(),
        outbox.keys().cloned().collect::<Vec<_>>(),
        "every outbox post received"
    );
    assert!(
        opened.values().all(|&n| n == 1),
        "a ticket announced twice: {opened:?}"
    );
    assert!(opened.len() >= AGENTS, "{} tickets announced", opened.len());

    let sent: BTreeMap<String, u64> = agents.iter().map(|x| (x.id.clone(), ROUNDS)).collect();
    for agent in agents {
        agent.kill().await;
    }
    drop(haproxy);
    for replica in [b.take(), c.take()].into_iter().flatten() {
        let status = tokio::task::block_in_place(|| replica.terminate(Duration::from_secs(20)));
        assert!(status.success(), "replica exit after SIGTERM: {status}");
    }
    assert_exactly_once(open_store(&fleet).await.as_ref(), &sent).await;
}
