//! Hostile clients: an agent sending what no desk has, too much or too
//! fast; one address opening handshakes and connections by the hundred;
//! HTTP/2 abuse in raw frames; a specialist flooding diagnostics. Each is
//! refused and counted, and a well-behaved agent and specialist beside it
//! are served throughout.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vitals_proto::identity::{Identity, Role};
use vitals_proto::wire::{self, agent_message, collector_message};
use vitals_tests::scripted::*;
use vitals_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The value of one counter line in a metrics scrape (0 when absent).
fn counter(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A well-behaved desk beside the hostile one: a snapshot sent now is
/// acknowledged within `within`.
struct Bystander {
    tx: tokio::sync::mpsc::Sender<wire::AgentMessage>,
    inbound: tonic::Streaming<wire::CollectorMessage>,
    seq: u64,
}

impl Bystander {
    async fn open(fleet: &Fleet, at: std::net::SocketAddr, id: &str) -> Self {
        let channel = fleet.agent_channel(at, id).await;
        let (tx, inbound) = open_session(channel, id).await;
        Bystander {
            tx,
            inbound: inbound.expect("bystander welcomed"),
            seq: 0,
        }
    }

    async fn served_within(&mut self, within: Duration, what: &str) {
        self.seq += 1;
        let sent = Instant::now();
        self.tx
            .send(snapshot_msg(self.seq, 10.0))
            .await
            .expect("send");
        while next_ack(&mut self.inbound).await < self.seq {}
        assert!(
            sent.elapsed() < within,
            "{what}: a bystander's snapshot took {:?} to be acknowledged",
            sent.elapsed()
        );
    }
}

/// The next answer that is not an ack, or the status ending the stream.
async fn next_answer(
    inbound: &mut tonic::Streaming<wire::CollectorMessage>,
) -> Result<collector_message::Body, tonic::Status> {
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("answer in time")?
            .expect("stream open");
        match m.body {
            Some(collector_message::Body::Ack(_)) | None => continue,
            Some(b) => return Ok(b),
        }
    }
}

