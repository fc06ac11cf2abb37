//! Enrollment tokens, signed certificates and revocation on PostgreSQL.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::*;
use crate::store::{
    EnrollStore, EnrollToken, IssuedCert, NewEnrollment, Revocations, TokenRefusal,
};

const TOKEN_COLUMNS: &str = "id, secret_hash, max_uses, used, expires_ms, site, tags, id_pattern, \
     reenroll, created_ms, created_by, last_used_ms, last_used_by, revoked_ms";

fn token_from(r: &Row) -> Result<EnrollToken, StoreError> {
    Ok(EnrollToken {
        id: r.try_get(0)?,
        secret_hash: r.try_get(1)?,
        max_uses: r.try_get::<_, i64>(2)? as u32,
        used: r.try_get::<_, i64>(3)? as u32,
        expires_ms: r.try_get(4)?,
        site: r.try_get(5)?,
        tags: serde_json::from_str(r.try_get(6)?).unwrap_or_default(),
        id_pattern: r.try_get(7)?,
        reenroll: r.try_get(8)?,
        created_ms: r.try_get(9)?,
        created_by: r.try_get(10)?,
        last_used_ms: r.try_get(11)?,
        last_used_by: r.try_get(12)?,
        revoked_ms: r.try_get(13)?,
    })
}

const CERT_COLUMNS: &str =
    "serial, kind, subject, issued_ms, not_after_ms, via, revoked_ms, revoke_reason";

fn cert_from(r: &Row) -> Result<IssuedCert, StoreError> {
    Ok(IssuedCert {
        serial: r.try_get(0)?,
        kind: r.try_get(1)?,
        subject: r.try_get(2)?,
        issued_ms: r.try_get(3)?,
        not_after_ms: r.try_get(4)?,
        via: r.try_get(5)?,
        revoked_ms: r.try_get(6)?,
        revoke_reason: r.try_get(7)?,
    })
}

async fn insert_cert(c: &impl GenericClient, cert: &IssuedCert) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO certificates (serial, kind, subject, issued_ms, not_after_ms, via)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &cert.serial,
            &cert.kind,
            &cert.subject,
            &cert.issued_ms,
            &cert.not_after_ms,
            &cert.via,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl EnrollStore for PgStore {
    async fn create_token(&self, t: EnrollToken) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO enroll_tokens (id, secret_hash, max_uses, expires_ms, site, tags,
                 id_pattern, reenroll, created_ms, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &t.id,
                &t.secret_hash,
                &(t.max_uses as i64),
                &t.expires_ms,
                &t.site,
                &crate::store::json_text(&t.tags),
                &t.id_pattern,
                &t.reenroll,
                &t.created_ms,
                &t.created_by,
            ],
        )
        .await?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<EnrollToken>, StoreError> {
        let c = self.client().await?;
        c.query(
            &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens ORDER BY created_ms DESC, id"),
            &[],
        )
        .await?
        .iter()
        .map(token_from)
        .collect()
    }

    async fn token(&self, id: &str) -> Result<Option<EnrollToken>, StoreError> {
        let c = self.client().await?;
        c.query_opt(
            &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| token_from(&r))
        .transpose()
    }

    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE enroll_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms = 0",
                &[&id, &at_ms],
            )
            .await?;
        Ok(n == 1
            || c.query_opt("SELECT 1 FROM enroll_tokens WHERE id = $1", &[&id])
                .await?
                .is_some())
    }

    async fn enroll(&self, e: NewEnrollment) -> Result<Result<(), TokenRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The token's row locked: two desks using its last use at once
        // cannot both have it.
        let Some(token) = tx
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS} FROM enroll_tokens WHERE id = $1 FOR UPDATE"),
                &[&e.token_id],
            )
            .await?
            .map(|r| token_from(&r))
            .transpose()?
        else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if let Some(refusal) = crate::store::unusable_token(&token, e.at_ms) {
            return Ok(Err(refusal));
        }
        let id = e.endpoint.as_str();
        let existing: Option<i64> = tx
            .query_opt("SELECT revoked_ms FROM endpoints WHERE id = $1", &[&id])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if matches!(existing, Some(0)) && !token.reenroll {
            return Ok(Err(TokenRefusal::Clash(id.to_owned())));
        }
        tx.execute(
            "UPDATE enroll_tokens SET used = used + 1, last_used_ms = $2, last_used_by = $3
             WHERE id = $1",
            &[&e.token_id, &e.at_ms, &id],
        )
        .await?;
        // A new enrollment starts the endpoint afresh: bound to this
        // machine, not revoked, no clone flag; its history stays.
        tx.execute(
            "INSERT INTO endpoints (id, hostname, first_seen_ms, last_seen_ms, state_since_ms,
                 enrolled_site, enrolled_tags, machine_id)
             VALUES ($1, $2, $3, $3, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET enrolled_site = $4, enrolled_tags = $5,
                 machine_id = $6, clone_machine_id = '', revoked_ms = 0, revoke_reason = '',
                 hostname = CASE WHEN endpoints.hostname = '' THEN $2
                                 ELSE endpoints.hostname END",
            &[
                &id,
                &e.hostname,
                &e.at_ms,
                &token.site,
                &crate::store::json_text(&token.tags),
                &e.machine_id,
            ],
        )
        .await?;
        insert_cert(&tx, &e.certificate).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn record_certificate(&self, cert: IssuedCert) -> Result<(), StoreError> {
        let c = self.client().await?;
        insert_cert(&c, &cert).await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<IssuedCert>, StoreError> {
        let c = self.client().await?;
        c.query_opt(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"),
            &[&serial],
        )
        .await?
        .map(|r| cert_from(&r))
        .transpose()
    }

    async fn revoke_endpoint(
        &self,
        id: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE endpoints SET revoked_ms = $2, revoke_reason = $3
                 WHERE id = $1 AND revoked_ms = 0",
                &[&id, &at_ms, &reason],
            )
            .await?;
        let seen = n == 1
            || tx
                .query_opt("SELECT 1 FROM endpoints WHERE id = $1", &[&id])
                .await?
                .is_some();
        tx.execute(
            "UPDATE certificates SET revoked_ms = $2, revoke_reason = $3
             WHERE kind = 'endpoint' AND subject = $1 AND revoked_ms = 0",
            &[&id, &at_ms, &reason],
        )
        .await?;
        tx.commit().await?;
        Ok(seen)
    }

    async fn revoke_specialist(
        &self,
        name: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO revoked_specialists (name, revoked_ms, reason) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET revoked_ms = $2, reason = $3",
            &[&name, &at_ms, &reason],
        )
        .await?;
        let n = tx
            .execute(
                "UPDATE certificates SET revoked_ms = $2, revoke_reason = $3
                 WHERE kind = 'specialist' AND subject = $1 AND revoked_ms = 0",
                &[&name, &at_ms, &reason],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn bind_machine(&self, id: &str, machine_id: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE endpoints SET machine_id = $2, clone_machine_id = '' WHERE id = $1",
                &[&id, &machine_id],
            )
            .await?;
        Ok(n == 1)
    }

    async fn revocations(&self) -> Result<Revocations, StoreError> {
        let c = self.client().await?;
        let serials = c
            .query(
                "SELECT serial, revoked_ms, revoke_reason FROM certificates
                 WHERE revoked_ms > 0 ORDER BY revoked_ms, serial",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let endpoints = c
            .query(
                "SELECT id, revoked_ms FROM endpoints WHERE revoked_ms > 0 ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let specialists = c
            .query(
                "SELECT name, revoked_ms FROM revoked_specialists ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Revocations {
            serials,
            endpoints,
            specialists,
        })
    }
}
