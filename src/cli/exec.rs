//! `changegate exec ID [--continue]`: the executor CI runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::exit;
use crate::client::{Client, ClientError};
use crate::executor::{run_step, StepEnd, StopSignal};
use crate::gate::RefusalReason;
use crate::git::ChangeRepo;
use crate::model::{has_parent_component, CoveredPath, Digest, TreeView};
use crate::redact::{is_secret_name, redact};
use crate::store::Phase;
use crate::wire::{Outcome, Report};

/// Values of this process's secret-looking variables, to redact from output.
fn env_secrets() -> Vec<String> {
    std::env::vars()
        .filter(|(k, _)| is_secret_name(k))
        .map(|(_, v)| v)
        .collect()
}

/// What `exec` runs: the covered blobs of `id` at the checkout's HEAD.
struct Checkout {
    /// The repository (for materialising each step's private copy).
    repo_dir: PathBuf,
    /// HEAD's commit.
    commit: String,
    /// The covered paths at HEAD.
    covered: Vec<CoveredPath>,
    /// Their digest.
    digest: Digest,
    /// How the change's per-target steps sweep its targets, if it has any.
    sweep: Option<crate::model::rollout::Rollout>,
}

impl Checkout {
    /// A fresh private directory (0700) holding exactly the covered blobs,
    /// removed when dropped: on success, on failure and on SIGTERM alike.
    fn materialize(&self) -> Result<tempfile::TempDir, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("changegate-step-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| format!("cannot create a private directory: {e}"))?;
        // Reading blobs (inflating, resolving deltas) and writing them is
        // the cost of hermetic execution: share it between two threads,
        // each with its own handle on the repository.
        let halves: [Vec<CoveredPath>; 2] = [0, 1].map(|h| {
            self.covered
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == h)
                .map(|(_, c)| c.clone())
                .collect()
        });
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = halves
                .iter()
                .map(|half| {
                    scope.spawn(|| {
                        ChangeRepo::open(&self.repo_dir)
                            .and_then(|repo| {
                                repo.at(&self.commit)
                                    .and_then(|s| s.materialize(half, dir.path()))
                            })
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a writer thread panicked".into()))
                })
                .collect()
        });
        for r in results {
            r.map_err(|e| format!("cannot write the covered files: {e}"))?;
        }
        Ok(dir)
    }

    /// Hints for a failed step whose output names repository paths that
    /// exist at HEAD but are not covered, so the step could not see them.
    fn uncovered_hints(&self, output: &str, world: &Path) -> Vec<String> {
        let Ok(repo) = ChangeRepo::open(&self.repo_dir) else {
            return Vec::new();
        };
        let Ok(snapshot) = repo.at(&self.commit) else {
            return Vec::new();
        };
        let covered: BTreeSet<&str> = self.covered.iter().map(|c| c.path.as_str()).collect();
        let prefix = format!("{}/", world.display());
        let mut seen = BTreeSet::new();
        output
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
            .map(|t| t.strip_prefix(prefix.as_str()).unwrap_or(t))
            .map(|t| t.trim_start_matches("./").trim_end_matches(['.', '/']))
            .filter(|t| t.contains('/') && !t.starts_with('/') && !has_parent_component(t))
            .filter(|t| !covered.contains(t) && seen.insert(t.to_string()))
            .filter(|t| snapshot.entry(t).is_some_and(|e| e.file_blob().is_some()))
            .map(|t| {
                let folder = t.rsplit_once('/').map_or(t, |(d, _)| d);
                format!("hint: `{t}` is in the repository but not covered by the digest, so the step cannot see it; add `include: [{folder}/]` (or `{t}`) to the change and have it approved")
            })
            .collect()
    }
}

/// The covered paths of `id` in the checkout at `dir`, refusing dirty ones.
fn checkout(dir: &Path, id: &str) -> Result<Checkout, (u8, String)> {
    let repo = ChangeRepo::open(dir).map_err(|e| (exit::USAGE, e.to_string()))?;
    let snapshot = repo.at("HEAD").map_err(|e| (exit::USAGE, e.to_string()))?;
    let at = snapshot
        .change(id)
        .map_err(|e| (exit::USAGE, e.to_string()))?;
    let covered = at.covered;
    let repo_dir = repo
        .git()
        .workdir()
        .ok_or_else(|| {
            (
                exit::USAGE,
                "the repository is bare; exec needs a checkout".to_string(),
            )
        })?
        .to_path_buf();
    // One status pass over exactly the covered paths (literal pathspecs).
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(false)
        .include_ignored(false)
        .disable_pathspec_match(true);
    for c in &covered {
        options.pathspec(&c.path);
    }
    let statuses = repo
        .git()
        .statuses(Some(&mut options))
        .map_err(|e| (exit::USAGE, e.to_string()))?;
    if let Some(dirty) = statuses
        .iter()
        .find(|s| !(s.status().is_empty() || s.status() == git2::Status::IGNORED))
    {
        let path = dirty.path().unwrap_or("?").to_string();
        return Err((exit::REFUSED, format!("refused: dirty: covered path {path} differs from HEAD in the checkout; commit or reset it")));
    }
    Ok(Checkout {
        repo_dir,
        commit: snapshot.commit_id().to_string(),
        digest: at.digest,
        sweep: at.change.sweep(),
        covered,
    })
}

