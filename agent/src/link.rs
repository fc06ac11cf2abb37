//! The link: the agent's one long-lived mTLS stream to the collector, and
//! the only module of the agent that touches generated protobuf types.
//!
//! Every outgoing message (snapshot or fault event) waits in the pending
//! queue until the collector acknowledges a sequence at or above its own.
//! It is numbered when its turn to go out comes: numbered messages go first,
//! in order, then waiting fault events, then waiting snapshots, so after an
//! outage the faults reach the collector ahead of the snapshot backlog and
//! the wire still carries rising sequences. On each new session every
//! numbered message still pending is sent again; the collector recognises
//! what it already committed by (endpoint, sequence). The queue is bounded:
//! when full, the oldest snapshot goes; fault events are never dropped. It
//! is mirrored in the outbox journal on disk ([`crate::journal`]), so a new
//! agent process resends what the last one could not deliver. Diagnostic
//! updates bypass the queue: they go out at once, ahead of everything, and
//! only mean something to the session that asked for them.
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
use crate::journal::{Journal, Live, Source, Stored};
use crate::seq::{SeqCounter, SeqError};

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

/// How many waiting messages are numbered at once (one journal flush).
const NUMBER_BATCH: usize = 16;
/// The outbox's bound while the disk cannot be used and everything is held
/// in memory.
pub const MEMORY_ONLY_BYTES: u64 = 8 * 1024 * 1024;

/// Where a queued message's encoded bytes are: in the journal file (the
/// usual case: memory holds only this index) or in memory (no journal).
enum Body {
    Memory(Vec<u8>),
    Disk(Stored),
}

struct Entry {
    fault: bool,
    size: u64,
    body: Body,
}

impl Entry {
    fn source(&self) -> Source<'_> {
        match &self.body {
            Body::Memory(b) => Source::Memory(b),
            Body::Disk(s) => Source::File(*s),
        }
    }
}

