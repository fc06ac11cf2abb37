//! The reconnect storm after a collector restart. A fleet of the agent's
//! own links (outbox file, backoff with full jitter at the product's
//! defaults, keepalive) connects to a collector process; the collector is
//! killed with SIGKILL, every agent queues a backlog (a fault event and
//! snapshots) during the outage, and the collector is started again on the
//! same database. Measured from the restart: when every link has a session
//! again, when every outbox is empty, and how many sessions opened in each
//! second (the handshake curve: backoff should spread it, not stack it).
//!
//! Each link holds a socket and its outbox file open, so one process
//! carries at most [`AGENTS_PER_WORKER`] of them: the fleet is split over
//! worker processes (`vitals-loadgen restart-worker`), which the
//! coordinator steers with one-word commands on their stdin and which
//! report their links' state on stdout.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use vitals_agent::config::{AgentConfig, LinkSettings, TlsFiles};
use vitals_agent::link::Outgoing;
use vitals_proto::domain::{FaultEvent, FaultState, Severity};

use super::{certs, procstat};
use crate::links::LinkAgent;

/// Links per worker process: two descriptors each, under the 20,000
/// open files a process may have here, with room for the runtime.
pub const AGENTS_PER_WORKER: usize = 4000;

/// How often a worker reports its links' state once the collector is down.
const REPORT_EVERY: Duration = Duration::from_millis(50);

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
    /// Processes the fleet was split over.
    pub workers: usize,
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
    pub reconnected_within_20s: usize,
    pub drained_within_20s: usize,
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
            "agents {} in {} processes, outage {:.0} s, backlog {} messages each ({} B snapshots)\n\
             first connect of the fleet: {:.1} s\n\
             after restart: all reconnected {}, all drained {}\n\
             within 20 s: {} reconnected, {} drained\n\
             sessions per second: {:?} (peak {})\n\
             collector: {}",
            self.agents,
            self.workers,
            self.outage_s,
            self.backlog_per_agent,
            self.snapshot_bytes,
            self.initial_connect_s,
            f(self.all_reconnected_s),
            f(self.all_drained_s),
            self.reconnected_within_20s,
            self.drained_within_20s,
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

fn backlog_snapshot() -> vitals_proto::domain::Snapshot {
    vitals_agent::probes::system_snapshot(Duration::from_millis(50))
}

/// What a worker says about its links, one line each time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    /// Links with a session newer than the ones they had at `mark`.
    reconnected: usize,
    drained: usize,
    /// Sessions the links opened since they started.
    sessions: u64,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "tally {} {} {}",
            self.reconnected, self.drained, self.sessions
        )
    }

    fn parse(line: &str) -> Option<Tally> {
        let mut words = line.strip_prefix("tally ")?.split(' ');
        let mut next = || words.next()?.parse::<u64>().ok();
        Some(Tally {
            reconnected: next()? as usize,
            drained: next()? as usize,
            sessions: next()?,
        })
    }
}

/// One slice of the fleet, in a worker process.
pub struct WorkerPlan {
    pub target: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub prefix: String,
    /// The slice: agents `first .. first + count`.
    pub first: usize,
    pub count: usize,
    pub backlog_snapshots: usize,
}

