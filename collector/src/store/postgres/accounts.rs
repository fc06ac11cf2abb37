//! The web console's local accounts on PostgreSQL.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::*;
use crate::store::{Account, AccountStore};

const COLUMNS: &str = "name, role, sites, password_hash, must_change, disabled, created_ms, \
     updated_ms, totp_secret, recovery_codes";

/// A stored role that is not one this collector knows is a damaged row,
/// not a viewer.
fn account_from(r: &Row) -> Result<Account, StoreError> {
    let name: String = r.try_get(0)?;
    let role: &str = r.try_get(1)?;
    Ok(Account {
        role: role.parse().map_err(|_| StoreError::CorruptAccount {
            name: name.clone(),
            what: format!("unknown role {role:?}"),
        })?,
        name,
        sites: serde_json::from_str(r.try_get(2)?).unwrap_or_default(),
        password_hash: r.try_get(3)?,
        must_change_password: r.try_get(4)?,
        disabled: r.try_get(5)?,
        created_ms: r.try_get(6)?,
        updated_ms: r.try_get(7)?,
        totp_secret: r.try_get(8)?,
        recovery_codes: serde_json::from_str(r.try_get(9)?).unwrap_or_default(),
    })
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(&self, a: Account) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO console_accounts (name, role, sites, password_hash, must_change,
                    disabled, created_ms, updated_ms, totp_secret, recovery_codes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING",
                &[
                    &a.name,
                    &a.role.as_str(),
                    &crate::store::json_text(&a.sites),
                    &a.password_hash,
                    &a.must_change_password,
                    &a.disabled,
                    &a.created_ms,
                    &a.updated_ms,
                    &a.totp_secret,
                    &crate::store::json_text(&a.recovery_codes),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let c = self.client().await?;
        c.query_opt(
            &c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM console_accounts WHERE name = $1"
            ))
            .await?,
            &[&name],
        )
        .await?
        .map(|r| account_from(&r))
        .transpose()
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let c = self.client().await?;
        c.query(
            &c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM console_accounts ORDER BY name"
            ))
            .await?,
            &[],
        )
        .await?
        .iter()
        .map(account_from)
        .collect()
    }

    async fn update_account(&self, a: Account) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE console_accounts SET role = $2, sites = $3, password_hash = $4,
                    must_change = $5, disabled = $6, updated_ms = $7, totp_secret = $8,
                    recovery_codes = $9
                 WHERE name = $1",
                &[
                    &a.name,
                    &a.role.as_str(),
                    &crate::store::json_text(&a.sites),
                    &a.password_hash,
                    &a.must_change_password,
                    &a.disabled,
                    &a.updated_ms,
                    &a.totp_secret,
                    &crate::store::json_text(&a.recovery_codes),
                ],
            )
            .await?;
        Ok(n == 1)
    }
}
