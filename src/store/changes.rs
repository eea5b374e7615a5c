//! The changes on the default branch as last read: their digests and
//! definitions, and the labels of their earlier revisions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use std::str::FromStr;

use serde_json::Value;
use sqlx::Row;

use super::view_pages::{self, Columns, Entry};
use super::{Store, StoreError, StoredChange, SyncReport, WriteTx};
use crate::clock::now_ms;
use crate::model::{CoveredPath, EmailSets, EmailsById, OnBranch, Shared, Stored};

/// The labels of a definition, for its row's columns.
#[derive(serde::Deserialize)]
struct Labels {
    title: String,
    kind: String,
}

/// A change row as stored, compared with what a read found.
struct Known {
    digest: String,
    definition: String,
    previous: Option<String>,
    covered: Option<String>,
    emails: Option<String>,
    packed: Option<Vec<u8>>,
    outline: Option<String>,
}

/// The labels (kind, targets) of every earlier revision, as stored: the
/// list so far plus the definition being replaced.
fn earlier_labels(replaced: &str, so_far: Option<&str>) -> String {
    let mut all: Vec<Value> = so_far
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(replaced) {
        let label = serde_json::json!({"kind": v["kind"], "targets": v["targets"]});
        if !all.contains(&label) {
            all.push(label);
        }
    }
    Value::Array(all).to_string()
}

/// One change as the default branch holds it, to be stored.
pub struct BranchChange<'a> {
    /// Its id.
    pub id: &'a str,
    /// The change set, its digest and what the digest covers (unpacked
    /// one row at a time as it is written).
    pub held: &'a OnBranch,
    /// Emails of the commits that touched what it covers.
    pub emails: &'a BTreeSet<String>,
}

/// What a read of the default branch found, to be stored in one
/// transaction: the changes read (all of them, or only those a move
/// touched), the ids gone, and the change sets that do not validate.
pub struct BranchDelta<'a> {
    /// The branch.
    pub branch: &'a str,
    /// The commit read.
    pub commit: &'a str,
    /// The commit the stored view must still be at for `read` to apply on
    /// top of it (`None` with `full`).
    pub base: Option<&'a str>,
    /// Changes read at `commit`.
    pub read: Vec<BranchChange<'a>>,
    /// With `full`, every change not in `read` is gone; else these are.
    pub removed: Vec<String>,
    /// Whether `read` is every change on the branch.
    pub full: bool,
    /// Change sets at `commit` that do not validate.
    pub invalid: &'a BTreeSet<String>,
}

/// The default branch's view as stored: enough to serve without reading
/// git when the branch has not moved.
pub struct StoredBranch {
    /// The commit the rows were read at.
    pub commit: String,
    /// Per change: the set, packed with its digest and covered paths.
    pub changes: BTreeMap<String, OnBranch>,
    /// Per change: the emails of the commits that touched what it covers.
    pub emails: EmailsById,
    /// Change sets there that do not validate.
    pub invalid: BTreeSet<String>,
}

/// One change row of the stored view, as read.
struct ViewRow<'r> {
    id: &'r str,
    digest: &'r str,
    covered: Option<&'r str>,
    emails: Option<&'r str>,
    packed: Option<&'r [u8]>,
    outline: Option<&'r str>,
}

/// The stored view's rows taken in so far. Collected, then built in one
/// go: a map built from sorted entries has full nodes, where one inserted
/// into key by key has half-full ones (at 100,000 changes, megabytes).
#[derive(Default)]
struct ViewRows {
    changes: Vec<(String, OnBranch)>,
    emails: Vec<(String, std::sync::Arc<BTreeSet<String>>)>,
    shared: Shared,
    sets: EmailSets,
}

impl ViewRows {
    /// Takes `row` in; `false` when it cannot be used as it is (written
    /// before the view was stored this way, in another format, damaged, or
    /// not bound to its digest): then the branch must be read again.
    fn take(&mut self, row: ViewRow<'_>) -> bool {
        let (Some(covered), Some(emails), Some(packed), Some(outline)) =
            (row.covered, row.emails, row.packed, row.outline)
        else {
            return false;
        };
        let parsed = (
            serde_json::from_str::<Vec<CoveredPath>>(covered),
            serde_json::from_str::<BTreeSet<String>>(emails),
        );
        let (Ok(covered), Ok(emails)) = parsed else {
            return false;
        };
        // The covered paths must still give the digest approvals bind to,
        // and the packed change set must be the one stored with it.
        let stored = Stored {
            packed: packed.to_vec(),
            outline,
            covered: &covered,
            digest: row.digest,
        };
        let Some(held) = OnBranch::from_stored(row.id, stored, &mut self.shared) else {
            return false;
        };
        self.changes.push((row.id.to_string(), held));
        self.emails
            .push((row.id.to_string(), self.sets.get(emails)));
        true
    }

