//! Sessions and diagnostics across replicas, over the bus
//! ([`crate::cluster`]).
//!
//! The replica holding a desk's session serves it to the others while it
//! lasts ([`hold`]): it says it has it, runs their diagnostics down it as
//! its own and streams the events back (with a beat every second, so a
//! requester hears within seconds when the holder is gone), and cuts it
//! when told. Opening a session announces a claim; the holder of an older
//! session of the same desk on another replica ends its own on hearing it,
//! so a desk has one live session among all the replicas. Which session is
//! newer is decided by the time each opened, then by replica name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Message, Subscriber};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};
use vitals_proto::diag::DiagnosticResult;
use vitals_proto::identity::EndpointId;

use super::{Event, Place, Relay, Running};
use crate::cluster::{Cluster, ClusterError, decode, endpoint_subject};

/// How often a holder says a run it serves is still going.
const BEAT: Duration = Duration::from_secs(1);
/// A run whose holder is silent this long is lost.
const SILENCE: Duration = Duration::from_secs(3);

/// A request this replica sent to the holder of another session.
#[derive(Debug, Clone)]
pub struct Sent {
    id: u64,
    endpoint: String,
}

/// To the holder of an endpoint's session, on `vitals.ep.<id>.rpc`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ToHolder {
    Where,
    Run {
        from: String,
        id: u64,
        kind: String,
        params: BTreeMap<String, String>,
        timeout_ms: u64,
        /// Where the run's events go.
        events: String,
    },
    Cancel {
        from: String,
        id: u64,
    },
    Cut {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    Here {
        replica: String,
    },
    Accepted {
        replica: String,
    },
    /// The session ended as the request came.
    Gone,
}

/// A session opened, on `vitals.ep.<id>.claim`.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    replica: String,
    opened_ms: i64,
}

/// A run's events, to the requester's inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Update {
    Progress { text: String },
    Result { result: DiagnosticResult },
    Disconnected,
    Beat,
}

pub(super) async fn locate(c: &Cluster, endpoint: &str) -> Result<Place, ClusterError> {
    Ok(
        match c
            .request::<_, Answer>(endpoint_subject(endpoint, "rpc"), &ToHolder::Where)
            .await?
        {
            Some(Answer::Here { replica } | Answer::Accepted { replica }) => {
                Place::Replica(replica)
            }
            Some(Answer::Gone) | None => Place::Offline,
        },
    )
}

/// Claims for `endpoint` from now on.
pub(super) async fn claims(c: &Cluster, endpoint: &str) -> Result<Subscriber, ClusterError> {
    c.subscribe(endpoint_subject(endpoint, "claim")).await
}

pub(super) async fn cut(c: &Cluster, endpoint: &str, reason: &str) {
    let cut = ToHolder::Cut {
        reason: reason.to_owned(),
    };
    if let Err(error) = c.publish(endpoint_subject(endpoint, "rpc"), &cut).await {
        warn!(%endpoint, %error, "cannot tell the other replicas to cut the session; each cuts it at its next revocation refresh");
    }
}

pub(super) fn forget(relay: &Relay, id: u64) -> Option<Sent> {
    lock(&relay.remote).remove(&id)
}

