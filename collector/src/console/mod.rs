//! The specialists' web console. This part: its local accounts (argon2id
//! passwords, one-time passwords, the rules a password must meet) and the
//! operator's `vitals-collector users` commands that manage them.

pub mod accounts;
