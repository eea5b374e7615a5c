//! Whether a change is approved at a digest (SPEC §2): a pure function of
//! recorded facts — reviews, API approvals, authors, team membership.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{Approvals, Approver};

/// Where an approval was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A GitHub pull request review.
    Github,
    /// `POST /api/v1/changes/{id}/approvals`.
    Api,
}

/// What a review said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// APPROVED (API approvals are always this).
    Approved,
    /// CHANGES_REQUESTED.
    ChangesRequested,
    /// A review that was dismissed.
    Dismissed,
}

/// Who someone is: their configured identity name and GitHub login, either
/// of which may be unknown. One person never counts twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Person {
    /// The token identity's name, if the person has one.
    pub name: Option<String>,
    /// The GitHub login, if known.
    pub github: Option<String>,
}

impl Person {
    /// The name shown and used to tell people apart.
    pub fn display(&self) -> &str {
        self.name
            .as_deref()
            .or(self.github.as_deref())
            .unwrap_or("unknown")
    }

    /// Who this is, for telling reviews and approvers apart: the identity
    /// when known, else the GitHub login — never the one for the other, so
    /// a stranger whose login equals an identity's name is someone else.
    fn key(&self) -> String {
        match (&self.name, &self.github) {
            (Some(name), _) => format!("id:{name}"),
            (None, Some(login)) => format!("gh:{}", login.to_ascii_lowercase()),
            (None, None) => "unknown".into(),
        }
    }

    fn is(&self, login_or_name: &str) -> bool {
        self.name.as_deref() == Some(login_or_name) || self.github.as_deref() == Some(login_or_name)
    }
}

/// One recorded approval or review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFact {
    /// Who.
    pub approver: Person,
    /// Where.
    pub source: Source,
    /// The pull request, for GitHub reviews: only the latest review of each
    /// reviewer on a pull request counts.
    pub pull_request: Option<u64>,
    /// The digest of the change at the reviewed commit, or the API digest.
    pub digest: String,
    /// What it said.
    pub verdict: Verdict,
    /// When it was recorded (unix ms); orders reviews.
    pub at: i64,
}

/// Why a review does not count (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotCounted {
    /// The approver is an author of the change.
    Author,
    /// The approver is not in any policy's `from`.
    NotEligible,
    /// It approves another digest.
    StaleDigest,
    /// It was dismissed.
    Dismissed,
    /// A later review by the same reviewer replaced it.
    Superseded,
    /// It requests changes.
    ChangesRequested,
    /// A GitHub reviewer without write, maintain or admin permission on the
    /// repository (or whose permission is not known yet: unknown never grants).
    NoWriteAccess,
    /// Older than `approvals.expire_after` at the change's first claim.
    Expired,
}

/// A review and whether it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewView {
    /// Who.
    pub approver: String,
    /// Where.
    pub source: Source,
    /// The digest it approves.
    pub digest: String,
    /// Whether it counts toward at least one policy.
    pub counts: bool,
    /// Why not, when it does not.
    pub reason: Option<NotCounted>,
}

/// One policy's tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTally {
    /// The policy (or `builtin-default`).
    pub name: String,
    /// Approvals needed.
    pub required: u32,
    /// Distinct eligible approvers at the current digest.
    pub counted: u32,
    /// Who counted.
    pub approvers: Vec<String>,
}

/// The approval status of a change at a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalStatus {
    /// Every policy holds and nobody's latest review requests changes.
    pub satisfied: bool,
    /// Per policy.
    pub policies: Vec<PolicyTally>,
    /// Every review, with whether it counts and why not.
    pub reviews: Vec<ReviewView>,
}

impl ApprovalStatus {
    /// "1 of 2 approvals (policy postgres-upgrades)": the tightest policy.
    pub fn summary(&self) -> String {
        let tightest = self
            .policies
            .iter()
            .max_by_key(|p| (p.required.saturating_sub(p.counted), p.required));
        match tightest {
            Some(p) => format!(
                "{} of {} approvals (policy {})",
                p.counted.min(p.required),
                p.required,
                p.name
            ),
            None => "no policy".into(),
        }
    }
}

/// What GitHub says about people, from cached lookups. An answer not
/// looked up yet is `false`: unknown never grants.
pub trait Directory {
    /// True when `login` is a member of team `org/slug`.
    fn is_member(&self, org: &str, slug: &str, login: &str) -> bool;
    /// True when `login` has write, maintain or admin permission on the
    /// change repository.
    fn can_write(&self, login: &str) -> bool;
}

/// No GitHub: nobody is a member of anything, and nobody can write.
impl Directory for () {
    fn is_member(&self, _: &str, _: &str, _: &str) -> bool {
        false
    }
    fn can_write(&self, _: &str) -> bool {
        false
    }
}

/// Who may count, beyond the facts themselves.
pub struct People<'a> {
    /// Names or GitHub logins of the change's authors.
    pub authors: &'a BTreeSet<String>,
    /// Configured identity names. A plain `from` entry equal to one of them
    /// matches only that identity, never a GitHub user who has that login.
    pub identities: &'a BTreeSet<String>,
    /// Team memberships and repository permissions.
    pub directory: &'a dyn Directory,
    /// When approvals are judged (unix ms), for `expire_after`: the
    /// change's first claim, or now before one.
    pub as_of: i64,
}

