//! Local console accounts: creating, listing, disabling, resetting and
//! re-roling them, and checking a password at login. Passwords are kept
//! only as argon2id hashes; a new or reset account gets a one-time
//! password that must be changed at the first login.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use password_hash::rand_core::{OsRng, RngCore};
use vitals_proto::identity::Role;

use crate::store::{Account, Store, StoreError};

/// The shortest password a person may choose.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account named {0:?} exists already")]
    Exists(String),
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    #[error("account names are 1 to 64 letters, digits, '.', '-', '_' or '@': {0:?}")]
    BadName(String),
    #[error("{0}")]
    WeakPassword(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a login attempt's password check found. The reasons stay in the
/// server's log and the audit trail; a person at the login form is told
/// only "wrong name or password" (or that the account is disabled after
/// the password was right), so names cannot be probed.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Ok(Account),
    Disabled,
    Wrong,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

/// Whether a chosen password is acceptable: long enough, not the account's
/// name, not one character repeated.
pub fn password_rules(name: &str, password: &str) -> Result<(), AccountError> {
    let chars: Vec<char> = password.chars().collect();
    if chars.len() < MIN_PASSWORD_CHARS {
        return Err(AccountError::WeakPassword(format!(
            "a password has at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.eq_ignore_ascii_case(name) {
        return Err(AccountError::WeakPassword(
            "a password is not the account's name".into(),
        ));
    }
    if chars.iter().all(|c| *c == chars[0]) {
        return Err(AccountError::WeakPassword(
            "a password is not one character repeated".into(),
        ));
    }
    Ok(())
}

/// Password hashes run on two threads of their own. Each argon2id run
/// takes 19 MiB and tens of milliseconds of a core: a burst of sign-ins
/// (or a flood of guesses) queues here instead of taking the collector's
/// CPU, and the memory freed after a run stays with these two threads'
/// allocator arenas instead of one per blocking thread.
const HASH_THREADS: usize = 2;

type HashJob = Box<dyn FnOnce() + Send>;

fn hash_queue() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<HashJob>> {
    static QUEUE: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<HashJob>>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..HASH_THREADS {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
        }
        std::sync::Mutex::new(tx)
    })
}

/// Runs a hash or a verification on the password threads.
async fn hashing<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: HashJob = Box::new(move || {
        let _ = tx.send(f());
    });
    hash_queue()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    rx.await.map_err(|e| AccountError::Hash(e.to_string()))
}

/// [`hash`] on the password threads.
async fn hash_off(password: &str) -> Result<String, AccountError> {
    let p = password.to_owned();
    hashing(move || hash(&p)).await?
}

/// An argon2id hash of `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches the stored hash; a damaged hash matches
/// nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A one-time password: 20 characters from an alphabet without look-alikes
/// (no 0/O, 1/l/I), about 100 bits, in groups of five for reading aloud.
pub fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::new();
    let mut i = 0;
    while i < 20 {
        let mut b = [0u8; 1];
        OsRng.fill_bytes(&mut b);
        // Rejection sampling keeps every character equally likely.
        if usize::from(b[0]) >= 256 - 256 % ALPHABET.len() {
            continue;
        }
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(b[0]) % ALPHABET.len()]));
        i += 1;
    }
    out
}

