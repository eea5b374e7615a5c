//! The plan as one pull request comment (SPEC §12): what each touched
//! change will run, at which digest, under which policies, and who has
//! approved. Pure: the facts in, Markdown out.
//!
//! Everything taken from a change set (titles, ids, commands, paths) is
//! escaped, so no Markdown or HTML in a change set can forge content in
//! the comment.

use std::fmt::Write as _;

use crate::gate::ApprovalStatus;
use crate::model::{ChangeSet, CoveredPath};

/// The hidden marker the comment is found by, across restarts and replicas.
pub const MARKER: &str = "<!-- changegate:plan -->";

/// GitHub refuses a comment body longer than this (422).
pub const MAX_BODY: usize = 65_536;

/// One policy in force on the default branch, as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLine {
    /// Its name.
    pub name: String,
    /// Approvals it needs.
    pub required: u32,
    /// Who may approve (`from`), as written; empty: anyone but an author.
    pub from: Vec<String>,
}

/// A change the pull request touches.
#[derive(Debug, Clone)]
pub enum PlanChange<'a> {
    /// A change set that validates at the head.
    Valid {
        /// The change set at the head.
        change: &'a ChangeSet,
        /// Its digest at the head.
        digest: &'a str,
        /// Its covered paths at the head.
        covered: &'a [CoveredPath],
        /// Who approved it at that digest, and whether that is enough.
        approval: &'a ApprovalStatus,
        /// The policies in force on the default branch that govern it.
        policies: Vec<PolicyLine>,
    },
    /// A change set that does not validate: its errors, `path:line:col: …`.
    Invalid {
        /// The change id.
        id: &'a str,
        /// Its errors.
        errors: Vec<String>,
    },
}

impl PlanChange<'_> {
    fn id(&self) -> &str {
        match self {
            PlanChange::Valid { change, .. } => &change.id,
            PlanChange::Invalid { id, .. } => id,
        }
    }
}

/// The comment for pull request `pr` at `head`, cut at a change boundary
/// when it would pass [`MAX_BODY`], with links to the pages of the rest.
pub fn render(pr: i64, head: &str, public_url: &str, changes: &[PlanChange<'_>]) -> String {
    let base = public_url.trim_end_matches('/');
    let mut out = format!(
        "{MARKER}\n## changegate plan\n\nPull request #{pr} at `{}`: {} change set(s). Approvals bind to the digest shown; a push that changes it needs new ones.\n",
        short(head),
        changes.len()
    );
    for (i, change) in changes.iter().enumerate() {
        let section = section(change, base);
        let rest = &changes[i..];
        let footer = cut_footer(rest, base);
        if out.len() + section.len() + footer.len() > MAX_BODY - 256 {
            out.push_str(&footer);
            return out;
        }
        out.push_str(&section);
    }
    out
}

/// What replaces the sections that do not fit.
fn cut_footer(rest: &[PlanChange<'_>], base: &str) -> String {
    let mut out = format!(
        "\n---\n{} more change set(s) do not fit in one comment; see their pages:\n",
        rest.len()
    );
    for c in rest.iter().take(200) {
        let _ = writeln!(
            out,
            "- [{}]({base}/changes/{})",
            text(c.id()),
            url_part(c.id())
        );
    }
    if rest.len() > 200 {
        let _ = writeln!(out, "- … and {} more on {base}/", rest.len() - 200);
    }
    out
}

fn section(change: &PlanChange<'_>, base: &str) -> String {
    let mut out = String::new();
    match change {
        PlanChange::Invalid { id, errors } => {
            let _ = writeln!(out, "\n### {} does not validate\n", code(id));
            for e in errors {
                let _ = writeln!(out, "- {}", code(e));
            }
        }
        PlanChange::Valid {
            change,
            digest,
            covered,
            approval,
            policies,
        } => {
            let _ = writeln!(out, "\n### {} {}\n", code(&change.id), text(&change.title));
            let _ = writeln!(
                out,
                "**kind** {} · **{} target(s)**: {} · [page]({base}/changes/{})\n",
                code(&change.kind),
                change.targets.len(),
                first_few(&change.targets),
                url_part(&change.id)
            );
            approvals(&mut out, approval, policies);
            if let Some(r) = change.sweep() {
                let sizes: Vec<String> = r
                    .waves(&change.targets)
                    .iter()
                    .map(|w| w.len().to_string())
                    .collect();
                let _ = writeln!(
                    out,
                    "**rollout**: waves of {} target(s); bake {}; at most {} at once\n",
                    sizes.join(" · "),
                    r.bake.map_or("none".to_string(), |b| b.to_string()),
                    r.parallel
                );
            }
            let _ = writeln!(out, "**steps**\n");
            for (n, step) in change.steps.iter().enumerate() {
                let mut marks = Vec::new();
                if step.per_target {
                    marks.push("per target".to_string());
                }
                if step.confirm {
                    marks.push("needs a go-ahead".to_string());
                }
                if let Some(t) = step.timeout.or(change.timeout) {
                    marks.push(format!("timeout {t}"));
                }
                let _ = writeln!(
                    out,
                    "{}. {}{}",
                    n + 1,
                    code(&step.id),
                    if marks.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", marks.join(" · "))
                    }
                );
                let commands: Vec<String> = step
                    .commands()
                    .map(|(role, cmd)| format!("# {role}\n{cmd}"))
                    .collect();
                out.push_str(&fenced(&commands.join("\n"), "   "));
            }
            let _ = writeln!(out, "\n**digest** {}\n", code(digest));
            let _ = writeln!(
                out,
                "<details><summary>{} covered path(s)</summary>\n\n| path | mode | blob |\n| --- | --- | --- |",
                covered.len()
            );
            // The mode is bound too: a `chmod +x` shows here, not only in
            // the digest.
            for c in covered.iter() {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    code(&c.path),
                    mode(c.executable),
                    code(&c.blob)
                );
            }
            out.push_str("\n</details>\n");
        }
    }
    out
}

