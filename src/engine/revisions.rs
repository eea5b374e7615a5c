//! Revisions that are not the one on the default branch (SPEC §13): read
//! from the commit of their first claim, and cached (a commit never changes).

use super::*;

impl Engine {
    /// For each change whose revision in flight (or completed) is not the
    /// digest on the default branch, that revision's change set, read from
    /// the commit of its first claim (and cached: a commit never changes).
    pub(super) fn revision_sets<'f>(
        &self,
        view: &RepoView,
        facts: impl IntoIterator<Item = (&'f str, &'f ChangeFacts)>,
    ) -> BTreeMap<String, Arc<view::RevisionSet>> {
        let mut out = BTreeMap::new();
        for (id, facts) in facts {
            let main = view.changes.get(id).map(|h| h.digest());
            let revision = match view::revision_focus(main.as_ref().map(|d| d.as_str()), facts) {
                view::Focus::InFlight(r) | view::Focus::Completed(r) => r,
                view::Focus::Main => continue,
            };
            if let Some(set) = self.revision_set(id, revision) {
                out.insert(id.to_string(), set);
            }
        }
        out
    }

    /// Records completion on revisions that completed before revisions were
    /// recorded (migration 0007 cannot tell), while main still holds them:
    /// an edit after that is then refused as after completion.
    pub(super) async fn record_completions(&self, view: &RepoView) -> Result<(), EngineError> {
        let open = self.store.open_revisions().await?;
        let candidates: Vec<_> = open
            .iter()
            .filter_map(|(id, d)| {
                view.changes
                    .get(id)
                    .filter(|held| held.digest().as_str() == d)
                    .map(|held| (id, held.change(id), held.digest()))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let mut w = self.store.write().await?;
        for (id, change, digest) in candidates {
            let of_it = w.change_facts(id).await?.for_revision(digest.as_str());
            if !of_it.attempts.is_empty()
                && view::state_of(&change, &of_it, true) == ChangeState::Completed
            {
                w.complete_revision(id, digest.as_str(), now_ms()).await?;
            }
        }
        w.commit().await?;
        Ok(())
    }

    /// Revision `r` of `id`, read from its commit in the repository.
    pub(super) fn revision_set(
        &self,
        id: &str,
        r: &crate::store::RevisionRecord,
    ) -> Option<Arc<view::RevisionSet>> {
        let key = (id.to_string(), r.digest.clone());
        if let Some(known) = self.revisions.lock().expect("revision cache").get(&key) {
            return known.clone();
        }
        let read = || -> Option<view::RevisionSet> {
            let repo = ChangeRepo::open(&self.repo_path()).ok()?;
            let snapshot = repo.at(&r.commit_sha).ok()?;
            let at = snapshot.change(id).ok()?;
            (at.digest.as_str() == r.digest).then_some((at.change, at.digest, at.covered))
        };
        let set = if r.commit_sha.is_empty() {
            None
        } else {
            read().map(Arc::new)
        };
        if set.is_none() {
            tracing::warn!(change = %id, digest = %r.digest, commit = %r.commit_sha, "cannot read the revision in flight from its commit");
        }
        self.revisions
            .lock()
            .expect("revision cache")
            .insert(key, set.clone());
        set
    }
}
