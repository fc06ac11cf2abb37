//! The load generator: many simulated agents, each with its own certificate
//! and its own long-lived mTLS stream, against a real collector process (or
//! the bare echo baseline), with figures for BENCHMARKS.md.
//!
//! Everything stays on loopback, is bounded in agent count and in time, and
//! stops by itself.

pub mod certs;
pub mod echo;
pub mod procstat;
pub mod replicas;
pub mod restart;
pub mod scrape;
pub mod sim;
pub mod soak;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long after the ramp the run counts as settled.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Counters shared by every simulated agent.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub connected_max: AtomicU64,
    pub handshakes: AtomicU64,
    pub sessions: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub faults_sent: AtomicU64,
    pub faults_acked: AtomicU64,
    pub raised_sent: AtomicU64,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
    latencies_us: std::sync::Mutex<Vec<u32>>,
    settled_latencies_us: std::sync::Mutex<Vec<u32>>,
    /// Set [`SETTLE`] after the ramp: latencies from then on are also
    /// counted apart, free of the handshakes' load.
    pub settled: std::sync::atomic::AtomicBool,
    /// Raised fault events not yet seen as ticket changes, by evidence
    /// text (unique per event), with when they were sent.
    raised: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// From a raised fault leaving its agent to the ticket change it made
    /// arriving on the watch stream (sent after the commit).
    ticket_latencies_us: std::sync::Mutex<Vec<u32>>,
}

impl Stats {
    pub fn error(&self, kind: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn connect(&self) {
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.connected_max.fetch_max(now, Ordering::Relaxed);
    }

    pub fn disconnect(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds a simulated agent's latencies at the end of its run (keeps the
    /// hot path free of a shared lock).
    pub fn add_latencies(&self, mut l: sim::Latencies) {
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut l.all);
        self.settled_latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut l.settled);
    }

    /// Notes a raised fault event about to be sent.
    pub fn raising(&self, evidence: &str) {
        self.raised_sent.fetch_add(1, Ordering::Relaxed);
        self.raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(evidence.to_owned(), Instant::now());
    }

    /// A ticket change whose text is `text` arrived.
    fn ticketed(&self, text: &str) {
        let key = text.strip_prefix("the fault returned: ").unwrap_or(text);
        let sent = self
            .raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(sent) = sent {
            let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.ticket_latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        }
    }

    fn latency_ms(&self) -> Percentiles {
        percentiles_of(&self.latencies_us)
    }

    fn settled_latency_ms(&self) -> Percentiles {
        percentiles_of(&self.settled_latencies_us)
    }
}