    /// The changes and their emails, by id.
    fn finish(self) -> (BTreeMap<String, OnBranch>, EmailsById) {
        (
            self.changes.into_iter().collect(),
            self.emails.into_iter().collect(),
        )
    }
}

/// The rows held by `pages`, or `None` when one cannot be used: damaged,
/// or an entry that is not on its own page or does not match its row in
/// `rows` (id → digest, emails).
fn take_pages(pages: &[(i64, Vec<u8>)], rows: &HashMap<&str, (&str, &str)>) -> Option<ViewRows> {
    let mut view = ViewRows::default();
    for (page, body) in pages {
        let raw = view_pages::open(body)?;
        for e in view_pages::entries(&raw)? {
            if view_pages::page_of(e.id) != *page || rows.get(e.id) != Some(&(e.digest, e.emails)) {
                return None;
            }
            let row = ViewRow {
                id: e.id,
                digest: e.digest,
                covered: Some(e.covered),
                emails: Some(e.emails),
                packed: Some(e.packed),
                outline: Some(e.outline),
            };
            if !view.take(row) {
                return None;
            }
        }
    }
    Some(view)
}

/// Writes every page of `branch` from `columns`, every change on it.
/// Pages of any other branch go: the rows describe one branch.
async fn write_all_pages(
    w: &mut WriteTx,
    branch: &str,
    columns: &[Columns],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM view_pages")
        .execute(w.conn())
        .await?;
    let mut pages: BTreeMap<i64, Vec<Entry<'_>>> = BTreeMap::new();
    for c in columns {
        pages
            .entry(view_pages::page_of(&c.id))
            .or_default()
            .push(c.entry());
    }
    for (page, entries) in pages {
        put_page(w, branch, page, &view_pages::encode(&entries)).await?;
    }
    Ok(())
}

/// Rewrites only the pages that hold a change read or removed by a move;
/// `false` when one of them cannot be read (then no page can be trusted).
async fn write_touched_pages(
    w: &mut WriteTx,
    branch: &str,
    columns: &[Columns],
    removed: &[String],
) -> Result<bool, StoreError> {
    let mut touched: BTreeMap<i64, (Vec<&Columns>, Vec<&str>)> = BTreeMap::new();
    for c in columns {
        touched
            .entry(view_pages::page_of(&c.id))
            .or_default()
            .0
            .push(c);
    }
    for id in removed {
        touched
            .entry(view_pages::page_of(id))
            .or_default()
            .1
            .push(id);
    }
    for (page, (read, gone)) in touched {
        let body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM view_pages WHERE branch = $1 AND page = $2")
                .bind(branch)
                .bind(page)
                .fetch_optional(w.conn())
                .await?;
        let raw = match body.as_deref().map(view_pages::open) {
            None => Vec::new(),
            Some(Some(raw)) => raw,
            Some(None) => return Ok(false),
        };
        let mut entries: BTreeMap<&str, Entry<'_>> = match body {
            None => BTreeMap::new(),
            Some(_) => match view_pages::entries(&raw) {
                Some(entries) => entries.into_iter().map(|e| (e.id, e)).collect(),
                None => return Ok(false),
            },
        };
        for id in gone {
            entries.remove(id);
        }
        for c in read {
            entries.insert(&c.id, c.entry());
        }
        if entries.is_empty() {
            sqlx::query("DELETE FROM view_pages WHERE branch = $1 AND page = $2")
                .bind(branch)
                .bind(page)
                .execute(w.conn())
                .await?;
        } else {
            let entries: Vec<Entry<'_>> = entries.into_values().collect();
            put_page(w, branch, page, &view_pages::encode(&entries)).await?;
        }
    }
    Ok(true)
}

async fn put_page(w: &mut WriteTx, branch: &str, page: i64, body: &[u8]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO view_pages (branch, page, body) VALUES ($1, $2, $3)
         ON CONFLICT (branch, page) DO UPDATE SET body = $3",
    )
    .bind(branch)
    .bind(page)
    .bind(body)
    .execute(w.conn())
    .await?;
    Ok(())
}

