//! The collector's own `/metrics`, read during a run so a tail in the load
//! generator's figures can be explained from the run that showed it:
//! how long commits took, how many messages and sessions each carried,
//! how many agents the collector counted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// What the collector said about itself over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMetrics {
    pub scrapes: u64,
    pub connected_agents_max: f64,
    pub commits: f64,
    /// From the commit duration histogram: the bucket bounds holding the
    /// median and the 99th percentile, and the mean.
    pub commit_ms_p50: f64,
    pub commit_ms_p99: f64,
    pub commit_ms_mean: f64,
    /// Commits that took longer than 64 ms: the stalls every message
    /// queued behind them waits out.
    pub commits_over_64ms: f64,
    pub messages_per_commit_mean: f64,
    pub messages_per_commit_p99: f64,
    pub sessions_per_commit_mean: f64,
    pub handshakes: f64,
    pub handshake_failures: f64,
    /// Failed handshakes by their reason label.
    pub handshake_failures_by: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, f64>,
}

impl ServerMetrics {
    /// One line for the report table.
    pub fn line(&self) -> String {
        format!(
            "{:.0} commits, {:.2} ms mean, p50 <= {} ms, p99 <= {} ms, {:.0} over 64 ms; \
             {:.1} messages (p99 <= {}) and {:.2} sessions per commit; {:.0} agents max; \
             {:.0} handshakes, failed {:?}; errors {:?}",
            self.commits,
            self.commit_ms_mean,
            self.commit_ms_p50,
            self.commit_ms_p99,
            self.commits_over_64ms,
            self.messages_per_commit_mean,
            self.messages_per_commit_p99,
            self.sessions_per_commit_mean,
            self.connected_agents_max,
            self.handshakes,
            self.handshake_failures_by,
            self.errors
        )
    }
}

/// An HTTP client for `/metrics` reads that give up after `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    // The HTTP client's TLS needs a process-wide provider, even for plain
    // HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default()
}

/// Reads a collector's `/metrics` at `url` now and then.
pub struct Scraper {
    url: String,
    http: reqwest::Client,
    seen: ServerMetrics,
}

impl Scraper {
    pub fn new(url: String) -> Scraper {
        Scraper {
            url,
            http: http_client(Duration::from_secs(5)),
            seen: ServerMetrics::default(),
        }
    }

