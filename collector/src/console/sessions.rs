//! Console sign-in state: sessions (a random token in an `HttpOnly`,
//! `SameSite=Strict` cookie, a CSRF token of their own, expiry after idle
//! time, a fresh token at every login), and login throttling per account
//! and per source address. In memory: a collector restart signs everyone
//! out, which is the safe side.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use password_hash::rand_core::{OsRng, RngCore};
use vitals_proto::identity::Role;

/// 32 random bytes as lowercase hex: a session id or a CSRF token.
pub fn token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Who a session belongs to, and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub account: String,
    pub role: Role,
    pub sites: Vec<String>,
    /// Sent with every form; a state-changing request without it is refused.
    pub csrf: String,
    /// Signed in with a one-time password: only the change-password page
    /// is open until it is replaced.
    pub must_change_password: bool,
    /// The password was right; the second factor is still to come. Only
    /// the code page is open.
    pub second_factor_due: bool,
    /// Second factors are required and this account has none yet: only
    /// the enrollment page is open.
    pub enroll_due: bool,
    /// A TOTP secret being enrolled, until its first code confirms it.
    pub pending_totp: Option<String>,
    /// Signed in through the city's sign-in service: no local password or
    /// second factor here.
    pub sso: bool,
}

struct Entry {
    session: Session,
    last_seen: Instant,
}

/// The live sessions.
pub struct Sessions {
    idle: Duration,
    live: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Sessions {
            idle,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session after a successful login; returns its id. Any session
    /// the browser brought along is ended first, so an id planted before
    /// login is worth nothing after it.
    pub fn start(&self, previous: Option<&str>, session: Session, now: Instant) -> String {
        let mut live = self.live();
        if let Some(p) = previous {
            live.remove(p);
        }
        live.retain(|_, e| now.duration_since(e.last_seen) < self.idle);
        let id = token();
        live.insert(
            id.clone(),
            Entry {
                session,
                last_seen: now,
            },
        );
        id
    }

    /// The session of a request, touched; `None` if unknown or idle too long
    /// (then it is ended).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut live = self.live();
        let expired = match live.get_mut(id) {
            None => return None,
            Some(e) if now.duration_since(e.last_seen) >= self.idle => true,
            Some(e) => {
                e.last_seen = now;
                return Some(e.session.clone());
            }
        };
        if expired {
            live.remove(id);
        }
        None
    }

    /// Whether a session is live, without counting this as activity (a
    /// page left open with a live stream is still idle).
    pub fn exists(&self, id: &str, now: Instant) -> bool {
        self.live()
            .get(id)
            .is_some_and(|e| now.duration_since(e.last_seen) < self.idle)
    }

    /// Changes a live session in place (after a password change, say).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Session)) -> bool {
        match self.live().get_mut(id) {
            Some(e) => {
                f(&mut e.session);
                true
            }
            None => false,
        }
    }

    pub fn end(&self, id: &str) {
        self.live().remove(id);
    }

    /// Ends every session of an account (disabled, role changed, password
    /// reset): they must sign in again.
    pub fn end_account(&self, account: &str) -> usize {
        let mut live = self.live();
        let before = live.len();
        live.retain(|_, e| e.session.account != account);
        before - live.len()
    }

    pub fn count(&self) -> usize {
        self.live().len()
    }
}

/// Failed logins counted per account and per source address over a
/// window; past the limit, logins are refused until the window has
/// passed since the last failure. A success clears the account's count
/// (not the address's: one address guessing many accounts stays slowed).
pub struct Throttle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<Key, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

