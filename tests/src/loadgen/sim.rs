//! One simulated agent: its own certificate, its own TLS connection and
//! stream, real `vitals.v1` messages, latency measured from send to the
//! cumulative ack that covers it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use vitals_proto::wire::agent_gateway_client::AgentGatewayClient;
use vitals_proto::wire::{self, agent_message, collector_message};

use super::Stats;

/// A snapshot of this machine, as a real agent would send it.
pub fn realistic_snapshot() -> wire::Snapshot {
    vitals_agent::probes::system_snapshot(Duration::from_millis(50)).into()
}

pub struct SimAgent {
    pub id: String,
    pub identity: TlsIdentity,
    pub ca: Vec<u8>,
    pub target: SocketAddr,
    pub interval: Duration,
    pub window: usize,
    pub stats: Arc<Stats>,
    pub storm: watch::Receiver<u64>,
    pub deadline: Instant,
    pub snapshot: Arc<wire::Snapshot>,
    /// Time between fault events from this agent, if it sends any.
    pub fault_every: Option<Duration>,
}

enum End {
    Deadline,
    Storm,
}

/// One agent's ack latencies in microseconds: all of them, and those
/// measured once the run had settled after the ramp.
#[derive(Default)]
pub struct Latencies {
    pub all: Vec<u32>,
    pub settled: Vec<u32>,
}

impl Latencies {
    fn push(&mut self, us: u32, settled: bool) {
        self.all.push(us);
        if settled {
            self.settled.push(us);
        }
    }
}

impl SimAgent {
    pub async fn run(mut self) {
        let mut seq = 0u64;
        let mut latencies = Latencies::default();
        while Instant::now() < self.deadline {
            match self.session(&mut seq, &mut latencies).await {
                Ok(End::Deadline) => break,
                Ok(End::Storm) => continue,
                Err(kind) => {
                    self.stats.error(kind);
                    let pause = Duration::from_millis(500 + fastrand::u64(0..1000));
                    tokio::time::sleep(pause).await;
                }
            }
        }
        self.stats.add_latencies(latencies);
    }

    fn message(&self, seq: u64) -> wire::AgentMessage {
        let mut s = (*self.snapshot).clone();
        s.taken_at_ms = vitals_proto::now_ms();
        if let Some(cpu) = &mut s.cpu {
            cpu.usage_percent = fastrand::f32() * 100.0;
        }
        wire::AgentMessage {
            seq,
            body: Some(agent_message::Body::Snapshot(s)),
        }
    }

    /// A fault event that alternates between raised and cleared.
    fn fault(&self, seq: u64) -> wire::AgentMessage {
        let raised = seq % 2 == 1;
        wire::AgentMessage {
            seq,
            body: Some(agent_message::Body::Fault(wire::FaultEvent {
                check_id: "disk_nearly_full".into(),
                subject: "/".into(),
                state: if raised {
                    wire::FaultState::Raised
                } else {
                    wire::FaultState::Cleared
                } as i32,
                severity: wire::Severity::Warning as i32,
                value: if raised { 97.0 } else { 80.0 },
                evidence: format!("simulated by the load generator on {} (seq {seq})", self.id),
                at_ms: vitals_proto::now_ms(),
                via: String::new(),
            })),
        }
    }

