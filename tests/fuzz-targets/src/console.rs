//! The web console's request handling: raw HTTP/1.1 requests, as a browser
//! or anything else on the network could send them, to a collector serving
//! its console in this process. The collector starts once per process on a
//! fresh data directory with one signed-in account; in an input, `$SESSION`
//! stands for that account's session cookie and `$TOKEN` for its form
//! token, so the fuzzer reaches the pages behind the sign-in and their
//! forms.
//!
//! What must hold for any input: an answer (or the connection closed)
//! within five seconds, and no 5xx but 504 (a diagnostic without a result
//! in time): a 500 or 503 would be a request the console failed to parse
//! or check before it reached the store.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Served {
    rt: tokio::runtime::Runtime,
    console: SocketAddr,
    session: String,
    token: String,
}

static SERVED: OnceLock<Served> = OnceLock::new();

/// One HTTP exchange on a fresh connection: the whole answer, as read until
/// the server closes (requests are sent with `Connection: close`).
async fn exchange(at: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(at).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// The answer's head (status line and headers), or what came before the
/// server closed: an event stream never ends, and its head says enough.
async fn head(at: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(at).await?;
    s.write_all(request).await?;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(out);
        }
    }
}

/// The value of a hidden form field in a page.
fn field<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    rest.split('"').next()
}

fn cookie_of(answer: &str, name: &str) -> Option<String> {
    answer
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.trim().split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn start() -> Served {
    use vitals_collector::config::{CollectorConfig, ConsoleConfig};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("vitals-fuzz-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    vitals_collector::pki::init(&dir, &["localhost".into()]).expect("pki");
    let mut config = CollectorConfig::with_data_dir(&dir);
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.metrics.enabled = false;
    config.console = Some(ConsoleConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert: None,
        key: None,
        idle_timeout: Duration::from_secs(24 * 3600),
        // The fuzzer signs in wrongly all the time; it must not lock itself out.
        login_attempts: u32::MAX,
        login_lockout: Duration::from_secs(1),
        require_totp: false,
        oidc: None,
    });
    let (console, session, token) = rt.block_on(async move {
        let listeners = vitals_collector::Listeners::bind(&config)
            .await
            .expect("bind");
        let console = listeners
            .console
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("console address");
        let collector = vitals_collector::Collector::open(config)
            .await
            .expect("collector opens");
        let accounts = collector.accounts();
        accounts
            .add("fuzz", vitals_proto::identity::Role::Admin, Vec::new())
            .await
            .expect("account");
        accounts
            .set_password("fuzz", "a long fuzzing password")
            .await
            .expect("password");
        tokio::spawn(collector.serve(listeners, std::future::pending::<()>()));
        // Sign in as a browser does.
        let page = String::from_utf8_lossy(
            &exchange(
                console,
                b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("login page"),
        )
        .into_owned();
        let login = cookie_of(&page, "vitals_login").expect("login cookie");
        let token = field(&page, "token").expect("login token").to_owned();
        let body = format!("name=fuzz&password=a+long+fuzzing+password&token={token}&next=%2F");
        let signed = String::from_utf8_lossy(
            &exchange(
                console,
                format!(
                    "POST /login HTTP/1.1\r\nHost: localhost\r\nCookie: {login}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .expect("sign in"),
        )
        .into_owned();
        let session = cookie_of(&signed, "vitals_session").expect("signed in");
        let home = String::from_utf8_lossy(
            &exchange(
                console,
                format!(
                    "GET / HTTP/1.1\r\nHost: localhost\r\nCookie: {session}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("queue page"),
        )
        .into_owned();
        let token = field(&home, "csrf")
            .expect("the signed-in page's form token")
            .to_owned();
        (console, session, token)
    });
    Served {
        rt,
        console,
        session,
        token,
    }
}

/// Replaces every `from` in `data` with `to`.
fn substitute(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

pub fn console_request(data: &[u8]) {
    // Signing out would end the session the other inputs use.
    let first_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    if first_line.windows(7).any(|w| w == b"/logout") {
        return;
    }
    let s = SERVED.get_or_init(start);
    let request = substitute(data, b"$SESSION", s.session.as_bytes());
    let request = substitute(&request, b"$TOKEN", s.token.as_bytes());
    let answer = s.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), head(s.console, &request)).await
    });
    let Ok(answer) = answer else {
        panic!("the console gave no answer within 5 s");
    };
    // A reset connection is an answer too (hyper refusing a malformed
    // request may close at once).
    let Ok(answer) = answer else {
        return;
    };
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).unwrap_or("");
    // 504: a diagnostic that found no result in time, a fair answer.
    assert!(
        !status.starts_with('5') || status == "504",
        "the console answered {status}: {}",
        text.lines().take(20).collect::<Vec<_>>().join("\n")
    );
}
