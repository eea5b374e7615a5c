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

/// Payloads larger than this are stored compressed: GitHub's payloads are
/// repetitive JSON and shrink several-fold, so each commit writes less.
const COMPRESS_OVER_BYTES: usize = 4 * 1024;

/// How large payloads are compressed in the inbox (`server.inbox_compression`).
/// Every stored row names its encoding, so rows written under another
/// setting stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxCompression {
    /// LZ4 (block format), the default: 0.4 of deflate's CPU per 30 KB
    /// delivery, with rows 3% larger (see README, "Webhook ingest").
    /// Versions before b76bd33 (2026-11-28) cannot read these rows: to roll
    /// back past it, set `deflate` first.
    #[default]
    Lz4,
    /// Deflate at its fastest level: the smallest rows, the most CPU, and
    /// readable by every version.
    Deflate,
    /// Stored as received: no CPU, the largest writes.
    None,
}

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
    /// `identity`, `deflate` or `lz4`.
    encoding: &'static str,
    /// The raw payload's size.
    bytes: usize,
}

impl PreparedDelivery {
    /// Prepares (compresses) a raw delivery.
    pub fn new(
        delivery_id: &str,
        event: &str,
        body: &[u8],
        compression: InboxCompression,
    ) -> PreparedDelivery {
        let (encoding, stored) = encode_body(body, compression);
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

/// The stored form of a payload and its encoding's name.
fn encode_body(body: &[u8], compression: InboxCompression) -> (&'static str, Vec<u8>) {
    use std::io::Write;
    if body.len() <= COMPRESS_OVER_BYTES {
        return ("identity", body.to_vec());
    }
    match compression {
        InboxCompression::None => ("identity", body.to_vec()),
        InboxCompression::Lz4 => ("lz4", lz4_flex::block::compress_prepend_size(body)),
        InboxCompression::Deflate => {
            let mut e = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            e.write_all(body).expect("writing to memory");
            ("deflate", e.finish().expect("writing to memory"))
        }
    }
}

/// The payload a stored row holds. A row that does not decode is reported
/// as corrupt, never trusted: an LZ4 row's declared size is checked against
/// the largest delivery before anything is allocated for it.
fn decode_body(encoding: &str, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("inbox payload: {e}"));
    match encoding {
        "identity" => Ok(stored),
        "deflate" => {
            let mut out =
                Vec::with_capacity((stored.len() * 4).min(crate::server::webhooks::MAX_BODY_BYTES));
            flate2::read::DeflateDecoder::new(&stored[..])
                .take(crate::server::webhooks::MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(&e))?;
            if out.len() > crate::server::webhooks::MAX_BODY_BYTES {
                return Err(corrupt(&"larger than any delivery"));
            }
            Ok(out)
        }
        "lz4" => {
            let (size, block) = stored
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt(&"truncated"))?;
            let size = u32::from_le_bytes(*size) as usize;
            if size > crate::server::webhooks::MAX_BODY_BYTES {
                return Err(corrupt(&"larger than any delivery"));
            }
            let out = lz4_flex::block::decompress(block, size).map_err(|e| corrupt(&e))?;
            if out.len() != size {
                return Err(corrupt(&"shorter than its recorded size"));
            }
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
        let mut due = Vec::with_capacity(rows.len());
        for r in &rows {
            let delivery_id: String = r.try_get("delivery_id")?;
            let encoding: String = r.try_get("encoding")?;
            match decode_body(&encoding, r.try_get("body")?) {
                Ok(body) => due.push(InboxItem {
                    delivery_id,
                    event: r.try_get("event")?,
                    body,
                    attempts: r.try_get("attempts")?,
                }),
                // One row that cannot be read (damaged, or written by a
                // newer version in an encoding this one lacks) is finished
                // as failed and audited, so it never holds up the rest.
                Err(e) => {
                    tracing::error!(delivery = %delivery_id, error = %e, "inbox row cannot be read; failed");
                    self.delivery_failed(&delivery_id, &e.to_string(), now_ms(), true)
                        .await?;
                }
            }
        }
        Ok(due)
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

/// Stores ingest batches for the one ingest writer (`server::ingest`): each
/// delivery once per delivery id, a batch in one transaction (one fsync)
/// with one audit event naming the new ones.
///
/// On SQLite the writer keeps a connection of its own and a batch takes two
/// round trips to sqlx's SQLite thread, not the six of a [`WriteTx`]
/// (begin, audit head, insert, audit, head, commit). The writer is the
/// ingest bottleneck and each round trip waits for a busy core to wake that
/// thread (README, "Webhook ingest").
pub struct InboxWriter {
    store: Store,
    /// SQLite: the writer's connection, taken out of the pool. It is
    /// dropped after any error: closing it rolls back what a failed batch
    /// left open, and the next batch opens a fresh one.
    conn: Option<sqlx::AnyConnection>,
}

impl Store {
    /// The handle the ingest writer stores batches with.
    pub fn inbox_writer(&self) -> InboxWriter {
        InboxWriter {
            store: self.clone(),
            conn: None,
        }
    }
}

impl InboxWriter {
    /// Stores a batch. Returns, per delivery, false for a redelivery. An
    /// error means none of the batch was stored.
    pub async fn store(
        &mut self,
        deliveries: &[PreparedDelivery],
    ) -> Result<Vec<bool>, StoreError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        if self.store.backend != super::Backend::Sqlite {
            return store_in_write_tx(&self.store, deliveries).await;
        }
        // Taken out for the batch and put back only when it committed: a
        // batch that fails, or whose future is dropped half-way, takes
        // its connection (and the transaction it may have left open) with it.
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.store.pool.acquire().await?.detach(),
        };
        let stored = store_in_two_round_trips(&mut conn, deliveries).await?;
        self.conn = Some(conn);
        Ok(stored)
    }
}

/// The batch's insert: `$1` the time received, then four per delivery.
/// RETURNING names the rows inserted. (`$N` written out: the Any driver's
/// query builder writes `?`, which Postgres refuses.)
fn insert_batch(n: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let n = i * 4;
            format!("(${}, ${}, ${}, ${}, $1)", n + 2, n + 3, n + 4, n + 5)
        })
        .collect();
    format!(
        "INSERT INTO inbox (delivery_id, event, body, encoding, received_at) VALUES {} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
        rows.join(", ")
    )
}

