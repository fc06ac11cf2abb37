//! Desk actions between replicas: one replica leads and runs the ticket
//! engine; a specialist's action (assign, comment, resolve, a ticket
//! opened by hand) or a fault the collector saw itself, arriving on a
//! standby, goes over the bus to the leader and its answer comes back.
//! Only the leader listens on [`crate::cluster::DESK`], and only while it
//! leads, so during a hand-over a request finds nobody and is retried for
//! a few seconds before it is refused.
//!
//! Every timeline entry the leader commits goes out on
//! [`crate::cluster::TICKETS`] too, so a specialist watching tickets
//! through any replica sees them: watchers are live views, so an entry
//! the bus cannot carry now is not sent later (the stored timeline has it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tracing::{debug, warn};
use vitals_proto::domain::{FaultEvent, Severity};
use vitals_proto::shutdown::Shutdown;
use vitals_proto::tickets::Entry;

use super::engine::Action;
use super::{Command, DeskError, TicketDesk};
use crate::cluster::{Cluster, DESK, TICKETS, decode};
use crate::leader::Leading;

/// How long a standby looks for a leader before it refuses a request.
const FIND_LEADER: Duration = Duration::from_secs(5);

/// Committed entries per bus message: a storm's step stays well under the
/// bus's message size limit (1 MB by default).
const ENTRIES_PER_MESSAGE: usize = 100;

/// Tells the other replicas' watchers of entries this leader committed.
pub(super) async fn share_changes(cluster: &Cluster, entries: &[Entry]) {
    for chunk in entries.chunks(ENTRIES_PER_MESSAGE) {
        if let Err(error) = cluster.publish(TICKETS.to_owned(), &chunk).await {
            debug!(%error, "committed ticket entries not shown to the other replicas' watchers");
            return;
        }
    }
}

