//! Change sets (SPEC §1): every field checked, every problem reported.

use super::*;
use crate::model::{CHANGE_ID_PATTERN, RESERVED_CHANGE_ID};

/// Unknown `depends_on` ids past this many get no "did you mean" hint.
const MAX_DEPENDS_ON_HINTS: usize = 5;

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
        folder_budget: MAX_FOLDER_ENTRIES,
    };
    if !is_valid_change_id(id) {
        d.error(
            Pos { line: 1, col: 1 },
            format!("change id `{id}` (the file name) must match [a-z0-9][a-z0-9._-]{{0,99}}"),
        );
    } else if id == RESERVED_CHANGE_ID {
        d.error(
            Pos { line: 1, col: 1 },
            format!("change id `{id}` is reserved: `changegate/{id}` is the commit status of policy edits; rename the file"),
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
    let targets_from = d.optional(&f, "targets_from", |d, n| {
        d.non_empty_string(n, "targets_from").map(|p| (p, n.pos))
    });
    let mut targets = if targets_from.is_some() {
        d.optional(&f, "targets", |d, n| d.string_list(n, "targets"))
    } else {
        d.required(&f, "targets", "the change set")
            .and_then(|n| d.string_list(n, "targets"))
    };
    if let (Some(t), Some(n), None) = (&targets, f.get("targets"), &targets_from) {
        if t.is_empty() {
            d.error(n.pos, "`targets` must name at least one target");
        }
    }
    if let Some((file, pos)) = &targets_from {
        let listed = targets_in_file(&mut d, file, *pos, ctx);
        merge_targets(&mut d, targets.get_or_insert_with(Vec::new), listed, file);
    }
    let target_set: BTreeSet<&str> = targets.iter().flatten().map(|(t, _)| t.as_str()).collect();
    let rollout = d.optional(&f, "rollout", |d, n| super::rollout::decode_rollout(d, n));

    let depends_on = d
        .optional(&f, "depends_on", |d, n| d.string_list(n, "depends_on"))
        .unwrap_or_default();
    // Hints compare one unknown id with every id under `changes/`: listed
    // once, and only for the first few, so a file of many (or very long)
    // unknown ids cannot turn into billions of comparisons.
    let mut all: Option<Vec<String>> = None;
    let mut hinted = 0;
    for (dep, pos) in &depends_on {
        if dep == id {
            d.error(
                *pos,
                format!("`depends_on` names `{dep}`, the change itself"),
            );
        } else if !is_valid_change_id(dep) {
            let shown: String = dep.chars().take(60).collect();
            d.error(
                *pos,
                format!(
                    "`depends_on` names `{}`, which is not a change id ({CHANGE_ID_PATTERN})",
                    shown.escape_debug()
                ),
            );
        } else if !ctx.change_ids.contains(dep) {
            let mut hint = String::new();
            if hinted < MAX_DEPENDS_ON_HINTS {
                hinted += 1;
                let all = all.get_or_insert_with(|| ctx.change_ids.all());
                if let Some(n) =
                    nearest_key(dep, &all.iter().map(String::as_str).collect::<Vec<_>>())
                {
                    hint = format!(": did you mean `{n}`?");
                }
            }
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
                        steps.push((step, item.pos));
                    }
                }
            }
            Value::Seq(_) => d.error(node.pos, "`steps` must hold at least one step"),
            _ => d.wrong_type(node, "steps", "a list of steps"),
        }
    }

    super::rollout::check_rollout(
        &mut d,
        rollout.as_ref(),
        f.get("rollout").map(|n| n.pos),
        &steps,
        target_set.len(),
    );
    let steps: Vec<Step> = steps.into_iter().map(|(s, _)| s).collect();
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
        targets_from: targets_from.map(|(p, _)| p),
        rollout: rollout.map(|(r, _)| r),
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
    let rollback = command(d, "rollback", false);
    let timeout = d.optional(&f, "timeout", |d, n| d.parsed::<Duration>(n, "timeout"));
    let rollback_timeout = d.optional(&f, "rollback_timeout", |d, n| {
        d.parsed::<Duration>(n, "rollback_timeout")
    });
    if let (Some(n), None) = (f.get("rollback_timeout"), &rollback) {
        d.error(
            n.pos,
            "`rollback_timeout` without `rollback`: there is nothing to time; add `rollback: <command>` or remove it",
        );
    }
    let confirm = d
        .optional(&f, "confirm", |d, n| d.bool(n, "confirm"))
        .unwrap_or(false);
    let targets = d.optional(&f, "targets", |d, n| d.string_list(n, "targets"));
    let per_target = d
        .optional(&f, "per_target", |d, n| d.bool(n, "per_target"))
        .unwrap_or(false);
    if let (true, Some(n)) = (per_target, f.get("targets")) {
        d.error(
            n.pos,
            "a `per_target` step runs once for every target; it cannot also name `targets`",
        );
    }
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
        per_target,
        rollback,
        rollback_timeout,
    })
}

/// The targets listed in `file` (one per line, `#` starts a comment), with
/// their line numbers; errors for a missing, unreadable or empty file.
fn targets_in_file(
    d: &mut Decoder<'_>,
    file: &str,
    pos: Pos,
    ctx: &RepoContext<'_>,
) -> Vec<(String, usize)> {
    let failed_before = d.failed;
    d.failed = false;
    d.check_path(pos, file, ctx, "`targets_from` names");
    let missing = d.failed;
    d.failed |= failed_before;
    if missing {
        return Vec::new();
    }
    let Some(text) = ctx.tree.file_text(file.trim_start_matches("./")) else {
        d.error(
            pos,
            format!("`targets_from` names `{file}`, which is not a UTF-8 text file under 1 MiB"),
        );
        return Vec::new();
    };
    let listed: Vec<(String, usize)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let target = line.split('#').next().unwrap_or("").trim();
            (!target.is_empty()).then(|| (target.to_string(), i + 1))
        })
        .collect();
    if listed.is_empty() {
        d.error(
            pos,
            format!("`targets_from` names `{file}`, which lists no target: write one per line"),
        );
    }
    listed
}

/// Appends the file's targets to `targets`, in order; a target listed
/// twice, in either place, is an error at its second mention.
fn merge_targets(
    d: &mut Decoder<'_>,
    targets: &mut Vec<(String, Pos)>,
    listed: Vec<(String, usize)>,
    file: &str,
) {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for (t, pos) in targets.iter() {
        if let Some(at) = first.get(t) {
            d.error(
                *pos,
                format!("target `{t}` is listed twice (first at {at})"),
            );
        } else {
            first.insert(t.clone(), format!("{}:{}:{}", d.path, pos.line, pos.col));
        }
    }
    for (t, line) in listed {
        // A target reaches step commands (`CHANGEGATE_TARGET`), logs and
        // pages: one word, nothing a terminal or a shell would act on.
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            d.failed = true;
            d.diagnostics.push(Diagnostic {
                path: file.trim_start_matches("./").to_string(),
                line,
                column: 1,
                message: format!(
                    "target {t:?} contains a space or a control character: write one target per line, one word each"
                ),
            });
            continue;
        }
        if let Some(at) = first.get(&t) {
            d.failed = true;
            d.diagnostics.push(Diagnostic {
                path: file.trim_start_matches("./").to_string(),
                line,
                column: 1,
                message: format!("target `{t}` is listed twice (first at {at})"),
            });
        } else {
            first.insert(t.clone(), format!("{file}:{line}:1"));
            targets.push((t, Pos { line, col: 1 }));
        }
    }
}