impl People<'_> {
    /// Whether `who` satisfies `from` (SPEC §2.3). A plain entry naming a
    /// configured identity is that identity; any other is a GitHub login;
    /// teams are looked up by GitHub login only.
    fn in_from(&self, approvals: &Approvals, who: &Person) -> bool {
        approvals.from.is_empty()
            || approvals.from.iter().any(|a| match a {
                Approver::User(entry) if self.identities.contains(entry) => {
                    who.name.as_deref() == Some(entry.as_str())
                }
                Approver::User(login) => who.github.as_deref() == Some(login.as_str()),
                Approver::Team { org, slug } => who
                    .github
                    .as_deref()
                    .is_some_and(|l| self.directory.is_member(org, slug, l)),
            })
    }

    fn is_author(&self, who: &Person) -> bool {
        self.authors.iter().any(|a| who.is(a))
    }

    /// A GitHub review speaks only for someone who can write to the repository.
    fn may_review(&self, f: &ApprovalFact) -> bool {
        f.source != Source::Github
            || f.approver
                .github
                .as_deref()
                .is_some_and(|l| self.directory.can_write(l))
    }
}

/// Whom a `from` entry lets approve, in words, given the configured
/// identities (name → GitHub login): the rule of [`People`], for `plan`.
pub fn who_matches(entry: &Approver, identities: &BTreeMap<String, Option<String>>) -> String {
    match entry {
        Approver::User(name) => match identities.get(name) {
            Some(Some(login)) => format!(
                "`{name}`: the identity {name}, through the API or as GitHub user {login} (with write access)"
            ),
            Some(None) => format!(
                "`{name}`: the identity {name}, through the API only (no `github` login configured; the GitHub user {name} does not count)"
            ),
            None => format!("`{name}`: the GitHub user {name} (with write access)"),
        },
        Approver::Team { org, slug } => format!(
            "`team:{org}/{slug}`: members of that team, by GitHub login (with write access); an identity counts through its `github` login"
        ),
    }
}

/// The approval status of a change at `digest` under `rules` (each matching
/// policy's name and approvals section), given every recorded fact.
/// `authors` are names or logins of the change's authors.
pub fn approval_status(
    digest: &str,
    rules: &[(&str, Approvals)],
    facts: &[ApprovalFact],
    people: &People<'_>,
) -> ApprovalStatus {
    // The latest GitHub review of each reviewer on each pull request.
    let mut latest: BTreeMap<(Option<u64>, String), usize> = BTreeMap::new();
    for (i, f) in facts
        .iter()
        .enumerate()
        .filter(|(_, f)| f.source == Source::Github)
    {
        let key = (f.pull_request, f.approver.key());
        if latest.get(&key).is_none_or(|&j| facts[j].at <= f.at) {
            latest.insert(key, i);
        }
    }
    let mut blocked = false;
    let mut reviews = Vec::with_capacity(facts.len());
    // Per policy: who counted, by key, with the name shown.
    let mut tallies: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); rules.len()];
    for (i, f) in facts.iter().enumerate() {
        let superseded = f.source == Source::Github
            && latest.get(&(f.pull_request, f.approver.key())) != Some(&i);
        let reason = if superseded {
            Some(NotCounted::Superseded)
        } else {
            match f.verdict {
                Verdict::Dismissed => Some(NotCounted::Dismissed),
                // Only someone who may review can block: a stranger's
                // request for changes is shown, not obeyed.
                Verdict::ChangesRequested if !people.may_review(f) => {
                    Some(NotCounted::NoWriteAccess)
                }
                Verdict::ChangesRequested => {
                    blocked = true;
                    Some(NotCounted::ChangesRequested)
                }
                Verdict::Approved if f.digest != digest => Some(NotCounted::StaleDigest),
                Verdict::Approved if !people.may_review(f) => Some(NotCounted::NoWriteAccess),
                Verdict::Approved => {
                    let mut counted = false;
                    let mut author_refused = false;
                    let mut expired = false;
                    for (n, (_, approvals)) in rules.iter().enumerate() {
                        let too_old = approvals
                            .expire_after
                            .is_some_and(|d| f.at < people.as_of - d.as_secs() as i64 * 1000);
                        if people.is_author(&f.approver) && !approvals.author_may_approve {
                            author_refused = true;
                        } else if too_old {
                            expired = true;
                        } else if people.in_from(approvals, &f.approver) {
                            tallies[n].insert(f.approver.key(), f.approver.display().to_string());
                            counted = true;
                        }
                    }
                    match (counted, author_refused, expired) {
                        (true, _, _) => None,
                        (false, true, _) => Some(NotCounted::Author),
                        (false, false, true) => Some(NotCounted::Expired),
                        (false, false, false) => Some(NotCounted::NotEligible),
                    }
                }
            }
        };
        reviews.push(ReviewView {
            approver: f.approver.display().to_string(),
            source: f.source,
            digest: f.digest.clone(),
            counts: reason.is_none(),
            reason,
        });
    }
    let policies: Vec<PolicyTally> = rules
        .iter()
        .zip(tallies)
        .map(|((name, a), who)| PolicyTally {
            name: name.to_string(),
            required: a.required,
            counted: who.len() as u32,
            approvers: who.into_values().collect(),
        })
        .collect();
    let satisfied = !blocked && policies.iter().all(|p| p.counted >= p.required);
    ApprovalStatus {
        satisfied,
        policies,
        reviews,
    }
}

#[cfg(test)]
mod tests;
