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
    /// The blob's content (empty when it was too large to read).
    pub bytes: Vec<u8>,
    /// The blob's size and git id when it is over [`MAX_FILE_BYTES`]: such
    /// a blob is not read at all. A few KiB of compressed zeros can hold a
    /// blob of gigabytes, and a folder can name it a thousand times.
    pub oversize: Option<(usize, String)>,
}

impl SourceFile {
    /// A file and its content.
    pub fn new(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> SourceFile {
        SourceFile {
            path: path.into(),
            bytes: bytes.into(),
            oversize: None,
        }
    }

    /// A file of `size` bytes, over [`MAX_FILE_BYTES`], left unread; `blob`
    /// is its git id.
    pub fn oversize(path: impl Into<String>, size: usize, blob: String) -> SourceFile {
        SourceFile {
            path: path.into(),
            bytes: Vec::new(),
            oversize: Some((size, blob)),
        }
    }
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
    let size = file
        .oversize
        .as_ref()
        .map_or(file.bytes.len(), |(size, _)| *size);
    if size > MAX_FILE_BYTES {
        diagnostics.push(Diagnostic::new(
            &file.path,
            Pos { line: 1, col: 1 },
            format!("the file is {size} bytes; change sets and policies are limited to {MAX_FILE_BYTES} bytes"),
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
    let mut ignored = Vec::new();
    let change_ids: BTreeSet<String> = change_files
        .iter()
        .filter_map(|f| yaml_stem(f, "changes", &mut ignored).map(str::to_string))
        .collect();
    let mut checker = ChangeChecker::new(&change_ids, tree);
    for file in change_files {
        if let Some(change) = checker.check(file) {
            model.changes.insert(change.id.clone(), change);
        }
        if checker.files % 1000 == 0 && checker.files > 0 {
            progress(checker.files, change_ids.len());
        }
    }
    model.change_files = checker.files;
    model.diagnostics = checker.finish();
    let diagnostics = &mut model.diagnostics;

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

/// Checks the change set files of one commit one at a time, so a caller
/// can keep each valid change set in its own form as it comes (the server
/// packs them) instead of holding every model at once. What spans files
/// (dependency cycles) is reported by [`ChangeChecker::finish`].
pub struct ChangeChecker<'a> {
    ctx: RepoContext<'a>,
    depends_on: BTreeMap<String, Vec<String>>,
    positions: BTreeMap<String, Vec<Pos>>,
    diagnostics: Vec<Diagnostic>,
    /// How many change set files were checked.
    pub files: usize,
}

impl<'a> ChangeChecker<'a> {
    /// A checker for a commit whose `changes/` holds `change_ids`.
    pub fn new(change_ids: &'a dyn ChangeIds, tree: &'a dyn TreeView) -> ChangeChecker<'a> {
        ChangeChecker {
            ctx: RepoContext { change_ids, tree },
            depends_on: BTreeMap::new(),
            positions: BTreeMap::new(),
            diagnostics: Vec::new(),
            files: 0,
        }
    }

    /// The change set in `file` (a blob directly under `changes/`), if it
    /// is valid on its own; other files are skipped.
    pub fn check(&mut self, file: &SourceFile) -> Option<ChangeSet> {
        let id = yaml_stem(file, "changes", &mut self.diagnostics)?;
        self.files += 1;
        let root = parse(file, &mut self.diagnostics)?;
        let (change, positions) = decode_change_set(
            &file.path,
            id,
            root.as_ref(),
            &self.ctx,
            &mut self.diagnostics,
        );
        let change = change?;
        self.depends_on
            .insert(change.id.clone(), change.depends_on.clone());
        self.positions.insert(change.id.clone(), positions);
        Some(change)
    }

    /// Every problem found, dependency cycles included.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        report_cycles(&self.depends_on, &self.positions, &mut self.diagnostics);
        self.diagnostics
    }
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
        fn blobs_under(
            &self,
            _: &str,
            _: &mut usize,
        ) -> Result<Vec<(String, super::Entry)>, String> {
            Ok(Vec::new())
        }
    }
    load_repo(&[], files, &NoTree)
}

/// Reports each `depends_on` cycle once, at the edge that closes it.
fn report_cycles(
    changes: &BTreeMap<String, Vec<String>>,
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
            let deps = changes.get(*node).map_or(&[][..], |d| &d[..]);
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
