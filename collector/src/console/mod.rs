//! The specialists' web console. So far: its local accounts (`accounts`:
//! argon2id passwords, one-time passwords, the rules a password must meet,
//! managed by `vitals-collector users`) and its sign-in state (`sessions`:
//! session and CSRF tokens, idle expiry, login throttling). The pages and
//! the listener that use them come next.

pub mod accounts;
pub mod sessions;