/// Messages waiting for the collector's acknowledgement: in the outbox
/// journal on disk with an index in memory or, if the disk failed, in
/// memory.
///
/// A message gets its sequence number when it is about to go out, so the
/// queue has two parts: numbered messages (sent, or next to be sent, in
/// sequence order) and waiting ones (not numbered yet: fault events ahead
/// of snapshots, each oldest first). On a new session every numbered
/// message is resent first, in order; only then are waiting ones numbered,
/// so the wire always carries rising sequences.
pub struct Pending {
    numbered: VecDeque<(u64, Entry)>,
    /// How many of `numbered` went out on the current session.
    sent: usize,
    faults: VecDeque<(u64, Entry)>,
    snapshots: VecDeque<(u64, Entry)>,
    /// The next journal-local id for a waiting message.
    next_local: u64,
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
            numbered: VecDeque::new(),
            sent: 0,
            faults: VecDeque::new(),
            snapshots: VecDeque::new(),
            next_local: 1,
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
        // Whether a body is a fault event (true) or a snapshot (false).
        let classify = |body: &[u8]| {
            let m: wire::AgentMessage = prost::Message::decode(body).ok()?;
            match m.body? {
                agent_message::Body::Fault(_) => Some(true),
                agent_message::Body::Snapshot(_) => Some(false),
                _ => None,
            }
        };
        match Journal::open(dir, classify) {
            Ok((journal, recovered)) => {
                if let Some((path, bytes)) = &recovered.quarantined {
                    warn!(
                        quarantine = %path.display(),
                        bytes,
                        "outbox journal had a damaged tail; moved aside, the rest kept"
                    );
                }
                let entry = |fault, stored: Stored| Entry {
                    fault,
                    size: u64::from(stored.len),
                    body: Body::Disk(stored),
                };
                for (seq, (stored, kind)) in recovered.messages {
                    match kind {
                        Some(fault) => p.numbered.push_back((seq, entry(fault, stored))),
                        None => warn!(seq, "outbox record not readable; skipped"),
                    }
                }
                for (local, (stored, kind)) in recovered.queued {
                    match kind {
                        Some(true) => p.faults.push_back((local, entry(true, stored))),
                        Some(false) => p.snapshots.push_back((local, entry(false, stored))),
                        None => warn!(local, "outbox record not readable; skipped"),
                    }
                }
                p.bytes = p.entries().map(|e| e.size).sum();
                p.next_local = recovered.next_local;
                if !p.is_empty() {
                    info!(
                        messages = p.len(),
                        bytes = p.bytes,
                        "outbox restored from disk"
                    );
                }
                p.journal = Some(journal);
            }
            Err(e) => p.journal_failed("open", &e),
        }
        p
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.numbered
            .iter()
            .chain(&self.faults)
            .chain(&self.snapshots)
            .map(|(_, e)| e)
    }

    /// Everything queued, for a rewrite of the journal.
    fn live(&self) -> Vec<Live<'_>> {
        self.numbered
            .iter()
            .map(|(s, e)| Live::Numbered(*s, e.source()))
            .chain(
                self.faults
                    .iter()
                    .chain(&self.snapshots)
                    .map(|(l, e)| Live::Waiting(*l, e.source())),
            )
            .collect()
    }

    /// After a rewrite: each entry's body now sits at `placed` (in
    /// [`Self::live`]'s order).
    fn placed(&mut self, placed: Vec<Stored>) {
        let entries = self
            .numbered
            .iter_mut()
            .chain(&mut self.faults)
            .chain(&mut self.snapshots);
        for ((_, e), stored) in entries.zip(placed) {
            e.body = Body::Disk(stored);
        }
    }

    /// Brings the journal back after it failed (a full disk with room
    /// again): a fresh file holding everything queued now. False, with the
    /// reason in `journal_error`, if the disk still refuses.
    pub fn reopen(&mut self, dir: &std::path::Path) -> bool {
        if self.journal.is_some() {
            return true;
        }
        let opened = Journal::open(dir, |_| None::<()>).and_then(|(mut j, _stale)| {
            let placed = j.rewrite(&self.live())?;
            Ok((j, placed))
        });
        match opened {
            Ok((j, placed)) => {
                info!(messages = self.len(), "outbox on disk usable again");
                self.placed(placed);
                self.journal = Some(j);
                self.journal_error = None;
                true
            }
            Err(e) => {
                self.journal_error = Some(format!("outbox journal reopen: {e}"));
                false
            }
        }
    }

    /// The highest sequence number queued (0 if none).
    pub fn max_seq(&self) -> u64 {
        self.numbered.back().map_or(0, |(s, _)| *s)
    }

    /// The journal failed: bring what is on disk into memory (what cannot
    /// be read back is lost, and said so) and go on without it, within the
    /// memory-only bound.
    fn journal_failed(&mut self, what: &str, e: &std::io::Error) {
        let why = format!("outbox journal {what}: {e}");
        error!(error = %why, "outbox on disk unusable; keeping messages in memory only");
        self.journal_error = Some(why);
        let Some(journal) = self.journal.take() else {
            return;
        };
        let mut lost = 0u64;
        for queue in [&mut self.numbered, &mut self.faults, &mut self.snapshots] {
            queue.retain_mut(|(_, e)| {
                if let Body::Disk(s) = e.body {
                    match journal.read(s) {
                        Ok(b) => e.body = Body::Memory(b),
                        Err(_) => {
                            lost += 1;
                            return false;
                        }
                    }
                }
                true
            });
        }
        if lost > 0 {
            error!(lost, "outbox messages could not be read back from disk");
            self.sent = self.sent.min(self.numbered.len());
        }
        self.bytes = self.entries().map(|e| e.size).sum();
        self.make_room(0);
    }

    /// Whether everything numbered went out and nothing waits: a new
    /// message can be numbered at once without passing anything.
    pub fn idle(&self) -> bool {
        self.sent == self.numbered.len() && self.faults.is_empty() && self.snapshots.is_empty()
    }

    fn max_bytes(&self) -> u64 {
        if self.journal.is_some() {
            self.max_bytes
        } else {
            self.max_bytes.min(MEMORY_ONLY_BYTES)
        }
    }

    /// Makes room for `size` more bytes: when full (count or bytes), the
    /// oldest snapshots go, waiting ones before numbered ones; if only fault
    /// events are queued, the queue grows rather than lose one.
    fn make_room(&mut self, size: u64) {
        while self.len() >= self.max || self.bytes + size > self.max_bytes() {
            if let Some((local, e)) = self.snapshots.pop_front() {
                self.bytes -= e.size;
                self.journal_write(|j| j.drop_queued(local, e.size as usize));
            } else if let Some(i) = self.numbered.iter().position(|(_, e)| !e.fault) {
                let (seq, e) = self.numbered.remove(i).expect("position is in range");
                if i < self.sent {
                    self.sent -= 1;
                }
                self.bytes -= e.size;
                self.journal_write(|j| j.drop_message(seq, e.size as usize));
            } else {
                break;
            }
            self.dropped += 1;
            if self.dropped == 1 || self.dropped.is_multiple_of(100) {
                warn!(
                    dropped = self.dropped,
                    queued = self.len(),
                    bytes = self.bytes,
                    "outbox full: dropping the oldest snapshots (fault events are kept)"
                );
            }
        }
    }

    fn journal_write(&mut self, write: impl FnOnce(&mut Journal) -> std::io::Result<()>) {
        if let Some(j) = &mut self.journal
            && let Err(e) = write(j)
        {
            self.journal_failed("write", &e);
        }
    }

    /// Writes a new message's record (through `write`) or keeps it in
    /// memory if there is no journal.
    fn store(
        &mut self,
        message: &Outgoing,
        write: impl FnOnce(&mut Journal, &[u8]) -> std::io::Result<Stored>,
    ) -> Entry {
        let bytes = prost::Message::encode_to_vec(&wire_message(0, message.clone()));
        let fault = matches!(message, Outgoing::Fault(_));
        let size = bytes.len() as u64;
        self.make_room(size);
        let body = match &mut self.journal {
            Some(j) => match write(j, &bytes) {
                Ok(stored) => Body::Disk(stored),
                Err(e) => {
                    self.journal_failed("write", &e);
                    Body::Memory(bytes)
                }
            },
            None => Body::Memory(bytes),
        };
        self.bytes += size;
        Entry { fault, size, body }
    }

    /// Queues a message to be numbered when its turn to go out comes.
    pub fn push(&mut self, message: Outgoing) {
        let local = self.next_local;
        self.next_local += 1;
        let e = self.store(&message, |j, b| j.queued(local, b));
        if e.fault {
            self.faults.push_back((local, e));
        } else {
            self.snapshots.push_back((local, e));
        }
    }

    /// Queues a message already numbered `seq` (higher than anything queued).
    pub fn push_numbered(&mut self, seq: u64, message: Outgoing) {
        let e = self.store(&message, |j, b| j.message(seq, b));
        self.numbered.push_back((seq, e));
    }

    /// Whether something is left to send on this session.
    pub fn has_next(&self) -> bool {
        self.sent < self.numbered.len() || !self.faults.is_empty() || !self.snapshots.is_empty()
    }

    /// The next message to send on this session: numbered ones not yet
    /// sent, then waiting ones (fault events first), numbered now.
    pub fn next(&mut self, seq: &mut SeqCounter) -> Result<Option<wire::AgentMessage>, SeqError> {
        loop {
            if self.sent == self.numbered.len() {
                let mut numbers = Vec::new();
                while numbers.len() < NUMBER_BATCH {
                    let Some((local, e)) = self
                        .faults
                        .pop_front()
                        .or_else(|| self.snapshots.pop_front())
                    else {
                        break;
                    };
                    let s = seq.assign()?;
                    numbers.push((local, s));
                    self.numbered.push_back((s, e));
                }
                if !numbers.is_empty() {
                    self.journal_write(|j| j.assign(&numbers));
                }
            }
            let Some((s, e)) = self.numbered.get(self.sent) else {
                return Ok(None);
            };
            let s = *s;
            let read = match &e.body {
                Body::Memory(b) => Ok(b.clone()),
                Body::Disk(stored) => match &self.journal {
                    Some(j) => j.read(*stored),
                    None => Err(std::io::ErrorKind::NotFound.into()),
                },
            };
            let decoded = read.map_err(|e| e.to_string()).and_then(|b| {
                <wire::AgentMessage as prost::Message>::decode(b.as_slice())
                    .map_err(|e| e.to_string())
            });
            match decoded {
                Ok(mut m) => {
                    self.sent += 1;
                    m.seq = s;
                    return Ok(Some(m));
                }
                Err(why) => {
                    // Unreadable: it cannot be sent; say so and go on.
                    error!(seq = s, error = %why, "outbox message unreadable; dropped");
                    if let Some((_, e)) = self.numbered.remove(self.sent) {
                        self.bytes -= e.size;
                    }
                    self.journal_write(|j| j.drop_message(s, 0));
                }
            }
        }
    }

    /// A new session: every numbered message goes out again.
    pub fn resend_all(&mut self) {
        self.sent = 0;
    }

    /// Forgets every numbered message at or below `seq`.
    pub fn ack(&mut self, seq: u64) {
        let mut freed = 0u64;
        while self.numbered.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, e)) = self.numbered.pop_front() {
                freed += e.size + 17;
                self.bytes -= e.size;
                self.sent = self.sent.saturating_sub(1);
            }
        }
        if freed == 0 {
            return;
        }
        self.journal_write(|j| j.ack(seq, freed));
        if self.journal.as_ref().is_some_and(Journal::wants_compaction) {
            self.rewrite("compaction");
        }
    }

    /// Rewrites the journal with what is queued now.
    fn rewrite(&mut self, what: &str) {
        let Some(mut j) = self.journal.take() else {
            return;
        };
        let done = j.rewrite(&self.live());
        self.journal = Some(j);
        match done {
            Ok(placed) => self.placed(placed),
            Err(e) => self.journal_failed(what, &e),
        }
    }

    pub fn len(&self) -> usize {
        self.numbered.len() + self.faults.len() + self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numbered messages' sequences, oldest first.
    #[cfg(test)]
    fn numbered_seqs(&self) -> Vec<u64> {
        self.numbered.iter().map(|(s, _)| *s).collect()
    }

    fn renumber(&mut self, seq: &mut SeqCounter) -> Result<(), SeqError> {
        for (s, _) in &mut self.numbered {
            *s = seq.assign()?;
        }
        self.rewrite("rewrite");
        Ok(())
    }
}

