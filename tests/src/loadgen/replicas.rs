//! Collector replicas side by side: one fleet of simulated agents per
//! replica, run at once, with diagnostics sent through the first replica
//! to its own agents and to the second replica's (the cross-replica
//! overhead against the same-replica one, in the same window), and on
//! request a `kill -9` of the ticket leader timed to the lock taken over
//! and to the next ticket change the new leader commits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Plan, Report, scrape, specialist};

/// One running replica, as the caller started it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub name: String,
    pub target: SocketAddr,
    pub metrics_url: String,
    pub pid: u32,
}

pub struct ReplicaPlan {
    pub replicas: Vec<Replica>,
    /// The fleet every replica gets a share of: `agents` is the total,
    /// split evenly; its target and prefix are set per replica.
    pub fleet: Plan,
    /// Kill the leading replica with SIGKILL this long after the start.
    pub kill_leader_after: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub replicas: usize,
    /// The replica holding the leader lock at the start.
    pub leader: String,
    pub fleets: Vec<FleetReport>,
    /// The sum of each fleet's most agents connected at once.
    pub connected_max: u64,
    pub acked_per_s: f64,
    pub failover: Option<FailoverReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub replica: String,
    /// `same` or `cross` for the fleet whose diagnostics went through the
    /// first replica.
    pub diagnostics_via: Option<String>,
    pub report: Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub killed: String,
    pub agents_on_killed: usize,
    /// From the kill to a surviving replica's leader gauge reading 1
    /// (read every 50 ms).
    pub lock_taken_s: Option<f64>,
    pub new_leader: Option<String>,
    /// From the kill to the first ticket change made after it, seen on a
    /// surviving replica's WatchTickets stream: only the new leader makes
    /// them.
    pub next_ticket_s: Option<f64>,
}

