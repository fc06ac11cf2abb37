//! Joining and leaving the fleet: enrollment with tokens (the key made on
//! the desk, the CA trusted by the token's fingerprint), renewal over the
//! stream and after expiry within the grace window, revocation cutting the
//! stream and refusing every later handshake, cloned images refused. Every
//! refusal is checked in the audit log too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vitals_agent::config::AgentConfig;
use vitals_agent::enrollment::{EnrollOptions, enroll_desk};
use vitals_collector::store::{EnrollToken, Store};
use vitals_proto::identity::Role;
use vitals_proto::wire;
use vitals_proto::wire::enrollment_client::EnrollmentClient;
use vitals_tests::links::{LinkAgent, numbered_event};
use vitals_tests::*;

/// The configuration a fresh desk starts from: the collector on loopback,
/// its files beside the configuration.
fn skeleton(addr: SocketAddr, machine: &str) -> String {
    format!(
        "collector = \"https://{addr}\"\nserver_name = \"localhost\"\nstate_dir = \"state\"\n\
         machine_id = \"{machine}\"\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/agent.pem\"\nkey = \"pki/agent.key\"\n"
    )
}

/// Enrolls a fresh desk folder with a token; returns its config path.
async fn enroll(
    fleet: &Fleet,
    desk: &str,
    addr: SocketAddr,
    token: &str,
    id: &str,
) -> Result<PathBuf, String> {
    let dir = fleet.dir.join("desks").join(desk);
    std::fs::create_dir_all(&dir).expect("desk dir");
    let config = dir.join("agent.toml");
    let opts = EnrollOptions {
        config: config.clone(),
        token: token.to_owned(),
        id: Some(id.to_owned()),
        ..Default::default()
    };
    enroll_desk(&opts, &skeleton(addr, &format!("machine-{desk}")))
        .await
        .map(|_| config)
        .map_err(|e| e.to_string())
}

/// The enrolled desk's configuration with the test's fast link and probes.
fn desk_config(fleet: &Fleet, path: &Path, addr: SocketAddr) -> AgentConfig {
    let enrolled = AgentConfig::load(path).expect("enrolled config loads");
    let mut c = fleet.agent_config("scratch", addr);
    c.tls = enrolled.tls;
    c.state_dir = enrolled.state_dir;
    c.machine_id = enrolled.machine_id;
    c
}

async fn store_of(fleet: &Fleet) -> Arc<dyn Store> {
    let c = fleet.collector_config();
    vitals_collector::store::open(&c.storage_url(), 10, Duration::ZERO)
        .await
        .expect("store")
}

/// The ticket of `check` on `endpoint`, once it is there.
async fn ticket_for(
    admin: &vitals_collector::ctl::Profile,
    endpoint: &str,
    check: &str,
) -> vitals_proto::tickets::Ticket {
    let c = vitals_collector::ctl::Client::connect(admin)
        .await
        .expect("admin");
    eventually(WAIT, &format!("a {check} ticket on {endpoint}"), || {
        let mut c = c.clone();
        async move {
            c.tickets(vitals_collector::ctl::TicketQuery {
                endpoint: endpoint.into(),
                ..Default::default()
            })
            .await
            .ok()?
            .into_iter()
            .find(|t| t.check_id == check)
        }
    })
    .await
}

/// A token for this many desks, an hour long, no limits.
fn uses(n: u32) -> EnrollToken {
    EnrollToken {
        max_uses: n,
        ..Default::default()
    }
}

/// Creates a token as `vitals-collector tokens create` does.
async fn token(store: &dyn Store, fleet: &Fleet, t: EnrollToken) -> String {
    let fp = vitals_collector::pki::fingerprint(
        vitals_collector::tls::read_certs(&fleet.paths().ca_cert()).expect("ca")[0].as_ref(),
    );
    let t = EnrollToken {
        expires_ms: if t.expires_ms == 0 {
            vitals_proto::now_ms() + 3_600_000
        } else {
            t.expires_ms
        },
        created_ms: vitals_proto::now_ms(),
        created_by: "test".into(),
        ..t
    };
    vitals_collector::enrollment::Enrollment::create_token(store, fp, t)
        .await
        .expect("token")
        .to_string()
}

