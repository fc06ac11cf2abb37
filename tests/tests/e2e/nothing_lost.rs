//! Fault injection with real processes and real kills: the collector is
//! killed with SIGKILL mid-stream, links stall, reset and black-hole, the
//! outbox file is damaged. Every event the agents sent must be in the store
//! exactly once, and every ticket must count each raise once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vitals_collector::ctl::Client;
use vitals_collector::store::{Store, TicketFilter};
use vitals_proto::identity::Role;
use vitals_tests::links::{CHECK, LinkAgent, numbered_event};
use vitals_tests::*;

const LOADGEN: &str = env!("CARGO_BIN_EXE_vitals-loadgen");

pub(crate) fn spawn_collector(config: &Path, addr: SocketAddr) -> CollectorProcess {
    tokio::task::block_in_place(|| CollectorProcess::spawn(Path::new(LOADGEN), config, addr))
}

pub(crate) async fn open_store(fleet: &Fleet) -> Arc<dyn Store> {
    let url = match &fleet.storage_url {
        Some(url) => url.clone(),
        None => fleet.dir.join("vitals.db").display().to_string(),
    };
    vitals_collector::store::open(&url, 100, Duration::ZERO)
        .await
        .expect("store opens")
}

/// The numbers of an endpoint's stored numbered events, sorted.
async fn numbered_values(store: &dyn Store, id: &str) -> Vec<u64> {
    let mut values: Vec<u64> = store
        .faults(id, 100_000)
        .await
        .expect("faults")
        .iter()
        .filter(|f| f.event.check_id == CHECK)
        .map(|f| f.event.value as u64)
        .collect();
    values.sort_unstable();
    values
}