/// Which covered paths differ between the checkout and what was approved
/// (the server's `covered_paths` for the change on main).
fn differing_paths(ours: &[CoveredPath], approved: &serde_json::Value) -> Vec<String> {
    let theirs: BTreeMap<&str, (&str, bool)> = approved["covered_paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let executable = c["executable"].as_bool().unwrap_or(false);
            Some((c["path"].as_str()?, (c["blob"].as_str()?, executable)))
        })
        .collect();
    let ours: BTreeMap<&str, (&str, bool)> = ours
        .iter()
        .map(|c| (c.path.as_str(), (c.blob.as_str(), c.executable)))
        .collect();
    let mode = |executable: bool| {
        if executable {
            "executable"
        } else {
            "not executable"
        }
    };
    let mut out = Vec::new();
    for (path, (blob, executable)) in &ours {
        match theirs.get(path) {
            None => out.push(format!("{path}: not covered by the approved digest")),
            Some((b, _)) if b != blob => out.push(format!(
                "{path}: blob {} here, {} approved",
                &blob[..blob.len().min(12)],
                &b[..b.len().min(12)]
            )),
            Some((_, x)) if x != executable => out.push(format!(
                "{path}: {} here, {} approved",
                mode(*executable),
                mode(*x)
            )),
            Some(_) => {}
        }
    }
    for path in theirs.keys().filter(|p| !ours.contains_key(*p)) {
        out.push(format!("{path}: approved, but not covered here"));
    }
    out
}

/// How long `exec` keeps trying to report: longer than a server restart or
/// a database failover, so a step's outcome is not lost to one. (If the
/// lease expires meanwhile, the step is `interrupted` and the report is
/// recorded as late.)
const REPORT_PATIENCE: Duration = Duration::from_secs(120);

fn report_with_retries(
    client: &Client,
    attempt: &str,
    report: &Report,
) -> Result<serde_json::Value, ClientError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match client.report(attempt, report) {
            Ok(v) => return Ok(v),
            // Reports are idempotent, so a retry after a lost answer is
            // safe: unreachable, or 503 while the database is down.
            Err(e) if e.is_transient() && started.elapsed() < REPORT_PATIENCE => {
                eprintln!("  report failed ({e}); retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the executor's token from the steps it runs. The process is made
/// non-dumpable, which closes `/proc/<pid>/environ`, `/proc/<pid>/mem` and
/// ptrace to other processes of the same (non-root) user, and the token's
/// bytes in the original environment block are overwritten, so even a
/// reader who may look (root) finds no token there. Root can still read the
/// copy the client holds in memory: run steps as another user than root
/// where that matters (README, "Security model").
fn keep_token_from_steps() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    scrub_environment_block("CHANGEGATE_TOKEN");
    std::env::remove_var("CHANGEGATE_TOKEN");
}

/// Overwrites the value of `name` where the kernel shows it: the strings
/// `environ` points into at start (what `/proc/<pid>/environ` reads).
fn scrub_environment_block(name: &str) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: `environ` is the NUL-terminated array of NUL-terminated
    // strings libc keeps; each value is overwritten in place within its own
    // length. Nothing else changes the environment at this point of `exec`.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if text.starts_with(prefix.as_bytes()) {
                let value = (*entry).add(prefix.len());
                std::ptr::write_bytes(value, b'*', text.len() - prefix.len());
            }
            entry = entry.add(1);
        }
    }
}

/// How `exec` runs: `--continue`, `--parallel`, `--wait` and `--label`.
#[derive(Debug, Clone, Default)]
pub(super) struct ExecOptions {
    /// Claim the next step after each success.
    pub keep_going: bool,
    /// At most this many targets of a rollout at once (the rollout's
    /// `parallel` is the ceiling).
    pub parallel: Option<u32>,
    /// On `baking`, sleep until the bake ends and go on.
    pub wait: bool,
    /// A label for this executor in the record.
    pub label: Option<String>,
}