fn approvals(out: &mut String, approval: &ApprovalStatus, policies: &[PolicyLine]) {
    let verdict = if approval.satisfied {
        "approved"
    } else {
        "not approved yet"
    };
    let _ = writeln!(
        out,
        "**approvals**: {} — {verdict}\n",
        text(&approval.summary())
    );
    if policies.is_empty() {
        let _ = writeln!(
            out,
            "- in force: the built-in default (one approval by someone other than an author)"
        );
    }
    for p in policies {
        let counted = approval
            .policies
            .iter()
            .find(|t| t.name == p.name)
            .map_or(0, |t| t.counted);
        let from = if p.from.is_empty() {
            "anyone but an author".to_string()
        } else {
            p.from
                .iter()
                .map(|f| code(f))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- policy {} (default branch): {} of {} · may approve: {from}",
            code(&p.name),
            counted.min(p.required),
            p.required
        );
    }
    if !approval.reviews.is_empty() {
        let _ = writeln!(
            out,
            "\n| reviewer | counts | why not |\n| --- | --- | --- |"
        );
        for r in &approval.reviews {
            let why = r
                .reason
                .map(|w| {
                    serde_json::to_value(w)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                text(&r.approver),
                if r.counts { "yes" } else { "no" },
                text(&why)
            );
        }
    }
    out.push('\n');
}

/// The first ten targets and a count.
fn first_few(targets: &[String]) -> String {
    let shown: Vec<String> = targets.iter().take(10).map(|t| code(t)).collect();
    match targets.len() {
        0..=10 => shown.join(", "),
        n => format!("{} and {} more", shown.join(", "), n - 10),
    }
}

fn short(sha: &str) -> String {
    sha.chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect()
}

/// `s` as plain text in Markdown: every character Markdown or HTML would
/// act on is escaped, and line breaks become spaces.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            // `@` would mention, `:` would autolink a URL or an emoji.
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '!' | '|' | '~'
            | ':' | '@' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` as inline code: HTML entities, since GitHub renders a code span in
/// a table cell through HTML, with `|` and line breaks neutralised.
fn code(s: &str) -> String {
    let mut inner = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => inner.push_str("&amp;"),
            '<' => inner.push_str("&lt;"),
            '>' => inner.push_str("&gt;"),
            '|' => inner.push_str("&#124;"),
            '`' => inner.push_str("&#96;"),
            '\n' | '\r' => inner.push(' '),
            c if c.is_control() => {}
            c => inner.push(c),
        }
    }
    format!("<code>{inner}</code>")
}

