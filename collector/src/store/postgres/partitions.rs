//! The snapshot history's partitions: one table per span of receive time,
//! named `snapshots_p<start ms>`, made ahead of time and dropped whole once
//! past retention. The database's own catalog is the list of partitions;
//! replicas maintaining them at the same moment take turns under an
//! advisory lock.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::LOCK_PARTITIONS;
use crate::store::StoreError;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How wide partitions are and how long they are kept.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub retention_ms: i64,
    pub span_ms: i64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintained {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Receive times below this have a partition.
    pub covered_until: i64,
}

/// One partition and the receive times it holds, `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Plan {
    /// About 24 partitions over the retention, each a whole number of
    /// hours between one hour and one day.
    pub fn new(retention: Duration) -> Plan {
        let retention_ms = (retention.as_millis() as i64).max(HOUR_MS);
        let span_ms = ((retention_ms / 24) / HOUR_MS * HOUR_MS).clamp(HOUR_MS, DAY_MS);
        Plan {
            retention_ms,
            span_ms,
        }
    }

    fn align(&self, ms: i64) -> i64 {
        ms.div_euclid(self.span_ms) * self.span_ms
    }

    /// Makes partitions for `now_ms` and the next two spans, and drops
    /// those whose newest possible row is older than the retention.
    pub async fn maintain(
        &self,
        client: &mut deadpool_postgres::Object,
        now_ms: i64,
    ) -> Result<Maintained, StoreError> {
        let from = self.align(now_ms);
        let until = from + 3 * self.span_ms;
        self.apply(client, &[(from, until)], Some(now_ms - self.retention_ms))
            .await
    }

    /// Makes the partitions holding each of `times` (receive times outside
    /// the usual window: a clock that jumped, a moved installation's
    /// history). Past retention, they go at the next maintenance.
    pub async fn cover(
        &self,
        client: &mut deadpool_postgres::Object,
        times: impl IntoIterator<Item = i64>,
    ) -> Result<Maintained, StoreError> {
        let mut spans: Vec<(i64, i64)> = times
            .into_iter()
            .map(|t| {
                let a = self.align(t);
                (a, a + self.span_ms)
            })
            .collect();
        spans.sort_unstable();
        spans.dedup();
        self.apply(client, &spans, None).await
    }

    async fn apply(
        &self,
        client: &mut deadpool_postgres::Object,
        spans: &[(i64, i64)],
        drop_before: Option<i64>,
    ) -> Result<Maintained, StoreError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS])
            .await?;
        let mut existing = partitions(&tx).await?;
        let mut done = Maintained {
            covered_until: spans.iter().map(|s| s.1).max().unwrap_or(0),
            ..Maintained::default()
        };
        for &(from, until) in spans {
            for (a, b) in gaps(&existing, from, until, self.span_ms) {
                let name = format!("snapshots_p{a}");
                tx.batch_execute(&format!(
                    "CREATE TABLE {name} PARTITION OF snapshots FOR VALUES FROM ({a}) TO ({b})"
                ))
                .await?;
                existing.push(Partition {
                    name: name.clone(),
                    from_ms: a,
                    to_ms: b,
                });
                done.created.push(name);
            }
        }
        if let Some(horizon) = drop_before {
            for p in existing.iter().filter(|p| p.to_ms <= horizon) {
                tx.batch_execute(&format!("DROP TABLE {}", p.name)).await?;
                done.dropped.push(p.name.clone());
            }
        }
        tx.commit().await?;
        Ok(done)
    }
}

/// The history's partitions, oldest first.
pub async fn partitions(c: &impl GenericClient) -> Result<Vec<Partition>, StoreError> {
    let rows = c
        .query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'snapshots'::regclass",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        let bound: String = row.try_get(1)?;
        let Some((from_ms, to_ms)) = parse_bound(&bound) else {
            return Err(StoreError::Pool(format!(
                "history partition {name} has bounds this collector does not read: {bound}"
            )));
        };
        out.push(Partition {
            name,
            from_ms,
            to_ms,
        });
    }
    out.sort_by_key(|p| p.from_ms);
    Ok(out)
}

/// Reads `FOR VALUES FROM ('1') TO ('2')` (quotes optional).
fn parse_bound(bound: &str) -> Option<(i64, i64)> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    let num = |s: &str| s.trim().trim_matches('\'').parse::<i64>().ok();
    Some((num(from)?, num(to)?))
}

/// The ranges within `[from, until)` no existing partition covers, cut at
/// span boundaries so every new partition lies within one span.
fn gaps(existing: &[Partition], from: i64, until: i64, span: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = from;
    while at < until {
        if let Some(p) = existing.iter().find(|p| p.from_ms <= at && at < p.to_ms) {
            at = p.to_ms;
            continue;
        }
        let span_end = (at.div_euclid(span) + 1) * span;
        let next_start = existing
            .iter()
            .filter(|p| p.from_ms > at)
            .map(|p| p.from_ms)
            .min()
            .unwrap_or(i64::MAX);
        let end = span_end.min(next_start).min(until);
        out.push((at, end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from_ms: i64, to_ms: i64) -> Partition {
        Partition {
            name: format!("snapshots_p{from_ms}"),
            from_ms,
            to_ms,
        }
    }

    #[test]
    fn spans_follow_the_retention() {
        assert_eq!(Plan::new(Duration::from_secs(86_400)).span_ms, HOUR_MS);
        assert_eq!(Plan::new(Duration::from_secs(600)).span_ms, HOUR_MS);
        assert_eq!(
            Plan::new(Duration::from_secs(7 * 86_400)).span_ms,
            7 * HOUR_MS
        );
        assert_eq!(Plan::new(Duration::from_secs(365 * 86_400)).span_ms, DAY_MS);
    }

    #[test]
    fn gaps_fill_around_existing_partitions_without_overlap() {
        let span = 10;
        assert_eq!(gaps(&[], 0, 30, span), vec![(0, 10), (10, 20), (20, 30)]);
        // Partitions of an older, wider span are kept and filled around.
        let existing = [part(5, 25)];
        assert_eq!(gaps(&existing, 0, 30, span), vec![(0, 5), (25, 30)]);
        assert_eq!(
            gaps(&[part(0, 10), part(10, 20), part(20, 30)], 0, 30, span),
            vec![]
        );
    }

    #[test]
    fn bounds_read_as_the_catalog_prints_them() {
        assert_eq!(
            parse_bound("FOR VALUES FROM ('1700000000000') TO ('1700003600000')"),
            Some((1_700_000_000_000, 1_700_003_600_000))
        );
        assert_eq!(parse_bound("FOR VALUES FROM (5) TO (10)"), Some((5, 10)));
        assert_eq!(parse_bound("DEFAULT"), None);
    }
}
