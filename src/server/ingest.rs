//! Group commit for webhook deliveries. Handlers verify and compress in
//! parallel, then hand the delivery to one writer, which stores everything
//! that queued while the previous commit was being fsynced in a single
//! transaction. Each handler replies only after its own batch committed, so
//! "stored durably before the 2xx" holds while the fsync cost is shared.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::store::{PreparedDelivery, Store};

/// At most this many deliveries per transaction.
const MAX_BATCH: usize = 256;

/// Queued deliveries beyond this make handlers wait (backpressure).
const QUEUE: usize = 4096;

struct Job {
    delivery: PreparedDelivery,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// The handle handlers use.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

impl Ingest {
    /// Starts the writer, and its background checkpointer, on the current
    /// runtime.
    pub fn start(store: Store) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let checkpoint = Arc::new(Notify::new());
        let task = async move {
            tokio::select! {
                () = writer(store.clone(), rx, checkpoint.clone()) => {}
                () = checkpointer(store, checkpoint) => {}
            }
        };
        (Ingest { tx }, tokio::spawn(task))
    }

    /// Stores one delivery durably: true if new, false for a redelivery.
    /// An error means it was not stored (the caller must not 2xx).
    pub async fn store(&self, delivery: PreparedDelivery) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { delivery, reply })
            .await
            .map_err(|_| "the inbox writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the inbox writer has stopped".to_string())?
    }
}

/// At most one background checkpoint per this while deliveries arrive.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Copies the WAL into the database on a connection of its own while the
/// writer goes on. Without it, every 1,000 pages one of the writer's
/// commits ran SQLite's automatic checkpoint itself, and the deliveries in
/// that batch waited for it: p99 under `wrk -t2 -c64` went from 14.7–17.0
/// ms to 11.5–13.0 ms with it (README, "Webhook ingest"). The automatic
/// checkpoint stays on and bounds the WAL; it finds little left to copy.
async fn checkpointer(store: Store, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        if let Err(e) = store.checkpoint().await {
            tracing::warn!(error = %e, "background checkpoint failed; the automatic one still runs");
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>, checkpoint: Arc<Notify>) {
    let mut inbox = store.inbox_writer();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (deliveries, replies): (Vec<PreparedDelivery>, Vec<_>) =
            batch.drain(..).map(|j| (j.delivery, j.reply)).unzip();
        match inbox.store(&deliveries).await {
            Ok(stored) => {
                checkpoint.notify_one();
                for (reply, new) in replies.into_iter().zip(stored) {
                    let _ = reply.send(Ok(new));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, deliveries = replies.len(), "cannot store deliveries");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