impl Store {
    /// Records what a read of the default branch found, and the commit it
    /// was read at, in one transaction. Rows are written only where the
    /// digest, covered paths or emails differ; an audit event marks each
    /// change seen, re-digested or removed.
    pub async fn sync_changes(&self, delta: &BranchDelta<'_>) -> Result<SyncReport, StoreError> {
        let mut w = self.write().await?;
        let mut report = SyncReport::default();
        let stored = sqlx::query(
            "SELECT commit_sha, updated_at, pages_at FROM branch_views WHERE branch = $1",
        )
        .bind(delta.branch)
        .fetch_optional(w.conn())
        .await?;
        let (stored, paged) = match stored {
            Some(r) => (
                Some(r.try_get::<String, _>("commit_sha")?),
                r.try_get::<Option<i64>, _>("pages_at")? == Some(r.try_get("updated_at")?),
            ),
            None => (None, false),
        };
        // Another replica may have stored a later read: then this delta
        // is against the wrong rows, and the caller reads in full.
        if !delta.full && stored.as_deref() != delta.base {
            report.stale_base = true;
            return Ok(report);
        }
        // A full read compares with every row; a delta only with its own.
        const COLUMNS: &str =
            "SELECT id, default_digest, definition, previous_definition, covered, emails, packed, outline FROM changes";
        let rows = if delta.full {
            sqlx::query(COLUMNS).fetch_all(w.conn()).await?
        } else {
            let ids: Vec<&str> = delta
                .read
                .iter()
                .map(|c| c.id)
                .chain(delta.removed.iter().map(String::as_str))
                .collect();
            let mut rows = Vec::new();
            for chunk in ids.chunks(500) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!("{COLUMNS} WHERE id IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                rows.extend(q.fetch_all(w.conn()).await?);
            }
            rows
        };
        let known: HashMap<String, Known> = rows
            .into_iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    Known {
                        digest: r.try_get("default_digest")?,
                        definition: r.try_get("definition")?,
                        previous: r.try_get("previous_definition")?,
                        covered: r.try_get("covered")?,
                        emails: r.try_get("emails")?,
                        packed: r.try_get("packed")?,
                        outline: r.try_get("outline")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let now = now_ms();
        // Each change's view columns as written, for the pages.
        let mut written = Vec::with_capacity(delta.read.len());
        // A first start at 100,000 changes spends seconds here.
        let mut logged = std::time::Instant::now();
        for (done, c) in delta.read.iter().enumerate() {
            if logged.elapsed() >= std::time::Duration::from_secs(2) {
                logged = std::time::Instant::now();
                tracing::info!(done, total = delta.read.len(), "storing change sets");
            }
            let (id, digest) = (c.id, c.held.digest());
            written.push(Columns::of(id, c.held, c.emails));
            let Some(Columns {
                covered,
                emails,
                outline,
                packed,
                ..
            }) = written.last_mut()
            else {
                unreachable!("just pushed")
            };
            let before = known.get(id);
            let previous = before.map(|k| k.digest.as_str());
            if let Some(k) = before.filter(|k| k.digest == digest.as_str()) {
                // Same revision: only what a newer version adds may be
                // missing. Authors are only ever added: a full read (after
                // a rewrite, or by another replica) finds fewer than the
                // moves stored one by one did, and losing one would let
                // them approve their own change.
                let stored: BTreeSet<String> = k
                    .emails
                    .as_deref()
                    .and_then(|e| serde_json::from_str(e).ok())
                    .unwrap_or_default();
                if !stored.is_subset(c.emails) {
                    let all: BTreeSet<String> = stored.union(c.emails).cloned().collect();
                    *emails = serde_json::to_string(&all).unwrap_or_default();
                    report.kept_emails.insert(id.to_string(), all);
                }
                if k.covered.as_deref() != Some(covered.as_str())
                    || k.emails.as_deref() != Some(emails.as_str())
                    || k.packed.as_deref() != Some(&packed[..])
                    || k.outline.as_deref() != Some(outline.as_str())
                {
                    sqlx::query("UPDATE changes SET covered = $2, emails = $3, packed = $4, outline = $5 WHERE id = $1")
                        .bind(id)
                        .bind(&*covered)
                        .bind(&*emails)
                        .bind(&*packed)
                        .bind(&*outline)
                        .execute(w.conn())
                        .await?;
                }
                continue;
            }
            // The packed JSON is the definition as stored: only the labels
            // are parsed out of it.
            let definition = c.held.definition();
            let now_labels: Labels = serde_json::from_str(&definition)
                .map_err(|e| StoreError::Corrupt(format!("change `{id}`: {e}")))?;
            // Every earlier revision's kind and targets, cumulatively: two
            // edits in a row must not shed a policy either.
            let labels = before.map(|k| earlier_labels(&k.definition, k.previous.as_deref()));
            sqlx::query(
                "INSERT INTO changes (id, title, kind, default_commit, default_digest, definition, updated_at, covered, emails, packed, outline)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12)
                 ON CONFLICT (id) DO UPDATE SET title = $2, kind = $3, default_commit = $4, default_digest = $5, definition = $6, updated_at = $7,
                   previous_definition = $8, covered = $9, emails = $10, packed = $11, outline = $12",
            )
            .bind(id)
            .bind(&now_labels.title)
            .bind(&now_labels.kind)
            .bind(delta.commit)
            .bind(digest.as_str())
            .bind(&definition)
            .bind(now)
            .bind(labels)
            .bind(&*covered)
            .bind(&*emails)
            .bind(&*packed)
            .bind(&*outline)
            .execute(w.conn())
            .await?;
            sqlx::query("INSERT INTO change_digests (change_id, commit_sha, digest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(delta.commit)
                .bind(digest.as_str())
                .execute(w.conn())
                .await?;
            let (kind, data) = match previous {
                None => {
                    report.added += 1;
                    (
                        "change.seen",
                        serde_json::json!({"commit": delta.commit, "digest": digest}),
                    )
                }
                Some(old) => {
                    report.redigested += 1;
                    (
                        "change.digest-changed",
                        serde_json::json!({"commit": delta.commit, "digest": digest, "previous": old}),
                    )
                }
            };
            w.audit("changegate", kind, Some(id), data).await?;
        }
        let gone: Vec<&String> = if delta.full {
            let read: HashSet<&str> = delta.read.iter().map(|c| c.id).collect();
            known
                .keys()
                .filter(|id| !read.contains(id.as_str()))
                .collect()
        } else {
            delta
                .removed
                .iter()
                .filter(|id| known.contains_key(*id))
                .collect()
        };
        for id in gone {
            sqlx::query("DELETE FROM changes WHERE id = $1")
                .bind(id)
                .execute(w.conn())
                .await?;
            w.audit(
                "changegate",
                "change.removed",
                Some(id),
                serde_json::json!({"commit": delta.commit}),
            )
            .await?;
            report.removed += 1;
        }
        // The rows describe one branch: a view stored for another (the
        // default branch was changed) no longer matches them.
        sqlx::query("DELETE FROM branch_views WHERE branch <> $1")
            .bind(delta.branch)
            .execute(w.conn())
            .await?;
        let pages_at = if delta.full {
            write_all_pages(&mut w, delta.branch, &written).await?;
            Some(now)
        } else if paged
            && write_touched_pages(&mut w, delta.branch, &written, &delta.removed).await?
        {
            Some(now)
        } else {
            // Pages already unused, or one that cannot be read: the next
            // start writes them all again from the rows.
            sqlx::query("DELETE FROM view_pages")
                .execute(w.conn())
                .await?;
            None
        };
        let invalid = serde_json::to_string(delta.invalid).unwrap_or_default();
        sqlx::query(
            "INSERT INTO branch_views (branch, commit_sha, invalid, updated_at, pages_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (branch) DO UPDATE SET commit_sha = $2, invalid = $3, updated_at = $4, pages_at = $5",
        )
        .bind(delta.branch)
        .bind(delta.commit)
        .bind(&invalid)
        .bind(now)
        .bind(pages_at)
        .execute(w.conn())
        .await?;
        w.commit().await?;
        if delta.full && self.backend() == super::Backend::Sqlite {
            // The WAL grew to the size of that one transaction (200 MB at
            // 100,000 changes) and stays so; a restart after a crash would
            // read all of it back. Best effort: a busy reader only delays it.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
            {
                tracing::debug!(error = %e, "cannot checkpoint the WAL after a full read");
            }
        }
        Ok(report)
    }

    /// The default branch's view as last stored, or `None` when there is
    /// none or a row predates the persisted view (then the branch is read
    /// in full). Read from its pages when they are current; else from its
    /// rows, and then the pages are written again for the next start.
    pub async fn stored_branch(&self, branch: &str) -> Result<Option<StoredBranch>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT commit_sha, invalid, updated_at, pages_at FROM branch_views WHERE branch = $1",
        )
        .bind(branch)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let commit: String = row.try_get("commit_sha")?;
        let invalid: String = row.try_get("invalid")?;
        let updated_at: i64 = row.try_get("updated_at")?;
        let paged = row.try_get::<Option<i64>, _>("pages_at")? == Some(updated_at);
        let Ok(invalid) = serde_json::from_str::<BTreeSet<String>>(&invalid) else {
            return Ok(None);
        };
        if paged {
            match self.view_from_pages(branch).await? {
                Some((changes, emails)) => {
                    return Ok(Some(StoredBranch {
                        commit,
                        changes,
                        emails,
                        invalid,
                    }))
                }
                None => tracing::warn!("the stored view's pages cannot be used; reading its rows"),
            }
        }
        let Some((changes, emails)) = self.view_from_rows().await? else {
            return Ok(None);
        };
        let stored = StoredBranch {
            commit,
            changes,
            emails,
            invalid,
        };
        // The first start after an upgrade, or after a page was damaged.
        if let Err(e) = self.write_pages(branch, &stored, updated_at).await {
            tracing::warn!(error = %e, "cannot write the stored view's pages; the next start reads its rows again");
        }
        Ok(Some(stored))
    }

