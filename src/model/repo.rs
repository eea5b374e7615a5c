//! Reading every change set and policy of one commit into a checked model.

use std::collections::{BTreeMap, BTreeSet};

use super::decode::{decode_change_set, decode_policy, ChangeIds, RepoContext};
use super::yaml::{self, Pos};
use super::{ChangeSet, Diagnostic, Policy, TreeView};

/// Change sets and policies are small; a larger file is refused before parsing.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// A file read from the commit: its repository path and bytes.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path from the repository root, e.g. `changes/x.yaml`.
    pub path: String,
    /// The blob's content.
    pub bytes: Vec<u8>,
}

/// The change repository at one commit, with everything wrong in it.
#[derive(Debug, Default)]
pub struct RepoModel {
    /// Valid change sets by id.
    pub changes: BTreeMap<String, ChangeSet>,
    /// Valid policies, sorted by name.
    pub policies: Vec<Policy>,
    /// Every problem found, sorted by path and position.
    pub diagnostics: Vec<Diagnostic>,
    /// How many change-set files were read.
    pub change_files: usize,
    /// How many policy files were read.
    pub policy_files: usize,
}

impl RepoModel {
    /// True when no file had a problem.
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// The stem of a YAML file directly in `dir`, or a diagnostic for a `.yml`
/// file (which would otherwise be silently ignored), or `None` for other files.
fn yaml_stem<'a>(
    file: &'a SourceFile,
    dir: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<&'a str> {
    let name = file.path.strip_prefix(dir)?.strip_prefix('/')?;
    if let Some(stem) = name.strip_suffix(".yml") {
        diagnostics.push(Diagnostic::new(
            &file.path,
            Pos { line: 1, col: 1 },
            format!("YAML files here must end in `.yaml`; rename it to {dir}/{stem}.yaml"),
        ));
        return None;
    }
    name.strip_suffix(".yaml")
}

/// The file's text, or a diagnostic for oversize or non-UTF-8 content.
fn text_of<'a>(file: &'a SourceFile, diagnostics: &mut Vec<Diagnostic>) -> Option<&'a str> {
    if file.bytes.len() > MAX_FILE_BYTES {
        diagnostics.push(Diagnostic::new(
            &file.path,
            Pos { line: 1, col: 1 },
            format!("the file is {} bytes; change sets and policies are limited to {MAX_FILE_BYTES} bytes", file.bytes.len()),
        ));
        return None;
    }
    match std::str::from_utf8(&file.bytes) {
        Ok(text) => Some(text),
        Err(e) => {
            let valid = &file.bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let col =
                valid.len() - valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
            diagnostics.push(Diagnostic::new(
                &file.path,
                Pos { line, col },
                format!(
                    "the file is not valid UTF-8 (byte 0x{:02x})",
                    file.bytes[e.valid_up_to()]
                ),
            ));
            None
        }
    }
}

fn parse(file: &SourceFile, diagnostics: &mut Vec<Diagnostic>) -> Option<Option<yaml::Node>> {
    let text = text_of(file, diagnostics)?;
    yaml::load(text)
        .map_err(|e| diagnostics.push(Diagnostic::new(&file.path, e.pos, e.message)))
        .ok()
}

/// Checks every change set and policy. `change_files` are the blobs directly
/// under `changes/`, `policy_files` those under `policies/`; other
/// extensions are ordinary files and are skipped.
pub fn load_repo(
    change_files: &[SourceFile],
    policy_files: &[SourceFile],
    tree: &dyn TreeView,
) -> RepoModel {
    load_repo_with_progress(change_files, policy_files, tree, &mut |_, _| {})
}

