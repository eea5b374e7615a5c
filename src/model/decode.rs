//! Decoding position-carrying YAML into [`ChangeSet`] and [`Policy`],
//! reporting every problem rather than the first.

use std::collections::{BTreeMap, BTreeSet};

use super::digest::{command_paths, has_parent_component};
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
    "depends_on",
    "env",
    "include",
    "timeout",
    "steps",
];
pub(crate) const STEP_KEYS: &[&str] = &[
    "id", "run", "check", "verify", "timeout", "confirm", "targets",
];
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
];
pub(crate) const ACTION_BUDGET_KEYS: &[&str] = &["max", "per"];

/// What decoding a change set needs to know about the rest of the commit.
pub struct RepoContext<'a> {
    /// Every change id present under `changes/`, valid or not.
    pub change_ids: &'a BTreeSet<String>,
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
        // A covered symbolic link would bind the approval to the link's
        // text, not to what it runs.
        let link = match (!lookup.is_empty())
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
            Some(Entry::Link(_)) => Some(lookup.to_string()),
            Some(Entry::Tree) => ctx
                .tree
                .blobs_under(lookup)
                .into_iter()
                .find(|(_, e)| matches!(e, Entry::Link(_)))
                .map(|(p, _)| p),
            Some(Entry::Blob(_)) => None,
        };
        if let Some(link) = link {
            self.error(pos, format!("{subject} `{path}`, but `{link}` is a symbolic link: the digest would cover the link's text, not what it runs; commit the file itself"));
        }
    }
}

/// Decodes `changes/<id>.yaml`. Returns the change set when the file has no
/// errors, and the position of each `depends_on` entry for cross-file reports.
pub fn decode_change_set(
    path: &str,
    id: &str,
    root: Option<&Node>,
    ctx: &RepoContext<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<ChangeSet>, Vec<Pos>) {
    let mut d = Decoder {
        path,
        diagnostics,
        failed: false,
    };
    if !is_valid_change_id(id) {
        d.error(
            Pos { line: 1, col: 1 },
            format!("change id `{id}` (the file name) must match [a-z0-9][a-z0-9._-]{{0,99}}"),
        );
    }
    let Some(root) = root else {
        d.error(
            Pos { line: 1, col: 1 },
            "the file is empty: a change set needs `title`, `kind`, `targets` and `steps`",
        );
        return (None, Vec::new());
    };
    let Some(f) = d.mapping(root, "the change set", CHANGE_SET_KEYS) else {
        return (None, Vec::new());
    };

    let title = d
        .required(&f, "title", "the change set")
        .and_then(|n| d.non_empty_string(n, "title"));
    let description = d.optional(&f, "description", |d, n| d.string(n, "description"));
    let kind = d
        .required(&f, "kind", "the change set")
        .and_then(|n| d.non_empty_string(n, "kind"));
    let targets = d
        .required(&f, "targets", "the change set")
        .and_then(|n| d.string_list(n, "targets"));
    if let (Some(t), Some(n)) = (&targets, f.get("targets")) {
        if t.is_empty() {
            d.error(n.pos, "`targets` must name at least one target");
        }
    }
    let target_set: BTreeSet<&str> = targets.iter().flatten().map(|(t, _)| t.as_str()).collect();

    let depends_on = d
        .optional(&f, "depends_on", |d, n| d.string_list(n, "depends_on"))
        .unwrap_or_default();
    for (dep, pos) in &depends_on {
        if dep == id {
            d.error(
                *pos,
                format!("`depends_on` names `{dep}`, the change itself"),
            );
        } else if !ctx.change_ids.contains(dep) {
            let hint = nearest_key(
                dep,
                &ctx.change_ids
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
            .map(|n| format!(": did you mean `{n}`?"))
            .unwrap_or_default();
            d.error(
                *pos,
                format!("`depends_on` names `{dep}`, but there is no changes/{dep}.yaml{hint}"),
            );
        }
    }

    let env = d
        .optional(&f, "env", |d, n| decode_env(d, n))
        .unwrap_or_default();
    let include = d
        .optional(&f, "include", |d, n| d.string_list(n, "include"))
        .unwrap_or_default();
    for (p, pos) in &include {
        d.check_path(*pos, p, ctx, "`include` names");
    }
    let timeout = d.optional(&f, "timeout", |d, n| d.parsed::<Duration>(n, "timeout"));

    let mut steps = Vec::new();
    if let Some(node) = d.required(&f, "steps", "the change set") {
        match &node.value {
            Value::Seq(items) if !items.is_empty() => {
                let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
                for item in items {
                    if let Some(step) = decode_step(&mut d, item, &target_set, ctx, &mut seen) {
                        steps.push(step);
                    }
                }
            }
            Value::Seq(_) => d.error(node.pos, "`steps` must hold at least one step"),
            _ => d.wrong_type(node, "steps", "a list of steps"),
        }
    }

    let dep_positions = depends_on.iter().map(|(_, p)| *p).collect();
    if d.failed {
        return (None, dep_positions);
    }
    let change = ChangeSet {
        id: id.to_string(),
        title: title.unwrap_or_default(),
        description,
        kind: kind.unwrap_or_default(),
        targets: targets
            .unwrap_or_default()
            .into_iter()
            .map(|(t, _)| t)
            .collect(),
        depends_on: depends_on.into_iter().map(|(t, _)| t).collect(),
        env,
        include: include.into_iter().map(|(t, _)| t).collect(),
        timeout,
        steps,
    };
    (Some(change), dep_positions)
}

fn decode_env(d: &mut Decoder<'_>, node: &Node) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        d.wrong_type(node, "env", "a mapping of variable names to values");
        return None;
    };
    let mut env = BTreeMap::new();
    for (key, value) in entries {
        let valid = key
            .text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            d.error(
                key.pos,
                format!("env name `{}` must match [A-Za-z_][A-Za-z0-9_]*", key.text),
            );
            continue;
        }
        match &value.value {
            Value::Scalar { text, .. } => {
                env.insert(key.text.clone(), text.clone());
            }
            _ => d.wrong_type(value, &format!("env.{}", key.text), "a string"),
        }
    }
    Some(env)
}

