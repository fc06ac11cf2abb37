//! Tickets on PostgreSQL: the engine's input past its cursor, its state,
//! its one-transaction steps, and the specialists' reads.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use super::*;
use crate::store::{
    AwaitingEvidence, Evidence, NewDelivery, OpenCounts, StoredFault, TicketFilter, TicketState,
    TicketStep, TicketStore,
};

#[async_trait]
impl TicketStore for PgStore {
    async fn fault_events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredFault>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(&format!(
                    "SELECT {FAULT_COLUMNS}, id, endpoint_id FROM fault_events
                     WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .await?,
                &[&after, &(limit as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let endpoint: String = row.try_get(11)?;
            let record = fault_from_row(&endpoint, &row)?;
            out.push(StoredFault {
                id: row.try_get(10)?,
                endpoint,
                event: record.event,
            });
        }
        Ok(out)
    }

    async fn ticket_state(&self) -> Result<TicketState, StoreError> {
        let mut c = self.client().await?;
        // One snapshot of the database for the whole state.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut state = TicketState::default();
        for row in tx
            .query(
                "SELECT id, body FROM tickets
                 WHERE status NOT IN ('resolved', 'closed')
                    OR id IN (SELECT MAX(id) FROM tickets GROUP BY endpoint_id, check_id, subject)
                 ORDER BY id",
                &[],
            )
            .await?
        {
            state
                .tickets
                .push(parse_body(row.try_get(0)?, row.try_get(1)?)?);
        }
        for row in tx
            .query(
                "SELECT id, body FROM incidents WHERE resolved_ms IS NULL ORDER BY id",
                &[],
            )
            .await?
        {
            state
                .incidents
                .push(parse_body(row.try_get(0)?, row.try_get(1)?)?);
        }
        state.max_ticket = tx
            .query_one("SELECT COALESCE(MAX(id), 0) FROM tickets", &[])
            .await?
            .try_get::<_, i64>(0)? as u64;
        state.max_incident = tx
            .query_one("SELECT COALESCE(MAX(id), 0) FROM incidents", &[])
            .await?
            .try_get::<_, i64>(0)? as u64;
        state.cursor = tx
            .query_one(
                "SELECT fault_event_id FROM ticket_cursor WHERE one = 1",
                &[],
            )
            .await?
            .try_get(0)?;
        for r in tx
            .query(
                "SELECT ticket, endpoint_id, fault_at_ms, since_ms FROM ticket_awaiting
                 ORDER BY ticket",
                &[],
            )
            .await?
        {
            state.awaiting.push(AwaitingEvidence {
                ticket: r.try_get::<_, i64>(0)? as u64,
                endpoint: r.try_get(1)?,
                fault_at_ms: r.try_get(2)?,
                since_ms: r.try_get(3)?,
            });
        }
        tx.commit().await?;
        Ok(state)
    }

    async fn save_tickets(&self, step: TicketStep) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        self.fenced(&tx).await?;
        let put = tx
            .prepare_cached(
                "INSERT INTO tickets (id, endpoint_id, check_id, subject, status, priority,
                                      assignee, incident, opened_ms, updated_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                    check_id = excluded.check_id,
                    priority = excluded.priority, assignee = excluded.assignee,
                    incident = excluded.incident, updated_ms = excluded.updated_ms,
                    body = excluded.body",
            )
            .await?;
        for t in &step.tickets {
            tx.execute(
                &put,
                &[
                    &(t.id as i64),
                    &t.endpoint,
                    &t.check_id,
                    &t.subject,
                    &t.status.as_str(),
                    &t.priority.as_str(),
                    &t.assignee,
                    &t.incident.map(|i| i as i64),
                    &t.opened_ms,
                    &step.now_ms,
                    &body_json(t),
                ],
            )
            .await?;
        }
        let put = tx
            .prepare_cached(
                "INSERT INTO incidents (id, check_id, opened_ms, resolved_ms, body)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms,
                    body = excluded.body",
            )
            .await?;
        for i in &step.incidents {
            tx.execute(
                &put,
                &[
                    &(i.id as i64),
                    &i.check_id,
                    &i.opened_ms,
                    &i.resolved_ms,
                    &body_json(i),
                ],
            )
            .await?;
        }
        let put = tx
            .prepare_cached(
                "INSERT INTO ticket_timeline (ticket, incident, at_ms, who, kind, text)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        for e in &step.entries {
            tx.execute(
                &put,
                &[
                    &e.ticket.map(|t| t as i64),
                    &e.incident.map(|i| i as i64),
                    &e.at_ms,
                    &e.who,
                    &e.kind.as_str(),
                    &e.text,
                ],
            )
            .await?;
        }
        let put = tx
            .prepare_cached(
                "INSERT INTO ticket_snapshots (ticket, at_ms, body) VALUES ($1, $2, $3)",
            )
            .await?;
        for Evidence { ticket, snapshot } in &step.snapshots {
            tx.execute(
                &put,
                &[
                    &(*ticket as i64),
                    &step.now_ms,
                    &crate::store::encode_snapshot(snapshot),
                ],
            )
            .await?;
        }
        let put = tx
            .prepare_cached(
                "INSERT INTO webhook_outbox (webhook, event, body, created_ms, next_attempt_ms)
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .await?;
        for NewDelivery {
            webhook,
            event,
            body,
        } in &step.deliveries
        {
            tx.execute(&put, &[webhook, event, body, &step.now_ms])
                .await?;
        }
        let put = tx
            .prepare_cached(
                "INSERT INTO ticket_awaiting (ticket, endpoint_id, fault_at_ms, since_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (ticket) DO UPDATE SET endpoint_id = excluded.endpoint_id,
                    fault_at_ms = excluded.fault_at_ms, since_ms = excluded.since_ms",
            )
            .await?;
        for a in &step.awaiting_added {
            tx.execute(
                &put,
                &[&(a.ticket as i64), &a.endpoint, &a.fault_at_ms, &a.since_ms],
            )
            .await?;
        }
        if !step.awaiting_done.is_empty() {
            let done: Vec<i64> = step.awaiting_done.iter().map(|t| *t as i64).collect();
            tx.execute(
                "DELETE FROM ticket_awaiting WHERE ticket = ANY($1)",
                &[&done],
            )
            .await?;
        }
        tx.execute(
            "UPDATE ticket_cursor SET fault_event_id = $1 WHERE one = 1",
            &[&step.cursor],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tickets(&self, filter: TicketFilter) -> Result<Vec<Ticket>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT id, body FROM tickets
                     WHERE (NOT $1 OR status NOT IN ('resolved', 'closed'))
                       AND ($2::text IS NULL OR endpoint_id = $2)
                       AND ($3::text IS NULL OR check_id = $3)
                       AND ($4::bigint IS NULL OR incident = $4)
                       AND ($5::text IS NULL OR status = $5)
                       AND ($6::text IS NULL OR priority = $6)
                       AND ($7::text IS NULL OR assignee = $7)
                       AND (NOT $9 OR assignee IS NULL)
                     ORDER BY priority, id DESC LIMIT $8",
                )
                .await?,
                &[
                    &filter.open_only,
                    &filter.endpoint,
                    &filter.check_id,
                    &filter.incident.map(|i| i as i64),
                    &filter.status,
                    &filter.priority,
                    &filter.assignee,
                    &(filter.limit.max(1) as i64),
                    &filter.unassigned,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| parse_body(r.try_get(0)?, r.try_get(1)?))
            .collect()
    }

    async fn open_ticket_counts(&self) -> Result<OpenCounts, StoreError> {
        let c = self.client().await?;
        let mut counts = OpenCounts::default();
        for r in c
            .query(
                &c.prepare_cached(
                    "SELECT priority, endpoint_id, COUNT(*) FROM tickets
                     WHERE status NOT IN ('resolved', 'closed') GROUP BY priority, endpoint_id",
                )
                .await?,
                &[],
            )
            .await?
        {
            let n = r.try_get::<_, i64>(2)? as u64;
            *counts.by_priority.entry(r.try_get(0)?).or_default() += n;
            *counts.by_endpoint.entry(r.try_get(1)?).or_default() += n;
        }
        Ok(counts)
    }

    async fn ticket(&self, id: u64) -> Result<Option<TicketDetail>, StoreError> {
        let c = self.client().await?;
        let key = id as i64;
        let Some(row) = c
            .query_opt("SELECT body FROM tickets WHERE id = $1", &[&key])
            .await?
        else {
            return Ok(None);
        };
        let ticket: Ticket = parse_body(key, row.try_get(0)?)?;
        let mut timeline = Vec::new();
        for r in c
            .query(
                &c.prepare_cached(
                    "SELECT incident, at_ms, who, kind, text FROM ticket_timeline
                     WHERE ticket = $1 ORDER BY id",
                )
                .await?,
                &[&key],
            )
            .await?
        {
            let kind: &str = r.try_get(3)?;
            timeline.push(Entry {
                ticket: Some(id),
                incident: r.try_get::<_, Option<i64>>(0)?.map(|i| i as u64),
                at_ms: r.try_get(1)?,
                who: r.try_get(2)?,
                kind: kind.parse().map_err(|_| StoreError::CorruptTicket {
                    id: key,
                    what: format!("timeline kind \"{kind}\""),
                })?,
                text: r.try_get(4)?,
            });
        }
        let snapshot = c
            .query_opt(
                "SELECT body FROM ticket_snapshots WHERE ticket = $1 ORDER BY at_ms DESC LIMIT 1",
                &[&key],
            )
            .await?
            .map(|r| {
                r.try_get::<_, &[u8]>(0)
                    .map_err(StoreError::from)
                    .and_then(|b| parse_snapshot(&ticket.endpoint, 0, b))
            })
            .transpose()?;
        Ok(Some(TicketDetail {
            ticket,
            timeline,
            snapshot,
            knowledge: None,
        }))
    }
}
