//! The link: the agent's one long-lived mTLS stream to the collector, and
//! the only module of the agent that touches generated protobuf types.
//!
//! Words used throughout: the **outbox** is every message the collector has
//! not acknowledged yet ([`Outbox`], `outbox.rs`); the **outbox file** is its
//! copy on disk, `<state_dir>/outbox.log` ([`outbox_file`]), so a new agent
//! process resends what the last one could not deliver. A **session** is one
//! stream from hello to close ([`Link`], `session.rs`).
//!
//! Every outgoing message (snapshot or fault event) waits in the outbox
//! until the collector acknowledges a sequence at or above its own. It is
//! numbered when its turn to go out comes: numbered messages go first, in
//! order, then waiting fault events, then waiting snapshots, so after an
//! outage the faults reach the collector ahead of the snapshot backlog and
//! the wire still carries rising sequences. On each new session every
//! numbered message still in the outbox is sent again; the collector
//! recognises what it already committed by (endpoint, sequence). The outbox
//! is bounded: when full, the oldest snapshot goes; fault events are never
//! dropped. Diagnostic updates bypass the outbox: they go out at once, ahead
//! of everything, and only mean something to the session that asked for
//! them.
//!
//! The collector's policy arrives in the welcome (and in later policy
//! messages) and is handed to the sampler, which evaluates it.
//!
//! Reconnects use exponential backoff with full jitter: a random delay
//! between zero and min(max, min * 2^attempt), so a fleet that lost its
//! collector at the same instant does not come back at the same instant.

pub mod credentials;
pub mod enroll;
mod outbox;
pub mod outbox_file;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vitals_proto::domain::{FaultEvent, Snapshot};
use vitals_proto::error_chain as chain;
use vitals_proto::policy::Policy;

use crate::seq::SeqError;

pub use outbox::{MEMORY_ONLY_BYTES, Outbox};
pub use outbox_file::{FileOp, OutboxFileError};
pub use session::Link;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tls setup: {}", chain(.0))]
    Tls(#[source] tonic::transport::Error),
    #[error("connect: {}", chain(.0))]
    Connect(#[source] tonic::transport::Error),
    #[error("connect: no welcome within {within:?} (link.connect_timeout)")]
    NoWelcome { within: Duration },
    #[error("collector refused the stream: {:?}: {}", .0.code(), chain(.0))]
    Refused(#[source] tonic::Status),
    #[error("collector closed the stream")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Seq(#[from] SeqError),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
    #[error("certificate renewal: {0}")]
    Renewal(String),
}

/// A message for the collector.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Snapshot(Box<Snapshot>),
    Fault(FaultEvent),
}

/// What the link is doing, for whoever watches it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStatus {
    /// A session is open (the collector welcomed it).
    pub connected: bool,
    /// Sessions the collector welcomed since the link started.
    pub sessions: u64,
    /// Messages in the outbox: the collector has not acknowledged them yet.
    pub outbox_messages: usize,
    /// Messages taken in since the link started.
    pub queued: u64,
    /// Snapshots dropped for room since the link started.
    pub dropped: u64,
    /// Why the outbox file stopped being written, if it did (the outbox is
    /// then held in memory only).
    pub outbox_error: Option<String>,
}

/// The fault an agent raises about itself when its outbox file cannot be
/// written: messages are then held in memory only.
pub const OUTBOX_CHECK: &str = "agent_outbox_unwritable";

/// What the link learns from the collector and hands to the sampler.
pub struct FromCollector {
    pub interval: watch::Sender<Duration>,
    pub policy: watch::Sender<Policy>,
    pub clock_offset: watch::Sender<Option<i64>>,
    /// A welcome's resync: the (check, subject) keys the collector
    /// believes raised; the sampler answers with its own faults.
    pub resync: watch::Sender<Option<Resync>>,
}

/// The (check, subject) keys a collector asking for a resync believes
/// raised.
pub type Resync = Arc<Vec<(String, String)>>;

/// Full-jitter exponential backoff.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(fastrand::u64(0..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            let ceiling = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }
}
