//! `vitals-enroll-bench`: what joining and leaving the fleet costs on this
//! machine, with a real collector in this process over real mTLS:
//!
//! 1. `--desks` desks enroll at once (`--concurrency` in flight), each
//!    making its own key and signing request as `vitals-agent enroll`
//!    does; beside it, the baseline: the same number of bare TLS
//!    handshakes each with one gRPC health call, the least any enrollment
//!    round trip costs.
//! 2. The collector's cost of one renewal: signing a request and recording
//!    the certificate, timed over `--renewals`, in CPU time of this
//!    process; and what it makes of a fleet of 10,000 on 7-day
//!    certificates.
//! 3. `--revocations` connected agents revoked one after the other: the
//!    time from the revoke call to the agent seeing its stream end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vitals_collector::store::EnrollToken;
use vitals_proto::identity::{EndpointId, Identity, Role};
use vitals_tests::links::LinkAgent;
use vitals_tests::{Fleet, RunningCollector};

#[derive(Parser)]
#[command(
    name = "vitals-enroll-bench",
    about = "Enrollment, renewal and revocation costs"
)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    desks: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    renewals: usize,
    #[arg(long, default_value_t = 200)]
    revocations: usize,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort_unstable();
    println!(
        "{name}: {} in {:.2} s = {:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let fleet = Fleet::new("enroll-bench");
    let mut config = fleet.collector_config();
    // One source address here stands for a building's many: the per-source
    // limit is raised so it does not stand in the way of the measurement.
    config.certificates.enroll_rate = 100_000.0;
    config.certificates.enroll_burst = 100_000;
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let url = format!("https://{addr}");
    let store = vitals_collector::store::open(&config.storage_url(), 10, Duration::ZERO).await?;
    let ca_pem = std::fs::read(fleet.paths().ca_cert())?;
    let fp = vitals_collector::pki::fingerprint(
        vitals_collector::tls::read_certs(&fleet.paths().ca_cert())?[0].as_ref(),
    );
    let token = vitals_collector::enrollment::Enrollment::create_token(
        store.as_ref(),
        fp,
        EnrollToken {
            max_uses: 0,
            expires_ms: vitals_proto::now_ms() + 3_600_000,
            site: "bench".into(),
            created_ms: vitals_proto::now_ms(),
            created_by: "bench".into(),
            ..Default::default()
        },
    )
    .await?;
    let token = vitals_agent::link::enroll::Token::parse(&token.to_string())?;

    // 1a. The baseline: a handshake and one health call each.
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.desks {
        let (sem, ca_pem) = (sem.clone(), ca_pem.clone());
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.ok()?;
            let t = Instant::now();
            let tls = tonic::transport::ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
            let ch = tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .tls_config(tls)
                .ok()?
                .connect()
                .await
                .ok()?;
            tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()?;
            Some(t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    summary("baseline (handshake + health call)", lat, t0.elapsed());

    // 1b. Enrollment: key, CSR, handshake, token check, signing, commit.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.desks {
        let (sem, ca_pem, token, url) = (sem.clone(), ca_pem.clone(), token.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.ok()?;
            let t = Instant::now();
            let id: EndpointId = format!("desk-{i:05}").parse().ok()?;
            match vitals_agent::link::enroll::enroll(
                &url,
                "localhost",
                &ca_pem,
                &token,
                &id,
                &format!("m-{i}"),
            )
            .await
            {
                Ok(_) => Some(t.elapsed()),
                Err(e) => {
                    eprintln!("enroll {id}: {e}");
                    None
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let enrolled = lat.len();
    summary("enrollment", lat, t0.elapsed());
    anyhow::ensure!(
        enrolled == args.desks,
        "{} of {} enrolled",
        enrolled,
        args.desks
    );

    // 2. One renewal's cost on the collector: sign and record.
    let ca = vitals_collector::pki::Ca::load(&fleet.paths())?;
    let identity = Identity::Endpoint("desk-renew".parse()?);
    let csrs: Vec<String> = (0..args.renewals)
        .map(|_| {
            vitals_agent::link::credentials::NewKey::generate(&identity)
                .map(|k| k.csr_pem)
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_, _>>()?;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for csr in &csrs {
        let signed = ca.sign_csr(csr, &identity, Duration::from_secs(7 * 86_400))?;
        store
            .record_certificate(vitals_collector::store::IssuedCert {
                serial: signed.serial,
                kind: "endpoint".into(),
                subject: "desk-renew".into(),
                issued_ms: vitals_proto::now_ms(),
                not_after_ms: signed.not_after_ms,
                via: "renew".into(),
                ..Default::default()
            })
            .await?;
    }
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let per = cpu / args.renewals as f64;
    // 10,000 desks renewing at two thirds of 7 days.
    let per_hour = 10_000.0 / (7.0 * 24.0 * 2.0 / 3.0);
    println!(
        "renewal on the collector: {} in {:.2} s wall; CPU {:.2} ms per renewal (sign + commit); \
         10,000 desks on 7-day certificates renew {:.0} per hour = {:.3} s of CPU per hour",
        args.renewals,
        wall.as_secs_f64(),
        per * 1e3,
        per_hour,
        per * per_hour
    );

    // 3. Revocation to the stream's end.
    let agents: Vec<LinkAgent> = (0..args.revocations)
        .map(|i| {
            let id = format!("ws-{i:04}");
            LinkAgent::start(&id, fleet.agent_config(&id, addr))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agents.iter().all(|a| a.status.borrow().connected) {
        anyhow::ensure!(Instant::now() < deadline, "agents did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = fleet.specialist_profile("bench-admin", Role::Admin, addr);
    let mut client = vitals_collector::ctl::Client::connect(&admin).await?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for a in &agents {
        let mut status = a.status.clone();
        let t = Instant::now();
        client.revoke_endpoint(&a.id, "bench").await?;
        tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| !s.connected)).await??;
        lat.push(t.elapsed());
    }
    summary("revoke to stream cut", lat, t0.elapsed());
    for a in agents {
        a.kill().await;
    }
    collector.stop().await;
    Ok(())
}