pub(super) fn cancel(c: &Cluster, sent: Sent) {
    let c = c.clone();
    tokio::spawn(async move {
        let cancel = ToHolder::Cancel {
            from: c.replica().to_owned(),
            id: sent.id,
        };
        if let Err(error) = c
            .publish(endpoint_subject(&sent.endpoint, "rpc"), &cancel)
            .await
        {
            debug!(%error, "cancel not carried; the agent's own timeout ends the run");
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a request to the replica holding `endpoint`'s session; `None` if
/// no replica holds one.
pub(super) async fn run(
    relay: &Relay,
    c: &Cluster,
    endpoint: &str,
    kind: &str,
    params: BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Option<Running>, ClusterError> {
    let inbox = c.new_inbox();
    // Both listen before the request goes, so nothing is missed.
    let mut updates = c.subscribe(inbox.clone()).await?;
    let mut moves = claims(c, endpoint).await?;
    let id = relay.next_id();
    let ask = ToHolder::Run {
        from: c.replica().to_owned(),
        id,
        kind: kind.to_owned(),
        params,
        timeout_ms: timeout.as_millis() as u64,
        events: inbox,
    };
    let holder = match c
        .request::<_, Answer>(endpoint_subject(endpoint, "rpc"), &ask)
        .await?
    {
        Some(Answer::Accepted { replica }) => replica,
        _ => return Ok(None),
    };
    lock(&relay.remote).insert(
        id,
        Sent {
            id,
            endpoint: endpoint.to_owned(),
        },
    );
    let (tx, rx) = mpsc::channel(64);
    let (ended_tx, ended) = watch::channel(false);
    let remote = relay.remote.clone();
    let endpoint = endpoint.to_owned();
    tokio::spawn(async move {
        let silence = tokio::time::sleep(SILENCE);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                () = tx.closed() => break,
                () = &mut silence => {
                    let why = format!(
                        "replica {holder}, which holds {endpoint}'s session, stopped answering \
                         (it stopped, or the bus between the replicas is down)"
                    );
                    let _ = tx.send(Event::Lost(why)).await;
                    break;
                }
                m = updates.next() => {
                    let Some(m) = m else {
                        let _ = tx.send(Event::Lost("the bus between the replicas closed".into())).await;
                        break;
                    };
                    silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                    match decode::<Update>(&m.payload) {
                        Ok(Update::Progress { text }) => {
                            // A slow reader loses progress lines, never the result.
                            let _ = tx.try_send(Event::Progress(text));
                        }
                        Ok(Update::Result { result }) => {
                            let _ = tx.send(Event::Result(result)).await;
                            break;
                        }
                        Ok(Update::Disconnected) => {
                            ended_tx.send_replace(true);
                            break;
                        }
                        Ok(Update::Beat) => {}
                        Err(error) => warn!(%error, from = %holder, "a run's event could not be read"),
                    }
                }
                m = moves.next() => {
                    // The desk opened a session elsewhere: this one is over.
                    if let Some(claim) = m.and_then(|m| decode::<Claim>(&m.payload).ok())
                        && claim.replica != holder
                    {
                        ended_tx.send_replace(true);
                        break;
                    }
                }
            }
        }
        lock(&remote).remove(&id);
    });
    Ok(Some(Running {
        id,
        events: rx,
        ended,
    }))
}

/// Serves session `generation` of `endpoint` to the other replicas while
/// it is live here.
pub fn hold(relay: &Arc<Relay>, endpoint: &EndpointId, generation: u64) {
    let Some(c) = relay.cluster.clone() else {
        return;
    };
    let Some(route) = relay.sessions.route_of(endpoint.as_str(), generation) else {
        return;
    };
    let relay = relay.clone();
    let endpoint = endpoint.as_str().to_owned();
    let mine = Claim {
        replica: c.replica().to_owned(),
        opened_ms: vitals_proto::now_ms(),
    };
    tokio::spawn(async move {
        let mut ended = route.ended;
        let mut inbox = match c.subscribe(endpoint_subject(&endpoint, "*")).await {
            Ok(s) => s,
            Err(error) => {
                warn!(%endpoint, %error, "this session is not reachable from the other replicas");
                return;
            }
        };
        let mut reconnects = c.reconnects();
        let claim = |c: Cluster, endpoint: String, mine: &Claim| {
            let mine = Claim {
                replica: mine.replica.clone(),
                opened_ms: mine.opened_ms,
            };
            async move {
                if let Err(error) = c.publish(endpoint_subject(&endpoint, "claim"), &mine).await {
                    debug!(%endpoint, %error, "claim not carried; said again when the bus is back");
                }
            }
        };
        claim(c.clone(), endpoint.clone(), &mine).await;
        // Runs served for other replicas: (replica, its id) → the id here.
        let served: Arc<Mutex<HashMap<(String, u64), u64>>> = Arc::default();
        loop {
            tokio::select! {
                () = async { let _ = ended.wait_for(|e| *e).await; } => break,
                // Whatever the bus lost while it was down, a newer session
                // elsewhere hears this one again.
                Ok(()) = reconnects.changed() => claim(c.clone(), endpoint.clone(), &mine).await,
                m = inbox.next() => {
                    let Some(m) = m else { break };
                    serve(&relay, &c, &endpoint, generation, &mine, &served, m).await;
                }
            }
        }
    });
}

async fn serve(
    relay: &Arc<Relay>,
    c: &Cluster,
    endpoint: &str,
    generation: u64,
    mine: &Claim,
    served: &Arc<Mutex<HashMap<(String, u64), u64>>>,
    m: Message,
) {
    if m.subject.ends_with(".claim") {
        let Ok(claim) = decode::<Claim>(&m.payload) else {
            return;
        };
        let newer = (claim.opened_ms, claim.replica.as_str()) > (mine.opened_ms, &mine.replica);
        if claim.replica != mine.replica && newer && relay.sessions.evict(endpoint, generation) {
            info!(%endpoint, to = %claim.replica, "the desk opened a newer session on another replica; this one ends");
        }
        return;
    }
    let ask = match decode::<ToHolder>(&m.payload) {
        Ok(a) => a,
        Err(error) => {
            warn!(%endpoint, %error, "a request from another replica could not be read");
            return;
        }
    };
    let answer = match ask {
        ToHolder::Where => Answer::Here {
            replica: mine.replica.clone(),
        },
        ToHolder::Run {
            from,
            id,
            kind,
            params,
            timeout_ms,
            events,
        } => match relay
            .run_here(endpoint, &kind, params, Duration::from_millis(timeout_ms))
            .await
        {
            Some(running) => {
                let key = (from, id);
                lock(served).insert(key.clone(), running.id);
                tokio::spawn(forward(c.clone(), running, events, served.clone(), key));
                Answer::Accepted {
                    replica: mine.replica.clone(),
                }
            }
            None => Answer::Gone,
        },
        ToHolder::Cancel { from, id } => {
            if let Some(here) = lock(served).remove(&(from, id)) {
                relay.cancel(here);
            }
            return;
        }
        ToHolder::Cut { reason } => {
            if let Ok(id) = endpoint.parse::<EndpointId>() {
                relay.sessions.cut(&id, &reason);
            }
            return;
        }
    };
    if let Some(reply) = m.reply
        && let Err(error) = c.publish(reply.to_string(), &answer).await
    {
        debug!(%endpoint, %error, "answer to another replica not carried");
    }
}

/// Streams a run served for another replica back to it.
async fn forward(
    c: Cluster,
    mut running: Running,
    to: String,
    served: Arc<Mutex<HashMap<(String, u64), u64>>>,
    key: (String, u64),
) {
    let mut beat = tokio::time::interval(BEAT);
    beat.tick().await;
    loop {
        let (update, last) = tokio::select! {
            e = running.next() => match e {
                Some(Event::Progress(text)) => (Update::Progress { text }, false),
                Some(Event::Result(result)) => (Update::Result { result }, true),
                Some(Event::Disconnected | Event::Lost(_)) | None => (Update::Disconnected, true),
            },
            _ = beat.tick() => (Update::Beat, false),
        };
        if c.publish(to.clone(), &update).await.is_err() && last {
            // The requester hears nothing more and calls the run lost.
            debug!("a run's last event was not carried");
        }
        if last {
            break;
        }
    }
    lock(&served).remove(&key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_between_replicas_read_back() {
        let ask = ToHolder::Run {
            from: "a".into(),
            id: 7,
            kind: "dns".into(),
            params: [("name".to_owned(), "city.gov".to_owned())].into(),
            timeout_ms: 5000,
            events: "_INBOX.x".into(),
        };
        let text = String::from_utf8(crate::cluster::encode(&ask).to_vec()).unwrap();
        assert!(
            text.starts_with(r#"{"op":"run","from":"a","id":7"#),
            "{text}"
        );
        assert!(matches!(
            decode::<ToHolder>(text.as_bytes()),
            Ok(ToHolder::Run {
                id: 7,
                timeout_ms: 5000,
                ..
            })
        ));
        assert!(decode::<ToHolder>(br#"{"op":"explode"}"#).is_err());
        let u = crate::cluster::encode(&Update::Result {
            result: DiagnosticResult {
                ok: true,
                text: "resolved".into(),
                ..Default::default()
            },
        });
        assert!(matches!(
            decode::<Update>(&u),
            Ok(Update::Result { result }) if result.text == "resolved"
        ));
    }
}