    /// The view from its pages, or `None` when one cannot be used or they
    /// do not hold exactly the change rows: the same ids, each with its
    /// row's digest and emails. That check is what binds the pages to the
    /// rows; the stamp only says whether reading them is worth trying.
    async fn view_from_pages(
        &self,
        branch: &str,
    ) -> Result<Option<(BTreeMap<String, OnBranch>, EmailsById)>, StoreError> {
        let pages: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT page, body FROM view_pages WHERE branch = $1")
                .bind(branch)
                .fetch_all(&self.pool)
                .await?;
        // Every row's (id, digest, emails) in one value, so the check does
        // not pay the per-row cost the pages avoid. Ids are `[a-z0-9._-]`
        // and emails are JSON, so neither holds the separators.
        let listing = match self.backend() {
            super::Backend::Sqlite => "SELECT group_concat(id || char(31) || default_digest || char(31) || COALESCE(emails, ''), char(30)) FROM changes",
            super::Backend::Postgres => "SELECT string_agg(id || chr(31) || default_digest || chr(31) || COALESCE(emails, ''), chr(30)) FROM changes",
        };
        let listing: Option<String> = sqlx::query_scalar(listing).fetch_one(&self.pool).await?;
        // Taken in on every core: each part builds its own rows, and the
        // parts are put together once all of them could be used.
        let taken = tokio::task::spawn_blocking(move || {
            let listing = listing.unwrap_or_default();
            let rows: HashMap<&str, (&str, &str)> = listing
                .split('\u{1e}')
                .filter(|row| !row.is_empty())
                .filter_map(|row| {
                    let mut fields = row.splitn(3, '\u{1f}');
                    Some((fields.next()?, (fields.next()?, fields.next()?)))
                })
                .collect();
            let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
            let per_part = pages.len().div_ceil(parts).max(1);
            std::thread::scope(|scope| {
                let parts: Vec<_> = pages
                    .chunks(per_part)
                    .map(|part| scope.spawn(|| take_pages(part, &rows)))
                    .collect();
                let mut all = ViewRows::default();
                for part in parts {
                    // A part that panicked is a part that cannot be used.
                    let part = part.join().ok().flatten()?;
                    all.changes.extend(part.changes);
                    all.emails.extend(part.emails);
                }
                let (changes, emails) = all.finish();
                // Each row once: no id missing, none held twice.
                (changes.len() == rows.len() && emails.len() == rows.len())
                    .then_some((changes, emails))
            })
        })
        .await;
        Ok(taken.ok().flatten())
    }

