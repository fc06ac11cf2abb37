//! A session: the stream opened (connection, TLS, hello, welcome), the
//! outbox sent and acknowledged over it, diagnostics served on it, and
//! reconnects with backoff when it ends.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use vitals_proto::domain::FaultEvent;
use vitals_proto::identity::EndpointId;
use vitals_proto::policy::Policy;
use vitals_proto::shutdown::Shutdown;
use vitals_proto::wire::agent_gateway_client::AgentGatewayClient;
use vitals_proto::wire::{self, agent_message, collector_message};

use super::credentials::{Credentials, NewKey};
use super::{FromCollector, LinkError, LinkStatus, OUTBOX_CHECK, Outbox, Outgoing, backoff};
use crate::config::AgentConfig;
use crate::seq::{SeqCounter, SeqError};

/// How long a closing session waits for the last acknowledgements.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// An opened stream: where to send, what comes back, and the welcome.
struct Opened {
    tx: mpsc::Sender<wire::AgentMessage>,
    inbound: tonic::Streaming<wire::CollectorMessage>,
    welcome: wire::Welcome,
    /// When the hello went out, for the clock offset.
    hello_sent_ms: i64,
}

/// Why a session ended, and whether the collector had welcomed it (which
/// resets the backoff).
struct SessionEnd {
    welcomed: bool,
    error: LinkError,
}

/// What the agent needs to hold a session.
pub struct Link {
    endpoint_id: EndpointId,
    config: AgentConfig,
    /// CA, certificate and key: replaced by renewals while running.
    credentials: Credentials,
    /// This machine's fingerprint, sent in every hello.
    machine_id: String,
    /// A renewal asked for on the current session: the new key waits here
    /// for its certificate.
    renewing: Option<NewKey>,
    /// When to ask (again) for a new certificate.
    renew_at: std::time::Instant,
    seq: SeqCounter,
    outbox: Outbox,
    welcomed_once: bool,
    /// The collector's snapshot interval, for the sampler.
    interval: watch::Sender<Duration>,
    /// The collector's policy, for the sampler's checks.
    policy: watch::Sender<Policy>,
    /// Collector clock minus ours, measured at each welcome.
    clock_offset: watch::Sender<Option<i64>>,
    /// A welcome's resync, for the sampler.
    resync: watch::Sender<Option<super::Resync>>,
    /// Runs the collector's diagnostic requests; its updates go back up.
    diagnostics: Option<(crate::diag::Runner, mpsc::Receiver<crate::diag::Update>)>,
    status: watch::Sender<LinkStatus>,
    /// The outbox fault is raised (the file failed and is not back).
    outbox_fault: bool,
    /// When to try the outbox file again.
    outbox_retry: std::time::Instant,
    /// Dropped snapshots already told to the collector (in a hello).
    dropped_reported: u64,
}

