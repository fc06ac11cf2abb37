//! The body of every fuzz target, one function each, taking the raw
//! input. libFuzzer drives them from `fuzz/fuzz_targets` (nightly,
//! `cargo +nightly fuzz run <name>`); `tests/replay.rs` runs every stored
//! corpus input and every input that once crashed through them on the
//! stable toolchain, in the ordinary test suite.
//!
//! A target returns nothing: what it checks is that no input panics,
//! hangs or runs out of memory.

use std::hint::black_box;
use std::path::PathBuf;

use prost::Message;

/// A target: the raw input in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by name: what `tests/replay.rs` walks.
pub const TARGETS: &[(&str, Target)] = &[
    ("agent_message", agent_message),
    ("collector_message", collector_message),
    ("agent_toml", agent_toml),
    ("collector_toml", collector_toml),
    ("policy_toml", policy_toml),
    ("outbox_file", outbox_file),
    ("ipp_response", ipp_response),
    ("snmp_response", snmp_response),
    ("smartctl_json", smartctl_json),
    ("os_readers", os_readers),
    ("cert_identity", cert_identity),
    ("enrollment_token", enrollment_token),
    ("console_request", console::console_request),
];

mod console;
pub use console::console_request;

/// Runs a third-party parser the way the agent's probes do: a panic inside
/// it is caught (`probes::run_guarded` turns it into that run's error), so
/// it is `None` here instead of a crash. libFuzzer's panic hook aborts
/// the process, so it is set aside for the call; a panic in our own code
/// around it still crashes the target.
fn contained<T>(parse: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).ok();
    std::panic::set_hook(hook);
    out
}

/// A file holding `data` in a folder of this process's own.
fn input_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitals-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write the input");
    path
}

/// An agent's message as the collector's session takes it: decoded, then
/// checked against the bounds, and each body within them mapped to what
/// ingest stores (a snapshot prepared for the
/// store, a fault event checked, a diagnostic result).
pub fn agent_message(data: &[u8]) {
    use vitals_proto::wire::agent_message::Body;
    let Ok(m) = vitals_proto::wire::AgentMessage::decode(data) else {
        return;
    };
    match m.body {
        Some(Body::Snapshot(s)) => {
            let now = vitals_proto::now_ms();
            if vitals_collector::gateway::bounds::snapshot(&s, now).is_ok() {
                black_box(vitals_collector::store::SnapshotRecord::from_wire(s));
            }
        }
        Some(Body::Fault(f)) => {
            let now = vitals_proto::now_ms();
            if vitals_collector::gateway::bounds::fault(&f, now).is_ok() {
                let _ = black_box(vitals_proto::domain::FaultEvent::try_from(f));
            }
        }
        Some(Body::Hello(h)) => {
            let _ = black_box(h.endpoint_id.parse::<vitals_proto::identity::EndpointId>());
        }
        Some(other) => {
            black_box(other);
        }
        None => {}
    }
}

/// A collector's message as the agent's link takes it: the welcome's and
/// updates' policy, and a diagnostic request checked against the catalog.
pub fn collector_message(data: &[u8]) {
    use vitals_proto::wire::collector_message::Body;
    let Ok(m) = vitals_proto::wire::CollectorMessage::decode(data) else {
        return;
    };
    match m.body {
        Some(Body::Welcome(w)) => {
            if let Some(p) = w.policy {
                black_box(vitals_proto::policy::Policy::from(p));
            }
        }
        Some(Body::Policy(p)) => {
            black_box(vitals_proto::policy::Policy::from(p));
        }
        Some(Body::Diagnostic(d)) => {
            let r = vitals_proto::diag::DiagnosticRequest::from(d);
            let _ = black_box(vitals_proto::diag::Diagnostic::parse(&r.kind, &r.params));
        }
        _ => {}
    }
}

/// `agent.toml` loaded as the agent loads it: strict parse, paths, every
/// check of its values.
pub fn agent_toml(data: &[u8]) {
    let path = input_file("agent.toml", data);
    let _ = black_box(vitals_agent::config::AgentConfig::load(&path));
}

