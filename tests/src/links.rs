//! Agents reduced to their link: the agent's own `Link` (outbox file,
//! sequence counter, backoff, keepalive, acks) fed with messages the test
//! chooses instead of probe readings. Hundreds fit in one test process, and
//! what they sent can be checked message by message in the store.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vitals_agent::config::AgentConfig;
use vitals_agent::link::{FromCollector, Link, LinkError, LinkStatus, Outgoing};
use vitals_proto::domain::{FaultEvent, FaultState, Severity};

use crate::StoppableTask;

pub struct LinkAgent {
    pub id: String,
    feed: mpsc::Sender<Outgoing>,
    /// Messages handed to the link.
    fed: std::sync::atomic::AtomicU64,
    pub status: watch::Receiver<LinkStatus>,
    task: StoppableTask<LinkError>,
}

/// The check the numbered events are about.
pub const CHECK: &str = "disk_nearly_full";

/// Event `n` of a numbered series: raised when `n` is odd, cleared when
/// even, with `n` as its value so the store can be checked for gaps and
/// doubles.
pub fn numbered_event(n: u64) -> Outgoing {
    let raised = n % 2 == 1;
    Outgoing::Fault(FaultEvent {
        check_id: CHECK.into(),
        subject: "/".into(),
        state: if raised {
            FaultState::Raised
        } else {
            FaultState::Cleared
        },
        severity: Severity::Warning,
        value: n as f64,
        evidence: format!("event {n}"),
        at_ms: vitals_proto::now_ms(),
        via: String::new(),
    })
}

impl LinkAgent {
    pub fn start(id: &str, config: AgentConfig) -> Self {
        let from = FromCollector {
            interval: watch::Sender::new(Duration::from_secs(60)),
            policy: watch::Sender::new(vitals_proto::policy::Policy::default_policy()),
            clock_offset: watch::Sender::new(None),
            resync: watch::Sender::new(None),
        };
        let link = Link::new(config, id.parse().expect("endpoint id"), from).expect("link");
        let status = link.status();
        let (feed, rx) = mpsc::channel(1024);
        let task = StoppableTask::spawn("link", |stop| link.run(rx, stop));
        LinkAgent {
            id: id.to_owned(),
            feed,
            fed: Default::default(),
            status,
            task,
        }
    }

    pub async fn send(&self, message: Outgoing) {
        self.feed.send(message).await.expect("link running");
        self.fed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the link took in everything it was handed, has a session and
    /// nothing left unacknowledged.
    pub fn drained(&self) -> bool {
        let s = self.status.borrow();
        s.connected
            && s.outbox_messages == 0
            && s.queued == self.fed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends the link at once, as a killed process would.
    pub async fn kill(self) {
        self.task.kill().await
    }

    pub async fn stop(self) {
        self.task.stop().await
    }
}