impl Throttle {
    pub fn new(limit: u32, window: Duration) -> Self {
        Throttle {
            limit: limit.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(account: &str, from: IpAddr) -> [Key; 2] {
        [
            Key::Account(account.to_ascii_lowercase()),
            Key::Address(from),
        ]
    }

    /// How long until a login for `account` from `from` may be tried;
    /// `None`: now.
    pub fn wait(&self, account: &str, from: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures();
        Self::keys(account, from)
            .iter()
            .filter_map(|k| failures.get(k))
            .filter(|(n, _)| *n >= self.limit)
            .map(|(_, last)| self.window.saturating_sub(now.duration_since(*last)))
            .filter(|left| !left.is_zero())
            .max()
    }

    pub fn failed(&self, account: &str, from: IpAddr, now: Instant) {
        let mut failures = self.failures();
        let window = self.window;
        failures.retain(|_, (_, last)| now.duration_since(*last) < window);
        for k in Self::keys(account, from) {
            let e = failures.entry(k).or_insert((0, now));
            e.0 += 1;
            e.1 = now;
        }
    }

    pub fn succeeded(&self, account: &str) {
        self.failures()
            .remove(&Key::Account(account.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(account: &str) -> Session {
        Session {
            account: account.into(),
            role: Role::Specialist,
            sites: vec![],
            csrf: token(),
            must_change_password: false,
            second_factor_due: false,
            enroll_due: false,
            pending_totp: None,
            sso: false,
        }
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..63]));
    }

    #[test]
    fn sessions_expire_when_idle_and_are_renewed_at_login() {
        let t0 = Instant::now();
        let s = Sessions::new(Duration::from_secs(600));
        let planted = s.start(None, session("ana"), t0);
        let id = s.start(Some(&planted), session("ana"), t0);
        assert_ne!(id, planted);
        assert_eq!(
            s.get(&planted, t0),
            None,
            "the id from before login is ended"
        );
        assert_eq!(
            s.get(&id, t0 + Duration::from_secs(599)).map(|x| x.account),
            Some("ana".into())
        );
        // Touched at 599 s: alive until 1199 s.
        assert!(s.get(&id, t0 + Duration::from_secs(1198)).is_some());
        assert_eq!(
            s.get(&id, t0 + Duration::from_secs(1798)),
            None,
            "idle for 600 s"
        );
        assert_eq!(s.count(), 0, "an expired session is ended");
    }

    #[test]
    fn an_accounts_sessions_end_together() {
        let t0 = Instant::now();
        let s = Sessions::new(Duration::from_secs(600));
        let a1 = s.start(None, session("ana"), t0);
        let _a2 = s.start(None, session("ana"), t0);
        let b = s.start(None, session("bob"), t0);
        assert!(s.update(&a1, |x| x.must_change_password = true));
        assert!(s.get(&a1, t0).expect("live").must_change_password);
        assert_eq!(s.end_account("ana"), 2);
        assert!(s.get(&a1, t0).is_none() && s.get(&b, t0).is_some());
        s.end(&b);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn failed_logins_slow_the_account_and_the_address() {
        let t0 = Instant::now();
        let th = Throttle::new(5, Duration::from_secs(300));
        let here: IpAddr = [192, 0, 2, 10].into();
        let there: IpAddr = [192, 0, 2, 11].into();
        for i in 0..5 {
            assert_eq!(th.wait("ana", here, t0), None, "attempt {i} is allowed");
            th.failed("ana", here, t0);
        }
        let left = th
            .wait("ana", here, t0 + Duration::from_secs(60))
            .expect("locked");
        assert_eq!(left, Duration::from_secs(240));
        assert!(
            th.wait("Ana", there, t0).is_some(),
            "the account is locked from anywhere"
        );
        assert!(
            th.wait("bob", here, t0).is_some(),
            "and the address for any account"
        );
        assert_eq!(th.wait("bob", there, t0), None);
        assert_eq!(
            th.wait("ana", here, t0 + Duration::from_secs(300)),
            None,
            "the window passed"
        );
        th.succeeded("ana");
        assert!(
            th.wait("ana", there, t0).is_none(),
            "a success clears the account"
        );
        assert!(th.wait("bob", here, t0).is_some(), "not the address");
    }
}
