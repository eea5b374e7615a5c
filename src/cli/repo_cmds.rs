//! Commands that read the change repository: `validate`, `plan`, `digest`, `schema`.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::{exit, Format, RepoArgs};
use crate::git::{ChangeAt, ChangeRepo, GitError, Snapshot};
use crate::model::schema::{json_schema, SchemaKind};
use crate::model::{policies_in_force, PoliciesInForce, Policy};

fn fail(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    exit::USAGE
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

pub(super) fn validate(args: &RepoArgs, format: Format, strict: bool) -> u8 {
    let repo = match ChangeRepo::open(&args.repo) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // Large repositories show progress on a terminal; pipes and CI logs stay clean.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rchecking change sets: {done}/{total}");
        }
    };
    let loaded = repo
        .at(&args.rev)
        .and_then(|s| s.load_model_with_progress(&mut progress).map(|m| (s, m)));
    if tty {
        eprint!("\r\x1b[2K");
    }
    let (snapshot, model) = match loaded {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let warnings = snapshot.uncovered_warnings(&model);
    let valid = model.is_valid() && (warnings.is_empty() || !strict);
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "valid": valid,
                "rev": args.rev,
                "commit": snapshot.commit_id(),
                "change_sets": model.change_files,
                "policies": model.policy_files,
                "errors": model.diagnostics,
                "warnings": warnings,
                "strict": strict,
            })
        ),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            for d in &model.diagnostics {
                let _ = writeln!(out, "{d}");
            }
            let kind = if strict { "error" } else { "warning" };
            for w in &warnings {
                let _ = writeln!(
                    out,
                    "{}:{}:{}: {kind}: {}",
                    w.path, w.line, w.column, w.message
                );
            }
            let plural =
                |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            let verdict = match (model.diagnostics.len(), warnings.len()) {
                (0, 0) => "all valid".to_string(),
                (0, w) if !strict => format!("valid, {}", plural(w, "warning")),
                (e, 0) => plural(e, "error"),
                (e, w) => format!("{}, {}", plural(e, "error"), plural(w, kind)),
            };
            let _ = writeln!(
                out,
                "checked {} change sets and {} policies at {} ({}): {verdict}",
                model.change_files,
                model.policy_files,
                args.rev,
                short(snapshot.commit_id())
            );
        }
    }
    if valid {
        exit::OK
    } else {
        exit::INVALID
    }
}

