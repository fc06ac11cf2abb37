//! `vitals-outbox-bench`: what the agent's outbox file costs per message,
//! in CPU and wall time, on this machine.
//!
//! Queues `--messages` real snapshots of this machine (and a fault event
//! after every tenth) through the link's outbox, acknowledging them
//! in batches as a collector would, once in memory only and once backed by
//! the outbox file on disk (each record flushed with `sync_data`). The
//! difference is the file's cost. A third run takes the outage path:
//! every message is queued while the link is down (one record each), then
//! numbered as it goes out when the link is back (one record per batch).

use std::time::{Duration, Instant};

use clap::Parser;
use vitals_agent::link::{Outbox, Outgoing};
use vitals_proto::domain::{FaultEvent, FaultState, Severity};

#[derive(Parser)]
#[command(
    name = "vitals-outbox-bench",
    about = "Cost of the agent's outbox file"
)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Acknowledge after this many messages.
    #[arg(long, default_value_t = 10)]
    ack_every: u64,
    /// Instead: queue this many snapshots as during an outage and report
    /// the memory it takes, with the outbox file and then in memory only.
    #[arg(long)]
    backlog: Option<u64>,
    /// With --backlog: pad each snapshot to about this many bytes encoded.
    #[arg(long, default_value_t = 3000)]
    snapshot_bytes: usize,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory taken by `n` queued snapshots of about `size` bytes each.
fn backlog(n: u64, size: usize) -> anyhow::Result<()> {
    let mut snapshot = vitals_agent::probes::system_snapshot(Duration::from_millis(200));
    snapshot.host.hostname = "x".repeat(size.saturating_sub(200));
    let encoded =
        prost::Message::encoded_len(&vitals_proto::wire::Snapshot::from(snapshot.clone()));
    let dir = std::env::temp_dir().join(format!("vitals-outbox-backlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let before = rss_kib();
    let mut on_file = Outbox::open(&dir, usize::MAX, u64::MAX);
    for _ in 0..n {
        on_file.push(Outgoing::Snapshot(Box::new(snapshot.clone())));
    }
    let with_file = rss_kib().saturating_sub(before);
    let file = std::fs::metadata(dir.join("outbox.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    // A restart: the outbox file is replayed record by record.
    drop(on_file);
    let before = rss_kib();
    let on_file = Outbox::open(&dir, usize::MAX, u64::MAX);
    anyhow::ensure!(
        on_file.len() as u64 == n,
        "replayed {} of {n}",
        on_file.len()
    );
    let reopened = rss_kib().saturating_sub(before);
    let before = rss_kib();
    let mut memory = Outbox::new(usize::MAX);
    for _ in 0..n {
        memory.push(Outgoing::Snapshot(Box::new(snapshot.clone())));
    }
    let in_memory = rss_kib().saturating_sub(before);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{n} snapshots of {encoded} bytes queued ({} MiB on disk)",
        file >> 20
    );
    println!(
        "memory with the outbox file: {with_file} KiB ({} bytes per message)",
        with_file * 1024 / n
    );
    println!("memory after replaying it, as at a restart: {reopened} KiB");
    println!(
        "memory without it:       {in_memory} KiB, holding {} of them (the memory-only bound, {} MiB)",
        memory.len(),
        vitals_agent::link::MEMORY_ONLY_BYTES >> 20
    );
    drop((on_file, memory));
    Ok(())
}

/// User + system CPU of this process, in clock ticks (100 per second).
fn cpu_ticks() -> u64 {
    vitals_tests::loadgen::procstat::cpu_ticks("self", false).unwrap_or(0)
}

fn run(p: &mut Outbox, args: &Args, snapshot: &vitals_proto::domain::Snapshot) -> (f64, f64) {
    let (t0, c0) = (Instant::now(), cpu_ticks());
    for seq in 1..=args.messages {
        p.push_numbered(seq, message(seq, snapshot));
        if seq % args.ack_every == 0 {
            p.ack(seq);
        }
    }
    let wall = t0.elapsed().as_secs_f64() * 1e6 / args.messages as f64;
    let cpu = (cpu_ticks() - c0) as f64 * 10_000.0 / args.messages as f64;
    (cpu, wall)
}

/// The outage path: everything queued first, then numbered and sent.
fn run_outage(
    p: &mut Outbox,
    args: &Args,
    snapshot: &vitals_proto::domain::Snapshot,
    seq: &mut vitals_agent::seq::SeqCounter,
) -> anyhow::Result<(f64, f64)> {
    let (t0, c0) = (Instant::now(), cpu_ticks());
    for n in 1..=args.messages {
        p.push(message(n, snapshot));
    }
    let mut sent: u64 = 0;
    while let Some(m) = p.next(seq)? {
        sent += 1;
        if sent.is_multiple_of(args.ack_every) {
            p.ack(m.seq);
        }
    }
    anyhow::ensure!(sent == args.messages, "sent {sent} of {}", args.messages);
    let wall = t0.elapsed().as_secs_f64() * 1e6 / args.messages as f64;
    let cpu = (cpu_ticks() - c0) as f64 * 10_000.0 / args.messages as f64;
    Ok((cpu, wall))
}

fn message(n: u64, snapshot: &vitals_proto::domain::Snapshot) -> Outgoing {
    if n.is_multiple_of(10) {
        Outgoing::Fault(FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            state: FaultState::Raised,
            severity: Severity::Warning,
            value: 96.0,
            evidence: "/ at 96%".into(),
            at_ms: vitals_proto::now_ms(),
            via: String::new(),
        })
    } else {
        Outgoing::Snapshot(Box::new(snapshot.clone()))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.backlog {
        return backlog(n.max(1), args.snapshot_bytes);
    }
    let snapshot = vitals_agent::probes::system_snapshot(Duration::from_millis(200));
    let encoded =
        prost::Message::encoded_len(&vitals_proto::wire::Snapshot::from(snapshot.clone()));
    let dir = std::env::temp_dir().join(format!("vitals-outbox-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mem_cpu, mem_wall) = run(&mut Outbox::new(100_000), &args, &snapshot);
    let mut on_file = Outbox::open(&dir, 100_000, 64 * 1024 * 1024);
    anyhow::ensure!(
        on_file.file_error().is_none(),
        "outbox file: {:?}",
        on_file.file_error()
    );
    let (j_cpu, j_wall) = run(&mut on_file, &args, &snapshot);
    let file = std::fs::metadata(dir.join("outbox.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let mut outage = Outbox::open(&dir, 100_000, 64 * 1024 * 1024);
    let mut seq = vitals_agent::seq::SeqCounter::open(&dir)?;
    let (o_cpu, o_wall) = run_outage(&mut outage, &args, &snapshot, &mut seq)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} messages (snapshot {encoded} bytes encoded, a fault event every 10th), ack every {}",
        args.messages, args.ack_every
    );
    println!("in memory:         CPU {mem_cpu:.1} µs/message, wall {mem_wall:.1} µs/message");
    println!("with outbox file:  CPU {j_cpu:.1} µs/message, wall {j_wall:.1} µs/message");
    println!(
        "outbox file cost:  CPU {:.1} µs/message, wall {:.1} µs/message (file left at {file} bytes)",
        j_cpu - mem_cpu,
        j_wall - mem_wall
    );
    println!(
        "outage path (queued, then numbered as sent): CPU {o_cpu:.1} µs/message, wall {o_wall:.1} µs/message"
    );
    Ok(())
}
