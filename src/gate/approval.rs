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
mod tests {
    use super::*;

    const D: &str = "sha256:current";

    fn person(name: &str) -> Person {
        Person {
            name: Some(name.into()),
            github: Some(format!("{name}-gh")),
        }
    }

    fn api(name: &str, digest: &str, at: i64) -> ApprovalFact {
        ApprovalFact {
            approver: person(name),
            source: Source::Api,
            pull_request: None,
            digest: digest.into(),
            verdict: Verdict::Approved,
            at,
        }
    }

    fn review(name: &str, verdict: Verdict, digest: &str, at: i64) -> ApprovalFact {
        ApprovalFact {
            approver: person(name),
            source: Source::Github,
            pull_request: Some(7),
            digest: digest.into(),
            verdict,
            at,
        }
    }

    fn two_from(from: &[&str]) -> Vec<(&'static str, Approvals)> {
        vec![(
            "pg",
            Approvals {
                required: 2,
                from: from.iter().map(|s| Approver::User(s.to_string())).collect(),
                author_may_approve: false,
                expire_after: None,
            },
        )]
    }

    fn no_authors() -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// Everyone can write to the repository; nobody is in a team.
    struct Writers;
    impl Directory for Writers {
        fn is_member(&self, _: &str, _: &str, _: &str) -> bool {
            false
        }
        fn can_write(&self, _: &str) -> bool {
            true
        }
    }

    /// The status at `D`, with alice, bob, carol and dave as configured identities.
    fn status(
        rules: &[(&str, Approvals)],
        facts: &[ApprovalFact],
        authors: &BTreeSet<String>,
        directory: &dyn Directory,
    ) -> ApprovalStatus {
        let identities: BTreeSet<String> =
            ["alice", "bob", "carol", "dave"].map(String::from).into();
        approval_status(
            D,
            rules,
            facts,
            &People {
                authors,
                identities: &identities,
                directory,
                as_of: 1_000_000_000,
            },
        )
    }

    #[test]
    fn two_eligible_approvals_satisfy_a_two_approval_policy() {
        let s = status(
            &two_from(&[]),
            &[api("alice", D, 1), api("bob", D, 2)],
            &no_authors(),
            &Writers,
        );
        assert!(s.satisfied);
        assert_eq!(s.summary(), "2 of 2 approvals (policy pg)");
    }

    #[test]
    fn the_author_never_approves_their_own_change() {
        let authors: BTreeSet<String> = ["carol".to_string()].into();
        let s = status(
            &two_from(&[]),
            &[api("alice", D, 1), api("carol", D, 2)],
            &authors,
            &Writers,
        );
        assert!(!s.satisfied);
        assert_eq!(s.reviews[1].reason, Some(NotCounted::Author));
        assert_eq!(s.summary(), "1 of 2 approvals (policy pg)");
    }

    #[test]
    fn authors_are_matched_by_github_login_too() {
        let authors: BTreeSet<String> = ["carol-gh".to_string()].into();
        let s = status(&two_from(&[]), &[api("carol", D, 1)], &authors, &Writers);
        assert_eq!(s.reviews[0].reason, Some(NotCounted::Author));
    }

    #[test]
    fn author_may_approve_lets_the_author_count() {
        let mut rules = two_from(&[]);
        rules[0].1.author_may_approve = true;
        let authors: BTreeSet<String> = ["carol".to_string()].into();
        let s = status(&rules, &[api("carol", D, 1)], &authors, &Writers);
        assert!(s.reviews[0].counts);
    }

    #[test]
    fn an_approver_outside_from_does_not_count() {
        let s = status(
            &two_from(&["alice", "bob"]),
            &[api("mallory", D, 1)],
            &no_authors(),
            &Writers,
        );
        assert_eq!(s.reviews[0].reason, Some(NotCounted::NotEligible));
    }