    /// The view from the change rows, or `None` at the first row that
    /// cannot be used as it is.
    async fn view_from_rows(
        &self,
    ) -> Result<Option<(BTreeMap<String, OnBranch>, EmailsById)>, StoreError> {
        // Streamed: SQLite's worker reads the next rows while these are
        // taken in, so the two overlap. No change set is parsed: each row
        // holds it packed, as the view keeps it.
        const VIEW: &str =
            "SELECT id, default_digest, covered, emails, packed, outline FROM changes";
        let mut view = ViewRows::default();
        // The same for either driver's rows: `false` at the first row that
        // cannot be used as it is.
        macro_rules! take_all {
            ($rows:expr) => {{
                let mut rows = $rows;
                let mut usable = true;
                while let Some(r) = futures_util::TryStreamExt::try_next(&mut rows).await? {
                    let row = ViewRow {
                        id: r.try_get("id")?,
                        digest: r.try_get("default_digest")?,
                        covered: r.try_get("covered")?,
                        emails: r.try_get("emails")?,
                        packed: r.try_get("packed")?,
                        outline: r.try_get("outline")?,
                    };
                    if !view.take(row) {
                        usable = false;
                        break;
                    }
                }
                usable
            }};
        }
        let usable = match &self.sqlite_url {
            // SQLite's own driver for this one query: it hands rows over
            // without the `Any` driver's copy of every value (a restart
            // reads every change row).
            Some(url) => {
                use sqlx::{ConnectOptions, Connection};
                let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .connect()
                    .await?;
                let usable = take_all!(sqlx::query(VIEW).fetch(&mut conn));
                conn.close().await?;
                usable
            }
            None => take_all!(sqlx::query(VIEW).fetch(&self.pool)),
        };
        Ok(usable.then(|| view.finish()))
    }

