//! The diagnostic relay: a specialist's request goes down the endpoint's
//! own agent stream (the desk opens no port), and the agent's progress and
//! result come back to that specialist.
//!
//! The relay finds sessions in the registry ([`crate::sessions`]), which
//! owns them; a request to an endpoint without a session is refused as
//! offline at once (or waits for it, if asked). Every request in flight
//! belongs to the session it went down: when that session ends (or a newer
//! one replaces it), [`Running::next`] says [`Event::Disconnected`] at once
//! rather than hang. A request whose specialist goes away, or whose
//! deadline passes, is cancelled on the agent.
//!
//! Among replicas ([`remote`]), an endpoint whose session is on another
//! replica is reached through the bus: the holder runs the request down
//! its session as if it were its own, and streams the events back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vitals_proto::diag::{DiagnosticRequest, DiagnosticResult, DiagnosticUpdate, UpdateBody};

use crate::cluster::{Cluster, ClusterError};
use crate::sessions::{Command, Sessions};

pub mod remote;

/// What comes back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Progress(String),
    Result(DiagnosticResult),
    /// The endpoint's session ended before the result.
    Disconnected,
    /// The replica holding the session can no longer be heard (it stopped,
    /// or the bus between the replicas went down): why.
    Lost(String),
}

/// Where an endpoint's live session is.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    Here,
    /// On the replica of that name.
    Replica(String),
    Offline,
}

struct InFlight {
    endpoint: String,
    session: u64,
    /// Turns true when the session the request went down ended.
    ended: watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
}

impl InFlight {
    fn is_over(&self) -> bool {
        *self.ended.borrow()
    }
}

pub struct Relay {
    sessions: Arc<Sessions>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next: AtomicU64,
    /// The other replicas, when there are any.
    cluster: Option<Cluster>,
    /// Requests this replica sent to another one's session, by id.
    remote: Arc<Mutex<HashMap<u64, remote::Sent>>>,
}

/// A request on its way: its id and the events coming back.
pub struct Running {
    pub id: u64,
    events: mpsc::Receiver<Event>,
    ended: watch::Receiver<bool>,
}

impl Running {
    /// The next event: progress, the result, or the session's end. An event
    /// that arrived before the session ended is still handed out first.
    pub async fn next(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            // Closed only once the request is over here: nothing more comes.
            e = self.events.recv() => Some(e.unwrap_or(Event::Disconnected)),
            _ = self.ended.wait_for(|e| *e) => Some(Event::Disconnected),
        }
    }
}

impl Relay {
    pub fn new(sessions: Arc<Sessions>, cluster: Option<Cluster>) -> Self {
        Relay {
            sessions,
            in_flight: Mutex::default(),
            next: AtomicU64::new(0),
            cluster,
            remote: Arc::default(),
        }
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Requests of sessions that ended are over: their waiters were told.
        m.retain(|_, f| !f.is_over());
        m
    }

    pub fn is_online(&self, endpoint: &str) -> bool {
        self.sessions.is_online(endpoint)
    }

    /// Where `endpoint`'s session is: here, on another replica (asked over
    /// the bus), or nowhere.
    pub async fn locate(&self, endpoint: &str) -> Result<Place, ClusterError> {
        if self.sessions.is_online(endpoint) {
            return Ok(Place::Here);
        }
        match &self.cluster {
            Some(c) => remote::locate(c, endpoint).await,
            None => Ok(Place::Offline),
        }
    }