fn snapshot_with(seq: u64, spoil: impl FnOnce(&mut wire::Snapshot)) -> wire::AgentMessage {
    let mut m = snapshot_msg(seq, 42.0);
    if let Some(agent_message::Body::Snapshot(s)) = &mut m.body {
        s.disks = vec![wire::DiskInfo {
            name: "sda1".into(),
            mount_point: "/".into(),
            total_bytes: 100 << 30,
            available_bytes: 40 << 30,
            ..Default::default()
        }];
        spoil(s);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sending_absurd_oversize_or_too_many_messages_is_refused() {
    let fleet = Fleet::new("hostile-agent");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let admin = fleet.specialist_profile("ops", Role::Admin, collector.addr);
    let mut good = Bystander::open(&fleet, collector.addr, "ws-good").await;
    good.served_within(Duration::from_secs(2), "before").await;

    // Absurd values: each refused with the field named, nothing stored,
    // the session going on.
    let channel = fleet.agent_channel(collector.addr, "ws-absurd").await;
    let (tx, inbound) = open_session(channel, "ws-absurd").await;
    let mut inbound = inbound.expect("welcomed");
    type Spoil = Box<dyn FnOnce(&mut wire::Snapshot)>;
    let absurd: Vec<(&str, Spoil)> = vec![
        (
            "disks has 10000 entries",
            Box::new(|s| s.disks = vec![s.disks[0].clone(); 10_000]),
        ),
        (
            "host.hostname is 1000000 bytes long",
            Box::new(|s| s.host.as_mut().expect("host").hostname = "h".repeat(1_000_000)),
        ),
        (
            "cpu.usage_percent is NaN",
            Box::new(|s| s.cpu.as_mut().expect("cpu").usage_percent = f32::NAN),
        ),
        (
            "batteries[0].charge_percent is -40",
            Box::new(|s| {
                s.batteries = vec![wire::Battery {
                    name: "BAT0".into(),
                    charge_percent: -40.0,
                    health_percent: 90.0,
                    state: "discharging".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "taken_at_ms is 9999-12-31",
            Box::new(|s| s.taken_at_ms = 253_402_214_400_000),
        ),
    ];
    let n = absurd.len() as u64;
    for (i, (said, spoil)) in absurd.into_iter().enumerate() {
        let seq = i as u64 + 1;
        tx.send(snapshot_with(seq, spoil)).await.expect("send");
        match next_answer(&mut inbound).await {
            Ok(collector_message::Body::Refused(r)) => {
                assert_eq!(r.seq, seq);
                assert!(r.reason.contains(said), "{said}: {}", r.reason);
            }
            other => panic!("{said}: expected a refusal, got {other:?}"),
        }
    }
    // A real snapshot after them is stored, and its ack covers them all.
    tx.send(snapshot_with(n + 1, |_| {})).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, n + 1);
    let d = eventually(WAIT, "the real snapshot stored", || async {
        detail(&admin, "ws-absurd")
            .await
            .filter(|d| d.latest.is_some())
    })
    .await;
    let latest = d.latest.expect("latest");
    assert_eq!(latest.cpu.usage_percent, 42.0, "only the real one is kept");
    assert_eq!(latest.disks.len(), 1);
    let m = collector.scrape().await;
    for (why, times) in [
        ("too_many", 1.0),
        ("text_too_long", 1.0),
        ("bad_number", 2.0),
        ("bad_time", 1.0),
    ] {
        assert_eq!(
            counter(
                &m,
                &format!("vitals_collector_refused_total{{why=\"{why}\"}}")
            ),
            times,
            "{why}\n{m}"
        );
    }
    drop(tx);

    // Oversize: a message past the limit closes the session with the reason.
    let channel = fleet.agent_channel(collector.addr, "ws-huge").await;
    let (tx, inbound) = open_session(channel, "ws-huge").await;
    let mut inbound = inbound.expect("welcomed");
    tx.send(snapshot_with(1, |s| {
        s.probe_errors = (0..200)
            .map(|i| wire::ProbeError {
                probe: format!("p{i}"),
                message: "x".repeat(10_000),
            })
            .collect()
    }))
    .await
    .expect("send");
    let status = closing_status(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("message too large"), "{status:?}");

    // A flood: past the burst the session is closed with the reason.
    let channel = fleet.agent_channel(collector.addr, "ws-flood").await;
    let (tx, inbound) = open_session(channel, "ws-flood").await;
    let mut inbound = inbound.expect("welcomed");
    let flood = tokio::spawn(async move {
        for _ in 0..5_000 {
            let beat = wire::AgentMessage {
                seq: 0,
                body: Some(agent_message::Body::Heartbeat(wire::Heartbeat {
                    sent_at_ms: vitals_proto::now_ms(),
                })),
            };
            if tx.send(beat).await.is_err() {
                return;
            }
        }
    });
    let status = closing_status(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("more than 20 messages a second"),
        "{status:?}"
    );
    flood.abort();
    good.served_within(Duration::from_secs(2), "after").await;
    let m = collector.scrape().await;
    assert_eq!(
        counter(&m, "vitals_collector_refused_total{why=\"oversize\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, "vitals_collector_refused_total{why=\"rate\"}"),
        1.0,
        "{m}"
    );
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_its_share_of_handshakes_and_connections() {
    let fleet = Fleet::new("hostile-source");
    let mut config = fleet.collector_config();
    config.limits.handshakes_per_source = 8;
    config.limits.connections_per_source = 12;
    let collector = RunningCollector::start(config).await;
    let at = collector.addr;
    let mut good = Bystander::open(&fleet, at, "ws-good").await;

    // Slow handshakes: 200 connections that never say a word. Past the 8th
    // each is closed at once instead of holding a slot for the handshake
    // timeout.
    let slow = ip("127.0.0.2");
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tcp_from(slow, at).await.expect("connect"));
    }
    let mut closed_at_once = 0;
    for s in silent.iter_mut().skip(8) {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await
        {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 190,
        "{closed_at_once} of 192 closed at once"
    );
    good.served_within(Duration::from_secs(2), "slow handshakes")
        .await;

    // A connection flood with a valid certificate from another address:
    // 12 connections are held, the rest refused.
    let flood = ip("127.0.0.3");
    let (cert, key) = fleet.issue(&Identity::specialist("flooder", Role::Viewer).expect("id"));
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match fleet
            .channel_from(at, Some(flood), Some((&cert, &key)))
            .await
        {
            Ok(channel) => {
                let mut client =
                    vitals_proto::wire::specialist_client::SpecialistClient::new(channel);
                match client
                    .list_endpoints(wire::ListEndpointsRequest::default())
                    .await
                {
                    Ok(_) => held.push(client),
                    Err(_) => refused += 1,
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 12, "{refused} refused");
    good.served_within(Duration::from_secs(2), "connection flood")
        .await;
    // Another desk from a third address still gets in.
    let (c, k) = fleet.issue(&Identity::Endpoint("ws-late".parse().expect("id")));
    let channel = fleet
        .channel_from(at, Some(ip("127.0.0.4")), Some((&c, &k)))
        .await
        .expect("channel");
    let (_tx, welcome) = open_session(channel, "ws-late").await;
    welcome.expect("a desk from another address is welcomed");
    let m = collector.scrape().await;
    assert!(
        counter(
            &m,
            "vitals_collector_refused_total{why=\"handshakes_per_source\"}"
        ) >= 190.0,
        "{m}"
    );
    assert!(
        counter(
            &m,
            "vitals_collector_refused_total{why=\"connections_per_source\"}"
        ) >= 1.0,
        "{m}"
    );
    drop(silent);
    drop(held);
    collector.stop().await;
}

/// Raw HTTP/2 over TLS: frames written by hand, as an abusive client would.
mod h2raw {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix, the prefix's high bits `high`.
    fn int(out: &mut Vec<u8>, high: u8, n: u32, mut v: usize) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(high | v as u8);
            return;
        }
        out.push(high | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A header block for a gRPC health check, with `extra` headers.
    pub fn request(extra: &[(&str, &str)]) -> Vec<u8> {
        // :method POST, :scheme https (static table 3 and 7).
        let mut b = vec![0x83, 0x87];
        let literal = |b: &mut Vec<u8>, name: &str, value: &str| {
            b.push(0x00);
            int(b, 0, 7, name.len());
            b.extend_from_slice(name.as_bytes());
            int(b, 0, 7, value.len());
            b.extend_from_slice(value.as_bytes());
        };
        literal(&mut b, ":path", "/grpc.health.v1.Health/Check");
        literal(&mut b, ":authority", "localhost");
        literal(&mut b, "content-type", "application/grpc");
        literal(&mut b, "te", "trailers");
        for (n, v) in extra {
            literal(&mut b, n, v);
        }
        b
    }

    /// Reads frames until one of `kinds` on any stream, the connection's
    /// end, or `within`: the kind seen (0xff for the end).
    pub async fn until(
        tls: &mut (impl AsyncReadExt + Unpin),
        kinds: &[u8],
        within: Duration,
    ) -> Option<(u8, u32, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut head = [0u8; 9];
            match tokio::time::timeout_at(deadline, tls.read_exact(&mut head)).await {
                Err(_) => return None,
                Ok(Err(_)) => return Some((0xff, 0, Vec::new())),
                Ok(Ok(_)) => {}
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tokio::time::timeout_at(deadline, tls.read_exact(&mut payload))
                .await
                .map_or(true, |r| r.is_err())
            {
                return Some((0xff, 0, Vec::new()));
            }
            if kinds.contains(&head[3]) {
                return Some((head[3], stream, payload));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_is_cut_off_and_the_others_are_served() {
    use h2raw::*;
    use rustls_pki_types::ServerName;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const CONTINUATION: u8 = 9;
    let fleet = Fleet::new("hostile-h2");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let at = collector.addr;
    let mut good = Bystander::open(&fleet, at, "ws-good").await;
    let connector = fleet.tls_connector(Some(&Identity::Endpoint("ws-h2".parse().expect("id"))));
    let open = || async {
        let tcp = tcp_from(ip("127.0.0.5"), at).await.expect("tcp");
        let mut tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("tls");
        tls.write_all(PREFACE).await.expect("preface");
        tls.write_all(&frame(SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        tls
    };

    // Rapid reset: streams opened and cancelled at once, thousands of them.
    let mut tls = open().await;
    let block = request(&[]);
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, 0x4, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = tls.write_all(&burst).await;
    let end = until(&mut tls, &[GOAWAY], Duration::from_secs(10)).await;
    match end {
        Some((GOAWAY, _, payload)) => {
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            assert_eq!(code, 0xb, "GOAWAY with ENHANCE_YOUR_CALM, not {code:#x}");
        }
        Some((0xff, _, _)) => {}
        other => panic!("rapid reset was not cut off: {other:?}"),
    }
    good.served_within(Duration::from_secs(2), "rapid reset")
        .await;

    // A header list past 16 KiB: refused, nothing served on that stream.
    let mut tls = open().await;
    let big = "v".repeat(64 * 1024);
    let block = request(&[("x-padding", &big)]);
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    let mut out = frame(HEADERS, 0, 1, chunks[0]);
    for (i, c) in chunks.iter().enumerate().skip(1) {
        let last = i == chunks.len() - 1;
        out.extend(frame(CONTINUATION, if last { 0x4 } else { 0 }, 1, c));
    }
    tls.write_all(&out).await.expect("write headers");
    match until(
        &mut tls,
        &[RST_STREAM, GOAWAY, 0 /* DATA */],
        Duration::from_secs(10),
    )
    .await
    {
        Some((RST_STREAM, 1, _)) | Some((GOAWAY, _, _)) | Some((0xff, _, _)) => {}
        other => panic!("an oversized header list was served: {other:?}"),
    }

    // Ping and settings floods, never reading the answers: the others are
    // served meanwhile.
    let mut pings = open().await;
    let mut settings = open().await;
    let ping: Vec<u8> = (0..2_000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let empty_settings: Vec<u8> = (0..2_000)
        .flat_map(|_| frame(SETTINGS, 0, 0, &[]))
        .collect();
    let flood = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let a = tokio::time::timeout(Duration::from_millis(200), pings.write_all(&ping));
            let b = tokio::time::timeout(
                Duration::from_millis(200),
                settings.write_all(&empty_settings),
            );
            let _ = tokio::join!(a, b);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        good.served_within(Duration::from_secs(2), "ping and settings floods")
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    flood.await.expect("flood");
    good.served_within(Duration::from_secs(2), "after").await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_specialist_flooding_diagnostics_is_held_to_its_share() {
    use vitals_collector::ctl::{Client, DiagQuery};
    let fleet = Fleet::new("hostile-diag");
    let mut config = fleet.collector_config();
    config.limits.diagnostics_per_specialist = 8;
    let collector = RunningCollector::start(config).await;
    let admin = fleet.specialist_profile("ops", Role::Admin, collector.addr);
    let agent = RunningAgent::start(fleet.agent_config("ws-diag", collector.addr));
    eventually(WAIT, "agent online", || async {
        list(&admin)
            .await
            .ok()
            .filter(|l| l.iter().any(|e| e.online))
    })
    .await;
    let q = || DiagQuery {
        endpoint: "ws-diag".into(),
        kind: "os".into(),
        ..Default::default()
    };

    // A thousand at once from one specialist: eight run, the rest are
    // refused at once, and not one of those is written to the audit log.
    let flooder =
        Client::connect(&fleet.specialist_profile("flooder", Role::Specialist, collector.addr))
            .await
            .expect("flooder");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let mut c = flooder.clone();
        let q = q();
        calls.spawn(async move {
            match c.run_diagnostic(q).await {
                Ok(mut s) => {
                    while let Ok(Some(_)) = s.message().await {}
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        });
    }
    // Meanwhile another specialist's diagnostic is answered.
    let started = Instant::now();
    let mut other = Client::connect(&admin).await.expect("admin");
    let mut s = other.run_diagnostic(q()).await.expect("another specialist");
    let mut got = false;
    while let Ok(Some(e)) = s.message().await {
        if let Some(wire::diagnostic_event::Body::Result(r)) = e.body {
            assert!(r.ok, "{}", r.error);
            got = true;
        }
    }
    assert!(got, "a result");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "another specialist waited {:?}",
        started.elapsed()
    );
    let mut refused = 0;
    while let Some(r) = calls.join_next().await {
        if let Err(e) = r.expect("call") {
            assert!(e.contains("diagnostics running, the most at once"), "{e}");
            refused += 1;
        }
    }
    assert!(refused >= 900, "only {refused} of 1,000 refused");
    let audit = Client::connect(&admin)
        .await
        .expect("admin")
        .audit("", "flooder", "", 5_000)
        .await
        .expect("audit");
    let by_flooder = audit.len();
    assert!(
        by_flooder <= 1_000 - refused,
        "{by_flooder} audit entries for {} runs",
        1_000 - refused
    );
    let m = collector.scrape().await;
    assert_eq!(
        counter(
            &m,
            "vitals_collector_refused_total{why=\"diagnostics_per_specialist\"}"
        ),
        refused as f64,
        "{m}"
    );
    agent.stop().await;
    collector.stop().await;
}
