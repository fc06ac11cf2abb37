//! Writes the starting inputs of every fuzz target into
//! `fuzz/corpus/<target>/seed-*`: real messages of each kind encoded as
//! the wire carries them, the shipped configuration files and policy, the
//! probes' recorded fixtures, a real certificate and tokens. The fuzzer
//! grows the corpora from these.
//!
//! `cargo run -p vitals-fuzz-targets --bin vitals-fuzz-seed`

use std::path::{Path, PathBuf};

use prost::Message;
use vitals_proto::wire;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("fuzz/corpus");
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
    };
    let file = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // Agent messages.
    let mut snapshot = vitals_proto::domain::Snapshot::default();
    snapshot.host.hostname = "ws-0412".into();
    snapshot.cpu.usage_percent = 12.5;
    snapshot.disks.push(vitals_proto::domain::DiskInfo {
        mount_point: "/".into(),
        total_bytes: 100,
        available_bytes: 3,
        ..Default::default()
    });
    let msgs = [
        (
            "hello",
            wire::agent_message::Body::Hello(wire::Hello {
                endpoint_id: "ws-0412".into(),
                agent_version: "0.1.0".into(),
                ..Default::default()
            }),
        ),
        (
            "snapshot",
            wire::agent_message::Body::Snapshot(wire::Snapshot::from(snapshot)),
        ),
        (
            "fault",
            wire::agent_message::Body::Fault(wire::FaultEvent::from(
                vitals_proto::domain::FaultEvent {
                    check_id: "disk_nearly_full".into(),
                    subject: "/".into(),
                    state: vitals_proto::domain::FaultState::Raised,
                    severity: vitals_proto::domain::Severity::Warning,
                    value: 97.0,
                    evidence: "Disk / is 97 % full".into(),
                    at_ms: 1_764_000_000_000,
                    via: String::new(),
                },
            )),
        ),
        (
            "heartbeat",
            wire::agent_message::Body::Heartbeat(Default::default()),
        ),
    ];
    for (name, body) in msgs {
        let m = wire::AgentMessage {
            seq: 7,
            body: Some(body),
        };
        put("agent_message", name, &m.encode_to_vec());
    }

    // Collector messages.
    let policy = vitals_proto::policy::Policy::default_policy();
    let welcome = wire::CollectorMessage {
        body: Some(wire::collector_message::Body::Welcome(wire::Welcome {
            committed_seq: 6,
            snapshot_interval_ms: 60_000,
            policy: Some(wire::Policy::from(&policy)),
            resync: true,
            raised: vec![wire::FaultKey {
                check_id: "disk_nearly_full".into(),
                subject: "/".into(),
            }],
            ..Default::default()
        })),
    };
    put("collector_message", "welcome", &welcome.encode_to_vec());
    let diag = wire::CollectorMessage {
        body: Some(wire::collector_message::Body::Diagnostic(
            wire::DiagnosticRequest::from(vitals_proto::diag::DiagnosticRequest {
                id: 3,
                kind: "network".into(),
                params: [("host".to_owned(), "erp.city.example".to_owned())].into(),
                timeout: std::time::Duration::from_secs(10),
            }),
        )),
    };
    put("collector_message", "diagnostic", &diag.encode_to_vec());

    // An outbox file as the agent writes it: numbered and waiting
    // messages, an acknowledgement.
    let dir = std::env::temp_dir().join(format!("vitals-fuzz-outbox-seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let (mut f, _) =
            vitals_agent::link::outbox_file::OutboxFile::open(&dir, |b: &[u8]| Some(b.len()))
                .expect("outbox");
        f.message(1, &welcome.encode_to_vec()).expect("message");
        f.message(2, b"snapshot body").expect("message");
        f.queued(1, b"waiting").expect("queued");
        f.ack(1, 10).expect("ack");
    }
    put(
        "outbox_file",
        "written",
        &std::fs::read(dir.join("outbox.log")).expect("outbox file"),
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Configuration and policy files.
    put("agent_toml", "deploy", &file("deploy/agent.toml"));
    put("agent_toml", "windows", &file("deploy/windows/agent.toml"));
    put("collector_toml", "deploy", &file("deploy/collector.toml"));
    put("policy_toml", "default", &file("proto/default-policy.toml"));

    // Probe fixtures.
    for f in ["cups-get-printers.ipp", "cups-get-jobs.ipp"] {
        put(
            "ipp_response",
            f,
            &file(&format!("agent/tests/fixtures/{f}")),
        );
    }
    for f in [
        "smartctl-ata-failing.json",
        "smartctl-nvme-ok.json",
        "smartctl-permission.json",
        "smartctl-scan.json",
    ] {
        let mut data = vec![0u8];
        data.extend(file(&format!("agent/tests/fixtures/{f}")));
        put("smartctl_json", f, &data);
    }
    put(
        "os_readers",
        "wireless",
        &file("agent/tests/fixtures/proc-net-wireless.txt"),
    );
    put(
        "os_readers",
        "systemctl",
        &file("agent/tests/fixtures/systemctl-failed.json"),
    );
    put(
        "os_readers",
        "resolv",
        b"nameserver 10.0.0.53\nsearch city.example\n",
    );
    if let Ok(utmp) = std::fs::read("/var/run/utmp") {
        put("os_readers", "utmp", &utmp);
    }

    // An SNMPv2c GetResponse with Printer MIB values (hrPrinterStatus
    // idle, hrPrinterDetectedErrorState "no paper"), BER by hand.
    let tlv = |tag: u8, content: &[u8]| {
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    };
    let oid = |last: u8| tlv(0x06, &[0x2b, 6, 1, 2, 1, 25, 3, 5, 1, last, 1]);
    let vb = |o: Vec<u8>, value: Vec<u8>| tlv(0x30, &[o, value].concat());
    let list = tlv(
        0x30,
        &[
            vb(oid(1), tlv(0x02, &[3])),
            vb(oid(2), tlv(0x04, &[0x40, 0x00])),
        ]
        .concat(),
    );
    let pdu = tlv(
        0xa2,
        &[tlv(0x02, &[1]), tlv(0x02, &[0]), tlv(0x02, &[0]), list].concat(),
    );
    let message = tlv(0x30, &[tlv(0x02, &[1]), tlv(0x04, b"public"), pdu].concat());
    put("snmp_response", "printer", &message);

    // A real certificate of the fleet PKI, and tokens.
    let dir: PathBuf =
        std::env::temp_dir().join(format!("vitals-fuzz-seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    vitals_collector::pki::init(&dir, &["localhost".to_owned()]).expect("pki");
    let paths = vitals_collector::pki::PkiPaths::new(&dir);
    for (name, pem) in [("ca", paths.ca_cert()), ("server", paths.server_cert())] {
        let text = std::fs::read_to_string(&pem).expect("pem");
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        put("cert_identity", name, &base64_decode(&b64));
    }
    let _ = std::fs::remove_dir_all(&dir);
    put(
        "enrollment_token",
        "token",
        format!("tok1.{}.{}", "s".repeat(43), "ab".repeat(32)).as_bytes(),
    );
    put("enrollment_token", "hash", "ab".repeat(32).as_bytes());
    println!("seeds written under {}", corpus.display());
}

/// Standard base64 (the PEM body) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = A.iter().position(|&a| a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