fn decode_step(
    d: &mut Decoder<'_>,
    node: &Node,
    change_targets: &BTreeSet<&str>,
    ctx: &RepoContext<'_>,
    seen: &mut BTreeMap<String, Pos>,
) -> Option<Step> {
    let f = d.mapping(node, "a step", STEP_KEYS)?;
    let id = d.required(&f, "id", "a step").and_then(|n| {
        let id = d.string(n, "id")?;
        if !is_valid_step_id(&id) {
            d.error(n.pos, format!("step id `{id}` must match [a-z0-9-]+"));
        } else if let Some(first) = seen.get(&id) {
            d.error(
                n.pos,
                format!(
                    "duplicate step id `{id}` (first used at {}:{})",
                    first.line, first.col
                ),
            );
        } else {
            seen.insert(id.clone(), n.pos);
        }
        Some(id)
    });
    let command = |d: &mut Decoder<'_>, key: &str, required: bool| {
        let node = if required {
            d.required(&f, key, "a step")
        } else {
            f.get(key).filter(|n| !n.is_null())
        }?;
        let cmd = d.non_empty_string(node, key)?;
        for path in command_paths(&cmd) {
            d.check_path(
                node.pos,
                &format!("./{path}"),
                ctx,
                &format!("`{key}` runs"),
            );
        }
        for word in cmd
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ';' | '|' | '&'))
        {
            if has_parent_component(word) && !word.starts_with("./") {
                d.error(node.pos, format!("`{key}` refers to `{word}`, which contains `..`; paths must stay inside the repository"));
            }
        }
        Some(cmd)
    };
    let run = command(d, "run", true);
    let check = command(d, "check", false);
    let verify = command(d, "verify", false);
    let timeout = d.optional(&f, "timeout", |d, n| d.parsed::<Duration>(n, "timeout"));
    let confirm = d
        .optional(&f, "confirm", |d, n| d.bool(n, "confirm"))
        .unwrap_or(false);
    let targets = d.optional(&f, "targets", |d, n| d.string_list(n, "targets"));
    if let Some(targets) = &targets {
        for (t, pos) in targets {
            if !change_targets.contains(t.as_str()) {
                d.error(
                    *pos,
                    format!("step target `{t}` is not among the change's targets"),
                );
            }
        }
    }
    Some(Step {
        id: id?,
        run: run?,
        check,
        verify,
        timeout,
        confirm,
        targets: targets.map(|t| t.into_iter().map(|(t, _)| t).collect()),
    })
}