async fn say(out: &mut tokio::io::Stdout, line: String) -> anyhow::Result<()> {
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

async fn wait_all(agents: &[LinkAgent], done: impl Fn(&LinkAgent) -> bool) {
    while !agents.iter().all(&done) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker: starts its links, then obeys the coordinator's commands on
/// stdin (`snapshots`, `backlog`, `mark`, `quit`), answering each on stdout
/// and, after `mark`, reporting a tally every [`REPORT_EVERY`].
pub async fn worker(plan: WorkerPlan) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let files = certs::agent_files_in(
        &plan.data_dir,
        &plan.prefix,
        plan.first..plan.first + plan.count,
    )?;
    let state_root = plan.data_dir.join("restart-state");
    let ca = vitals_collector::pki::PkiPaths::new(&plan.data_dir).ca_cert();
    let mut out = tokio::io::stdout();
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
                log: Default::default(),
            };
            LinkAgent::start(&id, config)
        })
        .collect();
    wait_all(&agents, |a| a.status.borrow().connected).await;
    say(
        &mut out,
        format!("connected {:.3}", t0.elapsed().as_secs_f64()),
    )
    .await?;

    let snapshot = backlog_snapshot();
    let mut before: Vec<u64> = Vec::new();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            line = commands.next_line() => match line?.as_deref() {
                Some("snapshots") => {
                    for a in &agents {
                        a.send(Outgoing::Snapshot(Box::new(snapshot.clone()))).await;
                    }
                    wait_all(&agents, LinkAgent::drained).await;
                    say(&mut out, "drained".into()).await?;
                }
                Some("backlog") => {
                    for a in &agents {
                        a.send(backlog_fault()).await;
                        for _ in 0..plan.backlog_snapshots {
                            a.send(Outgoing::Snapshot(Box::new(snapshot.clone()))).await;
                        }
                    }
                    say(&mut out, "queued".into()).await?;
                }
                Some("mark") => {
                    before = agents.iter().map(|a| a.status.borrow().sessions).collect();
                    say(&mut out, "marked".into()).await?;
                }
                Some("quit") | None => break,
                Some(other) => anyhow::bail!("restart worker: unknown command {other:?}"),
            },
            _ = ticker.tick(), if !before.is_empty() => {
                let tally = Tally {
                    reconnected: agents
                        .iter()
                        .zip(&before)
                        .filter(|(a, b)| a.status.borrow().sessions > **b)
                        .count(),
                    drained: agents.iter().filter(|a| a.drained()).count(),
                    sessions: agents.iter().map(|a| a.status.borrow().sessions).sum(),
                };
                say(&mut out, tally.line()).await?;
            }
        }
    }
    for a in agents {
        a.kill().await;
    }
    Ok(())
}

/// A worker process as the coordinator sees it.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    /// Lines other than tallies, in order.
    replies: mpsc::UnboundedReceiver<String>,
    tally: watch::Receiver<Tally>,
}

impl Worker {
    fn spawn(
        exe: &std::path::Path,
        plan: &RestartPlan,
        first: usize,
        count: usize,
    ) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(exe)
            .arg("restart-worker")
            .arg("--target")
            .arg(plan.target.to_string())
            .arg("--data-dir")
            .arg(&plan.data_dir)
            .arg("--prefix")
            .arg(&plan.prefix)
            .arg("--first")
            .arg(first.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--backlog")
            .arg(plan.backlog_snapshots.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} restart-worker", exe.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let (tally_tx, tally) = watch::channel(Tally::default());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match Tally::parse(&line) {
                    Some(t) => {
                        tally_tx.send_replace(t);
                    }
                    None => {
                        let _ = reply_tx.send(line);
                    }
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            replies,
            tally,
        })
    }

    async fn command(&mut self, word: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{word}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next reply, which must start with `word`; its remainder.
    async fn reply(&mut self, word: &str, limit: Duration) -> anyhow::Result<String> {
        let line = tokio::time::timeout(limit, self.replies.recv())
            .await
            .with_context(|| format!("restart worker: no {word:?} within {limit:?}"))?
            .with_context(|| format!("restart worker exited before {word:?}"))?;
        line.strip_prefix(word)
            .map(|rest| rest.trim().to_owned())
            .with_context(|| format!("restart worker said {line:?}, expected {word:?}"))
    }
}

/// Sends `word` to every worker and waits for each one's `answer`.
async fn all(
    workers: &mut [Worker],
    word: &str,
    answer: &str,
    limit: Duration,
) -> anyhow::Result<Vec<String>> {
    for w in workers.iter_mut() {
        w.command(word).await?;
    }
    let mut out = Vec::new();
    for w in workers.iter_mut() {
        out.push(w.reply(answer, limit).await?);
    }
    Ok(out)
}

