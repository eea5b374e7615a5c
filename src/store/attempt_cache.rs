//! One change's attempts, read once and then only what was written since.
//!
//! A rollout of 1,000 targets has 1,000 attempts, and every claim and
//! report reads the change's facts. sqlx hands rows over one at a time
//! (about 17 µs each on SQLite, measured), so reading them all made each
//! claim cost O(targets): 3.6 ms for the first target, 86 ms for the last.
//!
//! Every write of an attempt stamps the row with `seq = MAX(seq) + 1`
//! ([`NEXT_SEQ`]), and every write runs under the store's single writer
//! lock ([`super::Store::write`]). Rows therefore commit in `seq` order, and
//! "the rows of this change above the highest `seq` seen" is exactly what
//! changed since the last read. Reads inside a write transaction see its
//! uncommitted rows: those are merged into the cache only when it commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Attempt;

/// The value of `seq` for a row written now (inside a write transaction).
pub(super) const NEXT_SEQ: &str = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM attempts)";

/// How many changes the cache keeps before it starts over: it only saves
/// reads, so forgetting is always safe.
const MAX_CHANGES: usize = 512;

/// Attempts by change, each with the `seq` it was read at.
#[derive(Debug, Default, Clone)]
pub(crate) struct AttemptCache(Arc<Mutex<HashMap<String, Known>>>);

/// What is known of one change: its attempts by id, and the highest `seq`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Known {
    seq: i64,
    attempts: HashMap<String, (i64, Arc<Attempt>)>,
}

impl Known {
    /// The highest `seq` read: rows above it are what changed since.
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// Takes in rows read at their `seq`; a row never goes back to an
    /// older version of itself.
    pub(crate) fn merge(&mut self, rows: &[(i64, Arc<Attempt>)]) {
        for (seq, a) in rows {
            self.seq = self.seq.max(*seq);
            match self.attempts.get(&a.id) {
                Some((known, _)) if known > seq => {}
                _ => {
                    self.attempts.insert(a.id.clone(), (*seq, a.clone()));
                }
            }
        }
    }

    /// The attempts, oldest first (by start, then number).
    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        let mut all: Vec<Attempt> = self
            .attempts
            .values()
            .map(|(_, a)| Attempt::clone(a))
            .collect();
        all.sort_by(|a, b| {
            (a.started_at, a.attempt_no, &a.id).cmp(&(b.started_at, b.attempt_no, &b.id))
        });
        all
    }
}

impl AttemptCache {
    /// What is known of change `id` (nothing yet: `seq` -1, so every row
    /// of it is read).
    pub(crate) fn known(&self, id: &str) -> Known {
        let cache = self.0.lock().expect("attempt cache");
        cache.get(id).cloned().unwrap_or(Known {
            seq: -1,
            attempts: HashMap::new(),
        })
    }

    /// Takes in committed rows of change `id`.
    pub(crate) fn merge(&self, id: &str, rows: &[(i64, Arc<Attempt>)]) {
        if rows.is_empty() {
            return;
        }
        let mut cache = self.0.lock().expect("attempt cache");
        if cache.len() >= MAX_CHANGES && !cache.contains_key(id) {
            cache.clear();
        }
        cache
            .entry(id.to_string())
            .or_insert(Known {
                seq: -1,
                attempts: HashMap::new(),
            })
            .merge(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptState, Phase};

    fn attempt(id: &str, state: AttemptState, started_at: i64) -> Arc<Attempt> {
        Arc::new(Attempt {
            id: id.into(),
            change_id: "c".into(),
            step_id: "s".into(),
            attempt_no: 1,
            executor: "ci".into(),
            digest: "d".into(),
            state,
            lease_expires_at: 0,
            started_at,
            ended_at: None,
            exit_code: None,
            duration_ms: None,
            output_tail: None,
            late_report: None,
            phase: Phase::Step,
            target: None,
        })
    }

    #[test]
    fn a_newer_row_replaces_an_older_one_never_the_reverse() {
        let cache = AttemptCache::default();
        assert_eq!(cache.known("c").seq(), -1);
        cache.merge("c", &[(3, attempt("a", AttemptState::Running, 2))]);
        cache.merge("c", &[(5, attempt("a", AttemptState::Succeeded, 2))]);
        // A late merge of an older read changes nothing.
        cache.merge("c", &[(3, attempt("a", AttemptState::Running, 2))]);
        cache.merge("c", &[(4, attempt("b", AttemptState::Failed, 1))]);
        let known = cache.known("c");
        assert_eq!(known.seq(), 5);
        let all = known.attempts();
        assert_eq!(
            all.iter()
                .map(|a| (a.id.as_str(), a.state))
                .collect::<Vec<_>>(),
            [("b", AttemptState::Failed), ("a", AttemptState::Succeeded)]
        );
    }
}
