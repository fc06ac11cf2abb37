//! The notification outbox on PostgreSQL.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::*;
use crate::store::{Delivery, DeliveryOutcome, OutboxStore};

#[async_trait]
impl OutboxStore for PgStore {
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT id, webhook, event, body, attempts FROM webhook_outbox
                     WHERE delivered_ms IS NULL AND dead_ms IS NULL AND next_attempt_ms <= $1
                     ORDER BY id LIMIT $2",
                )
                .await?,
                &[&now_ms, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    id: r.try_get(0)?,
                    webhook: r.try_get(1)?,
                    event: r.try_get(2)?,
                    body: r.try_get(3)?,
                    attempts: r.try_get::<_, i32>(4)? as u32,
                })
            })
            .collect()
    }

    async fn delivery_outcome(&self, id: i64, outcome: DeliveryOutcome) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        // The leader's term checked and the outcome written in one
        // transaction.
        let c = c.transaction().await?;
        self.fenced(&c).await?;
        match outcome {
            DeliveryOutcome::Delivered { at_ms } => {
                c.execute(
                    "UPDATE webhook_outbox SET delivered_ms = $2, attempts = attempts + 1,
                        last_error = NULL WHERE id = $1",
                    &[&id, &at_ms],
                )
                .await?
            }
            DeliveryOutcome::Retry { next_ms, error } => {
                c.execute(
                    "UPDATE webhook_outbox SET next_attempt_ms = $2, attempts = attempts + 1,
                        last_error = $3 WHERE id = $1",
                    &[&id, &next_ms, &error],
                )
                .await?
            }
            DeliveryOutcome::Dead { at_ms, error } => {
                c.execute(
                    "UPDATE webhook_outbox SET dead_ms = $2, attempts = attempts + 1,
                        last_error = $3 WHERE id = $1",
                    &[&id, &at_ms, &error],
                )
                .await?
            }
        };
        c.commit().await?;
        Ok(())
    }
}
