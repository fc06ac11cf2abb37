//! Ingest and acknowledgements: what agents send is stored once, acks
//! follow commits, replays take no effect, and a restart loses nothing.

use std::time::Duration;

use vitals_collector::ctl::Client;
use vitals_proto::identity::Role;
use vitals_proto::wire::{self};
use vitals_tests::scripted::*;
use vitals_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_are_visible_with_their_data() {
    let fleet = Fleet::new("three");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let ids = ["ws-alpha", "ws-bravo", "DISPATCH-07"];
    let agents: Vec<RunningAgent> = ids
        .iter()
        .map(|id| RunningAgent::start(fleet.agent_config(id, collector.addr)))
        .collect();
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);

    // All three online with at least two snapshots each committed.
    let endpoints = eventually(WAIT, "three endpoints online with data", || async {
        let l = list(&viewer).await.ok()?;
        let ready = l.len() == 3 && l.iter().all(|e| e.online && e.latest_snapshot_ms > 0);
        ready.then_some(l)
    })
    .await;
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let mut seen: Vec<&str> = endpoints.iter().map(|e| e.endpoint_id.as_str()).collect();
    seen.sort();
    assert_eq!(seen, vec!["DISPATCH-07", "ws-alpha", "ws-bravo"]);
    for e in &endpoints {
        assert_eq!(e.hostname, hostname);
        assert_eq!(
            e.platform,
            format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
        );
        assert_eq!(e.agent_version, vitals_proto::VERSION);
        assert!(e.memory_used_percent > 0.0 && e.memory_used_percent <= 100.0);
        assert!(e.first_seen_ms <= e.last_seen_ms);
    }

    let mut client = Client::connect(&viewer).await.expect("viewer connects");
    for id in ids {
        let detail = eventually(WAIT, "two snapshots", || async {
            let d = detail(&viewer, id).await?;
            (d.history_len >= 2).then_some(d)
        })
        .await;
        assert_eq!(detail.summary.endpoint_id, id);
        let snap = detail.latest.expect("latest snapshot");
        assert_eq!(snap.host.hostname, hostname);
        assert!(snap.memory.total_bytes > 0);
        assert!(snap.cpu.logical_cores >= 1);
        assert!(!snap.interfaces.is_empty());
        assert!(detail.committed_seq >= 2);
        let history = client.history(id, 10).await.expect("history");
        assert_eq!(history.len() as u64, detail.history_len.min(10));
        assert!(
            history.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
    }
    let missing = client.endpoint("nobody").await.unwrap_err().to_string();
    assert!(missing.contains("no endpoint \"nobody\""), "{missing}");

    // An agent that stops goes offline; the others stay.
    let mut agents = agents.into_iter();
    agents.next().expect("agent").stop().await;
    eventually(WAIT, "ws-alpha offline", || async {
        let l = list(&viewer).await.ok()?;
        let alpha = l.iter().find(|e| e.endpoint_id == "ws-alpha")?;
        let others_online = l.iter().filter(|e| e.online).count() == 2;
        (!alpha.online && others_online).then_some(())
    })
    .await;

    let metrics = collector.scrape().await;
    assert!(
        metrics.contains("vitals_collector_connected_agents 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vitals_collector_messages_total{kind=\"snapshot\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vitals_collector_commit_seconds_count"),
        "{metrics}"
    );

    for a in agents {
        a.stop().await;
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_follow_commits_and_replays_take_no_effect() {
    let fleet = Fleet::new("acks");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let admin = fleet.specialist_profile("ops", Role::Admin, collector.addr);
    let ch = fleet.agent_channel(collector.addr, "ws-script").await;

    let (tx, inbound) = open_session(ch.clone(), "ws-script").await;
    let mut inbound = inbound.expect("welcome");
    for seq in 1..=5 {
        tx.send(snapshot_msg(seq, seq as f32)).await.expect("send");
    }
    let mut acked = 0;
    while acked < 5 {
        acked = next_ack(&mut inbound).await;
    }
    assert_eq!(acked, 5);
    // What was acknowledged is committed: readable right away.
    let d = detail(&admin, "ws-script").await.expect("detail");
    assert_eq!(d.committed_seq, 5);
    assert_eq!(d.history_len, 5);
    drop(tx);
    drop(inbound);

    // A new session: the welcome says 5 is committed; replays of 3..5 take
    // no effect and are acknowledged; 6 is new.
    let (tx, inbound) = open_session(ch, "ws-script").await;
    let mut inbound = inbound.expect("welcome");
    for seq in [3, 4, 5, 6] {
        tx.send(snapshot_msg(seq, 90.0 + seq as f32))
            .await
            .expect("send");
    }
    let mut acked = 0;
    while acked < 6 {
        acked = next_ack(&mut inbound).await;
    }
    let mut client = Client::connect(&admin).await.expect("admin");
    let d = client.endpoint("ws-script").await.expect("detail");
    assert_eq!(d.history_len, 6, "each sequence stored exactly once");
    let history = client.history("ws-script", 100).await.expect("history");
    let seqs: Vec<u64> = history.iter().map(|h| h.seq).collect();
    assert_eq!(seqs, vec![6, 5, 4, 3, 2, 1]);
    // The replayed 3..5 did not overwrite what was first committed.
    let cpu_of = |seq: u64| {
        history
            .iter()
            .find(|h| h.seq == seq)
            .map(|h| h.snapshot.cpu.usage_percent)
    };
    assert_eq!(cpu_of(4), Some(4.0));
    assert_eq!(cpu_of(6), Some(96.0));

    // A snapshot without a sequence number is a protocol error.
    tx.send(snapshot_msg(0, 1.0)).await.expect("send");
    let status = closing_status(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_and_resends_after_collector_restart() {
    let fleet = Fleet::new("restart");
    let config = fleet.collector_config();
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let agent = RunningAgent::start(fleet.agent_config("ws-roamer", addr));
    let admin = fleet.specialist_profile("ops", Role::Admin, addr);
    let first = eventually(WAIT, "agent committed", || async {
        let d = detail(&admin, "ws-roamer").await?;
        (d.committed_seq >= 2).then_some(d.committed_seq)
    })
    .await;
    let port = collector.stop().await;

    // Down for a few snapshot intervals: the agent keeps sampling.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let collector = RunningCollector::start_on(config, port).await;
    let detail = eventually(WAIT, "agent back with its backlog", || async {
        let d = detail(&admin, "ws-roamer").await?;
        (d.summary.online && d.committed_seq >= first + 3).then_some(d)
    })
    .await;
    // Nothing sampled during the outage was lost: sequences are contiguous.
    let history = Client::connect(&admin)
        .await
        .expect("admin")
        .history("ws-roamer", 1000)
        .await
        .expect("history");
    let seqs: Vec<u64> = history.iter().rev().map(|h| h.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in sequences: {seqs:?}"
    );
    assert_eq!(*seqs.last().expect("some"), detail.committed_seq);
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_events_are_stored_once_and_malformed_ones_refused() {
    use vitals_proto::domain::FaultState;
    let fleet = Fleet::new("faults");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let ch = fleet.agent_channel(collector.addr, "ws-faulty").await;

    let (tx, inbound) = open_session(ch.clone(), "ws-faulty").await;
    let mut inbound = inbound.expect("welcome");
    tx.send(snapshot_msg(1, 5.0)).await.expect("send");
    tx.send(fault_msg(2, wire::FaultState::Raised, 97.0))
        .await
        .expect("send");
    tx.send(fault_msg(3, wire::FaultState::Cleared, 80.0))
        .await
        .expect("send");
    let mut acked = 0;
    while acked < 3 {
        acked = next_ack(&mut inbound).await;
    }
    drop(tx);
    drop(inbound);

    // Replays after a reconnect take no effect.
    let (tx, inbound) = open_session(ch, "ws-faulty").await;
    let mut inbound = inbound.expect("welcome");
    tx.send(fault_msg(2, wire::FaultState::Raised, 97.0))
        .await
        .expect("send");
    tx.send(fault_msg(4, wire::FaultState::Raised, 99.0))
        .await
        .expect("send");
    let mut acked = 0;
    while acked < 4 {
        acked = next_ack(&mut inbound).await;
    }
    let mut client = Client::connect(&viewer).await.expect("viewer");
    let faults = client.faults("ws-faulty", 10).await.expect("faults");
    let seen: Vec<(u64, FaultState, f64)> = faults
        .iter()
        .map(|f| (f.seq, f.event.state, f.event.value))
        .collect();
    assert_eq!(
        seen,
        vec![
            (4, FaultState::Raised, 99.0),
            (3, FaultState::Cleared, 80.0),
            (2, FaultState::Raised, 97.0)
        ]
    );
    assert_eq!(faults[2].event.evidence, "/srv at 97%");
    let d = client.endpoint("ws-faulty").await.expect("detail");
    assert_eq!(d.committed_seq, 4);
    assert_eq!(d.history_len, 1, "fault events are not snapshots");

    // A fault event with no state is refused, and nothing of it is stored.
    tx.send(fault_msg(5, wire::FaultState::Unspecified, 1.0))
        .await
        .expect("send");
    let status = closing_status(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        client.faults("ws-faulty", 10).await.expect("faults").len(),
        3
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_drives_a_collector_through_a_storm() {
    let fleet = Fleet::new("loadgen");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let plan = vitals_tests::loadgen::Plan {
        target: collector.addr,
        agents: 20,
        interval: Duration::from_millis(200),
        window: 4,
        ramp_per_sec: 200.0,
        duration: Duration::from_secs(4),
        storm_after: Some(Duration::from_secs(1)),
        faults_per_sec: 20.0,
        data_dir: fleet.dir.clone(),
        id_prefix: "sim".into(),
        diagnostics: 40,
        diag_concurrency: 20,
        metrics_url: Some(format!("http://{}/metrics", collector.metrics_addr)),
        diag_target: None,
        soak: None,
    };
    let report = vitals_tests::loadgen::run(plan, Some(std::process::id()))
        .await
        .expect("load run");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The collector's own account of the run came with the report.
    let m = report.server_metrics.as_ref().expect("metrics read");
    assert!(m.scrapes >= 2, "{m:?}");
    assert!(
        m.connected_agents_max > 0.0 && m.connected_agents_max <= 20.0,
        "{m:?}"
    );
    assert!(m.commits > 0.0 && m.sessions_per_commit_mean > 0.0, "{m:?}");
    assert_eq!(report.connected_max, 20);
    assert_eq!(
        report.handshakes, 40,
        "one handshake per agent, again after the storm"
    );
    let storm = report.storm.as_ref().expect("storm ran");
    assert!(
        storm.all_back_s.is_some() && storm.back_within_10s == 20,
        "{storm:?}"
    );
    assert!(report.snapshots_acked > 100, "{}", report.table());
    assert!(report.faults_acked > 10, "{}", report.table());
    assert!(report.ack_latency_ms.samples >= report.snapshots_acked);
    // Forty diagnostics relayed to the simulated agents, twenty at a time.
    let d = report.diagnostics.as_ref().expect("diagnostics ran");
    assert_eq!((d.ok, d.errors.len()), (40, 0), "{d:?}");
    assert!(d.relay_overhead_ms.samples == 40 && d.relay_overhead_ms.p50 > 0.0);
    // The ticket watch matched the raised faults to their tickets.
    let t = report.tickets.as_ref().expect("ticket latency measured");
    assert!(
        t.raised_sent > 0 && t.fault_to_ticket_ms.samples > 0,
        "{t:?}"
    );
    assert!(
        report
            .server
            .as_ref()
            .is_some_and(|s| s.samples >= 2 && s.rss_max_mib > 0.0)
    );
    // What the load generator counted as acknowledged is in the store.
    let viewer = fleet.specialist_profile("ops", Role::Viewer, collector.addr);
    let endpoints = list(&viewer).await.expect("list");
    assert_eq!(endpoints.len(), 20);
    let mut client = Client::connect(&viewer).await.expect("viewer");
    let mut stored = 0;
    for e in &endpoints {
        stored += client
            .history(&e.endpoint_id, 1000)
            .await
            .expect("history")
            .len() as u64;
    }
    assert!(
        stored >= report.snapshots_acked,
        "{stored} < {}",
        report.snapshots_acked
    );
    collector.stop().await;
}