/// Runs the plan with workers started from `worker_exe`. `spawn` starts the
/// collector process on the plan's target and database (it is called
/// twice: start and restart); the restarted process is returned for the
/// caller to stop.
pub async fn run(
    plan: &RestartPlan,
    worker_exe: &std::path::Path,
    mut spawn: impl FnMut() -> anyhow::Result<Child>,
) -> anyhow::Result<(RestartReport, Child)> {
    // Minted here once, so the workers only read them.
    certs::agent_files(&plan.data_dir, &plan.prefix, plan.agents)?;
    let _ = std::fs::remove_dir_all(plan.data_dir.join("restart-state"));
    let snapshot_bytes =
        prost::Message::encoded_len(&vitals_proto::wire::Snapshot::from(backlog_snapshot()));
    let mut collector = spawn()?;

    let t0 = Instant::now();
    let mut workers = Vec::new();
    let mut first = 0;
    while first < plan.agents {
        let count = AGENTS_PER_WORKER.min(plan.agents - first);
        workers.push(Worker::spawn(worker_exe, plan, first, count)?);
        first += count;
    }
    for w in &mut workers {
        w.reply("connected", plan.limit).await?;
    }
    let initial_connect_s = t0.elapsed().as_secs_f64();
    let worker_count = workers.len();
    eprintln!(
        "restart: {} agents in {worker_count} processes connected in {initial_connect_s:.1}s",
        plan.agents,
    );
    all(&mut workers, "snapshots", "drained", plan.limit).await?;

    collector.kill()?;
    collector.wait()?;
    eprintln!("restart: collector killed; outage of {:?}", plan.outage);
    tokio::time::sleep(plan.outage / 2).await;
    all(&mut workers, "backlog", "queued", plan.limit).await?;
    tokio::time::sleep(plan.outage / 2).await;
    all(&mut workers, "mark", "marked", plan.limit).await?;
    // The first tallies, taken before the collector is back.
    tokio::time::sleep(REPORT_EVERY * 3).await;
    let total = |workers: &[Worker]| {
        workers.iter().fold(Tally::default(), |sum, w| {
            let t = *w.tally.borrow();
            Tally {
                reconnected: sum.reconnected + t.reconnected,
                drained: sum.drained + t.drained,
                sessions: sum.sessions + t.sessions,
            }
        })
    };
    let before = total(&workers);

    let restarted = Instant::now();
    let collector = spawn()?;
    let sampler = procstat::Sampler::start(collector.id());
    let mut sessions_per_s = Vec::new();
    let mut second_start = before.sessions;
    let mut next_second = restarted + Duration::from_secs(1);
    let (mut all_reconnected_s, mut all_drained_s) = (None, None);
    let (mut reconnected_20, mut drained_20) = (0, 0);
    while restarted.elapsed() < plan.limit {
        let now = total(&workers);
        let elapsed = restarted.elapsed().as_secs_f64();
        if elapsed <= 20.0 {
            (reconnected_20, drained_20) = (now.reconnected, now.drained);
        }
        if now.reconnected == plan.agents && all_reconnected_s.is_none() {
            all_reconnected_s = Some(elapsed);
        }
        if Instant::now() >= next_second {
            sessions_per_s.push(now.sessions - second_start);
            second_start = now.sessions;
            next_second += Duration::from_secs(1);
        }
        if now.drained == plan.agents && all_reconnected_s.is_some() {
            all_drained_s = Some(elapsed);
            sessions_per_s.push(now.sessions - second_start);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = sampler.stop();
    eprintln!(
        "restart: reconnected {all_reconnected_s:?} s, drained {all_drained_s:?} s after the restart"
    );
    for w in &mut workers {
        let _ = w.command("quit").await;
    }
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
    }
    let peak = sessions_per_s.iter().copied().max().unwrap_or(0);
    Ok((
        RestartReport {
            agents: plan.agents,
            workers: worker_count,
            outage_s: plan.outage.as_secs_f64(),
            backlog_per_agent: plan.backlog_snapshots + 1,
            snapshot_bytes,
            initial_connect_s,
            all_reconnected_s,
            all_drained_s,
            reconnected_within_20s: reconnected_20,
            drained_within_20s: drained_20,
            sessions_per_s,
            peak_sessions_per_s: peak,
            collector: Some(summary),
        },
        collector,
    ))
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn a_tally_survives_its_line() {
        let t = Tally {
            reconnected: 3999,
            drained: 12,
            sessions: 80_001,
        };
        assert_eq!(Tally::parse(&t.line()), Some(t));
        assert_eq!(Tally::parse("tally 1 2"), None);
        assert_eq!(Tally::parse("connected 1.5"), None);
    }
}
