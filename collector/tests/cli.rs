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

fn vitalsctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalsctl"));
    // Settings come only from what each test passes.
    for var in [
        "VITALS_PROFILE",
        "VITALS_COLLECTOR",
        "VITALS_CA",
        "VITALS_CERT",
        "VITALS_KEY",
        "VITALS_SERVER_NAME",
        "XDG_CONFIG_HOME",
        "HOME",
    ] {
        c.env_remove(var);
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for exit, up to `secs`; kills and fails past it.
fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
#[cfg(unix)]
fn run_serves_vitalsctl_from_flags_env_and_profile_and_stops_on_sigterm() {
    let d = dir("run");
    let data = d.join("data");
    let pki = |args: &[&str]| {
        let out = collector()
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pki(&["pki", "init", "--host", "localhost"]);
    pki(&["pki", "issue-specialist", "ana", "--role", "viewer"]);
    let port = free_port();
    let config = d.join("collector.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nenabled = false\n"),
    )
    .expect("write");
    let mut server = collector()
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start collector");
    let url = format!("https://127.0.0.1:{port}");
    let pki_dir = data.join("pki");

    // Flags.
    let by_flags = eventually(10, "collector answering", || {
        let out = vitalsctl()
            .args(["--collector", &url, "--server-name", "localhost", "--ca"])
            .arg(pki_dir.join("ca.pem"))
            .arg("--cert")
            .arg(pki_dir.join("specialists/ana.pem"))
            .arg("--key")
            .arg(pki_dir.join("specialists/ana.key"))
            .args(["-o", "json", "endpoints", "list"])
            .output()
            .expect("vitalsctl");
        out.status.success().then_some(out)
    });
    let v: serde_json::Value = serde_json::from_slice(&by_flags.stdout).expect("json");
    assert_eq!(v, serde_json::json!([]));

    // Environment.
    let out = vitalsctl()
        .env("VITALS_COLLECTOR", &url)
        .env("VITALS_SERVER_NAME", "localhost")
        .env("VITALS_CA", pki_dir.join("ca.pem"))
        .env("VITALS_CERT", pki_dir.join("specialists/ana.pem"))
        .env("VITALS_KEY", pki_dir.join("specialists/ana.key"))
        .args(["endpoints", "list"])
        .output()
        .expect("vitalsctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No endpoints yet"));

    // Profile file, with paths relative to it.
    let profile = d.join("vitalsctl.toml");
    std::fs::write(
        &profile,
        format!(
            "collector = \"{url}\"\nserver_name = \"localhost\"\nca = \"data/pki/ca.pem\"\n\
             cert = \"data/pki/specialists/ana.pem\"\nkey = \"data/pki/specialists/ana.key\"\n"
        ),
    )
    .expect("write");
    let out = vitalsctl()
        .arg("--profile")
        .arg(&profile)
        .args(["endpoints", "show", "ws-nobody"])
        .output()
        .expect("vitalsctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found: no endpoint \"ws-nobody\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Missing settings are named.
    let out = vitalsctl()
        .args(["endpoints", "list"])
        .current_dir(&d)
        .output()
        .expect("vitalsctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no collector address"));

    signal(&server, "-TERM");
    let status = wait_exit(&mut server, 15);
    assert!(status.success(), "collector exit after SIGTERM: {status}");
}

