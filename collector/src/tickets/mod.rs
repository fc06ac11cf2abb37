//! Tickets: the help desk's queue, filled from fault events.
//!
//! `engine` holds the rules (dedup, auto-resolve, reopen, flapping, storms,
//! priority and SLA, maintenance) as a pure state machine. Persisting its
//! timeline, the `Specialist` API and notifications attach to it.

pub mod engine;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{info, warn};
use vitals_proto::policy::Policy;

use crate::store::{Store, StoreError, TicketStep};
use engine::Engine;

/// How often time-driven rules (quiet periods, SLAs) are looked at when no
/// fault event arrives.
const TICK: Duration = Duration::from_secs(1);
/// Fault events read per step.
const BATCH: u32 = 1000;

/// Runs the ticket engine until `stop` turns true: reads fault events past
/// its cursor whenever ingest commits some (`wake`) and at least every
/// second, and persists each step with the cursor in one transaction.
pub async fn run(
    store: Arc<dyn Store>,
    mut policy: watch::Receiver<Arc<Policy>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let state = store.ticket_state().await?;
    let rules = policy.borrow_and_update().tickets.clone();
    info!(
        open = state.tickets.len(),
        cursor = state.cursor,
        "ticket engine starting"
    );
    let mut cursor = state.cursor;
    let mut engine = Engine::restore(
        rules,
        state.tickets,
        state.incidents,
        state.max_ticket,
        state.max_incident,
    );
    loop {
        if policy.has_changed().unwrap_or(false) {
            engine.set_rules(policy.borrow_and_update().tickets.clone());
        }
        let now = vitals_proto::now_ms();
        let events = store.fault_events_after(cursor, BATCH).await?;
        let full = events.len() == BATCH as usize;
        let mut entries = Vec::new();
        let before = cursor;
        for (id, endpoint, event) in events {
            entries.extend(engine.on_fault(&endpoint, &event, now));
            cursor = id;
        }
        entries.extend(engine.tick(now));
        if !entries.is_empty() || cursor != before {
            let (tickets, incidents) = engine.changed(&entries);
            store
                .save_tickets(TicketStep {
                    tickets,
                    incidents,
                    entries,
                    cursor,
                    now_ms: now,
                })
                .await?;
        }
        engine.prune(now);
        if full {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Runs the engine, restarting it after a storage error (a full disk, a
/// locked file) instead of giving up on tickets for good.
pub async fn supervise(
    store: Arc<dyn Store>,
    policy: watch::Receiver<Arc<Policy>>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) {
    loop {
        match run(store.clone(), policy.clone(), wake.clone(), stop.clone()).await {
            Ok(()) => return,
            Err(error) => {
                warn!(%error, "ticket engine stopped; restarting from the stored state");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