/// Change `id` at the requested rev, read on its own with its digest, or
/// the exit code already reported.
fn with_change(
    args: &RepoArgs,
    id: &str,
    f: impl FnOnce(&ChangeRepo, &Snapshot<'_>, ChangeAt) -> u8,
) -> u8 {
    let repo = match ChangeRepo::open(&args.repo) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let snapshot = match repo.at(&args.rev) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match snapshot.change(id) {
        Ok(change) => f(&repo, &snapshot, change),
        Err(GitError::InvalidChange { problems, .. }) => {
            for d in problems {
                eprintln!("{d}");
            }
            eprintln!(
                "error: change `{id}` is invalid at {}; fix the errors above",
                args.rev
            );
            exit::INVALID
        }
        Err(GitError::NoSuchChange { .. }) => fail(format!(
            "no change `{id}` at {}: there is no changes/{id}.yaml",
            args.rev
        )),
        Err(e) => fail(e),
    }
}

pub(super) fn digest(id: &str, args: &RepoArgs) -> u8 {
    with_change(args, id, |_, _, at| {
        println!("{}", at.digest);
        exit::OK
    })
}

fn describe_policy(policy: &Policy) -> String {
    let a = &policy.approvals;
    let from = if a.from.is_empty() {
        "any reviewer".to_string()
    } else {
        a.from
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = vec![format!(
        "{} approval{} from {from}{}",
        a.required,
        if a.required == 1 { "" } else { "s" },
        if a.author_may_approve {
            " (authors may approve)"
        } else {
            ", not an author"
        }
    )];
    let e = &policy.execution;
    if e.confirm_each_step {
        parts.push("a go-ahead before every step".into());
    }
    if !e.windows.is_empty() {
        parts.push(format!(
            "only in {}",
            e.windows
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if let Some(max) = e.max_targets_per_step {
        parts.push(format!("at most {max} target(s) per step"));
    }
    parts.join("; ")
}

pub(super) fn plan(id: &str, args: &RepoArgs, default_branch: &str, format: Format) -> u8 {
    with_change(args, id, |repo, snapshot, at| {
        let ChangeAt {
            change,
            covered,
            digest,
        } = at;
        let change = &change;
        // Policies in force come from the default branch, never from the rev being planned.
        let base = repo.at(default_branch).ok();
        let policy_source = match &base {
            Some(b) => format!("{default_branch} ({})", short(b.commit_id())),
            None => format!("{} (no branch `{default_branch}`)", args.rev),
        };
        let read = match &base {
            Some(b) => b.policies(),
            None => snapshot.policies(),
        };
        let policies = match read {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let policies = &policies;
        let in_force = policies_in_force(change, &covered, policies);
        let rules = in_force.approval_rules();
        let confirm_all = matches!(&in_force, PoliciesInForce::Matched { policies } if policies.iter().any(|p| p.execution.confirm_each_step));

        if format == Format::Json {
            println!(
                "{}",
                json!({
                    "id": change.id,
                    "rev": args.rev,
                    "commit": snapshot.commit_id(),
                    "change": change,
                    "covered_paths": covered,
                    "digest": digest,
                    "policies_from": policy_source,
                    "policies_in_force": in_force,
                    "approvals_needed": rules.iter().map(|(name, a)| json!({"policy": name, "required": a.required, "from": a.from, "author_may_approve": a.author_may_approve})).collect::<Vec<_>>(),
                })
            );
            return exit::OK;
        }

        let mut o = String::new();
        let mut line = |s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line(format!("{} — {}", change.id, change.title));
        line(format!(
            "  at {} ({})",
            args.rev,
            short(snapshot.commit_id())
        ));
        line(format!(
            "  kind {} · targets {}",
            change.kind,
            change.targets.join(", ")
        ));
        if !change.depends_on.is_empty() {
            line(format!(
                "  depends on {} (each must be completed first)",
                change.depends_on.join(", ")
            ));
        }
        line(String::new());
        if change.rollout.is_some() || change.steps.iter().any(|s| s.per_target) {
            for l in rollout_lines(change) {
                line(l);
            }
            line(String::new());
        }
        line("steps, run one at a time in this order:".into());
        for (n, step) in change.steps.iter().enumerate() {
            let mut gates = Vec::new();
            if let Some(t) = step.timeout.or(change.timeout) {
                gates.push(format!("timeout {t}"));
            }
            if step.confirm || confirm_all {
                gates.push("needs a go-ahead".into());
            }
            if step.per_target {
                gates.insert(0, "per target".into());
            } else {
                gates.push(format!(
                    "targets {}",
                    step.effective_targets(change).join(", ")
                ));
            }
            line(format!("  {}. {}  [{}]", n + 1, step.id, gates.join("; ")));
            for (role, cmd) in step.commands() {
                let role = match (role, step.rollback_timeout) {
                    ("rollback", Some(t)) => format!("rollback (timeout {t})"),
                    (role, _) => role.to_string(),
                };
                line(format!(
                    "       {role:<6}  {}",
                    cmd.trim_end().replace('\n', "\n               ")
                ));
            }
            if step.rollback.is_none() {
                line("       no rollback".into());
            }
        }
        line(String::new());
        line("covered paths (bound into the digest):".into());
        for c in &covered {
            let mode = if c.executable { "  (executable)" } else { "" };
            line(format!("  {}  {}{mode}", c.blob, c.path));
        }
        line(format!("digest {digest}"));
        line(String::new());
        line(format!("policies in force, from {policy_source}:"));
        match &in_force {
            PoliciesInForce::Matched { policies } => {
                for p in policies {
                    line(format!("  {}: {}", p.name, describe_policy(p)));
                }
            }
            PoliciesInForce::BuiltinDefault => {
                line("  built-in default: 1 approval from anyone who is not an author".into())
            }
        }
        // Whom each `from` entry resolves to, by the server's identities
        // (the config `serve` would read here, if any).
        let (identities, config_problem): (BTreeMap<String, Option<String>>, _) =
            match crate::config::Config::load(None) {
                Ok(c) => (
                    c.tokens.into_iter().map(|t| (t.name, t.github)).collect(),
                    None,
                ),
                Err(e) => (BTreeMap::new(), Some(e)),
            };
        if let Some(e) = config_problem {
            line(format!(
                "(the config could not be read, so identities are unknown: {e})"
            ));
        }
        line(if identities.is_empty() {
            "who may approve (no [[tokens]] in the config here: every plain entry is a GitHub login):".to_string()
        } else {
            format!(
                "who may approve (identities: {}):",
                identities.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        });
        for (name, approvals) in &rules {
            if approvals.from.is_empty() {
                line(format!(
                    "  {name}: anyone who is not an author (a GitHub reviewer needs write access)"
                ));
            }
            for entry in &approvals.from {
                line(format!(
                    "  {name}: {}",
                    crate::gate::who_matches(entry, &identities)
                ));
            }
        }
        let total: u32 = rules.iter().map(|(_, a)| a.required).max().unwrap_or(1);
        line(format!(
            "approvals needed: every policy above must hold (at least {total} approval{} at {digest})",
            if total == 1 { "" } else { "s" }
        ));
        print!("{o}");
        exit::OK
    })
}

pub(super) fn schema(kind: SchemaKind) -> u8 {
    match serde_json::to_string_pretty(&json_schema(kind)) {
        Ok(s) => {
            println!("{s}");
            exit::OK
        }
        Err(e) => fail(e),
    }
}

/// What `plan` says of a rollout: its source, shape and each wave's targets
/// (the first few and a count).
fn rollout_lines(change: &crate::model::ChangeSet) -> Vec<String> {
    let rollout = change.rollout.clone().unwrap_or_default();
    let source = match &change.targets_from {
        Some(f) => format!("`targets` and {f}"),
        None => "`targets`".into(),
    };
    let shares: Vec<String> = rollout.waves.iter().map(ToString::to_string).collect();
    let mut out = vec![format!(
        "rollout over {} targets ({source}): canary, then {}; bake {}; {} at once",
        change.targets.len(),
        shares.join(", "),
        rollout.bake.map_or("none".to_string(), |b| b.to_string()),
        rollout.parallel
    )];
    for (n, wave) in rollout.waves(&change.targets).iter().enumerate() {
        const SHOWN: usize = 5;
        let mut names = wave
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if wave.len() > SHOWN {
            names.push_str(&format!(
                " … and {} more ({} in all)",
                wave.len() - SHOWN,
                wave.len()
            ));
        }
        out.push(format!("  wave {}: {names}", n + 1));
    }
    out
}
