//! The web console's local accounts.

use super::*;

fn account_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Account, String)> {
    let role: String = r.get(1)?;
    let sites: String = r.get(2)?;
    Ok((
        Account {
            name: r.get(0)?,
            // Checked below, where the row's name can be told.
            role: vitals_proto::identity::Role::Viewer,
            sites: serde_json::from_str(&sites).unwrap_or_default(),
            password_hash: r.get(3)?,
            must_change_password: r.get(4)?,
            disabled: r.get(5)?,
            created_ms: r.get(6)?,
            updated_ms: r.get(7)?,
            totp_secret: r.get(8)?,
            recovery_codes: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
        },
        role,
    ))
}

/// A stored role that is not one this collector knows is a damaged row,
/// not a viewer.
fn with_role((mut a, role): (Account, String)) -> Result<Account, StoreError> {
    a.role = role.parse().map_err(|_| StoreError::CorruptAccount {
        name: a.name.clone(),
        what: format!("unknown role {role:?}"),
    })?;
    Ok(a)
}

/// The sites and recovery codes columns: JSON lists of strings.
fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

const COLUMNS: &str = "name, role, sites, password_hash, must_change, disabled, created_ms, \
     updated_ms, totp_secret, recovery_codes";

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(&self, a: Account) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "INSERT INTO console_accounts (name, role, sites, password_hash, must_change,
                    disabled, created_ms, updated_ms, totp_secret, recovery_codes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (name) DO NOTHING",
                params![
                    a.name,
                    a.role.as_str(),
                    json_list(&a.sites),
                    a.password_hash,
                    a.must_change_password,
                    a.disabled,
                    a.created_ms,
                    a.updated_ms,
                    a.totp_secret,
                    json_list(&a.recovery_codes),
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM console_accounts WHERE name = ?1"
            ))?;
            let mut rows = stmt.query_map(params![name], account_from)?;
            rows.next().transpose()?.map(with_role).transpose()
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM console_accounts ORDER BY name"
            ))?;
            let rows = stmt.query_map([], account_from)?;
            rows.map(|r| with_role(r?)).collect()
        })
        .await
    }

    async fn update_account(&self, a: Account) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE console_accounts SET role = ?2, sites = ?3, password_hash = ?4,
                    must_change = ?5, disabled = ?6, updated_ms = ?7, totp_secret = ?8,
                    recovery_codes = ?9
                 WHERE name = ?1",
                params![
                    a.name,
                    a.role.as_str(),
                    json_list(&a.sites),
                    a.password_hash,
                    a.must_change_password,
                    a.disabled,
                    a.updated_ms,
                    a.totp_secret,
                    json_list(&a.recovery_codes),
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }
}
