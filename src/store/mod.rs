//! Durable storage (SPEC §8): sqlx over embedded SQLite or Postgres.
//!
//! All SQL lives in this module. Statements use `$N` parameters, which both
//! backends accept, through sqlx's `Any` driver.
//!
//! **Writes.** Every state change is one transaction that first locks the
//! single `audit_head` row (`UPDATE … RETURNING`), then checks its
//! precondition, writes, and appends its audit event. So writers serialise
//! on that row — across processes on Postgres (row lock), and inside one
//! process on SQLite (the database write lock) — and the audit chain can
//! never fork. Reads take no lock.
//!
//! **Durability.** SQLite runs in WAL mode with `synchronous=FULL`: a commit
//! returns only after its WAL frames are fsynced, and the HTTP reply is sent
//! only after the commit returns. Postgres commits are durable under its
//! default `synchronous_commit=on`.

pub mod alerts;
mod attempt_cache;
mod attempts;
pub mod audit;
mod changes;
mod comments;
mod gate;
mod github;
mod inbox;
mod policies;
mod states;
mod statuses;
mod view_pages;

pub use alerts::{Alert, AlertLabels, Delivery, Firing, Severity};
pub use changes::{BranchChange, BranchDelta, StoredBranch};
pub use comments::PendingComment;
pub use gate::*;
pub use github::*;
pub use inbox::{InboxCompression, InboxItem, PreparedDelivery};
pub use policies::ApprovedPolicy;
pub use states::{
    AlertKind, AlertState, AttemptState, DeliveryState, InboxOutcome, Phase, ReviewState,
    UnknownWord,
};
pub use statuses::PendingStatus;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::clock::now_ms;
pub use audit::{AuditEvent, ChainBreak};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite: one process.
    Sqlite,
    /// Postgres: one or many processes.
    Postgres,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database URL `{0}`: use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value cannot be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        )
    }
}

/// A change as the store knows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredChange {
    /// The change id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its kind.
    pub kind: String,
    /// The default branch commit it was last read at.
    pub commit: String,
    /// Its digest there.
    pub digest: String,
    /// The change set.
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// An approval recorded through the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiApproval {
    /// The approving identity.
    pub approver: String,
    /// The digest approved.
    pub digest: String,
    /// Free text.
    pub comment: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What recording an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Newly recorded (and audited).
    Created,
    /// The same approver had already approved this digest; nothing changed.
    AlreadyRecorded,
    /// No such change.
    UnknownChange,
    /// The digest is not the change's current digest.
    StaleDigest {
        /// The current digest.
        current: String,
    },
}

/// What a refresh from the default branch changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Changes seen for the first time.
    pub added: usize,
    /// Changes whose digest changed.
    pub redigested: usize,
    /// Changes no longer on the default branch.
    pub removed: usize,
    /// Nothing was written: the stored view is not at the commit the read
    /// was made against (another replica stored a later one).
    pub stale_base: bool,
    /// Per change re-stored with the same digest: authors' emails the
    /// store had and the read did not find (they are kept; see
    /// `sync_changes`). The caller adds them to its view.
    #[serde(skip)]
    pub kept_emails: BTreeMap<String, BTreeSet<String>>,
}

/// The storage handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// With SQLite, its URL: the view's rows are read with SQLite's own
    /// driver ([`Store::stored_branch`]).
    sqlite_url: Option<String>,
    /// Attempts already read, by change ([`attempt_cache`]).
    attempts: attempt_cache::AttemptCache,
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