fn percentiles_of(l: &std::sync::Mutex<Vec<u32>>) -> Percentiles {
    percentiles(l.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

fn percentiles(mut l: Vec<u32>) -> Percentiles {
    {
        l.sort_unstable();
        let at = |q: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 - 1.0) * q).round() as usize;
            l[i] as f64 / 1000.0
        };
        Percentiles {
            samples: l.len() as u64,
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// How the simulated agents behave.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    pub agents: usize,
    /// Time between snapshots per agent; zero means as fast as the window
    /// of unacknowledged snapshots allows (the ingest ceiling).
    pub interval: Duration,
    /// Unacknowledged snapshots an agent may have in flight.
    pub window: usize,
    /// Agents connected per second while ramping up.
    pub ramp_per_sec: f64,
    pub duration: Duration,
    /// Drop and re-open every stream at once, this long after the ramp.
    pub storm_after: Option<Duration>,
    /// Fault events per second across the fleet (0 = none).
    pub faults_per_sec: f64,
    /// The collector's data directory: its fleet CA signs the simulated
    /// agents' certificates, which are cached under `pki/agents/`.
    pub data_dir: PathBuf,
    pub id_prefix: String,
    /// After the ramp: this many diagnostics relayed to the agents (round
    /// robin), `diag_concurrency` at a time.
    pub diagnostics: usize,
    pub diag_concurrency: usize,
    /// The collector's `/metrics`, read every two seconds during the run.
    pub metrics_url: Option<String>,
    /// Where the specialist sending diagnostics connects (default: the
    /// target): another replica than the one holding the agents' streams
    /// makes every diagnostic cross replicas.
    pub diag_target: Option<SocketAddr>,
    /// Held for long: storms at a period, a diagnostics trickle, a
    /// timeline sampled once a minute.
    pub soak: Option<soak::SoakPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub agents: usize,
    pub interval_ms: u64,
    pub window: usize,
    pub duration_s: f64,
    pub ramp_s: f64,
    pub connected_max: u64,
    pub connected_end: u64,
    pub handshakes: u64,
    pub handshakes_per_s_during_ramp: f64,
    pub snapshots_sent: u64,
    pub snapshots_acked: u64,
    pub faults_sent: u64,
    pub faults_acked: u64,
    /// Acknowledged per second over the measured window (after the ramp).
    pub acked_per_s: f64,
    /// From send to the ack covering it, snapshots and fault events alike.
    pub ack_latency_ms: Percentiles,
    /// Only acks from [`SETTLE`] after the ramp on.
    pub ack_latency_settled_ms: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub storm: Option<StormReport>,
    /// Every storm of a soak, the first also as `storm`.
    pub storms: Vec<StormReport>,
    pub server: Option<procstat::Summary>,
    /// With fault events: raised faults sent, and how long each took to
    /// become a committed ticket change (seen on the WatchTickets stream).
    pub tickets: Option<TicketReport>,
    pub diagnostics: Option<DiagReport>,
    /// What the collector's own metrics said over the run.
    pub server_metrics: Option<scrape::ServerMetrics>,
    pub soak: Option<soak::SoakReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiagReport {
    pub requests: usize,
    pub concurrency: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, u64>,
    /// Request sent to result received, less the agent's own run time
    /// (zero for a simulated agent): the relay's overhead.
    pub relay_overhead_ms: Percentiles,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TicketReport {
    pub raised_sent: u64,
    /// Raised faults never seen as a ticket change.
    pub unmatched: u64,
    pub fault_to_ticket_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub agents: u64,
    /// Seconds from the drop until every agent had a welcome again.
    pub all_back_s: Option<f64>,
    pub back_within_10s: u64,
}

/// Runs a plan; `server_pid` is sampled for CPU and RSS if given.
pub async fn run(plan: Plan, server_pid: Option<u32>) -> anyhow::Result<Report> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let identities = certs::agent_identities(&plan.data_dir, &plan.id_prefix, plan.agents)?;
    let ca = std::fs::read(vitals_collector::pki::PkiPaths::new(&plan.data_dir).ca_cert())?;
    let stats = Arc::new(Stats::default());
    let sampler = server_pid.map(procstat::Sampler::start);
    let (scrape_stop, scrape_stopped) = tokio::sync::oneshot::channel::<()>();
    let scraper = plan.metrics_url.clone().map(|url| {
        tokio::spawn(async move {
            let mut s = scrape::Scraper::new(url);
            let mut stopped = scrape_stopped;
            loop {
                s.sample().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = &mut stopped => break,
                }
            }
            s.sample().await;
            s.summary()
        })
    });
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(0u64);
    let deadline = Instant::now() + plan.duration;
    let snapshot = Arc::new(sim::realistic_snapshot());
    let watcher = if plan.faults_per_sec > 0.0 {
        Some(watch_tickets(&plan, stats.clone()).await?)
    } else {
        None
    };

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.agents);
    let gap = Duration::from_secs_f64(1.0 / plan.ramp_per_sec.max(0.001));
    let mut next = tokio::time::Instant::now();
    for (id, identity) in identities {
        tokio::time::sleep_until(next).await;
        next += gap;
        let agent = sim::SimAgent {
            id,
            identity,
            ca: ca.clone(),
            target: plan.target,
            interval: plan.interval,
            window: plan.window,
            stats: stats.clone(),
            storm: storm_rx.clone(),
            deadline,
            snapshot: snapshot.clone(),
            fault_every: (plan.faults_per_sec > 0.0)
                .then(|| Duration::from_secs_f64(plan.agents as f64 / plan.faults_per_sec)),
        };
        tasks.push(tokio::spawn(agent.run()));
    }
    // The ramp ends when every agent has had its first session.
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    while (stats.sessions.load(Ordering::Relaxed) as usize) < plan.agents
        && Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = started.elapsed();
    let handshakes_ramp = stats.handshakes.load(Ordering::Relaxed);
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            stats.settled.store(true, Ordering::Relaxed);
        });
    }
    eprintln!(
        "ramp: {} of {} agents connected in {:.1}s",
        stats.connected.load(Ordering::Relaxed),
        plan.agents,
        ramp.as_secs_f64()
    );

    let diagnostics = if plan.diagnostics > 0 {
        Some(run_diagnostics(&plan).await?)
    } else {
        None
    };
    let measure_from = Instant::now();
    let acked_at_start = stats.acked.load(Ordering::Relaxed);
    let mut storms = Vec::new();
    let storm_count = Arc::new(AtomicU64::new(0));
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let storm_every = plan.soak.as_ref().map(|s| s.storm_every);
    let mut storm_at = plan.storm_after.or(storm_every).map(|d| measure_from + d);
    let mut soak_tasks = None;
    if let Some(s) = &plan.soak {
        let log = Arc::new(soak::DiagLog::default());
        let (trickle_stop, trickle_stopped) = tokio::sync::oneshot::channel();
        if s.diag_per_sec > 0.0 {
            let name = format!("{}-soak", plan.id_prefix);
            let client = specialist(
                &plan.data_dir,
                plan.diag_target.unwrap_or(plan.target),
                &name,
                vitals_proto::identity::Role::Specialist,
            )
            .await?;
            tokio::spawn(soak::trickle(
                client,
                plan.id_prefix.clone(),
                plan.agents,
                s.diag_per_sec,
                log.clone(),
                trickle_stopped,
            ));
        }
        let (timeline_stop, timeline_stopped) = tokio::sync::oneshot::channel();
        let timeline = tokio::spawn(soak::timeline(
            s.clone(),
            server_pid,
            stats.clone(),
            log,
            storm_count.clone(),
            timeline_stopped,
        ));
        soak_tasks = Some((trickle_stop, timeline_stop, timeline));
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(at) = storm_at
            && now >= at
        {
            storm_count.fetch_add(1, Ordering::Relaxed);
            storms.push(run_storm(&stats, &storm_tx, plan.agents as u64, deadline).await);
            storm_at = storm_every.map(|every| at + every);
            continue;
        }
        tokio::select! {
            _ = progress.tick() => {
                eprintln!(
                    "t={:>5.0}s connected={} acked={} errors={:?}",
                    started.elapsed().as_secs_f64(),
                    stats.connected.load(Ordering::Relaxed),
                    stats.acked.load(Ordering::Relaxed),
                    stats.errors()
                );
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = tokio::time::sleep_until(storm_at.unwrap_or(deadline).into()), if storm_at.is_some() => {}
        }
    }
    let soak = match soak_tasks {
        Some((trickle, timeline, task)) => {
            let _ = trickle.send(());
            let _ = timeline.send(());
            task.await.ok()
        }
        None => None,
    };
    let measured = measure_from.elapsed();
    let acked_in_window = stats.acked.load(Ordering::Relaxed) - acked_at_start;
    let connected_end = stats.connected.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let server = sampler.map(|s| s.stop());
    let _ = scrape_stop.send(());
    let server_metrics = match scraper {
        Some(task) => task.await.ok(),
        None => None,
    };
    let tickets = match watcher {
        Some(task) => {
            // Give the last raises time to come through, then stop.
            let settle = Instant::now() + Duration::from_secs(10);
            while Instant::now() < settle
                && !stats
                    .raised
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            task.abort();
            Some(TicketReport {
                raised_sent: stats.raised_sent.load(Ordering::Relaxed),
                unmatched: stats.raised.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
                fault_to_ticket_ms: percentiles_of(&stats.ticket_latencies_us),
            })
        }
        None => None,
    };
    Ok(Report {
        target: plan.target.to_string(),
        agents: plan.agents,
        interval_ms: plan.interval.as_millis() as u64,
        window: plan.window,
        duration_s: started.elapsed().as_secs_f64(),
        ramp_s: ramp.as_secs_f64(),
        connected_max: stats.connected_max.load(Ordering::Relaxed),
        connected_end,
        handshakes: stats.handshakes.load(Ordering::Relaxed),
        handshakes_per_s_during_ramp: handshakes_ramp as f64 / ramp.as_secs_f64().max(0.001),
        snapshots_sent: stats.sent.load(Ordering::Relaxed),
        snapshots_acked: stats.acked.load(Ordering::Relaxed),
        faults_sent: stats.faults_sent.load(Ordering::Relaxed),
        faults_acked: stats.faults_acked.load(Ordering::Relaxed),
        acked_per_s: acked_in_window as f64 / measured.as_secs_f64().max(0.001),
        ack_latency_ms: stats.latency_ms(),
        ack_latency_settled_ms: stats.settled_latency_ms(),
        errors: stats.errors(),
        storm: storms.first().cloned(),
        storms,
        server,
        tickets,
        diagnostics,
        server_metrics,
        soak,
    })
}