    #[test]
    fn from_matches_github_logins_and_teams() {
        struct Leads;
        impl Directory for Leads {
            fn is_member(&self, org: &str, slug: &str, login: &str) -> bool {
                (org, slug, login) == ("acme", "leads", "bob-gh")
            }
            fn can_write(&self, _: &str) -> bool {
                true
            }
        }
        let rules = vec![(
            "pg",
            Approvals {
                required: 2,
                from: vec![
                    Approver::User("alice-gh".into()),
                    Approver::Team {
                        org: "acme".into(),
                        slug: "leads".into(),
                    },
                ],
                author_may_approve: false,
                expire_after: None,
            },
        )];
        let s = status(
            &rules,
            &[api("alice", D, 1), api("bob", D, 2), api("eve", D, 3)],
            &no_authors(),
            &Leads,
        );
        assert_eq!(s.policies[0].approvers, ["alice", "bob"]);
        assert_eq!(s.reviews[2].reason, Some(NotCounted::NotEligible));
    }

    #[test]
    fn an_approval_at_an_old_digest_does_not_count() {
        let s = status(
            &two_from(&[]),
            &[api("alice", "sha256:old", 1)],
            &no_authors(),
            &Writers,
        );
        assert_eq!(s.reviews[0].reason, Some(NotCounted::StaleDigest));
        assert_eq!(s.policies[0].counted, 0);
    }

    #[test]
    fn one_person_counts_once_across_github_and_the_api() {
        let s = status(
            &two_from(&[]),
            &[api("alice", D, 1), review("alice", Verdict::Approved, D, 2)],
            &no_authors(),
            &Writers,
        );
        assert_eq!(s.policies[0].counted, 1);
        assert!(!s.satisfied);
    }

    #[test]
    fn only_the_latest_review_of_a_reviewer_counts() {
        let facts = [
            review("alice", Verdict::Approved, D, 1),
            review("alice", Verdict::ChangesRequested, D, 2),
        ];
        let s = status(&two_from(&[]), &facts, &no_authors(), &Writers);
        assert_eq!(s.reviews[0].reason, Some(NotCounted::Superseded));
        assert_eq!(s.reviews[1].reason, Some(NotCounted::ChangesRequested));
    }

    #[test]
    fn a_dismissed_review_does_not_count() {
        let s = status(
            &two_from(&[]),
            &[review("alice", Verdict::Dismissed, D, 1)],
            &no_authors(),
            &Writers,
        );
        assert_eq!(s.reviews[0].reason, Some(NotCounted::Dismissed));
    }

    #[test]
    fn changes_requested_blocks_approval_whatever_the_count() {
        let facts = [
            api("alice", D, 1),
            api("bob", D, 2),
            review("carol", Verdict::ChangesRequested, D, 3),
        ];
        let s = status(&two_from(&[]), &facts, &no_authors(), &Writers);
        assert_eq!(s.policies[0].counted, 2);
        assert!(!s.satisfied);
    }

    #[test]
    fn every_matching_policy_must_hold() {
        let rules = vec![
            (
                "any",
                Approvals {
                    required: 1,
                    from: vec![],
                    author_may_approve: false,
                    expire_after: None,
                },
            ),
            (
                "leads",
                Approvals {
                    required: 1,
                    from: vec![Approver::User("bob".into())],
                    author_may_approve: false,
                    expire_after: None,
                },
            ),
        ];
        let s = status(&rules, &[api("alice", D, 1)], &no_authors(), &Writers);
        assert!(!s.satisfied);
        let s = status(
            &rules,
            &[api("alice", D, 1), api("bob", D, 2)],
            &no_authors(),
            &Writers,
        );
        assert!(s.satisfied);
    }

    fn github_only(login: &str, verdict: Verdict) -> ApprovalFact {
        ApprovalFact {
            approver: Person {
                name: None,
                github: Some(login.into()),
            },
            ..review("x", verdict, D, 5)
        }
    }

    #[test]
    fn an_identity_name_in_from_never_matches_a_github_user_with_that_login() {
        // `bob` is a configured identity with no `github` login; the GitHub
        // user `bob` is someone else.
        let s = status(
            &two_from(&["bob"]),
            &[github_only("bob", Verdict::Approved)],
            &no_authors(),
            &Writers,
        );
        assert_eq!(s.reviews[0].reason, Some(NotCounted::NotEligible));
        // A plain entry that names no identity is a GitHub login.
        let s = status(
            &two_from(&["frank"]),
            &[github_only("frank", Verdict::Approved)],
            &no_authors(),
            &Writers,
        );
        assert!(s.reviews[0].counts);
    }

