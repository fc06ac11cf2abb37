//! Which replica leads: the one that runs the ticket engine and the
//! notification sender. With SQLite there is one collector per database
//! file, so it always leads. With PostgreSQL every replica campaigns for a
//! session-held advisory lock (see `store::postgres::campaign`); the
//! replica holding it leads until its database session ends (a crash, a
//! lost link, a stop), and a standby takes the lock within a second or so.
//! The store fences the leader's writes: a ticket step or delivery record
//! from a replica that no longer holds the lock is refused.

use tokio::sync::watch;

/// Whether this replica leads now, as it changes: `None` until its first
/// try for the lead has an answer.
#[derive(Debug, Clone)]
pub struct Leading(watch::Receiver<Option<bool>>);

impl Leading {
    pub fn new(rx: watch::Receiver<Option<bool>>) -> Leading {
        Leading(rx)
    }

    /// A collector that always leads (one per database).
    pub fn always() -> Leading {
        let (tx, rx) = watch::channel(Some(true));
        // Kept for the life of the process: the value never changes.
        std::mem::forget(tx);
        Leading(rx)
    }

    /// Leads now (false while undecided).
    pub fn now(&self) -> bool {
        *self.0.borrow() == Some(true)
    }

    /// Waits until leadership is `wanted`; pending forever if that can no
    /// longer happen.
    pub async fn until(&mut self, wanted: bool) {
        if self.0.wait_for(|v| *v == Some(wanted)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until the first try for the lead has an answer.
    pub async fn decided(&mut self) {
        if self.0.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
