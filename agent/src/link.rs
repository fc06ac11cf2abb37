//! The link: the agent's one long-lived mTLS stream to the collector, and
//! the only module of the agent that touches generated protobuf types.
//!
//! Every outgoing message (snapshot or fault event) takes the next sequence
//! number and waits in the pending queue until the collector acknowledges a
//! sequence at or above it. On each new session everything still pending is
//! sent again; the collector recognises what it already committed by
//! (endpoint, sequence). The queue is bounded: when full, the oldest
//! snapshot goes; fault events are never dropped. It is mirrored in the
//! outbox journal on disk ([`crate::journal`]), so a new agent process
//! resends what the last one could not deliver.
//!
//! The collector's policy arrives in the welcome (and in later policy
//! messages) and is handed to the sampler, which evaluates it.
//!
//! Reconnects use exponential backoff with full jitter: a random delay
//! between zero and min(max, min * 2^attempt), so a fleet that lost its
//! collector at the same instant does not come back at the same instant.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, error, info, warn};
use vitals_proto::domain::{FaultEvent, Snapshot};
use vitals_proto::identity::EndpointId;
use vitals_proto::policy::Policy;
use vitals_proto::wire::agent_gateway_client::AgentGatewayClient;
use vitals_proto::wire::{self, agent_message, collector_message};

use crate::config::AgentConfig;
use crate::journal::Journal;
use crate::seq::{SeqCounter, SeqError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a closing session waits for the last acknowledgements.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tls setup: {0}")]
    Tls(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("collector refused the stream: {0}")]
    Refused(String),
    #[error("collector closed the stream")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Seq(#[from] SeqError),
}

use vitals_proto::error_chain as chain;

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), chain(s))
}

/// A message for the collector.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Snapshot(Box<Snapshot>),
    Fault(FaultEvent),
}

/// Messages waiting for the collector's acknowledgement, in memory and,
/// unless the disk failed, in the outbox journal on disk.
pub struct Pending {
    /// (sequence, message, its encoded bytes).
    queue: VecDeque<(u64, Outgoing, Vec<u8>)>,
    max: usize,
    max_bytes: u64,
    /// Encoded bytes of what is queued.
    bytes: u64,
    /// Snapshots dropped because the queue was full.
    pub dropped: u64,
    journal: Option<Journal>,
    /// Why the journal stopped, once it did: the agent goes on in memory.
    pub journal_error: Option<String>,
}

impl Pending {
    /// A queue in memory only.
    pub fn new(max: usize) -> Self {
        Pending {
            queue: VecDeque::new(),
            max: max.max(1),
            max_bytes: u64::MAX,
            bytes: 0,
            dropped: 0,
            journal: None,
            journal_error: None,
        }
    }

    /// The queue backed by the journal in `dir`, with what it held before
    /// (a restart, a power cut). A journal that cannot be opened is logged
    /// and the agent goes on in memory.
    pub fn open(dir: &std::path::Path, max: usize, max_bytes: u64) -> Self {
        let mut p = Pending::new(max);
        p.max_bytes = max_bytes.max(1);
        match Journal::open(dir) {
            Ok((journal, recovered)) => {
                if let Some((path, bytes)) = &recovered.quarantined {
                    warn!(
                        quarantine = %path.display(),
                        bytes,
                        "outbox journal had a damaged tail; moved aside, the rest kept"
                    );
                }
                for (seq, body) in recovered.messages {
                    match decode(&body) {
                        Some(m) => {
                            p.bytes += body.len() as u64;
                            p.queue.push_back((seq, m, body));
                        }
                        None => warn!(seq, "outbox record not readable; skipped"),
                    }
                }
                if !p.queue.is_empty() {
                    info!(messages = p.queue.len(), "outbox restored from disk");
                }
                p.journal = Some(journal);
            }
            Err(e) => p.journal_failed("open", &e),
        }
        p
    }

    fn journal_failed(&mut self, what: &str, e: &std::io::Error) {
        let why = format!("outbox journal {what}: {e}");
        error!(error = %why, "outbox on disk unusable; keeping messages in memory only");
        self.journal = None;
        self.journal_error = Some(why);
    }

