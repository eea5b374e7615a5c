//! Group commit for webhook deliveries. Handlers verify and compress in
//! parallel, then hand the delivery to one writer, which stores everything
//! that queued while the previous commit was being fsynced in a single
//! transaction. Each handler replies only after its own batch committed, so
//! "stored durably before the 2xx" holds while the fsync cost is shared.

use tokio::sync::{mpsc, oneshot};

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
    /// Starts the writer on the current runtime.
    pub fn start(store: Store) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Ingest { tx }, tokio::spawn(writer(store, rx)))
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

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (deliveries, replies): (Vec<PreparedDelivery>, Vec<_>) =
            batch.drain(..).map(|j| (j.delivery, j.reply)).unzip();
        match store.store_deliveries(deliveries).await {
            Ok(stored) => {
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
