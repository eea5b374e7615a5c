//! Policies (SPEC §1, "Policy"): every field checked, every problem reported.

use super::*;

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
        folder_budget: MAX_FOLDER_ENTRIES,
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
    if let Some(b) = d.optional(&f, "rollback_requires_approval", |d, n| {
        d.bool(n, "execution.rollback_requires_approval")
    }) {
        e.rollback_requires_approval = b;
    }
    e.max_wave = d.optional(&f, "max_wave", |d, n| {
        d.positive_int(n, "execution.max_wave")
    });
    e.min_bake = d.optional(&f, "min_bake", |d, n| {
        d.parsed::<Duration>(n, "execution.min_bake")
    });
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
