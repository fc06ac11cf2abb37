//! Backup and restore: a backup taken while agents stream, restored into a
//! fresh directory, serving the same agents. What was acknowledged after
//! the backup comes back through the agents' resync (their faults held
//! raised, and clears for what the copy still holds raised); nothing is
//! counted twice.

use std::time::Duration;

use vitals_collector::backup;
use vitals_collector::ctl::{Client, TicketQuery};
use vitals_proto::domain::Snapshot;
use vitals_proto::identity::Role;
use vitals_tests::links::LinkAgent;
use vitals_tests::{Fleet, RunningAgent, RunningCollector, eventually, with_policy};

const WAIT: Duration = Duration::from_secs(30);

fn check(id: &str) -> String {
    format!(
        "[[check]]\nid = \"{id}\"\nmeasurement = \"memory.used_percent\"\n\
         direction = \"above\"\nraise = 0.001\nclear = 0.0\nhold = \"0s\"\nseverity = \"warning\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_collector_serves_the_same_agents_and_loses_nothing() {
    let fleet = Fleet::new("backup");
    let mut config = with_policy(&fleet, &check("memory_a"));
    // The database in the file is SQLite's (PostgreSQL is dumped with its
    // own tools).
    config.storage.url = None;
    let policy_path = config.policy.clone().expect("policy");
    let collector = RunningCollector::start(config.clone()).await;
    let agent = RunningAgent::start(fleet.agent_config("ws-bk", collector.addr));
    let viewer = fleet.specialist_profile("ana", Role::Viewer, collector.addr);
    let tickets = |addr| {
        let viewer = fleet.specialist_profile("ana", Role::Viewer, addr);
        async move {
            Client::connect(&viewer)
                .await
                .ok()?
                .tickets(TicketQuery {
                    endpoint: "ws-bk".into(),
                    limit: 50,
                    ..Default::default()
                })
                .await
                .ok()
        }
    };
    eventually(WAIT, "memory_a raised and ticketed", || async {
        tickets(collector.addr)
            .await
            .filter(|t| t.iter().any(|t| t.check_id == "memory_a"))
    })
    .await;

    // Load beside the backup: twenty more desks streaming snapshots.
    let load: Vec<LinkAgent> = (0..20)
        .map(|i| {
            let id = format!("ld-{i:02}");
            LinkAgent::start(&id, fleet.agent_config(&id, collector.addr))
        })
        .collect();
    let load = std::sync::Arc::new(load);
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (load, streaming) = (load.clone(), streaming.clone());
        tokio::spawn(async move {
            while streaming.load(std::sync::atomic::Ordering::SeqCst) {
                for a in load.iter() {
                    let s = Snapshot {
                        taken_at_ms: vitals_proto::now_ms(),
                        ..Default::default()
                    };
                    a.send(vitals_agent::link::Outgoing::Snapshot(Box::new(s)))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let file = fleet.dir.join("collector.backup");
    let taken = {
        let (config, file) = (config.clone(), file.clone());
        tokio::task::spawn_blocking(move || backup::backup(&config, &file))
            .await
            .expect("join")
            .expect("backup under load")
    };
    assert_eq!(taken.manifest.storage, "sqlite");
    let names: Vec<&str> = taken
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    for want in [
        backup::DATABASE,
        "pki/ca.pem",
        "pki/ca.key",
        "pki/collector.key",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }

    // After the backup: memory_a goes from the policy (its fault clears)
    // and memory_b raises. Both are acknowledged, then the server is lost.
    std::fs::write(&policy_path, check("memory_b")).expect("policy");
    eventually(WAIT, "memory_b ticketed, memory_a cleared", || async {
        let t = tickets(collector.addr).await?;
        let a = t.iter().find(|t| t.check_id == "memory_a")?;
        (t.iter().any(|t| t.check_id == "memory_b") && a.cleared_ms.is_some()).then_some(())
    })
    .await;
    streaming.store(false, std::sync::atomic::Ordering::SeqCst);
    feeder.await.expect("feeder");
    let port = collector.stop().await;

    // A fresh directory, restored; the same port, the same agents.
    let restored = fleet.dir.join("restored");
    let manifest = backup::restore(&file, &restored).expect("restore");
    assert_eq!(manifest, taken.manifest);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(restored.join("pki/ca.key"))
            .expect("ca key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key stays private: {mode:o}");
    }
    let mut config = config.clone();
    config.data_dir = restored.clone();
    let collector = RunningCollector::start_on(config, port).await;
    let t = eventually(
        WAIT,
        "the resync: memory_b back, memory_a cleared",
        || async {
            let t = tickets(collector.addr).await?;
            let a = t.iter().find(|t| t.check_id == "memory_a")?;
            (t.iter().any(|t| t.check_id == "memory_b") && a.cleared_ms.is_some()).then_some(t)
        },
    )
    .await;
    // Nothing doubled: one ticket per check.
    for id in ["memory_a", "memory_b"] {
        assert_eq!(
            t.iter().filter(|t| t.check_id == id).count(),
            1,
            "{id}: {t:?}"
        );
    }
    // The desks under load are served again and what they send is committed.
    for a in load.iter() {
        let s = Snapshot {
            taken_at_ms: vitals_proto::now_ms(),
            ..Default::default()
        };
        a.send(vitals_agent::link::Outgoing::Snapshot(Box::new(s)))
            .await;
    }
    eventually(
        WAIT,
        "every loaded desk drained into the restored collector",
        || async { load.iter().all(|a| a.drained()).then_some(()) },
    )
    .await;
    let mut c = Client::connect(&viewer).await.expect("connect");
    let online = c.list_endpoints(true).await.expect("list");
    assert_eq!(online.len(), 21, "{online:?}");
    let lines = c.faults("ws-bk", 100).await.expect("faults");
    let mut seqs: Vec<u64> = lines.iter().map(|f| f.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), lines.len(), "each sequence stored once");
    agent.stop().await;
    if let Ok(load) = std::sync::Arc::try_unwrap(load) {
        for a in load {
            a.stop().await;
        }
    }
    collector.stop().await;
}

#[test]
fn restore_refuses_a_used_directory_and_a_damaged_file() {
    let fleet = Fleet::new("backup-bad");
    let mut config = fleet.collector_config();
    config.storage.url = None;
    let dir = fleet.dir.clone();
    std::fs::create_dir_all(dir.join("kb")).expect("kb");
    std::fs::write(dir.join("kb/printer.md"), "# Printers\n").expect("kb file");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A database to copy.
    rt.block_on(async {
        vitals_collector::store::open_with(
            &config.storage_url(),
            &vitals_collector::store::StoreOptions::new(10, Duration::ZERO),
        )
        .await
        .expect("store");
    });
    let file = dir.join("a.backup");
    backup::backup(&config, &file).expect("backup");

    let used = dir.join("used");
    std::fs::create_dir_all(&used).expect("dir");
    std::fs::write(used.join("x"), "x").expect("file");
    let e = backup::restore(&file, &used).expect_err("used").to_string();
    assert!(e.contains("is not empty"), "{e}");

    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let damaged = dir.join("damaged.backup");
    std::fs::write(&damaged, &bytes).expect("write");
    let target = dir.join("from-damaged");
    let e = backup::restore(&damaged, &target)
        .expect_err("damaged")
        .to_string();
    assert!(
        e.contains("damaged") || e.contains("not a readable backup") || e.contains("manifest"),
        "{e}"
    );
    assert!(!target.exists(), "nothing left behind");

    let good = dir.join("from-good");
    backup::restore(&file, &good).expect("restore");
    assert_eq!(
        std::fs::read_to_string(good.join("kb/printer.md")).expect("kb"),
        "# Printers\n"
    );
}