#[test]
#[cfg(unix)]
fn quickstart_shows_this_machine_and_stops_cleanly() {
    use std::io::BufRead;
    let d = dir("quickstart");
    let data = d.join("vitals-data");
    let agent_bin = std::path::Path::new(env!("CARGO_BIN_EXE_vitals-collector"))
        .with_file_name(format!("vitals-agent{}", std::env::consts::EXE_SUFFIX));
    let start = || {
        let mut c = collector();
        c.args([
            "quickstart",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
            "--no-gateway-probe",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        // `cargo test --workspace` builds the agent next to the collector;
        // otherwise the quickstart builds it itself through cargo.
        if agent_bin.exists() {
            c.env("VITALS_AGENT_BIN", &agent_bin);
        }
        let mut child = c.spawn().expect("start quickstart");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = String::new();
        for l in lines.by_ref().map_while(Result::ok) {
            banner.push_str(&l);
            banner.push('\n');
            if l.contains("collector  https://") {
                break;
            }
        }
        (child, banner)
    };
    // The console's address and the first admin's one-time password.
    let console_of = |banner: &str| {
        let line = banner
            .lines()
            .find(|l| l.contains("console    http://"))
            .unwrap_or_else(|| panic!("banner names the console: {banner}"));
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("console address")
            .to_owned();
        let password = line
            .split("one-time password ")
            .nth(1)
            .map(|p| p.trim().to_owned());
        (addr, password)
    };
    let login_page = |addr: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("console port");
        s.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    };

    let (mut qs, banner) = start();
    assert!(banner.contains("https://127.0.0.1:"), "{banner}");
    let (console, first_password) = console_of(&banner);
    let first_password = first_password.expect("a one-time password for admin");
    assert_eq!(first_password.len(), 23, "{first_password}");
    let page = login_page(&console);
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("Sign in to Vitals"),
        "{page}"
    );
    let profile = data.join("vitalsctl.toml");
    let list = || {
        let out = vitalsctl()
            .arg("--profile")
            .arg(&profile)
            .args(["-o", "json", "endpoints", "list"])
            .output()
            .expect("vitalsctl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array().cloned()
    };
    let endpoints = eventually(60, "this machine online with a snapshot", || {
        let l = list()?;
        let ready =
            l.len() == 1 && l[0]["online"] == true && l[0]["latest_snapshot_ms"].as_i64() > Some(0);
        ready.then_some(l)
    });
    assert!(
        endpoints[0]["memory_used_percent"]
            .as_f64()
            .is_some_and(|m| m > 0.0)
    );
    let ca_before = std::fs::read(data.join("pki/ca.pem")).expect("ca");
    let first_seen = endpoints[0]["first_seen_ms"].clone();

    signal(&qs, "-INT");
    assert!(wait_exit(&mut qs, 20).success());
    let log = std::fs::read_to_string(data.join("agent/agent.log")).expect("agent log");
    assert!(
        log.contains("link closed"),
        "agent did not stop cleanly:\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "a log file must not carry colour codes:\n{log}"
    );

    // A second start re-uses the PKI and the database; the admin never
    // signed in, so a new one-time password replaces the first.
    let (mut qs, banner) = start();
    let (_, again) = console_of(&banner);
    assert!(
        again.as_ref().is_some_and(|p| *p != first_password),
        "{banner}"
    );
    let l = eventually(60, "this machine online again", || {
        let l = list()?;
        (l.len() == 1 && l[0]["online"] == true).then_some(l)
    });
    assert_eq!(l[0]["first_seen_ms"], first_seen);
    assert_eq!(
        std::fs::read(data.join("pki/ca.pem")).expect("ca"),
        ca_before
    );
    signal(&qs, "-TERM");
    assert!(wait_exit(&mut qs, 20).success());
}

#[test]
fn users_commands_manage_console_accounts() {
    let d = dir("users");
    let config = d.join("collector.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", d.join("data").display().to_string()),
    )
    .expect("write");
    std::fs::create_dir_all(d.join("data")).expect("data dir");
    let users = |args: &[&str]| {
        let out = collector()
            .arg("users")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = users(&["list"]);
    assert_eq!((code, out.trim()), (Some(0), "No accounts."));

    let (code, out, err) = users(&["add", "ana", "--role", "specialist", "--site", "dispatch"]);
    assert_eq!(code, Some(0), "{err}");
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("a one-time password is printed");
    assert_eq!(password.len(), 23, "{out}");

    let (code, _, err) = users(&["add", "ana", "--role", "admin"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("an account named \"ana\" exists already"),
        "{err}"
    );
    let (code, _, err) = users(&["add", "bob", "--role", "boss"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--role boss"), "{err}");

    assert_eq!(users(&["disable", "ana"]).0, Some(0));
    assert_eq!(
        users(&["set-role", "ana", "--role", "admin", "--all-sites"]).0,
        Some(0)
    );
    let (_, out, _) = users(&["list"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("ana "))
        .expect("ana is listed");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        ["ana", "admin", "disabled", "one-time", "all", "sites"],
        "{out}"
    );
    assert!(!out.contains(password), "passwords are never listed");

    let (code, out, _) = users(&["reset-password", "ana"]);
    assert_eq!(code, Some(0));
    assert!(
        !out.contains(password),
        "a reset gives a new one-time password"
    );
    let (code, _, err) = users(&["reset-password", "nobody"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no account named \"nobody\""), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
#[cfg(unix)]
fn tokens_health_and_server_rotation_from_the_command_line() {
    let d = dir("tokens");
    let data = d.join("data");
    let port = free_port();
    let config = d.join("collector.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nenabled = false\n"),
    )
    .expect("write");
    let ok = |mut c: Command| {
        let out = c.output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut init = collector();
    init.args(["pki", "init", "--host", "localhost", "--data-dir"])
        .arg(&data);
    ok(init);

    // A token: printed once on stdout, with how to use it on stderr.
    let mut create = collector();
    create
        .args([
            "tokens",
            "create",
            "--uses",
            "3",
            "--expires",
            "2d",
            "--site",
            "north",
        ])
        .args(["--tag", "dispatch", "--id-pattern", "disp-*", "--config"])
        .arg(&config);
    let (token, said) = ok(create);
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(said.contains("vitals-agent enroll --collector"), "{said}");
    assert!(said.contains("the fleet CA: sha256:"), "{said}");
    let id = token.split('.').next().expect("id").to_owned();
    let mut list = collector();
    list.args(["tokens", "list", "--config"]).arg(&config);
    let (table, _) = ok(list);
    let row = table.lines().find(|l| l.starts_with(&id)).expect("listed");
    assert!(
        row.contains("active")
            && row.contains("0/3")
            && row.contains("north")
            && row.contains("disp-*"),
        "{row}"
    );
    // The secret is stored hashed: the database never holds it.
    let db = std::fs::read(data.join("vitals.db")).expect("db");
    let secret = token.split('.').nth(1).expect("secret");
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is stored"
    );
    let mut revoke = collector();
    revoke
        .args(["tokens", "revoke", &id, "--config"])
        .arg(&config);
    ok(revoke);
    let mut list = collector();
    list.args(["tokens", "list", "--config"]).arg(&config);
    let (table, _) = ok(list);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{table}"
    );
    let out = collector()
        .args(["tokens", "revoke", "nosuch", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    // The health check needs no client certificate.
    let mut server = collector()
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let health = || {
        collector()
            .args(["health", "--config"])
            .arg(&config)
            .output()
            .expect("health")
    };
    let out = eventually(20, "the collector healthy", || {
        let out = health();
        out.status.success().then_some(out)
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving"));

    // The server certificate rotates with the same names.
    let before = std::fs::read(data.join("pki/collector.pem")).expect("cert");
    let mut rotate = collector();
    rotate
        .args(["pki", "rotate-server", "--data-dir"])
        .arg(&data);
    let (said, _) = ok(rotate);
    assert!(said.contains("for localhost"), "{said}");
    assert_ne!(
        std::fs::read(data.join("pki/collector.pem")).expect("cert"),
        before
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(health().status.success(), "not healthy after the rotation");
    signal(&server, "-TERM");
    assert!(wait_exit(&mut server, 30).success());
    let out = health();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stopped collector is not healthy"
    );
}