/// Decodes `policies/<name>.yaml`. Returns the policy when the file has no
/// errors; the positions of its `actions` keys let the caller report a
/// budget that two files set.
pub fn decode_policy(
    path: &str,
    name: &str,
    root: Option<&Node>,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<Policy>, BTreeMap<String, Pos>) {
    let mut d = Decoder {
        path,
        diagnostics,
        failed: false,
    };
    let mut action_pos = BTreeMap::new();
    let Some(root) = root else {
        d.error(
            Pos { line: 1, col: 1 },
            "the file is empty: a policy needs at least `approvals` or `actions`",
        );
        return (None, action_pos);
    };
    let Some(f) = d.mapping(root, "the policy", POLICY_KEYS) else {
        return (None, action_pos);
    };
    let description = d.optional(&f, "description", |d, n| d.string(n, "description"));
    let matches = d
        .optional(&f, "match", |d, n| decode_match(d, n))
        .unwrap_or_default();
    let approvals = d
        .optional(&f, "approvals", |d, n| decode_approvals(d, n))
        .unwrap_or_default();
    let execution = d
        .optional(&f, "execution", |d, n| decode_execution(d, n))
        .unwrap_or_default();
    let alerts = d
        .optional(&f, "alerts", |d, n| d.string_list(n, "alerts"))
        .map(|a| a.into_iter().map(|(s, _)| s).collect());
    let mut actions = BTreeMap::new();
    if let Some(node) = f.get("actions").filter(|n| !n.is_null()) {
        if let Value::Map(entries) = &node.value {
            for (key, value) in entries {
                if let Some(budget) = decode_budget(&mut d, value, &key.text) {
                    actions.insert(key.text.clone(), budget);
                    action_pos.insert(key.text.clone(), key.pos);
                }
            }
        } else {
            d.wrong_type(node, "actions", "a mapping of action names to budgets");
        }
    }
    if d.failed {
        return (None, action_pos);
    }
    let policy = Policy {
        name: name.to_string(),
        governs_changes: f.has_any(&["match", "approvals", "execution", "alerts"])
            || actions.is_empty(),
        description,
        matches,
        approvals,
        execution,
        alerts,
        actions,
    };
    (Some(policy), action_pos)
}

fn globs(d: &mut Decoder<'_>, node: &Node, what: &str) -> Option<Vec<String>> {
    let list = d.string_list(node, what)?;
    for (g, pos) in &list {
        if let Err(e) = glob::Pattern::new(g) {
            d.error(
                *pos,
                format!("`{what}` entry `{g}` is not a valid glob: {}", e.msg),
            );
        }
    }
    Some(list.into_iter().map(|(g, _)| g).collect())
}

fn decode_match(d: &mut Decoder<'_>, node: &Node) -> Option<Match> {
    let f = d.mapping(node, "`match`", MATCH_KEYS)?;
    let mut m = Match::default();
    if let Some(kinds) = d.optional(&f, "kinds", |d, n| globs(d, n, "match.kinds")) {
        m.kinds = kinds;
    }
    if let Some(targets) = d.optional(&f, "targets", |d, n| globs(d, n, "match.targets")) {
        m.targets = targets;
    }
    if let Some(paths) = d.optional(&f, "paths", |d, n| globs(d, n, "match.paths")) {
        m.paths = paths;
        // Paths alone: kinds and targets do not match on their own.
        if !f.has_any(&["kinds", "targets"]) {
            m.kinds = Vec::new();
        }
    }
    Some(m)
}