    /// Writes the pages of `stored` and marks them current, unless the view
    /// was written again since it was read at `updated_at`.
    async fn write_pages(
        &self,
        branch: &str,
        stored: &StoredBranch,
        updated_at: i64,
    ) -> Result<(), StoreError> {
        let none = BTreeSet::new();
        let columns: Vec<Columns> = stored
            .changes
            .iter()
            .map(|(id, held)| Columns::of(id, held, stored.emails.get(id).map_or(&none, |e| e)))
            .collect();
        let mut w = self.write().await?;
        write_all_pages(&mut w, branch, &columns).await?;
        let current = sqlx::query(
            "UPDATE branch_views SET pages_at = updated_at WHERE branch = $1 AND updated_at = $2",
        )
        .bind(branch)
        .bind(updated_at)
        .execute(w.conn())
        .await?
        .rows_affected();
        // Otherwise the transaction is dropped, and rolls back.
        if current == 1 {
            w.commit().await?;
        }
        Ok(())
    }

    /// Revisions neither completed nor rolled back: (change, digest).
    pub async fn open_revisions(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query("SELECT change_id, digest FROM revisions WHERE completed_at IS NULL AND rolled_back_at IS NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("change_id")?, r.try_get("digest")?)))
            .collect()
    }

    /// For each change whose digest on the default branch changed: the
    /// kinds and targets it had before, whose policies keep governing it.
    pub async fn previous_labels(
        &self,
    ) -> Result<BTreeMap<String, Vec<(String, Vec<String>)>>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, previous_definition FROM changes WHERE previous_definition IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let text: String = r.try_get("previous_definition")?;
            let Ok(Value::Array(all)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let labels = all
                .iter()
                .map(|v| {
                    let kind = v["kind"].as_str().unwrap_or_default().to_string();
                    let targets = v["targets"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    (kind, targets)
                })
                .collect();
            out.insert(id, labels);
        }
        Ok(out)
    }

    /// Every known change, by id.
    pub async fn list_changes(&self) -> Result<Vec<StoredChange>, StoreError> {
        let rows = sqlx::query("SELECT id, title, kind, default_commit, default_digest, definition FROM changes ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_change).collect()
    }

    /// One change, if known.
    pub async fn get_change(&self, id: &str) -> Result<Option<StoredChange>, StoreError> {
        let row = sqlx::query("SELECT id, title, kind, default_commit, default_digest, definition FROM changes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored_change).transpose()
    }
}

fn stored_change(r: &sqlx::any::AnyRow) -> Result<StoredChange, StoreError> {
    let definition: String = r.try_get("definition")?;
    Ok(StoredChange {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        kind: r.try_get("kind")?,
        commit: r.try_get("default_commit")?,
        digest: r.try_get("default_digest")?,
        definition: serde_json::from_str(&definition).unwrap_or(Value::Null),
    })
}
