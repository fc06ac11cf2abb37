//! The fault policy: from the collector's file to every live agent, and
//! bad edits refused with where they are wrong.

use std::time::Duration;

use vitals_collector::ctl::Client;
use vitals_proto::identity::Role;
use vitals_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_policy_reaches_the_agent_and_its_faults_come_back_once() {
    use vitals_proto::domain::FaultState;
    let fleet = Fleet::new("policy");
    // A check every running machine fails: any memory in use.
    let config = with_policy(
        &fleet,
        "[[check]]\nid = \"memory_in_use\"\nmeasurement = \"memory.used_percent\"\n\
         direction = \"above\"\nraise = 0.001\nclear = 0.0\nhold = \"0s\"\nseverity = \"info\"\n",
    );
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-policy", collector.addr));
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let faults = eventually(WAIT, "fault raised by the agent", || async {
        let f = faults_of(&viewer, "ws-policy").await?;
        (!f.is_empty()).then_some(f)
    })
    .await;
    let f = &faults[0].event;
    assert_eq!(f.check_id, "memory_in_use");
    assert_eq!(f.subject, "memory");
    assert_eq!(f.state, FaultState::Raised);
    assert!(f.value > 0.0);
    // Further samples (one a second) keep the fault raised without repeating it.
    let before = detail(&viewer, "ws-policy")
        .await
        .expect("detail")
        .history_len;
    eventually(WAIT, "three more snapshots", || async {
        let d = detail(&viewer, "ws-policy").await?;
        (d.history_len >= before + 3).then_some(())
    })
    .await;
    let faults = Client::connect(&viewer)
        .await
        .expect("viewer")
        .faults("ws-policy", 50)
        .await
        .expect("faults");
    assert_eq!(
        faults.len(),
        1,
        "raised once, not on every sample: {faults:?}"
    );
    agent.stop().await;
    collector.stop().await;
}

#[test]
fn bad_policy_file_stops_the_collector_with_its_name() {
    let fleet = Fleet::new("badpolicy");
    let config = with_policy(
        &fleet,
        "[[check]]\nid = \"x\"\nmeasurement = \"disk.used_percent\"\ndirection = \"above\"\n\
         raise = 90.0\nclear = 95.0\nseverity = \"warning\"\n",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt
        .block_on(vitals_collector::Collector::open(config))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("policy.toml: check \"x\": clear (95) must be at or below raise (90)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reach_live_agents_and_bad_edits_are_refused() {
    use vitals_proto::domain::FaultState;
    let fleet = Fleet::new("reload");
    let check = |raise: &str| {
        format!(
            "[[check]]\nid = \"memory_in_use\"\nmeasurement = \"memory.used_percent\"\n\
             direction = \"above\"\nraise = {raise}\nclear = 0.0\nhold = \"0s\"\nseverity = \"info\"\n"
        )
    };
    let config = with_policy(&fleet, &check("0.001"));
    let policy_path = config.policy.clone().expect("policy path");
    let collector = RunningCollector::start(config).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-reload", collector.addr));
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let faults = || async {
        Client::connect(&viewer)
            .await
            .ok()?
            .faults("ws-reload", 50)
            .await
            .ok()
    };
    eventually(WAIT, "raised under the first policy", || async {
        faults().await.filter(|f| f.len() == 1)
    })
    .await;

    // A broken edit is refused; the running policy stays and nothing clears.
    std::fs::write(
        &policy_path,
        "[[check]]\nid = \"memory_in_use\"\nmesurement = 1\n",
    )
    .expect("write");
    eventually(WAIT, "the refusal counted", || async {
        collector
            .scrape()
            .await
            .contains("vitals_collector_errors_total{kind=\"policy\"} 1")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        faults().await.expect("faults").len(),
        1,
        "a refused policy changed nothing"
    );

    // A valid edit goes out to the live agent: the check's levels changed,
    // so its fault clears and is judged afresh (and no longer raises).
    let tmp = policy_path.with_extension("tmp");
    std::fs::write(&tmp, check("100.0")).expect("write");
    std::fs::rename(&tmp, &policy_path).expect("rename into place, as editors do");
    let f = eventually(WAIT, "cleared under the new policy", || async {
        faults().await.filter(|f| f.len() == 2)
    })
    .await;
    assert_eq!(f[0].event.state, FaultState::Cleared);
    assert_eq!(f[0].event.check_id, "memory_in_use");
    agent.stop().await;
    collector.stop().await;
}
