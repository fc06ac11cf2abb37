//! The session registry: which agent session is live for each endpoint.
//!
//! It is the one owner of that fact. Ingest attaches a session when it
//! opens (after storage recorded it) and detaches it when it ends; the
//! diagnostic relay only looks sessions up. A newer session of the same
//! endpoint replaces the older one at once: the older is told to stop
//! (`replaced`), and everything that was routed through it learns that it
//! ended (`ended`), so a diagnostic waiting on it fails at once instead of
//! hanging. This is also the seam a replicated collector will need: the
//! registry answers "where is this endpoint's session" on this replica;
//! the relay asks the other replicas (see `relay::remote`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use vitals_proto::diag::DiagnosticRequest;
use vitals_proto::identity::EndpointId;

/// What a session must send down its stream for the relay.
#[derive(Debug)]
pub enum Command {
    /// Boxed: the command channel is allocated per session, 32 slots at a time.
    Run(Box<DiagnosticRequest>),
    Cancel(u64),
    /// End the session now, telling the agent why (it was revoked).
    Close(String),
}

/// Commands waiting for a session before the relay feels backpressure.
const COMMANDS: usize = 64;

struct Live {
    generation: u64,
    replaced: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    ended: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    live: HashMap<EndpointId, Live>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
    /// Woken whenever a session attaches.
    attached: Notify,
}

/// A session as its own task holds it.
pub struct Attached {
    pub endpoint: EndpointId,
    /// Tells this session apart from earlier and later ones of the endpoint.
    pub generation: u64,
    /// Completes when a newer session of the same endpoint took over.
    pub replaced: Arc<Notify>,
    /// Diagnostic requests and cancels to send down the stream.
    pub commands: mpsc::Receiver<Command>,
}

/// A way down a live session, for the relay.
pub struct Route {
    pub generation: u64,
    pub commands: mpsc::Sender<Command>,
    /// Turns true when the session ends or is replaced.
    pub ended: watch::Receiver<bool>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `endpoint` starts. Returns it, and whether it replaced
    /// an older one (which is told to stop and counts as ended).
    pub fn attach(&self, endpoint: &EndpointId) -> (Attached, bool) {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let replaced = Arc::new(Notify::new());
        let (generation, old) = {
            let mut inner = self.lock();
            inner.next += 1;
            let generation = inner.next;
            let old = inner.live.insert(
                endpoint.clone(),
                Live {
                    generation,
                    replaced: replaced.clone(),
                    commands: tx,
                    ended: watch::Sender::new(false),
                },
            );
            (generation, old)
        };
        let had_old = old.is_some();
        if let Some(old) = old {
            // notify_one stores a permit, so the old session sees it even if
            // it is not waiting at this instant.
            old.replaced.notify_one();
            old.ended.send_replace(true);
        }
        self.attached.notify_waiters();
        (
            Attached {
                endpoint: endpoint.clone(),
                generation,
                replaced,
                commands: rx,
            },
            had_old,
        )
    }

    /// Ends the endpoint's live session now, if it has one, telling the
    /// agent why. True if there was one.
    pub fn cut(&self, endpoint: &EndpointId, reason: &str) -> bool {
        let inner = self.lock();
        let Some(live) = inner.live.get(endpoint) else {
            return false;
        };
        if live
            .commands
            .try_send(Command::Close(reason.to_owned()))
            .is_err()
        {
            // Its queue is full of diagnostics: end it as if replaced.
            live.replaced.notify_one();
        }
        true
    }

    /// The session ends. True if it was still the endpoint's live one
    /// (false if a newer session had replaced it).
    pub fn detach(&self, session: &Attached) -> bool {
        let mut inner = self.lock();
        let current = inner
            .live
            .get(&session.endpoint)
            .is_some_and(|l| l.generation == session.generation);
        if current && let Some(l) = inner.live.remove(&session.endpoint) {
            l.ended.send_replace(true);
        }
        current
    }

