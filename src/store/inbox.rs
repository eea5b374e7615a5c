//! The webhook inbox: deliveries stored byte for byte before the reply,
//! compressed when large, and processed exactly once.

use std::collections::BTreeSet;

use sqlx::Row;

use super::{Store, StoreError, WriteTx};
use crate::clock::now_ms;

/// A delivery waiting in the inbox.
#[derive(Debug, Clone)]
pub struct InboxItem {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The raw payload, decompressed.
    pub body: Vec<u8>,
    /// Earlier failed attempts.
    pub attempts: i64,
}

/// Payloads larger than this are stored deflated: GitHub's payloads are
/// repetitive JSON and shrink several-fold, so each commit writes less.
const COMPRESS_OVER_BYTES: usize = 4 * 1024;

/// A delivery ready to store: compressed off the write path, so the one
/// writer only writes.
#[derive(Debug, Clone)]
pub struct PreparedDelivery {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload as stored.
    stored: Vec<u8>,
    /// `identity` or `deflate`.
    encoding: &'static str,
    /// The raw payload's size.
    bytes: usize,
}

impl PreparedDelivery {
    /// Prepares (compresses) a raw delivery.
    pub fn new(delivery_id: &str, event: &str, body: &[u8]) -> PreparedDelivery {
        let (encoding, stored) = encode_body(body);
        PreparedDelivery {
            delivery_id: delivery_id.to_string(),
            event: event.to_string(),
            stored,
            encoding,
            bytes: body.len(),
        }
    }

    /// Bytes written for it.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

fn encode_body(body: &[u8]) -> (&'static str, Vec<u8>) {
    use std::io::Write;
    if body.len() <= COMPRESS_OVER_BYTES {
        return ("identity", body.to_vec());
    }
    let mut e = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(body).expect("writing to memory");
    ("deflate", e.finish().expect("writing to memory"))
}

fn decode_body(encoding: &str, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    match encoding {
        "identity" => Ok(stored),
        "deflate" => {
            let mut out = Vec::with_capacity(stored.len() * 4);
            flate2::read::DeflateDecoder::new(&stored[..])
                .read_to_end(&mut out)
                .map_err(|e| StoreError::Corrupt(format!("inbox payload: {e}")))?;
            Ok(out)
        }
        other => Err(StoreError::Corrupt(format!(
            "inbox payload encoding `{other}`"
        ))),
    }
}

impl Store {
    /// Deliveries due for processing, oldest first.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<InboxItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, event, body, encoding, attempts FROM inbox
             WHERE processed_at IS NULL AND next_attempt_at <= $1
             ORDER BY received_at, delivery_id LIMIT $2",
        )
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let encoding: String = r.try_get("encoding")?;
                let stored: Vec<u8> = r.try_get("body")?;
                Ok(InboxItem {
                    delivery_id: r.try_get("delivery_id")?,
                    event: r.try_get("event")?,
                    body: decode_body(&encoding, stored)?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Records a failed attempt at a delivery; with `give_up`, it is
    /// finished as `failed` and audited.
    pub async fn delivery_failed(
        &self,
        delivery_id: &str,
        error: &str,
        next_attempt_at: i64,
        give_up: bool,
    ) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        if give_up {
            if w.finish_delivery(delivery_id, super::InboxOutcome::Failed, Some(error))
                .await?
            {
                w.audit(
                    "github",
                    "webhook.failed",
                    None,
                    serde_json::json!({"delivery": delivery_id, "error": error}),
                )
                .await?;
            }
        } else {
            sqlx::query("UPDATE inbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE delivery_id = $1 AND processed_at IS NULL")
                .bind(delivery_id)
                .bind(error)
                .bind(next_attempt_at)
                .execute(w.conn())
                .await?;
        }
        w.commit().await
    }

    /// How each delivery ended: (delivery id, outcome, attempts, last error);
    /// outcome is `None` while it waits.
    pub async fn delivery_outcomes(
        &self,
    ) -> Result<Vec<(String, Option<String>, i64, Option<String>)>, StoreError> {
        sqlx::query("SELECT delivery_id, outcome, attempts, last_error FROM inbox ORDER BY received_at, delivery_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("delivery_id")?,
                    r.try_get("outcome")?,
                    r.try_get("attempts")?,
                    r.try_get("last_error")?,
                ))
            })
            .collect()
    }
}

