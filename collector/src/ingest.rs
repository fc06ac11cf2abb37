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
//! connected-agents gauge follows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tracing::error;
use vitals_proto::identity::EndpointId;

use crate::metrics::Metrics;
use crate::sessions::{Attached, Sessions};
use crate::store::{Admission, Record, RecordBody, SessionOpen, Store, StoreError};

/// Most messages in one storage transaction.
const MAX_BATCH: usize = 1024;
/// Messages waiting for the batcher before sessions feel backpressure.
const QUEUE: usize = 8192;

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

struct Item {
    record: Record,
    sink: Arc<AckSink>,
}

#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Item>,
    store: Arc<dyn Store>,
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
        let task = tokio::spawn(batcher(
            rx,
            store.clone(),
            metrics.clone(),
            faults_committed,
        ));
        (
            Ingest {
                queue,
                store,
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
        let admission = self.store.open_session(&open).await?;
        if !matches!(admission, Admission::Admitted(_)) {
            return Ok((None, admission));
        }
        let (session, replaced) = self.sessions.attach(&open.endpoint);
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
        if let Err(error) = self.store.close_session(&session.endpoint, at_ms).await {
            self.metrics.error("store");
            error!(endpoint = %session.endpoint, %error, "cannot record session end");
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
            .send(Item {
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

async fn batcher(
    mut rx: mpsc::Receiver<Item>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    faults_committed: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (records, sinks): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|i| (i.record, i.sink)).unzip();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        let count = records.len();
        let has_faults = records
            .iter()
            .any(|r| matches!(r.body, crate::store::RecordBody::Fault(_)));
        let started = Instant::now();
        let result = store.commit(records).await;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.commit_batch_size.observe(count as f64);
        match result {
            Ok(()) => {
                for (seq, sink) in seqs.into_iter().zip(&sinks) {
                    sink.advance(seq);
                }
                if has_faults {
                    faults_committed.notify_one();
                }
            }
            Err(error) => {
                metrics.error("commit");
                error!(%error, messages = count, "commit failed; sessions will reset");
                for sink in &sinks {
                    sink.failed.notify_one();
                }
                // A failing disk should not be hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