/// A specialist client of the collector under test, with a fresh
/// certificate from the fleet CA for `name` and `role`.
pub async fn specialist(
    data_dir: &std::path::Path,
    target: SocketAddr,
    name: &str,
    role: vitals_proto::identity::Role,
) -> anyhow::Result<vitals_collector::ctl::Client> {
    use vitals_collector::ctl::{Client, Profile};
    use vitals_collector::pki::{Ca, PkiPaths};
    use vitals_proto::identity::Identity;
    let paths = PkiPaths::new(data_dir);
    let identity = Identity::specialist(name, role)?;
    let (cert, key) = paths.client(&identity);
    Ca::load(&paths)?
        .issue_client(&identity, 2)?
        .write(&cert, &key)?;
    Ok(Client::connect(&Profile {
        collector: Some(format!("https://{target}")),
        server_name: Some("localhost".into()),
        ca: Some(paths.ca_cert()),
        cert: Some(cert),
        key: Some(key),
    })
    .await?)
}

/// Relays `plan.diagnostics` requests through the collector to the
/// simulated agents, `plan.diag_concurrency` at a time, as a specialist.
async fn run_diagnostics(plan: &Plan) -> anyhow::Result<DiagReport> {
    use vitals_proto::identity::Role;
    let at = plan.diag_target.unwrap_or(plan.target);
    // Named after the fleet: fleets running side by side each write their
    // own certificate files.
    let name = format!("{}-diag", plan.id_prefix);
    let client = specialist(&plan.data_dir, at, &name, Role::Specialist).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(plan.diag_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..plan.diagnostics {
        let permit = slots.clone().acquire_owned().await?;
        let mut client = client.clone();
        let endpoint = format!("{}-{:05}", plan.id_prefix, i % plan.agents);
        tasks.spawn(async move {
            let _permit = permit;
            one_diagnostic(&mut client, endpoint).await
        });
    }
    let mut overheads = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(us)) => overheads.push(us),
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    eprintln!(
        "diagnostics: {} relayed in {wall_s:.2}s, {} errors",
        overheads.len(),
        errors.values().sum::<u64>()
    );
    Ok(DiagReport {
        requests: plan.diagnostics,
        concurrency: plan.diag_concurrency,
        ok: overheads.len(),
        errors,
        relay_overhead_ms: percentiles(overheads),
        wall_s,
    })
}