    /// Waits until `endpoint` has a session on any replica, at most
    /// `within` (zero: looks once).
    pub async fn wait_online(
        &self,
        endpoint: &str,
        within: Duration,
    ) -> Result<bool, ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        // Told of sessions opening on the other replicas from now on.
        let mut claims = match &self.cluster {
            Some(c) if !within.is_zero() => Some(remote::claims(c, endpoint).await?),
            _ => None,
        };
        loop {
            let attached = self.sessions.attached();
            if self.locate(endpoint).await? != Place::Offline {
                return Ok(true);
            }
            let claimed = async {
                match &mut claims {
                    Some(c) => {
                        tokio_stream::StreamExt::next(c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = attached => {}
                () = claimed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(self.locate(endpoint).await? != Place::Offline);
                }
            }
        }
    }

    /// Ends `endpoint`'s live session, wherever it is, telling the agent
    /// why.
    pub async fn cut(&self, endpoint: &vitals_proto::identity::EndpointId, reason: &str) {
        if self.sessions.cut(endpoint, reason) {
            return;
        }
        if let Some(c) = &self.cluster {
            remote::cut(c, endpoint.as_str(), reason).await;
        }
    }

    /// Sends a request down `endpoint`'s session, here or on the replica
    /// holding it. `None` if it has none.
    pub async fn run(
        &self,
        endpoint: &str,
        kind: &str,
        params: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Option<Running>, ClusterError> {
        if let Some(r) = self.run_here(endpoint, kind, params.clone(), timeout).await {
            return Ok(Some(r));
        }
        match &self.cluster {
            Some(c) => remote::run(self, c, endpoint, kind, params, timeout).await,
            None => Ok(None),
        }
    }

    /// Sends a request down `endpoint`'s session on this replica.
    async fn run_here(
        &self,
        endpoint: &str,
        kind: &str,
        params: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Option<Running> {
        let route = self.sessions.route(endpoint)?;
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(64);
        self.lock().insert(
            id,
            InFlight {
                endpoint: endpoint.to_owned(),
                session: route.generation,
                ended: route.ended.clone(),
                events: tx,
            },
        );
        let request = DiagnosticRequest {
            id,
            kind: kind.to_owned(),
            params,
            timeout,
        };
        if route
            .commands
            .send(Command::Run(Box::new(request)))
            .await
            .is_err()
        {
            self.lock().remove(&id);
            return None;
        }
        Some(Running {
            id,
            events: rx,
            ended: route.ended,
        })
    }

    /// An update from `endpoint`'s agent. Updates for requests another
    /// endpoint made, or that are over, are dropped.
    pub fn deliver(&self, endpoint: &str, update: DiagnosticUpdate) {
        let mut in_flight = self.lock();
        let Some(f) = in_flight.get(&update.id).filter(|f| f.endpoint == endpoint) else {
            return;
        };
        match update.body {
            Some(UpdateBody::Progress(text)) => {
                // A slow reader loses progress lines, never the result.
                let _ = f.events.try_send(Event::Progress(text));
            }
            Some(UpdateBody::Result(r)) => {
                if let Some(f) = in_flight.remove(&update.id) {
                    let events = f.events;
                    drop(in_flight);
                    // The receiver holds at most 64 queued; the result must
                    // get through, so wait for room off this thread.
                    tokio::spawn(async move {
                        let _ = events.send(Event::Result(r)).await;
                    });
                }
            }
            None => {}
        }
    }

    /// Stops a request: on the agent, and here.
    pub fn cancel(&self, id: u64) {
        if let Some(c) = &self.cluster
            && let Some(sent) = remote::forget(self, id)
        {
            remote::cancel(c, sent);
            return;
        }
        let Some(f) = self.lock().remove(&id) else {
            return;
        };
        if let Some(c) = self.sessions.commands_of(&f.endpoint, f.session) {
            let _ = c.try_send(Command::Cancel(id));
        }
    }

    /// Requests in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: u64) -> DiagnosticUpdate {
        DiagnosticUpdate {
            id,
            body: Some(UpdateBody::Result(DiagnosticResult {
                ok: true,
                text: "fine".into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn requests_go_down_their_session_and_results_come_back() {
        let sessions = Arc::new(Sessions::default());
        let relay = Relay::new(sessions.clone(), None);
        let ws1 = "ws-1".parse().unwrap();
        assert!(
            relay
                .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
                .await
                .expect("no bus")
                .is_none()
        );
        let (mut session, _) = sessions.attach(&ws1);
        let mut run = relay
            .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("no bus")
            .expect("online");
        let Some(Command::Run(r)) = session.commands.recv().await else {
            panic!("no request sent down");
        };
        assert_eq!(
            (r.id, r.kind.as_str(), r.timeout.as_millis()),
            (run.id, "os", 5000)
        );
        // Another endpoint cannot answer for it.
        relay.deliver("ws-2", result(run.id));
        relay.deliver("ws-1", result(run.id));
        match run.next().await {
            Some(Event::Result(r)) => assert_eq!(r.text, "fine"),
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.in_flight(), 0);

        // The session ends mid-run: the request ends, it does not hang.
        let mut run = relay
            .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("no bus")
            .expect("online");
        sessions.detach(&session);
        assert_eq!(run.next().await, Some(Event::Disconnected));
        assert!(!relay.is_online("ws-1"));

        // A cancel goes down to the agent.
        let (mut session, _) = sessions.attach(&ws1);
        let run = relay
            .run("ws-1", "disk", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("no bus")
            .expect("online");
        let _ = session.commands.recv().await;
        relay.cancel(run.id);
        assert!(matches!(session.commands.recv().await, Some(Command::Cancel(id)) if id == run.id));
    }

    #[tokio::test]
    async fn a_newer_session_ends_the_requests_of_the_older() {
        let sessions = Arc::new(Sessions::default());
        let relay = Relay::new(sessions.clone(), None);
        let ws1 = "ws-1".parse().unwrap();
        let (_old, _) = sessions.attach(&ws1);
        let mut run = relay
            .run("ws-1", "os", BTreeMap::new(), Duration::from_secs(5))
            .await
            .expect("no bus")
            .expect("online");
        let (_new, _) = sessions.attach(&ws1);
        assert_eq!(run.next().await, Some(Event::Disconnected));
        assert_eq!(relay.in_flight(), 0);
    }
}
