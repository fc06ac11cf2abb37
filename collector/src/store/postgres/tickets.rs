//! Tickets on PostgreSQL: the engine's input past its cursor, its state,
//! its one-transaction steps, and the specialists' reads.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use super::*;
use crate::store::{
    AwaitingEvidence, Evidence, OpenCounts, StoredFault, TicketFilter, TicketState, TicketStep,
    TicketStore,
};

/// Each item once, as its last appearance has it, in first-seen order.
fn last_of_each<T, K: std::hash::Hash + Eq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut at: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut out: Vec<&T> = Vec::with_capacity(items.len());
    for item in items {
        match at.entry(key(item)) {
            std::collections::hash_map::Entry::Occupied(e) => out[*e.get()] = item,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(item);
            }
        }
    }
    out
}

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
        // One statement per table whatever the step's size (arrays
        // unnested); a ticket, incident or wait changed twice in a step is
        // written as it ended.
        let tickets = last_of_each(&step.tickets, |t| t.id);
        if !tickets.is_empty() {
            let col =
                |f: &dyn Fn(&Ticket) -> String| tickets.iter().map(|t| f(t)).collect::<Vec<_>>();
            let ids: Vec<i64> = tickets.iter().map(|t| t.id as i64).collect();
            let assignees: Vec<Option<String>> =
                tickets.iter().map(|t| t.assignee.clone()).collect();
            let incidents: Vec<Option<i64>> = tickets
                .iter()
                .map(|t| t.incident.map(|i| i as i64))
                .collect();
            let opened: Vec<i64> = tickets.iter().map(|t| t.opened_ms).collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO tickets (id, endpoint_id, check_id, subject, status, priority,
                                          assignee, incident, opened_ms, updated_ms, body)
                     SELECT id, endpoint_id, check_id, subject, status, priority, assignee,
                            incident, opened_ms, $11, body
                     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[])
                          AS u(id, endpoint_id, check_id, subject, status, priority, assignee,
                               incident, opened_ms, body)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                        check_id = excluded.check_id,
                        priority = excluded.priority, assignee = excluded.assignee,
                        incident = excluded.incident, updated_ms = excluded.updated_ms,
                        body = excluded.body",
                )
                .await?,
                &[
                    &ids,
                    &col(&|t| t.endpoint.clone()),
                    &col(&|t| t.check_id.clone()),
                    &col(&|t| t.subject.clone()),
                    &col(&|t| t.status.as_str().to_owned()),
                    &col(&|t| t.priority.as_str().to_owned()),
                    &assignees,
                    &incidents,
                    &opened,
                    &col(&|t| body_json(t)),
                    &step.now_ms,
                ],
            )
            .await?;
        }
        let incidents = last_of_each(&step.incidents, |i| i.id);
        if !incidents.is_empty() {
            let ids: Vec<i64> = incidents.iter().map(|i| i.id as i64).collect();
            let checks: Vec<String> = incidents.iter().map(|i| i.check_id.clone()).collect();
            let opened: Vec<i64> = incidents.iter().map(|i| i.opened_ms).collect();
            let resolved: Vec<Option<i64>> = incidents.iter().map(|i| i.resolved_ms).collect();
            let bodies: Vec<String> = incidents.iter().map(|i| body_json(*i)).collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO incidents (id, check_id, opened_ms, resolved_ms, body)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[],
                                          $5::text[])
                     ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms,
                        body = excluded.body",
                )
                .await?,
                &[&ids, &checks, &opened, &resolved, &bodies],
            )
            .await?;
        }
        if !step.entries.is_empty() {
            let e = &step.entries;
            let tickets: Vec<Option<i64>> = e.iter().map(|e| e.ticket.map(|t| t as i64)).collect();
            let incidents: Vec<Option<i64>> =
                e.iter().map(|e| e.incident.map(|i| i as i64)).collect();
            let at: Vec<i64> = e.iter().map(|e| e.at_ms).collect();
            let who: Vec<&str> = e.iter().map(|e| e.who.as_str()).collect();
            let kind: Vec<&str> = e.iter().map(|e| e.kind.as_str()).collect();
            let text: Vec<&str> = e.iter().map(|e| e.text.as_str()).collect();
            // In the step's order: a timeline reads back as it happened.
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO ticket_timeline (ticket, incident, at_ms, who, kind, text)
                     SELECT ticket, incident, at_ms, who, kind, text
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                                 $5::text[], $6::text[])
                          WITH ORDINALITY AS u(ticket, incident, at_ms, who, kind, text, n)
                     ORDER BY n",
                )
                .await?,
                &[&tickets, &incidents, &at, &who, &kind, &text],
            )
            .await?;
        }
        if !step.snapshots.is_empty() {
            let tickets: Vec<i64> = step.snapshots.iter().map(|e| e.ticket as i64).collect();
            let bodies: Vec<Vec<u8>> = step
                .snapshots
                .iter()
                .map(|Evidence { snapshot, .. }| crate::store::encode_snapshot(snapshot))
                .collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO ticket_snapshots (ticket, at_ms, body)
                     SELECT ticket, $3, body FROM UNNEST($1::bigint[], $2::bytea[]) AS u(ticket, body)",
                )
                .await?,
                &[&tickets, &bodies, &step.now_ms],
            )
            .await?;
        }
        if !step.deliveries.is_empty() {
            let d = &step.deliveries;
            let webhooks: Vec<&str> = d.iter().map(|d| d.webhook.as_str()).collect();
            let events: Vec<&str> = d.iter().map(|d| d.event.as_str()).collect();
            let bodies: Vec<&str> = d.iter().map(|d| d.body.as_str()).collect();
            // In order: deliveries go out oldest first.
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO webhook_outbox (webhook, event, body, created_ms, next_attempt_ms)
                     SELECT webhook, event, body, $4, $4
                     FROM UNNEST($1::text[], $2::text[], $3::text[])
                          WITH ORDINALITY AS u(webhook, event, body, n)
                     ORDER BY n",
                )
                .await?,
                &[&webhooks, &events, &bodies, &step.now_ms],
            )
            .await?;
        }
        let added = last_of_each(&step.awaiting_added, |a| a.ticket);
        if !added.is_empty() {
            let tickets: Vec<i64> = added.iter().map(|a| a.ticket as i64).collect();
            let endpoints: Vec<&str> = added.iter().map(|a| a.endpoint.as_str()).collect();
            let at: Vec<i64> = added.iter().map(|a| a.fault_at_ms).collect();
            let since: Vec<i64> = added.iter().map(|a| a.since_ms).collect();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO ticket_awaiting (ticket, endpoint_id, fault_at_ms, since_ms)
                     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
                     ON CONFLICT (ticket) DO UPDATE SET endpoint_id = excluded.endpoint_id,
                        fault_at_ms = excluded.fault_at_ms, since_ms = excluded.since_ms",
                )
                .await?,
                &[&tickets, &endpoints, &at, &since],
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
