//! The soak: a fleet held against one collector for an hour or more, with
//! fault events, a steady trickle of diagnostics and a reconnect storm at a
//! fixed period, sampled once a minute so growth shows as a curve: the
//! collector's resident memory and CPU, its database files on disk, fault
//! to ticket latency and diagnostics in each minute.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Percentiles, Stats, percentiles};

/// What a soak adds to a [`super::Plan`].
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Every agent's stream dropped at once at this period after the ramp.
    pub storm_every: Duration,
    /// Diagnostics relayed per second, round robin over the fleet, for the
    /// whole run.
    pub diag_per_sec: f64,
    /// One timeline row per this long.
    pub sample_every: Duration,
    /// The collector's database files, summed for the size column.
    pub db_files: Vec<PathBuf>,
    /// Rows before this are warm-up: growth is measured from its end.
    pub warm_up: Duration,
}

/// One minute of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Seconds since the ramp ended.
    pub t_s: f64,
    pub connected: u64,
    pub acked_per_s: f64,
    pub rss_mib: f64,
    /// Percent of one core over the row's span.
    pub cpu_percent: f64,
    pub db_mib: f64,
    /// Raised faults ticketed in the span, and how long they took.
    pub ticketed: u64,
    pub ticket_p50_ms: f64,
    pub ticket_p99_ms: f64,
    pub diag_ok: u64,
    pub diag_failed: u64,
    pub diag_p99_ms: f64,
    /// Errors the agents saw, all kinds, in the span.
    pub agent_errors: u64,
    /// Whether a reconnect storm started in the span.
    pub storm: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub rows: Vec<Row>,
    pub diag_errors: BTreeMap<String, u64>,
    /// Resident memory at the end of warm-up, at the end, and the growth.
    pub rss_warm_mib: f64,
    pub rss_end_mib: f64,
    pub rss_growth_percent: f64,
    pub rss_max_after_warm_mib: f64,
    /// Database on disk at the end of warm-up, at its largest after, at the end.
    pub db_warm_mib: f64,
    pub db_max_mib: f64,
    pub db_end_mib: f64,
    /// Fault to ticket p99 per row after warm-up: lowest and highest.
    pub ticket_p99_min_ms: f64,
    pub ticket_p99_max_ms: f64,
    pub diagnostics: Percentiles,
}

/// Diagnostics sent by the trickle, with their outcomes.
#[derive(Default)]
pub struct DiagLog {
    done: Mutex<Vec<Result<u32, String>>>,
}

impl DiagLog {
    fn push(&self, r: Result<u32, String>) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }
}

/// Relays diagnostics at `plan.diag_per_sec` until `stop` is sent, each
/// given 10 s.
pub async fn trickle(
    client: vitals_collector::ctl::Client,
    prefix: String,
    agents: usize,
    rate: f64,
    log: Arc<DiagLog>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let endpoint = format!("{prefix}-{:05}", i % agents.max(1));
        i += 1;
        let mut client = client.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                super::one_diagnostic(&mut client, endpoint),
            )
            .await
            .unwrap_or_else(|_| Err("no result within 10 s".to_owned()));
            log.push(r);
        });
    }
}

fn file_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples a row every `plan.sample_every` until `stop` is sent.
pub async fn timeline(
    plan: SoakPlan,
    server_pid: Option<u32>,
    stats: Arc<Stats>,
    diags: Arc<DiagLog>,
    storms: Arc<std::sync::atomic::AtomicU64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> SoakReport {
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut last_at = Instant::now();
    let mut last_acked = stats.acked.load(Ordering::Relaxed);
    let mut last_ticks = server_pid.and_then(|p| super::procstat::cpu_ticks(&p.to_string(), false));
    let mut last_tickets = 0usize;
    let mut last_diags = 0usize;
    let mut last_errors = 0u64;
    let mut last_storms = 0u64;
    let mut diag_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut diag_all = Vec::new();
    let mut tick = tokio::time::interval(plan.sample_every);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let now = Instant::now();
        let span = (now - last_at).as_secs_f64().max(0.001);
        last_at = now;
        let acked = stats.acked.load(Ordering::Relaxed);
        let ticks = server_pid.and_then(|p| super::procstat::cpu_ticks(&p.to_string(), false));
        let cpu = match (ticks, last_ticks) {
            (Some(t), Some(l)) => (t - l) as f64 / 100.0 / span * 100.0,
            _ => 0.0,
        };
        last_ticks = ticks;
        let tickets: Vec<u32> = {
            let all = stats
                .ticket_latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let new = all[last_tickets.min(all.len())..].to_vec();
            last_tickets = all.len();
            new
        };
        let (ok, failed): (Vec<u32>, u64) = {
            let all = diags.done.lock().unwrap_or_else(|p| p.into_inner());
            let mut ok = Vec::new();
            let mut failed = 0;
            for r in &all[last_diags.min(all.len())..] {
                match r {
                    Ok(us) => ok.push(*us),
                    Err(e) => {
                        failed += 1;
                        *diag_errors.entry(e.clone()).or_default() += 1;
                    }
                }
            }
            last_diags = all.len();
            (ok, failed)
        };
        diag_all.extend_from_slice(&ok);
        let errors: u64 = stats.errors().values().sum();
        let storms_now = storms.load(Ordering::Relaxed);
        let t = percentiles(tickets);
        let d = percentiles(ok);
        let row = Row {
            t_s: t0.elapsed().as_secs_f64().round(),
            connected: stats.connected.load(Ordering::Relaxed),
            acked_per_s: (acked - last_acked) as f64 / span,
            rss_mib: server_pid.and_then(rss_kib).unwrap_or(0) as f64 / 1024.0,
            cpu_percent: cpu,
            db_mib: file_bytes(&plan.db_files) as f64 / (1024.0 * 1024.0),
            ticketed: t.samples,
            ticket_p50_ms: t.p50,
            ticket_p99_ms: t.p99,
            diag_ok: d.samples,
            diag_failed: failed,
            diag_p99_ms: d.p99,
            agent_errors: errors - last_errors,
            storm: storms_now != last_storms,
        };
        last_acked = acked;
        last_errors = errors;
        last_storms = storms_now;
        eprintln!(
            "soak t={:>5.0}s rss={:.1}MiB cpu={:.0}% db={:.1}MiB ticket p99={:.1}ms diag ok/failed={}/{} errors={}{}",
            row.t_s,
            row.rss_mib,
            row.cpu_percent,
            row.db_mib,
            row.ticket_p99_ms,
            row.diag_ok,
            row.diag_failed,
            row.agent_errors,
            if row.storm { " storm" } else { "" }
        );
        rows.push(row);
        if stopping {
            break;
        }
    }
    summarise(&plan, rows, diag_errors, percentiles(diag_all))
}

