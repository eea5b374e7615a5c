//! Policy edits are reviewed like changes (SPEC §13): who must approve an
//! edit of a policy file, and which files' texts on the default branch
//! differ from the text in force.

use std::collections::BTreeMap;

use crate::model::{Approvals, Policy};

/// The approvals an edit of one policy file needs: the eligible approvers
/// of the text in force (`old`), never those the edit writes, and
/// `required` the larger of old and new. A new file is approved like a
/// change no policy matches: by reviewers who are not its authors.
pub fn edit_rule(old: Option<&Policy>, new: Option<&Policy>) -> Approvals {
    let in_force = old.map(|p| p.approvals.clone()).unwrap_or_default();
    let required = [old, new]
        .into_iter()
        .flatten()
        .map(|p| p.approvals.required)
        .max()
        .unwrap_or(1)
        .max(in_force.required);
    Approvals {
        required,
        ..in_force
    }
}

/// A policy file whose text on the default branch is not the text in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEdit {
    /// `policies/<name>.yaml`.
    pub path: String,
    /// Blob id in force, `None` for a file never approved.
    pub in_force: Option<String>,
    /// Blob id on the default branch, `None` when deleted there.
    pub on_main: Option<String>,
}

/// The files whose blob on the default branch (`main`, path → blob)
/// differs from the one in force (`approved`).
pub fn pending_edits(
    main: &BTreeMap<String, String>,
    approved: &BTreeMap<String, String>,
) -> Vec<PendingEdit> {
    let paths: std::collections::BTreeSet<&String> = main.keys().chain(approved.keys()).collect();
    paths
        .into_iter()
        .filter(|p| main.get(*p) != approved.get(*p))
        .map(|p| PendingEdit {
            path: p.clone(),
            in_force: approved.get(p).cloned(),
            on_main: main.get(p).cloned(),
        })
        .collect()
}

/// The policy name (file stem) of `policies/<name>.yaml`.
pub fn policy_name(path: &str) -> &str {
    let file = path.rsplit_once('/').map_or(path, |(_, f)| f);
    file.rsplit_once('.').map_or(file, |(stem, _)| stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load_policies, SourceFile};

    fn policy(required: u32, from: &[&str]) -> Policy {
        let text = format!(
            "approvals:\n  required: {required}\n  from: [{}]\n",
            from.join(", ")
        );
        let model = load_policies(&[SourceFile::new("policies/p.yaml", text.into_bytes())]);
        assert!(model.diagnostics.is_empty(), "{:?}", model.diagnostics);
        model.policies.into_iter().next().unwrap()
    }

    #[test]
    fn an_edit_needs_the_old_approvers_and_the_larger_quorum() {
        let old = policy(2, &["alice", "bob"]);
        let looser = policy(1, &["mallory"]);
        let rule = edit_rule(Some(&old), Some(&looser));
        assert_eq!(rule.required, 2);
        assert_eq!(rule.from, old.approvals.from);
        let stricter = policy(3, &["mallory", "eve", "trent"]);
        assert_eq!(edit_rule(Some(&old), Some(&stricter)).required, 3);
        assert_eq!(edit_rule(Some(&old), None).required, 2, "a deletion");
    }

    #[test]
    fn a_new_file_needs_any_reviewer_and_its_own_quorum() {
        let new = policy(2, &["mallory", "eve"]);
        let rule = edit_rule(None, Some(&new));
        assert_eq!(rule.required, 2);
        assert!(rule.from.is_empty(), "not the approvers the edit names");
        assert!(!rule.author_may_approve);
    }

    #[test]
    fn pending_edits_are_the_files_that_differ() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_string()))
                .collect()
        };
        let main = map(&[
            ("policies/a.yaml", "1"),
            ("policies/b.yaml", "2"),
            ("policies/new.yaml", "3"),
        ]);
        let approved = map(&[
            ("policies/a.yaml", "1"),
            ("policies/b.yaml", "9"),
            ("policies/gone.yaml", "4"),
        ]);
        let pending = pending_edits(&main, &approved);
        let paths: Vec<(&str, Option<&str>, Option<&str>)> = pending
            .iter()
            .map(|e| (e.path.as_str(), e.in_force.as_deref(), e.on_main.as_deref()))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("policies/b.yaml", Some("9"), Some("2")),
                ("policies/gone.yaml", Some("4"), None),
                ("policies/new.yaml", None, Some("3")),
            ]
        );
        assert_eq!(policy_name("policies/pg.yaml"), "pg");
    }
}
