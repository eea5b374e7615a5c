//! The status page, change pages and the Atom feed: server-rendered HTML
//! that works without JavaScript. maud escapes every interpolated value.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::authenticate;
use super::AppState;
use crate::clock::format_ms;
use crate::engine::ChangeStatus;
use crate::gate::{Breaker, ChangeState, StepState};

/// Headers every page answer carries: no script may run, the pages are
/// never framed or sniffed, links leak no referrer, and what they show
/// (live state behind a token) is never cached.
pub async fn security_headers(mut response: Response) -> Response {
    use axum::http::header::{HeaderName, HeaderValue};
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// Read access to the pages: public when `server.public_pages`, else a
/// token in the `Authorization` header or the `changegate_token` cookie.
pub struct PageAccess;

impl FromRequestParts<AppState> for PageAccess {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.server.public_pages {
            return Ok(PageAccess);
        }
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let cookie = parts
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| {
                c.split(';').find_map(|kv| {
                    kv.trim()
                        .strip_prefix("changegate_token=")
                        .map(str::to_string)
                })
            });
        match header.or(cookie) {
            Some(t) if authenticate(&state.engine.config().tokens, &t).is_some() => Ok(PageAccess),
            _ => Err((StatusCode::UNAUTHORIZED, Html("<h1>401</h1><p>Send a reader token, or set <code>server.public_pages = true</code>.</p>")).into_response()),
        }
    }
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 24px;display:flex;gap:16px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:#5b6475;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-weight:600;color:#5b6475;font-size:12px}
.failed,.firing{background:#fdecec;color:#8a1111}
tr.failed td:first-child,tr.firing td:first-child{border-left:4px solid #c62828}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e8ebf0}
.b-failed,.b-open,.b-firing,.b-interrupted{background:#c62828;color:#fff}
.b-running{background:#1565c0;color:#fff}.b-completed,.b-succeeded,.b-closed,.b-resolved{background:#2e7d32;color:#fff}
.b-ready,.b-approved{background:#6a1b9a;color:#fff}.b-abandoned,.b-skipped{background:#757575;color:#fff}
.b-rolling-back{background:#ef6c00;color:#fff}.b-rolled-back{background:#00695c;color:#fff}.b-rollback-failed{background:#8e0000;color:#fff}
pre{background:#11161f;color:#e6e6e6;padding:8px;overflow:auto;max-height:260px;font-size:12px;margin:4px 0}
code{font-size:12px}td code{word-break:break-all}.muted{color:#7a8394}.empty{color:#7a8394;padding:6px 0}
.b-baking{background:#f9a825;color:#1d2430}.b-done{background:#2e7d32;color:#fff}.b-pending{background:#e8ebf0}
.cell{display:inline-block;min-width:40px;margin:1px;padding:1px 5px;font-size:11px;border-radius:3px;background:#e8ebf0;color:#1d2430}
.t-succeeded{background:#2e7d32;color:#fff}.t-running{background:#1565c0;color:#fff}.t-failed,.t-interrupted{background:#c62828;color:#fff;font-weight:700}
"#;

fn page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · changegate" }
                    link rel="alternate" type="application/atom+xml" title="changegate" href="/feed.atom";
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header { a href="/" { "changegate" } span class="muted" { (title) } a href="/feed.atom" style="margin-left:auto;font-weight:400" { "feed" } }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

fn state_word<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn badge(word: &str) -> Markup {
    html! { span class={ "badge b-" (word) } { (word) } }
}

fn approvals_text(c: &ChangeStatus) -> String {
    c.approvals
        .policies
        .iter()
        .max_by_key(|p| (p.required.saturating_sub(p.counted), p.required))
        .map_or("no policy".into(), |p| {
            format!("{} of {}", p.counted.min(p.required), p.required)
        })
}

fn failed_step(c: &ChangeStatus) -> Option<(&str, &crate::store::Attempt)> {
    c.steps
        .iter()
        .find(|s| matches!(s.state, StepState::Failed | StepState::Interrupted))
        .and_then(|s| {
            // A rollout's step has one attempt per target: the failed one.
            s.attempts
                .iter()
                .rev()
                .find(|a| {
                    matches!(
                        a.state,
                        crate::store::AttemptState::Failed
                            | crate::store::AttemptState::Interrupted
                    )
                })
                .or(s.attempts.last())
                .map(|a| (s.id.as_str(), &**a))
        })
}

/// The first ten of `items`, and how many more.
fn first_few(items: &[String]) -> String {
    match items.len() {
        0..=10 => items.join(", "),
        n => format!("{} and {} more", items[..10].join(", "), n - 10),
    }
}

/// A rollout's waves × targets, each target coloured by its state; in
/// each wave the failed targets come first, and they are listed above.
fn rollout_grid(r: &crate::engine::view::RolloutStatus) -> Markup {
    let bad = |s: StepState| matches!(s, StepState::Failed | StepState::Interrupted);
    let failed: Vec<_> = r.targets.iter().filter(|t| bad(t.state)).collect();
    html! {
        h2 { "Rollout — " (r.done) " of " (r.targets.len()) " targets done · parallel " (r.parallel) }
        p id="rollout-line" { (r.summary()) }
        @if let Some(h) = &r.halt { p class="failed" id="halt" { "halted by " strong { (h.alert) } ": " (h.detail) " (" (format_ms(h.at)) ")" } }
        @if !failed.is_empty() {
            p class="failed" id="failed-targets" { "failed: " @for t in &failed { strong { (t.target) } " (" (t.step) ", " (t.state.as_str()) @if let Some(a) = &t.attempt { ", " code { (a) } } ") " } }
        }
        table id="rollout" {
            tr { th { "wave" } th { "state" } th { "targets" } }
            @for w in &r.waves {
                @let cells = wave_cells(r, w.index);
                tr class={ @if w.state == crate::gate::WaveState::Failed { "failed" } } {
                    td { (w.index) " of " (r.waves.len()) br; span class="muted" { (w.targets.len()) " targets" } }
                    td { (badge(w.state.as_str())) @if let (crate::gate::WaveState::Baking, Some(u)) = (w.state, w.bake_until) { br; span class="muted" { "until " (format_ms(u)) } } }
                    td class="grid" { @for t in &cells { span class={ "cell t-" (t.state.as_str()) } title={ (t.target) ": " (t.state.as_str()) " at " (t.step) } { (t.target) } " " } }
                }
            }
        }
    }
}

/// The targets of wave `index`, the failed ones first.
fn wave_cells(
    r: &crate::engine::view::RolloutStatus,
    index: usize,
) -> Vec<&crate::engine::view::TargetStatus> {
    let mut cells: Vec<_> = r.targets.iter().filter(|t| t.wave == index).collect();
    cells.sort_by_key(|t| !matches!(t.state, StepState::Failed | StepState::Interrupted));
    cells
}

/// `GET /`: what failed first, then the breaker, what runs, what waits.
pub async fn index(_: PageAccess, State(state): State<AppState>) -> Response {
    let (changes, alerts, breaker) = match (
        state.engine.list().await,
        state.engine.alerts().await,
        state.engine.breaker().await,
    ) {
        (Ok(c), Ok(a), Ok((b, _))) => (c, a, b),
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("<h1>503</h1><p>The database is unavailable.</p>"),
            )
                .into_response()
        }
    };
    let of = |states: &[ChangeState]| {
        changes
            .iter()
            .filter(|c| states.contains(&c.state))
            .collect::<Vec<_>>()
    };
    let failed = of(&[ChangeState::Failed, ChangeState::RollbackFailed]);
    let unapproved = state.engine.view().unapproved_policies.clone();
    let firing: Vec<_> = alerts
        .iter()
        .filter(|(a, _)| a.state == crate::store::AlertState::Firing)
        .collect();
    let running = of(&[ChangeState::Running, ChangeState::RollingBack]);
    let waiting = of(&[ChangeState::Proposed, ChangeState::Approved]);
    let settled = of(&[
        ChangeState::Ready,
        ChangeState::Completed,
        ChangeState::Abandoned,
        ChangeState::RolledBack,
    ]);
    let body = html! {
        h2 { "Needs a person" }
        @if failed.is_empty() && firing.is_empty() { p class="empty" { "Nothing has failed. No alert is firing." } }
        @else {
            table id="failed" {
                tr { th { "change" } th { "step" } th { "exit" } th { "output" } th { "when" } }
                @for c in &failed {
                    @let f = failed_step(c);
                    tr class="failed" {
                        td { a href={ "/changes/" (c.id) } { (c.id) } br; span { (c.title) } }
                        td { (f.map_or("", |(s, _)| s)) }
                        td { (f.and_then(|(_, a)| a.exit_code).map_or("interrupted".into(), |e| e.to_string())) }
                        td { code { (f.and_then(|(_, a)| a.output_tail.as_deref()).and_then(|o| o.lines().rev().find(|l| !l.trim().is_empty())).unwrap_or("")) } }
                        td { (f.and_then(|(_, a)| a.ended_at).map(format_ms).unwrap_or_default()) }
                    }
                }
                @for (a, deliveries) in &firing {
                    tr class="firing" {
                        td { "alert " (a.id) }
                        td colspan="2" { (a.annotations["summary"].as_str().unwrap_or("")) }
                        td { @for d in deliveries.iter() { (d.sink) " " (d.event) ": " (d.state) br; } }
                        td { (format_ms(a.raised_at)) }
                    }
                }
            }
        }
        @if !unapproved.is_empty() {
            h2 { "Policy edits not in force" }
            table id="unapproved-policies" {
                tr { th { "policy file" } th { "on the default branch" } th { "approvals" } th { "in force instead" } }
                @for u in &unapproved {
                    tr class="failed" {
                        td { code { (u.path) } }
                        td { code { (u.on_main) } " was merged without approval" }
                        td { (u.approvals) }
                        td { @if u.previous_in_force { "its last approved text" } @else { "nothing: a new file governs nothing until approved" } }
                    }
                }
            }
        }
        h2 { "Breaker" }
        p id="breaker" {
            @match &breaker {
                Breaker::Closed => { (badge("closed")) " claims may proceed" }
                Breaker::Open { since, failures } => { (badge("open")) " opened " (format_ms(*since)) " after " (failures) " failures — every claim is refused until " code { "changegate breaker reset" } }
            }
        }
        h2 { "Running" }
        @if running.is_empty() { p class="empty" { "Nothing is running." } }
        @else {
            table { tr { th { "change" } th { "step in progress" } th { "lease until" } }
                @for c in &running {
                    @let step = c.steps.iter().find(|s| s.state == StepState::Running);
                    tr { td { a href={ "/changes/" (c.id) } { (c.id) } } td { (step.map_or("between steps", |s| s.id.as_str())) }
                         td { (step.and_then(|s| s.attempts.last()).map(|a| format_ms(a.lease_expires_at)).unwrap_or_default()) } }
                }
            }
        }
        h2 { "Waiting for approval" }
        @if waiting.is_empty() { p class="empty" { "Nothing waits for approval." } }
        @else {
            table { tr { th { "change" } th { "approvals" } th { "approved by" } th { "who still may" } }
                @for c in &waiting {
                    tr { td { a href={ "/changes/" (c.id) } { (c.id) } br; span { (c.title) } }
                         td class="approvals" { (approvals_text(c)) }
                         td { (c.approvals.reviews.iter().filter(|r| r.counts).map(|r| r.approver.as_str()).collect::<Vec<_>>().join(", ")) }
                         td { (c.approvals.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")) " eligible reviewers" } }
                }
            }
        }
        h2 { "Ready, completed, abandoned" }
        table { tr { th { "change" } th { "state" } th { "approvals" } th { "steps" } th { "blocked by" } }
            @for c in &settled {
                tr { td { a href={ "/changes/" (c.id) } { (c.id) } } td { (badge(c.state.as_str())) } td class="approvals" { (approvals_text(c)) }
                     td { (c.steps.iter().filter(|s| s.state == StepState::Succeeded).count()) "/" (c.steps.len()) }
                     td class="blocker" { @for b in &c.blockers { (b.reason.as_str()) ": " (b.detail) } } }
            }
        }
    };
    page("status", body).into_response()
}

/// `GET /changes/{id}`: steps, attempts, approvals, blockers, digest, audit trail.
pub async fn change(
    _: PageAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let status = match state.engine.status(&id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page(
                    "not found",
                    html! { p { "No change " code { (id) } " on the default branch." } },
                ),
            )
                .into_response()
        }
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, Html("<h1>503</h1>")).into_response(),
    };
    let audit = state.engine.audit(Some(&id)).await.unwrap_or_default();
    let c = &status;
    let body = html! {
        h1 style="font-size:20px;margin:8px 0" { (c.title) " " (badge(c.state.as_str())) }
        p class="muted" { code { (c.id) } " · " (c.kind) " · targets " (first_few(&c.targets)) @if !c.depends_on.is_empty() { " · depends on " @for d in &c.depends_on { a href={ "/changes/" (d) } { (d) } " " } } }
        p class="muted" id="revision" { "revision " code { (c.digest) } " at " code { (c.commit) } }
        @if !c.warnings.is_empty() {
            p class="failed" id="warnings" {
                (c.warnings.join(", ")) ": "
                @match &c.main_digest {
                    Some(d) => { "the default branch now holds " code { (d) } }
                    None => { "the change is no longer on the default branch" }
                }
            }
        }
        @if !c.blockers.is_empty() {
            h2 { "Blockers" }
            table id="blockers" { @for b in &c.blockers { tr class="failed" { td { (b.reason.as_str()) } td { (b.detail) } } } }
        }
        @if let Some(r) = &c.rollout { (rollout_grid(r)) }
        h2 { "Approvals — " span class="approvals" { (approvals_text(c)) } }
        table { tr { th { "approver" } th { "source" } th { "counts" } th { "why not" } }
            @for r in &c.approvals.reviews { tr { td { (r.approver) } td { (state_word(&r.source)) } td { @if r.counts { "yes" } @else { "no" } } td { (r.reason.as_ref().map(state_word).unwrap_or_default()) } } }
        }
        h2 { "Steps" }
        @for s in &c.steps {
            div class={ @if matches!(s.state, StepState::Failed | StepState::Interrupted) { "failed" } } style="background:#fff;border:1px solid #dde1e8;padding:8px 10px;margin:6px 0" {
                strong { (s.id) } " " (badge(s.state.as_str()))
                @if s.needs_confirmation { span class="muted" { " · needs a go-ahead" @if let Some(g) = &s.confirmation { " (given by " (g.actor) ": " (g.reason) ")" } } }
                @if let Some(r) = s.rollback { span class="rollback" { " · rollback " (badge(r.as_str())) } }
                // A rollout's targets are in the grid; here, what went wrong.
                @let through = s.attempts.iter().filter(|a| a.target.is_some() && a.state == crate::store::AttemptState::Succeeded).count();
                @if through > 0 { div class="muted" { (through) " target(s) through this step: see the rollout grid" } }
                @for a in s.attempts.iter().filter(|a| a.target.is_none() || a.state != crate::store::AttemptState::Succeeded) {
                    div class={ "muted attempt-" (a.phase) } { @if let Some(t) = &a.target { "on " strong { (t) } " · " } @if a.phase == crate::store::Phase::Rollback { "↩ rollback " } "attempt " (a.attempt_no) " by " (a.executor) " · " (a.state) " · started " (format_ms(a.started_at))
                        @if let Some(e) = a.exit_code { " · exit " (e) } @if let Some(t) = a.ended_at { " · ended " (format_ms(t)) } }
                    @if let Some(out) = &a.output_tail { pre { (out) } }
                }
            }
        }
        h2 { "Digest" }
        p { code { (c.digest) } " at " code { (c.commit.get(..12).unwrap_or(&c.commit)) } }
        table { tr { th { "covered path" } th { "mode" } th { "blob" } } @for p in &c.covered_paths { tr { td { code { (p.path) } } td { (crate::github::plan::mode(p.executable)) } td { code { (p.blob) } } } } }
        h2 { "Audit trail" }
        table id="audit" { tr { th { "#" } th { "when" } th { "who" } th { "what" } th { "details" } }
            @for e in &audit { tr { td { (e.seq) } td { (format_ms(e.at)) } td { (e.actor) } td { (e.kind) } td { code { (e.data.to_string()) } } } }
        }
    };
    page(&c.id, body).into_response()
}

/// The audit event kinds the feed carries.
const FEED_KINDS: &[&str] = &[
    "step.failed",
    "step.interrupted",
    "change.completed",
    "change.abandoned",
    "change.rollback-requested",
    "rollback.failed",
    "rollback.interrupted",
    "change.rolled-back",
    "rollout.wave-done",
    "rollout.halted",
    "rollout.done",
    "breaker.opened",
    "breaker.reset",
    "alert.raised",
    "alert.resolved",
];

/// `GET /feed.atom`: failures, completions, breaker and alert events.
pub async fn feed(_: PageAccess, State(state): State<AppState>) -> Response {
    use atom_syndication::{Entry, Feed, FixedDateTime, Link, Text};
    let Ok(events) = state.engine.audit(None).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let base = state
        .config
        .server
        .public_url
        .trim_end_matches('/')
        .to_string();
    let when = |ms: i64| FixedDateTime::parse_from_rfc3339(&format_ms(ms)).unwrap_or_default();
    let link = |href: String, rel: &str| {
        let mut l = Link::default();
        l.set_href(href);
        l.set_rel(rel);
        l
    };
    let entries: Vec<Entry> = events
        .iter()
        .rev()
        .filter(|e| FEED_KINDS.contains(&e.kind.as_str()))
        .take(200)
        .map(|e| {
            let href = match &e.change {
                Some(c) => format!("{base}/changes/{c}"),
                None => format!("{base}/"),
            };
            let mut entry = Entry::default();
            entry.set_id(format!("urn:changegate:audit:{}", e.seq));
            let change = e.change.as_deref().unwrap_or("");
            entry.set_title(Text::plain(match e.kind.as_str() {
                "change.rollback-requested" => format!("{change}: rolling back"),
                "change.rolled-back" => format!("{change}: rolled back"),
                "rollback.failed" | "rollback.interrupted" => {
                    format!("{change}: rollback failed")
                }
                "rollout.wave-done" => format!(
                    "{change}: wave {} of {} done ({} of {} targets)",
                    e.data["wave"], e.data["waves"], e.data["done"], e.data["of"]
                ),
                "rollout.halted" => format!(
                    "{change}: rollout halted by {}",
                    e.data["alert"].as_str().unwrap_or("an alert")
                ),
                "rollout.done" => format!("{change}: every target done ({})", e.data["targets"]),
                kind => format!("{kind} {change}"),
            }));
            entry.set_updated(when(e.at));
            entry.set_links(vec![link(href, "alternate")]);
            entry.set_summary(Some(Text::plain(format!(
                "{} by {}: {}",
                e.kind, e.actor, e.data
            ))));
            entry
        })
        .collect();
    let mut feed = Feed::default();
    feed.set_id(format!("{base}/feed.atom"));
    feed.set_title(Text::plain(
        "changegate: failures, completions, breaker and alerts",
    ));
    feed.set_updated(events.last().map_or(when(0), |e| when(e.at)));
    feed.set_links(vec![link(format!("{base}/feed.atom"), "self")]);
    feed.set_entries(entries);
    (
        [("content-type", "application/atom+xml; charset=utf-8")],
        feed.to_string(),
    )
        .into_response()
}
