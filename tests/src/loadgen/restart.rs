//! The reconnect storm after a collector restart. A fleet of the agent's
//! own links (outbox file, backoff with full jitter at the product's
//! defaults, keepalive) connects to a collector process; the collector is
//! killed with SIGKILL, every agent queues a backlog (a fault event and
//! snapshots) during the outage, and the collector is started again on the
//! same database. Measured from the restart: when every link has a session
//! again, when every outbox is empty, and how many sessions opened in each
//! second (the handshake curve: backoff should spread it, not stack it).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde::Serialize;
use vitals_agent::config::{AgentConfig, LinkSettings, TlsFiles};
use vitals_agent::link::Outgoing;
use vitals_proto::domain::{FaultEvent, FaultState, Severity};

use super::{certs, procstat};
use crate::links::LinkAgent;

pub struct RestartPlan {
    pub target: std::net::SocketAddr,
    pub agents: usize,
    /// How long the collector stays down.
    pub outage: Duration,
    /// Snapshots each agent queues during the outage (plus one fault event).
    pub backlog_snapshots: usize,
    pub data_dir: PathBuf,
    pub prefix: String,
    /// Give up waiting this long after the restart.
    pub limit: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub agents: usize,
    pub outage_s: f64,
    /// Messages each agent held when the collector came back.
    pub backlog_per_agent: usize,
    /// Encoded size of one backlog snapshot.
    pub snapshot_bytes: usize,
    /// Seconds for the whole fleet's first connect (all at once).
    pub initial_connect_s: f64,
    /// From the restart (the collector process started) until the last
    /// agent had a new session.
    pub all_reconnected_s: Option<f64>,
    /// From the restart until the last outbox was empty.
    pub all_drained_s: Option<f64>,
    pub reconnected_within_30s: usize,
    pub drained_within_30s: usize,
    /// New sessions in each second after the restart.
    pub sessions_per_s: Vec<u64>,
    pub peak_sessions_per_s: u64,
    /// The restarted collector's CPU and memory until the fleet drained.
    pub collector: Option<procstat::Summary>,
}

impl RestartReport {
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("not reached".into(), |s| format!("{s:.1} s"));
        format!(
            "agents {}, outage {:.0} s, backlog {} messages each ({} B snapshots)\n\
             first connect of the fleet: {:.1} s\n\
             after restart: all reconnected {}, all drained {}\n\
             within 30 s: {} reconnected, {} drained\n\
             sessions per second: {:?} (peak {})\n\
             collector: {}",
            self.agents,
            self.outage_s,
            self.backlog_per_agent,
            self.snapshot_bytes,
            self.initial_connect_s,
            f(self.all_reconnected_s),
            f(self.all_drained_s),
            self.reconnected_within_30s,
            self.drained_within_30s,
            self.sessions_per_s,
            self.peak_sessions_per_s,
            self.collector
                .as_ref()
                .map_or("not sampled".into(), |c| format!(
                    "CPU avg {:.0} % max {:.0} % of a core, RSS max {:.0} MiB",
                    c.cpu_avg_percent, c.cpu_max_percent, c.rss_max_mib
                )),
        )
    }
}

fn backlog_fault() -> Outgoing {
    Outgoing::Fault(FaultEvent {
        check_id: "disk_nearly_full".into(),
        subject: "/".into(),
        state: FaultState::Raised,
        severity: Severity::Warning,
        value: 97.0,
        evidence: "/ at 97% during the collector outage".into(),
        at_ms: vitals_proto::now_ms(),
        via: String::new(),
    })
}

