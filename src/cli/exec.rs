//! `changegate exec ID [--continue]`: the executor CI runs.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::exit;
use crate::client::{Client, ClientError};
use crate::engine::{redact, Outcome, Report};
use crate::executor::{run_step, StepEnd, StopSignal};
use crate::git::ChangeRepo;
use crate::model::{covered_paths, Digest};

/// Values of this process's secret-looking variables, to redact from output.
fn env_secrets() -> Vec<String> {
    std::env::vars()
        .filter(|(k, _)| {
            ["TOKEN", "SECRET", "PASSWORD", "KEY"]
                .iter()
                .any(|s| k.to_ascii_uppercase().contains(s))
        })
        .map(|(_, v)| v)
        .collect()
}

/// The digest of `id` in the checkout at `dir`, refusing dirty covered paths.
fn checkout_digest(dir: &Path, id: &str) -> Result<(Digest, std::path::PathBuf), (u8, String)> {
    let repo = ChangeRepo::open(dir).map_err(|e| (exit::USAGE, e.to_string()))?;
    let snapshot = repo.at("HEAD").map_err(|e| (exit::USAGE, e.to_string()))?;
    let model = snapshot
        .load_model()
        .map_err(|e| (exit::USAGE, e.to_string()))?;
    let change = model.changes.get(id).ok_or_else(|| {
        (
            exit::USAGE,
            format!("no valid change `{id}` at HEAD of {}", dir.display()),
        )
    })?;
    let covered = covered_paths(change, &snapshot).map_err(|e| (exit::USAGE, e))?;
    let workdir = repo
        .git()
        .workdir()
        .ok_or_else(|| {
            (
                exit::USAGE,
                "the repository is bare; exec needs a checkout".to_string(),
            )
        })?
        .to_path_buf();
    for c in &covered {
        let status = repo
            .git()
            .status_file(Path::new(&c.path))
            .unwrap_or(git2::Status::CURRENT);
        if !(status.is_empty() || status == git2::Status::IGNORED) {
            return Err((exit::REFUSED, format!("refused: dirty: covered path {} differs from HEAD in the checkout; commit or reset it", c.path)));
        }
    }
    Ok((Digest::of(&covered), workdir))
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

pub(super) fn exec(id: &str, keep_going: bool, dir: &Path, label: Option<&str>) -> u8 {
    match Client::from_env() {
        Ok(client) => exec_with(&client, id, keep_going, dir, label),
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// `exec` against `client`: claims, runs and reports steps; returns the exit code.
pub(super) fn exec_with(
    client: &Client,
    id: &str,
    keep_going: bool,
    dir: &Path,
    label: Option<&str>,
) -> u8 {
    let (digest, workdir) = match checkout_digest(dir, id) {
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
    println!("changegate exec {id} at {digest}");
    let mut ran = 0;
    loop {
        let grant = match client.claim(id, digest.as_str(), label) {
            Ok(g) => g,
            Err(ClientError::Refused {
                status: 409,
                reason,
                detail,
            }) => {
                if keep_going
                    && ran > 0
                    && (reason == "needs-confirmation" || reason == "completed")
                {
                    println!("stopped after {ran} step(s): {reason}: {detail}");
                    return exit::OK;
                }
                println!("refused: {reason}: {detail}");
                return exit::REFUSED;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
        println!(
            "▶ step {}/{} {} (attempt {})",
            grant.step_number, grant.steps_total, grant.step, grant.attempt
        );
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
        let run = run_step(&grant, &workdir, &stop, true);
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
            output_tail: redact(crate::engine::tail(&output), &env_secrets()),
        };
        let answer = report_with_retries(client, &grant.attempt, &report);
        let secs = run.duration.as_secs_f64();
        match &run.end {
            StepEnd::Succeeded => println!("✔ {} succeeded in {secs:.1}s", grant.step),
            StepEnd::Failed { role, code } => println!(
                "✘ {} failed: `{role}` exited {code} after {secs:.1}s",
                grant.step
            ),
            StepEnd::TimedOut { role } => println!(
                "✘ {} failed: `{role}` timed out after {}s",
                grant.step, grant.timeout_secs
            ),
            StepEnd::Stopped { role, why } => {
                println!("✘ {} failed: `{role}` was killed: {why}", grant.step)
            }
        }
        match answer {
            Ok(v) => {
                if let Some(state) = v["change_state"].as_str() {
                    println!("  change {id} is {state}");
                }
            }
            Err(e) => {
                eprintln!("error: the report was not recorded: {e}");
                return exit::INVALID;
            }
        }
        if outcome == Outcome::Failed {
            return exit::INVALID;
        }
        ran += 1;
        if !keep_going || grant.step_number == grant.steps_total {
            return exit::OK;
        }
    }
}
