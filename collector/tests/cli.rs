//! The collector binaries' behaviour on bad input, and the PKI commands.

use std::path::PathBuf;
use std::process::Command;

fn collector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitals-collector"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitals-coll-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn bad_config_is_named_with_line_and_exits_2() {
    let d = dir("typo");
    let path = d.join("collector.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
    )
    .expect("write");
    let out = collector()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collector.toml:3: unknown field \"lisen\""),
        "{err}"
    );
}

#[test]
fn missing_certificates_are_named_and_exit_2() {
    let d = dir("nocert");
    let path = d.join("collector.toml");
    std::fs::write(&path, "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n").expect("write");
    let out = collector()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data/pki/ca.pem"), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn pki_commands_make_a_working_fleet() {
    let d = dir("pki");
    let data = d.join("data");
    let run = |args: &[&str]| {
        collector()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run")
    };
    let out = run(&[
        "pki",
        "init",
        "--host",
        "collector.city.example",
        "--host",
        "10.0.0.5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init must not replace the CA every certificate chains to.
    let again = run(&["pki", "init", "--host", "x"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    assert!(run(&["pki", "issue-agent", "ws-0001"]).status.success());
    assert!(
        run(&["pki", "issue-specialist", "ana", "--role", "viewer"])
            .status
            .success()
    );
    let bad_role = run(&["pki", "issue-specialist", "bob", "--role", "root"]);
    assert_eq!(bad_role.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role \"root\""));
    let bad_id = run(&["pki", "issue-agent", "has space"]);
    assert_eq!(bad_id.status.code(), Some(2));

    for f in [
        "ca.pem",
        "ca.key",
        "collector.pem",
        "collector.key",
        "agents/ws-0001.pem",
        "agents/ws-0001.key",
        "specialists/ana.pem",
        "specialists/ana.key",
    ] {
        assert!(data.join("pki").join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [
            "ca.key",
            "collector.key",
            "agents/ws-0001.key",
            "specialists/ana.key",
        ] {
            let mode = std::fs::metadata(data.join("pki").join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    // The collector accepts what `pki init` made.
    let config = d.join("collector.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n",
    )
    .expect("write");
    let out = collector()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
