//! Samples a process's CPU and resident memory from `/proc` once a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub samples: u64,
    /// Percent of one core, averaged over the run.
    pub cpu_avg_percent: f64,
    /// Highest one-second reading.
    pub cpu_max_percent: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
}

pub struct Sampler {
    state: Arc<Mutex<Summary>>,
    task: tokio::task::JoinHandle<()>,
}

/// CPU ticks (user + system; with `children`, also of its waited-for
/// children) of a process, `"self"` or a PID, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: &str, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..17 (1-based), 11..14 here.
    let fields = if children { 11..15 } else { 11..13 };
    fields
        .map(|i| f.get(i)?.parse::<u64>().ok())
        .sum::<Option<u64>>()
}

/// CPU ticks (user + system) and RSS in KiB of a process.
fn read(pid: u32) -> Option<(u64, u64)> {
    let ticks = cpu_ticks(&pid.to_string(), false)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ), 100 on Linux.
const HZ: f64 = 100.0;

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let state = Arc::new(Mutex::new(Summary::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            let Some((first_ticks, _)) = read(pid) else {
                return;
            };
            let t0 = Instant::now();
            let mut last = (first_ticks, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some((ticks, rss)) = read(pid) else {
                    return;
                };
                let now = Instant::now();
                let cpu = (ticks - last.0) as f64 / HZ / (now - last.1).as_secs_f64() * 100.0;
                last = (ticks, now);
                let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                g.samples += 1;
                g.cpu_max_percent = g.cpu_max_percent.max(cpu);
                g.cpu_avg_percent =
                    (ticks - first_ticks) as f64 / HZ / t0.elapsed().as_secs_f64() * 100.0;
                let mib = rss as f64 / 1024.0;
                g.rss_max_mib = g.rss_max_mib.max(mib);
                g.rss_end_mib = mib;
            }
        });
        Sampler { state, task }
    }

    pub fn stop(self) -> Summary {
        self.task.abort();
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
