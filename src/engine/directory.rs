//! What GitHub says about people — team memberships and write access to the
//! change repository — looked up through the API and cached with a
//! time-to-live. Decisions read only the cache; the GitHub worker refreshes it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::gate::Directory;

/// A cached question: team membership, or write access.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Question {
    /// Is `login` an active member of `org/slug`?
    Member {
        org: String,
        slug: String,
        login: String,
    },
    /// Has `login` write, maintain or admin permission on the repository?
    Writer { login: String },
}

/// Answers with when they were looked up.
#[derive(Debug, Default)]
pub struct DirectoryCache {
    entries: RwLock<HashMap<Question, (bool, Instant)>>,
}

fn member(org: &str, slug: &str, login: &str) -> Question {
    Question::Member {
        org: org.into(),
        slug: slug.into(),
        login: login.into(),
    }
}

fn writer(login: &str) -> Question {
    Question::Writer {
        login: login.into(),
    }
}

impl DirectoryCache {
    fn put(&self, q: Question, answer: bool) -> bool {
        let mut entries = self.entries.write().expect("directory cache lock");
        let before = entries.insert(q, (answer, Instant::now()));
        before.is_none_or(|(b, _)| b != answer)
    }

    fn is_stale(&self, q: &Question, ttl: Duration) -> bool {
        self.entries
            .read()
            .expect("directory cache lock")
            .get(q)
            .is_none_or(|(_, at)| at.elapsed() >= ttl)
    }

    fn answer(&self, q: &Question) -> bool {
        self.entries
            .read()
            .expect("directory cache lock")
            .get(q)
            .is_some_and(|(yes, _)| *yes)
    }

    /// Records a team lookup; true when the answer changed.
    pub fn put_member(&self, org: &str, slug: &str, login: &str, is_member: bool) -> bool {
        self.put(member(org, slug, login), is_member)
    }

    /// Records a permission lookup; true when the answer changed.
    pub fn put_writer(&self, login: &str, can_write: bool) -> bool {
        self.put(writer(login), can_write)
    }

    /// True when the team entry is missing or older than `ttl`.
    pub fn member_is_stale(&self, org: &str, slug: &str, login: &str, ttl: Duration) -> bool {
        self.is_stale(&member(org, slug, login), ttl)
    }

    /// True when the permission entry is missing or older than `ttl`.
    pub fn writer_is_stale(&self, login: &str, ttl: Duration) -> bool {
        self.is_stale(&writer(login), ttl)
    }
}

/// A missing entry is a "no": an unknown answer never grants. A stale entry
/// is used until the worker's refresh replaces it.
impl Directory for DirectoryCache {
    fn is_member(&self, org: &str, slug: &str, login: &str) -> bool {
        self.answer(&member(org, slug, login))
    }

    fn can_write(&self, login: &str) -> bool {
        self.answer(&writer(login))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_no_and_entries_go_stale() {
        let cache = DirectoryCache::default();
        assert!(!cache.is_member("acme", "dba", "bob"));
        assert!(!cache.can_write("bob"));
        assert!(cache.member_is_stale("acme", "dba", "bob", Duration::from_secs(60)));
        assert!(cache.put_member("acme", "dba", "bob", true));
        assert!(cache.put_writer("bob", true));
        assert!(
            !cache.put_writer("bob", true),
            "the same answer is no change"
        );
        assert!(cache.is_member("acme", "dba", "bob"));
        assert!(cache.can_write("bob"));
        assert!(
            !cache.can_write("acme"),
            "a team answer is not a permission"
        );
        assert!(!cache.member_is_stale("acme", "dba", "bob", Duration::from_secs(60)));
        assert!(cache.writer_is_stale("bob", Duration::ZERO));
    }
}
