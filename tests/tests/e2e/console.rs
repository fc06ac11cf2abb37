//! The web console in a real browser: the system Chromium, driven by
//! `tests/console/scenarios.mjs` (playwright-core), against a collector
//! with its console on loopback and a real agent whose loop-mounted disk
//! the test fills and empties when the script asks. axe-core checks every
//! page; screenshots of each page at desktop and phone width land in
//! `target/console-screenshots`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vitals_collector::config::ConsoleConfig;
use vitals_collector::console::accounts::Accounts;
use vitals_proto::identity::Role;
use vitals_tests::components::{BrowserKit, LoopDisk, skip};
use vitals_tests::*;

/// Failed sign-ins before the lockout, in this test.
const LOGIN_ATTEMPTS: u32 = 3;

/// The console on `listen` in plain HTTP (loopback), sessions of ten
/// minutes, `attempts` failed sign-ins before the lockout.
fn console_on(listen: &str, attempts: u32) -> ConsoleConfig {
    ConsoleConfig {
        listen: listen.parse().expect("addr"),
        cert: None,
        key: None,
        idle_timeout: Duration::from_secs(600),
        login_attempts: attempts,
        login_lockout: Duration::from_secs(900),
        require_totp: false,
        oidc: None,
    }
}

/// Accounts made the way `vitals-collector users add` makes them, in the
/// database of `config`, each with a password of its own choosing
/// (returned by name) except those listed in `one_time`, which keep the
/// one-time password they were given.
async fn accounts(
    config: &vitals_collector::config::CollectorConfig,
    list: &[(&'static str, Role, &[&str])],
    one_time: &[&str],
) -> BTreeMap<&'static str, String> {
    let store = vitals_collector::store::open(&config.storage_url(), 10, Duration::ZERO)
        .await
        .expect("store");
    let accounts = Accounts::new(store);
    let mut passwords = BTreeMap::new();
    for (name, role, sites) in list {
        let sites = sites.iter().map(|s| (*s).to_owned()).collect();
        let once = accounts.add(name, *role, sites).await.expect("add");
        let password = if one_time.contains(name) {
            once
        } else {
            let chosen = format!("{name} chose a good password");
            accounts.set_password(name, &chosen).await.expect("set");
            chosen
        };
        passwords.insert(*name, password);
    }
    passwords
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specialists_work_the_queue_in_a_real_browser() {
    const TEST: &str = "specialists_work_the_queue_in_a_real_browser";
    let kit = match BrowserKit::find() {
        Ok(k) => k,
        Err(why) => return skip(TEST, &why),
    };
    let fleet = Fleet::new("console");
    let disk = match LoopDisk::new(&fleet.dir) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let mut config = with_policy(
        &fleet,
        "[tickets]\nquiet_period = \"1s\"\n\
         [[check]]\nid = \"disk_nearly_full\"\ntitle = \"Disk nearly full\"\n\
         measurement = \"disk.used_percent\"\n\
         direction = \"above\"\nraise = 95.0\nclear = 90.0\nhold = \"0s\"\nseverity = \"warning\"\n",
    );
    config.console = Some(console_on("127.0.0.1:0", LOGIN_ATTEMPTS));
    // ana is the first admin with a one-time password; the others have
    // chosen theirs.
    let passwords = accounts(
        &config,
        &[
            ("ana", Role::Admin, &[]),
            ("sam", Role::Specialist, &[]),
            ("vic", Role::Viewer, &[]),
            ("lock", Role::Specialist, &[]),
        ],
        &["ana"],
    )
    .await;

    let collector = RunningCollector::start(config).await;
    let console = collector.console_addr.expect("console listening");
    let agent = RunningAgent::start(fleet.agent_config("ws-disk", collector.addr));
    let viewer = fleet.specialist_profile("watcher", Role::Viewer, collector.addr);
    eventually(WAIT, "the agent's first snapshot", || async {
        let mut c = vitals_collector::ctl::Client::connect(&viewer).await.ok()?;
        c.endpoint("ws-disk").await.ok()?.latest
    })
    .await;

    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let mut child = tokio::process::Command::new(&kit.node)
        .arg(kit.dir.join("scenarios.mjs"))
        .env("CONSOLE_URL", format!("http://{console}"))
        .env(
            "CONSOLE_ACCOUNTS",
            serde_json::to_string(&passwords).expect("json"),
        )
        .env("CHROMIUM", &kit.chromium)
        .env("SCREENSHOTS", &shots)
        .env("DIAG_TARGET", collector.addr.to_string())
        .env("ENDPOINT", "ws-disk")
        .env("LOGIN_ATTEMPTS", LOGIN_ATTEMPTS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut result = None;
    let run = async {
        while let Some(line) = out.next_line().await.expect("read") {
            println!("browser: {line}");
            match line.strip_prefix("STEP ") {
                Some("fill") => disk.fill_to(97.0),
                Some("empty") => disk.empty(),
                Some(other) => panic!("unknown step {other}"),
                None => {
                    if let Some(r) = line.strip_prefix("RESULT ") {
                        result = Some(r.to_owned());
                    }
                    continue;
                }
            }
            stdin.write_all(b"OK\n").await.expect("answer");
        }
        child.wait().await.expect("wait")
    };
    let status = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser scenarios finish within 5 minutes");
    assert!(status.success(), "browser scenarios failed ({status})");
    let result: serde_json::Value =
        serde_json::from_str(&result.expect("a RESULT line")).expect("result json");
    // Every page the scenarios visited was checked, and photographed.
    let checked: Vec<&str> = result["axe"]
        .as_array()
        .expect("axe list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for page in [
        "login",
        "password",
        "two-step enrollment",
        "second factor",
        "queue",
        "ticket",
        "endpoint",
        "fleet",
        "audit",
        "admin",
    ] {
        assert!(checked.contains(&page), "axe on {page}: {checked:?}");
    }
    for name in [
        "queue", "ticket", "endpoint", "fleet", "audit", "admin", "login",
    ] {
        for width in ["desktop", "phone"] {
            let f = shots.join(format!("{name}-{width}.png"));
            assert!(
                std::fs::metadata(&f).is_ok_and(|m| m.len() > 5_000),
                "{} written",
                f.display()
            );
        }
    }
    println!(
        "console: fault to queue {} ms, diagnostic {} ms",
        result["raise_to_queue_ms"], result["diagnostic_ms"]
    );
    agent.stop().await;
    collector.stop().await;
    drop(disk);
}

/// With a certificate and key the console speaks only TLS: the login page
/// over HTTPS with the city's CA, cookies `Secure` under the `__Host-`
/// name, HSTS; plain HTTP on the same port gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_speaks_tls_with_its_own_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fleet = Fleet::new("console-tls");
    // A browser-facing certificate from another CA than the fleet's, as a
    // city's own would be.
    let city = vitals_collector::pki::init(
        &fleet.dir.join("city"),
        &["localhost".into(), "127.0.0.1".into()],
    )
    .expect("city CA");
    let cert = fleet.dir.join("city/console.pem");
    let key = fleet.dir.join("city/console.key");
    city.issue_server(&["localhost".into(), "127.0.0.1".into()], 30)
        .expect("issue")
        .write(&cert, &key)
        .expect("write");
    let mut config = fleet.collector_config();
    config.console = Some(ConsoleConfig {
        cert: Some(cert),
        key: Some(key),
        ..console_on("127.0.0.1:0", 5)
    });
    let collector = RunningCollector::start(config).await;
    let console = collector.console_addr.expect("console");
    let ca = std::fs::read(fleet.dir.join("city/pki/ca.pem")).expect("city CA file");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .get(format!("https://localhost:{}/", console.port()))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 303, "signed out: to the login page");
    let r = client
        .get(format!("https://localhost:{}/login", console.port()))
        .send()
        .await
        .expect("https login");
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["strict-transport-security"], "max-age=31536000");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(r.text().await.expect("body").contains("Sign in to Vitals"));
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/login", console.port()))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");
    collector.stop().await;
}