fn decode_approver(d: &mut Decoder<'_>, text: &str, pos: Pos) -> Option<Approver> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let approver = match text.strip_prefix("team:") {
        Some(team) => team
            .split_once('/')
            .filter(|(org, slug)| name_ok(org) && name_ok(slug))
            .map(|(org, slug)| Approver::Team {
                org: org.into(),
                slug: slug.into(),
            }),
        None => name_ok(text).then(|| Approver::User(text.into())),
    };
    if approver.is_none() {
        d.error(
            pos,
            format!("`approvals.from` entry `{text}` must be a login or `team:org/slug`"),
        );
    }
    approver
}

fn decode_approvals(d: &mut Decoder<'_>, node: &Node) -> Option<Approvals> {
    let f = d.mapping(node, "`approvals`", APPROVALS_KEYS)?;
    let mut a = Approvals::default();
    if let Some(n) = d.optional(&f, "required", |d, n| {
        d.positive_int(n, "approvals.required")
    }) {
        a.required = n;
    }
    if let Some(from) = d.optional(&f, "from", |d, n| d.string_list(n, "approvals.from")) {
        a.from = from
            .iter()
            .filter_map(|(s, p)| decode_approver(d, s, *p))
            .collect();
        let eligible_users = a
            .from
            .iter()
            .filter(|x| matches!(x, Approver::User(_)))
            .count();
        let has_team = a.from.iter().any(|x| matches!(x, Approver::Team { .. }));
        if !has_team && eligible_users < a.required as usize {
            let pos = f.get("from").map_or(f.pos, |n| n.pos);
            d.error(pos, format!(
                "`approvals.required` is {} but `from` names only {eligible_users} people; the policy could never be satisfied",
                a.required
            ));
        }
    }
    if let Some(b) = d.optional(&f, "author_may_approve", |d, n| {
        d.bool(n, "approvals.author_may_approve")
    }) {
        a.author_may_approve = b;
    }
    a.expire_after = d.optional(&f, "expire_after", |d, n| {
        d.parsed(n, "approvals.expire_after")
    });
    Some(a)
}

fn decode_execution(d: &mut Decoder<'_>, node: &Node) -> Option<Execution> {
    let f = d.mapping(node, "`execution`", EXECUTION_KEYS)?;
    let mut e = Execution::default();
    if let Some(b) = d.optional(&f, "confirm_each_step", |d, n| {
        d.bool(n, "execution.confirm_each_step")
    }) {
        e.confirm_each_step = b;
    }
    if let Some(windows) = d.optional(&f, "windows", |d, n| d.string_list(n, "execution.windows")) {
        e.windows = windows
            .iter()
            .filter_map(|(w, pos)| {
                w.parse::<Window>()
                    .map_err(|msg| d.error(*pos, format!("`execution.windows`: {msg}")))
                    .ok()
            })
            .collect();
    }
    e.max_targets_per_step = d.optional(&f, "max_targets_per_step", |d, n| {
        d.positive_int(n, "execution.max_targets_per_step")
    });
    if let Some(b) = d.optional(&f, "retry_requires_approval", |d, n| {
        d.bool(n, "execution.retry_requires_approval")
    }) {
        e.retry_requires_approval = b;
    }
    Some(e)
}

fn decode_budget(d: &mut Decoder<'_>, node: &Node, action: &str) -> Option<ActionBudget> {
    let what = format!("`actions.{action}`");
    let f = d.mapping(node, &what, ACTION_BUDGET_KEYS)?;
    let max = d
        .required(&f, "max", &what)
        .and_then(|n| d.positive_int(n, "max"));
    let per = d
        .required(&f, "per", &what)
        .and_then(|n| d.parsed::<Duration>(n, "per"));
    Some(ActionBudget {
        max: max?,
        per: per?,
    })
}