fn summarise(
    plan: &SoakPlan,
    rows: Vec<Row>,
    diag_errors: BTreeMap<String, u64>,
    diagnostics: Percentiles,
) -> SoakReport {
    let warm = plan.warm_up.as_secs_f64();
    let after: Vec<&Row> = rows.iter().filter(|r| r.t_s >= warm).collect();
    let first = after.first().copied().or(rows.last());
    let last = rows.last();
    let rss_warm = first.map_or(0.0, |r| r.rss_mib);
    let rss_end = last.map_or(0.0, |r| r.rss_mib);
    let max = |f: fn(&Row) -> f64| after.iter().map(|r| f(r)).fold(0.0, f64::max);
    let busy: Vec<f64> = after
        .iter()
        .filter(|r| r.ticketed > 0)
        .map(|r| r.ticket_p99_ms)
        .collect();
    SoakReport {
        rss_warm_mib: rss_warm,
        rss_end_mib: rss_end,
        rss_growth_percent: if rss_warm > 0.0 {
            (rss_end - rss_warm) / rss_warm * 100.0
        } else {
            0.0
        },
        rss_max_after_warm_mib: max(|r| r.rss_mib),
        db_warm_mib: first.map_or(0.0, |r| r.db_mib),
        db_max_mib: max(|r| r.db_mib),
        db_end_mib: last.map_or(0.0, |r| r.db_mib),
        ticket_p99_min_ms: busy.iter().copied().reduce(f64::min).unwrap_or(0.0),
        ticket_p99_max_ms: busy.iter().copied().fold(0.0, f64::max),
        diagnostics,
        diag_errors,
        rows,
    }
}

impl SoakReport {
    /// The timeline as CSV, for a curve.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "t_s,connected,acked_per_s,rss_mib,cpu_percent,db_mib,ticketed,ticket_p50_ms,\
             ticket_p99_ms,diag_ok,diag_failed,diag_p99_ms,agent_errors,storm\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{},{},{:.0},{:.1},{:.0},{:.1},{},{:.1},{:.1},{},{},{:.1},{},{}\n",
                r.t_s,
                r.connected,
                r.acked_per_s,
                r.rss_mib,
                r.cpu_percent,
                r.db_mib,
                r.ticketed,
                r.ticket_p50_ms,
                r.ticket_p99_ms,
                r.diag_ok,
                r.diag_failed,
                r.diag_p99_ms,
                r.agent_errors,
                u8::from(r.storm)
            ));
        }
        out
    }

    /// Rows for the report table.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "soak RSS after warm-up / end / max",
                format!(
                    "{:.1} / {:.1} / {:.1} MiB ({:+.2} %)",
                    self.rss_warm_mib,
                    self.rss_end_mib,
                    self.rss_max_after_warm_mib,
                    self.rss_growth_percent
                ),
            ),
            (
                "soak database after warm-up / max / end",
                format!(
                    "{:.1} / {:.1} / {:.1} MiB",
                    self.db_warm_mib, self.db_max_mib, self.db_end_mib
                ),
            ),
            (
                "soak fault to ticket p99 per minute",
                format!(
                    "{:.1} to {:.1} ms",
                    self.ticket_p99_min_ms, self.ticket_p99_max_ms
                ),
            ),
            (
                "soak diagnostics ok p50 / p99; failed",
                format!(
                    "{} at {:.1} / {:.1} ms; {:?}",
                    self.diagnostics.samples,
                    self.diagnostics.p50,
                    self.diagnostics.p99,
                    self.diag_errors
                ),
            ),
        ]
    }
}
