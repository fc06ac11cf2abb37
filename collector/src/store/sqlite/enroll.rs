//! Enrollment tokens, the certificates the collector signed, and
//! revocation.

use super::*;

const TOKEN_COLUMNS: &str = "id, secret_hash, max_uses, used, expires_ms, site, tags, id_pattern, \
     reenroll, created_ms, created_by, last_used_ms, last_used_by, revoked_ms";

fn token_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollToken> {
    Ok(EnrollToken {
        id: r.get(0)?,
        secret_hash: r.get(1)?,
        max_uses: r.get(2)?,
        used: r.get(3)?,
        expires_ms: r.get(4)?,
        site: r.get(5)?,
        tags: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
        id_pattern: r.get(7)?,
        reenroll: r.get(8)?,
        created_ms: r.get(9)?,
        created_by: r.get(10)?,
        last_used_ms: r.get(11)?,
        last_used_by: r.get(12)?,
        revoked_ms: r.get(13)?,
    })
}

const CERT_COLUMNS: &str =
    "serial, kind, subject, issued_ms, not_after_ms, via, revoked_ms, revoke_reason";

fn cert_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedCert> {
    Ok(IssuedCert {
        serial: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        issued_ms: r.get(3)?,
        not_after_ms: r.get(4)?,
        via: r.get(5)?,
        revoked_ms: r.get(6)?,
        revoke_reason: r.get(7)?,
    })
}

fn insert_cert(c: &Connection, cert: &IssuedCert) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO certificates (serial, kind, subject, issued_ms, not_after_ms, via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            cert.serial,
            cert.kind,
            cert.subject,
            cert.issued_ms,
            cert.not_after_ms,
            cert.via
        ],
    )?;
    Ok(())
}

#[async_trait]
impl EnrollStore for SqliteStore {
    async fn create_token(&self, t: EnrollToken) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO enroll_tokens (id, secret_hash, max_uses, expires_ms, site, tags,
                     id_pattern, reenroll, created_ms, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    t.id,
                    t.secret_hash,
                    t.max_uses,
                    t.expires_ms,
                    t.site,
                    serde_json::to_string(&t.tags).unwrap_or_else(|_| "[]".into()),
                    t.id_pattern,
                    t.reenroll,
                    t.created_ms,
                    t.created_by
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<EnrollToken>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM enroll_tokens ORDER BY created_ms DESC, id"
            ))?;
            let rows = stmt.query_map([], token_from)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn token(&self, id: &str) -> Result<Option<EnrollToken>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE id = ?1"),
                [id],
                token_from,
            )
            .optional()?)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "UPDATE enroll_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms = 0",
                params![id, at_ms],
            )?;
            let exists = n == 1
                || c.query_row("SELECT 1 FROM enroll_tokens WHERE id = ?1", [&id], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            Ok(exists)
        })
        .await
    }

    async fn enroll(&self, e: NewEnrollment) -> Result<Result<(), TokenRefusal>, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let token = tx
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE id = ?1"),
                    [&e.token_id],
                    token_from,
                )
                .optional()?;
            let Some(token) = token else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            if let Some(refusal) = crate::store::unusable_token(&token, e.at_ms) {
                return Ok(Err(refusal));
            }
            let id = e.endpoint.as_str();
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT revoked_ms FROM endpoints WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            if matches!(existing, Some(0)) && !token.reenroll {
                return Ok(Err(TokenRefusal::Clash(id.to_owned())));
            }
            tx.execute(
                "UPDATE enroll_tokens SET used = used + 1, last_used_ms = ?2, last_used_by = ?3
                 WHERE id = ?1",
                params![e.token_id, e.at_ms, id],
            )?;
            // A new enrollment starts the endpoint afresh: bound to this
            // machine, not revoked, no clone flag; its history stays.
            tx.execute(
                "INSERT INTO endpoints (id, hostname, first_seen_ms, last_seen_ms, state_since_ms,
                     enrolled_site, enrolled_tags, machine_id)
                 VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET enrolled_site = ?4, enrolled_tags = ?5,
                     machine_id = ?6, clone_machine_id = '', revoked_ms = 0, revoke_reason = '',
                     hostname = CASE WHEN hostname = '' THEN ?2 ELSE hostname END",
                params![
                    id,
                    e.hostname,
                    e.at_ms,
                    token.site,
                    serde_json::to_string(&token.tags).unwrap_or_else(|_| "[]".into()),
                    e.machine_id
                ],
            )?;
            insert_cert(&tx, &e.certificate)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn record_certificate(&self, cert: IssuedCert) -> Result<(), StoreError> {
        self.write(move |c| Ok(insert_cert(c, &cert)?)).await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        let serial = serial.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"),
                [serial],
                cert_from,
            )
            .optional()?)
        })
        .await
    }

    async fn revoke_endpoint(
        &self,
        id: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE endpoints SET revoked_ms = ?2, revoke_reason = ?3
                 WHERE id = ?1 AND revoked_ms = 0",
                params![id, at_ms, reason],
            )?;
            let seen = n == 1
                || tx
                    .query_row("SELECT 1 FROM endpoints WHERE id = ?1", [&id], |_| Ok(()))
                    .optional()?
                    .is_some();
            tx.execute(
                "UPDATE certificates SET revoked_ms = ?2, revoke_reason = ?3
                 WHERE kind = 'endpoint' AND subject = ?1 AND revoked_ms = 0",
                params![id, at_ms, reason],
            )?;
            tx.commit()?;
            Ok(seen)
        })
        .await
    }

    async fn revoke_specialist(
        &self,
        name: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let (name, reason) = (name.to_owned(), reason.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO revoked_specialists (name, revoked_ms, reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET revoked_ms = ?2, reason = ?3",
                params![name, at_ms, reason],
            )?;
            let n = tx.execute(
                "UPDATE certificates SET revoked_ms = ?2, revoke_reason = ?3
                 WHERE kind = 'specialist' AND subject = ?1 AND revoked_ms = 0",
                params![name, at_ms, reason],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn bind_machine(&self, id: &str, machine_id: &str) -> Result<bool, StoreError> {
        let (id, machine_id) = (id.to_owned(), machine_id.to_owned());
        self.write(move |c| {
            let n = c.execute(
                "UPDATE endpoints SET machine_id = ?2, clone_machine_id = '' WHERE id = ?1",
                params![id, machine_id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn revocations(&self) -> Result<Revocations, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT serial, revoked_ms, revoke_reason FROM certificates
                 WHERE revoked_ms > 0 ORDER BY revoked_ms, serial",
            )?;
            let serials = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = c.prepare_cached(
                "SELECT id, revoked_ms FROM endpoints WHERE revoked_ms > 0 ORDER BY id",
            )?;
            let endpoints = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt =
                c.prepare_cached("SELECT name, revoked_ms FROM revoked_specialists ORDER BY name")?;
            let specialists = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Revocations {
                serials,
                endpoints,
                specialists,
            })
        })
        .await
    }
}
