//! Approvals as a change's status shows them: every recorded fact, who
//! gave it, and whether it counts under the policies in force.

use std::collections::BTreeSet;

use super::World;
use crate::config::Config;
use crate::gate::{approval_status, ApprovalFact, ApprovalStatus, People, Person, Source, Verdict};
use crate::model::{ChangeSet, CoveredPath, Digest};
use crate::store::{ChangeFacts, ReviewState};

/// Every approval recorded for a change (or a policy file): API approvals
/// and GitHub reviews, with who gave them.
pub fn approval_facts(config: &Config, facts: &ChangeFacts) -> Vec<ApprovalFact> {
    let api = facts.approvals.iter().map(|a| ApprovalFact {
        approver: person(config, &a.approver),
        source: Source::Api,
        pull_request: None,
        digest: a.digest.clone(),
        verdict: Verdict::Approved,
        at: a.created_at,
    });
    let reviews = facts.github.reviews.iter().filter_map(|r| {
        let verdict = match (r.dismissed, r.state) {
            (true, _) | (_, ReviewState::Dismissed) => Verdict::Dismissed,
            (_, ReviewState::Approved) => Verdict::Approved,
            (_, ReviewState::ChangesRequested) => Verdict::ChangesRequested,
            // Comments neither approve nor block, and do not replace an
            // earlier verdict (as on GitHub).
            _ => return None,
        };
        Some(ApprovalFact {
            approver: reviewer(config, &r.reviewer),
            source: Source::Github,
            pull_request: Some(r.pr_number as u64),
            digest: r.digest.clone().unwrap_or_else(|| "unknown".into()),
            verdict,
            at: r.submitted_at,
        })
    });
    api.chain(reviews).collect()
}

/// A GitHub reviewer, with the identity configured for that login.
fn reviewer(config: &Config, login: &str) -> Person {
    Person {
        name: config
            .tokens
            .iter()
            .find(|t| t.github.as_deref() == Some(login))
            .map(|t| t.name.clone()),
        github: Some(login.to_string()),
    }
}

/// A configured identity, with its GitHub login.
pub(crate) fn person(config: &Config, name: &str) -> Person {
    Person {
        name: Some(name.to_string()),
        github: config
            .tokens
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.github.clone()),
    }
}

/// The approval status of `change` at `digest`: API approvals and the
/// reviews of the pull requests that touch it, against the default
/// branch's policies.
pub fn approval_of(
    world: &World<'_>,
    change: &ChangeSet,
    digest: &Digest,
    covered: &[CoveredPath],
    facts: &ChangeFacts,
) -> ApprovalStatus {
    let in_force = world.view.governing(change, covered);
    let rules = in_force.approval_rules();
    let approval_facts = approval_facts(&world.config, facts);
    let mut authors = world
        .view
        .authors
        .get(&change.id)
        .map(|a| (**a).clone())
        .unwrap_or_default();
    authors.extend(facts.github.authors.iter().cloned());
    let identities: BTreeSet<String> = world.config.tokens.iter().map(|t| t.name.clone()).collect();
    // Expiry is judged at the first claim: an approval fresh then stays so
    // while the change runs.
    let as_of = facts
        .attempts
        .iter()
        .map(|a| a.started_at)
        .min()
        .unwrap_or(world.now);
    let people = People {
        authors: &authors,
        identities: &identities,
        directory: world.directory,
        as_of,
    };
    approval_status(digest.as_str(), &rules, &approval_facts, &people)
}

/// Someone, other than `actor`, whose approval of `digest` recorded after
/// `since` counts under every policy in force: what a retry needs.
pub fn fresh_approver(
    world: &World<'_>,
    change: &ChangeSet,
    digest: &Digest,
    covered: &[CoveredPath],
    facts: &ChangeFacts,
    since: i64,
    actor: &str,
) -> Option<String> {
    let mut fresh = facts.clone();
    fresh.approvals.retain(|a| a.created_at > since);
    fresh.github.reviews.retain(|r| r.submitted_at > since);
    let status = approval_of(world, change, digest, covered, &fresh);
    let actor = person(&world.config, actor);
    let mut policies = status.policies.iter();
    let first = policies.next()?;
    first
        .approvers
        .iter()
        .filter(|who| actor.display() != who.as_str())
        .find(|who| policies.clone().all(|p| p.approvers.contains(who)))
        .cloned()
}