/// Feeds this replica's ticket watchers with the entries the leader
/// commits (a replica does not hear its own: the bus does not echo).
pub fn watch_changes(cluster: &Cluster, desk: TicketDesk, stop: Shutdown) {
    cluster.listen(TICKETS, stop, move |m| {
        match decode::<Vec<Entry>>(&m.payload) {
            Ok(entries) => entries.into_iter().for_each(|e| desk.relay(e)),
            Err(error) => warn!(%error, "unreadable ticket entries from the leader"),
        }
    });
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
enum Call {
    Act {
        id: u64,
        who: String,
        action: Action,
    },
    Open {
        endpoint: String,
        title: String,
        severity: Severity,
        description: String,
        who: String,
    },
    Raise {
        endpoint: String,
        event: FaultEvent,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    Done,
    Opened { id: u64 },
    NoTicket { id: u64 },
    NotLeader,
    Failed { why: String },
}

impl Answer {
    fn of<T>(r: Result<T, DeskError>, ok: impl FnOnce(T) -> Answer) -> Answer {
        match r {
            Ok(v) => ok(v),
            Err(DeskError::NoTicket(id)) => Answer::NoTicket { id },
            Err(DeskError::NotLeader) => Answer::NotLeader,
            Err(e) => Answer::Failed { why: e.to_string() },
        }
    }

    fn error(self) -> DeskError {
        match self {
            Answer::NoTicket { id } => DeskError::NoTicket(id),
            Answer::NotLeader => DeskError::NotLeader,
            Answer::Failed { why } => DeskError::Leader(why),
            Answer::Done | Answer::Opened { .. } => {
                DeskError::Leader("the leading replica answered out of turn".into())
            }
        }
    }
}

/// Sends a request that reached this standby to the leading replica, and
/// its answer back to the caller.
pub(super) fn to_leader(cluster: Cluster, c: Command) {
    tokio::spawn(async move {
        match c {
            Command::Act {
                id,
                who,
                action,
                reply,
            } => {
                let r = ask(&cluster, &Call::Act { id, who, action }).await;
                let _ = reply.send(r.and_then(|a| match a {
                    Answer::Done => Ok(()),
                    other => Err(other.error()),
                }));
            }
            Command::Open {
                endpoint,
                title,
                severity,
                description,
                who,
                reply,
            } => {
                let call = Call::Open {
                    endpoint,
                    title,
                    severity,
                    description,
                    who,
                };
                let r = ask(&cluster, &call).await;
                let _ = reply.send(r.and_then(|a| match a {
                    Answer::Opened { id } => Ok(id),
                    other => Err(other.error()),
                }));
            }
            Command::Raise {
                endpoint,
                event,
                reply,
            } => {
                let r = ask(&cluster, &Call::Raise { endpoint, event }).await;
                let _ = reply.send(r.and_then(|a| match a {
                    Answer::Done => Ok(()),
                    other => Err(other.error()),
                }));
            }
            // The leader prunes through its own engine; a standby's
            // retention task does not run.
            Command::Prune { reply, .. } => {
                let _ = reply.send(Err(DeskError::NotLeader));
            }
        }
    });
}

async fn ask(cluster: &Cluster, call: &Call) -> Result<Answer, DeskError> {
    let give_up = tokio::time::Instant::now() + FIND_LEADER;
    loop {
        match cluster.request::<_, Answer>(DESK.to_owned(), call).await {
            Ok(Some(Answer::NotLeader)) | Ok(None) if tokio::time::Instant::now() < give_up => {
                // The lead is changing hands.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Some(a)) => return Ok(a),
            Ok(None) => return Err(DeskError::NotLeader),
            Err(e) => return Err(DeskError::Leader(e.to_string())),
        }
    }
}

/// Answers the standbys' requests while this replica leads.
pub fn serve(cluster: Cluster, desk: TicketDesk, mut leading: Leading, mut stop: Shutdown) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = leading.until(true) => {}
                () = stop.requested() => return,
            }
            let mut calls = match cluster.subscribe(DESK.to_owned()).await {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "the standbys' desk actions cannot reach this leader; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    () = leading.until(false) => break,
                    () = stop.requested() => return,
                    m = calls.next() => {
                        let Some(m) = m else { break };
                        let (cluster, desk) = (cluster.clone(), desk.clone());
                        tokio::spawn(async move {
                            let answer = match decode::<Call>(&m.payload) {
                                Ok(call) => apply(&desk, call).await,
                                Err(e) => Answer::Failed { why: format!("unreadable request: {e}") },
                            };
                            if let Some(reply) = m.reply
                                && let Err(error) = cluster.publish(reply.to_string(), &answer).await
                            {
                                debug!(%error, "a desk answer to a standby was not carried");
                            }
                        });
                    }
                }
            }
            // Dropping the subscription stops the answers: the next leader
            // takes them.
            drop(calls);
        }
    });
}

async fn apply(desk: &TicketDesk, call: Call) -> Answer {
    match call {
        Call::Act { id, who, action } => {
            Answer::of(desk.act(id, &who, action).await, |()| Answer::Done)
        }
        Call::Open {
            endpoint,
            title,
            severity,
            description,
            who,
        } => Answer::of(
            desk.open(&endpoint, &title, severity, &description, &who)
                .await,
            |id| Answer::Opened { id },
        ),
        Call::Raise { endpoint, event } => {
            Answer::of(desk.raise(&endpoint, event).await, |()| Answer::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_read_back() {
        let call = Call::Act {
            id: 12,
            who: "dana".into(),
            action: Action::Resolve("toner replaced".into()),
        };
        let bytes = crate::cluster::encode(&call);
        assert!(matches!(
            decode::<Call>(&bytes),
            Ok(Call::Act { id: 12, action: Action::Resolve(r), .. }) if r == "toner replaced"
        ));
        assert!(matches!(
            Answer::of::<()>(Err(DeskError::NoTicket(4)), |()| Answer::Done).error(),
            DeskError::NoTicket(4)
        ));
        assert!(matches!(
            Answer::Failed { why: "disk full".into() }.error(),
            DeskError::Leader(w) if w == "disk full"
        ));
    }
}