/// `s` in a fenced code block, indented by `indent`, whose fence is longer
/// than any run of backticks in it, so nothing inside can close it.
fn fenced(s: &str, indent: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let mut out = format!("{indent}{fence}sh\n");
    for line in s.lines() {
        let clean: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        let _ = writeln!(out, "{indent}{clean}");
    }
    let _ = writeln!(out, "{indent}{fence}");
    out
}

/// An id in a link: ids are `[a-z0-9._-]`, so nothing to escape; anything
/// else is percent-encoded.
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// git's mode of a covered file, as `git ls-tree` shows it.
pub fn mode(executable: bool) -> &'static str {
    if executable {
        "100755"
    } else {
        "100644"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_markdown_and_html() {
        assert_eq!(
            text("**x** <img src=x onerror=alert(1)> [a](http://e)\n# h"),
            "\\*\\*x\\*\\* &lt;img src=x onerror=alert\\(1\\)&gt; \\[a\\]\\(http\\://e\\) \\# h"
        );
        assert_eq!(code("a|b`<c>"), "<code>a&#124;b&#96;&lt;c&gt;</code>");
    }

    #[test]
    fn over_the_limit_the_plan_is_cut_at_a_change_with_links_to_the_rest() {
        use crate::model::Step;
        let step = Step {
            id: "restart".into(),
            run: format!("./restart.sh {}", "x".repeat(2_000)),
            check: None,
            verify: None,
            timeout: None,
            confirm: false,
            targets: None,
            per_target: false,
            rollback: None,
            rollback_timeout: None,
        };
        let changes: Vec<ChangeSet> = (0..100)
            .map(|i| ChangeSet {
                id: format!("c{i:03}"),
                title: "t".into(),
                description: None,
                kind: "k".into(),
                targets: vec!["web".into()],
                targets_from: None,
                rollout: None,
                depends_on: vec![],
                env: Default::default(),
                include: vec![],
                timeout: None,
                steps: vec![step.clone()],
            })
            .collect();
        let approval = ApprovalStatus {
            satisfied: false,
            policies: vec![],
            reviews: vec![],
        };
        let plan: Vec<PlanChange<'_>> = changes
            .iter()
            .map(|c| PlanChange::Valid {
                change: c,
                digest: "sha256:d",
                covered: &[],
                approval: &approval,
                policies: vec![],
            })
            .collect();
        let body = render(7, "abc", "https://cg.example/", &plan);
        assert!(body.chars().count() <= MAX_BODY, "{}", body.len());
        let shown = body.matches("\n### ").count();
        assert!((20..100).contains(&shown), "{shown} change sets shown");
        assert!(body.contains(&format!("{} more change set(s) do not fit", 100 - shown)));
        // Cut at a boundary: the last section shown is whole.
        let last = format!("<code>c{:03}</code>", shown - 1);
        assert!(body.contains(&last));
        assert!(body.contains(&format!("(https://cg.example/changes/c{:03})", shown)));
        assert!(body
            .trim_end()
            .ends_with("(https://cg.example/changes/c099)"));
    }

    #[test]
    fn a_fence_outlasts_the_backticks_inside() {
        let block = fenced("echo ```\n```\n<!-- changegate:plan -->", "");
        assert!(block.starts_with("````sh\n"), "{block}");
        assert!(block.trim_end().ends_with("````"), "{block}");
    }
}