/// A free loopback port, for an address that must be known before the
/// server that will use it starts (the provider needs the console's
/// callback URL, the console the provider's).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Single sign-on against a real OpenID Connect provider (npm
/// `oidc-provider`, started here): a specialist and an admin mapped from
/// the directory's groups, a person with no Vitals group refused with the
/// reason, a forged answer refused, local sign-in kept to the break-glass
/// account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_against_a_real_openid_provider() {
    const TEST: &str = "single_sign_on_against_a_real_openid_provider";
    let kit = match BrowserKit::find() {
        Ok(k) => k,
        Err(why) => return skip(TEST, &why),
    };
    let fleet = Fleet::new("console-sso");
    let (console_port, idp_port) = (free_port(), free_port());
    let callback = format!("http://127.0.0.1:{console_port}/oidc/callback");
    let secret = "a client secret of the city's provider";
    let secret_file = fleet.dir.join("oidc-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("secret file");
    let mut idp = tokio::process::Command::new(&kit.node)
        .arg(kit.dir.join("oidc-provider.mjs"))
        .args([&idp_port.to_string(), &callback, secret])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the provider");
    let mut idp_out = BufReader::new(idp.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = idp_out.next_line().await.expect("read") {
            if l == "READY" {
                return;
            }
        }
        panic!("the provider exited before it was ready");
    })
    .await
    .expect("the provider starts within 20 s");

    let mut config = fleet.collector_config();
    config.console = Some(ConsoleConfig {
        oidc: Some(vitals_collector::config::OidcConfig {
            issuer: format!("http://127.0.0.1:{idp_port}"),
            client_id: "vitals-console".into(),
            client_secret_file: Some(secret_file),
            redirect_url: callback,
            label: "City account".into(),
            scopes: vec!["openid".into(), "profile".into()],
            name_claim: "preferred_username".into(),
            role_claim: "vitals_role".into(),
            roles: vitals_collector::console::oidc::role_map(&[
                ("helpdesk", Role::Specialist),
                ("it-admins", Role::Admin),
            ]),
            site_claim: Some("vitals_sites".into()),
            break_glass: vec!["admin".into()],
            ca: None,
        }),
        ..console_on(&format!("127.0.0.1:{console_port}"), 5)
    });
    let passwords = accounts(
        &config,
        &[("admin", Role::Admin, &[]), ("sam", Role::Specialist, &[])],
        &[],
    )
    .await;
    let collector = RunningCollector::start(config).await;
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&kit.node)
            .arg(kit.dir.join("sso.mjs"))
            .env("CONSOLE_URL", format!("http://127.0.0.1:{console_port}"))
            .env("CHROMIUM", &kit.chromium)
            .env("SCREENSHOTS", &shots)
            .env("ADMIN_PASSWORD", &passwords["admin"])
            .env("SAM_PASSWORD", &passwords["sam"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the scenarios finish within 3 minutes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "single sign-on scenarios failed");
    assert!(stdout.contains("RESULT "), "{stdout}");
    collector.stop().await;
    let _ = idp.kill().await;
}