    /// Queues a message. When full (count or bytes), the oldest snapshots
    /// make room; if only fault events are queued, the queue grows rather
    /// than lose one.
    pub fn push(&mut self, seq: u64, message: Outgoing) {
        let body = prost::Message::encode_to_vec(&wire_message(seq, message.clone()));
        while self.queue.len() >= self.max || self.bytes + body.len() as u64 > self.max_bytes {
            let Some(i) = self
                .queue
                .iter()
                .position(|(_, m, _)| matches!(m, Outgoing::Snapshot(_)))
            else {
                break;
            };
            if let Some((old, _, b)) = self.queue.remove(i) {
                self.bytes -= b.len() as u64;
                self.dropped += 1;
                if let Some(j) = &mut self.journal
                    && let Err(e) = j.drop_message(old, b.len())
                {
                    self.journal_failed("write", &e);
                }
            }
        }
        if let Some(j) = &mut self.journal
            && let Err(e) = j.message(seq, &body)
        {
            self.journal_failed("write", &e);
        }
        self.bytes += body.len() as u64;
        self.queue.push_back((seq, message, body));
    }

    /// Forgets everything at or below `seq`.
    pub fn ack(&mut self, seq: u64) {
        let mut freed = 0u64;
        while self.queue.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, _, b)) = self.queue.pop_front() {
                freed += (b.len() + 17) as u64;
                self.bytes -= b.len() as u64;
            }
        }
        if freed == 0 {
            return;
        }
        if let Some(j) = &mut self.journal {
            let done = j.ack(seq, freed).and_then(|()| {
                if j.wants_compaction() {
                    j.rewrite(self.queue.iter().map(|(s, _, b)| (*s, b.as_slice())))
                } else {
                    Ok(())
                }
            });
            if let Err(e) = done {
                self.journal_failed("write", &e);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn renumber(&mut self, seq: &mut SeqCounter) -> Result<(), SeqError> {
        for (s, m, b) in &mut self.queue {
            *s = seq.assign()?;
            *b = prost::Message::encode_to_vec(&wire_message(*s, m.clone()));
        }
        if let Some(j) = &mut self.journal
            && let Err(e) = j.rewrite(self.queue.iter().map(|(s, _, b)| (*s, b.as_slice())))
        {
            self.journal_failed("rewrite", &e);
        }
        Ok(())
    }
}

/// A journal record's message, back as what the link sends.
fn decode(body: &[u8]) -> Option<Outgoing> {
    let m: wire::AgentMessage = prost::Message::decode(body).ok()?;
    match m.body? {
        agent_message::Body::Snapshot(s) => Some(Outgoing::Snapshot(Box::new(s.into()))),
        agent_message::Body::Fault(f) => f.try_into().ok().map(Outgoing::Fault),
        _ => None,
    }
}

/// What the agent needs to hold a session.
pub struct Link {
    endpoint_id: EndpointId,
    config: AgentConfig,
    tls: ClientTlsConfig,
    seq: SeqCounter,
    pending: Pending,
    welcomed_once: bool,
    /// The collector's snapshot interval, for the sampler.
    interval: watch::Sender<Duration>,
    /// The collector's policy, for the sampler's checks.
    policy: watch::Sender<Policy>,
    /// Collector clock minus ours, measured at each welcome.
    clock_offset: watch::Sender<Option<i64>>,
    /// Runs the collector's diagnostic requests; its updates go back up.
    diagnostics: Option<(crate::diag::Runner, mpsc::Receiver<crate::diag::Update>)>,
}

/// What the link learns from the collector and hands to the sampler.
pub struct FromCollector {
    pub interval: watch::Sender<Duration>,
    pub policy: watch::Sender<Policy>,
    pub clock_offset: watch::Sender<Option<i64>>,
}

impl Link {
    pub fn new(
        config: AgentConfig,
        endpoint_id: EndpointId,
        from_collector: FromCollector,
    ) -> Result<Self, LinkError> {
        let FromCollector {
            interval,
            policy,
            clock_offset,
        } = from_collector;
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| LinkError::File {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let ca = read("CA certificate", &config.tls.ca)?;
        let cert = read("certificate", &config.tls.cert)?;
        let key = read("key", &config.tls.key)?;
        let tls = ClientTlsConfig::new()
            .domain_name(config.server_name())
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        let seq = SeqCounter::open(&config.state_dir)?;
        Ok(Link {
            endpoint_id,
            pending: Pending::open(
                &config.state_dir,
                config.link.max_pending,
                config.link.outbox_max_bytes,
            ),
            config,
            tls,
            seq,
            welcomed_once: false,
            interval,
            policy,
            clock_offset,
            diagnostics: None,
        })
    }

    /// Runs diagnostics the collector asks for with `runner`, whose updates
    /// arrive on `updates`. Without it, requests are answered as refused.
    pub fn serve_diagnostics(
        &mut self,
        runner: crate::diag::Runner,
        updates: mpsc::Receiver<crate::diag::Update>,
    ) {
        self.diagnostics = Some((runner, updates));
    }

    /// The next diagnostic update, or never without diagnostics.
    async fn next_update(&mut self) -> Option<crate::diag::Update> {
        match &mut self.diagnostics {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    fn diagnostic(&mut self, request: wire::DiagnosticRequest) -> Option<wire::AgentMessage> {
        let Some((runner, _)) = &self.diagnostics else {
            return Some(diagnostic_message(crate::diag::Update::Done {
                id: request.id,
                result: crate::diag::Outcome {
                    error: "refused: diagnostics are turned off on this endpoint".into(),
                    ..Default::default()
                },
            }));
        };
        runner.start(crate::diag::Request {
            id: request.id,
            kind: request.kind,
            params: request.params.into_iter().collect(),
            timeout: Duration::from_millis(request.timeout_ms),
        });
        None
    }

    fn absorb(&mut self, message: Outgoing) -> Result<u64, SeqError> {
        let seq = self.seq.assign()?;
        self.pending.push(seq, message);
        Ok(seq)
    }

    /// Runs sessions until `shutdown` turns true, reconnecting with backoff.
    pub async fn run(
        mut self,
        mut snapshots: mpsc::Receiver<Outgoing>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let mut attempt: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.session(&mut snapshots, &mut shutdown).await {
                Ok(()) => return Ok(()),
                Err((welcomed, error)) => {
                    if let LinkError::Seq(e) = error {
                        return Err(LinkError::Seq(e));
                    }
                    if welcomed {
                        attempt = 0;
                    }
                    let delay = backoff(
                        attempt,
                        self.config.link.reconnect_min,
                        self.config.link.reconnect_max,
                    );
                    attempt = attempt.saturating_add(1);
                    warn!(
                        collector = %self.config.collector,
                        error = %error,
                        retry_in = ?delay,
                        pending = self.pending.len(),
                        "link down"
                    );
                    // Keep sampling into the queue while waiting.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            () = crate::stopped(&mut shutdown) => return Ok(()),
                            Some(s) = snapshots.recv() => { self.absorb(s)?; }
                            // Nobody to hear it: the collector already told
                            // the specialist the endpoint went away.
                            Some(_) = self.next_update() => {}
                        }
                    }
                }
            }
        }
    }

    async fn channel(&self) -> Result<Channel, LinkError> {
        Endpoint::from_shared(self.config.collector.clone())
            .map_err(|e| LinkError::Connect(chain(&e)))?
            .tls_config(self.tls.clone())
            .map_err(|e| LinkError::Tls(chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| LinkError::Connect(chain(&e)))
    }

    /// One session. `Ok` means shutdown was asked for; `Err` carries whether
    /// the collector had welcomed us (which resets the backoff).
    async fn session(
        &mut self,
        snapshots: &mut mpsc::Receiver<Outgoing>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), (bool, LinkError)> {
        let early = |e| (false, e);
        let channel = self.channel().await.map_err(early)?;
        let mut client = AgentGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel::<wire::AgentMessage>(64);
        let hello = wire::AgentMessage {
            seq: 0,
            body: Some(agent_message::Body::Hello(wire::Hello {
                endpoint_id: self.endpoint_id.to_string(),
                agent_version: vitals_proto::VERSION.to_owned(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
                last_assigned_seq: self.seq.last(),
            })),
        };
        let _ = tx.send(hello).await;
        let hello_sent_ms = vitals_proto::now_ms();
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(|s| early(LinkError::Refused(status_text(&s))))?
            .into_inner();
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(early(LinkError::Protocol("no welcome in time".into()))),
            Ok(Err(s)) => return Err(early(LinkError::Refused(status_text(&s)))),
            Ok(Ok(None)) => return Err(early(LinkError::Closed)),
            Ok(Ok(Some(wire::CollectorMessage {
                body: Some(collector_message::Body::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => {
                return Err(early(LinkError::Protocol(
                    "first message was not a welcome".into(),
                )));
            }
        };
        self.welcome(&welcome).map_err(|e| early(e.into()))?;
        if welcome.collector_time_ms > 0 {
            // The collector read its clock about halfway through the round trip.
            let midpoint = (hello_sent_ms + vitals_proto::now_ms()) / 2;
            let _ = self
                .clock_offset
                .send(Some(welcome.collector_time_ms - midpoint));
        }
        let late = |e| (true, e);
        info!(
            collector = %self.config.collector,
            endpoint = %self.endpoint_id,
            committed = welcome.committed_seq,
            resending = self.pending.len(),
            "connected"
        );

        for (seq, message, _) in &self.pending.queue {
            if tx.send(wire_message(*seq, message.clone())).await.is_err() {
                return Err(late(LinkError::Closed));
            }
        }
        let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(1000));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = crate::stopped(shutdown) => {
                    // Close our side, then give the collector a moment to
                    // acknowledge what it is committing.
                    drop(tx);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        while let Ok(Some(m)) = inbound.message().await {
                            if let Some(collector_message::Body::Ack(a)) = m.body {
                                self.pending.ack(a.seq);
                            }
                        }
                    })
                    .await;
                    info!(unacknowledged = self.pending.len(), "link closed");
                    return Ok(());
                }
                Some(outgoing) = snapshots.recv() => {
                    let message = wire_message(0, outgoing.clone());
                    let seq = self.absorb(outgoing).map_err(|e| late(e.into()))?;
                    if tx.send(wire::AgentMessage { seq, ..message }).await.is_err() {
                        return Err(late(LinkError::Closed));
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = wire::AgentMessage {
                        seq: 0,
                        body: Some(agent_message::Body::Heartbeat(wire::Heartbeat {
                            sent_at_ms: vitals_proto::now_ms(),
                        })),
                    };
                    if tx.send(beat).await.is_err() {
                        return Err(late(LinkError::Closed));
                    }
                }
                Some(update) = self.next_update() => {
                    if tx.send(diagnostic_message(update)).await.is_err() {
                        return Err(late(LinkError::Closed));
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Ack(a)) })) => {
                        debug!(seq = a.seq, "ack");
                        self.pending.ack(a.seq);
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Diagnostic(r)) })) => {
                        if let Some(refusal) = self.diagnostic(r)
                            && tx.send(refusal).await.is_err()
                        {
                            return Err(late(LinkError::Closed));
                        }
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::CancelDiagnostic(c)) })) => {
                        if let Some((runner, _)) = &self.diagnostics {
                            runner.cancel(c.id);
                        }
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Policy(p)) })) => {
                        let policy = Policy::from(p);
                        info!(version = %policy.version, checks = policy.checks.len(), "policy updated");
                        self.policy.send_replace(policy);
                    }
                    Ok(Some(_)) => {} // Newer collector message kinds are ignored.
                    Ok(None) => return Err(late(LinkError::Closed)),
                    Err(s) => return Err(late(LinkError::Refused(status_text(&s)))),
                }
            }
        }
    }

    /// Applies a welcome: forget what the collector has, and repair the
    /// counter if the agent's state was lost.
    fn welcome(&mut self, w: &wire::Welcome) -> Result<(), SeqError> {
        let first_welcome = !self.welcomed_once;
        self.welcomed_once = true;
        if first_welcome && w.committed_seq >= self.seq.first() {
            // The collector has sequences this process never sent: the
            // agent's state was lost or restored from an old copy. Nothing
            // pending can be committed yet, so number it past the collector.
            warn!(
                committed = w.committed_seq,
                local = self.seq.first(),
                "sequence counter behind the collector; renumbering pending messages"
            );
            self.seq.skip_past(w.committed_seq)?;
            self.pending.renumber(&mut self.seq)?;
        } else {
            self.pending.ack(w.committed_seq);
        }
        if let Some(p) = &w.policy {
            let policy = Policy::from(p.clone());
            if policy.version != self.policy.borrow().version {
                info!(version = %policy.version, checks = policy.checks.len(), "policy from collector");
                self.policy.send_replace(policy);
            }
        }
        if w.snapshot_interval_ms > 0 {
            self.interval
                .send_replace(Duration::from_millis(w.snapshot_interval_ms.max(1000)));
        }
        Ok(())
    }
}