/// Relays one `os` diagnostic to `endpoint`: the relay's overhead in
/// microseconds (the time to the result less the agent's own run time).
async fn one_diagnostic(
    client: &mut vitals_collector::ctl::Client,
    endpoint: String,
) -> Result<u32, String> {
    use vitals_collector::ctl::DiagQuery;
    use vitals_proto::wire::diagnostic_event::Body;
    let sent = Instant::now();
    let q = DiagQuery {
        endpoint,
        kind: "os".into(),
        ..Default::default()
    };
    let mut stream = client.run_diagnostic(q).await.map_err(|e| e.to_string())?;
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                if let Some(Body::Result(r)) = e.body {
                    let total = sent.elapsed().as_micros() as u64;
                    let overhead = total.saturating_sub(r.run_ms * 1000);
                    return if r.ok {
                        Ok(overhead.min(u32::MAX as u64) as u32)
                    } else {
                        Err(r.error)
                    };
                }
            }
            Ok(None) => return Err("stream ended without a result".to_owned()),
            Err(s) => return Err(format!("{:?}", s.code())),
        }
    }
}

/// Follows the collector's ticket changes as a viewer and matches them to
/// the raised faults the agents sent.
async fn watch_tickets(
    plan: &Plan,
    stats: Arc<Stats>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use vitals_proto::identity::Role;
    // Through the fleet's own collector: with replicas, every one shows
    // the leader's commits, and the watcher outlives the leader's death.
    let name = format!("{}-watch", plan.id_prefix);
    let mut client = specialist(&plan.data_dir, plan.target, &name, Role::Viewer).await?;
    let mut changes = client.watch_tickets().await?;
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(e)) = changes.message().await {
            if matches!(e.kind.as_str(), "opened" | "fault_raised" | "reopened") {
                stats.ticketed(&e.text);
            }
        }
        eprintln!("ticket watch ended");
    }))
}