pub(super) fn exec(id: &str, dir: &Path, options: &ExecOptions) -> u8 {
    let client = Client::from_env();
    keep_token_from_steps();
    // Objects are not re-hashed on every read (`git::init_object_reads`,
    // from `main`); every blob written for a step is checked against its
    // id instead (`Snapshot::materialize`).
    match client {
        Ok(client) => exec_with(&client, id, dir, options),
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// What one claim came to.
enum Turn {
    /// A step (or target) ran and its outcome was recorded.
    Ran(Outcome),
    /// Refused by rule `rule` (the server's word and detail).
    Refused {
        rule: Option<RefusalReason>,
        reason: String,
        detail: String,
    },
    /// Stop with this exit code (the cause is printed).
    Exit(u8),
}

/// `exec` against `client`: claims, runs and reports steps; returns the exit code.
pub(super) fn exec_with(client: &Client, id: &str, dir: &Path, options: &ExecOptions) -> u8 {
    let checkout = match checkout(dir, id) {
        Ok(v) => v,
        Err((code, message)) => {
            eprintln!("{message}");
            return code;
        }
    };
    let stop = StopSignal::default();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.flag()) {
            eprintln!("error: cannot handle signal {sig}: {e}");
            return exit::USAGE;
        }
    }
    println!("changegate exec {id} at {}", checkout.digest);
    let run = Run {
        client,
        checkout: &checkout,
        id,
        options,
        stop: &stop,
    };
    match (&checkout.sweep, options.keep_going) {
        (Some(sweep), true) => {
            let places = options
                .parallel
                .unwrap_or(sweep.parallel)
                .clamp(1, sweep.parallel.max(1));
            run.sweep(places as usize)
        }
        _ => run.in_turn(),
    }
}

/// One `exec` run: what every turn needs.
struct Run<'r> {
    client: &'r Client,
    checkout: &'r Checkout,
    id: &'r str,
    options: &'r ExecOptions,
    stop: &'r StopSignal,
}

/// How the workers of a sweep stand, shared between them.
#[derive(Default)]
struct Sweep {
    /// Workers asking for a unit now.
    claiming: usize,
    /// Workers running a granted unit now.
    running: usize,
    /// Units run so far.
    ran: usize,
    /// The exit code, once one worker decided the run is over.
    code: Option<u8>,
    /// A bake was announced (printed once, not by every worker).
    announced: Option<i64>,
}

