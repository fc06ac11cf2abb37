//! A scripted agent: raw `AgentGateway` streams driven message by message,
//! for tests that must send exactly what a real agent would not (a false
//! hello, a replay, a malformed event) and read every answer.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vitals_proto::wire::agent_gateway_client::AgentGatewayClient;
use vitals_proto::wire::{self, agent_message, collector_message};

use crate::WAIT;

/// Sends a hello as `claimed` over a channel holding some certificate and
/// returns the first answer (welcome) or the refusal.
pub async fn open_session(
    channel: tonic::transport::Channel,
    claimed: &str,
) -> (
    mpsc::Sender<wire::AgentMessage>,
    Result<tonic::Streaming<wire::CollectorMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(wire::AgentMessage {
        seq: 0,
        body: Some(agent_message::Body::Hello(wire::Hello {
            endpoint_id: claimed.into(),
            agent_version: "test".into(),
            platform: "test/none".into(),
            last_assigned_seq: 0,
            dropped_snapshots: 0,
            machine_id: String::new(),
        })),
    })
    .await
    .expect("queue hello");
    let mut client = AgentGatewayClient::new(channel);
    let result = match client.connect(ReceiverStream::new(rx)).await {
        Ok(r) => {
            let mut inbound = r.into_inner();
            match inbound.message().await {
                Ok(Some(_welcome)) => Ok(inbound),
                Ok(None) => Err(tonic::Status::unknown("closed without welcome")),
                Err(s) => Err(s),
            }
        }
        Err(s) => Err(s),
    };
    (tx, result)
}

pub fn snapshot_msg(seq: u64, cpu: f32) -> wire::AgentMessage {
    let mut s = vitals_proto::domain::Snapshot::default();
    s.host.hostname = "scripted".into();
    s.cpu.usage_percent = cpu;
    s.taken_at_ms = vitals_proto::now_ms();
    wire::AgentMessage {
        seq,
        body: Some(agent_message::Body::Snapshot(s.into())),
    }
}

/// Reads past any acks to the status that ends the stream.
pub async fn closing_status(
    inbound: &mut tonic::Streaming<wire::CollectorMessage>,
) -> tonic::Status {
    loop {
        match tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("answer")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without status"),
            Err(s) => return s,
        }
    }
}

pub async fn next_ack(inbound: &mut tonic::Streaming<wire::CollectorMessage>) -> u64 {
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("ack in time")
            .expect("stream ok")
            .expect("stream open");
        if let Some(collector_message::Body::Ack(a)) = m.body {
            return a.seq;
        }
    }
}

pub fn fault_msg(seq: u64, state: wire::FaultState, value: f64) -> wire::AgentMessage {
    wire::AgentMessage {
        seq,
        body: Some(agent_message::Body::Fault(wire::FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/srv".into(),
            state: state as i32,
            severity: wire::Severity::Critical as i32,
            value,
            evidence: format!("/srv at {value}%"),
            at_ms: vitals_proto::now_ms(),
            via: String::new(),
        })),
    }
}
