//! Tickets: the engine's input (fault events past its cursor), its state to
//! resume from, its one-transaction steps, and the specialists' reads.

use super::*;

#[async_trait]
impl TicketStore for SqliteStore {
    async fn fault_events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredFault>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, received_ms, at_ms, check_id, state, severity, subject, value, evidence,
                        via, id, endpoint_id
                 FROM fault_events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let endpoint: String = row.get(11)?;
                let record = fault_from_row(&endpoint, row)?;
                out.push(StoredFault {
                    id: row.get(10)?,
                    endpoint,
                    event: record.event,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ticket_state(&self) -> Result<TicketState, StoreError> {
        self.read(|c| {
            let mut state = TicketState::default();
            let mut stmt = c.prepare(
                "SELECT id, body FROM tickets
                 WHERE status NOT IN ('resolved', 'closed')
                    OR id IN (SELECT MAX(id) FROM tickets GROUP BY endpoint_id, check_id, subject)
                 ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                state
                    .tickets
                    .push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            let mut stmt =
                c.prepare("SELECT id, body FROM incidents WHERE resolved_ms IS NULL ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                state
                    .incidents
                    .push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            state.max_ticket = c.query_row("SELECT COALESCE(MAX(id), 0) FROM tickets", [], |r| {
                r.get::<_, i64>(0)
            })? as u64;
            state.max_incident =
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM incidents", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
            state.cursor = c.query_row(
                "SELECT fault_event_id FROM ticket_cursor WHERE one = 1",
                [],
                |r| r.get(0),
            )?;
            let mut stmt = c.prepare(
                "SELECT ticket, endpoint_id, fault_at_ms, since_ms FROM ticket_awaiting
                 ORDER BY ticket",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(crate::store::AwaitingEvidence {
                    ticket: r.get::<_, i64>(0)? as u64,
                    endpoint: r.get(1)?,
                    fault_at_ms: r.get(2)?,
                    since_ms: r.get(3)?,
                })
            })?;
            for row in rows {
                state.awaiting.push(row?);
            }
            Ok(state)
        })
        .await
    }

    async fn save_tickets(&self, step: TicketStep) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT INTO tickets (id, endpoint_id, check_id, subject, status, priority,
                                          assignee, incident, opened_ms, updated_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                        check_id = excluded.check_id,
                        priority = excluded.priority, assignee = excluded.assignee,
                        incident = excluded.incident, updated_ms = excluded.updated_ms,
                        body = excluded.body",
                )?;
                for t in &step.tickets {
                    put.execute(params![
                        t.id as i64,
                        t.endpoint,
                        t.check_id,
                        t.subject,
                        t.status.as_str(),
                        t.priority.as_str(),
                        t.assignee,
                        t.incident.map(|i| i as i64),
                        t.opened_ms,
                        step.now_ms,
                        body_json(t),
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO incidents (id, check_id, opened_ms, resolved_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms,
                        body = excluded.body",
                )?;
                for i in &step.incidents {
                    put.execute(params![
                        i.id as i64,
                        i.check_id,
                        i.opened_ms,
                        i.resolved_ms,
                        body_json(i),
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO ticket_timeline (ticket, incident, at_ms, who, kind, text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for e in &step.entries {
                    put.execute(params![
                        e.ticket.map(|t| t as i64),
                        e.incident.map(|i| i as i64),
                        e.at_ms,
                        e.who,
                        e.kind.as_str().to_owned(),
                        e.text,
                    ])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO ticket_snapshots (ticket, at_ms, body) VALUES (?1, ?2, ?3)",
                )?;
                for crate::store::Evidence { ticket, snapshot } in &step.snapshots {
                    put.execute(params![*ticket as i64, step.now_ms, crate::store::encode_snapshot(snapshot)])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT INTO webhook_outbox (webhook, event, body, created_ms, next_attempt_ms)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                )?;
                for crate::store::NewDelivery {
                    webhook,
                    event,
                    body,
                } in &step.deliveries
                {
                    put.execute(params![webhook, event, body, step.now_ms])?;
                }
                let mut put = tx.prepare_cached(
                    "INSERT OR REPLACE INTO ticket_awaiting (ticket, endpoint_id, fault_at_ms, since_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for a in &step.awaiting_added {
                    put.execute(params![a.ticket as i64, a.endpoint, a.fault_at_ms, a.since_ms])?;
                }
                let mut done = tx.prepare_cached("DELETE FROM ticket_awaiting WHERE ticket = ?1")?;
                for t in &step.awaiting_done {
                    done.execute(params![*t as i64])?;
                }
                tx.execute(
                    "UPDATE ticket_cursor SET fault_event_id = ?1 WHERE one = 1",
                    params![step.cursor],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn tickets(&self, filter: TicketFilter) -> Result<Vec<Ticket>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, body FROM tickets
                 WHERE (?1 = 0 OR status NOT IN ('resolved', 'closed'))
                   AND (?2 IS NULL OR endpoint_id = ?2)
                   AND (?3 IS NULL OR check_id = ?3)
                   AND (?4 IS NULL OR incident = ?4)
                   AND (?5 IS NULL OR status = ?5)
                   AND (?6 IS NULL OR priority = ?6)
                   AND (?7 IS NULL OR assignee = ?7)
                   AND (?9 = 0 OR assignee IS NULL)
                 ORDER BY priority, id DESC LIMIT ?8",
            )?;
            let mut rows = stmt.query(params![
                filter.open_only,
                filter.endpoint,
                filter.check_id,
                filter.incident.map(|i| i as i64),
                filter.status,
                filter.priority,
                filter.assignee,
                filter.limit.max(1),
                filter.unassigned,
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(parse_body(row.get(0)?, &row.get::<_, String>(1)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn open_ticket_counts(&self) -> Result<crate::store::OpenCounts, StoreError> {
        self.read(|c| {
            let mut counts = crate::store::OpenCounts::default();
            let mut stmt = c.prepare_cached(
                "SELECT priority, endpoint_id, COUNT(*) FROM tickets
                 WHERE status NOT IN ('resolved', 'closed') GROUP BY priority, endpoint_id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let n = r.get::<_, i64>(2)? as u64;
                *counts.by_priority.entry(r.get(0)?).or_default() += n;
                *counts.by_endpoint.entry(r.get(1)?).or_default() += n;
            }
            Ok(counts)
        })
        .await
    }

    async fn ticket(&self, id: u64) -> Result<Option<TicketDetail>, StoreError> {
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM tickets WHERE id = ?1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(body) = body else { return Ok(None) };
            let ticket: Ticket = parse_body(id as i64, &body)?;
            let mut stmt = c.prepare_cached(
                "SELECT incident, at_ms, who, kind, text FROM ticket_timeline
                 WHERE ticket = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![id as i64])?;
            let mut entries = Vec::new();
            while let Some(r) = rows.next()? {
                let kind: String = r.get(3)?;
                entries.push(Entry {
                    ticket: Some(id),
                    incident: r.get::<_, Option<i64>>(0)?.map(|i| i as u64),
                    at_ms: r.get(1)?,
                    who: r.get(2)?,
                    kind: kind.parse().map_err(|_| StoreError::CorruptTicket {
                        id: id as i64,
                        what: format!("timeline kind \"{kind}\""),
                    })?,
                    text: r.get(4)?,
                });
            }
            let snapshot: Option<StoredSnapshot> = c
                .query_row(
                    "SELECT body FROM ticket_snapshots WHERE ticket = ?1 ORDER BY at_ms DESC LIMIT 1",
                    params![id as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let snapshot = snapshot
                .map(|b| parse_snapshot(&ticket.endpoint, 0, &b))
                .transpose()?;
            Ok(Some(TicketDetail {
                ticket,
                timeline: entries,
                snapshot,
                knowledge: None,
            }))
        })
        .await
    }
}
