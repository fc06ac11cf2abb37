//! `vitals-ticket-bench`: how many fault events per second the ticket
//! engine turns into tickets on SQLite, on this machine.
//!
//! Commits `--events` fault events from `--endpoints` endpoints into a
//! fresh database (each endpoint alternating raise and clear of a few
//! checks, so tickets open, update, clear and reopen), then times the
//! engine working through them exactly as after a collector restart:
//! read past the cursor, apply, persist tickets, timeline and cursor in
//! one transaction per batch.

use std::time::{Duration, Instant};

use clap::Parser;
use vitals_collector::store::{self, Record, RecordBody, SessionOpen};
use vitals_proto::domain::{FaultEvent, FaultState, Severity};
use vitals_proto::identity::EndpointId;

#[derive(Parser)]
#[command(
    name = "vitals-ticket-bench",
    about = "Ticket engine throughput on SQLite"
)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 1000)]
    endpoints: u64,
}

const CHECKS: &[&str] = &[
    "disk_nearly_full",
    "printer_jammed",
    "dns_failing",
    "memory_pressure",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("vitals-ticket-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("vitals.db").display());
    let store = store::open(&url, 10, Duration::ZERO).await?;
    let ids: Vec<EndpointId> = (0..args.endpoints)
        .map(|i| format!("ws-{i:05}").parse())
        .collect::<Result<_, _>>()?;
    for id in &ids {
        store
            .open_session(&SessionOpen {
                endpoint: id.clone(),
                agent_version: "bench".into(),
                platform: "bench".into(),
                at_ms: 0,
                machine_id: String::new(),
            })
            .await?;
    }
    let mut batch = Vec::new();
    let mut seq = vec![0u64; ids.len()];
    for n in 0..args.events {
        let e = (n % args.endpoints) as usize;
        seq[e] += 1;
        let round = seq[e];
        let check = CHECKS[(round / 2) as usize % CHECKS.len()];
        batch.push(Record {
            endpoint: ids[e].clone(),
            seq: round,
            received_ms: vitals_proto::now_ms(),
            body: RecordBody::Fault(FaultEvent {
                check_id: check.into(),
                subject: "/".into(),
                state: if round % 2 == 1 {
                    FaultState::Raised
                } else {
                    FaultState::Cleared
                },
                severity: Severity::Warning,
                value: 97.0,
                evidence: format!("{check} on ws-{e:05}"),
                at_ms: vitals_proto::now_ms(),
                // DNS is one ticket per resolver in the shipped policy:
                // its events take the way-in path.
                via: if check == "dns_failing" {
                    "resolver 10.0.0.53".into()
                } else {
                    String::new()
                },
            }),
        });
        if batch.len() == 1024 {
            store.commit(std::mem::take(&mut batch)).await?;
        }
    }
    store.commit(batch).await?;
    let policy = vitals_proto::policy::Policy::default_policy();
    let started = Instant::now();
    let done = vitals_collector::tickets::process_backlog(store.clone(), &policy).await?;
    let secs = started.elapsed().as_secs_f64();
    let tickets = store
        .tickets(store::TicketFilter {
            limit: u32::MAX,
            ..Default::default()
        })
        .await?
        .len();
    println!(
        "{done} fault events from {} endpoints -> {tickets} tickets in {secs:.2} s: {:.0} events/s",
        args.endpoints,
        done as f64 / secs
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
