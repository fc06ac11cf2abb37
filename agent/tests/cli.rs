//! The agent binary's behaviour on bad input and its one-shot mode.

use std::path::PathBuf;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitals-agent"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitals-agent-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

const CONFIG: &str = r#"collector = "https://127.0.0.1:7443"
state_dir = "state"

[tls]
ca = "pki/ca.pem"
cert = "pki/agent.pem"
key = "pki/agent.key"
"#;

#[test]
fn unknown_field_is_named_with_file_and_line() {
    let d = dir("typo");
    let path = d.join("agent.toml");
    std::fs::write(&path, format!("{CONFIG}\n[link]\nintrval = \"5s\"\n")).expect("write");
    let out = agent()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml:10: unknown field \"intrval\""),
        "{err}"
    );
}

#[test]
fn missing_certificate_files_are_named() {
    let d = dir("nocert");
    let path = d.join("agent.toml");
    std::fs::write(&path, CONFIG).expect("write");
    let out = agent()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.ca"), "{err}");
    assert!(err.contains("pki/ca.pem"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let out = agent()
        .args(["check-config", "--config", "/nonexistent/vitals/agent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/vitals/agent.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn once_json_prints_a_snapshot_without_network() {
    // Gateway probes off: test traffic stays on this machine.
    let d = dir("once");
    std::fs::create_dir_all(&d).expect("dir");
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n[network]\nping_gateway = false\ndns = [\"localhost\"]\n"),
    )
    .expect("write");
    let out = agent()
        .args(["once", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(all["faults"].is_array(), "{all}");
    let v = &all["snapshot"];
    assert!(
        v["host"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert!(v["memory"]["total_bytes"].as_u64().is_some_and(|m| m > 0));
    assert!(v["cpu"]["logical_cores"].as_u64().is_some_and(|c| c >= 1));
    assert!(v["interfaces"].as_array().is_some_and(|i| !i.is_empty()));
    assert_eq!(v["network"]["dns"][0]["name"], "localhost", "{v}");
    assert_eq!(v["network"]["dns"][0]["ok"], true, "{v}");
    assert!(v["network"].get("gateway").is_none(), "{v}");
    // Every probe reported: its section is present even where empty.
    for section in ["smart", "os", "printers", "temperatures", "batteries"] {
        assert!(v.get(section).is_some(), "{section} missing: {v}");
    }
}

#[test]
fn once_with_a_broken_config_names_the_line() {
    let d = dir("once-bad");
    std::fs::create_dir_all(&d).expect("dir");
    let config = d.join("agent.toml");
    std::fs::write(&config, format!("{CONFIG}\n[network]\nping_cout = 3\n")).expect("write");
    let out = agent()
        .args(["once", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"ping_cout\""), "{err}");
}

#[test]
fn garbage_key_and_ca_files_are_named() {
    let d = dir("garbage");
    std::fs::create_dir_all(d.join("pki")).expect("pki dir");
    let path = d.join("agent.toml");
    std::fs::write(&path, CONFIG).expect("write");
    std::fs::write(d.join("pki/ca.pem"), "not a certificate\n").expect("write");
    std::fs::write(d.join("pki/agent.pem"), "junk").expect("write");
    std::fs::write(d.join("pki/agent.key"), "junk").expect("write");
    let out = agent()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pki/ca.pem: no CA certificate in file"),
        "{err}"
    );
}