/// [`load_repo`], calling `progress(done, total)` as change sets are checked.
pub fn load_repo_with_progress(
    change_files: &[SourceFile],
    policy_files: &[SourceFile],
    tree: &dyn TreeView,
    progress: &mut dyn FnMut(usize, usize),
) -> RepoModel {
    let mut model = RepoModel::default();
    let diagnostics = &mut model.diagnostics;

    let changes: Vec<(&SourceFile, &str)> = change_files
        .iter()
        .filter_map(|f| yaml_stem(f, "changes", diagnostics).map(|s| (f, s)))
        .collect();
    let change_ids: BTreeSet<String> = changes.iter().map(|(_, id)| id.to_string()).collect();
    let ctx = RepoContext {
        change_ids: &change_ids,
        tree,
    };
    let mut dep_positions = BTreeMap::new();
    for (file, id) in &changes {
        model.change_files += 1;
        if model.change_files % 1000 == 0 {
            progress(model.change_files, changes.len());
        }
        let Some(root) = parse(file, diagnostics) else {
            continue;
        };
        let (change, positions) =
            decode_change_set(&file.path, id, root.as_ref(), &ctx, diagnostics);
        if let Some(change) = change {
            dep_positions.insert(change.id.clone(), positions);
            model.changes.insert(change.id.clone(), change);
        }
    }
    report_cycles(&model.changes, &dep_positions, diagnostics);

    let mut budgets: BTreeMap<String, (String, Pos)> = BTreeMap::new();
    for file in policy_files {
        let Some(name) = yaml_stem(file, "policies", diagnostics) else {
            continue;
        };
        model.policy_files += 1;
        let Some(root) = parse(file, diagnostics) else {
            continue;
        };
        let (policy, actions) = decode_policy(&file.path, name, root.as_ref(), diagnostics);
        for (action, pos) in actions {
            if let Some((other, other_pos)) = budgets.get(&action) {
                diagnostics.push(Diagnostic::new(
                    &file.path,
                    pos,
                    format!("action `{action}` already has a budget in {other}:{}:{}; budget each action in one file", other_pos.line, other_pos.col),
                ));
            } else {
                budgets.insert(action, (file.path.clone(), pos));
            }
        }
        model.policies.extend(policy);
    }
    model.policies.sort_by(|a, b| a.name.cmp(&b.name));
    model.diagnostics.sort();
    model
}

/// One change set, checked on its own against `change_ids` (every id under
/// `changes/`) and `tree`: what `exec`, `approve` and `digest` need without
/// reading every other file. Checks that span files (dependency cycles,
/// budgets) are the server's, which reads the whole commit.
pub fn load_change(
    file: &SourceFile,
    change_ids: &dyn ChangeIds,
    tree: &dyn TreeView,
) -> Result<ChangeSet, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let change = yaml_stem(file, "changes", &mut diagnostics).and_then(|id| {
        let root = parse(file, &mut diagnostics)?;
        let ctx = RepoContext { change_ids, tree };
        decode_change_set(&file.path, id, root.as_ref(), &ctx, &mut diagnostics).0
    });
    match change {
        Some(change) if diagnostics.is_empty() => Ok(change),
        _ => {
            diagnostics.sort();
            Err(diagnostics)
        }
    }
}

/// Only the policy files `files` (under `policies/`), checked as
/// [`load_repo`] checks them: for texts that are not a commit's, such as
/// the last approved text of each file (SPEC §13).
pub fn load_policies(files: &[SourceFile]) -> RepoModel {
    /// Policies refer to nothing in the tree.
    struct NoTree;
    impl TreeView for NoTree {
        fn entry(&self, _: &str) -> Option<super::Entry> {
            None
        }
        fn blobs_under(&self, _: &str) -> Vec<(String, super::Entry)> {
            Vec::new()
        }
    }
    load_repo(&[], files, &NoTree)
}

/// Reports each `depends_on` cycle once, at the edge that closes it.
fn report_cycles(
    changes: &BTreeMap<String, ChangeSet>,
    positions: &BTreeMap<String, Vec<Pos>>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for start in changes.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        // Iterative DFS: (node, index of the next dependency to visit).
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Visiting);
        while let Some((node, next)) = stack.last_mut() {
            let deps = changes.get(*node).map_or(&[][..], |c| &c.depends_on[..]);
            let Some(dep) = deps.get(*next) else {
                marks.insert(node, Mark::Done);
                stack.pop();
                continue;
            };
            let (from, edge) = (*node, *next);
            *next += 1;
            match marks.get(dep.as_str()) {
                Some(Mark::Visiting) if dep != from => {
                    let cycle_start = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut path: Vec<&str> =
                        stack[cycle_start..].iter().map(|(n, _)| *n).collect();
                    path.push(dep);
                    let pos = positions
                        .get(from)
                        .and_then(|p| p.get(edge))
                        .copied()
                        .unwrap_or_default();
                    diagnostics.push(Diagnostic::new(
                        &format!("changes/{from}.yaml"),
                        pos,
                        format!("`depends_on` forms a cycle: {}", path.join(" → ")),
                    ));
                }
                None if changes.contains_key(dep) => {
                    marks.insert(dep, Mark::Visiting);
                    stack.push((dep, 0));
                }
                _ => {}
            }
        }
    }
}