/// A specialist scoped to a site (the policy's `[[tickets.site]]`) sees
/// that site's desks and nothing else: not in the fleet, not by URL, and
/// cannot run a diagnostic elsewhere; an admin sees all, and the fleet
/// filters by site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_scoped_specialist_sees_only_that_site() {
    use vitals_tests::console_client::{ConsoleClient, field};
    let fleet = Fleet::new("console-sites");
    let mut config = with_policy(
        &fleet,
        "[[tickets.site]]\nname = \"dispatch\"\nendpoints = [\"disp-*\"]\n",
    );
    config.console = Some(console_on("127.0.0.1:0", 5));
    accounts(
        &config,
        &[
            ("dee", Role::Specialist, &["dispatch"]),
            ("ana", Role::Admin, &[]),
        ],
        &[],
    )
    .await;
    let collector = RunningCollector::start(config).await;
    let base = format!("http://{}", collector.console_addr.expect("console"));
    let agents = [
        RunningAgent::start(fleet.agent_config("disp-1", collector.addr)),
        RunningAgent::start(fleet.agent_config("ws-2", collector.addr)),
    ];
    let dee = ConsoleClient::sign_in(&base, "dee", "dee chose a good password")
        .await
        .expect("dee signs in");
    let ana = ConsoleClient::sign_in(&base, "ana", "ana chose a good password")
        .await
        .expect("ana signs in");
    let page = eventually(WAIT, "both desks in the admin's fleet", || async {
        let (_, _, html) = ana.get("/fleet").await.ok()?;
        (html.contains(">disp-1<") && html.contains(">ws-2<")).then_some(html)
    })
    .await;
    assert!(page.contains(">dispatch<"), "the site is shown: {page}");
    let (_, _, only) = ana.get("/fleet?site=dispatch").await.expect("filtered");
    assert!(only.contains(">disp-1<") && !only.contains(">ws-2<"));

    let (_, _, mine) = dee.get("/fleet").await.expect("dee's fleet");
    assert!(mine.contains(">disp-1<"), "{mine}");
    assert!(!mine.contains("ws-2"), "another site's desk listed: {mine}");
    let (status, body) = dee.status_of("/endpoints/ws-2").await.expect("page");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("ws-2 is not in your sites (dispatch)"),
        "{body}"
    );
    assert_eq!(
        dee.status_of("/endpoints/disp-1").await.expect("page").0,
        200
    );
    let (_, _, html) = dee.get("/endpoints/disp-1").await.expect("page");
    let csrf = field(&html, "csrf").expect("csrf").to_owned();
    let (status, body) = dee
        .post(
            "/endpoints/ws-2/diagnose",
            &[("csrf", &csrf), ("kind", "os")],
        )
        .await
        .expect("post");
    assert_eq!(status, 403, "{body}");
    let (_, _, audit) = ana.get("/audit?who=dee").await.expect("audit");
    assert!(
        audit.contains("ws-2") && audit.contains("refused"),
        "the refused run is audited: {audit}"
    );

    // Revocation from the endpoint page: a specialist may not, an admin may.
    let (status, _) = dee
        .post(
            "/endpoints/disp-1/credentials",
            &[("csrf", &csrf), ("action", "revoke"), ("reason", "lost")],
        )
        .await
        .expect("post");
    assert_eq!(status, 403, "a specialist revoked a desk");
    assert!(
        !html.contains("Revoke disp-1"),
        "the form is offered to a specialist"
    );
    let (_, _, page) = ana.get("/endpoints/ws-2").await.expect("page");
    assert!(page.contains("Revoke ws-2"), "no revoke form for the admin");
    let csrf = field(&page, "csrf").expect("csrf").to_owned();
    let (status, body) = ana
        .post(
            "/endpoints/ws-2/credentials",
            &[
                ("csrf", &csrf),
                ("action", "revoke"),
                ("reason", "laptop stolen"),
            ],
        )
        .await
        .expect("post");
    assert!(status == 303 || status == 200, "{status}: {body}");
    let page = eventually(WAIT, "ws-2 shown revoked and offline", || async {
        let (_, _, page) = ana.get("/endpoints/ws-2").await.ok()?;
        (page.contains("laptop stolen") && page.contains(">revoked<")).then_some(page)
    })
    .await;
    assert!(
        !page.contains("Revoke ws-2"),
        "a revoked desk is offered revocation again"
    );
    for a in agents {
        a.stop().await;
    }
    collector.stop().await;
}
