//! Which changes a set of changed paths can affect (a move of the default
//! branch, a pull request's diff): pure, so a restart or a pull request
//! event costs what moved, not the size of the repository.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{covered_roots, ChangeSet, OnBranch};

/// The id of `changes/<id>.yaml`.
fn change_file(path: &str) -> Option<&str> {
    path.strip_prefix("changes/")
        .and_then(|f| f.strip_suffix(".yaml"))
        .filter(|id| !id.contains('/'))
}

/// The changes by covered root and by the ids they depend on: built once
/// per read of the default branch, so a pull request event looks up only
/// the paths it changed. A change's own file is not a key: `covering`
/// finds it by name. Changes are held by position in `ids` (4 bytes per
/// mention, where 100,000 changes running the same five scripts make
/// 500,000 mentions).
#[derive(Debug, Default)]
pub struct RootIndex {
    /// Every indexed change's id, sorted.
    ids: Vec<Box<str>>,
    by_root: HashMap<Arc<str>, Vec<u32>>,
    /// (position of the id depended on, position of the dependent), sorted.
    dependents: Vec<(u32, u32)>,
    /// The same for ids that are not indexed (a change set that does not
    /// validate), by name.
    dependents_by_name: Vec<(Box<str>, u32)>,
}

impl RootIndex {
    /// The index of `changes`.
    pub fn new<'a>(changes: impl Iterator<Item = &'a ChangeSet>) -> RootIndex {
        RootIndex::build(
            changes
                .map(|c| {
                    let roots: Vec<Arc<str>> = covered_roots(c)
                        .iter()
                        .map(|r| Arc::from(r.as_str()))
                        .collect();
                    (
                        c.id.as_str(),
                        roots,
                        c.depends_on.iter().map(String::as_str),
                    )
                })
                .collect(),
        )
    }

    /// The index of the default branch's changes as the view holds them.
    pub fn of_branch<'a>(changes: impl Iterator<Item = (&'a String, &'a OnBranch)>) -> RootIndex {
        RootIndex::build(
            changes
                .map(|(id, held)| {
                    (
                        id.as_str(),
                        held.roots().cloned().collect(),
                        held.depends_on(),
                    )
                })
                .collect(),
        )
    }

    fn build<'a>(
        mut changes: Vec<(&'a str, Vec<Arc<str>>, impl Iterator<Item = &'a str>)>,
    ) -> RootIndex {
        changes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut index = RootIndex::default();
        let mut edges = Vec::new();
        for (at, (id, roots, depends_on)) in changes.into_iter().enumerate() {
            let at = at as u32;
            index.ids.push(id.into());
            for root in roots {
                index.by_root.entry(root).or_default().push(at);
            }
            edges.extend(depends_on.map(|dep| (dep, at)));
        }
        for list in index.by_root.values_mut() {
            list.shrink_to_fit();
        }
        for (dep, at) in edges {
            match index.position(dep) {
                Some(of) => index.dependents.push((of, at)),
                None => index.dependents_by_name.push((dep.into(), at)),
            }
        }
        index.dependents.sort_unstable();
        index.dependents_by_name.sort_unstable();
        index
    }

    fn position(&self, id: &str) -> Option<u32> {
        self.ids
            .binary_search_by(|i| (**i).cmp(id))
            .ok()
            .map(|p| p as u32)
    }

    /// The changes that depend on `id`.
    fn dependents_of(&self, id: &str) -> impl Iterator<Item = &str> {
        let known = self.position(id).map_or(&[][..], |of| {
            let from = self.dependents.partition_point(|(d, _)| *d < of);
            let to = self.dependents.partition_point(|(d, _)| *d <= of);
            &self.dependents[from..to]
        });
        let from = self.dependents_by_name.partition_point(|(d, _)| &**d < id);
        let to = self.dependents_by_name.partition_point(|(d, _)| &**d <= id);
        known
            .iter()
            .map(|(_, at)| *at)
            .chain(self.dependents_by_name[from..to].iter().map(|(_, at)| *at))
            .map(|at| &*self.ids[at as usize])
    }

    /// The change ids whose digest or validity may differ after the files
    /// `changed` moved (added, removed or edited; both sides of a rename):
    /// - every `changes/<id>.yaml` among them (new, edited or gone);
    /// - every change with a covered root (a file, or a folder's subtree)
    ///   that a changed path is, or lies under;
    /// - every change that depends on a change set that came or went (its
    ///   `depends_on` may now name nothing);
    /// - every change set that did not validate before (a fix elsewhere, such
    ///   as a script added, can make it valid).
    pub fn affected(
        &self,
        changed: &BTreeSet<String>,
        invalid: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        let mut out = self.covering(changed);
        out.extend(invalid.iter().cloned());
        for path in changed {
            if let Some(id) = change_file(path) {
                out.extend(self.dependents_of(id).map(str::to_string));
            }
        }
        out
    }

    /// The changes whose digest covers one of `paths`: their own file, or
    /// a covered root that a path is or lies under.
    pub fn covering(&self, paths: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for path in paths {
            if let Some(id) = change_file(path) {
                out.insert(id.to_string());
            }
            // The path itself and each folder above it.
            let mut at = path.as_str();
            loop {
                out.extend(
                    self.by_root
                        .get(at)
                        .into_iter()
                        .flatten()
                        .map(|c| self.ids[*c as usize].to_string()),
                );
                match at.rfind('/') {
                    Some(i) => at = &at[..i],
                    None => break,
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing;

    fn change(id: &str, yaml: &str) -> ChangeSet {
        testing::change(id, yaml, &["a", "b", "c", "d", "gone"])
    }

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_move_touches_what_covers_it_and_nothing_else() {
        let step = |run: &str| {
            format!("title: t\nkind: k\ntargets: [x]\nsteps:\n  - id: s\n    run: {run}\n    timeout: 5m\n")
        };
        let a = change("a", &step("./scripts/shared.sh"));
        let b = change(
            "b",
            &format!("{}include: [lib/]\n", step("./scripts/own.sh")),
        );
        let c = change(
            "c",
            &format!("{}depends_on: [gone]\n", step("./scripts/own.sh")),
        );
        let d = change("d", &step("./tools"));
        let all = [a, b, c, d];
        let none = BTreeSet::new();
        let hit = |paths: &[&str]| RootIndex::new(all.iter()).affected(&set(paths), &none);

        assert_eq!(hit(&["scripts/shared.sh"]), set(&["a"]));
        assert_eq!(
            hit(&["lib/deep/new.sh"]),
            set(&["b"]),
            "a new file under an include"
        );
        assert_eq!(
            hit(&["tools/x/y.sh"]),
            set(&["d"]),
            "a folder a command runs"
        );
        assert_eq!(hit(&["scripts/own.sh"]), set(&["b", "c"]));
        assert_eq!(hit(&["README.md", "scripts/other.sh"]), set(&[]));
        assert_eq!(hit(&["changes/a.yaml"]), set(&["a"]));
        assert_eq!(
            hit(&["changes/new.yaml"]),
            set(&["new"]),
            "a new change set"
        );
        assert_eq!(
            hit(&["changes/gone.yaml"]),
            set(&["c", "gone"]),
            "and its dependents"
        );
        assert_eq!(hit(&["changes/fleet/list.txt"]), set(&[]));
        let invalid = set(&["broken"]);
        assert_eq!(
            RootIndex::new(all.iter()).affected(&set(&[]), &invalid),
            set(&["broken"])
        );
    }
}
