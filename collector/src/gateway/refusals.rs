//! Refusals said in the log without letting a hostile peer flood it: the
//! first refusal of a kind for a peer is logged at once with its identity
//! and address; more of the same within [`EVERY`] are counted and told with
//! the next one logged. Every refusal is counted in the `refused` metric.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::Metrics;

/// At most one line per peer and kind this often.
pub const EVERY: Duration = Duration::from_secs(60);
/// Peers remembered at most; past it, those quiet for [`EVERY`] are forgotten.
const REMEMBERED: usize = 10_000;

/// A kind of refusal and the peer it was for.
type Key = (&'static str, String);

#[derive(Default)]
pub struct Refusals {
    /// When each was last logged, and how many came since.
    seen: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl Refusals {
    /// Counts a refusal of `why` for `who` (an identity, or the address when
    /// there is none) and logs it unless one was logged within [`EVERY`].
    pub fn refused(
        &self,
        metrics: &Metrics,
        why: &'static str,
        who: &str,
        remote: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        metrics.refused(why);
        self.said(why, who, remote, detail);
    }

    /// Logs a refusal counted elsewhere (a failed TLS handshake has its own
    /// metric), under the same once-a-minute rule.
    pub fn said(
        &self,
        why: &'static str,
        who: &str,
        remote: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        let now = Instant::now();
        let suppressed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= REMEMBERED {
                seen.retain(|_, (at, _)| now.duration_since(*at) < EVERY);
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
            }
            match seen.get_mut(&(why, who.to_owned())) {
                Some((at, n)) if now.duration_since(*at) < EVERY => {
                    *n += 1;
                    return;
                }
                Some((at, n)) => {
                    let was = *n;
                    *at = now;
                    *n = 0;
                    was
                }
                None => {
                    seen.insert((why, who.to_owned()), (now, 0));
                    0
                }
            }
        };
        warn!(peer = %who, %remote, why, more_since_last = suppressed, "refused: {detail}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_refused_again_and_again_is_logged_once_and_counted_each_time() {
        let metrics = Metrics::new();
        let r = Refusals::default();
        let addr: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        for _ in 0..1000 {
            r.refused(&metrics, "rate", "desk-1", addr, &"too fast");
        }
        r.refused(&metrics, "rate", "desk-2", addr, &"too fast");
        let seen = r.seen.lock().unwrap();
        assert_eq!(seen[&("rate", "desk-1".to_owned())].1, 999);
        assert_eq!(seen[&("rate", "desk-2".to_owned())].1, 0);
        drop(seen);
        assert!(
            metrics
                .render()
                .contains("vitals_collector_refused_total{why=\"rate\"} 1001"),
            "{}",
            metrics.render()
        );
    }
}