/// Waits until one replica says it leads.
pub async fn leader(replicas: &[Replica], within: Duration) -> anyhow::Result<usize> {
    let http = scrape::http_client(Duration::from_secs(2));
    let until = Instant::now() + within;
    while Instant::now() < until {
        for (i, r) in replicas.iter().enumerate() {
            if scrape::leads(&http, &r.metrics_url).await == Some(true) {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no replica took the leader lock within {within:?}")
}

pub async fn run(plan: ReplicaPlan) -> anyhow::Result<ReplicaReport> {
    let n = plan.replicas.len();
    anyhow::ensure!(n > 0, "no replicas");
    let lead = leader(&plan.replicas, Duration::from_secs(20)).await?;
    let mut fleets = Vec::new();
    let mut labels = Vec::new();
    for (i, r) in plan.replicas.iter().enumerate() {
        let agents = plan.fleet.agents / n + usize::from(i < plan.fleet.agents % n);
        // Diagnostics go through the first replica only: to its own agents
        // and to the second replica's.
        let diagnostics = if i < 2 { plan.fleet.diagnostics } else { 0 };
        labels.push(match (i, diagnostics > 0) {
            (0, true) => Some("same".to_owned()),
            (1, true) => Some("cross".to_owned()),
            _ => None,
        });
        fleets.push((
            Plan {
                target: r.target,
                agents,
                faults_per_sec: plan.fleet.faults_per_sec * agents as f64
                    / plan.fleet.agents as f64,
                data_dir: plan.fleet.data_dir.clone(),
                id_prefix: format!("{}{i}", plan.fleet.id_prefix),
                diagnostics,
                metrics_url: Some(r.metrics_url.clone()),
                diag_target: Some(plan.replicas[0].target),
                ..plan.fleet.clone()
            },
            r.pid,
        ));
    }
    let agents_on_leader = fleets[lead].0.agents;
    let runs: Vec<_> = fleets
        .into_iter()
        .map(|(fleet, pid)| tokio::spawn(super::run(fleet, Some(pid))))
        .collect();
    let runs = async {
        let mut reports = Vec::new();
        for r in runs {
            reports.push(r.await?);
        }
        anyhow::Ok(reports)
    };
    let failover = async {
        match plan.kill_leader_after {
            Some(after) => Some(kill_leader(&plan, lead, agents_on_leader, after).await),
            None => None,
        }
    };
    let (reports, failover) = tokio::join!(runs, failover);
    let reports = reports?;
    let mut out = Vec::new();
    for ((r, report), label) in plan.replicas.iter().zip(reports).zip(labels) {
        out.push(FleetReport {
            replica: r.name.clone(),
            diagnostics_via: label,
            report: report?,
        });
    }
    Ok(ReplicaReport {
        replicas: n,
        leader: plan.replicas[lead].name.clone(),
        connected_max: out.iter().map(|f| f.report.connected_max).sum(),
        acked_per_s: out.iter().map(|f| f.report.acked_per_s).sum(),
        fleets: out,
        failover: failover.transpose()?,
    })
}

async fn kill_leader(
    plan: &ReplicaPlan,
    lead: usize,
    agents_on_killed: usize,
    after: Duration,
) -> anyhow::Result<FailoverReport> {
    use vitals_proto::identity::Role;
    tokio::time::sleep(after).await;
    let survivors: Vec<usize> = (0..plan.replicas.len()).filter(|&i| i != lead).collect();
    anyhow::ensure!(!survivors.is_empty(), "a failover needs two replicas");
    // A ticket watcher on every survivor, open before the kill. Each
    // shows every replica's commits, so only an entry the engine made after
    // the kill (by its own clock, on this same host) is the new leader's.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let mut watchers = Vec::new();
    for &i in &survivors {
        let mut client = specialist(
            &plan.fleet.data_dir,
            plan.replicas[i].target,
            &format!("loadgen-failover-{i}"),
            Role::Viewer,
        )
        .await?;
        let mut changes = client.watch_tickets().await?;
        let seen = seen_tx.clone();
        watchers.push(tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(e)) = changes.message().await {
                let _ = seen.send((e.at_ms, Instant::now()));
            }
        }));
    }
    let killed = &plan.replicas[lead];
    let t0 = Instant::now();
    let t0_ms = vitals_proto::now_ms();
    std::process::Command::new("kill")
        .args(["-KILL", &killed.pid.to_string()])
        .status()?;
    eprintln!(
        "failover: killed leader {} (pid {})",
        killed.name, killed.pid
    );
    let http = scrape::http_client(Duration::from_secs(1));
    let mut lock_taken = None;
    let mut new_leader = None;
    let mut next_ticket = None;
    let until = t0 + Duration::from_secs(60);
    while Instant::now() < until && (lock_taken.is_none() || next_ticket.is_none()) {
        while let Ok((made_ms, at)) = seen_rx.try_recv() {
            if made_ms > t0_ms && next_ticket.is_none() {
                next_ticket = Some((at - t0).as_secs_f64());
            }
        }
        if lock_taken.is_none() {
            for &i in &survivors {
                if scrape::leads(&http, &plan.replicas[i].metrics_url).await == Some(true) {
                    lock_taken = Some(t0.elapsed().as_secs_f64());
                    new_leader = Some(plan.replicas[i].name.clone());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in watchers {
        w.abort();
    }
    eprintln!(
        "failover: lock taken after {}, next ticket after {}",
        seconds(lock_taken),
        seconds(next_ticket)
    );
    Ok(FailoverReport {
        killed: killed.name.clone(),
        agents_on_killed,
        lock_taken_s: lock_taken,
        new_leader,
        next_ticket_s: next_ticket,
    })
}

impl ReplicaReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} replicas, leader {}: {} agents connected at most, {:.0} acked/s in all\n",
            self.replicas, self.leader, self.connected_max, self.acked_per_s
        );
        for f in &self.fleets {
            let r = &f.report;
            out.push_str(&format!(
                "{}: {} of {} agents connected at most, {:.0} acked/s, ack p50/p99 {:.1}/{:.1} ms",
                f.replica,
                r.connected_max,
                r.agents,
                r.acked_per_s,
                r.ack_latency_settled_ms.p50,
                r.ack_latency_settled_ms.p99
            ));
            if let Some(s) = &r.server {
                out.push_str(&format!(
                    ", CPU {:.1} % of a core (last minute), RSS {:.0} MiB",
                    s.cpu_last_minute_percent, s.rss_max_mib
                ));
            }
            if let (Some(via), Some(d)) = (&f.diagnostics_via, &r.diagnostics) {
                out.push_str(&format!(
                    "; diagnostics {via}-replica {}/{} ok, overhead p50/p99 {:.1}/{:.1} ms",
                    d.ok, d.requests, d.relay_overhead_ms.p50, d.relay_overhead_ms.p99
                ));
            }
            if let Some(t) = &r.tickets {
                out.push_str(&format!(
                    "; fault to ticket p50/p99 {:.1}/{:.1} ms, {} of {} never ticketed",
                    t.fault_to_ticket_ms.p50, t.fault_to_ticket_ms.p99, t.unmatched, t.raised_sent
                ));
            }
            out.push_str(&format!("; errors {:?}\n", r.errors));
        }
        if let Some(f) = &self.failover {
            out.push_str(&format!(
                "failover: killed {} ({} agents); lock taken after {} by {}; next ticket after {}\n",
                f.killed,
                f.agents_on_killed,
                seconds(f.lock_taken_s),
                f.new_leader.as_deref().unwrap_or("nobody"),
                seconds(f.next_ticket_s)
            ));
        }
        out
    }
}

/// "1.06 s", or "never (within the limit)".
fn seconds(s: Option<f64>) -> String {
    s.map_or_else(
        || "never (within the limit)".into(),
        |s| format!("{s:.2} s"),
    )
}