impl WriteTx {
    /// Marks the delivery being applied (if the facts came from one; a
    /// reconcile pass has none) as applied in this transaction. False when
    /// another worker already finished it: then nothing else is written.
    pub async fn applying(&mut self, delivery: Option<&str>) -> Result<bool, StoreError> {
        match delivery {
            Some(d) => {
                self.finish_delivery(d, super::InboxOutcome::Applied, None)
                    .await
            }
            None => Ok(true),
        }
    }

    /// Marks a delivery done with `outcome`; false if it already was (by
    /// another worker), in which case the caller must not apply it.
    pub async fn finish_delivery(
        &mut self,
        delivery_id: &str,
        outcome: super::InboxOutcome,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE inbox SET processed_at = $2, outcome = $3, last_error = COALESCE($4, last_error) WHERE delivery_id = $1 AND processed_at IS NULL")
            .bind(delivery_id)
            .bind(now_ms())
            .bind(outcome)
            .bind(error)
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

impl Store {
    /// Stores webhook deliveries in the inbox, each once per delivery id,
    /// in one transaction (one fsync for the batch) with one audit event
    /// naming them. Returns, per delivery, false for a redelivery.
    pub async fn store_deliveries(
        &self,
        deliveries: Vec<PreparedDelivery>,
    ) -> Result<Vec<bool>, StoreError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.write().await?;
        // One statement for the batch; RETURNING names the rows inserted.
        // (`$N` written out: the Any driver's query builder writes `?`,
        // which Postgres refuses.)
        let rows: Vec<String> = (0..deliveries.len())
            .map(|i| {
                let n = i * 4;
                format!("(${}, ${}, ${}, ${}, $1)", n + 2, n + 3, n + 4, n + 5)
            })
            .collect();
        let sql = format!(
            "INSERT INTO inbox (delivery_id, event, body, encoding, received_at) VALUES {} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
            rows.join(", ")
        );
        let mut insert = sqlx::query(&sql).bind(now_ms());
        let mut summary = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            summary.push((d.delivery_id.clone(), d.event.clone(), d.bytes));
            insert = insert
                .bind(d.delivery_id)
                .bind(d.event)
                .bind(d.stored)
                .bind(d.encoding);
        }
        let mut inserted: BTreeSet<String> = insert
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(|r| r.try_get("delivery_id"))
            .collect::<Result<_, _>>()?;
        // A delivery id twice in one batch: the first one is the new one.
        let stored: Vec<bool> = summary
            .iter()
            .map(|(id, _, _)| inserted.remove(id))
            .collect();
        let received: Vec<serde_json::Value> = summary
            .iter()
            .zip(&stored)
            .filter(|(_, new)| **new)
            .map(|((id, event, bytes), _)| serde_json::json!({"delivery": id, "event": event, "bytes": bytes}))
            .collect();
        if !received.is_empty() {
            w.audit(
                "github",
                "webhook.received",
                None,
                serde_json::json!({"deliveries": received}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(stored)
    }

    /// Deliveries in the inbox: (delivery id, event, body bytes, processed).
    pub async fn inbox(&self) -> Result<Vec<(String, String, Vec<u8>, bool)>, StoreError> {
        let rows = sqlx::query("SELECT delivery_id, event, body, encoding, processed_at FROM inbox ORDER BY received_at, delivery_id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("delivery_id")?,
                    r.try_get("event")?,
                    decode_body(&r.try_get::<String, _>("encoding")?, r.try_get("body")?)?,
                    r.try_get::<Option<i64>, _>("processed_at")?.is_some(),
                ))
            })
            .collect()
    }
}
