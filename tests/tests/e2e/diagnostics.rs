//! Live diagnostics through the relay, and the audit of every request.

use std::time::Duration;

use vitals_collector::ctl::Client;
use vitals_proto::identity::Role;
use vitals_tests::*;

/// Runs a diagnostic to its end: (progress lines, the result or the error).
pub(crate) async fn diagnose(
    profile: &vitals_collector::ctl::Profile,
    q: vitals_collector::ctl::DiagQuery,
) -> (
    Vec<String>,
    Result<vitals_proto::diag::DiagnosticResult, tonic::Status>,
) {
    use vitals_proto::wire::diagnostic_event::Body;
    let mut c = Client::connect(profile).await.expect("connect");
    let mut stream = match c.run_diagnostic(q).await {
        Ok(s) => s,
        Err(vitals_collector::ctl::CtlError::Status(s)) => return (Vec::new(), Err(s)),
        Err(e) => panic!("{e}"),
    };
    let mut progress = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(e)) => match e.body {
                Some(Body::Progress(p)) => progress.push(p),
                Some(Body::Result(r)) => return (progress, Ok(r.into())),
                None => {}
            },
            Ok(None) => {
                return (
                    progress,
                    Err(tonic::Status::unknown("stream ended without a result")),
                );
            }
            Err(s) => return (progress, Err(s)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specialists_run_diagnostics_through_the_relay_and_every_request_is_audited() {
    use std::collections::BTreeMap;
    use vitals_collector::ctl::DiagQuery;
    let fleet = Fleet::new("diag");
    let collector = RunningCollector::start(fleet.collector_config()).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-diag", collector.addr));
    let sam = fleet.specialist_profile("sam", Role::Specialist, collector.addr);
    let vera = fleet.specialist_profile("vera", Role::Viewer, collector.addr);
    eventually(WAIT, "ws-diag online", || async {
        detail(&vera, "ws-diag").await.filter(|d| d.summary.online)
    })
    .await;
    let q = |kind: &str, params: &[(&str, &str)]| DiagQuery {
        endpoint: "ws-diag".into(),
        kind: kind.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };

    // network: a lookup and a TCP connect, answered by the agent.
    let target = collector.addr.to_string();
    let started = std::time::Instant::now();
    let (progress, result) = diagnose(
        &sam,
        q("network", &[("names", "localhost"), ("targets", &target)]),
    )
    .await;
    let r = result.expect("network result");
    assert!(r.ok, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        progress.iter().any(|p| p.contains("lookups")),
        "{progress:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&r.json).expect("json");
    assert_eq!(v["health"]["dns"][0]["name"], "localhost");
    assert_eq!(v["health"]["dns"][0]["ok"], true, "{v}");
    let services = v["health"]["services"].as_array().expect("services");
    assert!(
        services
            .iter()
            .any(|s| s["address"] == target.as_str() && s["ok"] == true),
        "{v}"
    );
    assert!(r.text.contains("localhost"), "{}", r.text);

    // printer: an unknown queue is a clear failure, naming what exists.
    let (_, result) = diagnose(&sam, q("printer", &[("name", "no-such-queue")])).await;
    let r = result.expect("printer result");
    assert!(
        !r.ok && r.error.contains("no printer \"no-such-queue\""),
        "{r:?}"
    );

    // Refusals: a viewer, a kind outside the catalog, a bad parameter.
    let (_, refused) = diagnose(&vera, q("os", &[])).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    let (_, refused) = diagnose(&sam, q("shell", &[("cmd", "id")])).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("unknown diagnostic \"shell\""),
        "{refused}"
    );
    let (_, refused) = diagnose(&sam, q("disk", &[("root", "../etc")])).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The specialist goes away mid-run: the run is cancelled.
    {
        let mut c = Client::connect(&sam).await.expect("connect");
        let mut stream = c
            .run_diagnostic(q("disk", &[("root", "/")]))
            .await
            .expect("start");
        let _first = stream.message().await.expect("progress");
    }
    // The walk of / takes far longer than the cancel needs to land.
    let cancelled = eventually(WAIT, "the abandoned run audited", || async {
        let mut c = Client::connect(&vera).await.ok()?;
        let a = c.audit("ws-diag", "", "disk", 10).await.ok()?;
        a.into_iter()
            .find(|e| e.params.get("root").is_some_and(|r| r == "/"))
    })
    .await;
    assert_eq!(cancelled.outcome, "cancelled", "{cancelled:?}");
    assert_eq!(cancelled.detail, "the specialist went away");

    // With a ticket: the result lands on its timeline, by who ran it.
    let mut c = Client::connect(&sam).await.expect("connect");
    let ticket = c
        .open_ticket(
            "ws-diag",
            "Slow logins",
            "",
            vitals_proto::domain::Severity::Warning,
        )
        .await
        .expect("ticket")
        .ticket
        .id;
    let (_, result) = diagnose(
        &sam,
        DiagQuery {
            ticket: Some(ticket),
            ..q("os", &[])
        },
    )
    .await;
    assert!(result.expect("os result").ok);
    let timeline = ticket_of(&sam, ticket).await.expect("ticket").timeline;
    let attached = timeline.last().expect("an entry");
    assert_eq!(attached.who, "sam");
    assert!(
        attached.text.starts_with("diagnostic os on ws-diag ("),
        "{attached:?}"
    );

    // The agent dies mid-run: a clear error, not a hang.
    let mut c = Client::connect(&sam).await.expect("connect");
    let mut stream = c.run_diagnostic(q("snapshot", &[])).await.expect("start");
    agent.kill().await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("an answer, not a hang");
    match end {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Aborted, "{s}");
            assert!(s.message().contains("ws-diag disconnected"), "{s}");
        }
        // The snapshot may have come back before the kill.
        Ok(None) => {}
        Ok(Some(_)) => unreachable!(),
    }

    // Offline: answered at once, saying since when.
    eventually(WAIT, "ws-diag offline", || async {
        detail(&vera, "ws-diag").await.filter(|d| !d.summary.online)
    })
    .await;
    let started = std::time::Instant::now();
    let (_, offline) = diagnose(&sam, q("os", &[])).await;
    let offline = offline.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(offline.code(), tonic::Code::FailedPrecondition);
    assert!(
        offline.message().contains("ws-diag is offline (last seen"),
        "{offline}"
    );

    // Or, if asked, the request waits for the endpoint to come back.
    let waiting = {
        let sam = sam.clone();
        let q = DiagQuery {
            wait_offline: Duration::from_secs(20),
            ..q("os", &[])
        };
        tokio::spawn(async move { diagnose(&sam, q).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-diag", collector.addr));
    let (_, result) = waiting.await.expect("waiting request");
    assert!(result.expect("result once back").ok);

    // Every request is in the audit log, with who and how it went.
    let mut c = Client::connect(&vera).await.expect("viewer");
    let audit = c.audit("ws-diag", "", "", 50).await.expect("audit");
    let seen: Vec<(&str, &str, &str)> = audit
        .iter()
        .rev()
        .map(|e| (e.who.as_str(), e.kind.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(
        &seen[..5],
        &[
            ("sam", "network", "ok"),
            ("sam", "printer", "failed"),
            ("vera", "os", "refused"),
            ("sam", "shell", "refused"),
            ("sam", "disk", "refused"),
        ]
    );
    assert_eq!(seen[5], ("sam", "disk", "cancelled"));
    assert_eq!(seen[6], ("sam", "os", "ok"));
    assert_eq!(seen[7], ("sam", "snapshot", "disconnected"));
    assert_eq!(seen[8], ("sam", "os", "offline"));
    assert_eq!(seen[9], ("sam", "os", "ok"));
    assert_eq!(audit[3].ticket, Some(ticket), "{:?}", audit[3]);
    assert_eq!(
        audit.last().map(|e| e.params.get("names").cloned()),
        Some(Some("localhost".into()))
    );
    agent.stop().await;
    collector.stop().await;
}
