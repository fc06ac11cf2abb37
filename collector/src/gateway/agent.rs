//! `vitals.v1.AgentGateway.Connect`: one long-lived stream per agent.
//!
//! The session goes through these steps:
//!
//! 1. The peer must hold an agent certificate; its endpoint ID is the
//!    session's identity.
//! 2. The first message must be `Hello` within [`HELLO_TIMEOUT`], naming the
//!    same endpoint ID as the certificate, or the stream is refused.
//! 3. The collector registers the session (replacing any older session of the
//!    same endpoint), answers `Welcome` with the highest committed sequence,
//!    and from then on forwards snapshots to ingest and sends a cumulative
//!    `Ack` whenever ingest has committed more.
//! 4. The session ends when the agent closes it, goes silent past the idle
//!    timeout, is replaced, a commit fails, or the collector shuts down. On a
//!    graceful end it first waits briefly for in-flight commits so their acks
//!    still reach the agent; anything unacknowledged is resent by the agent
//!    on its next session and recognised by its sequence.

use std::pin::pin;
use std::time::Duration;
use vitals_proto::shutdown::Shutdown;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use vitals_proto::identity::{EndpointId, Identity};
use vitals_proto::wire::agent_gateway_server::AgentGateway;
use vitals_proto::wire::{self, agent_message, collector_message};
use vitals_proto::{VERSION, now_ms};

use crate::config::AgentSettings;
use crate::enrollment::Enrollment;
use crate::ingest::{AckSink, Ingest};
use crate::relay::Relay;
use crate::sessions::{Attached, Command};
use crate::store::{Admission, RecordBody, SessionOpen, SnapshotRecord};
use crate::tickets::TicketDesk;

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for its in-flight commits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest agent message decoded; a diagnostic's output, the largest
/// legitimate one, is bounded at half of this.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// The most backlog a hello may declare for the rate limit to let through
/// on top of the burst: an agent's outbox holds 20,000 messages by default.
const MAX_DECLARED_BACKLOG: u64 = 25_000;

/// What goes down an agent's stream. Boxed so the channel's slots (32 of
/// them, allocated with the channel) stay small: one channel per agent.
type Outbound = mpsc::Sender<Result<Box<wire::CollectorMessage>, Status>>;

/// The receiving end of [`Outbound`], as the response stream.
pub struct Outgoing(mpsc::Receiver<Result<Box<wire::CollectorMessage>, Status>>);

impl tokio_stream::Stream for Outgoing {
    type Item = Result<wire::CollectorMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(|r| r.map(|b| *b)))
    }
}

pub struct AgentGatewayApi {
    ingest: Ingest,
    settings: AgentSettings,
    /// The running fault policy: sent in each welcome, and to every live
    /// session when it changes.
    policy: crate::policy::PolicyWatch,
    shutdown: Shutdown,
    /// Diagnostics relayed down agent streams.
    relay: std::sync::Arc<Relay>,
    /// Certificate renewal on the stream, the trust bundle in the welcome.
    enrollment: std::sync::Arc<Enrollment>,
    /// Where a cloned image is reported.
    desk: TicketDesk,
    store: std::sync::Arc<dyn crate::store::Store>,
    limits: crate::config::LimitsConfig,
    refusals: std::sync::Arc<super::refusals::Refusals>,
}

/// What an agent session is wired to besides ingest.
pub struct AgentWiring {
    /// What a resync at the welcome reads (the flag, the tickets raised).
    pub store: std::sync::Arc<dyn crate::store::Store>,
    pub relay: std::sync::Arc<Relay>,
    pub enrollment: std::sync::Arc<Enrollment>,
    pub desk: TicketDesk,
    pub limits: crate::config::LimitsConfig,
    /// Where refusals are counted and said, once a minute per peer.
    pub refusals: std::sync::Arc<super::refusals::Refusals>,
}

