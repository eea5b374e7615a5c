//! Decoding position-carrying YAML into [`ChangeSet`] and [`Policy`],
//! reporting every problem rather than the first.

mod change_set;
mod policy;
mod rollout;

pub use change_set::decode_change_set;
pub use policy::decode_policy;

use std::collections::{BTreeMap, BTreeSet};

use super::digest::{
    command_paths, has_parent_component, odd_mode, symlink, unreadable_path, MAX_FOLDER_ENTRIES,
};
use super::yaml::{Key, Node, Pos, Value};
use super::{
    is_valid_change_id, is_valid_step_id, ActionBudget, Approvals, Approver, ChangeSet, Diagnostic,
    Duration, Entry, Execution, Match, Policy, Step, TreeView, Window,
};

/// Keys of a change set, in the order the spec lists them.
pub(crate) const CHANGE_SET_KEYS: &[&str] = &[
    "title",
    "description",
    "kind",
    "targets",
    "targets_from",
    "rollout",
    "depends_on",
    "env",
    "include",
    "timeout",
    "steps",
];
pub(crate) const STEP_KEYS: &[&str] = &[
    "id",
    "run",
    "check",
    "verify",
    "timeout",
    "confirm",
    "targets",
    "per_target",
    "rollback",
    "rollback_timeout",
];
pub(crate) const ROLLOUT_KEYS: &[&str] = &["canary", "waves", "bake", "parallel"];
pub(crate) const POLICY_KEYS: &[&str] = &[
    "description",
    "match",
    "approvals",
    "execution",
    "alerts",
    "actions",
];
pub(crate) const MATCH_KEYS: &[&str] = &["kinds", "targets", "paths"];
pub(crate) const APPROVALS_KEYS: &[&str] =
    &["required", "from", "author_may_approve", "expire_after"];
pub(crate) const EXECUTION_KEYS: &[&str] = &[
    "confirm_each_step",
    "windows",
    "max_targets_per_step",
    "retry_requires_approval",
    "rollback_requires_approval",
    "max_wave",
    "min_bake",
];
pub(crate) const ACTION_BUDGET_KEYS: &[&str] = &["max", "per"];

/// The change ids present under `changes/`, valid or not.
pub trait ChangeIds {
    /// Whether `changes/<id>.yaml` exists.
    fn contains(&self, id: &str) -> bool;
    /// Every id (for a "did you mean" hint: only on an error).
    fn all(&self) -> Vec<String>;
}

impl ChangeIds for BTreeSet<String> {
    fn contains(&self, id: &str) -> bool {
        BTreeSet::contains(self, id)
    }
    fn all(&self) -> Vec<String> {
        self.iter().cloned().collect()
    }
}

/// What decoding a change set needs to know about the rest of the commit.
pub struct RepoContext<'a> {
    /// Every change id present under `changes/`, valid or not.
    pub change_ids: &'a dyn ChangeIds,
    /// The commit's tree, for `./path` and `include` checks.
    pub tree: &'a dyn TreeView,
}

/// The known key closest to `unknown`, if any is close enough to be a typo.
pub(crate) fn nearest_key<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1) + 1 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// A mapping whose keys were checked against the known ones.
struct Fields<'n> {
    pos: Pos,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    fn has_any(&self, keys: &[&str]) -> bool {
        self.entries
            .iter()
            .any(|(k, _)| keys.contains(&k.text.as_str()))
    }
}

struct Decoder<'p> {
    path: &'p str,
    diagnostics: &'p mut Vec<Diagnostic>,
    failed: bool,
    /// Files and folders that may still be walked below the folders the
    /// change covers: it may name the same large folder many times.
    folder_budget: usize,
}

impl<'p> Decoder<'p> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.failed = true;
        self.diagnostics
            .push(Diagnostic::new(self.path, pos, message));
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.error(
            node.pos,
            format!("`{what}` must be {expected}, found {}", node.kind_name()),
        );
    }

    /// A mapping with only known keys; unknown ones are reported with the nearest valid key.
    fn mapping<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        for (key, _) in entries {
            if !known.contains(&key.text.as_str()) {
                let hint = match nearest_key(&key.text, known) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("expected one of: {}", known.join(", ")),
                };
                self.error(
                    key.pos,
                    format!("unknown key `{}` in {what}: {hint}", key.text),
                );
            }
        }
        Some(Fields {
            pos: node.pos,
            entries,
        })
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(
                fields.pos,
                format!("{what} is missing the required key `{key}`"),
            );
        }
        node
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.error(node.pos, format!("`{what}` must not be empty"));
            return None;
        }
        Some(s)
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, what, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push((self.non_empty_string(item, what)?, item.pos));
        }
        Some(out)
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } if text == "true" => Some(true),
            Value::Scalar {
                text,
                quoted: false,
            } if text == "false" => Some(false),
            _ => {
                self.wrong_type(node, what, "true or false");
                None
            }
        }
    }

    fn positive_int(&mut self, node: &Node, what: &str) -> Option<u32> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } => match text.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.error(
                        node.pos,
                        format!("`{what}` must be a whole number of at least 1, found `{text}`"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, what, "a whole number");
                None
            }
        }
    }

    fn parsed<T: std::str::FromStr<Err = String>>(&mut self, node: &Node, what: &str) -> Option<T> {
        let text = self.string(node, what)?;
        text.parse()
            .map_err(|e: String| self.error(node.pos, format!("`{what}`: {e}")))
            .ok()
    }

    fn optional<T>(
        &mut self,
        fields: &Fields<'_>,
        key: &str,
        decode: impl FnOnce(&mut Self, &Node) -> Option<T>,
    ) -> Option<T> {
        fields
            .get(key)
            .filter(|n| !n.is_null())
            .and_then(|n| decode(self, n))
    }

    /// Reports a path that reaches outside the tree or is not in it.
    /// `subject` reads like "`run` runs" or "`include` names".
    fn check_path(&mut self, pos: Pos, path: &str, ctx: &RepoContext<'_>, subject: &str) {
        let lookup = path.trim_start_matches("./").trim_end_matches('/');
        if has_parent_component(path) {
            self.error(pos, format!("{subject} `{path}`, which contains `..`; paths must stay inside the repository"));
            return;
        }
        if let Some(why) = unreadable_path(lookup) {
            self.error(pos, format!("{subject} {why}"));
            return;
        }
        // A covered symbolic link would bind the approval to the link's
        // text, not to what it runs; a blob under an odd mode, to what no
        // reviewer sees as a file.
        let refused = match (!lookup.is_empty())
            .then(|| ctx.tree.entry(lookup))
            .flatten()
        {
            None => {
                self.error(
                    pos,
                    format!(
                        "{subject} `{path}`, but that path is not in the tree at this revision"
                    ),
                );
                return;
            }
            Some(Entry::Link(_)) => Some(symlink(lookup)),
            Some(Entry::OddMode(mode)) => Some(odd_mode(lookup, mode)),
            Some(Entry::Tree) => match ctx.tree.blobs_under(lookup, &mut self.folder_budget) {
                Ok(below) => below.into_iter().find_map(|(p, e)| match e {
                    Entry::Link(_) => Some(symlink(&p)),
                    Entry::OddMode(mode) => Some(odd_mode(&p, mode)),
                    _ => None,
                }),
                Err(why) => {
                    self.error(pos, format!("{subject} `{path}`, but {why}"));
                    return;
                }
            },
            Some(Entry::Blob(_) | Entry::Executable(_)) => None,
        };
        if let Some(why) = refused {
            self.error(pos, format!("{subject} `{path}`, but {why}"));
        }
    }
}
