//! Prometheus metrics of the collector, served as text on `/metrics` from a
//! plain HTTP port that is bound to loopback unless configured otherwise.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = [(&'static str, &'static str); 1];

/// Every metric the collector exports.
pub struct Metrics {
    registry: Registry,
    /// Agents with a live session.
    pub connected_agents: Gauge,
    /// TLS handshakes that produced a verified connection.
    pub handshakes: Counter,
    handshake_failures: Family<Labels, Counter>,
    messages: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    /// Seconds from the start of a storage commit to its end.
    pub commit_seconds: Histogram,
    /// Messages per storage commit.
    pub commit_batch_size: Histogram,
    /// Session opens and closes per storage commit.
    pub commit_sessions: Histogram,
    /// Snapshots agents reported dropping from their outboxes for room.
    pub agent_dropped_snapshots: Counter,
    /// 1 while this replica leads (runs the ticket engine and sender).
    pub leader: Gauge,
    retention_removed: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    /// The database's size on disk, as of the last retention pass.
    pub database_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_registry(Registry::with_prefix("vitals_collector"))
    }

    /// Metrics of one replica: every series carries its `replica` label.
    pub fn for_replica(name: &str) -> Self {
        Self::with_registry(Registry::with_prefix_and_labels(
            "vitals_collector",
            [(
                std::borrow::Cow::Borrowed("replica"),
                std::borrow::Cow::Owned(name.to_owned()),
            )]
            .into_iter(),
        ))
    }

    fn with_registry(mut registry: Registry) -> Self {
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Agents with a live session",
            connected_agents.clone(),
        );
        let handshakes = Counter::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes that produced a verified connection",
            handshakes.clone(),
        );
        let handshake_failures = Family::default();
        registry.register(
            "tls_handshake_failures",
            "Connections refused at the TLS layer, by reason",
            handshake_failures.clone(),
        );
        let messages = Family::default();
        registry.register(
            "messages",
            "Agent messages received, by kind",
            messages.clone(),
        );
        let errors = Family::default();
        registry.register("errors", "Errors, by kind", errors.clone());
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "commit_seconds",
            "Duration of storage commits",
            commit_seconds.clone(),
        );
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "commit_batch_size",
            "Messages per storage commit",
            commit_batch_size.clone(),
        );
        let commit_sessions = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "commit_sessions",
            "Session opens and closes written per storage commit",
            commit_sessions.clone(),
        );
        let agent_dropped_snapshots = Counter::default();
        registry.register(
            "agent_dropped_snapshots",
            "Snapshots agents dropped from their outboxes for room while disconnected (never delivered)",
            agent_dropped_snapshots.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica leads: it runs the ticket engine and the notification sender",
            leader.clone(),
        );
        let retention_removed = Family::default();
        registry.register(
            "retention_removed",
            "Rows removed by retention (audit entries: archived first), by what they were",
            retention_removed.clone(),
        );
        let refused = Family::default();
        registry.register(
            "refused",
            "Messages, sessions, connections and calls refused as hostile or out of bounds, by why",
            refused.clone(),
        );
        let database_bytes = Gauge::default();
        registry.register(
            "database_bytes",
            "The database's size on disk at the last retention pass",
            database_bytes.clone(),
        );
        Metrics {
            registry,
            leader,
            retention_removed,
            refused,
            database_bytes,
            agent_dropped_snapshots,
            connected_agents,
            handshakes,
            handshake_failures,
            messages,
            errors,
            commit_seconds,
            commit_batch_size,
            commit_sessions,
        }
    }

    /// Keeps the leader gauge following this replica's leadership.
    pub fn watch_leadership(
        self: &Arc<Self>,
        mut leading: crate::leader::Leading,
        mut stop: vitals_proto::shutdown::Shutdown,
    ) {
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                let now = leading.now();
                metrics.leader.set(i64::from(now));
                tokio::select! {
                    () = leading.until(!now) => {}
                    () = stop.requested() => return,
                }
            }
        });
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn message(&self, kind: &'static str) {
        self.messages.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn retention_removed(&self, what: &'static str, n: u64) {
        self.retention_removed
            .get_or_create(&[("what", what)])
            .inc_by(n);
    }

    pub fn refused(&self, why: &'static str) {
        self.refused.get_or_create(&[("why", why)]).inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names() {
        let m = Metrics::new();
        m.connected_agents.set(3);
        m.message("snapshot");
        m.handshake_failed("tls");
        let text = m.render();
        assert!(
            text.contains("vitals_collector_connected_agents 3"),
            "{text}"
        );
        assert!(
            text.contains("vitals_collector_messages_total{kind=\"snapshot\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vitals_collector_tls_handshake_failures_total{reason=\"tls\"} 1"),
            "{text}"
        );
    }
}