fn bind_batch<'q>(
    sql: &'q str,
    deliveries: &'q [PreparedDelivery],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut insert = sqlx::query(sql).bind(now_ms());
    for d in deliveries {
        insert = insert
            .bind(d.delivery_id.as_str())
            .bind(d.event.as_str())
            .bind(d.stored.as_slice())
            .bind(d.encoding);
    }
    insert
}

/// Which deliveries were new (a delivery id twice in one batch: the first
/// one), and the audit event's data naming them, if any was.
fn received(
    deliveries: &[PreparedDelivery],
    mut inserted: BTreeSet<String>,
) -> (Vec<bool>, Option<serde_json::Value>) {
    let stored: Vec<bool> = deliveries
        .iter()
        .map(|d| inserted.remove(&d.delivery_id))
        .collect();
    let received: Vec<serde_json::Value> = deliveries
        .iter()
        .zip(&stored)
        .filter(|(_, new)| **new)
        .map(|(d, _)| serde_json::json!({"delivery": d.delivery_id, "event": d.event, "bytes": d.bytes}))
        .collect();
    let data = (!received.is_empty()).then(|| serde_json::json!({"deliveries": received}));
    (stored, data)
}

const RECEIVED_BY: &str = "github";
const RECEIVED: &str = "webhook.received";

