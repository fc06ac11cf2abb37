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
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use vitals_proto::identity::{EndpointId, Identity};
use vitals_proto::wire::agent_gateway_server::AgentGateway;
use vitals_proto::wire::{self, agent_message, collector_message};
use vitals_proto::{VERSION, now_ms};

use crate::config::AgentSettings;
use crate::ingest::{AckSink, Ingest};
use crate::relay::Relay;
use crate::sessions::{Attached, Command};
use crate::store::{RecordBody, SessionOpen};

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for its in-flight commits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type Outbound = mpsc::Sender<Result<wire::CollectorMessage, Status>>;

pub struct AgentGatewayApi {
    ingest: Ingest,
    settings: AgentSettings,
    /// The running fault policy: sent in each welcome, and to every live
    /// session when it changes.
    policy: crate::policy::PolicyWatch,
    shutdown: Shutdown,
    /// Diagnostics relayed down agent streams.
    relay: std::sync::Arc<Relay>,
}

impl AgentGatewayApi {
    pub fn new(
        ingest: Ingest,
        settings: AgentSettings,
        policy: crate::policy::PolicyWatch,
        shutdown: Shutdown,
        relay: std::sync::Arc<Relay>,
    ) -> Self {
        AgentGatewayApi {
            ingest,
            settings,
            policy,
            shutdown,
            relay,
        }
    }
}

fn message(body: collector_message::Body) -> wire::CollectorMessage {
    wire::CollectorMessage { body: Some(body) }
}

#[tonic::async_trait]
impl AgentGateway for AgentGatewayApi {
    type ConnectStream = ReceiverStream<Result<wire::CollectorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<wire::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let endpoint = match super::identity(&request)? {
            Identity::Endpoint(id) => id.clone(),
            other => {
                return Err(Status::permission_denied(format!(
                    "{other} cannot open an agent session; an agent certificate is required"
                )));
            }
        };
        let mut inbound = request.into_inner();
        let first = timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no hello within {HELLO_TIMEOUT:?}")))??
            .ok_or_else(|| Status::invalid_argument("stream closed before hello"))?;
        let Some(agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        if hello.endpoint_id != endpoint.as_str() {
            warn!(
                endpoint = %endpoint,
                claimed = %hello.endpoint_id,
                "hello claims another endpoint; session refused"
            );
            return Err(Status::permission_denied(format!(
                "hello claims endpoint \"{}\" but the certificate is for \"{endpoint}\"",
                hello.endpoint_id
            )));
        }
        let (attached, committed) = self
            .ingest
            .open_session(SessionOpen {
                endpoint: endpoint.clone(),
                agent_version: hello.agent_version.clone(),
                platform: hello.platform.clone(),
                at_ms: now_ms(),
            })
            .await
            .map_err(|error| {
                warn!(%endpoint, %error, "cannot open session");
                Status::unavailable("collector storage unavailable")
            })?;
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
        let (tx, rx) = mpsc::channel(32);
        let welcome = message(collector_message::Body::Welcome(wire::Welcome {
            committed_seq: committed,
            snapshot_interval_ms: self.settings.snapshot_interval.as_millis() as u64,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
            collector_version: VERSION.to_owned(),
            policy: Some(wire::Policy::from(self.policy.borrow().as_ref())),
            collector_time_ms: vitals_proto::now_ms(),
        }));
        // The channel is empty, so this cannot wait.
        let _ = tx.send(Ok(welcome)).await;
        let session = Session {
            relay: self.relay.clone(),
            ingest: self.ingest.clone(),
            endpoint,
            attached,
            sink: AckSink::new(committed),
            tx,
            idle_timeout: self.settings.idle_timeout,
            shutdown: self.shutdown.clone(),
            policy: self.policy.clone(),
        };
        tokio::spawn(session.run(inbound, committed));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    relay: std::sync::Arc<Relay>,
    ingest: Ingest,
    endpoint: EndpointId,
    /// This session in the registry: replacement, and the diagnostic
    /// requests and cancels to send down.
    attached: Attached,
    sink: std::sync::Arc<AckSink>,
    tx: Outbound,
    idle_timeout: Duration,
    shutdown: Shutdown,
    policy: crate::policy::PolicyWatch,
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
                        Command::Run(r) => collector_message::Body::Diagnostic(r.into()),
                        Command::Cancel(id) => {
                            collector_message::Body::CancelDiagnostic(wire::DiagnosticCancel { id })
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
                        Ok(Some(msg)) => {
                            if let Err(end) = self.handle(msg, &mut highest_seen, acked).await {
                                break end;
                            }
                        }
                        Ok(None) => break End::Graceful,
                        Err(status) => {
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
        self.ingest.close_session(&self.attached, now_ms()).await;
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
                self.durable(
                    msg.seq,
                    RecordBody::Snapshot(Box::new(snapshot.into())),
                    highest_seen,
                    acked,
                )
                .await
            }
            Some(agent_message::Body::Fault(event)) => {
                metrics.message("fault");
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
            None => {
                // A message kind from a newer agent. It cannot be stored, and
                // a later cumulative ack will cover its sequence.
                metrics.message("unknown");
                Ok(())
            }
        }
    }
}
