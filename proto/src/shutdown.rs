//! Shutdown: one signal that many tasks wait on.
//!
//! The binary (or a test) holds the [`Trigger`]; every task that must stop
//! holds a [`Shutdown`], cloned as often as needed. A task checks
//! [`Shutdown::is_requested`] between steps or awaits
//! [`Shutdown::requested`] in a `select!`. Dropping the trigger counts as a
//! request too, so a task never outlives whoever could have stopped it.

use tokio::sync::watch;

/// Asks every [`Shutdown`] made from it to stop.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Tells a task that it should stop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and the first of its listeners.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Asks every listener to stop. Asking twice changes nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether stopping was asked for (or the trigger is gone).
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Completes once stopping is asked for, or the trigger is dropped.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_the_trigger_and_a_dropped_trigger() {
        let (trigger, mut first) = channel();
        let mut second = trigger.subscribe();
        assert!(!first.is_requested());
        trigger.trigger();
        first.requested().await;
        second.requested().await;
        assert!(first.is_requested() && second.is_requested());

        let (trigger, mut orphan) = channel();
        drop(trigger);
        orphan.requested().await;
        assert!(orphan.is_requested());
    }
}