/// Every endpoint's events are exactly 1..=sent, each once; each endpoint
/// has one ticket for the check, and it counted every raise once.
pub(crate) async fn assert_exactly_once(store: &dyn Store, sent: &BTreeMap<String, u64>) {
    for (id, &n) in sent {
        let values = numbered_values(store, id).await;
        let expected: Vec<u64> = (1..=n).collect();
        if values != expected {
            let mut doubled = values.clone();
            doubled.dedup();
            panic!(
                "{id}: {} events stored for {n} sent ({} distinct); first missing: {:?}",
                values.len(),
                doubled.len(),
                expected.iter().find(|v| !values.contains(v))
            );
        }
    }
    let tickets = store
        .tickets(TicketFilter {
            check_id: Some(CHECK.into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .expect("tickets");
    let mut per_endpoint: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for t in &tickets {
        per_endpoint
            .entry(t.endpoint.as_str())
            .or_default()
            .push(t.raise_count);
    }
    for (id, &n) in sent {
        let raises = n.div_ceil(2) as u32;
        assert_eq!(
            per_endpoint.get(id.as_str()),
            Some(&vec![raises]),
            "{id}: one ticket that counted {raises} raises"
        );
    }
}

/// The client port of the database session holding `db`'s leader lock
/// ("0" when nobody leads): it changes when another replica takes over.
pub(crate) fn leader_port(pg: &components::Postgres, db: &str) -> String {
    pg.sql(
        db,
        "SELECT COALESCE((SELECT a.client_port FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objid = 4 AND l.granted
               AND l.database = (SELECT oid FROM pg_database
                                 WHERE datname = current_database())), 0)",
    )
    .expect("lock holder")
}

/// Waits until the ticket engine has taken in every stored fault event
/// (its cursor is past the newest), at most a minute.
pub(crate) async fn engine_caught_up(fleet: &Fleet) {
    let store = open_store(fleet).await;
    eventually(
        Duration::from_secs(60),
        "the ticket engine past every stored fault event",
        || async {
            let cursor = store.ticket_state().await.ok()?.cursor;
            store
                .fault_events_after(cursor, 1)
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// Waits until every link has a session and nothing unacknowledged.
pub(crate) async fn drained(agents: &[LinkAgent], within: Duration) {
    eventually(within, "every outbox drained", || async {
        agents.iter().all(LinkAgent::drained).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_lose_nothing_through_three_kills_and_a_graceful_stop() {
    const AGENTS: usize = 200;
    const ROUNDS: u64 = 40;
    let fleet = Fleet::new("kill9");
    let addr: SocketAddr = format!("127.0.0.1:{}", components::free_port())
        .parse()
        .expect("addr");
    let config = CollectorProcess::write_config(&fleet, addr);
    let mut collector = Some(spawn_collector(&config, addr));
    let agents: Vec<LinkAgent> = (0..AGENTS)
        .map(|i| {
            let id = format!("ws-k{i:03}");
            let config = fleet.agent_config(&id, addr);
            LinkAgent::start(&id, config)
        })
        .collect();
    // Each agent sends a numbered event every 100 ms; the collector is
    // killed after rounds 10, 20 and 30 and started again 300 ms later,
    // and stopped gracefully (SIGTERM) mid-stream after round 35.
    let mut kills = 0;
    for round in 1..=ROUNDS {
        for a in &agents {
            a.send(numbered_event(round)).await;
        }
        if round % 10 == 0 && round < ROUNDS {
            collector.take().expect("running").kill9();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            collector = Some(spawn_collector(&config, addr));
        }
        if round == 35 {
            let running = collector.take().expect("running");
            let started = std::time::Instant::now();
            let status = tokio::task::block_in_place(|| running.terminate(Duration::from_secs(20)));
            assert!(status.success(), "exit after SIGTERM mid-stream: {status}");
            eprintln!(
                "graceful stop under 200 streams took {:?}",
                started.elapsed()
            );
            collector = Some(spawn_collector(&config, addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kills, 3);
    drained(&agents, Duration::from_secs(60)).await;
    // The ticket engine follows the stored events; let it catch up, then
    // stop the collector as an operator would.
    engine_caught_up(&fleet).await;
    let status = tokio::task::block_in_place(|| {
        collector
            .take()
            .expect("running")
            .terminate(Duration::from_secs(20))
    });
    assert!(status.success(), "collector exit after SIGTERM: {status}");
    let sent: BTreeMap<String, u64> = agents.iter().map(|a| (a.id.clone(), ROUNDS)).collect();
    for a in agents {
        a.kill().await;
    }
    assert_exactly_once(open_store(&fleet).await.as_ref(), &sent).await;
}

/// Sends the next `k` numbered events from every agent.
async fn send_next(agents: &[LinkAgent], n: &mut u64, k: u64) {
    for _ in 0..k {
        *n += 1;
        for a in agents {
            a.send(numbered_event(*n)).await;
        }
    }
}

fn sessions(agents: &[LinkAgent]) -> Vec<u64> {
    agents.iter().map(|a| a.status.borrow().sessions).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_through_a_stalling_resetting_black_holing_proxy_lose_nothing() {
    use vitals_tests::proxy::{Mode, Proxy};
    let fleet = Fleet::new("proxy");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let proxy = Proxy::start(collector.addr).await;
    let agents: Vec<LinkAgent> = (0..3)
        .map(|i| {
            let id = format!("ws-p{i}");
            LinkAgent::start(&id, fleet.agent_config(&id, proxy.addr))
        })
        .collect();
    let mut n = 0;
    send_next(&agents, &mut n, 5).await;
    drained(&agents, Duration::from_secs(20)).await;

    // A short stall (under the keepalive's 4 s): the sessions ride it out.
    let before = sessions(&agents);
    proxy.set(Mode::Stall);
    send_next(&agents, &mut n, 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(Mode::Pass);
    drained(&agents, Duration::from_secs(20)).await;
    assert_eq!(
        sessions(&agents),
        before,
        "a short stall needs no reconnect"
    );

    // Resets in the middle of the stream: every agent reconnects.
    send_next(&agents, &mut n, 5).await;
    proxy.reset_all();
    send_next(&agents, &mut n, 5).await;
    let after_reset = eventually(
        Duration::from_secs(20),
        "every agent reconnected",
        || async {
            let now = sessions(&agents);
            now.iter().zip(&before).all(|(a, b)| a > b).then_some(now)
        },
    )
    .await;
    drained(&agents, Duration::from_secs(20)).await;

    // A black hole: the keepalive notices the dead link within 4 s, the
    // reconnects vanish too, and events queue in the outbox.
    proxy.set(Mode::BlackHole);
    send_next(&agents, &mut n, 5).await;
    eventually(
        Duration::from_secs(10),
        "every link noticed the hole",
        || async {
            agents
                .iter()
                .all(|a| !a.status.borrow().connected)
                .then_some(())
        },
    )
    .await;
    send_next(&agents, &mut n, 5).await;
    proxy.set(Mode::Pass);
    drained(&agents, Duration::from_secs(60)).await;
    let after_hole = sessions(&agents);
    assert!(
        after_hole.iter().zip(&after_reset).all(|(a, b)| a > b),
        "{after_reset:?} -> {after_hole:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    collector.stop().await;
    let sent: BTreeMap<String, u64> = agents.iter().map(|a| (a.id.clone(), n)).collect();
    for a in agents {
        a.stop().await;
    }
    assert_exactly_once(open_store(&fleet).await.as_ref(), &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_is_quarantined_and_the_agent_goes_on() {
    let fleet = Fleet::new("damaged");
    // No collector yet: the events wait in the outbox on disk.
    let port = Port::reserve();
    let addr = port.addr();
    let id = "ws-damaged";
    let config = fleet.agent_config(id, addr);
    let first = LinkAgent::start(id, config.clone());
    let mut n = 0;
    send_next(std::slice::from_ref(&first), &mut n, 6).await;
    eventually(Duration::from_secs(5), "six events queued", || async {
        (first.status.borrow().outbox_messages == 6).then_some(())
    })
    .await;
    first.stop().await;

    // The sixth record is damaged on disk (one flipped bit in its body).
    let journal = config.state_dir.join("outbox.log");
    let mut bytes = std::fs::read(&journal).expect("outbox on disk");
    let mut at = 0;
    for _ in 0..5 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 8 + len;
    }
    bytes[at + 8 + 12] ^= 0x10;
    std::fs::write(&journal, &bytes).expect("write");

    let collector = RunningCollector::start_on(fleet.collector_config(), port).await;
    let second = LinkAgent::start(id, config.clone());
    // It goes on: new events after the damage are delivered too.
    send_next(std::slice::from_ref(&second), &mut n, 2).await;
    drained(std::slice::from_ref(&second), Duration::from_secs(20)).await;
    let quarantined: Vec<_> = std::fs::read_dir(&config.state_dir)
        .expect("state dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.corrupt-")
        })
        .collect();
    assert_eq!(quarantined.len(), 1, "the damaged record is kept aside");
    assert!(quarantined[0].metadata().expect("meta").len() > 0);
    second.stop().await;
    collector.stop().await;
    let store = open_store(&fleet).await;
    let mut values: Vec<u64> = store
        .faults(id, 100)
        .await
        .expect("faults")
        .iter()
        .map(|f| f.event.value as u64)
        .collect();
    values.sort_unstable();
    assert_eq!(values, vec![1, 2, 3, 4, 5, 7, 8], "all but the damaged one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_outbox_raises_a_fault_and_loses_nothing() {
    use vitals_agent::link::OUTBOX_CHECK;
    use vitals_proto::domain::FaultState;
    let fleet = Fleet::new("outboxfull");
    let disk = match components::LoopDisk::new(&fleet.dir) {
        Ok(d) => d,
        Err(why) => {
            components::skip(
                "a_full_disk_under_the_outbox_raises_a_fault_and_loses_nothing",
                &why,
            );
            return;
        }
    };
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let id = "ws-full";
    let mut config = fleet.agent_config(id, collector.addr);
    config.state_dir = disk.mount.join("state");
    let agent = LinkAgent::start(id, config);
    let one = std::slice::from_ref(&agent);
    let mut n = 0;
    send_next(one, &mut n, 3).await;
    drained(one, Duration::from_secs(20)).await;

    // The disk fills up: the next records cannot be written.
    disk.fill_to(98.0);
    let rest = disk.mount.join("rest");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&rest).expect("rest");
        while f
            .write_all(&[0u8; 4096])
            .and_then(|()| f.sync_data())
            .is_ok()
        {}
    }
    for _ in 0..400 {
        if agent.status.borrow().outbox_error.is_some() {
            break;
        }
        send_next(one, &mut n, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = agent.status.borrow().outbox_error.clone();
    assert!(
        why.as_deref().is_some_and(|w| w.contains("No space left")),
        "{why:?}"
    );
    // It goes on in memory: more events, all delivered.
    send_next(one, &mut n, 3).await;
    drained(one, Duration::from_secs(20)).await;

    // Room again: within the retry interval the outbox file is back.
    disk.empty();
    std::fs::remove_file(&rest).expect("remove rest");
    for _ in 0..60 {
        if agent.status.borrow().outbox_error.is_none() {
            break;
        }
        send_next(one, &mut n, 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(agent.status.borrow().outbox_error, None);
    send_next(one, &mut n, 2).await;
    drained(one, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    collector.stop().await;
    agent.stop().await;

    let store = open_store(&fleet).await;
    let outbox: Vec<FaultState> = store
        .faults(id, 1000)
        .await
        .expect("faults")
        .iter()
        .rev()
        .filter(|f| f.event.check_id == OUTBOX_CHECK)
        .map(|f| f.event.state)
        .collect();
    assert_eq!(outbox, vec![FaultState::Raised, FaultState::Cleared]);
    let tickets = store
        .tickets(TicketFilter {
            check_id: Some(OUTBOX_CHECK.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("tickets");
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    assert_eq!(tickets[0].title, "Agent cannot keep its outbox on disk");
    // Every numbered event arrived once, before, during and after.
    assert_eq!(
        numbered_values(store.as_ref(), id).await,
        (1..=n).collect::<Vec<_>>()
    );
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_endpoint_gone_silent_gets_an_offline_ticket_that_clears_when_back() {
    use vitals_proto::ticket_rules::Priority;
    use vitals_proto::tickets::Kind;
    let fleet = Fleet::new("offline");
    let policy = fleet.dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[tickets]\nquiet_period = \"1s\"\n\
         [tickets.offline]\nafter = \"2s\"\n\
         [[tickets.criticality]]\nendpoints = \"dispatch-*\"\nlevel = \"critical\"\n",
    )
    .expect("policy");
    let mut config = fleet.collector_config();
    config.policy = Some(policy);
    let collector = RunningCollector::start(config).await;
    let dispatch = fleet.agent_config("dispatch-01", collector.addr);
    let desk = fleet.agent_config("ws-clerk", collector.addr);
    let agents = vec![
        LinkAgent::start("dispatch-01", dispatch.clone()),
        LinkAgent::start("ws-clerk", desk),
    ];
    drained(&agents, Duration::from_secs(20)).await;
    for a in agents {
        a.stop().await;
    }
    let store = open_store(&fleet).await;
    let offline = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .tickets(TicketFilter {
                    endpoint: Some(id.into()),
                    check_id: Some(vitals_collector::tickets::OFFLINE_CHECK.into()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .ok()
        }
    };
    // Both went quiet; only the critical one gets a ticket.
    let ticket = eventually(Duration::from_secs(20), "offline ticket", || async {
        offline("dispatch-01").await?.into_iter().next()
    })
    .await;
    assert_eq!(ticket.title, "Endpoint offline");
    assert_eq!(ticket.priority, Priority::P1, "{ticket:?}");
    assert!(ticket.evidence.contains("no contact"), "{ticket:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(offline("ws-clerk").await.expect("tickets"), vec![]);
    assert_eq!(offline("dispatch-01").await.expect("tickets").len(), 1);

    // Back: the fault clears and the quiet period resolves the ticket.
    let back = LinkAgent::start("dispatch-01", dispatch);
    let timeline = eventually(
        Duration::from_secs(30),
        "offline ticket resolved",
        || async {
            let d = store.ticket(ticket.id).await.ok()??;
            d.timeline
                .iter()
                .any(|e| e.kind == Kind::AutoResolved)
                .then_some(d.timeline)
        },
    )
    .await;
    let kinds: Vec<Kind> = timeline.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![Kind::Opened, Kind::FaultCleared, Kind::AutoResolved]
    );
    back.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_dropped_from_a_full_outbox_are_counted_and_reported() {
    let fleet = Fleet::new("dropped");
    let port = Port::reserve();
    let addr = port.addr();
    let id = "ws-small";
    let mut config = fleet.agent_config(id, addr);
    config.link.outbox_max_messages = 3;
    let agent = LinkAgent::start(id, config);
    // Ten snapshots and a fault event into an outbox of three: eight
    // snapshots go, the event stays.
    for _ in 0..10 {
        agent
            .send(vitals_agent::link::Outgoing::Snapshot(Box::default()))
            .await;
    }
    agent.send(numbered_event(1)).await;
    eventually(Duration::from_secs(5), "all taken in", || async {
        let s = agent.status.borrow();
        (s.queued == 11).then(|| (s.outbox_messages, s.dropped))
    })
    .await;
    assert_eq!(
        (
            agent.status.borrow().outbox_messages,
            agent.status.borrow().dropped
        ),
        (3, 8)
    );

    let collector = RunningCollector::start_on(fleet.collector_config(), port).await;
    drained(std::slice::from_ref(&agent), Duration::from_secs(20)).await;
    let metrics = collector.scrape().await;
    assert!(
        metrics.contains("vitals_collector_agent_dropped_snapshots_total 8"),
        "{metrics}"
    );
    // Told once: the next session's hello reports nothing new.
    let sessions = agent.status.borrow().sessions;
    let port = collector.stop().await;
    let collector = RunningCollector::start_on(fleet.collector_config(), port).await;
    eventually(Duration::from_secs(20), "reconnected", || async {
        (agent.status.borrow().sessions > sessions).then_some(())
    })
    .await;
    let metrics = collector.scrape().await;
    assert!(
        metrics.contains("vitals_collector_agent_dropped_snapshots_total 0"),
        "{metrics}"
    );
    agent.stop().await;
    collector.stop().await;
    assert_eq!(
        numbered_values(open_store(&fleet).await.as_ref(), id).await,
        vec![1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_waiting_for_its_evidence_still_gets_it_after_a_collector_restart() {
    let fleet = Fleet::new("evidence");
    let config = fleet.collector_config();
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let id = "ws-evidence";
    let agent = LinkAgent::start(id, fleet.agent_config(id, addr));
    // A fault, and no snapshot yet: the ticket opens and waits for one.
    agent.send(numbered_event(1)).await;
    let store = open_store(&fleet).await;
    let ticket = eventually(Duration::from_secs(20), "ticket opened", || async {
        store
            .tickets(TicketFilter {
                endpoint: Some(id.into()),
                limit: 1,
                ..Default::default()
            })
            .await
            .ok()?
            .into_iter()
            .next()
    })
    .await;
    let port = collector.stop().await;

    let collector = RunningCollector::start_on(config, port).await;
    let mut snapshot = vitals_proto::domain::Snapshot::default();
    snapshot.host.hostname = "after-the-restart".into();
    snapshot.taken_at_ms = vitals_proto::now_ms();
    agent
        .send(vitals_agent::link::Outgoing::Snapshot(Box::new(snapshot)))
        .await;
    let evidence = eventually(Duration::from_secs(20), "evidence attached", || async {
        store.ticket(ticket.id).await.ok()??.snapshot
    })
    .await;
    assert_eq!(evidence.host.hostname, "after-the-restart");
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_sequence_file_beside_a_kept_outbox_doubles_nothing() {
    let fleet = Fleet::new("seqlost");
    let config = fleet.collector_config();
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let id = "ws-seqlost";
    let agent_config = fleet.agent_config(id, addr);
    let agent = LinkAgent::start(id, agent_config.clone());
    let mut n = 0;
    send_next(std::slice::from_ref(&agent), &mut n, 5).await;
    drained(std::slice::from_ref(&agent), Duration::from_secs(20)).await;
    agent.stop().await;

    // As if the last two acks never arrived (the link died first): the
    // outbox still holds messages 4 and 5, numbered, which the collector
    // already committed. And the sequence file is gone.
    {
        let mut p = vitals_agent::link::Outbox::open(&agent_config.state_dir, 100, 1 << 20);
        p.push_numbered(4, numbered_event(4));
        p.push_numbered(5, numbered_event(5));
    }
    std::fs::remove_file(agent_config.state_dir.join("seq")).expect("remove seq");

    let agent = LinkAgent::start(id, agent_config);
    send_next(std::slice::from_ref(&agent), &mut n, 2).await;
    drained(std::slice::from_ref(&agent), Duration::from_secs(20)).await;
    agent.stop().await;
    collector.stop().await;
    assert_eq!(
        numbered_values(open_store(&fleet).await.as_ref(), id).await,
        (1..=7).collect::<Vec<_>>(),
        "each event once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_with_a_full_outbox_delivers_all_of_it() {
    let fleet = Fleet::new("outbox");
    // A collector that is not there yet: the agent queues its snapshots.
    let port = Port::reserve();
    let config = fleet.agent_config("ws-outbox", port.addr());
    let first = RunningAgent::start(config.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.stop().await;
    let journal = config.state_dir.join("outbox.log");
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "the queued snapshots are on disk"
    );
    let restarted_at = vitals_proto::now_ms();

    // The collector comes up, and a new agent process with the same state.
    let collector = RunningCollector::start_on(fleet.collector_config(), port).await;
    let second = RunningAgent::start(config);
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let before = eventually(WAIT, "the first process's snapshots stored", || async {
        let h = Client::connect(&viewer)
            .await
            .ok()?
            .history("ws-outbox", 100)
            .await
            .ok()?;
        let old = h
            .iter()
            .filter(|e| e.snapshot.taken_at_ms < restarted_at)
            .count();
        (old >= 2).then_some(h)
    })
    .await;
    // In sequence order, each once.
    let mut seqs: Vec<u64> = before.iter().map(|e| e.seq).collect();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no duplicates");
    second.stop().await;
    collector.stop().await;
}

/// Two replicas on one PostgreSQL database, half the desks on each, a
/// numbered event storm; the leading replica (the one running the ticket
/// engine) is killed with SIGKILL mid-storm and started again as a
/// standby. The other replica takes the lead, and in the end every event
/// is stored exactly once and every ticket counted each raise once: the
/// new leader resumed from the stored cursor, and nothing the dead one had
/// in flight took effect twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_a_killed_leader_mid_storm() {
    const AGENTS: usize = 40;
    const ROUNDS: u64 = 20;
    let pg = match components::Postgres::shared() {
        Ok(pg) => pg,
        Err(why) => {
            return components::skip(
                "nothing_lost::replicas_survive_a_killed_leader_mid_storm",
                &why,
            );
        }
    };
    let mut fleet = Fleet::new("replicas-kill9");
    fleet.storage_url = Some(pg.database("replicas_kill9").expect("database"));
    let db = fleet
        .storage_url
        .as_deref()
        .and_then(|u| u.rsplit('/').next())
        .and_then(|d| d.split('?').next())
        .expect("database name")
        .to_owned();
    let replica = |name: &str| {
        let addr: SocketAddr = format!("127.0.0.1:{}", components::free_port())
            .parse()
            .expect("addr");
        let shared = CollectorProcess::write_config(&fleet, addr);
        let text = std::fs::read_to_string(&shared).expect("config");
        let path = fleet.dir.join(format!("collector-{name}.toml"));
        std::fs::write(&path, format!("replica = \"{name}\"\n{text}")).expect("config");
        (path, addr)
    };
    let holder = || leader_port(pg, &db);
    let (config_a, addr_a) = replica("a");
    let (config_b, addr_b) = replica("b");
    let mut a = Some(spawn_collector(&config_a, addr_a));
    eventually(Duration::from_secs(20), "replica a leads", || async {
        (holder() != "0").then_some(())
    })
    .await;
    let first_leader = holder();
    let b = spawn_collector(&config_b, addr_b);
    let agents: Vec<LinkAgent> = (0..AGENTS)
        .map(|i| {
            let id = format!("ws-r{i:02}");
            let addr = if i % 2 == 0 { addr_a } else { addr_b };
            LinkAgent::start(&id, fleet.agent_config(&id, addr))
        })
        .collect();
    let mut failover = None;
    for round in 1..=ROUNDS {
        for agent in &agents {
            agent.send(numbered_event(round)).await;
        }
        if round == 8 {
            a.take().expect("running").kill9();
            let killed = std::time::Instant::now();
            eventually(Duration::from_secs(20), "replica b leads", || async {
                let now = holder();
                (now != "0" && now != first_leader).then_some(())
            })
            .await;
            failover = Some(killed.elapsed());
            // Back as a standby; its desks reconnect to it.
            a = Some(spawn_collector(&config_a, addr_a));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = failover.expect("the leader was killed");
    eprintln!("leader killed: the standby led after {failover:?}");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    drained(&agents, Duration::from_secs(60)).await;
    engine_caught_up(&fleet).await;
    let sent: BTreeMap<String, u64> = agents.iter().map(|x| (x.id.clone(), ROUNDS)).collect();
    for agent in agents {
        agent.kill().await;
    }
    for replica in [a.take().expect("running"), b] {
        let status = tokio::task::block_in_place(|| replica.terminate(Duration::from_secs(20)));
        assert!(status.success(), "replica exit after SIGTERM: {status}");
    }
    assert_exactly_once(open_store(&fleet).await.as_ref(), &sent).await;
}

/// PostgreSQL goes away under a collector on it, then comes back: acks stop
/// while it is gone (nothing is acknowledged that is not committed), the
/// agent keeps what it sent, and once the database is back everything is
/// stored, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_stops_acks_and_loses_nothing() {
    const TEST: &str = "nothing_lost::a_database_outage_stops_acks_and_loses_nothing";
    let pg = match components::Postgres::private("outage") {
        Ok(pg) => pg,
        Err(why) => return components::skip(TEST, &why),
    };
    let mut fleet = Fleet::new("pg-outage");
    fleet.storage_url = Some(pg.database("outage").expect("database"));
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let link = LinkAgent::start("ws-o1", fleet.agent_config("ws-o1", collector.addr));
    let mut n = 0;
    send_next(std::slice::from_ref(&link), &mut n, 5).await;
    drained(std::slice::from_ref(&link), Duration::from_secs(20)).await;

    pg.pause().expect("database stopped");
    send_next(std::slice::from_ref(&link), &mut n, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        link.status.borrow().outbox_messages > 0,
        "acknowledged while the database was down: {:?}",
        link.status.borrow()
    );
    pg.resume().expect("database back");
    send_next(std::slice::from_ref(&link), &mut n, 2).await;
    drained(std::slice::from_ref(&link), Duration::from_secs(60)).await;
    let store = open_store(&fleet).await;
    assert_eq!(
        numbered_values(store.as_ref(), "ws-o1").await,
        (1..=n).collect::<Vec<_>>()
    );
    link.kill().await;
    collector.stop().await;
}
