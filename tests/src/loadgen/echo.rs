//! The bare baseline: a tonic mTLS server speaking the same `AgentGateway`
//! protocol with the same TLS setup as the collector, but acknowledging each
//! snapshot at once without storing anything. Collector ingest is reported
//! as a fraction of this ceiling.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vitals_collector::metrics::Metrics;
use vitals_collector::pki::PkiPaths;
use vitals_collector::tls;
use vitals_proto::wire::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use vitals_proto::wire::{self, agent_message, collector_message};

struct Echo;

fn msg(body: collector_message::Body) -> Result<wire::CollectorMessage, Status> {
    Ok(wire::CollectorMessage { body: Some(body) })
}

#[tonic::async_trait]
impl AgentGateway for Echo {
    type ConnectStream = ReceiverStream<Result<wire::CollectorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<wire::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let reply = match m.body {
                    Some(agent_message::Body::Hello(_)) => {
                        msg(collector_message::Body::Welcome(wire::Welcome {
                            committed_seq: 0,
                            snapshot_interval_ms: 10_000,
                            heartbeat_interval_ms: 30_000,
                            collector_version: "echo".into(),
                            policy: None,
                            collector_time_ms: vitals_proto::now_ms(),
                            trust_bundle_pem: String::new(),
                            ..Default::default()
                        }))
                    }
                    Some(agent_message::Body::Snapshot(_)) => {
                        msg(collector_message::Body::Ack(wire::Ack { seq: m.seq }))
                    }
                    _ => continue,
                };
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the echo baseline until `shutdown` completes.
pub async fn serve(
    data_dir: &std::path::Path,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let p = PkiPaths::new(data_dir);
    let files = tls::ServerFiles {
        ca: p.ca_cert(),
        ca_next: None,
        cert: p.server_cert(),
        key: p.server_key(),
    };
    let config = tls::ServerTls::new(files, Default::default())?.config;
    let (_trigger, stop) = vitals_proto::shutdown::channel();
    // The whole simulated fleet comes from one loopback address.
    let limits = tls::SourceLimits {
        handshakes: usize::MAX,
        connections: usize::MAX,
    };
    let incoming = tls::accept_loop(
        listener,
        config,
        Arc::new(Metrics::new()),
        stop,
        limits,
        Default::default(),
    )
    .verified;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .add_service(AgentGatewayServer::new(Echo))
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await?;
    Ok(())
}