    #[test]
    fn teams_are_looked_up_by_github_login_only() {
        struct TeamOfBob;
        impl Directory for TeamOfBob {
            fn is_member(&self, _: &str, _: &str, login: &str) -> bool {
                login == "bob"
            }
            fn can_write(&self, _: &str) -> bool {
                true
            }
        }
        let rules = vec![(
            "pg",
            Approvals {
                required: 1,
                from: vec![Approver::Team {
                    org: "acme".into(),
                    slug: "leads".into(),
                }],
                author_may_approve: false,
                expire_after: None,
            },
        )];
        // The identity `bob` (GitHub login unknown) is not the GitHub user `bob`.
        let bob = ApprovalFact {
            approver: Person {
                name: Some("bob".into()),
                github: None,
            },
            ..api("bob", D, 1)
        };
        let s = status(&rules, &[bob], &no_authors(), &TeamOfBob);
        assert_eq!(s.reviews[0].reason, Some(NotCounted::NotEligible));
    }

    #[test]
    fn a_github_reviewer_without_write_access_does_not_count_or_block() {
        struct NoOne;
        impl Directory for NoOne {
            fn is_member(&self, _: &str, _: &str, _: &str) -> bool {
                false
            }
            fn can_write(&self, _: &str) -> bool {
                false
            }
        }
        let s = status(
            &two_from(&[]),
            &[
                api("alice", D, 1),
                github_only("stranger", Verdict::Approved),
                ApprovalFact {
                    at: 6,
                    ..github_only("troll", Verdict::ChangesRequested)
                },
            ],
            &no_authors(),
            &NoOne,
        );
        assert_eq!(
            s.reviews[0].reason, None,
            "API approvals need no GitHub access"
        );
        assert_eq!(s.reviews[1].reason, Some(NotCounted::NoWriteAccess));
        assert_eq!(s.reviews[2].reason, Some(NotCounted::NoWriteAccess));
        assert_eq!(s.policies[0].counted, 1);
    }

    #[test]
    fn an_approval_older_than_expire_after_at_the_first_claim_is_expired() {
        let mut rules = two_from(&[]);
        rules[0].1.required = 1;
        rules[0].1.expire_after = Some("1h".parse().unwrap());
        let hour = 3_600_000;
        // Judged at 1_000_000_000: one approval from just over an hour before, one within it.
        let old = api("alice", D, 1_000_000_000 - hour - 1);
        let recent = api("bob", D, 1_000_000_000 - hour + 1);
        let s = status(&rules, &[old, recent], &no_authors(), &Writers);
        assert_eq!(s.reviews[0].reason, Some(NotCounted::Expired));
        assert_eq!(s.reviews[1].reason, None);
        assert!(s.satisfied);
    }

    #[test]
    fn a_stranger_whose_login_is_an_identitys_name_never_replaces_its_review() {
        struct OnlyAlice;
        impl Directory for OnlyAlice {
            fn is_member(&self, _: &str, _: &str, _: &str) -> bool {
                false
            }
            fn can_write(&self, login: &str) -> bool {
                login == "alice-gh"
            }
        }
        let mut rules = two_from(&["alice"]);
        rules[0].1.required = 1;
        // The identity alice reviews as alice-gh; then the GitHub user `alice`.
        let stranger = ApprovalFact {
            at: 9,
            ..github_only("alice", Verdict::ChangesRequested)
        };
        let s = status(
            &rules,
            &[review("alice", Verdict::Approved, D, 5), stranger],
            &no_authors(),
            &OnlyAlice,
        );
        assert_eq!(s.reviews[0].reason, None, "alice's approval stands");
        assert_eq!(s.reviews[1].reason, Some(NotCounted::NoWriteAccess));
        assert!(s.satisfied);
    }
}