/// What the link is doing, for whoever watches it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStatus {
    /// A session is open (the collector welcomed it).
    pub connected: bool,
    /// Sessions the collector welcomed since the link started.
    pub sessions: u64,
    /// Messages the collector has not acknowledged yet.
    pub pending: usize,
    /// Messages taken in since the link started.
    pub queued: u64,
    /// Snapshots dropped for room since the link started.
    pub dropped: u64,
    /// Why the outbox on disk stopped, if it did.
    pub journal_error: Option<String>,
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
    status: watch::Sender<LinkStatus>,
    /// The outbox fault is raised (the journal failed and is not back).
    outbox_fault: bool,
    /// When to try the journal again.
    outbox_retry: std::time::Instant,
    /// Dropped snapshots already told to the collector (in a hello).
    dropped_reported: u64,
}

/// The fault an agent raises about itself when its outbox cannot be
/// written: messages are then held in memory only.
pub const OUTBOX_CHECK: &str = "agent_outbox_unwritable";
/// How often a failed outbox journal is tried again.
const OUTBOX_RETRY: Duration = Duration::from_secs(10);

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
        let mut seq = SeqCounter::open(&config.state_dir)?;
        let pending = Pending::open(
            &config.state_dir,
            config.link.max_pending,
            config.link.outbox_max_bytes,
        );
        // Numbers reserved in memory only (a full disk), or a counter file
        // lost beside a kept journal: the journal's numbers are never
        // handed out again, and a collector that has them is not ahead.
        seq.resume_after(pending.max_seq())?;
        Ok(Link {
            endpoint_id,
            pending,
            config,
            tls,
            seq,
            welcomed_once: false,
            interval,
            policy,
            clock_offset,
            diagnostics: None,
            status: watch::Sender::new(LinkStatus::default()),
            outbox_fault: false,
            outbox_retry: std::time::Instant::now(),
            dropped_reported: 0,
        })
    }

    /// Raises the outbox fault when the journal failed, tries the journal
    /// again every [`OUTBOX_RETRY`], and clears the fault once it is back.
    fn outbox_health(&mut self, in_session: bool) -> Result<(), SeqError> {
        if self.outbox_fault
            && self.pending.journal_error.is_some()
            && std::time::Instant::now() >= self.outbox_retry
        {
            self.outbox_retry = std::time::Instant::now() + OUTBOX_RETRY;
            self.pending.reopen(&self.config.state_dir);
        }
        let failed = self.pending.journal_error.clone();
        if failed.is_some() == self.outbox_fault {
            return Ok(());
        }
        self.outbox_fault = failed.is_some();
        self.outbox_retry = std::time::Instant::now() + OUTBOX_RETRY;
        let held = self.pending.len();
        let (state, evidence) = match failed {
            Some(why) => (
                vitals_proto::domain::FaultState::Raised,
                format!(
                    "{why}; {held} messages held in memory only, lost if the agent stops before the collector has them"
                ),
            ),
            None => (
                vitals_proto::domain::FaultState::Cleared,
                format!("outbox written to disk again ({held} messages queued)"),
            ),
        };
        let event = FaultEvent {
            check_id: OUTBOX_CHECK.into(),
            subject: self.config.state_dir.display().to_string(),
            state,
            severity: vitals_proto::domain::Severity::Warning,
            value: held as f64,
            evidence,
            at_ms: vitals_proto::now_ms(),
        };
        self.enqueue(Outgoing::Fault(event), in_session)
    }

    /// Follows what the link is doing.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.subscribe()
    }

    /// Publishes the queue's state; `connected` changes the session state.
    fn report(&self, connected: Option<bool>) {
        self.report_queued(connected, 0);
    }

    fn report_queued(&self, connected: Option<bool>, queued: u64) {
        let pending = self.pending.len();
        self.status.send_if_modified(|s| {
            let before = s.clone();
            if let Some(c) = connected {
                if c && !s.connected {
                    s.sessions += 1;
                }
                s.connected = c;
            }
            s.pending = pending;
            s.queued += queued;
            s.dropped = self.pending.dropped;
            if s.journal_error != self.pending.journal_error {
                s.journal_error = self.pending.journal_error.clone();
            }
            *s != before
        });
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

    /// Queues a message. In a session with nothing waiting it is numbered
    /// at once (one journal flush); otherwise it waits its turn, fault
    /// events ahead of snapshots.
    fn absorb(&mut self, message: Outgoing, in_session: bool) -> Result<(), SeqError> {
        self.enqueue(message, in_session)?;
        self.outbox_health(in_session)?;
        self.report_queued(None, 1);
        Ok(())
    }

    fn enqueue(&mut self, message: Outgoing, in_session: bool) -> Result<(), SeqError> {
        if in_session && self.pending.idle() {
            let seq = self.seq.assign()?;
            self.pending.push_numbered(seq, message);
        } else {
            self.pending.push(message);
        }
        Ok(())
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
                    self.report(Some(false));
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
                            Some(s) = snapshots.recv() => { self.absorb(s, false)?; }
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
            .connect_timeout(self.config.link.connect_timeout)
            .http2_keep_alive_interval(self.config.link.keepalive_interval)
            .keep_alive_timeout(self.config.link.keepalive_timeout)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| LinkError::Connect(chain(&e)))
    }

    /// Opens a stream: connection, TLS, hello, and the collector's welcome.
    async fn open(
        &self,
    ) -> Result<
        (
            mpsc::Sender<wire::AgentMessage>,
            tonic::Streaming<wire::CollectorMessage>,
            wire::Welcome,
            i64,
        ),
        LinkError,
    > {
        let channel = self.channel().await?;
        let mut client = AgentGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel::<wire::AgentMessage>(64);
        let hello = wire::AgentMessage {
            seq: 0,
            body: Some(agent_message::Body::Hello(wire::Hello {
                endpoint_id: self.endpoint_id.to_string(),
                agent_version: vitals_proto::VERSION.to_owned(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
                last_assigned_seq: self.seq.last(),
                dropped_snapshots: self.pending.dropped - self.dropped_reported,
            })),
        };
        let _ = tx.send(hello).await;
        let hello_sent_ms = vitals_proto::now_ms();
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(|s| LinkError::Refused(status_text(&s)))?
            .into_inner();
        let welcome = match inbound.message().await {
            Err(s) => return Err(LinkError::Refused(status_text(&s))),
            Ok(None) => return Err(LinkError::Closed),
            Ok(Some(wire::CollectorMessage {
                body: Some(collector_message::Body::Welcome(w)),
            })) => w,
            Ok(Some(_)) => {
                return Err(LinkError::Protocol(
                    "first message was not a welcome".into(),
                ));
            }
        };
        Ok((tx, inbound, welcome, hello_sent_ms))
    }

    /// One session. `Ok` means shutdown was asked for; `Err` carries whether
    /// the collector had welcomed us (which resets the backoff).
    async fn session(
        &mut self,
        snapshots: &mut mpsc::Receiver<Outgoing>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), (bool, LinkError)> {
        let early = |e| (false, e);
        // A connect that lands in a dead route would otherwise wait for
        // the kernel's TCP timeouts: the whole opening is bounded.
        let limit = self.config.link.connect_timeout;
        // What this hello tells the collector about dropped snapshots.
        let reporting = self.pending.dropped;
        let (tx, mut inbound, welcome, hello_sent_ms) =
            match tokio::time::timeout(limit, self.open()).await {
                Ok(opened) => opened.map_err(early)?,
                Err(_) => {
                    return Err(early(LinkError::Connect(format!(
                        "no welcome within {limit:?} (link.connect_timeout)"
                    ))));
                }
            };
        self.welcome(&welcome).map_err(|e| early(e.into()))?;
        self.dropped_reported = reporting;
        if welcome.collector_time_ms > 0 {
            // The collector read its clock about halfway through the round trip.
            let midpoint = (hello_sent_ms + vitals_proto::now_ms()) / 2;
            let _ = self
                .clock_offset
                .send(Some(welcome.collector_time_ms - midpoint));
        }
        let late = |e| (true, e);
        self.report(Some(true));
        info!(
            collector = %self.config.collector,
            endpoint = %self.endpoint_id,
            committed = welcome.committed_seq,
            resending = self.pending.len(),
            "connected"
        );

        self.pending.resend_all();
        let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(1000));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                () = crate::stopped(shutdown) => break,
                Some(outgoing) = snapshots.recv() => {
                    self.absorb(outgoing, true).map_err(|e| late(e.into()))?;
                }
                permit = tx.reserve(), if self.pending.has_next() => {
                    let Ok(permit) = permit else {
                        return Err(late(LinkError::Closed));
                    };
                    if let Some(m) = self.pending.next(&mut self.seq).map_err(|e| late(e.into()))? {
                        permit.send(m);
                    }
                    self.outbox_health(true).map_err(|e| late(e.into()))?;
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
                        self.outbox_health(true).map_err(|e| late(e.into()))?;
                        self.report(None);
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
        // Close our side, then give the collector a moment to acknowledge
        // what it is committing.
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
        self.report(Some(false));
        Ok(())
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

    fn snap() -> Outgoing {
        Outgoing::Snapshot(Box::default())
    }

    fn fault(n: u64) -> Outgoing {
        Outgoing::Fault(FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            state: vitals_proto::domain::FaultState::Raised,
            severity: vitals_proto::domain::Severity::Warning,
            value: n as f64,
            evidence: format!("event {n}"),
            at_ms: 0,
        })
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vitals-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Sends everything the queue has for this session: (seq, what).
    fn drain(p: &mut Pending, seq: &mut SeqCounter) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while p.has_next() {
            let m = p.next(seq).unwrap().unwrap();
            let what = match m.body {
                Some(agent_message::Body::Fault(f)) => f.evidence,
                Some(agent_message::Body::Snapshot(_)) => "snapshot".into(),
                other => panic!("{other:?}"),
            };
            out.push((m.seq, what));
        }
        out
    }

    #[test]
    fn pending_is_bounded_and_acks_are_cumulative() {
        let dir = temp("bounded");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Pending::new(3);
        for _ in 1..=5 {
            p.push(snap());
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped, 2);
        let sent = drain(&mut p, &mut seq);
        assert_eq!(sent.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        p.ack(2);
        assert_eq!(p.numbered_seqs(), vec![3]);
        p.ack(100);
        assert!(p.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fault_events_are_never_dropped() {
        let mut p = Pending::new(2);
        p.push(snap());
        p.push(fault(2));
        p.push(fault(3)); // the snapshot makes room
        p.push(fault(4)); // only events left: the queue grows
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn fault_events_pass_the_snapshot_backlog_and_sequences_still_rise() {
        let dir = temp("priority");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Pending::open(&dir, 100, 1 << 20);
        // A session: two go out numbered, the collector acknowledges one.
        p.push_numbered(seq.assign().unwrap(), snap());
        p.push_numbered(seq.assign().unwrap(), fault(1));
        assert_eq!(drain(&mut p, &mut seq).len(), 2);
        p.ack(1);
        // The link goes down; snapshots and a fault wait.
        for _ in 0..3 {
            p.push(snap());
        }
        p.push(fault(2));
        p.push(snap());
        p.push(fault(3));
        // Next session: the unacknowledged message first, then the faults,
        // then the snapshots, all in rising sequence.
        p.resend_all();
        let sent = drain(&mut p, &mut seq);
        let what: Vec<&str> = sent.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "event 1", "event 2", "event 3", "snapshot", "snapshot", "snapshot", "snapshot"
            ]
        );
        assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "{sent:?}");
        // A restart keeps the numbering it was given.
        let seqs = p.numbered_seqs();
        drop(p);
        let mut p = Pending::open(&dir, 100, 1 << 20);
        assert_eq!(p.numbered_seqs(), seqs);
        assert_eq!(drain(&mut p, &mut seq), sent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_outbox_survives_a_restart_and_forgets_what_was_acknowledged() {
        let dir = temp("restart");
        let mut seq = SeqCounter::open(&dir).unwrap();
        {
            let mut p = Pending::open(&dir, 100, 1 << 20);
            for n in 1..=4 {
                p.push_numbered(seq.assign().unwrap(), fault(n));
            }
            p.push_numbered(seq.assign().unwrap(), snap());
            p.push(fault(6)); // never numbered
            p.ack(2);
            assert!(p.journal_error.is_none());
        }
        // A new process: 3, 4 and 5 are still owed, and the waiting fault.
        let mut p = Pending::open(&dir, 100, 1 << 20);
        assert_eq!(p.numbered_seqs(), vec![3, 4, 5]);
        let sent = drain(&mut p, &mut seq);
        let what: Vec<&str> = sent.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(what, vec!["event 3", "event 4", "snapshot", "event 6"]);
        assert!(sent[3].0 > 5);
        p.ack(sent[3].0);
        drop(p);
        assert!(Pending::open(&dir, 100, 1 << 20).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_byte_bound_drops_old_snapshots_never_events() {
        let dir = temp("bytes");
        let big = || {
            let mut s = vitals_proto::domain::Snapshot::default();
            s.host.hostname = "x".repeat(1000);
            Outgoing::Snapshot(Box::new(s))
        };
        let mut p = Pending::open(&dir, 1000, 2000);
        p.push(big());
        p.push(fault(2));
        p.push(big()); // over 2,000 bytes: the first snapshot goes
        p.push(big()); // and the second
        assert_eq!(p.len(), 2);
        assert_eq!(p.dropped, 2);
        drop(p);
        let mut p = Pending::open(&dir, 1000, 2000);
        assert_eq!(p.len(), 2, "the drops are in the journal too");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let what: Vec<String> = drain(&mut p, &mut seq).into_iter().map(|x| x.1).collect();
        assert_eq!(what, vec!["event 2", "snapshot"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bodies_stay_on_disk_and_memory_holds_only_the_index() {
        let dir = temp("index");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Pending::open(&dir, 10_000, 64 << 20);
        for n in 1..=200 {
            if n % 50 == 0 {
                p.push(fault(n));
            } else {
                p.push(snap());
            }
        }
        assert!(p.entries().all(|e| matches!(e.body, Body::Disk(_))));
        // Sent from the file: the faults first, each read back whole.
        let sent = drain(&mut p, &mut seq);
        assert_eq!(sent.len(), 200);
        let what: Vec<&str> = sent[..5].iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "event 50",
                "event 100",
                "event 150",
                "event 200",
                "snapshot"
            ]
        );
        // Acknowledging most of it compacts the file past 1 MiB of dead
        // records; the rest is still readable at its new place.
        let big = || {
            let mut s = vitals_proto::domain::Snapshot::default();
            s.host.hostname = "x".repeat(1000);
            Outgoing::Snapshot(Box::new(s))
        };
        for _ in 0..1500 {
            p.push_numbered(seq.assign().unwrap(), big());
        }
        let last = seq.last();
        p.ack(last - 10);
        assert_eq!(p.len(), 10);
        let file = std::fs::metadata(dir.join("outbox.log")).unwrap().len();
        assert!(file < 20_000, "compacted to {file} bytes");
        p.resend_all();
        let again = drain(&mut p, &mut seq);
        assert_eq!(again.len(), 10);
        assert_eq!(again[0].0, last - 9);
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
        p.push(fault(1));
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