/// The console's accounts over the store.
#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Accounts { store }
    }

    /// Adds an account with a one-time password, which is returned.
    pub async fn add(
        &self,
        name: &str,
        role: Role,
        sites: Vec<String>,
    ) -> Result<String, AccountError> {
        if !valid_name(name) {
            return Err(AccountError::BadName(name.to_owned()));
        }
        let password = one_time_password();
        let hashed = hash_off(&password).await?;
        let now = vitals_proto::now_ms();
        let created = self
            .store
            .create_account(Account {
                name: name.to_owned(),
                role,
                sites,
                password_hash: hashed,
                must_change_password: true,
                disabled: false,
                created_ms: now,
                updated_ms: now,
                totp_secret: None,
                recovery_codes: Vec::new(),
            })
            .await?;
        if created {
            Ok(password)
        } else {
            Err(AccountError::Exists(name.to_owned()))
        }
    }

    pub async fn get(&self, name: &str) -> Result<Account, AccountError> {
        self.store
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NoSuchAccount(name.to_owned()))
    }

    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        Ok(self.store.accounts().await?)
    }

    async fn change(
        &self,
        name: &str,
        f: impl FnOnce(&mut Account) -> Result<(), AccountError>,
    ) -> Result<Account, AccountError> {
        let mut a = self
            .store
            .account(name)
            .await?
            .ok_or_else(|| AccountError::NoSuchAccount(name.to_owned()))?;
        f(&mut a)?;
        a.updated_ms = vitals_proto::now_ms();
        if !self.store.update_account(a.clone()).await? {
            return Err(AccountError::NoSuchAccount(name.to_owned()));
        }
        Ok(a)
    }

    /// Disables (or enables again) an account; its password is kept.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<Account, AccountError> {
        self.change(name, |a| {
            a.disabled = disabled;
            Ok(())
        })
        .await
    }

    pub async fn set_role(
        &self,
        name: &str,
        role: Role,
        sites: Option<Vec<String>>,
    ) -> Result<Account, AccountError> {
        self.change(name, |a| {
            a.role = role;
            if let Some(s) = sites {
                a.sites = s;
            }
            Ok(())
        })
        .await
    }

    /// A new one-time password for an account, which is returned.
    pub async fn reset_password(&self, name: &str) -> Result<String, AccountError> {
        let password = one_time_password();
        let hashed = hash_off(&password).await?;
        self.change(name, |a| {
            a.password_hash = hashed;
            a.must_change_password = true;
            Ok(())
        })
        .await?;
        Ok(password)
    }

    /// The account's own new password, replacing a one-time one too.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<Account, AccountError> {
        password_rules(name, password)?;
        let hashed = hash_off(password).await?;
        self.change(name, |a| {
            a.password_hash = hashed;
            a.must_change_password = false;
            Ok(())
        })
        .await
    }

    /// Enrolls a second factor (its secret and the hashes of its recovery
    /// codes), or with `None` removes it.
    pub async fn set_totp(
        &self,
        name: &str,
        totp: Option<(String, Vec<String>)>,
    ) -> Result<Account, AccountError> {
        self.change(name, |a| {
            (a.totp_secret, a.recovery_codes) = match totp {
                Some((secret, codes)) => (Some(secret), codes),
                None => (None, Vec::new()),
            };
            Ok(())
        })
        .await
    }

    /// Uses up a recovery code; false if it is not one of the account's.
    pub async fn use_recovery_code(&self, name: &str, code: &str) -> Result<bool, AccountError> {
        let hashed = super::totp::recovery_hash(code);
        let mut found = false;
        self.change(name, |a| {
            let before = a.recovery_codes.len();
            a.recovery_codes
                .retain(|h| !super::sessions::same_token(h, &hashed));
            found = a.recovery_codes.len() < before;
            Ok(())
        })
        .await?;
        Ok(found)
    }

    /// Checks a login's name and password. An unknown name costs a hash
    /// like a known one, so timing does not tell which names exist.
    pub async fn check(&self, name: &str, password: &str) -> Result<Check, AccountError> {
        let account = self.store.account(name).await?;
        let stored = account.as_ref().map(|a| a.password_hash.clone());
        let password = password.to_owned();
        let matched = hashing(move || match stored {
            Some(h) => verify(&password, &h),
            None => {
                let _ = hash(&password);
                false
            }
        })
        .await?;
        Ok(match account {
            Some(a) if matched && a.disabled => Check::Disabled,
            Some(a) if matched => Check::Ok(a),
            _ => Check::Wrong,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accounts() -> (Accounts, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "vitals-accounts-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.join("v.db"),
            10,
            std::time::Duration::ZERO,
        )
        .await
        .expect("store");
        (Accounts::new(Arc::new(store)), dir)
    }

    #[test]
    fn one_time_passwords_are_long_unambiguous_and_differ() {
        let a = one_time_password();
        let b = one_time_password();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23, "{a}");
        assert_eq!(a.split('-').count(), 4);
        assert!(!a.chars().any(|c| "0O1lI".contains(c)), "{a}");
    }

    #[test]
    fn password_rules_refuse_short_named_and_repeated() {
        assert!(password_rules("ana", "short").is_err());
        assert!(password_rules("ana.silva.helpdesk", "ANA.SILVA.HELPDESK").is_err());
        assert!(password_rules("ana", "aaaaaaaaaaaaaaaa").is_err());
        assert!(password_rules("ana", "correct horse battery").is_ok());
    }

    #[tokio::test]
    async fn an_account_lives_from_one_time_password_to_disabled() {
        let (accounts, dir) = accounts().await;
        let first = accounts
            .add("ana", Role::Specialist, vec!["dispatch".into()])
            .await
            .expect("add");
        assert!(matches!(
            accounts.add("ana", Role::Admin, vec![]).await,
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            accounts.add("a b", Role::Viewer, vec![]).await,
            Err(AccountError::BadName(_))
        ));
        let Check::Ok(a) = accounts.check("ana", &first).await.expect("check") else {
            panic!("the one-time password is accepted");
        };
        assert!(a.must_change_password, "and must be changed");
        assert_eq!(a.sites, vec!["dispatch"]);
        assert!(!a.password_hash.contains(&first), "only a hash is kept");
        assert!(
            a.password_hash.starts_with("$argon2id$"),
            "{}",
            a.password_hash
        );
        assert_eq!(
            accounts.check("ana", "not it at all").await.expect("check"),
            Check::Wrong
        );
        assert_eq!(
            accounts.check("nobody", &first).await.expect("check"),
            Check::Wrong
        );

        accounts
            .set_password("ana", "correct horse battery")
            .await
            .expect("own password");
        let Check::Ok(a) = accounts
            .check("ana", "correct horse battery")
            .await
            .expect("check")
        else {
            panic!("the new password is accepted");
        };
        assert!(!a.must_change_password);
        assert_eq!(
            accounts.check("ana", &first).await.expect("check"),
            Check::Wrong,
            "the old one is not"
        );

        let a = accounts
            .set_role("ana", Role::Admin, Some(vec![]))
            .await
            .expect("role");
        assert_eq!((a.role, a.sites.len()), (Role::Admin, 0));
        accounts.set_disabled("ana", true).await.expect("disable");
        assert_eq!(
            accounts
                .check("ana", "correct horse battery")
                .await
                .expect("check"),
            Check::Disabled
        );
        let again = accounts.reset_password("ana").await.expect("reset");
        let listed = accounts.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].must_change_password && listed[0].disabled,
            "a reset does not enable"
        );
        assert_ne!(again, first);
        assert!(matches!(
            accounts.reset_password("bob").await,
            Err(AccountError::NoSuchAccount(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