impl Store {
    /// Connects (creating a SQLite file if missing). Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else if url.starts_with("sqlite:") {
            let sep = if url.contains('?') { '&' } else { '?' };
            (
                Backend::Sqlite,
                if url.contains("mode=") {
                    url.to_string()
                } else {
                    format!("{url}{sep}mode=rwc")
                },
            )
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            // An embedded database cannot drop a connection: a ping before
            // every use would only add a round trip to sqlx's SQLite thread
            // (one of the four that open each ingest batch's write).
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            backend,
            sqlite_url: (backend == Backend::Sqlite).then_some(url),
            attempts: Default::default(),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations from `migrations/<backend>/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Succeeds when the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Copies what SQLite's WAL holds into the database file without
    /// blocking writers or readers (a PASSIVE checkpoint), on a connection
    /// of the pool; nothing to do on Postgres.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_all(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Begins a write: locks the audit head so this transaction is the only writer.
    pub async fn write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *tx)
            .await?;
        let head = Head {
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
        };
        Ok(WriteTx {
            tx,
            head,
            backend: self.backend,
            attempts: self.attempts.clone(),
            read: Vec::new(),
        })
    }

    /// Records `approver`'s approval of `change_id` at `digest`, which must be
    /// the change's current digest. Idempotent per (change, approver, digest).
    pub async fn record_api_approval(
        &self,
        change_id: &str,
        approver: &str,
        digest: &str,
        comment: &str,
    ) -> Result<RecordOutcome, StoreError> {
        let mut w = self.write().await?;
        let current: Option<String> =
            sqlx::query("SELECT default_digest FROM changes WHERE id = $1")
                .bind(change_id)
                .fetch_optional(w.conn())
                .await?
                .map(|r| r.try_get("default_digest"))
                .transpose()?;
        let outcome = match current {
            None => RecordOutcome::UnknownChange,
            Some(current) if current != digest => RecordOutcome::StaleDigest { current },
            Some(_) => {
                let epoch: i64 = sqlx::query("SELECT COUNT(*) AS n FROM attempts WHERE change_id = $1 AND state IN ('failed', 'interrupted')")
                    .bind(change_id)
                    .fetch_one(w.conn())
                    .await?
                    .try_get("n")?;
                let inserted = sqlx::query(
                    "INSERT INTO api_approvals (change_id, approver, digest, comment, created_at, epoch) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (change_id, approver, digest, epoch) DO NOTHING",
                )
                .bind(change_id)
                .bind(approver)
                .bind(digest)
                .bind(comment)
                .bind(now_ms())
                .bind(epoch)
                .execute(w.conn())
                .await?
                .rows_affected();
                if inserted == 1 {
                    w.audit(
                        approver,
                        "approval.recorded",
                        Some(change_id),
                        serde_json::json!({"digest": digest, "comment": comment, "source": "api"}),
                    )
                    .await?;
                    RecordOutcome::Created
                } else {
                    RecordOutcome::AlreadyRecorded
                }
            }
        };
        w.commit().await?;
        Ok(outcome)
    }

    /// API approvals of a change, oldest first.
    pub async fn api_approvals(&self, change_id: &str) -> Result<Vec<ApiApproval>, StoreError> {
        api_approvals_on(&mut *self.pool.acquire().await?, change_id).await
    }

    /// Audit events in chain order, optionally only those of one change.
    pub async fn audit_events(&self, change: Option<&str>) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = match change {
            Some(c) => sqlx::query("SELECT seq, at, actor, kind, change_id, data, prev_hash, hash FROM audit WHERE change_id = $1 ORDER BY seq").bind(c),
            None => sqlx::query("SELECT seq, at, actor, kind, change_id, data, prev_hash, hash FROM audit ORDER BY seq"),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data")?;
                Ok(AuditEvent {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    kind: r.try_get("kind")?,
                    change: r.try_get("change_id")?,
                    // Unparseable data cannot hash to the stored value; verification names it.
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }

    /// Recomputes the whole chain; `Ok(Err(..))` names the first break.
    pub async fn verify_audit(&self) -> Result<Result<usize, ChainBreak>, StoreError> {
        let events = self.audit_events(None).await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let (seq, hash): (i64, String) = (head.try_get("seq")?, head.try_get("hash")?);
        Ok(audit::verify(&events, seq, &hash).map(|()| events.len()))
    }

    /// Runs raw SQL; for tests that tamper with the database on purpose.
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

struct Head {
    seq: i64,
    hash: String,
}

/// Appends one audit event: `$1` seq, `$2` at, `$3` actor, `$4` kind, `$5`
/// change, `$6` data, `$7` the previous hash, `$8` its hash.
const INSERT_AUDIT: &str = "INSERT INTO audit (seq, at, actor, kind, change_id, data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The audit event after a head: its place in the chain.
struct NextEvent {
    seq: i64,
    at: i64,
    hash: String,
}

impl Head {
    fn next(
        &self,
        at: i64,
        actor: &str,
        kind: &str,
        change: Option<&str>,
        data: &Value,
    ) -> NextEvent {
        let seq = self.seq + 1;
        let hash = audit::chain_hash(
            &self.hash,
            &audit::canonical(seq, at, actor, kind, change, data),
        );
        NextEvent { seq, at, hash }
    }
}

impl NextEvent {
    fn head(self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash,
        }
    }
}

/// A write transaction holding the audit head: the only writer until it
/// commits or drops (which rolls back).
pub struct WriteTx {
    tx: Tx<'static>,
    head: Head,
    backend: Backend,
    /// The store's attempt cache; what this transaction read is merged
    /// into it at commit, never before (it may hold uncommitted rows).
    attempts: attempt_cache::AttemptCache,
    read: gate::AttemptsRead,
}

impl WriteTx {
    /// The connection, for statements inside this transaction.
    pub(crate) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Appends an audit event in this transaction.
    pub async fn audit(
        &mut self,
        actor: &str,
        kind: &str,
        change: Option<&str>,
        data: Value,
    ) -> Result<(), StoreError> {
        let next = self.head.next(now_ms(), actor, kind, change, &data);
        sqlx::query(INSERT_AUDIT)
            .bind(next.seq)
            .bind(next.at)
            .bind(actor)
            .bind(kind)
            .bind(change)
            .bind(data.to_string())
            .bind(&self.head.hash)
            .bind(&next.hash)
            .execute(&mut *self.tx)
            .await?;
        self.head = next.head();
        Ok(())
    }

    /// Saves the new head and commits everything.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(self.head.seq)
            .bind(&self.head.hash)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        for (id, rows) in &self.read {
            self.attempts.merge(id, rows);
        }
        Ok(())
    }
}

pub(crate) async fn api_approvals_on(
    conn: &mut sqlx::AnyConnection,
    change_id: &str,
) -> Result<Vec<ApiApproval>, StoreError> {
    let rows = sqlx::query("SELECT approver, digest, comment, created_at FROM api_approvals WHERE change_id = $1 ORDER BY id")
        .bind(change_id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ApiApproval {
                approver: r.try_get("approver")?,
                digest: r.try_get("digest")?,
                comment: r.try_get("comment")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}
