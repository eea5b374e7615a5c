//! Unit tests: each approval rule, case by case.

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
    let identities: BTreeSet<String> = ["alice", "bob", "carol", "dave"].map(String::from).into();
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