/// Tells every agent to drop its stream and reconnect at once, then waits
/// until all have a session again.
async fn run_storm(
    stats: &Stats,
    storm: &tokio::sync::watch::Sender<u64>,
    agents: u64,
    deadline: Instant,
) -> StormReport {
    let sessions_before = stats.sessions.load(Ordering::Relaxed);
    let t0 = Instant::now();
    storm.send_modify(|n| *n += 1);
    eprintln!("storm: all {agents} streams dropped");
    let mut back_within_10s = 0;
    let mut all_back = None;
    while Instant::now() < deadline {
        let back = stats.sessions.load(Ordering::Relaxed) - sessions_before;
        if t0.elapsed() <= Duration::from_secs(10) {
            back_within_10s = back;
        }
        if back >= agents {
            all_back = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("storm: all back in {all_back:?} s");
    StormReport {
        agents,
        all_back_s: all_back,
        back_within_10s: back_within_10s.min(agents),
    }
}

impl Report {
    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut rows = vec![
            ("target", self.target.clone()),
            ("agents", self.agents.to_string()),
            (
                "snapshot interval",
                if self.interval_ms == 0 {
                    format!("as fast as acks allow (window {})", self.window)
                } else {
                    format!("{} ms", self.interval_ms)
                },
            ),
            ("duration", format!("{:.1} s", self.duration_s)),
            ("ramp", format!("{:.1} s", self.ramp_s)),
            (
                "connected (max / end)",
                format!("{} / {}", self.connected_max, self.connected_end),
            ),
            ("handshakes", self.handshakes.to_string()),
            (
                "handshakes/s during ramp",
                format!("{:.0}", self.handshakes_per_s_during_ramp),
            ),
            (
                "snapshots sent / acked",
                format!("{} / {}", self.snapshots_sent, self.snapshots_acked),
            ),
            ("acked snapshots/s", format!("{:.0}", self.acked_per_s)),
            (
                "fault events sent / acked",
                format!("{} / {}", self.faults_sent, self.faults_acked),
            ),
            (
                "ack latency p50 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} ms ({} samples)",
                    self.ack_latency_ms.p50,
                    self.ack_latency_ms.p99,
                    self.ack_latency_ms.max,
                    self.ack_latency_ms.samples
                ),
            ),
            (
                "  from 10 s after the ramp",
                format!(
                    "{:.1} / {:.1} / {:.1} ms ({} samples)",
                    self.ack_latency_settled_ms.p50,
                    self.ack_latency_settled_ms.p99,
                    self.ack_latency_settled_ms.max,
                    self.ack_latency_settled_ms.samples
                ),
            ),
            ("errors", format!("{:?}", self.errors)),
        ];
        if let Some(d) = &self.diagnostics {
            rows.push((
                "diagnostics relayed (ok / asked)",
                format!(
                    "{} / {} at {} at a time in {:.2} s; errors {:?}",
                    d.ok, d.requests, d.concurrency, d.wall_s, d.errors
                ),
            ));
            rows.push((
                "relay overhead p50 / p99 / max",
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    d.relay_overhead_ms.p50, d.relay_overhead_ms.p99, d.relay_overhead_ms.max
                ),
            ));
        }
        if let Some(t) = &self.tickets {
            rows.push((
                "fault to ticket p50 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} ms ({} raised, {} never ticketed)",
                    t.fault_to_ticket_ms.p50,
                    t.fault_to_ticket_ms.p99,
                    t.fault_to_ticket_ms.max,
                    t.raised_sent,
                    t.unmatched
                ),
            ));
        }
        if let Some(s) = &self.storm {
            rows.push((
                "reconnect storm",
                format!(
                    "{} agents; all back in {}; {} back within 10 s",
                    s.agents,
                    s.all_back_s
                        .map(|t| format!("{t:.2} s"))
                        .unwrap_or("never".into()),
                    s.back_within_10s
                ),
            ));
        }
        if let Some(s) = &self.server {
            rows.push((
                "server CPU avg / max (1 s)",
                format!(
                    "{:.0}% / {:.0}% of one core",
                    s.cpu_avg_percent, s.cpu_max_percent
                ),
            ));
            rows.push((
                "server CPU over the last minute",
                format!("{:.1}% of one core", s.cpu_last_minute_percent),
            ));
            rows.push((
                "server RSS max / end",
                format!(
                    "{:.1} / {:.1} MiB (at the end {:.1} anonymous, {:.1} file-backed)",
                    s.rss_max_mib, s.rss_end_mib, s.rss_anon_end_mib, s.rss_file_end_mib
                ),
            ));
            if self.connected_max > 0 {
                rows.push((
                    "server RSS per connected agent",
                    format!(
                        "{:.1} KiB",
                        s.rss_max_mib * 1024.0 / self.connected_max as f64
                    ),
                ));
            }
        }
        if let Some(m) = &self.server_metrics {
            rows.push(("collector /metrics", m.line()));
        }
        if let Some(s) = &self.soak {
            rows.extend(s.lines());
            let back: Vec<String> = self
                .storms
                .iter()
                .map(|s| s.all_back_s.map_or("never".into(), |t| format!("{t:.1} s")))
                .collect();
            rows.push(("storms, all back in", back.join(", ")));
        }
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}