async fn audit(
    admin: &vitals_collector::ctl::Profile,
    kind: &str,
) -> Vec<vitals_proto::diag::AuditEntry> {
    let mut c = vitals_collector::ctl::Client::connect(admin)
        .await
        .expect("admin");
    c.audit("", "", kind, 500).await.expect("audit")
}

fn serial(cert: &Path) -> String {
    let pem = std::fs::read(cert).expect("cert");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    vitals_collector::pki::CertFacts::of(&pem.contents)
        .expect("facts")
        .serial
}

fn not_after_ms(cert: &Path) -> i64 {
    let pem = std::fs::read(cert).expect("cert");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    vitals_collector::pki::CertFacts::of(&pem.contents)
        .expect("facts")
        .not_after_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_enrolls_with_a_token_and_every_refusal_says_why() {
    let fleet = Fleet::new("enroll");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let addr = collector.addr;
    let admin = fleet.specialist_profile("root", Role::Admin, addr);
    let store = store_of(&fleet).await;

    // A single-use token for the north dispatch desks.
    let once = token(
        store.as_ref(),
        &fleet,
        EnrollToken {
            max_uses: 1,
            site: "north".into(),
            tags: vec!["dispatch".into()],
            id_pattern: "disp-*".into(),
            ..Default::default()
        },
    )
    .await;
    let config = enroll(&fleet, "a", addr, &once, "disp-014")
        .await
        .expect("enrolls");
    // The key was made here, readable by the agent's account only.
    let desk = desk_config(&fleet, &config, addr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&desk.tls.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key mode");
    }
    assert!(
        std::fs::read_to_string(&desk.tls.ca)
            .expect("ca")
            .contains("BEGIN CERTIFICATE")
    );
    let agent = RunningAgent::start(desk);
    let d = eventually(WAIT, "the enrolled desk online", || async {
        detail(&admin, "disp-014")
            .await
            .filter(|d| d.summary.online)
    })
    .await;
    assert_eq!(d.summary.enrolled_site, "north");
    assert_eq!(d.summary.enrolled_tags, vec!["dispatch".to_owned()]);
    assert_eq!(d.summary.machine_id, "machine-a");

    // Refused, each with its reason.
    let used = enroll(&fleet, "b", addr, &once, "disp-015")
        .await
        .expect_err("used up");
    assert!(used.contains("no uses left"), "{used}");
    let expired = token(
        store.as_ref(),
        &fleet,
        EnrollToken {
            max_uses: 5,
            expires_ms: vitals_proto::now_ms() - 1000,
            ..Default::default()
        },
    )
    .await;
    let e = enroll(&fleet, "c", addr, &expired, "disp-016")
        .await
        .expect_err("expired");
    assert!(e.contains("expired"), "{e}");
    let many = token(
        store.as_ref(),
        &fleet,
        EnrollToken {
            max_uses: 0,
            id_pattern: "disp-*".into(),
            ..Default::default()
        },
    )
    .await;
    let e = enroll(&fleet, "d", addr, &many, "fin-001")
        .await
        .expect_err("pattern");
    assert!(e.contains("not allowed by this token"), "{e}");
    let e = enroll(&fleet, "e", addr, &many, "disp-014")
        .await
        .expect_err("clash");
    assert!(e.contains("already enrolled"), "{e}");
    let id = many.split('.').next().expect("id").to_owned();
    assert!(
        store
            .revoke_token(&id, vitals_proto::now_ms())
            .await
            .expect("revoke")
    );
    let e = enroll(&fleet, "f", addr, &many, "disp-017")
        .await
        .expect_err("revoked");
    assert!(e.contains("revoked"), "{e}");

    // Tampered requests straight at the service.
    let fresh = token(
        store.as_ref(),
        &fleet,
        EnrollToken {
            max_uses: 0,
            ..Default::default()
        },
    )
    .await;
    let credential = fresh.rsplit_once('.').expect("fingerprint").0.to_owned();
    let mut client = EnrollmentClient::new(fleet.channel(addr, None).await.expect("channel"));
    let csr_for = |uri: &str, alg: &'static rcgen::SignatureAlgorithm| {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().expect("uri")));
        p.serialize_request(&key).expect("csr").pem().expect("pem")
    };
    let ask = |csr_pem: String, token: String, id: &str| wire::EnrollRequest {
        token,
        csr_pem,
        endpoint_id: id.into(),
        hostname: "test".into(),
        machine_id: "m".into(),
    };
    let other_id = csr_for(
        "urn:vitals:endpoint:ws-boss",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let s = client
        .enroll(ask(other_id, credential.clone(), "ws-9"))
        .await
        .expect_err("another ID in the CSR");
    assert!(
        s.message().contains("asks for urn:vitals:endpoint:ws-boss"),
        "{s:?}"
    );
    let p384 = csr_for("urn:vitals:endpoint:ws-9", &rcgen::PKCS_ECDSA_P384_SHA384);
    let s = client
        .enroll(ask(p384, credential.clone(), "ws-9"))
        .await
        .expect_err("P-384 key");
    assert!(s.message().contains("is not accepted"), "{s:?}");
    let good = csr_for("urn:vitals:endpoint:ws-9", &rcgen::PKCS_ECDSA_P256_SHA256);
    let s = client
        .enroll(ask(good.clone(), String::new(), "ws-9"))
        .await
        .expect_err("no token");
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let s = client
        .enroll(ask(good.clone(), "abc.def".into(), "ws-9"))
        .await
        .expect_err("garbage token");
    assert!(s.message().contains("unknown enrollment token"), "{s:?}");
    let s = client
        .enroll(ask("junk".into(), credential.clone(), "ws-9"))
        .await
        .expect_err("junk CSR");
    assert!(
        s.message()
            .contains("not a valid certificate signing request"),
        "{s:?}"
    );
    let s = client
        .enroll(ask("x".repeat(1 << 20), credential.clone(), "ws-9"))
        .await
        .expect_err("1 MB");
    assert!(
        matches!(
            s.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{s:?}"
    );
    // A client without a certificate reaches nothing but enrollment.
    let s = vitals_proto::wire::specialist_client::SpecialistClient::new(
        fleet.channel(addr, None).await.expect("channel"),
    )
    .list_endpoints(wire::ListEndpointsRequest::default())
    .await
    .expect_err("anonymous specialist call");
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");

    // The collector is unaffected: the desk streams on, and a correct
    // request still enrolls.
    let issued = client
        .enroll(ask(good, credential, "ws-9"))
        .await
        .expect("a correct request")
        .into_inner();
    assert_eq!(issued.endpoint_id, "ws-9");
    assert!(
        detail(&admin, "disp-014")
            .await
            .expect("desk")
            .summary
            .online
    );

    // Every attempt is in the audit log with its reason.
    let entries = audit(&admin, "enroll").await;
    let refused: Vec<&str> = entries
        .iter()
        .filter(|e| e.outcome == "refused")
        .map(|e| e.detail.as_str())
        .collect();
    for reason in [
        "no uses left",
        "expired",
        "not allowed by this token",
        "already enrolled",
        "was revoked",
        "asks for",
        "is not accepted",
        "unknown enrollment token",
        "not a valid certificate signing request",
    ] {
        assert!(
            refused.iter().any(|d| d.contains(reason)),
            "no refusal saying {reason:?} in {refused:#?}"
        );
    }
    assert_eq!(entries.iter().filter(|e| e.outcome == "ok").count(), 2);
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_on_the_stream_and_after_expiry_within_the_grace_window() {
    let fleet = Fleet::new("renew");
    let mut config = fleet.collector_config();
    config.certificates.agent_lifetime = Duration::from_secs(3);
    config.certificates.renewal_grace = Duration::from_secs(4);
    let collector = RunningCollector::start(config).await;
    let addr = collector.addr;
    let admin = fleet.specialist_profile("root", Role::Admin, addr);
    let store = store_of(&fleet).await;
    let t = token(store.as_ref(), &fleet, uses(1)).await;
    let path = enroll(&fleet, "r", addr, &t, "ws-renew")
        .await
        .expect("enrolls");
    let desk = desk_config(&fleet, &path, addr);
    let cert = desk.tls.cert.clone();
    let first = serial(&cert);

    // Streaming numbered events while the certificate renews every ~2 s.
    let link = LinkAgent::start("ws-renew", desk.clone());
    let mut serials = vec![first.clone()];
    let mut n = 0u64;
    let started = Instant::now();
    while serials.len() < 4 && started.elapsed() < Duration::from_secs(30) {
        n += 1;
        link.send(numbered_event(n)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = serial(&cert);
        if serials.last() != Some(&now) {
            serials.push(now);
        }
    }
    assert!(
        serials.len() >= 4,
        "renewed only {} times",
        serials.len() - 1
    );
    eventually(WAIT, "every event acknowledged", || async {
        link.drained().then_some(())
    })
    .await;
    link.stop().await;
    let stored = eventually(WAIT, "every event stored", || async {
        let mut c = vitals_collector::ctl::Client::connect(&admin).await.ok()?;
        let f = c.faults("ws-renew", 1000).await.ok()?;
        (f.len() as u64 >= n).then_some(f)
    })
    .await;
    let mut values: Vec<u64> = stored.iter().map(|f| f.event.value as u64).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=n).collect::<Vec<_>>(),
        "each event exactly once"
    );
    let renewals = audit(&admin, "renew").await;
    assert!(renewals.iter().filter(|e| e.outcome == "ok").count() >= 3);

    // Away past expiry, back within the grace window: renewed by proof of
    // the old key, then connected.
    let expiry = not_after_ms(&cert);
    tokio::time::sleep(Duration::from_millis(
        (expiry - vitals_proto::now_ms() + 1000).max(0) as u64,
    ))
    .await;
    let back = RunningAgent::start(desk.clone());
    eventually(
        Duration::from_secs(20),
        "back online after expiry",
        || async {
            detail(&admin, "ws-renew")
                .await
                .filter(|d| d.summary.online)
        },
    )
    .await;
    back.stop().await;
    let ok = audit(&admin, "renew_expired").await;
    assert!(ok.iter().any(|e| e.outcome == "ok"), "{ok:#?}");

    // Away past the grace window too: refused, it must enroll again.
    let expiry = not_after_ms(&cert);
    tokio::time::sleep(Duration::from_millis(
        (expiry + 4000 - vitals_proto::now_ms() + 1000).max(0) as u64,
    ))
    .await;
    let late = RunningAgent::start(desk);
    let refused = eventually(
        Duration::from_secs(20),
        "renewal past grace refused",
        || async {
            audit(&admin, "renew_expired")
                .await
                .into_iter()
                .find(|e| e.outcome == "refused")
        },
    )
    .await;
    assert!(refused.detail.contains("grace window"), "{refused:?}");
    assert!(
        !detail(&admin, "ws-renew")
            .await
            .expect("desk")
            .summary
            .online
    );
    late.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_desk_is_cut_within_a_second_and_refused_from_then_on() {
    let fleet = Fleet::new("revoke");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let addr = collector.addr;
    let admin = fleet.specialist_profile("root", Role::Admin, addr);
    let store = store_of(&fleet).await;
    let t = token(store.as_ref(), &fleet, uses(1)).await;
    let path = enroll(&fleet, "lost", addr, &t, "ws-stolen")
        .await
        .expect("enrolls");
    let desk = desk_config(&fleet, &path, addr);
    let stolen = LinkAgent::start("ws-stolen", desk.clone());
    let other = LinkAgent::start("ws-other", fleet.agent_config("ws-other", addr));
    let mut status = stolen.status.clone();
    eventually(WAIT, "both connected", || async {
        (stolen.status.borrow().connected && other.status.borrow().connected).then_some(())
    })
    .await;

    let mut client = vitals_collector::ctl::Client::connect(&admin)
        .await
        .expect("admin");
    let asked = Instant::now();
    let d = client
        .revoke_endpoint("ws-stolen", "laptop stolen")
        .await
        .expect("revoke");
    tokio::time::timeout(Duration::from_secs(1), status.wait_for(|s| !s.connected))
        .await
        .expect("the stream ends within a second")
        .expect("status");
    let cut = asked.elapsed();
    assert!(cut < Duration::from_secs(1), "cut after {cut:?}");
    assert!(d.summary.revoked_ms > 0 && d.summary.revoke_reason == "laptop stolen");

    // Its reconnects are refused at the handshake, its renewal too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !stolen.status.borrow().connected,
        "a revoked desk reconnected"
    );
    let refused = eventually(WAIT, "handshake refusal audited", || async {
        audit(&admin, "handshake")
            .await
            .into_iter()
            .find(|e| e.endpoint_id == "ws-stolen")
    })
    .await;
    assert!(refused.detail.contains("revoked"), "{refused:?}");
    let creds = vitals_agent::link::credentials::Credentials::load(&desk).expect("creds");
    let mut c = creds.clone();
    let e = vitals_agent::link::enroll::renew_expired(
        &format!("https://{addr}"),
        "localhost",
        &mut c,
        &"ws-stolen".parse().expect("id"),
        "machine-lost",
    )
    .await
    .expect_err("renewal of a revoked certificate");
    assert!(e.to_string().contains("revoked"), "{e}");
    // A revoked desk cannot come back by itself; and the CRL lists it.
    let crl = std::fs::read_to_string(fleet.paths().dir.join("crl.pem")).expect("crl");
    let (_, der) = x509_parser::pem::parse_x509_pem(crl.as_bytes()).expect("pem");
    let (_, crl) = x509_parser::parse_x509_crl(&der.contents).expect("a CRL");
    let want = serial(&desk.tls.cert);
    assert!(
        crl.iter_revoked_certificates()
            .any(|r| vitals_collector::pki::hex(r.raw_serial()).trim_start_matches("00") == want),
        "CRL lacks {want}"
    );
    // Everyone else is unaffected.
    other.send(numbered_event(1)).await;
    eventually(WAIT, "the other desk still served", || async {
        other.drained().then_some(())
    })
    .await;
    let e = vitals_collector::ctl::Client::connect(&admin)
        .await
        .expect("admin")
        .revoke_endpoint("ws-stolen", "again")
        .await
        .expect_err("twice");
    assert!(e.to_string().contains("already revoked"), "{e}");

    // A specialist revoked by name (as `pki revoke-specialist` does, from
    // another process): refused within the refresh, others unaffected.
    let leaver = fleet.specialist_profile("leaver", Role::Specialist, addr);
    // `vitalsctl cert renew` first: a new key made here, the files replaced,
    // the new certificate served.
    let before = serial(leaver.cert.as_ref().expect("cert"));
    vitals_collector::ctl::Client::connect(&leaver)
        .await
        .expect("leaver")
        .renew_own(&leaver)
        .await
        .expect("renew own");
    assert_ne!(serial(leaver.cert.as_ref().expect("cert")), before);
    assert!(
        list(&leaver).await.is_ok(),
        "the renewed certificate is served"
    );
    store
        .revoke_specialist("leaver", "left the city", vitals_proto::now_ms())
        .await
        .expect("revoke specialist");
    eventually(WAIT, "the revoked specialist refused", || async {
        list(&leaver).await.is_err().then_some(())
    })
    .await;
    assert!(list(&admin).await.is_ok(), "another specialist was refused");
    stolen.kill().await;
    other.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_image_is_flagged_ticketed_and_the_newcomer_refused() {
    let fleet = Fleet::new("clone");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let addr = collector.addr;
    let admin = fleet.specialist_profile("root", Role::Admin, addr);
    // Two machines from one image: the same certificate and key.
    let mut original = fleet.agent_config("ws-image", addr);
    original.machine_id = Some("machine-1".into());
    let mut clone = original.clone();
    clone.machine_id = Some("machine-2".into());
    clone.state_dir = fleet.dir.join("agents/ws-image-clone");
    let first = LinkAgent::start("ws-image", original);
    eventually(WAIT, "the original connected", || async {
        first.status.borrow().connected.then_some(())
    })
    .await;
    let second = LinkAgent::start("ws-image", clone);
    let d = eventually(WAIT, "the clone flagged", || async {
        detail(&admin, "ws-image")
            .await
            .filter(|d| d.summary.clone_machine_id == "machine-2")
    })
    .await;
    assert_eq!(d.summary.machine_id, "machine-1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second.status.borrow().connected, "the newcomer was let in");
    assert!(
        first.status.borrow().connected,
        "the original lost its stream"
    );
    let mut c = vitals_collector::ctl::Client::connect(&admin)
        .await
        .expect("admin");
    let ticket = ticket_for(&admin, "ws-image", "endpoint_cloned").await;
    assert!(ticket.title.contains("cloned"), "{ticket:?}");
    let refusals = audit(&admin, "session").await;
    assert!(
        refusals.iter().any(|e| e.endpoint_id == "ws-image"
            && e.params.get("machine").map(String::as_str) == Some("machine-2")),
        "{refusals:#?}"
    );
    // The admin keeps the second machine: from then on it is the one let in.
    c.bind_endpoint("ws-image", "machine-2")
        .await
        .expect("bind");
    first.kill().await;
    eventually(
        Duration::from_secs(20),
        "the bound machine connects",
        || async { second.status.borrow().connected.then_some(()) },
    )
    .await;
    second.stop().await;
    collector.stop().await;
}

/// The serial of the certificate a collector presents now.
async fn served_serial(addr: SocketAddr) -> String {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    #[derive(Debug)]
    struct Any;
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Any))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("handshake");
    let leaf = &tls.get_ref().1.peer_certificates().expect("chain")[0];
    vitals_collector::pki::CertFacts::of(leaf)
        .expect("facts")
        .serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rotation_and_ca_rollover_keep_200_agents_without_a_restart() {
    const AGENTS: usize = 200;
    let fleet = Fleet::new("rollover");
    let mut config = fleet.collector_config();
    config.certificates.agent_lifetime = Duration::from_secs(8);
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let paths = fleet.paths();
    // Desks with short-lived certificates and a CA file of their own.
    let agents: Vec<LinkAgent> = (0..AGENTS)
        .map(|i| {
            let id = format!("ws-{i:03}");
            let mut c = fleet.agent_config(&id, addr);
            let leaf = fleet
                .ca
                .issue_client_valid(
                    &vitals_proto::identity::Identity::Endpoint(id.parse().expect("id")),
                    {
                        let now = time::OffsetDateTime::now_utc();
                        (
                            now - time::Duration::seconds(1),
                            now + time::Duration::seconds(8),
                        )
                    },
                )
                .expect("leaf");
            leaf.write(&c.tls.cert, &c.tls.key).expect("write");
            let ca = fleet.dir.join(format!("desk-ca/{id}.pem"));
            std::fs::create_dir_all(ca.parent().expect("dir")).expect("dir");
            std::fs::copy(&c.tls.ca, &ca).expect("ca copy");
            c.tls.ca = ca;
            LinkAgent::start(&id, c)
        })
        .collect();
    let all_connected = || agents.iter().all(|a| a.status.borrow().connected);
    eventually(Duration::from_secs(60), "200 agents connected", || async {
        all_connected().then_some(())
    })
    .await;
    let sessions = |agents: &[LinkAgent]| -> Vec<u64> {
        agents.iter().map(|a| a.status.borrow().sessions).collect()
    };
    let mut n = 0u64;
    let mut send_round = async |agents: &[LinkAgent]| {
        n += 1;
        for a in agents {
            a.send(numbered_event(n)).await;
        }
    };
    send_round(&agents).await;

    // 1. The server certificate rotates: new handshakes get the new one,
    // the streams stay up.
    let before = sessions(&agents);
    let old = served_serial(addr).await;
    vitals_collector::pki::rotate_server(&paths, &[], 30).expect("rotate");
    let new = serial(&paths.server_cert());
    eventually(WAIT, "the new server certificate served", || async {
        (served_serial(addr).await == new).then_some(())
    })
    .await;
    assert_ne!(old, new);
    send_round(&agents).await;
    assert_eq!(sessions(&agents), before, "a rotation reconnected agents");
    assert!(all_connected());

    // 2. CA rollover, start: every desk learns the next CA through its
    // renewals (certificates of 8 s renew every ~5 s).
    vitals_collector::pki::rollover_start(&paths).expect("start");
    let next = std::fs::read_to_string(paths.ca_next_cert()).expect("next");
    eventually(
        Duration::from_secs(30),
        "every desk trusts the next CA",
        || async {
            (0..AGENTS)
                .all(|i| {
                    std::fs::read_to_string(fleet.dir.join(format!("desk-ca/ws-{i:03}.pem")))
                        .is_ok_and(|t| t.contains(next.trim()))
                })
                .then_some(())
        },
    )
    .await;
    send_round(&agents).await;

    // Finish: the new CA signs the server certificate and every renewal.
    vitals_collector::pki::rollover_finish(&paths).expect("finish");
    let new_ca = vitals_collector::tls::read_certs(&paths.ca_cert()).expect("ca")[0].clone();
    let signed_by_new = |cert: &Path| {
        let pem = std::fs::read(cert).expect("cert");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let (_, c) = x509_parser::parse_x509_certificate(&pem.contents).expect("x509");
        let (_, ca) = x509_parser::parse_x509_certificate(new_ca.as_ref()).expect("ca");
        c.verify_signature(Some(ca.public_key())).is_ok()
    };
    eventually(
        WAIT,
        "the server certificate signed by the new CA",
        || async {
            let s = served_serial(addr).await;
            (s == serial(&paths.server_cert()) && signed_by_new(&paths.server_cert())).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "every desk renewed under the new CA",
        || async {
            (0..AGENTS)
                .all(|i| {
                    let id = vitals_proto::identity::Identity::Endpoint(
                        format!("ws-{i:03}").parse().expect("id"),
                    );
                    signed_by_new(&paths.client(&id).0)
                })
                .then_some(())
        },
    )
    .await;
    // New handshakes work for all: the collector restarts, the agents
    // (never restarted) come back on their own to the new server
    // certificate.
    let port = collector.stop().await;
    let collector = RunningCollector::start_on(config.clone(), port).await;
    send_round(&agents).await;
    eventually(
        Duration::from_secs(60),
        "200 back under the new CA",
        || async { all_connected().then_some(()) },
    )
    .await;

    // Retire the old CA: nothing the desks hold depends on it any more.
    vitals_collector::pki::rollover_retire(&paths).expect("retire");
    let port = collector.stop().await;
    let collector = RunningCollector::start_on(config, port).await;
    send_round(&agents).await;
    eventually(
        Duration::from_secs(60),
        "200 back with the old CA retired",
        || async { (all_connected() && agents.iter().all(|a| a.drained())).then_some(()) },
    )
    .await;

    // None lost, none doubled (asked with a certificate of the new CA:
    // one of the old is refused now).
    let new_ca = vitals_collector::pki::Ca::load(&paths).expect("new CA");
    let leaf = new_ca
        .issue_client(
            &vitals_proto::identity::Identity::specialist("root", Role::Admin).expect("id"),
            1,
        )
        .expect("leaf");
    let (cert, key) = fleet.write_leaf("root-new", &leaf);
    let admin = fleet.profile(collector.addr, cert, key);
    let stale = fleet.specialist_profile("stale", Role::Admin, collector.addr);
    assert!(
        list(&stale).await.is_err(),
        "a certificate of the retired CA was served"
    );
    let mut c = vitals_collector::ctl::Client::connect(&admin)
        .await
        .expect("admin");
    for a in &agents {
        let f = c.faults(&a.id, 100).await.expect("faults");
        let mut v: Vec<u64> = f.iter().map(|f| f.event.value as u64).collect();
        v.sort_unstable();
        assert_eq!(v, (1..=n).collect::<Vec<_>>(), "{}", a.id);
    }
    for a in agents {
        a.stop().await;
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_near_expiry_opens_a_ticket_for_the_admins() {
    let fleet = Fleet::new("expiry");
    vitals_collector::pki::rotate_server(&fleet.paths(), &[], 10).expect("a 10-day certificate");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let admin = fleet.specialist_profile("root", Role::Admin, collector.addr);
    let ticket = ticket_for(&admin, "collector", "collector_certificate_expiring").await;
    assert_eq!(ticket.subject, "collector.pem", "{ticket:?}");
    assert!(ticket.evidence.contains("days left"), "{ticket:?}");
    collector.stop().await;
}
