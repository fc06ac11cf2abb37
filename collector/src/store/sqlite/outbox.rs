//! The notification outbox: deliveries due, and each attempt's outcome.

use super::*;

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, webhook, event, body, attempts FROM webhook_outbox
                 WHERE delivered_ms IS NULL AND dead_ms IS NULL AND next_attempt_ms <= ?1
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    webhook: r.get(1)?,
                    event: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delivery_outcome(&self, id: i64, outcome: DeliveryOutcome) -> Result<(), StoreError> {
        self.write(move |c| {
            match outcome {
                DeliveryOutcome::Delivered { at_ms } => c.execute(
                    "UPDATE webhook_outbox SET delivered_ms = ?2, attempts = attempts + 1,
                        last_error = NULL WHERE id = ?1",
                    params![id, at_ms],
                )?,
                DeliveryOutcome::Retry { next_ms, error } => c.execute(
                    "UPDATE webhook_outbox SET next_attempt_ms = ?2, attempts = attempts + 1,
                        last_error = ?3 WHERE id = ?1",
                    params![id, next_ms, error],
                )?,
                DeliveryOutcome::Dead { at_ms, error } => c.execute(
                    "UPDATE webhook_outbox SET dead_ms = ?2, attempts = attempts + 1,
                        last_error = ?3 WHERE id = ?1",
                    params![id, at_ms, error],
                )?,
            };
            Ok(())
        })
        .await
    }
}
