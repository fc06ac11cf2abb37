//! Fault injection with real processes and real kills: the collector is
//! killed with SIGKILL mid-stream, links stall, reset and black-hole, the
//! outbox file is damaged. Every event the agents sent must be in the store
//! exactly once, and every ticket must count each raise once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vitals_collector::store::{Store, TicketFilter};
use vitals_tests::links::{CHECK, LinkAgent, numbered_event};
use vitals_tests::*;

const LOADGEN: &str = env!("CARGO_BIN_EXE_vitals-loadgen");

fn spawn_collector(config: &Path, addr: SocketAddr) -> CollectorProcess {
    tokio::task::block_in_place(|| CollectorProcess::spawn(Path::new(LOADGEN), config, addr))
}

async fn open_store(fleet: &Fleet) -> Arc<dyn Store> {
    let db = fleet.dir.join("vitals.db");
    vitals_collector::store::open(db.to_str().expect("utf-8 path"), 100, Duration::ZERO)
        .await
        .expect("store opens")
}

/// Every endpoint's events are exactly 1..=sent, each once; each endpoint
/// has one ticket for the check, and it counted every raise once.
async fn assert_exactly_once(store: &dyn Store, sent: &BTreeMap<String, u64>) {
    for (id, &n) in sent {
        let mut values: Vec<u64> = store
            .faults(id, 100_000)
            .await
            .expect("faults")
            .iter()
            .map(|f| f.event.value as u64)
            .collect();
        values.sort_unstable();
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

/// Waits until every link has a session and nothing unacknowledged.
async fn drained(agents: &[LinkAgent], within: Duration) {
    eventually(within, "every outbox drained", || async {
        agents.iter().all(LinkAgent::drained).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_lose_nothing_while_the_collector_is_killed_three_times() {
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
    // killed after rounds 10, 20 and 30 and started again 300 ms later.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kills, 3);
    drained(&agents, Duration::from_secs(60)).await;
    // The ticket engine follows the stored events; give it its turn, then
    // stop the collector as an operator would.
    tokio::time::sleep(Duration::from_secs(2)).await;
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