    /// Ends session `generation` of `endpoint` because a session of the
    /// same endpoint opened on another replica: it is told to stop, and
    /// counts as ended at once, but stays attached until its task
    /// detaches it (which records nothing: the other replica holds the
    /// endpoint now). False if that session is no longer the live one.
    pub fn evict(&self, endpoint: &str, generation: u64) -> bool {
        let inner = self.lock();
        let Some(l) = inner
            .live
            .get(endpoint)
            .filter(|l| l.generation == generation)
        else {
            return false;
        };
        l.replaced.notify_one();
        l.ended.send_replace(true);
        true
    }

    /// The way down `endpoint`'s live session, if it has one.
    pub fn route(&self, endpoint: &str) -> Option<Route> {
        let inner = self.lock();
        let l = inner.live.get(endpoint).filter(|l| !*l.ended.borrow())?;
        Some(Route {
            generation: l.generation,
            commands: l.commands.clone(),
            ended: l.ended.subscribe(),
        })
    }

    /// The commands of session `generation` of `endpoint`, if it is still
    /// the live one.
    pub fn commands_of(&self, endpoint: &str, generation: u64) -> Option<mpsc::Sender<Command>> {
        let inner = self.lock();
        inner
            .live
            .get(endpoint)
            .filter(|l| l.generation == generation)
            .map(|l| l.commands.clone())
    }

    /// The way down session `generation` of `endpoint`, while it is live.
    pub fn route_of(&self, endpoint: &str, generation: u64) -> Option<Route> {
        self.route(endpoint).filter(|r| r.generation == generation)
    }

    pub fn is_online(&self, endpoint: &str) -> bool {
        self.route(endpoint).is_some()
    }

    /// Completes at the next attach of any session.
    pub fn attached(&self) -> tokio::sync::futures::Notified<'_> {
        self.attached.notified()
    }

    /// Waits until `endpoint` has a session here, at most `within`.
    pub async fn wait_online(&self, endpoint: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attached = self.attached();
            if self.is_online(endpoint) {
                return true;
            }
            if tokio::time::timeout_at(deadline, attached).await.is_err() {
                return self.is_online(endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str) -> EndpointId {
        id.parse().expect("endpoint id")
    }

    #[test]
    fn a_newer_session_replaces_the_older_and_only_the_live_one_detaches() {
        let sessions = Sessions::default();
        let (first, replaced) = sessions.attach(&ep("ws-1"));
        assert!(!replaced);
        let route = sessions.route("ws-1").expect("online");
        assert_eq!(route.generation, first.generation);
        assert!(!*route.ended.borrow());

        let (second, replaced) = sessions.attach(&ep("ws-1"));
        assert!(replaced);
        assert!(*route.ended.borrow(), "routes through the old session end");
        assert!(
            !sessions.detach(&first),
            "the old session is no longer live"
        );
        assert!(sessions.is_online("ws-1"));
        assert!(sessions.commands_of("ws-1", first.generation).is_none());
        assert!(sessions.commands_of("ws-1", second.generation).is_some());

        let route = sessions.route("ws-1").expect("online");
        assert!(sessions.detach(&second));
        assert!(*route.ended.borrow());
        assert!(!sessions.is_online("ws-1"));
    }

    #[test]
    fn a_session_evicted_for_another_replica_ends_but_detaches_itself() {
        let sessions = Sessions::default();
        let (s, _) = sessions.attach(&ep("ws-3"));
        let route = sessions.route("ws-3").expect("online");
        assert!(
            !sessions.evict("ws-3", s.generation + 1),
            "not that session"
        );
        assert!(sessions.evict("ws-3", s.generation));
        assert!(*route.ended.borrow());
        assert!(!sessions.is_online("ws-3"), "nothing routes down it");
        assert!(sessions.route_of("ws-3", s.generation).is_none());
        // Its own task still detaches it (and so counts it gone).
        assert!(sessions.detach(&s));
    }

    #[tokio::test]
    async fn waiting_for_an_offline_endpoint() {
        let sessions = Arc::new(Sessions::default());
        assert!(
            !sessions
                .wait_online("ws-9", Duration::from_millis(50))
                .await
        );
        let s = sessions.clone();
        let waiter =
            tokio::spawn(async move { s.wait_online("ws-9", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _attached = sessions.attach(&ep("ws-9"));
        assert!(waiter.await.unwrap());
    }
}