/// `collector.toml` loaded as the collector loads it.
pub fn collector_toml(data: &[u8]) {
    let path = input_file("collector.toml", data);
    let _ = black_box(vitals_collector::config::CollectorConfig::load(&path));
}

/// `policy.toml` parsed and checked, and the policy as agents get it.
pub fn policy_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = vitals_proto::policy::Policy::parse(text, "policy.toml") {
        let wire = vitals_proto::wire::Policy::from(&p);
        black_box(vitals_proto::policy::Policy::from(wire));
    }
}

/// The agent's outbox file replayed at start, whatever a crash or a bad
/// disk left in it: good records kept, a damaged tail set aside.
pub fn outbox_file(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("vitals-fuzz-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("outbox.log"), data).expect("write the input");
    if let Ok(opened) =
        vitals_agent::link::outbox_file::OutboxFile::open(&dir, |b: &[u8]| Some(b.len()))
    {
        black_box(opened);
    }
}

/// An IPP response from CUPS or a printer, parsed and read by the
/// printers probe (queues, the device's own state, jobs).
pub fn ipp_response(data: &[u8]) {
    // The ipp crate (8.0.0) indexes past the end of a value whose length
    // runs beyond the message (fuzz/regressions/ipp_response).
    let parsed = contained(|| {
        ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(
            data.to_vec(),
        )))
        .parse()
    });
    let Some(Ok(r)) = parsed else {
        return;
    };
    let attrs = r.attributes();
    let mut queues = vitals_agent::probes::cups::parse_printers(attrs);
    vitals_agent::probes::cups::apply_jobs(attrs, 1_700_000_000_000, &mut queues);
    black_box(vitals_agent::probes::cups::parse_device(attrs));
    black_box(queues);
}

/// An SNMP response from a network printer, decoded and read as the
/// Printer MIB.
pub fn snmp_response(data: &[u8]) {
    let decoded = contained(|| {
        async_snmp::message::Message::decode(
            bytes::Bytes::copy_from_slice(data),
            Default::default(),
        )
    });
    let Some(Ok(outcome)) = decoded else {
        return;
    };
    if let Some(pdu) = outcome.value.into_pdu() {
        black_box(vitals_agent::probes::snmp::parse_printer(
            "hall-a",
            "10.0.0.9",
            pdu.varbinds(),
        ));
    }
}

/// `smartctl --json` output: the device scan and one device's report,
/// the first byte standing for the exit status bits smartctl sets.
pub fn smartctl_json(data: &[u8]) {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let _ = black_box(vitals_agent::probes::smart::parse_scan(&text));
    let _ = black_box(vitals_agent::probes::smart::parse_device(
        &text,
        i32::from(status),
    ));
}

/// What the OS and network probes read from the system: utmp records,
/// systemctl's failed units, resolv.conf, /proc/net/wireless, and a
/// Windows event's XML.
pub fn os_readers(data: &[u8]) {
    black_box(vitals_agent::probes::os::parse_utmp(data));
    let text = String::from_utf8_lossy(data);
    let _ = black_box(vitals_agent::probes::os::parse_failed_units(&text));
    black_box(vitals_agent::probes::network::parse_resolv_conf(&text));
    black_box(vitals_agent::probes::network::parse_wireless(&text));
    black_box(vitals_agent::diag::parse_event_xml(&text));
}

/// A certificate's identity (URI SANs naming an endpoint or a specialist
/// with a role), read from its DER as every handshake does.
pub fn cert_identity(data: &[u8]) {
    let _ = black_box(vitals_proto::identity::Identity::from_cert_der(data));
}

/// Enrollment tokens as the collector checks them and as a desk reads the
/// one its installer left, and the CA fingerprint in them.
pub fn enrollment_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = black_box(vitals_collector::enrollment::token::Token::parse(&text));
    let _ = black_box(vitals_agent::link::enroll::Token::parse(&text));
    let _ = black_box(vitals_agent::link::enroll::parse_ca_hash(&text));
}
