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
    /// At the end: anonymous memory (heap, stacks) and file-backed pages
    /// (the binary, the memory-mapped database), which make up the RSS.
    pub rss_anon_end_mib: f64,
    pub rss_file_end_mib: f64,
    /// Percent of one core over the last minute sampled: the steady state
    /// after the ramp.
    pub cpu_last_minute_percent: f64,
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

/// CPU ticks (user + system) and RSS in KiB of a process: total,
/// anonymous, file-backed.
fn read(pid: u32) -> Option<(u64, [u64; 3])> {
    let ticks = cpu_ticks(&pid.to_string(), false)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((
        ticks,
        [
            kib("VmRSS:")?,
            kib("RssAnon:")?,
            kib("RssFile:").unwrap_or(0),
        ],
    ))
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
            let mut minute = std::collections::VecDeque::from([(first_ticks, Instant::now())]);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some((ticks, [rss, anon, file])) = read(pid) else {
                    return;
                };
                let now = Instant::now();
                minute.push_back((ticks, now));
                while minute.len() > 61 {
                    minute.pop_front();
                }
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
                g.rss_anon_end_mib = anon as f64 / 1024.0;
                g.rss_file_end_mib = file as f64 / 1024.0;
                if let Some((t, at)) = minute.front() {
                    let span = (now - *at).as_secs_f64().max(0.001);
                    g.cpu_last_minute_percent = (ticks - t) as f64 / HZ / span * 100.0;
                }
            }
        });
        Sampler { state, task }
    }

    pub fn stop(self) -> Summary {
        self.task.abort();
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