fn diagnostic_message(update: crate::diag::Update) -> wire::AgentMessage {
    use crate::diag::Update;
    use wire::diagnostic_update::Body;
    let (id, body) = match update {
        Update::Progress { id, text } => (id, Body::Progress(text)),
        Update::Done { id, result } => (
            id,
            Body::Result(wire::DiagnosticResult {
                ok: result.ok,
                error: result.error,
                text: result.text,
                json: result.json,
                run_ms: result.run_ms,
            }),
        ),
    };
    wire::AgentMessage {
        seq: 0,
        body: Some(agent_message::Body::Diagnostic(wire::DiagnosticUpdate {
            id,
            body: Some(body),
        })),
    }
}

fn wire_message(seq: u64, message: Outgoing) -> wire::AgentMessage {
    wire::AgentMessage {
        seq,
        body: Some(match message {
            Outgoing::Snapshot(s) => agent_message::Body::Snapshot((*s).into()),
            Outgoing::Fault(e) => agent_message::Body::Fault(e.into()),
        }),
    }
}

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
    fn pending_is_bounded_and_acks_are_cumulative() {
        let snap = || Outgoing::Snapshot(Box::default());
        let mut p = Pending::new(3);
        for seq in 1..=5 {
            p.push(seq, snap());
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped, 2);
        p.ack(4);
        assert_eq!(p.queue.iter().map(|x| x.0).collect::<Vec<_>>(), vec![5]);
        p.ack(100);
        assert!(p.is_empty());
    }

    #[test]
    fn fault_events_are_never_dropped() {
        let fault = || {
            Outgoing::Fault(FaultEvent {
                check_id: "c".into(),
                subject: "s".into(),
                state: vitals_proto::domain::FaultState::Raised,
                severity: vitals_proto::domain::Severity::Warning,
                value: 1.0,
                evidence: String::new(),
                at_ms: 0,
            })
        };
        let mut p = Pending::new(2);
        p.push(1, Outgoing::Snapshot(Box::default()));
        p.push(2, fault());
        p.push(3, fault()); // the snapshot makes room
        p.push(4, fault()); // only events left: the queue grows
        let seqs: Vec<u64> = p.queue.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(p.dropped, 1);
    }

    fn fault(seq: u64) -> Outgoing {
        Outgoing::Fault(FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            state: vitals_proto::domain::FaultState::Raised,
            severity: vitals_proto::domain::Severity::Warning,
            value: seq as f64,
            evidence: format!("event {seq}"),
            at_ms: 0,
        })
    }

    #[test]
    fn the_outbox_survives_a_restart_and_forgets_what_was_acknowledged() {
        let dir = std::env::temp_dir().join(format!("vitals-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut p = Pending::open(&dir, 100, 1 << 20);
            for seq in 1..=4 {
                p.push(seq, fault(seq));
            }
            p.push(5, Outgoing::Snapshot(Box::default()));
            p.ack(2);
            assert!(p.journal_error.is_none());
        }
        // A new process: 3, 4 and 5 are still owed to the collector.
        let mut p = Pending::open(&dir, 100, 1 << 20);
        let seqs: Vec<u64> = p.queue.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        match &p.queue[0].1 {
            Outgoing::Fault(f) => assert_eq!(f.evidence, "event 3"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.queue[2].1, Outgoing::Snapshot(_)));
        p.ack(5);
        drop(p);
        assert!(Pending::open(&dir, 100, 1 << 20).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_byte_bound_drops_old_snapshots_never_events() {
        let dir = std::env::temp_dir().join(format!("vitals-outbox-bytes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let big = || {
            let mut s = vitals_proto::domain::Snapshot::default();
            s.host.hostname = "x".repeat(1000);
            Outgoing::Snapshot(Box::new(s))
        };
        let mut p = Pending::open(&dir, 1000, 2000);
        p.push(1, big());
        p.push(2, fault(2));
        p.push(3, big()); // over 2,000 bytes: snapshot 1 goes
        p.push(4, big()); // snapshot 3 goes
        let seqs: Vec<u64> = p.queue.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![2, 4]);
        assert_eq!(p.dropped, 2);
        drop(p);
        let p = Pending::open(&dir, 1000, 2000);
        let seqs: Vec<u64> = p.queue.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![2, 4], "the drops are in the journal too");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unusable_disk_leaves_the_outbox_in_memory() {
        // A file where the state folder should be: nothing can be created.
        let blocker =
            std::env::temp_dir().join(format!("vitals-outbox-file-{}", std::process::id()));
        std::fs::write(&blocker, b"not a folder").unwrap();
        let mut p = Pending::open(&blocker.join("state"), 10, 1 << 20);
        assert!(
            p.journal_error
                .as_deref()
                .is_some_and(|e| e.starts_with("outbox journal open:")),
            "{:?}",
            p.journal_error
        );
        p.push(1, fault(1));
        assert_eq!(p.len(), 1, "still queued, in memory");
        let _ = std::fs::remove_file(&blocker);
    }

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