impl Run<'_> {
    /// Without a rollout (or without `--continue`): one claim after another.
    fn in_turn(&self) -> u8 {
        let mut ran = 0;
        loop {
            match self.turn(self.stop, "", &|| {}) {
                Turn::Ran(Outcome::Failed) => return exit::INVALID,
                Turn::Ran(Outcome::Succeeded) => {
                    ran += 1;
                    if !self.options.keep_going {
                        return exit::OK;
                    }
                }
                Turn::Exit(code) => return code,
                Turn::Refused {
                    rule,
                    reason,
                    detail,
                } => return self.refused(rule, &reason, &detail, ran),
            }
        }
    }

    /// A rollout with `--continue`: `places` workers claim (step, target)
    /// units side by side; the server keeps them within `parallel` and the
    /// waves. The first failure ends the run; targets in flight finish.
    fn sweep(&self, places: usize) -> u8 {
        let shared = std::sync::Mutex::new(Sweep::default());
        let wake = std::sync::Condvar::new();
        std::thread::scope(|scope| {
            for _ in 0..places {
                scope.spawn(|| self.worker(&shared, &wake));
            }
        });
        let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        shared.code.unwrap_or(exit::OK)
    }

    /// One worker of a sweep.
    fn worker(&self, shared: &std::sync::Mutex<Sweep>, wake: &std::sync::Condvar) {
        let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
        let stop = self.stop.child();
        loop {
            if lock().code.is_some() || self.stop.is_requested() {
                return;
            }
            lock().claiming += 1;
            let granted = std::cell::Cell::new(false);
            let turn = self.turn(&stop, "  ", &|| {
                granted.set(true);
                let mut s = lock();
                s.claiming -= 1;
                s.running += 1;
            });
            let mut s = lock();
            if granted.get() {
                s.running -= 1;
            } else {
                s.claiming -= 1;
            }
            wake.notify_all();
            match turn {
                Turn::Ran(Outcome::Succeeded) => s.ran += 1,
                Turn::Ran(Outcome::Failed) => {
                    s.code = Some(exit::INVALID);
                    return;
                }
                Turn::Exit(code) => {
                    s.code.get_or_insert(code);
                    return;
                }
                Turn::Refused {
                    rule,
                    reason,
                    detail,
                } => {
                    match rule {
                        // Another worker of ours holds the places or the
                        // wave's last targets (or is about to): wait for
                        // one to finish. A bake waits for running ones only.
                        Some(RefusalReason::NotNext) if s.claiming + s.running > 0 => {
                            let _ = wake.wait_timeout(s, Duration::from_millis(500));
                        }
                        Some(RefusalReason::Baking) if s.running > 0 => {
                            let _ = wake.wait_timeout(s, Duration::from_millis(500));
                        }
                        // Another executor holds the places, or the monitor
                        // did not answer: with --wait, ask again shortly.
                        Some(RefusalReason::NotNext | RefusalReason::MonitorUnreachable)
                            if self.options.wait =>
                        {
                            drop(s);
                            self.sleep_until(Some(crate::clock::now_ms() + 1_000));
                        }
                        Some(RefusalReason::Baking) if self.options.wait => {
                            let until = self.bake_until();
                            if s.announced != until {
                                s.announced = until;
                                println!("… {detail}; waiting (--wait)");
                            }
                            drop(s);
                            self.sleep_until(until);
                        }
                        _ => {
                            if s.code.is_none() {
                                let code = self.refused(rule, &reason, &detail, s.ran);
                                s.code = Some(code);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// When the baking wave's bake ends, from the change's status.
    fn bake_until(&self) -> Option<i64> {
        let change = self.client.change(self.id).ok()?;
        change["rollout"]["waves"]
            .as_array()?
            .iter()
            .find(|w| w["state"] == "baking")
            .and_then(|w| w["bake_until"].as_i64())
    }

    /// Sleeps until `until` (unix ms; a few seconds when unknown), waking
    /// early on a termination signal.
    fn sleep_until(&self, until: Option<i64>) {
        let now = crate::clock::now_ms();
        let wait = until.map_or(5_000, |u| (u - now).clamp(0, 3_600_000) + 200);
        let end = std::time::Instant::now() + Duration::from_millis(wait as u64);
        while std::time::Instant::now() < end && !self.stop.is_requested() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What a refusal means for the exit code, printed for a person.
    fn refused(&self, rule: Option<RefusalReason>, reason: &str, detail: &str, ran: usize) -> u8 {
        if self.options.keep_going
            && ran > 0
            && matches!(
                rule,
                Some(
                    RefusalReason::NeedsConfirmation
                        | RefusalReason::Completed
                        | RefusalReason::RolledBack
                )
            )
        {
            println!("stopped after {ran} step(s): {reason}: {detail}");
            return exit::OK;
        }
        println!("refused: {reason}: {detail}");
        if rule == Some(RefusalReason::DigestMismatch) {
            if let Ok(approved) = self.client.change(self.id) {
                for line in differing_paths(&self.checkout.covered, &approved) {
                    println!("  {line}");
                }
            }
        }
        exit::REFUSED
    }

    /// Claims once, and runs and reports what was granted (calling
    /// `granted` first). Lines are indented by `indent` when several
    /// targets run side by side.
    fn turn(&self, stop: &StopSignal, indent: &str, granted: &dyn Fn()) -> Turn {
        let (client, checkout, id) = (self.client, self.checkout, self.id);
        let digest = &checkout.digest;
        // The covered files are written while the claim is decided, which
        // hides the cheaper of the two; the directory is removed when it
        // goes out of scope, whatever the answer.
        let (world, claimed) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| checkout.materialize());
            let claimed = client.claim(id, digest.as_str(), self.options.label.as_deref());
            let world = writer
                .join()
                .unwrap_or_else(|_| Err("a writer thread panicked".into()));
            (world, claimed)
        });
        let grant = match claimed {
            Ok(g) => g,
            Err(ClientError::Refused {
                status: 409,
                reason,
                detail,
            }) => {
                // The server's word, read back as the gate's rule.
                let rule: Option<RefusalReason> =
                    serde_json::from_value(serde_json::Value::String(reason.clone())).ok();
                return Turn::Refused {
                    rule,
                    reason,
                    detail,
                };
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Turn::Exit(exit::USAGE);
            }
        };
        granted();
        let undo = grant.phase == Phase::Rollback;
        let what = match (&grant.rollout, undo) {
            (Some(r), _) => format!("{} on {}", grant.step, r.target),
            (None, true) => format!("rollback of {}", grant.step),
            (None, false) => grant.step.clone(),
        };
        match (&grant.rollout, undo) {
            (Some(r), _) => println!(
                "{indent}▶ wave {}/{} · step {}/{} {what} (attempt {}) · {} of {} targets done",
                r.wave,
                r.waves,
                grant.step_number,
                grant.steps_total,
                grant.attempt,
                r.done,
                r.targets
            ),
            (None, true) => println!(
                "↩ rollback {}/{} of step {} (attempt {})",
                grant.step_number, grant.steps_total, grant.step, grant.attempt
            ),
            (None, false) => println!(
                "▶ step {}/{} {} (attempt {})",
                grant.step_number, grant.steps_total, grant.step, grant.attempt
            ),
        }
        let world = match world {
            Ok(w) => w,
            Err(e) => {
                // Claimed, but nothing can run: the attempt fails, saying
                // so, rather than holding the change until its lease ends.
                // 126, as a shell says of a command it cannot execute.
                let report = Report {
                    outcome: Outcome::Failed,
                    exit_code: Some(126),
                    duration_ms: 0,
                    output_tail: format!("changegate: {e}; the step did not run\n"),
                };
                eprintln!("error: {e}; the step did not run");
                if let Err(e) = report_with_retries(client, &grant.attempt, &report) {
                    eprintln!("error: the report was not recorded: {e}");
                }
                return Turn::Exit(exit::INVALID);
            }
        };
        // The heartbeat thread renews the lease every third of it, and ends
        // as soon as the step does (the sender is dropped).
        let (done, finished) = mpsc::channel::<()>();
        let heartbeat = {
            let (client, attempt, stop) = (client.clone(), grant.attempt.clone(), stop.clone());
            let every = Duration::from_secs((grant.lease_secs / 3).max(1));
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(every) {
                    if let Err(ClientError::Refused { reason, detail, .. }) =
                        client.heartbeat(&attempt)
                    {
                        stop.stop(&format!("the lease was lost ({reason}: {detail})"));
                        return;
                    }
                }
            })
        };
        let run = run_step(&grant, world.path(), stop, true);
        drop(done);
        let _ = heartbeat.join();
        let outcome = if run.end == StepEnd::Succeeded {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        let mut output = run.output.clone();
        if let StepEnd::TimedOut { role } = &run.end {
            output.push_str(&format!(
                "changegate: `{role}` timed out after {}s; its process group was killed\n",
                grant.timeout_secs
            ));
        }
        if let StepEnd::Stopped { role, why } = &run.end {
            output.push_str(&format!("changegate: `{role}` was killed: {why}\n"));
        }
        let report = Report {
            outcome,
            exit_code: Some(run.end.exit_code()),
            duration_ms: run.duration.as_millis() as i64,
            output_tail: redact(crate::wire::tail(&output), &env_secrets()),
        };
        let world_path = world.path().to_path_buf();
        // Unlinking ten megabytes costs about what the report's round trip
        // does: the directory goes while the report is sent, and is gone
        // before anything else happens.
        let answer = std::thread::scope(|scope| {
            let removal = scope.spawn(move || drop(world));
            let answer = report_with_retries(client, &grant.attempt, &report);
            let _ = removal.join();
            answer
        });
        let secs = run.duration.as_secs_f64();
        match &run.end {
            StepEnd::Succeeded => println!("{indent}✔ {what} succeeded in {secs:.1}s"),
            StepEnd::Failed { role, code } => {
                println!("{indent}✘ {what} failed: `{role}` exited {code} after {secs:.1}s")
            }
            StepEnd::TimedOut { role } => println!(
                "{indent}✘ {what} failed: `{role}` timed out after {}s",
                grant.timeout_secs
            ),
            StepEnd::Stopped { role, why } => {
                println!("{indent}✘ {what} failed: `{role}` was killed: {why}")
            }
        }
        if run.end != StepEnd::Succeeded {
            for hint in checkout.uncovered_hints(&run.output, &world_path) {
                println!("{indent}  {hint}");
            }
        }
        match answer {
            Ok(v) => {
                if let Some(state) = v["change_state"].as_str() {
                    println!("{indent}  change {id} is {state}");
                }
            }
            Err(e) => {
                eprintln!("error: the report was not recorded: {e}");
                return Turn::Exit(exit::INVALID);
            }
        }
        if outcome == Outcome::Succeeded
            && grant.step_number == grant.steps_total
            && grant.rollout.is_none()
            && self.options.keep_going
        {
            // The last step: nothing is left to claim.
            return Turn::Exit(exit::OK);
        }
        Turn::Ran(outcome)
    }
}