    /// Reads the metrics once; a failed read is skipped (the collector may
    /// be busy), and the counters keep their last values.
    pub async fn sample(&mut self) {
        let text = match self.http.get(&self.url).send().await {
            Ok(r) => match r.text().await {
                Ok(t) => t,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let m = parse(&text);
        let connected = m.value("vitals_collector_connected_agents");
        let max = self.seen.connected_agents_max.max(connected);
        let scrapes = self.seen.scrapes + 1;
        self.seen = m.summary();
        self.seen.connected_agents_max = max;
        self.seen.scrapes = scrapes;
    }

    pub fn summary(&self) -> ServerMetrics {
        self.seen.clone()
    }
}

/// Whether the collector serving `url` holds the ticket leader lock, from
/// its `vitals_collector_leader` gauge; `None` while it does not answer.
pub async fn leads(http: &reqwest::Client, url: &str) -> Option<bool> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    Some(parse(&text).value("vitals_collector_leader") >= 1.0)
}

/// Samples of one exposition: name with labels -> value.
struct Exposition(BTreeMap<String, f64>);

fn parse(text: &str) -> Exposition {
    let mut out = BTreeMap::new();
    // One collector is scraped: its replica label says nothing here.
    let text = crate::without_replica_label(text);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((key, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(key.to_owned(), v);
        }
    }
    Exposition(out)
}

impl Exposition {
    fn value(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Sum over every label set of a metric.
    fn total(&self, name: &str) -> f64 {
        self.labelled(name).values().sum()
    }

    /// A metric's values by its label text.
    fn labelled(&self, name: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&prefix)
                    .map(|rest| (rest.trim_end_matches('}').to_owned(), *v))
            })
            .collect()
    }

    /// A histogram's buckets (upper bound, cumulative count), in order.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = self
            .labelled(&format!("{name}_bucket"))
            .into_iter()
            .filter_map(|(labels, count)| {
                let le = labels.strip_prefix("le=\"")?.trim_end_matches('"');
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, count))
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile(&self, name: &str, q: f64) -> f64 {
        let b = self.buckets(name);
        let total = b.last().map(|x| x.1).unwrap_or(0.0);
        if total == 0.0 {
            return 0.0;
        }
        b.iter()
            .find(|(_, count)| *count >= total * q)
            .map(|x| x.0)
            .unwrap_or(f64::INFINITY)
    }

    /// How many observations went above `bound` (a bucket bound).
    fn over(&self, name: &str, bound: f64) -> f64 {
        let b = self.buckets(name);
        let total = b.last().map(|x| x.1).unwrap_or(0.0);
        let within = b
            .iter()
            .filter(|(le, _)| *le <= bound)
            .map(|x| x.1)
            .fold(0.0, f64::max);
        total - within
    }

    fn mean(&self, name: &str) -> f64 {
        let count = self.value(&format!("{name}_count"));
        if count == 0.0 {
            0.0
        } else {
            self.value(&format!("{name}_sum")) / count
        }
    }

    fn summary(&self) -> ServerMetrics {
        let commit = "vitals_collector_commit_seconds";
        let batch = "vitals_collector_commit_batch_size";
        let failures = "vitals_collector_tls_handshake_failures_total";
        ServerMetrics {
            scrapes: 0,
            connected_agents_max: 0.0,
            commits: self.value(&format!("{commit}_count")),
            commit_ms_p50: self.quantile(commit, 0.5) * 1000.0,
            commit_ms_p99: self.quantile(commit, 0.99) * 1000.0,
            commit_ms_mean: self.mean(commit) * 1000.0,
            commits_over_64ms: self.over(commit, 0.064),
            messages_per_commit_mean: self.mean(batch),
            messages_per_commit_p99: self.quantile(batch, 0.99),
            sessions_per_commit_mean: self.mean("vitals_collector_commit_sessions"),
            handshakes: self.value("vitals_collector_tls_handshakes_total"),
            handshake_failures: self.total(failures),
            handshake_failures_by: self.labelled(failures),
            errors: self.labelled("vitals_collector_errors_total"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_recorded_exposition() {
        let text = "# HELP vitals_collector_commit_seconds Duration of storage commits.\n\
            # TYPE vitals_collector_commit_seconds histogram\n\
            vitals_collector_commit_seconds_sum 0.5\n\
            vitals_collector_commit_seconds_count 100\n\
            vitals_collector_commit_seconds_bucket{le=\"0.001\"} 60\n\
            vitals_collector_commit_seconds_bucket{le=\"0.002\"} 98\n\
            vitals_collector_commit_seconds_bucket{le=\"0.004\"} 99\n\
            vitals_collector_commit_seconds_bucket{le=\"0.064\"} 99\n\
            vitals_collector_commit_seconds_bucket{le=\"0.128\"} 100\n\
            vitals_collector_commit_seconds_bucket{le=\"+Inf\"} 100\n\
            vitals_collector_connected_agents 42\n\
            vitals_collector_errors_total{kind=\"commit\"} 2\n\
            vitals_collector_tls_handshake_failures_total{reason=\"tls\"} 3\n\
            vitals_collector_tls_handshake_failures_total{reason=\"timeout\"} 4\n\
            # EOF\n";
        let e = parse(text);
        let s = e.summary();
        assert_eq!(s.commits, 100.0);
        assert_eq!(s.commit_ms_p50, 1.0);
        assert_eq!(s.commit_ms_p99, 4.0);
        assert_eq!(s.commit_ms_mean, 5.0);
        assert_eq!(s.commits_over_64ms, 1.0);
        assert_eq!(s.handshake_failures, 7.0);
        assert_eq!(
            s.handshake_failures_by.get("reason=\"timeout\""),
            Some(&4.0)
        );
        assert!(s.line().contains("1 over 64 ms"), "{}", s.line());
        assert_eq!(s.errors.get("kind=\"commit\""), Some(&2.0));
        assert_eq!(e.value("vitals_collector_connected_agents"), 42.0);
    }
}