/// SQLite: `BEGIN IMMEDIATE` takes the write lock, so the audit head read
/// next is the head this batch appends to; the insert goes in the same
/// round trip. The second appends the event, moves the head and commits.
async fn store_in_two_round_trips(
    conn: &mut sqlx::AnyConnection,
    deliveries: &[PreparedDelivery],
) -> Result<Vec<bool>, StoreError> {
    let open = format!(
        "BEGIN IMMEDIATE; SELECT seq, hash FROM audit_head WHERE id = 1; {}",
        insert_batch(deliveries.len())
    );
    let mut head = None;
    let mut inserted = BTreeSet::new();
    for row in bind_batch(&open, deliveries).fetch_all(&mut *conn).await? {
        if row.try_column("hash").is_ok() {
            head = Some(super::Head {
                seq: row.try_get("seq")?,
                hash: row.try_get("hash")?,
            });
        } else {
            inserted.insert(row.try_get::<String, _>("delivery_id")?);
        }
    }
    let head = head.ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
    let (stored, data) = received(deliveries, inserted);
    match data {
        Some(data) => {
            let next = head.next(now_ms(), RECEIVED_BY, RECEIVED, None, &data);
            let close = format!(
                "{}; UPDATE audit_head SET seq = $1, hash = $8 WHERE id = 1; COMMIT",
                super::INSERT_AUDIT
            );
            sqlx::query(&close)
                .bind(next.seq)
                .bind(next.at)
                .bind(RECEIVED_BY)
                .bind(RECEIVED)
                .bind(None::<&str>)
                .bind(data.to_string())
                .bind(&head.hash)
                .bind(&next.hash)
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
        }
    }
    Ok(stored)
}

/// Postgres (and any backend): an ordinary write transaction.
async fn store_in_write_tx(
    store: &Store,
    deliveries: &[PreparedDelivery],
) -> Result<Vec<bool>, StoreError> {
    let mut w = store.write().await?;
    let sql = insert_batch(deliveries.len());
    let inserted: BTreeSet<String> = bind_batch(&sql, deliveries)
        .fetch_all(w.conn())
        .await?
        .iter()
        .map(|r| r.try_get("delivery_id"))
        .collect::<Result<_, _>>()?;
    let (stored, data) = received(deliveries, inserted);
    if let Some(data) = data {
        w.audit(RECEIVED_BY, RECEIVED, None, data).await?;
    }
    w.commit().await?;
    Ok(stored)
}

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Vec<u8> {
        let fixture = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/fixtures/github-webhooks/pull_request_review.submitted.json"),
        )
        .expect("the shared fixtures beside the repository");
        assert!(fixture.len() > COMPRESS_OVER_BYTES);
        fixture
    }

    #[test]
    fn every_setting_stores_a_payload_that_reads_back_byte_for_byte() {
        let body = payload();
        for (compression, encoding) in [
            (InboxCompression::Lz4, "lz4"),
            (InboxCompression::Deflate, "deflate"),
            (InboxCompression::None, "identity"),
        ] {
            let (named, stored) = encode_body(&body, compression);
            assert_eq!(named, encoding);
            if compression != InboxCompression::None {
                assert!(
                    stored.len() < body.len() / 2,
                    "{encoding}: {}",
                    stored.len()
                );
            }
            assert_eq!(decode_body(named, stored).unwrap(), body, "{encoding}");
        }
        // Small payloads are stored as they are, whatever the setting.
        assert_eq!(encode_body(b"{}", InboxCompression::Lz4).0, "identity");
    }

    #[test]
    fn a_damaged_row_is_reported_corrupt_not_trusted() {
        let body = payload();
        let (_, mut lz4) = encode_body(&body, InboxCompression::Lz4);
        // A size claiming 4 GiB is refused before anything is allocated.
        lz4[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_body("lz4", lz4),
            Err(StoreError::Corrupt(_))
        ));
        let (_, lz4) = encode_body(&body, InboxCompression::Lz4);
        assert!(matches!(
            decode_body("lz4", lz4[..lz4.len() / 2].to_vec()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_body("lz4", vec![1, 2]),
            Err(StoreError::Corrupt(_))
        ));
        let (_, deflate) = encode_body(&body, InboxCompression::Deflate);
        assert!(matches!(
            decode_body("deflate", deflate[..deflate.len() / 2].to_vec()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_body("zstd", body),
            Err(StoreError::Corrupt(_))
        ));
    }
}
