//! The diagnostic relay: a specialist's request goes down the endpoint's
//! own agent stream (the desk opens no port), and the agent's progress and
//! result come back to that specialist.
//!
//! Agent sessions attach when they start and detach when they end; a
//! request to an endpoint without a session is refused as offline at once
//! (or waits for it, if asked). Every request in flight belongs to the
//! session it went down: when that session ends, its requests end with a
//! clear error rather than a hang. A request whose specialist goes away,
//! or whose deadline passes, is cancelled on the agent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use vitals_proto::diag::DiagnosticResult;
use vitals_proto::wire;

/// What a session must send down its stream.
#[derive(Debug)]
pub enum Command {
    Run(wire::DiagnosticRequest),
    Cancel(u64),
}

/// What comes back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Progress(String),
    Result(DiagnosticResult),
    /// The endpoint's session ended before the result.
    Disconnected,
}

struct Attached {
    session: u64,
    commands: mpsc::Sender<Command>,
}

struct InFlight {
    endpoint: String,
    session: u64,
    events: mpsc::Sender<Event>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Attached>,
    in_flight: HashMap<u64, InFlight>,
}

#[derive(Default)]
pub struct Relay {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// Woken whenever a session attaches.
    attached: Notify,
}

/// A request on its way: its id and the events coming back.
pub struct Running {
    pub id: u64,
    pub events: mpsc::Receiver<Event>,
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `endpoint` starts; it replaces an older one. Returns its
    /// token (for [`Relay::detach`]) and the commands to send down.
    pub fn attach(&self, endpoint: &str) -> (u64, mpsc::Receiver<Command>) {
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(64);
        let old = self.lock().sessions.insert(
            endpoint.to_owned(),
            Attached {
                session,
                commands: tx,
            },
        );
        if let Some(old) = old {
            self.fail_session(old.session);
        }
        self.attached.notify_waiters();
        (session, rx)
    }

    /// The session ends: its requests in flight end as disconnected.
    pub fn detach(&self, endpoint: &str, session: u64) {
        {
            let mut inner = self.lock();
            if inner
                .sessions
                .get(endpoint)
                .is_some_and(|a| a.session == session)
            {
                inner.sessions.remove(endpoint);
            }
        }
        self.fail_session(session);
    }

    fn fail_session(&self, session: u64) {
        let gone: Vec<InFlight> = {
            let mut inner = self.lock();
            let ids: Vec<u64> = inner
                .in_flight
                .iter()
                .filter(|(_, f)| f.session == session)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| inner.in_flight.remove(id))
                .collect()
        };
        for f in gone {
            let _ = f.events.try_send(Event::Disconnected);
        }
    }

    pub fn is_online(&self, endpoint: &str) -> bool {
        self.lock().sessions.contains_key(endpoint)
    }

    /// Waits until `endpoint` has a session, at most `within`.
    pub async fn wait_online(&self, endpoint: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attached = self.attached.notified();
            if self.is_online(endpoint) {
                return true;
            }
            if tokio::time::timeout_at(deadline, attached).await.is_err() {
                return self.is_online(endpoint);
            }
        }
    }

    /// Sends a request down `endpoint`'s session. `None` if it has none.
    pub async fn run(
        &self,
        endpoint: &str,
        kind: &str,
        params: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Option<Running> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(64);
        let commands = {
            let mut inner = self.lock();
            let a = inner.sessions.get(endpoint)?;
            let (session, commands) = (a.session, a.commands.clone());
            inner.in_flight.insert(
                id,
                InFlight {
                    endpoint: endpoint.to_owned(),
                    session,
                    events: tx,
                },
            );
            commands
        };
        let request = wire::DiagnosticRequest {
            id,
            kind: kind.to_owned(),
            params: params.into_iter().collect(),
            timeout_ms: timeout.as_millis() as u64,
        };
        if commands.send(Command::Run(request)).await.is_err() {
            self.lock().in_flight.remove(&id);
            return None;
        }
        Some(Running { id, events: rx })
    }

    /// An update from `endpoint`'s agent. Updates for requests another
    /// endpoint made, or that are over, are dropped.
    pub fn deliver(&self, endpoint: &str, update: wire::DiagnosticUpdate) {
        use wire::diagnostic_update::Body;
        let mut inner = self.lock();
        let Some(f) = inner
            .in_flight
            .get(&update.id)
            .filter(|f| f.endpoint == endpoint)
        else {
            return;
        };
        match update.body {
            Some(Body::Progress(text)) => {
                // A slow reader loses progress lines, never the result.
                let _ = f.events.try_send(Event::Progress(text));
            }
            Some(Body::Result(r)) => {
                if let Some(f) = inner.in_flight.remove(&update.id) {
                    let events = f.events;
                    drop(inner);
                    // The receiver holds at most 64 queued; the result must
                    // get through, so wait for room off this thread.
                    tokio::spawn(async move {
                        let _ = events.send(Event::Result(r.into())).await;
                    });
                }
            }
            None => {}
        }
    }

    /// Stops a request: on the agent, and here.
    pub fn cancel(&self, id: u64) {
        let commands = {
            let mut inner = self.lock();
            let Some(f) = inner.in_flight.remove(&id) else {
                return;
            };
            inner
                .sessions
                .get(&f.endpoint)
                .filter(|a| a.session == f.session)
                .map(|a| a.commands.clone())
        };
        if let Some(c) = commands {
            let _ = c.try_send(Command::Cancel(id));
        }
    }

    /// Requests in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: u64) -> wire::DiagnosticUpdate {
        wire::DiagnosticUpdate {
            id,
            body: Some(wire::diagnostic_update::Body::Result(
                wire::DiagnosticResult {
                    ok: true,
                    text: "fine".into(),
                    ..Default::default()
                },
            )),
        }
    }

    #[tokio::test]
    async fn requests_go_down_their_session_and_results_come_back() {
        let relay = Relay::default();
        assert!(
            relay
                .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
                .await
                .is_none()
        );
        let (session, mut commands) = relay.attach("ws-1");
        let mut run = relay
            .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("online");
        let Some(Command::Run(r)) = commands.recv().await else {
            panic!("no request sent down");
        };
        assert_eq!((r.id, r.kind.as_str(), r.timeout_ms), (run.id, "os", 5000));
        // Another endpoint cannot answer for it.
        relay.deliver("ws-2", result(run.id));
        relay.deliver("ws-1", result(run.id));
        match run.events.recv().await {
            Some(Event::Result(r)) => assert_eq!(r.text, "fine"),
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.in_flight(), 0);

        // The session ends mid-run: the request ends, it does not hang.
        let mut run = relay
            .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("online");
        relay.detach("ws-1", session);
        assert_eq!(run.events.recv().await, Some(Event::Disconnected));
        assert!(!relay.is_online("ws-1"));

        // A cancel goes down to the agent.
        let (_s, mut commands) = relay.attach("ws-1");
        let run = relay
            .run("ws-1", "disk", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("online");
        let _ = commands.recv().await;
        relay.cancel(run.id);
        assert!(matches!(commands.recv().await, Some(Command::Cancel(id)) if id == run.id));
    }

    #[tokio::test]
    async fn waiting_for_an_offline_endpoint() {
        let relay = std::sync::Arc::new(Relay::default());
        assert!(!relay.wait_online("ws-9", Duration::from_millis(50)).await);
        let r = relay.clone();
        let waiter =
            tokio::spawn(async move { r.wait_online("ws-9", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _attached = relay.attach("ws-9");
        assert!(waiter.await.unwrap());
    }
}
