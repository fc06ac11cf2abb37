//! The link between collector replicas: a NATS connection, the subjects
//! replicas talk on, and JSON messages on them.
//!
//! Everything stored goes through PostgreSQL; NATS carries only what is
//! live and would be wrong to store: which replica holds a desk's stream
//! now, a diagnostic on its way to that replica and its progress coming
//! back, a specialist's desk action on its way to the leading replica.
//! Nothing here is queued or retried for later: a message the bus cannot
//! carry now fails now, with the reason.
//!
//! Subjects:
//! - `vitals.ep.<endpoint>.claim`: a replica opened a session of the
//!   endpoint (the holder of an older one ends it; specialists waiting for
//!   the desk to come online learn it is).
//! - `vitals.ep.<endpoint>.rpc`: to the replica holding the endpoint's
//!   session only (it subscribes while it holds it): where it is, run a
//!   diagnostic, cancel one, cut the session.
//! - `vitals.desk`: a desk action for the ticket engine, answered by the
//!   leading replica only.
//! - `vitals.tickets`: timeline entries the leader committed, for the
//!   ticket watchers on every replica.
//! - `vitals.faults`: a replica committed fault events; the leader's ticket
//!   engine reads them now instead of on its next poll. Only a hint: the
//!   events themselves are read from the database, and a lost hint costs a
//!   poll's delay, nothing else.
//!
//! The `.` of an endpoint ID (a subject's separator) is written `~`, which
//! an endpoint ID cannot hold.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ServerAddr, Subscriber};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};
use vitals_proto::shutdown::Shutdown;

use crate::config::ClusterConfig;

/// How long a request to another replica may take before it is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The subject the leading replica answers desk actions on.
pub const DESK: &str = "vitals.desk";

/// The subject the leader sends committed ticket entries on.
pub const TICKETS: &str = "vitals.tickets";

/// The subject replicas say on that they committed fault events.
pub const FAULTS: &str = "vitals.faults";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.nats_credentials_file {path}: {why}")]
    Credentials { path: String, why: String },
    #[error("cluster.nats_url: {0}")]
    Url(String),
    #[error("cluster: {0}")]
    Connect(String),
    /// The bus cannot carry a message now.
    #[error("the replicas' message bus (NATS at {url}) {why}")]
    Bus { url: String, why: String },
}

/// The servers a `nats_url` names.
pub fn servers(url: &str) -> Result<Vec<ServerAddr>, String> {
    let list: Vec<ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| format!("\"{u}\": {e}")))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("names no server".into());
    }
    Ok(list)
}

/// A subject about one endpoint.
pub fn endpoint_subject(endpoint: &str, leaf: &str) -> String {
    format!("vitals.ep.{}.{leaf}", endpoint.replace('.', "~"))
}

/// This replica's connection to the bus.
#[derive(Clone)]
pub struct Cluster {
    client: async_nats::Client,
    replica: String,
    url: String,
    /// Counts the connections made to the bus.
    connections: watch::Receiver<u64>,
}

