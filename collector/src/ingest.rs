//! Ingest: sessions in, committed batches out, acknowledgements back.
//!
//! Every durable message (snapshot, fault event) from every session goes
//! through one queue to a batcher
//! that commits many messages per storage transaction. Only after the
//! commit returns does the batcher advance each session's acknowledged
//! sequence. Acks are cumulative (everything at or below `seq`), so a
//! session's acknowledgement is a `watch` value that only grows: the batcher
//! never waits on a slow session, and a session never misses the latest ack.
//!
//! Opening and closing a session are one call each here: storage records
//! it, the registry ([`crate::sessions`]) attaches or detaches it, and the
//! connected-agents gauge follows. Session changes travel through the same
//! queue as messages and are written in the same transactions, so a
//! reconnect storm of thousands of agents costs a handful of commits, not
//! one flushed transaction per session.
//!
//! While one transaction is being written and flushed, sessions go on
//! queueing; the next commit takes everything queued meanwhile (up to
//! [`MAX_BATCH`]). A slow flush delays only the messages in it, and what
//! arrives during it grows the next batch instead of forming a line of
//! small ones, so the busier the store, the fewer commits per message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{error, warn};
use vitals_proto::identity::EndpointId;

use crate::metrics::Metrics;
use crate::sessions::{Attached, Sessions};
use crate::store::{
    Admission, Batch, Record, RecordBody, SessionChange, SessionOpen, Store, StoreError,
};

/// Most messages in one storage transaction. Reached only when the store
/// is the bottleneck; then each commit's fixed cost (the pages at the end
/// of every endpoint's history it touches, the flush) is shared by more.
const MAX_BATCH: usize = 4096;
/// Messages waiting for the batcher before sessions feel backpressure.
const QUEUE: usize = 2 * MAX_BATCH;

/// A session's view of what has been committed for it.
pub struct AckSink {
    committed: watch::Sender<u64>,
    failed: Notify,
}

impl AckSink {
    pub fn new(committed: u64) -> Arc<Self> {
        Arc::new(AckSink {
            committed: watch::Sender::new(committed),
            failed: Notify::new(),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Completes when a commit holding this session's messages failed. The
    /// session should then end so the agent reconnects and resends.
    pub async fn failed(&self) {
        self.failed.notified().await
    }

    fn advance(&self, seq: u64) {
        self.committed.send_if_modified(|c| {
            let newer = seq > *c;
            if newer {
                *c = seq;
            }
            newer
        });
    }
}

/// What the batcher is handed.
enum Item {
    Record {
        record: Record,
        sink: Arc<AckSink>,
    },
    Open {
        open: SessionOpen,
        reply: oneshot::Sender<Result<Admission, Arc<StoreError>>>,
    },
    Close {
        endpoint: EndpointId,
        at_ms: i64,
    },
}

#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Item>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
}

impl Ingest {
    /// Starts the batcher. It ends, after committing everything queued, once
    /// every clone of the returned `Ingest` is dropped.
    /// `faults_committed` is notified after every commit holding fault
    /// events (the ticket engine waits on it).
    pub fn start(
        store: Arc<dyn Store>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
        faults_committed: Arc<Notify>,
    ) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(batcher(rx, store, metrics.clone(), faults_committed));
        (
            Ingest {
                queue,
                sessions,
                metrics,
            },
            task,
        )
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records a session in storage and, if the store admits it, attaches
    /// it to the registry (a newer session of an endpoint replaces the
    /// older). Returns the session, if attached, and the store's answer.
    pub async fn open_session(
        &self,
        open: SessionOpen,
    ) -> Result<(Option<Attached>, Admission), StoreError> {
        let endpoint = open.endpoint.clone();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Item::Open { open, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        let admission = answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Shared)?;
        if !matches!(admission, Admission::Admitted(_)) {
            return Ok((None, admission));
        }
        let (session, replaced) = self.sessions.attach(&endpoint);
        if !replaced {
            self.metrics.connected_agents.inc();
        }
        Ok((Some(session), admission))
    }

    /// Ends a session. The endpoint goes offline only if no newer session
    /// replaced this one.
    pub async fn close_session(&self, session: &Attached, at_ms: i64) {
        if !self.sessions.detach(session) {
            return;
        }
        self.metrics.connected_agents.dec();
        let close = Item::Close {
            endpoint: session.endpoint.clone(),
            at_ms,
        };
        if self.queue.send(close).await.is_err() {
            // Shutting down: the next start marks every endpoint offline.
            warn!(endpoint = %session.endpoint, "session end not recorded: ingest closed");
        }
    }

    /// Queues an agent message; its sequence is acknowledged through `sink`
    /// once committed. Waits when the queue is full (backpressure).
    pub async fn submit(
        &self,
        endpoint: EndpointId,
        seq: u64,
        received_ms: i64,
        body: RecordBody,
        sink: Arc<AckSink>,
    ) -> Result<(), IngestClosed> {
        self.queue
            .send(Item::Record {
                record: Record {
                    endpoint,
                    seq,
                    received_ms,
                    body,
                },
                sink,
            })
            .await
            .map_err(|_| IngestClosed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ingest is shutting down")]
pub struct IngestClosed;

/// A gathered batch on its way to storage, with who to tell.
struct Pending {
    batch: Batch,
    /// Each record's sequence and session, in record order.
    sinks: Vec<(u64, Arc<AckSink>)>,
    replies: Vec<oneshot::Sender<Result<Admission, Arc<StoreError>>>>,
}

impl Pending {
    fn gather(items: &mut Vec<Item>) -> Pending {
        let mut p = Pending {
            batch: Batch::default(),
            sinks: Vec::with_capacity(items.len()),
            replies: Vec::new(),
        };
        for item in items.drain(..) {
            match item {
                Item::Record { record, sink } => {
                    p.sinks.push((record.seq, sink));
                    p.batch.records.push(record);
                }
                Item::Open { open, reply } => {
                    p.batch.sessions.push(SessionChange::Open(open));
                    p.replies.push(reply);
                }
                Item::Close { endpoint, at_ms } => {
                    p.batch
                        .sessions
                        .push(SessionChange::Close { endpoint, at_ms });
                }
            }
        }
        p
    }
}

/// Commits what is queued, batch after batch. Nothing is gathered ahead
/// of the store: a batch is taken when the previous commit returned, so it
/// holds everything that arrived while that one was being flushed.
async fn batcher(
    mut rx: mpsc::Receiver<Item>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    faults_committed: Arc<Notify>,
) {
    let mut items = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        let Pending {
            batch,
            sinks,
            replies,
        } = Pending::gather(&mut items);
        let count = batch.records.len();
        let sessions = batch.sessions.len();
        let has_faults = batch
            .records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Fault(_)));
        let started = Instant::now();
        let result = store.commit_batch(batch).await;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.commit_batch_size.observe(count as f64);
        metrics.commit_sessions.observe(sessions as f64);
        match result {
            Ok(admissions) => {
                for (seq, sink) in &sinks {
                    sink.advance(*seq);
                }
                for (reply, admission) in replies.into_iter().zip(admissions) {
                    // A session that gave up waiting is fine.
                    let _ = reply.send(Ok(admission));
                }
                if has_faults {
                    faults_committed.notify_one();
                }
            }
            Err(error) => {
                metrics.error("commit");
                error!(%error, messages = count, sessions, "commit failed; sessions will reset");
                for (_, sink) in &sinks {
                    sink.failed.notify_one();
                }
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                // A failing disk should not be hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