/// How often a failed outbox file is tried again.
const OUTBOX_RETRY: Duration = Duration::from_secs(10);

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
            resync,
        } = from_collector;
        let credentials = Credentials::load(&config)?;
        let machine_id = super::credentials::machine_id(&config);
        let mut seq = SeqCounter::open(&config.state_dir)?;
        let outbox = Outbox::open(
            &config.state_dir,
            config.link.outbox_max_messages,
            config.link.outbox_max_bytes,
        );
        // Numbers reserved in memory only (a full disk), or a counter file
        // lost beside a kept outbox file: the file's numbers are never
        // handed out again, and a collector that has them is not ahead.
        seq.resume_after(outbox.max_seq())?;
        let mut link = Link {
            endpoint_id,
            outbox,
            config,
            credentials,
            machine_id,
            renewing: None,
            renew_at: std::time::Instant::now(),
            seq,
            welcomed_once: false,
            interval,
            policy,
            clock_offset,
            resync,
            diagnostics: None,
            status: watch::Sender::new(LinkStatus::default()),
            outbox_fault: false,
            outbox_retry: std::time::Instant::now(),
            dropped_reported: 0,
        };
        link.schedule_renewal();
        Ok(link)
    }

    /// Plans the next renewal at two thirds of the certificate's lifetime.
    fn schedule_renewal(&mut self) {
        let now = vitals_proto::now_ms();
        let at = self.credentials.validity().map_or(now, |v| v.renew_at_ms());
        self.renew_at =
            std::time::Instant::now() + Duration::from_millis(at.saturating_sub(now).max(0) as u64);
    }

    /// A renewal was refused or went unanswered: ask again after a tenth
    /// of the lifetime (at least a second, at most an hour).
    fn retry_renewal(&mut self) {
        let lifetime = self
            .credentials
            .validity()
            .map_or(Duration::from_secs(3600), |v| v.lifetime());
        let wait = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self.renew_at = std::time::Instant::now() + wait;
    }

    /// Asks for a certificate for a fresh key on the open session.
    fn renewal_request(&mut self) -> Option<wire::AgentMessage> {
        let identity = vitals_proto::identity::Identity::Endpoint(self.endpoint_id.clone());
        match NewKey::generate(&identity) {
            Ok(new) => {
                let csr_pem = new.csr_pem.clone();
                self.renewing = Some(new);
                self.retry_renewal();
                debug!("asking for a new certificate");
                Some(wire::AgentMessage {
                    seq: 0,
                    body: Some(agent_message::Body::RenewCertificate(
                        wire::RenewCertificate { csr_pem },
                    )),
                })
            }
            Err(error) => {
                warn!(%error, "cannot make a key for renewal");
                self.retry_renewal();
                None
            }
        }
    }

    /// The collector's answer to a renewal.
    fn renewed(&mut self, answer: wire::CertificateRenewal) {
        let Some(new) = self.renewing.take() else {
            return;
        };
        match answer.body {
            Some(wire::certificate_renewal::Body::Issued(issued)) => {
                match self.credentials.replace(&new.key, &issued.certificate_pem) {
                    Ok(()) => {
                        info!(
                            valid_until = %vitals_proto::rfc3339_seconds(issued.not_after_ms),
                            "certificate renewed; the next connection uses it"
                        );
                        if let Err(error) = self.credentials.trust(&issued.trust_bundle_pem) {
                            warn!(%error, "trust bundle not taken");
                        }
                        self.schedule_renewal();
                    }
                    Err(error) => warn!(%error, "renewed certificate not taken"),
                }
            }
            Some(wire::certificate_renewal::Body::Refused(why)) => {
                warn!(reason = %why, "the collector refused to renew the certificate");
            }
            None => {}
        }
    }

    /// Before connecting: a certificate that expired while the desk was
    /// away is renewed with proof of its key, within the grace window.
    async fn renew_if_expired(&mut self) -> Result<(), LinkError> {
        let expired = self
            .credentials
            .validity()
            .is_some_and(|v| v.expired(vitals_proto::now_ms()));
        if !expired {
            return Ok(());
        }
        warn!("the certificate expired; renewing it with proof of the old key");
        let not_after = super::enroll::renew_expired(
            &self.config.collector,
            &self.config.server_name(),
            &mut self.credentials,
            &self.endpoint_id,
            &self.machine_id,
        )
        .await
        .map_err(|e| LinkError::Renewal(e.to_string()))?;
        info!(
            valid_until = %vitals_proto::rfc3339_seconds(not_after),
            "expired certificate renewed"
        );
        self.schedule_renewal();
        Ok(())
    }

    /// Raises the outbox fault when the file failed, tries the file
    /// again every [`OUTBOX_RETRY`], and clears the fault once it is back.
    fn outbox_health(&mut self, in_session: bool) -> Result<(), SeqError> {
        if self.outbox_fault
            && self.outbox.file_error().is_some()
            && std::time::Instant::now() >= self.outbox_retry
        {
            self.outbox_retry = std::time::Instant::now() + OUTBOX_RETRY;
            self.outbox.reopen(&self.config.state_dir);
        }
        let failed = self.outbox.file_error().cloned();
        if failed.is_some() == self.outbox_fault {
            return Ok(());
        }
        self.outbox_fault = failed.is_some();
        self.outbox_retry = std::time::Instant::now() + OUTBOX_RETRY;
        let held = self.outbox.len();
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
            via: String::new(),
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
        let messages = self.outbox.len();
        let error = self.outbox.file_error().map(ToString::to_string);
        self.status.send_if_modified(|s| {
            let before = s.clone();
            if let Some(c) = connected {
                if c && !s.connected {
                    s.sessions += 1;
                }
                s.connected = c;
            }
            s.outbox_messages = messages;
            s.queued += queued;
            s.dropped = self.outbox.dropped;
            if s.outbox_error != error {
                s.outbox_error = error;
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
        runner.start(request.into());
        None
    }

    /// Queues a message. In a session with nothing waiting it is numbered
    /// at once (one flush of the outbox file); otherwise it waits its turn, fault
    /// events ahead of snapshots.
    fn absorb(&mut self, message: Outgoing, in_session: bool) -> Result<(), SeqError> {
        self.enqueue(message, in_session)?;
        self.outbox_health(in_session)?;
        self.report_queued(None, 1);
        Ok(())
    }

    fn enqueue(&mut self, message: Outgoing, in_session: bool) -> Result<(), SeqError> {
        if in_session && self.outbox.idle() {
            let seq = self.seq.assign()?;
            self.outbox.push_numbered(seq, message);
        } else {
            self.outbox.push(message);
        }
        Ok(())
    }

    /// Runs sessions until shutdown is requested, reconnecting with backoff.
    pub async fn run(
        mut self,
        mut snapshots: mpsc::Receiver<Outgoing>,
        mut shutdown: Shutdown,
    ) -> Result<(), LinkError> {
        let mut attempt: u32 = 0;
        loop {
            if shutdown.is_requested() {
                return Ok(());
            }
            match self.session(&mut snapshots, &mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(SessionEnd { welcomed, error }) => {
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
                        outbox = self.outbox.len(),
                        "link down"
                    );
                    // Keep sampling into the queue while waiting.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            () = shutdown.requested() => return Ok(()),
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
            .map_err(LinkError::Connect)?
            .tls_config(self.credentials.tls(&self.config.server_name()))
            .map_err(LinkError::Tls)?
            .connect_timeout(self.config.link.connect_timeout)
            .http2_keep_alive_interval(self.config.link.keepalive_interval)
            .keep_alive_timeout(self.config.link.keepalive_timeout)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(LinkError::Connect)
    }

    /// Opens a stream: connection, TLS, hello, and the collector's welcome.
    async fn open(&mut self) -> Result<Opened, LinkError> {
        self.renew_if_expired().await?;
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
                dropped_snapshots: self.outbox.dropped - self.dropped_reported,
                machine_id: self.machine_id.clone(),
            })),
        };
        let _ = tx.send(hello).await;
        let hello_sent_ms = vitals_proto::now_ms();
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(LinkError::Refused)?
            .into_inner();
        let welcome = match inbound.message().await {
            Err(s) => return Err(LinkError::Refused(s)),
            Ok(None) => return Err(LinkError::Closed),
            Ok(Some(wire::CollectorMessage {
                body: Some(collector_message::Body::Welcome(w)),
            })) => w,
            Ok(Some(_)) => {
                return Err(LinkError::Protocol("first message was not a welcome"));
            }
        };
        Ok(Opened {
            tx,
            inbound,
            welcome,
            hello_sent_ms,
        })
    }

    /// One session. `Ok` means shutdown was asked for.
    async fn session(
        &mut self,
        snapshots: &mut mpsc::Receiver<Outgoing>,
        shutdown: &mut Shutdown,
    ) -> Result<(), SessionEnd> {
        let early = |error| SessionEnd {
            welcomed: false,
            error,
        };
        // A connect that lands in a dead route would otherwise wait for
        // the kernel's TCP timeouts: the whole opening is bounded.
        let limit = self.config.link.connect_timeout;
        // What this hello tells the collector about dropped snapshots.
        let reporting = self.outbox.dropped;
        let Opened {
            tx,
            mut inbound,
            welcome,
            hello_sent_ms,
        } = match tokio::time::timeout(limit, self.open()).await {
            Ok(opened) => opened.map_err(early)?,
            Err(_) => {
                return Err(early(LinkError::NoWelcome { within: limit }));
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
        let late = |error| SessionEnd {
            welcomed: true,
            error,
        };
        self.report(Some(true));
        info!(
            collector = %self.config.collector,
            endpoint = %self.endpoint_id,
            committed = welcome.committed_seq,
            resending = self.outbox.len(),
            "connected"
        );

        self.outbox.resend_all();
        let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(1000));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        // A renewal asked on an earlier session died with it.
        if self.renewing.take().is_some() {
            self.renew_at = std::time::Instant::now();
        }
        loop {
            let renew = tokio::time::sleep_until(self.renew_at.into());
            tokio::select! {
                () = renew, if self.renewing.is_none() => {
                    if let Some(m) = self.renewal_request()
                        && tx.send(m).await.is_err()
                    {
                        return Err(late(LinkError::Closed));
                    }
                }
                () = tokio::time::sleep_until(self.renew_at.into()), if self.renewing.is_some() => {
                    // No answer in time: forget it and ask again.
                    self.renewing = None;
                }
                () = shutdown.requested() => break,
                Some(outgoing) = snapshots.recv() => {
                    self.absorb(outgoing, true).map_err(|e| late(e.into()))?;
                }
                permit = tx.reserve(), if self.outbox.has_next() => {
                    let Ok(permit) = permit else {
                        return Err(late(LinkError::Closed));
                    };
                    if let Some(m) = self.outbox.next(&mut self.seq).map_err(|e| late(e.into()))? {
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
                        self.outbox.ack(a.seq);
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
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Certificate(c)) })) => {
                        self.renewed(c);
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Policy(p)) })) => {
                        let policy = Policy::from(p);
                        info!(version = %policy.version, checks = policy.checks.len(), "policy updated");
                        self.policy.send_replace(policy);
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Refused(r)) })) => {
                        // A bug in this agent or a broken probe, not the
                        // link's: said, and the stream goes on.
                        warn!(seq = r.seq, reason = %r.reason, "the collector refused a message as out of bounds");
                    }
                    Ok(Some(_)) => {} // Newer collector message kinds are ignored.
                    Ok(None) => return Err(late(LinkError::Closed)),
                    Err(s) => return Err(late(LinkError::Refused(s))),
                }
            }
        }
        // Stopping cleanly (a service stop, a shutdown): what the sampler
        // had already handed over joins the outbox, and what the outbox
        // holds goes out before the stream closes, within the close time.
        while let Ok(outgoing) = snapshots.try_recv() {
            self.absorb(outgoing, true).map_err(|e| late(e.into()))?;
        }
        let flushed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while self.outbox.has_next() {
                let Ok(permit) = tx.reserve().await else {
                    return Ok(());
                };
                if let Some(m) = self.outbox.next(&mut self.seq)? {
                    permit.send(m);
                }
            }
            Ok::<(), SeqError>(())
        })
        .await;
        if let Ok(Err(e)) = flushed {
            return Err(late(e.into()));
        }
        // Close our side, then give the collector a moment to acknowledge
        // what it is committing.
        drop(tx);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(collector_message::Body::Ack(a)) = m.body {
                    self.outbox.ack(a.seq);
                }
            }
        })
        .await;
        info!(unacknowledged = self.outbox.len(), "link closed");
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
            // in the outbox can be committed yet, so number it past the collector.
            warn!(
                committed = w.committed_seq,
                local = self.seq.first(),
                "sequence counter behind the collector; renumbering the outbox"
            );
            self.seq.skip_past(w.committed_seq)?;
            self.outbox.renumber(&mut self.seq)?;
        } else {
            self.outbox.ack(w.committed_seq);
        }
        if w.resync {
            let raised: Vec<(String, String)> = w
                .raised
                .iter()
                .map(|k| (k.check_id.clone(), k.subject.clone()))
                .collect();
            info!(
                believed_raised = raised.len(),
                "the collector asks for a resync; sending the faults held raised again"
            );
            self.resync.send_replace(Some(std::sync::Arc::new(raised)));
        }
        match self.credentials.trust(&w.trust_bundle_pem) {
            Ok(true) => info!("the collector's trust bundle replaced the CA file"),
            Ok(false) => {}
            Err(error) => warn!(%error, "trust bundle not taken"),
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
    use vitals_proto::diag::{DiagnosticUpdate, UpdateBody};
    let (id, body) = match update {
        Update::Progress { id, text } => (id, UpdateBody::Progress(text)),
        Update::Done { id, result } => (id, UpdateBody::Result(result)),
    };
    let update = DiagnosticUpdate {
        id,
        body: Some(body),
    };
    wire::AgentMessage {
        seq: 0,
        body: Some(agent_message::Body::Diagnostic(update.into())),
    }
}
