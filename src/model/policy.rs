//! Which policies govern a change (SPEC §1, "Policy").

use serde::Serialize;

use super::{Approvals, ChangeSet, CoveredPath, Policy};

/// Path globs: `*` stays within a folder, `**` crosses folders.
fn path_options() -> glob::MatchOptions {
    glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    }
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(text))
}

impl Policy {
    /// Does this policy apply to `change` (whose covered paths are
    /// `covered`)? Either its kind matches one of `match.kinds` and at least
    /// one change target one of `match.targets`, or a covered path matches
    /// one of `match.paths`. A file holding only `actions:` applies to no change.
    pub fn applies_to(&self, change: &ChangeSet, covered: &[CoveredPath]) -> bool {
        let by_kind_and_target = self
            .matches
            .kinds
            .iter()
            .any(|k| glob_matches(k, &change.kind))
            && change
                .targets
                .iter()
                .any(|t| self.matches.targets.iter().any(|g| glob_matches(g, t)));
        let by_path = covered.iter().any(|c| {
            self.matches.paths.iter().any(|g| {
                glob::Pattern::new(g).is_ok_and(|p| {
                    p.matches_path_with(std::path::Path::new(&c.path), path_options())
                })
            })
        });
        self.governs_changes && (by_kind_and_target || by_path)
    }
}

/// The policies that must all be satisfied for a change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum PoliciesInForce<'p> {
    /// One or more policies from the default branch match; each must hold.
    Matched {
        /// The matching policies, by file name.
        policies: Vec<&'p Policy>,
    },
    /// No policy matches: one approval from someone who is not an author.
    BuiltinDefault,
}

impl PoliciesInForce<'_> {
    /// Each governing rule as (policy name, its approvals section).
    pub fn approval_rules(&self) -> Vec<(&str, Approvals)> {
        match self {
            PoliciesInForce::Matched { policies } => policies
                .iter()
                .map(|p| (p.name.as_str(), p.approvals.clone()))
                .collect(),
            PoliciesInForce::BuiltinDefault => vec![("builtin-default", Approvals::default())],
        }
    }
}

/// The policies governing `change` (with covered paths `covered`): every
/// matching one, or the built-in default when none matches. `policies`
/// must come from the default branch.
pub fn policies_in_force<'p>(
    change: &ChangeSet,
    covered: &[CoveredPath],
    policies: &'p [Policy],
) -> PoliciesInForce<'p> {
    let matched: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.applies_to(change, covered))
        .collect();
    if matched.is_empty() {
        PoliciesInForce::BuiltinDefault
    } else {
        PoliciesInForce::Matched { policies: matched }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Match, Step};

    fn change(kind: &str, targets: &[&str]) -> ChangeSet {
        ChangeSet {
            id: "c".into(),
            title: "t".into(),
            description: None,
            kind: kind.into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            targets_from: None,
            rollout: None,
            depends_on: vec![],
            env: Default::default(),
            include: vec![],
            timeout: None,
            steps: vec![Step {
                id: "s".into(),
                run: "true".into(),
                check: None,
                verify: None,
                timeout: None,
                confirm: false,
                targets: None,
                per_target: false,
                rollback: None,
                rollback_timeout: None,
            }],
        }
    }

    fn policy(name: &str, kinds: &[&str], targets: &[&str]) -> Policy {
        Policy {
            name: name.into(),
            governs_changes: true,
            description: None,
            matches: Match {
                kinds: kinds.iter().map(|s| s.to_string()).collect(),
                targets: targets.iter().map(|s| s.to_string()).collect(),
                paths: vec![],
            },
            approvals: Default::default(),
            execution: Default::default(),
            alerts: None,
            actions: Default::default(),
        }
    }

    #[test]
    fn every_matching_policy_is_in_force() {
        let policies = [
            policy("pg", &["postgres-upgrade"], &["*"]),
            policy("dbs", &["*"], &["*-db"]),
            policy("dns", &["dns"], &["*"]),
        ];
        let c = change("postgres-upgrade", &["web", "state-machine-db"]);
        let PoliciesInForce::Matched { policies: m } = policies_in_force(&c, &[], &policies) else {
            panic!("expected matches")
        };
        assert_eq!(
            m.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["pg", "dbs"]
        );
    }

    #[test]
    fn target_globs_match_when_any_target_matches() {
        let p = policy("dbs", &["*"], &["*-db"]);
        assert!(p.applies_to(&change("x", &["web", "a-db"]), &[]));
        assert!(!p.applies_to(&change("x", &["web", "db-a"]), &[]));
    }

    #[test]
    fn no_match_falls_back_to_the_builtin_default() {
        let policies = [policy("dns", &["dns"], &["*"])];
        let c = change("postgres-upgrade", &["db"]);
        let in_force = policies_in_force(&c, &[], &policies);
        assert_eq!(in_force, PoliciesInForce::BuiltinDefault);
        let rules = in_force.approval_rules();
        assert_eq!(rules[0].1.required, 1);
        assert!(!rules[0].1.author_may_approve);
    }

    #[test]
    fn an_actions_only_policy_governs_no_change() {
        let mut p = policy("budgets", &["*"], &["*"]);
        p.governs_changes = false;
        assert!(!p.applies_to(&change("anything", &["x"]), &[]));
    }

    fn covering(paths: &[&str]) -> Vec<CoveredPath> {
        paths
            .iter()
            .map(|p| CoveredPath {
                path: p.to_string(),
                blob: "0".repeat(40),
                executable: false,
            })
            .collect()
    }

    #[test]
    fn path_owners_match_changes_that_cover_their_paths() {
        // `match: {paths: [...]}` alone: kinds and targets do not match.
        let mut owners = policy("db-owners", &[], &["*"]);
        owners.matches.paths = vec!["changes/scripts/db/**".into()];
        let c = change("config", &["web"]);
        assert!(owners.applies_to(
            &c,
            &covering(&["changes/c.yaml", "changes/scripts/db/migrate.sh"])
        ));
        assert!(!owners.applies_to(&c, &covering(&["changes/c.yaml", "changes/scripts/web.sh"])));
        // `*` stays within a folder.
        let mut shallow = policy("top", &[], &["*"]);
        shallow.matches.paths = vec!["changes/scripts/*.sh".into()];
        assert!(!shallow.applies_to(&c, &covering(&["changes/scripts/db/x.sh"])));
    }
}