impl Cluster {
    /// Connects, or keeps trying in the background: a collector starts and
    /// ingests while the bus is down; only what crosses replicas waits.
    pub async fn connect(config: &ClusterConfig, replica: &str) -> Result<Cluster, ClusterError> {
        let addrs = servers(&config.nats_url).map_err(ClusterError::Url)?;
        let url = config.nats_url.clone();
        let (connected, connections) = watch::channel(0u64);
        let connected = Arc::new(connected);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("vitals-collector {replica}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(REQUEST_TIMEOUT))
            // A quick reconnect after a blip, then at most every 2 s.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(2_000))
            })
            .event_callback({
                let url = url.clone();
                move |event| {
                    let url = url.clone();
                    let connected = connected.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                info!(%url, "replica bus connected");
                                connected.send_modify(|n| *n += 1);
                            }
                            async_nats::Event::Disconnected => {
                                warn!(%url, "replica bus disconnected; reconnecting");
                            }
                            other => warn!(%url, event = %other, "replica bus"),
                        }
                    }
                }
            });
        if let Some(path) = &config.nats_credentials_file {
            let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Credentials {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            let Some((user, password)) = text.trim_end_matches(['\r', '\n']).split_once(':') else {
                return Err(ClusterError::Credentials {
                    path: path.display().to_string(),
                    why: "holds no user:password".into(),
                });
            };
            options = options.user_and_password(user.to_owned(), password.to_owned());
        }
        if let Some(ca) = &config.nats_ca_file {
            if let Err(e) = std::fs::metadata(ca) {
                return Err(ClusterError::Connect(format!(
                    "nats_ca_file {}: {e}",
                    ca.display()
                )));
            }
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        Ok(Cluster {
            client,
            replica: replica.to_owned(),
            url,
            connections,
        })
    }

    /// Changes each time the bus connects again after a loss.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        let mut rx = self.connections.clone();
        rx.mark_unchanged();
        rx
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn bus(&self, why: impl std::fmt::Display) -> ClusterError {
        ClusterError::Bus {
            url: self.url.clone(),
            why: why.to_string(),
        }
    }

    fn connected(&self) -> Result<(), ClusterError> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(self.bus("is unreachable"))
        }
    }

    pub fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    pub async fn subscribe(&self, subject: String) -> Result<Subscriber, ClusterError> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| self.bus(format!("refused a subscription: {e}")))
    }

    /// Sends a message; fails at once while the bus is down.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        msg: &T,
    ) -> Result<(), ClusterError> {
        self.connected()?;
        self.client
            .publish(subject, encode(msg))
            .await
            .map_err(|e| self.bus(format!("did not take a message: {e}")))
    }

    /// Asks whoever answers on `subject`: `None` when nobody listens there.
    pub async fn request<T: Serialize, R: DeserializeOwned>(
        &self,
        subject: String,
        msg: &T,
    ) -> Result<Option<R>, ClusterError> {
        use async_nats::RequestErrorKind;
        self.connected()?;
        match self.client.request(subject.clone(), encode(msg)).await {
            Ok(reply) => decode(&reply.payload)
                .map(Some)
                .map_err(|e| self.bus(format!("carried a bad answer on {subject}: {e}"))),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(None),
            Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(self.bus(format!(
                "carried no answer on {subject} within {}",
                humantime::format_duration(REQUEST_TIMEOUT)
            ))),
            Err(e) => Err(self.bus(e)),
        }
    }
}

impl Cluster {
    /// Runs `on` for every message on `subject` until `stop`, subscribing
    /// again a second after a refusal or a lost subscription.
    pub fn listen(
        &self,
        subject: &'static str,
        mut stop: Shutdown,
        mut on: impl FnMut(async_nats::Message) + Send + 'static,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            loop {
                match cluster.subscribe(subject.to_owned()).await {
                    Ok(mut messages) => loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(m) => on(m),
                                None => break,
                            },
                            () = stop.requested() => return,
                        }
                    },
                    Err(error) => warn!(%error, subject, "not subscribed; trying again"),
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.requested() => return,
                }
            }
        });
    }

    /// The ticket engine's wake: notified for fault events committed here
    /// (`committed`, notified by ingest) and, over the bus, for those
    /// committed by the other replicas; tells the others of this replica's.
    /// Bursts coalesce: one hint per wake, however many commits it covers.
    pub fn share_fault_wakes(&self, committed: Arc<Notify>, stop: Shutdown) -> Arc<Notify> {
        let engine = Arc::new(Notify::new());
        {
            let cluster = self.clone();
            let engine = engine.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = committed.notified() => {}
                        () = stop.requested() => return,
                    }
                    engine.notify_one();
                    if let Err(error) = cluster.publish(FAULTS.to_owned(), &()).await {
                        debug!(%error, "fault hint not sent; the leader reads these events on its next poll");
                    }
                }
            });
        }
        let woken = engine.clone();
        self.listen(FAULTS, stop, move |_| woken.notify_one());
        engine
    }
}

pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Our own message types serialize without fail.
    Bytes::from(serde_json::to_vec(msg).unwrap_or_default())
}

pub fn decode<R: DeserializeOwned>(payload: &[u8]) -> Result<R, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_an_endpoint_to_one_token() {
        assert_eq!(
            endpoint_subject("ws-12.city.gov", "rpc"),
            "vitals.ep.ws-12~city~gov.rpc"
        );
        assert_eq!(
            servers("nats://a:4222, nats://b:4222").map(|v| v.len()),
            Ok(2)
        );
        assert!(servers(" ").unwrap_err().contains("no server"));
        assert!(servers("http://a").unwrap_err().contains("\"http://a\""));
    }
}
