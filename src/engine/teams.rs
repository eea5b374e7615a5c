//! Team memberships looked up through GitHub, cached with a time-to-live.
//! Decisions read only the cache; the GitHub worker refreshes it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::gate::Teams;

/// (org, slug, login).
type Key = (String, String, String);

/// (org, slug, login) → (member, when looked up).
#[derive(Debug, Default)]
pub struct TeamCache {
    entries: RwLock<HashMap<Key, (bool, Instant)>>,
}

impl TeamCache {
    /// Records a lookup.
    pub fn put(&self, org: &str, slug: &str, login: &str, member: bool) {
        self.entries.write().expect("team cache lock").insert(
            (org.into(), slug.into(), login.into()),
            (member, Instant::now()),
        );
    }

    /// True when the entry is missing or older than `ttl`.
    pub fn is_stale(&self, org: &str, slug: &str, login: &str, ttl: Duration) -> bool {
        self.entries
            .read()
            .expect("team cache lock")
            .get(&(org.into(), slug.into(), login.into()))
            .is_none_or(|(_, at)| at.elapsed() >= ttl)
    }
}

/// A missing entry is not membership: an unknown answer never grants.
/// A stale entry is used until the worker's refresh replaces it.
impl Teams for TeamCache {
    fn is_member(&self, org: &str, slug: &str, login: &str) -> bool {
        self.entries
            .read()
            .expect("team cache lock")
            .get(&(org.into(), slug.into(), login.into()))
            .is_some_and(|(member, _)| *member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_not_a_member_and_entries_go_stale() {
        let cache = TeamCache::default();
        assert!(!cache.is_member("acme", "dba", "bob"));
        assert!(cache.is_stale("acme", "dba", "bob", Duration::from_secs(60)));
        cache.put("acme", "dba", "bob", true);
        assert!(cache.is_member("acme", "dba", "bob"));
        assert!(!cache.is_stale("acme", "dba", "bob", Duration::from_secs(60)));
        assert!(cache.is_stale("acme", "dba", "bob", Duration::ZERO));
    }
}
