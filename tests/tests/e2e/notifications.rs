//! Notifications: signed webhooks delivered exactly once across a restart,
//! and ticket mail over real SMTP.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use vitals_tests::*;

/// A webhook receiver: answers 503 to the first `refuse` POSTs and 200
/// to the rest, and hands over each as (headers, body, accepted).
pub(crate) async fn webhook_receiver(
    refuse: usize,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Post>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut headers = std::collections::HashMap::new();
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if read.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let accepted = refused
                        .fetch_update(SeqCst, SeqCst, |n| (n < refuse).then_some(n + 1))
                        .is_err();
                    let answer: &[u8] = if accepted {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                    };
                    let _ = tx.send((
                        headers,
                        String::from_utf8_lossy(&body).into_owned(),
                        accepted,
                    ));
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

pub(crate) type Post = (std::collections::HashMap<String, String>, String, bool);

async fn next_post(posts: &mut mpsc::UnboundedReceiver<Post>) -> Post {
    tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("a webhook post in time")
        .expect("receiver running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_delivered_exactly_once_across_a_restart() {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use vitals_collector::config::Webhook;
    const SECRET: &str = "a-long-shared-webhook-secret";
    let fleet = Fleet::new("webhook");
    // The help desk is down for the first post: it must be retried, and
    // survive the restart in the outbox.
    let (receiver, mut posts) = webhook_receiver(1).await;
    let check = |raise: &str| {
        format!(
            "[tickets]\nquiet_period = \"1s\"\n\
             [[check]]\nid = \"memory_in_use\"\nmeasurement = \"memory.used_percent\"\n\
             direction = \"above\"\nraise = {raise}\nclear = 0.0\nhold = \"0s\"\nseverity = \"warning\"\n"
        )
    };
    let mut config = with_policy(&fleet, &check("0.001"));
    config.webhooks = vec![Webhook {
        name: "itsm".into(),
        url: format!("http://{receiver}/hook"),
        secret: SECRET.into(),
        events: vec![
            "opened".into(),
            "fault_cleared".into(),
            "auto_resolved".into(),
        ],
    }];
    let policy_path = config.policy.clone().expect("policy");
    let collector = RunningCollector::start(config.clone()).await;
    let addr = collector.addr;
    let agent = RunningAgent::start(fleet.agent_config("ws-hook", addr));
    let refused = next_post(&mut posts).await;
    assert!(!refused.2, "the first post is answered 503");

    // A restart while that post waits for its retry: it is delivered
    // after, once; nothing is sent twice, nothing is lost.
    let port = collector.stop().await;
    let collector = RunningCollector::start_on(config, port).await;
    let mut got = vec![next_post(&mut posts).await];
    assert_eq!(
        got[0].0["x-vitals-delivery"], refused.0["x-vitals-delivery"],
        "a retry keeps its delivery id"
    );
    assert_eq!(got[0].1, refused.1, "a retry sends the same body");
    std::fs::write(&policy_path, check("100.0")).expect("policy");
    got.push(next_post(&mut posts).await);
    got.push(next_post(&mut posts).await);
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(posts.try_recv().is_err(), "no duplicate posts");

    let mut ids = std::collections::HashSet::new();
    let mut events = Vec::new();
    for (headers, body, accepted) in &got {
        assert!(accepted);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(headers["x-vitals-signature"], format!("sha256={hex}"));
        assert!(
            ids.insert(headers["x-vitals-delivery"].clone()),
            "delivery ids unique"
        );
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["event"], headers["x-vitals-event"].as_str());
        assert_eq!(v["ticket"]["endpoint"], "ws-hook", "{v}");
        events.push(v["event"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(events, vec!["opened", "fault_cleared", "auto_resolved"]);
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_mail_reaches_the_help_desk_over_smtp_after_it_comes_back() {
    use vitals_collector::config::{Email, EmailTls};
    use vitals_tests::components::{SmtpSink, free_port, skip};
    const TEST: &str = "ticket_mail_reaches_the_help_desk_over_smtp_after_it_comes_back";
    if let Err(why) = SmtpSink::available() {
        skip(TEST, &why);
        return;
    }
    let fleet = Fleet::new("mail");
    // Two faults this machine always has: a warning on memory (P3 on a
    // normal desk, not mailed) and a critical one on CPU count (P2, mailed).
    let config = with_policy(
        &fleet,
        "[[check]]\nid = \"memory_pressure\"\nmeasurement = \"memory.used_percent\"\n\
         direction = \"above\"\nraise = 0.001\nclear = 0.0\nhold = \"0s\"\nseverity = \"warning\"\n\
         [[check]]\nid = \"disk_nearly_full\"\nmeasurement = \"memory.used_percent\"\n\
         direction = \"above\"\nraise = 0.001\nclear = 0.0\nhold = \"0s\"\nseverity = \"critical\"\n",
    );
    let port = free_port();
    let mut config = config;
    config.email = Some(Email {
        server: "127.0.0.1".into(),
        port: Some(port),
        tls: EmailTls::None,
        username: None,
        password_file: None,
        ca: None,
        from: "Vitals <vitals@city.example>".into(),
        to: vec!["helpdesk@city.example".into()],
        priorities: vec![
            vitals_proto::ticket_rules::Priority::P1,
            vitals_proto::ticket_rules::Priority::P2,
        ],
        events: vec!["opened".into()],
    });
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-mail", collector.addr));
    // The relay is down when the ticket opens: the mail waits in the
    // outbox and goes out once it is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sink = SmtpSink::start(&fleet.dir, port).expect("SMTP server");
    let mail = eventually(Duration::from_secs(30), "the ticket mail", || async {
        sink.mails().into_iter().next()
    })
    .await;
    assert!(
        mail.contains("Subject: [Vitals P2] #") && mail.contains("on ws-mail (opened)"),
        "{mail}"
    );
    for part in [
        "X-RcptTo: helpdesk@city.example",
        "Endpoint:  ws-mail",
        "Check:     disk_nearly_full (memory)",
        "# Disk nearly full",
        "vitalsctl tickets show",
    ] {
        assert!(mail.contains(part), "{part} missing from:\n{mail}");
    }
    // The P3 ticket is not mailed, and nothing is mailed twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.mails().len(), 1, "{:?}", sink.mails());
    agent.stop().await;
    collector.stop().await;
}