impl AgentGatewayApi {
    pub fn new(
        ingest: Ingest,
        settings: AgentSettings,
        policy: crate::policy::PolicyWatch,
        shutdown: Shutdown,
        wiring: AgentWiring,
    ) -> Self {
        AgentGatewayApi {
            ingest,
            settings,
            policy,
            shutdown,
            relay: wiring.relay,
            enrollment: wiring.enrollment,
            desk: wiring.desk,
            store: wiring.store,
            limits: wiring.limits,
            refusals: wiring.refusals,
        }
    }

    /// Whether this agent is asked to tell again what it holds raised, and
    /// what the collector believes raised for it: the faults of its open
    /// tickets not cleared since.
    async fn resync(&self, endpoint: &EndpointId) -> Option<Vec<wire::FaultKey>> {
        match self.store.wants_resync(endpoint.as_str()).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => {
                warn!(%endpoint, %error, "cannot read the resync flag; not asking");
                return None;
            }
        }
        let open = self
            .store
            .tickets(crate::store::TicketFilter {
                open_only: true,
                endpoint: Some(endpoint.as_str().to_owned()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        Some(
            open.into_iter()
                .filter(|t| t.cleared_ms.is_none())
                .map(|t| wire::FaultKey {
                    check_id: t.check_id,
                    subject: t.subject,
                })
                .collect(),
        )
    }

    /// A second machine presented this endpoint's identity: flag it and
    /// open a ticket for the admins (once per new machine).
    async fn cloned(&self, endpoint: &EndpointId, bound: &str, newcomer: &str, newly: bool) {
        warn!(%endpoint, bound, newcomer, "endpoint identity presented by a second machine; refused");
        if !newly {
            return;
        }
        let event = vitals_proto::domain::FaultEvent {
            check_id: "endpoint_cloned".into(),
            subject: String::new(),
            state: vitals_proto::domain::FaultState::Raised,
            severity: vitals_proto::domain::Severity::Critical,
            value: 2.0,
            evidence: format!(
                "the identity of {endpoint} is bound to machine {bound} and was presented by \
                 machine {newcomer} too (a cloned disk image?); the newcomer is refused. Keep \
                 one with `vitalsctl endpoints bind {endpoint} --machine ID`, or revoke it and \
                 enroll each machine on its own"
            ),
            at_ms: now_ms(),
            via: String::new(),
        };
        if let Err(error) = self.desk.raise(endpoint.as_str(), event).await {
            warn!(%endpoint, %error, "cannot open the cloned-image ticket");
        }
    }
}

fn message(body: collector_message::Body) -> Box<wire::CollectorMessage> {
    Box::new(wire::CollectorMessage { body: Some(body) })
}

#[tonic::async_trait]
impl AgentGateway for AgentGatewayApi {
    type ConnectStream = Outgoing;

    async fn connect(
        &self,
        request: Request<Streaming<wire::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let conn = super::conn(&request)?.clone();
        let refuse = |why: &'static str, who: &str, detail: String| {
            self.refusals
                .refused(self.ingest.metrics(), why, who, conn.remote, &detail);
            Status::permission_denied(detail)
        };
        let endpoint = match &conn.identity {
            Identity::Endpoint(id) => id.clone(),
            other => {
                return Err(refuse(
                    "not_an_agent",
                    &other.to_string(),
                    format!(
                        "{other} cannot open an agent session; an agent certificate is required"
                    ),
                ));
            }
        };
        // Revoked between its handshake and now.
        if let Some(why) = self.enrollment.revoked.refusal(&conn.identity, &conn.cert) {
            return Err(refuse(
                "revoked",
                endpoint.as_str(),
                format!("{why}: enroll again"),
            ));
        }
        let mut inbound = request.into_inner();
        let first = timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no hello within {HELLO_TIMEOUT:?}")))?
            .map_err(|status| {
                if let Some(why) = oversize(&status) {
                    self.refusals.refused(
                        self.ingest.metrics(),
                        "oversize",
                        endpoint.as_str(),
                        conn.remote,
                        &why,
                    );
                    return Status::resource_exhausted(why);
                }
                status
            })?
            .ok_or_else(|| Status::invalid_argument("stream closed before hello"))?;
        let Some(agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        if hello.endpoint_id != endpoint.as_str() {
            return Err(refuse(
                "hello_mismatch",
                endpoint.as_str(),
                format!(
                    "hello claims endpoint \"{}\" but the certificate is for \"{endpoint}\"",
                    hello.endpoint_id.chars().take(256).collect::<String>()
                ),
            ));
        }
        let (attached, committed) = self
            .ingest
            .open_session(SessionOpen {
                endpoint: endpoint.clone(),
                agent_version: hello.agent_version.clone(),
                platform: hello.platform.clone(),
                at_ms: now_ms(),
                machine_id: hello.machine_id.chars().take(128).collect(),
            })
            .await
            .map_err(|error| {
                warn!(%endpoint, %error, "cannot open session");
                Status::unavailable("collector storage unavailable")
            })?;
        let (attached, committed) = match (attached, committed) {
            (Some(attached), Admission::Admitted(committed)) => {
                // Reachable from the other replicas, and ending an older
                // session of this desk there.
                crate::relay::remote::hold(&self.relay, &attached.endpoint, attached.generation);
                (attached, committed)
            }
            (_, Admission::Revoked { reason }) => {
                let why = format!("endpoint {endpoint} was revoked ({reason}): enroll again");
                self.enrollment
                    .audit_session_refused(&endpoint, &hello.machine_id, &why)
                    .await;
                return Err(refuse("revoked", endpoint.as_str(), why));
            }
            (
                _,
                Admission::OtherMachine {
                    bound,
                    newly_flagged,
                },
            ) => {
                self.cloned(&endpoint, &bound, &hello.machine_id, newly_flagged)
                    .await;
                let why = format!(
                    "endpoint {endpoint} belongs to another machine; this one is refused until an \
                     admin resolves it (a cloned image must enroll on its own)"
                );
                self.enrollment
                    .audit_session_refused(&endpoint, &hello.machine_id, &why)
                    .await;
                return Err(refuse("cloned", endpoint.as_str(), why));
            }
            (None, Admission::Admitted(_)) => {
                return Err(Status::internal("session admitted but not attached"));
            }
        };
        info!(
            %endpoint,
            agent_version = %hello.agent_version,
            committed,
            agent_last_seq = hello.last_assigned_seq,
            "agent connected"
        );
        if hello.dropped_snapshots > 0 {
            warn!(
                %endpoint,
                dropped = hello.dropped_snapshots,
                "agent dropped snapshots from its full outbox while disconnected; its history has a gap"
            );
            self.ingest
                .metrics()
                .agent_dropped_snapshots
                .inc_by(hello.dropped_snapshots);
        }
        let resync = self.resync(&endpoint).await;
        if let Some(raised) = &resync {
            info!(%endpoint, believed_raised = raised.len(), "asking the agent to resync its faults");
        }
        let (tx, rx) = mpsc::channel(32);
        let welcome = message(collector_message::Body::Welcome(wire::Welcome {
            resync: resync.is_some(),
            raised: resync.clone().unwrap_or_default(),
            committed_seq: committed,
            snapshot_interval_ms: self.settings.snapshot_interval.as_millis() as u64,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
            collector_version: VERSION.to_owned(),
            policy: Some(wire::Policy::from(self.policy.borrow().as_ref())),
            collector_time_ms: vitals_proto::now_ms(),
            trust_bundle_pem: self.enrollment.trust_bundle(),
        }));
        // The channel is empty, so this cannot wait.
        let _ = tx.send(Ok(welcome)).await;
        let l = &self.limits;
        let backlog = hello
            .last_assigned_seq
            .saturating_sub(committed)
            .min(MAX_DECLARED_BACKLOG);
        let session = Session {
            bucket: crate::limits::Bucket::new(
                l.agent_messages_per_sec,
                f64::from(l.agent_message_burst),
                backlog as f64,
            ),
            refusals: self.refusals.clone(),
            remote: conn.remote,
            relay: self.relay.clone(),
            ingest: self.ingest.clone(),
            endpoint,
            attached,
            sink: AckSink::new(committed),
            tx,
            idle_timeout: self.settings.idle_timeout,
            shutdown: self.shutdown.clone(),
            policy: self.policy.clone(),
            enrollment: self.enrollment.clone(),
            cert: conn.cert,
            resync_store: resync.map(|_| self.store.clone()),
        };
        tokio::spawn(session.run(inbound, committed));
        Ok(Response::new(Outgoing(rx)))
    }
}

/// The reason, if a stream error is a message past [`MAX_MESSAGE`].
fn oversize(status: &Status) -> Option<String> {
    (status.code() == tonic::Code::OutOfRange).then(|| {
        format!(
            "message too large ({}); at most {MAX_MESSAGE} bytes",
            status.message()
        )
    })
}

struct Session {
    /// Messages a second this session may send.
    bucket: crate::limits::Bucket,
    refusals: std::sync::Arc<super::refusals::Refusals>,
    remote: std::net::SocketAddr,
    relay: std::sync::Arc<Relay>,
    ingest: Ingest,
    endpoint: EndpointId,
    /// This session in the registry: replacement, and the diagnostic
    /// requests and cancels to send down.
    attached: Attached,
    sink: std::sync::Arc<AckSink>,
    /// Set while a resync asked in the welcome is not yet done: cleared
    /// with the session's first commit (the agent queued its resync on
    /// its disk before sending anything).
    resync_store: Option<std::sync::Arc<dyn crate::store::Store>>,
    tx: Outbound,
    idle_timeout: Duration,
    shutdown: Shutdown,
    policy: crate::policy::PolicyWatch,
    enrollment: std::sync::Arc<Enrollment>,
    /// The certificate this session was opened with.
    cert: crate::pki::CertFacts,
}

/// Why a session loop ended.
enum End {
    /// Agent closed, collector shutting down: drain acks, close cleanly.
    Graceful,
    /// The agent is gone or the stream is broken: nothing more to send.
    Gone,
    /// Tell the agent why, then close.
    Refuse(Status),
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<wire::AgentMessage>, committed: u64) {
        let mut acks = self.sink.subscribe();
        // The welcome carried the current policy; only later changes go out.
        self.policy.mark_unchanged();
        let mut acked = committed;
        let mut highest_seen = committed;
        let mut stop = self.shutdown.clone();
        let shutdown = stop.requested();
        let mut shutdown = pin!(shutdown);
        let idle = sleep(self.idle_timeout);
        let mut idle = pin!(idle);
        let end = loop {
            tokio::select! {
                () = &mut shutdown => break End::Graceful,
                _ = self.attached.replaced.notified() => break End::Refuse(Status::aborted(
                    "a newer session of this endpoint replaced this one",
                )),
                _ = self.sink.failed() => break End::Refuse(Status::unavailable(
                    "collector could not commit; reconnect and resend",
                )),
                Some(c) = self.attached.commands.recv() => {
                    let body = match c {
                        Command::Run(r) => collector_message::Body::Diagnostic((*r).into()),
                        Command::Cancel(id) => {
                            collector_message::Body::CancelDiagnostic(wire::DiagnosticCancel { id })
                        }
                        Command::Close(reason) => {
                            info!(endpoint = %self.endpoint, %reason, "session cut");
                            break End::Refuse(Status::permission_denied(reason));
                        }
                    };
                    if self.tx.send(Ok(message(body))).await.is_err() {
                        break End::Gone;
                    }
                }
                Ok(()) = self.policy.changed() => {
                    let update = wire::Policy::from(self.policy.borrow_and_update().as_ref());
                    let msg = message(collector_message::Body::Policy(update));
                    if self.tx.send(Ok(msg)).await.is_err() {
                        break End::Gone;
                    }
                }
                _ = acks.changed() => {
                    let seq = *acks.borrow_and_update();
                    if seq > acked {
                        acked = seq;
                        if let Some(store) = self.resync_store.take()
                            && let Err(error) = store.resync_done(self.endpoint.as_str()).await
                        {
                            warn!(endpoint = %self.endpoint, %error, "cannot record the resync; it is asked again next time");
                        }
                        if !self.send_ack(seq).await {
                            break End::Gone;
                        }
                    }
                }
                _ = &mut idle => {
                    warn!(endpoint = %self.endpoint, timeout = ?self.idle_timeout, "agent silent; closing session");
                    break End::Refuse(Status::deadline_exceeded("no message within the idle timeout"));
                }
                next = inbound.message() => {
                    idle.as_mut().reset(Instant::now() + self.idle_timeout);
                    match next {
                        Ok(Some(_)) if !self.bucket.take() => {
                            let why = format!(
                                "more than {} messages a second (burst {}); session closed, \
                                 reconnect later",
                                self.bucket.rate(),
                                self.bucket.burst()
                            );
                            self.refused("rate", &why);
                            break End::Refuse(Status::resource_exhausted(why));
                        }
                        Ok(Some(msg)) => {
                            // Boxed: handling one message (a store hand-off,
                            // a certificate renewal) is a larger future than
                            // the loop itself, and would otherwise be part of
                            // every idle session's task.
                            let handled = Box::pin(self.handle(msg, &mut highest_seen, acked));
                            if let Err(end) = handled.await {
                                break end;
                            }
                        }
                        Ok(None) => break End::Graceful,
                        Err(status) => {
                            if let Some(why) = oversize(&status) {
                                self.refused("oversize", &why);
                                break End::Refuse(Status::resource_exhausted(why));
                            }
                            debug!(endpoint = %self.endpoint, %status, "agent stream broke");
                            break End::Gone;
                        }
                    }
                }
            }
        };
        match end {
            End::Graceful => {
                // Let in-flight commits land so the agent hears about them.
                let _ = timeout(DRAIN_TIMEOUT, acks.wait_for(|s| *s >= highest_seen)).await;
                let seq = *acks.borrow();
                if seq > acked {
                    self.send_ack(seq).await;
                }
            }
            End::Gone => {}
            End::Refuse(status) => {
                let _ = self.tx.send(Err(status)).await;
            }
        }
        info!(endpoint = %self.endpoint, "agent disconnected");
        Box::pin(self.ingest.close_session(&self.attached, now_ms())).await;
    }

    fn refused(&self, why: &'static str, detail: &dyn std::fmt::Display) {
        self.refusals.refused(
            self.ingest.metrics(),
            why,
            self.endpoint.as_str(),
            self.remote,
            detail,
        );
    }

    /// A message out of bounds: not stored, its sequence used up, the agent
    /// told why.
    async fn out_of_bounds(
        &mut self,
        seq: u64,
        e: super::bounds::OutOfBounds,
        highest_seen: &mut u64,
    ) -> Result<(), End> {
        self.refused(e.reason, &format_args!("seq {seq}: {e}"));
        *highest_seen = (*highest_seen).max(seq);
        let msg = message(collector_message::Body::Refused(wire::MessageRefused {
            seq,
            reason: e.detail,
        }));
        if self.tx.send(Ok(msg)).await.is_err() {
            return Err(End::Gone);
        }
        Ok(())
    }

    async fn send_ack(&self, seq: u64) -> bool {
        self.tx
            .send(Ok(message(collector_message::Body::Ack(wire::Ack { seq }))))
            .await
            .is_ok()
    }

    /// Forwards a durable message to ingest, or recognises a replay.
    async fn durable(
        &mut self,
        seq: u64,
        body: RecordBody,
        highest_seen: &mut u64,
        acked: u64,
    ) -> Result<(), End> {
        let metrics = self.ingest.metrics();
        if seq == 0 {
            metrics.error("protocol");
            return Err(End::Refuse(Status::invalid_argument(
                "durable message without a sequence number",
            )));
        }
        if seq <= *highest_seen {
            // A replay of something already committed or in flight: it
            // takes no effect. Repeat the ack so the agent can drop it from
            // its outbox.
            metrics.message("duplicate");
            if seq <= acked && !self.send_ack(acked).await {
                return Err(End::Gone);
            }
            return Ok(());
        }
        *highest_seen = seq;
        self.ingest
            .submit(
                self.endpoint.clone(),
                seq,
                now_ms(),
                body,
                self.sink.clone(),
            )
            .await
            .map_err(|_| End::Graceful)
    }

    async fn handle(
        &mut self,
        msg: wire::AgentMessage,
        highest_seen: &mut u64,
        acked: u64,
    ) -> Result<(), End> {
        let metrics = self.ingest.metrics();
        match msg.body {
            Some(agent_message::Body::Snapshot(snapshot)) => {
                metrics.message("snapshot");
                if let Err(e) = super::bounds::snapshot(&snapshot, now_ms())
                    && msg.seq > *highest_seen
                {
                    return self.out_of_bounds(msg.seq, e, highest_seen).await;
                }
                self.durable(
                    msg.seq,
                    RecordBody::Snapshot(Box::new(SnapshotRecord::from_wire(snapshot))),
                    highest_seen,
                    acked,
                )
                .await
            }
            Some(agent_message::Body::Fault(event)) => {
                metrics.message("fault");
                if let Err(e) = super::bounds::fault(&event, now_ms())
                    && msg.seq > *highest_seen
                {
                    return self.out_of_bounds(msg.seq, e, highest_seen).await;
                }
                match event.try_into() {
                    Ok(event) => {
                        self.durable(msg.seq, RecordBody::Fault(event), highest_seen, acked)
                            .await
                    }
                    Err(why) => {
                        metrics.error("protocol");
                        Err(End::Refuse(Status::invalid_argument(why)))
                    }
                }
            }
            Some(agent_message::Body::Heartbeat(_)) => {
                metrics.message("heartbeat");
                Ok(())
            }
            Some(agent_message::Body::Diagnostic(update)) => {
                metrics.message("diagnostic");
                self.relay.deliver(self.endpoint.as_str(), update.into());
                Ok(())
            }
            Some(agent_message::Body::Hello(_)) => {
                metrics.error("protocol");
                Err(End::Refuse(Status::invalid_argument("hello sent twice")))
            }
            Some(agent_message::Body::RenewCertificate(r)) => {
                metrics.message("renew_certificate");
                let identity = Identity::Endpoint(self.endpoint.clone());
                let body = match self
                    .enrollment
                    .renew(&identity, &self.cert, &r.csr_pem)
                    .await
                {
                    Ok(issued) => {
                        info!(endpoint = %self.endpoint, not_after = %vitals_proto::rfc3339_seconds(issued.not_after_ms), "certificate renewed");
                        wire::certificate_renewal::Body::Issued(issued.into())
                    }
                    Err(e) => wire::certificate_renewal::Body::Refused(e.to_string()),
                };
                let msg = message(collector_message::Body::Certificate(
                    wire::CertificateRenewal { body: Some(body) },
                ));
                if self.tx.send(Ok(msg)).await.is_err() {
                    return Err(End::Gone);
                }
                Ok(())
            }
            None => {
                // A message kind from a newer agent. It cannot be stored, and
                // a later cumulative ack will cover its sequence.
                metrics.message("unknown");
                Ok(())
            }
        }
    }
}