    async fn session(
        &mut self,
        seq: &mut u64,
        latencies: &mut Latencies,
    ) -> Result<End, &'static str> {
        let tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(self.identity.clone());
        let channel = Endpoint::from_shared(format!("https://{}", self.target))
            .map_err(|_| "endpoint")?
            .tls_config(tls)
            .map_err(|_| "tls_config")?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|_| "connect")?;
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.window + 4);
        let hello = wire::AgentMessage {
            seq: 0,
            body: Some(agent_message::Body::Hello(wire::Hello {
                endpoint_id: self.id.clone(),
                agent_version: vitals_proto::VERSION.into(),
                platform: "loadgen/sim".into(),
                last_assigned_seq: *seq,
                dropped_snapshots: 0,
                machine_id: String::new(),
            })),
        };
        tx.send(hello).await.map_err(|_| "send")?;
        let mut inbound = AgentGatewayClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(|_| "refused")?
            .into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
            Ok(Ok(Some(wire::CollectorMessage {
                body: Some(collector_message::Body::Welcome(w)),
            }))) => w,
            Ok(Err(_)) => return Err("refused"),
            _ => return Err("no_welcome"),
        };
        *seq = (*seq).max(welcome.committed_seq);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.connect();
        let result = self
            .stream(seq, latencies, &tx, &mut inbound, &welcome)
            .await;
        self.stats.disconnect();
        result
    }

    async fn stream(
        &mut self,
        seq: &mut u64,
        latencies: &mut Latencies,
        tx: &mpsc::Sender<wire::AgentMessage>,
        inbound: &mut tonic::Streaming<wire::CollectorMessage>,
        welcome: &wire::Welcome,
    ) -> Result<End, &'static str> {
        let storm_gen = *self.storm.borrow_and_update();
        // (sequence, sent at, is a fault event)
        let mut in_flight: VecDeque<(u64, Instant, bool)> = VecDeque::new();
        let fault_period = self.fault_every.unwrap_or(Duration::from_secs(3600));
        let mut faults = tokio::time::interval_at(
            tokio::time::Instant::now()
                + Duration::from_millis(fastrand::u64(0..fault_period.as_millis().max(1) as u64)),
            fault_period,
        );
        let paced = !self.interval.is_zero();
        // Spread the fleet's sends over the interval.
        let first = if paced {
            tokio::time::Instant::now()
                + Duration::from_millis(fastrand::u64(0..self.interval.as_millis().max(1) as u64))
        } else {
            tokio::time::Instant::now()
        };
        let mut ticker =
            tokio::time::interval_at(first, self.interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(1000));
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
        let deadline = tokio::time::Instant::from_std(self.deadline);
        loop {
            if !paced {
                while in_flight.len() < self.window {
                    *seq += 1;
                    tx.send(self.message(*seq)).await.map_err(|_| "send")?;
                    in_flight.push_back((*seq, Instant::now(), false));
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(End::Deadline),
                _ = self.storm.changed() => {
                    if *self.storm.borrow_and_update() != storm_gen {
                        return Ok(End::Storm);
                    }
                }
                _ = ticker.tick(), if paced => {
                    if in_flight.len() < self.window {
                        *seq += 1;
                        tx.send(self.message(*seq)).await.map_err(|_| "send")?;
                        in_flight.push_back((*seq, Instant::now(), false));
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.error("window_full");
                    }
                }
                _ = faults.tick(), if self.fault_every.is_some() => {
                    *seq += 1;
                    let fault = self.fault(*seq);
                    if let Some(agent_message::Body::Fault(f)) = &fault.body
                        && f.state == wire::FaultState::Raised as i32
                    {
                        self.stats.raising(&f.evidence);
                    }
                    tx.send(fault).await.map_err(|_| "send")?;
                    in_flight.push_back((*seq, Instant::now(), true));
                    self.stats.faults_sent.fetch_add(1, Ordering::Relaxed);
                }
                _ = beat.tick() => {
                    let hb = wire::AgentMessage {
                        seq: 0,
                        body: Some(agent_message::Body::Heartbeat(wire::Heartbeat {
                            sent_at_ms: vitals_proto::now_ms(),
                        })),
                    };
                    tx.send(hb).await.map_err(|_| "send")?;
                }
                m = inbound.message() => match m {
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Ack(a)) })) => {
                        let now = Instant::now();
                        let mut n = 0;
                        while in_flight.front().is_some_and(|(s, _, _)| *s <= a.seq) {
                            if let Some((_, sent, is_fault)) = in_flight.pop_front() {
                                latencies.push(
                                    (now - sent).as_micros().min(u32::MAX as u128) as u32,
                                    self.stats.settled.load(Ordering::Relaxed),
                                );
                                if is_fault {
                                    self.stats.faults_acked.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    n += 1;
                                }
                            }
                        }
                        self.stats.acked.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Some(wire::CollectorMessage { body: Some(collector_message::Body::Diagnostic(r)) })) => {
                        // A simulated agent answers at once: what is measured
                        // is the relay, not a diagnostic's own run.
                        let reply = wire::AgentMessage {
                            seq: 0,
                            body: Some(agent_message::Body::Diagnostic(wire::DiagnosticUpdate {
                                id: r.id,
                                body: Some(wire::diagnostic_update::Body::Result(wire::DiagnosticResult {
                                    ok: true,
                                    text: format!("{} on {}: simulated", r.kind, self.id),
                                    run_ms: 0,
                                    ..Default::default()
                                })),
                            })),
                        };
                        tx.send(reply).await.map_err(|_| "send")?;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("stream_closed"),
                    Err(_) => return Err("stream_error"),
                }
            }
        }
    }
}
