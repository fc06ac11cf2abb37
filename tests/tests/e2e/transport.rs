//! Transport and identity: mTLS with TLS 1.3 only, the certificate as the
//! identity, refusals that leave the collector serving others, and the
//! standard health and reflection services.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vitals_proto::identity::{Identity, Role};
use vitals_proto::wire::specialist_client::SpecialistClient;
use vitals_proto::wire::{self};
use vitals_tests::scripted::*;
use vitals_tests::*;

/// Waits until the collector lists any endpoint online.
async fn some_endpoint_online(admin: &vitals_collector::ctl::Profile, what: &str) {
    eventually(WAIT, what, || async {
        list(admin)
            .await
            .ok()?
            .iter()
            .any(|e| e.online)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_the_collector_serving_others() {
    let fleet = Fleet::new("refuse");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let good_agent = RunningAgent::start(fleet.agent_config("ws-good", collector.addr));
    let admin = fleet.specialist_profile("root-admin", Role::Admin, collector.addr);
    some_endpoint_online(&admin, "good agent online").await;

    // 1. No client certificate at all.
    let no_cert = async {
        let ch = fleet.channel(collector.addr, None).await?;
        SpecialistClient::new(ch)
            .list_endpoints(wire::ListEndpointsRequest::default())
            .await
            .map_err(anyhow::Error::from)
    };
    assert!(
        no_cert.await.is_err(),
        "a client without certificate was served"
    );

    // 2. A certificate from a foreign CA.
    let foreign = vitals_collector::pki::Ca::generate(30).expect("foreign CA");
    let leaf = foreign
        .issue_client(
            &Identity::specialist("mallory", Role::Admin).expect("id"),
            30,
        )
        .expect("leaf");
    let (cert, key) = fleet.write_leaf("foreign", &leaf);
    let err = list(&fleet.profile(collector.addr, cert, key)).await;
    assert!(err.is_err(), "foreign-CA certificate was served: {err:?}");

    // 3. An expired certificate from the right CA.
    let leaf = fleet
        .ca
        .issue_client_valid(
            &Identity::specialist("old-timer", Role::Admin).expect("id"),
            expired_window(),
        )
        .expect("leaf");
    let (cert, key) = fleet.write_leaf("expired", &leaf);
    let err = list(&fleet.profile(collector.addr, cert, key)).await;
    assert!(err.is_err(), "expired certificate was served: {err:?}");

    // 4. An agent whose hello claims another endpoint.
    let ch = fleet.agent_channel(collector.addr, "ws-liar").await;
    let (_tx, result) = open_session(ch.clone(), "ws-good").await;
    let status = result.expect_err("impersonation refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("certificate is for \"ws-liar\""),
        "{status:?}"
    );

    // 5. An agent certificate calling the Specialist API.
    let status = SpecialistClient::new(ch)
        .list_endpoints(wire::ListEndpointsRequest::default())
        .await
        .expect_err("agent certificate refused on Specialist");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // 6. A specialist certificate opening an agent session.
    let (cert, key) = fleet.issue(&Identity::specialist("eve", Role::Admin).expect("id"));
    let ch = fleet
        .channel(collector.addr, Some((&cert, &key)))
        .await
        .expect("channel");
    let (_tx, result) = open_session(ch, "eve").await;
    assert_eq!(
        result.expect_err("specialist refused on gateway").code(),
        tonic::Code::PermissionDenied
    );

    // The collector still serves the good specialist and the good agent,
    // whose committed sequence keeps moving.
    let before = detail(&admin, "ws-good")
        .await
        .expect("detail")
        .committed_seq;
    eventually(WAIT, "good agent keeps committing", || async {
        let d = detail(&admin, "ws-good").await?;
        (d.summary.online && d.committed_seq > before).then_some(())
    })
    .await;
    let listed = list(&admin).await.expect("admin lists");
    assert_eq!(
        listed.len(),
        1,
        "refused peers left no endpoint behind: {listed:?}"
    );

    let metrics = collector.scrape().await;
    assert!(
        metrics.contains("vitals_collector_tls_handshake_failures_total{reason=\"tls\"}"),
        "{metrics}"
    );
    good_agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_stall_the_collector() {
    let fleet = Fleet::new("garbage");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let admin = fleet.specialist_profile("ops", Role::Admin, collector.addr);

    // All of it from one address of its own: per-address limits hold it
    // to its share, and the specialist and agent below come from another.
    let garbage: std::net::IpAddr = "127.0.0.9".parse().expect("ip");
    let at = collector.addr;
    // A peer that connects and says nothing, held open throughout.
    let _silent = tcp_from(garbage, at).await.expect("connect");
    // Random bytes.
    let mut noise = tcp_from(garbage, at).await.expect("connect");
    let junk: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
    let _ = noise.write_all(&junk).await;
    // Plain HTTP/1.1 on the TLS port.
    let mut http = tcp_from(garbage, at).await.expect("connect");
    let _ = http
        .write_all(b"GET / HTTP/1.1\r\nHost: collector\r\n\r\n")
        .await;
    // A burst of idle connections, more than a small handshake pool would
    // hold, kept open throughout.
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(tcp_from(garbage, at).await.expect("connect"));
    }

    let started = std::time::Instant::now();
    let listed = list(&admin).await.expect("served despite garbage");
    assert!(listed.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "specialist call took {:?} behind garbage connections",
        started.elapsed()
    );
    // A real agent still gets in.
    let agent = RunningAgent::start(fleet.agent_config("ws-after-noise", collector.addr));
    some_endpoint_online(&admin, "agent online after garbage").await;
    agent.stop().await;
    drop(held);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_health_and_reflection_services_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let fleet = Fleet::new("std");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let (cert, key) = fleet.issue(&Identity::specialist("probe", Role::Viewer).expect("id"));
    let ch = fleet
        .channel(collector.addr, Some((&cert, &key)))
        .await
        .expect("channel");

    let mut health = HealthClient::new(ch.clone());
    for service in ["", "vitals.v1.AgentGateway", "vitals.v1.Specialist"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("stream ok")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "vitals.v1.AgentGateway",
        "vitals.v1.Specialist",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // A third-party client that speaks only v1alpha: Python's
    // grpcio-reflection lists the services and resolves the methods.
    match python_reflection_client() {
        Err(why) => components::skip(
            "standard_health_and_reflection_services_answer (v1alpha)",
            &why,
        ),
        Ok(script) => {
            let out = tokio::process::Command::new("python3")
                .arg(&script)
                .arg(format!("127.0.0.1:{}", collector.addr.port()))
                .arg(fleet.paths().ca_cert())
                .arg(&cert)
                .arg(&key)
                .output()
                .await
                .expect("python3 runs");
            assert!(
                out.status.success(),
                "v1alpha reflection client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let found: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("the client prints JSON");
            for expected in [
                "vitals.v1.AgentGateway",
                "vitals.v1.Specialist",
                "grpc.health.v1.Health",
            ] {
                assert!(
                    found["services"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|n| n == expected)),
                    "{expected} missing from {found}"
                );
            }
            let methods = found["specialist_methods"].as_array().expect("methods");
            for expected in ["ListEndpoints", "RunDiagnostic", "WatchTickets"] {
                assert!(methods.iter().any(|m| m == expected), "{expected}: {found}");
            }
        }
    }
    collector.stop().await;
}

/// The v1alpha reflection client script, if Python has grpcio-reflection
/// (`.ci/run` installs it from PyPI).
fn python_reflection_client() -> Result<std::path::PathBuf, String> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection.v1alpha"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !ok.status.success() {
        return Err(
            "Python grpcio-reflection not installed (pip install grpcio grpcio-reflection)".into(),
        );
    }
    Ok(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/reflect_v1alpha.py"))
}

/// A raw TLS handshake with one protocol version and a valid client
/// certificate.
async fn handshake_with(
    fleet: &Fleet,
    addr: std::net::SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let (cert, key) = fleet.issue(&Identity::specialist("tls-probe", Role::Viewer).expect("id"));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fleet.paths().ca_cert()).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate surfaces on first use.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.flush().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_3_is_accepted() {
    let fleet = Fleet::new("tls13");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    handshake_with(&fleet, collector.addr, &rustls::version::TLS13)
        .await
        .expect("TLS 1.3 with a fleet certificate is accepted");
    let err = handshake_with(&fleet, collector.addr, &rustls::version::TLS12)
        .await
        .expect_err("TLS 1.2 is refused");
    assert!(
        err.to_string().to_lowercase().contains("protocol") || err.to_string().contains("alert"),
        "unexpected TLS 1.2 failure: {err}"
    );
    collector.stop().await;
}