async fn wait_all(
    agents: &[LinkAgent],
    limit: Duration,
    what: &str,
    done: impl Fn(&LinkAgent) -> bool,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    loop {
        if agents.iter().all(&done) {
            return Ok(t0.elapsed().as_secs_f64());
        }
        anyhow::ensure!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the plan. `spawn` starts the collector process on the plan's
/// target and database (it is called twice: start and restart); the
/// restarted process is returned for the caller to stop.
pub async fn run(
    plan: &RestartPlan,
    mut spawn: impl FnMut() -> anyhow::Result<Child>,
) -> anyhow::Result<(RestartReport, Child)> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let files = certs::agent_files(&plan.data_dir, &plan.prefix, plan.agents)?;
    let state_root = plan.data_dir.join("restart-state");
    let _ = std::fs::remove_dir_all(&state_root);
    let ca = vitals_collector::pki::PkiPaths::new(&plan.data_dir).ca_cert();
    let mut collector = spawn()?;
    let snapshot = vitals_agent::probes::system_snapshot(Duration::from_millis(50));
    let snapshot_bytes =
        prost::Message::encoded_len(&vitals_proto::wire::Snapshot::from(snapshot.clone()));

    let t0 = Instant::now();
    let agents: Vec<LinkAgent> = files
        .into_iter()
        .map(|(id, cert, key)| {
            let config = AgentConfig {
                collector: format!("https://{}", plan.target),
                server_name: Some("localhost".into()),
                state_dir: state_root.join(&id),
                machine_id: None,
                enroll_token: None,
                tls: TlsFiles {
                    ca: ca.clone(),
                    cert,
                    key,
                },
                // The product's defaults: backoff 1 s to 60 s, keepalive.
                link: LinkSettings::default(),
                probes: Default::default(),
                smart: Default::default(),
                printers: Default::default(),
                network: Default::default(),
                diagnostics: Default::default(),
            };
            LinkAgent::start(&id, config)
        })
        .collect();
    wait_all(&agents, plan.limit, "first connect", |a| {
        a.status.borrow().connected
    })
    .await?;
    let initial_connect_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "restart: {} agents connected in {initial_connect_s:.1}s",
        agents.len()
    );
    for a in &agents {
        a.send(Outgoing::Snapshot(Box::new(snapshot.clone()))).await;
    }
    wait_all(&agents, plan.limit, "first snapshots", LinkAgent::drained).await?;

    collector.kill()?;
    collector.wait()?;
    eprintln!("restart: collector killed; outage of {:?}", plan.outage);
    tokio::time::sleep(plan.outage / 2).await;
    for a in &agents {
        a.send(backlog_fault()).await;
        for _ in 0..plan.backlog_snapshots {
            a.send(Outgoing::Snapshot(Box::new(snapshot.clone()))).await;
        }
    }
    tokio::time::sleep(plan.outage / 2).await;
    let before: Vec<u64> = agents.iter().map(|a| a.status.borrow().sessions).collect();

    let restarted = Instant::now();
    let collector = spawn()?;
    let sampler = procstat::Sampler::start(collector.id());
    let mut sessions_per_s = Vec::new();
    let mut second_start_total: u64 = before.iter().sum();
    let mut next_second = restarted + Duration::from_secs(1);
    let (mut all_reconnected_s, mut all_drained_s) = (None, None);
    let (mut reconnected_30, mut drained_30) = (0, 0);
    while restarted.elapsed() < plan.limit {
        let reconnected = agents
            .iter()
            .zip(&before)
            .filter(|(a, b)| a.status.borrow().sessions > **b)
            .count();
        let drained = agents.iter().filter(|a| a.drained()).count();
        let elapsed = restarted.elapsed().as_secs_f64();
        if elapsed <= 30.0 {
            (reconnected_30, drained_30) = (reconnected, drained);
        }
        if reconnected == agents.len() && all_reconnected_s.is_none() {
            all_reconnected_s = Some(elapsed);
        }
        if Instant::now() >= next_second {
            let total: u64 = agents.iter().map(|a| a.status.borrow().sessions).sum();
            sessions_per_s.push(total - second_start_total);
            second_start_total = total;
            next_second += Duration::from_secs(1);
        }
        if drained == agents.len() && all_reconnected_s.is_some() {
            all_drained_s = Some(elapsed);
            let total: u64 = agents.iter().map(|a| a.status.borrow().sessions).sum();
            sessions_per_s.push(total - second_start_total);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = sampler.stop();
    eprintln!(
        "restart: reconnected {all_reconnected_s:?} s, drained {all_drained_s:?} s after the restart"
    );
    for a in agents {
        a.kill().await;
    }
    let peak = sessions_per_s.iter().copied().max().unwrap_or(0);
    Ok((
        RestartReport {
            agents: plan.agents,
            outage_s: plan.outage.as_secs_f64(),
            backlog_per_agent: plan.backlog_snapshots + 1,
            snapshot_bytes,
            initial_connect_s,
            all_reconnected_s,
            all_drained_s,
            reconnected_within_30s: reconnected_30,
            drained_within_30s: drained_30,
            sessions_per_s,
            peak_sessions_per_s: peak,
            collector: Some(summary),
        },
        collector,
    ))
}
