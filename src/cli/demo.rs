//! `changegate demo`: the 2017 incident, replayed end to end against this
//! repository's own example changes, on a temp SQLite and a simulated fleet.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use git2::{ObjectType, Repository, Signature, TreeWalkMode, TreeWalkResult};

use super::exec::{exec_with, ExecOptions};
use super::exit;
use crate::client::Client;
use crate::config::{Config, Role, SinkConfig, SinkKind, TokenConfig};
use crate::git::ChangeRepo;
use crate::server::auth::{new_token, token_hash};

const UPGRADE: &str = "2017-12-12-state-machine-pg10";
const DECOMMISSION: &str = "2017-12-14-decommission-pg96";
const SWEEP: &str = "2017-12-14-restart-pgbouncer";
/// The sweep bakes 10 minutes between waves; the demo's copy, 5 seconds.
const DEMO_BAKE: (&str, &str) = ("bake: 10m", "bake: 5s");
/// The cluster whose pgbouncer does not come back: in wave 2 of 3.
const UNLUCKY: &str = "pg-cluster-07";

struct Timeline {
    start: Instant,
    events: Vec<(f64, String)>,
}

impl Timeline {
    fn say(&mut self, what: impl Into<String>) {
        let what = what.into();
        let t = self.start.elapsed().as_secs_f64();
        println!("\n[{t:>5.1}s] {what}");
        let _ = std::io::stdout().flush();
        self.events.push((t, what));
    }
}

/// Copies `changes/` and `policies/` from HEAD of `from` into a new
/// repository at `to`, committed by Carol, the change's author.
fn make_checkout(from: &Path, to: &Path) -> Result<(), String> {
    let source = ChangeRepo::open(from)
        .map_err(|e| format!("{e}; run the demo from a changegate checkout"))?;
    let tree = source
        .git()
        .head()
        .and_then(|h| h.peel_to_tree())
        .map_err(|e| e.to_string())?;
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        let top_level = root.split('/').next().unwrap_or_default();
        if entry.kind() == Some(ObjectType::Blob) && matches!(top_level, "changes" | "policies") {
            let path = to.join(root).join(entry.name().unwrap_or_default());
            let written = source
                .git()
                .find_blob(entry.id())
                .map_err(|e| e.to_string())
                .and_then(|blob| {
                    std::fs::create_dir_all(path.parent().expect("a file has a folder"))
                        .map_err(|e| e.to_string())?;
                    std::fs::write(&path, blob.content()).map_err(|e| e.to_string())?;
                    let mode = if entry.filemode() == 0o100755 {
                        0o755
                    } else {
                        0o644
                    };
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                failure = Some(e);
                return TreeWalkResult::Abort;
            }
        }
        TreeWalkResult::Ok
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failure {
        return Err(e);
    }
    // A demo cannot wait ten minutes between waves: its copy bakes 5s.
    let sweep = to.join(format!("changes/{SWEEP}.yaml"));
    if let Ok(text) = std::fs::read_to_string(&sweep) {
        std::fs::write(&sweep, text.replace(DEMO_BAKE.0, DEMO_BAKE.1))
            .map_err(|e| e.to_string())?;
    }
    let repo = Repository::init(to).map_err(|e| e.to_string())?;
    repo.set_head("refs/heads/main")
        .map_err(|e| e.to_string())?;
    commit_on_main(
        to,
        "Upgrade the state machine database, then decommission 9.6",
    )?;
    Ok(())
}

/// Commits the whole work tree of `checkout` on `main` (its first commit,
/// or on top of the last), as Carol.
fn commit_on_main(checkout: &Path, message: &str) -> Result<(), String> {
    let repo = Repository::open(checkout).map_err(|e| e.to_string())?;
    let mut index = repo.index().map_err(|e| e.to_string())?;
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .map_err(|e| e.to_string())?;
    index.write().map_err(|e| e.to_string())?;
    let tree = repo
        .find_tree(index.write_tree().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let parent = repo.head().and_then(|h| h.peel_to_commit()).ok();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let carol = Signature::now("Carol", "carol@example.com").map_err(|e| e.to_string())?;
    repo.commit(Some("HEAD"), &carol, &carol, message, &tree, &parents)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn token(name: &str, role: Role, emails: &[&str], tokens: &mut Vec<TokenConfig>) -> String {
    let secret = new_token();
    tokens.push(TokenConfig {
        name: name.into(),
        role,
        sha256: token_hash(&secret),
        github: None,
        emails: emails.iter().map(|e| e.to_string()).collect(),
    });
    secret
}

/// A local fleet monitor: records each signed webhook alert and whether its
/// signature verifies. Returns its URL.
async fn fleet_monitor(
    received: Arc<Mutex<Vec<(bool, serde_json::Value)>>>,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/alerts", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let secret =
                        std::env::var("CHANGEGATE_DEMO_MONITOR_SECRET").unwrap_or_default();
                    let claimed = headers
                        .get("x-changegate-signature-256")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let verified = claimed == crate::alerts::signature(secret.as_bytes(), &body);
                    let json = serde_json::from_slice(&body).unwrap_or_default();
                    received.lock().expect("receiver").push((verified, json));
                    "ok"
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// `demo`, or with `rollback` its second ending: after the release fails,
/// an operator rolls the upgrade back as approved.
pub(super) fn demo(rollback: bool) -> u8 {
    match run(rollback) {
        Ok(true) => exit::OK,
        Ok(false) => exit::INVALID,
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

fn run(rollback: bool) -> Result<bool, String> {
    let work = tempfile::Builder::new()
        .prefix("changegate-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let checkout = work.path().join("checkout");
    let fleet = work.path().join("fleet");
    // Before any thread starts: the step scripts find the simulated fleet here.
    std::env::set_var("FLEET_DIR", &fleet);
    make_checkout(Path::new("."), &checkout)?;

    let mut tokens = Vec::new();
    let alice = token("alice", Role::Operator, &[], &mut tokens);
    let bob = token("bob", Role::Operator, &[], &mut tokens);
    let carol = token("carol", Role::Operator, &["carol@example.com"], &mut tokens);
    let ci = token("ci", Role::Executor, &[], &mut tokens);
    let monitor = token("fleet-sm", Role::Monitor, &[], &mut tokens);
    // The fleet monitor: a local receiver of signed webhook alerts.
    std::env::set_var("CHANGEGATE_DEMO_MONITOR_SECRET", new_token());
    let mut config = Config {
        tokens,
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".into();
    config.server.data_dir = work.path().to_path_buf();
    // Re-read main every second, so an edit pushed during the demo is seen.
    config.server.refresh_secs = 1;
    config.repo.url = checkout.clone();

    // The server, in-process, on a temp SQLite.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let received: Arc<Mutex<Vec<(bool, serde_json::Value)>>> = Arc::default();
    let monitor_url = runtime
        .block_on(fleet_monitor(received.clone()))
        .map_err(|e| e.to_string())?;
    config.alerts.sinks.push(SinkConfig {
        name: "fleet-monitor".into(),
        kind: SinkKind::Webhook,
        url: monitor_url,
        resend: crate::model::Duration::from_secs(60),
        secret_env: Some("CHANGEGATE_DEMO_MONITOR_SECRET".into()),
        routing_key_env: None,
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(crate::server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let api = |t: &str| Client::new(&url, t);
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        api(&alice).change(UPGRADE).is_ok()
    });
    if !ready {
        return Err("the in-process server did not start".into());
    }

    let mut t = Timeline {
        start: Instant::now(),
        events: Vec::new(),
    };
    println!("changegate demo: the 2017 state machine database upgrade, replayed");
    println!(
        "  work dir {} · server {url} · SQLite · simulated fleet in {}",
        work.path().display(),
        fleet.display()
    );

    let init = std::process::Command::new("./changes/scripts/fleet_init.sh")
        .current_dir(&checkout)
        .output()
        .map_err(|e| e.to_string())?;
    if !init.status.success() {
        return Err(format!(
            "fleet_init.sh failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    std::fs::write(
        fleet.join("faults/release"),
        "pg_ctl promote timed out; sm-pg96 is still the primary",
    )
    .map_err(|e| e.to_string())?;
    t.say("Fleet: sm-pg96 (Postgres 9.6) is the primary of the state machine. The release step will fail, as it did in 2017.");

    let digest_of = |id: &str| -> Result<String, String> {
        let repo = ChangeRepo::open(&checkout).map_err(|e| e.to_string())?;
        let snap = repo.at("HEAD").map_err(|e| e.to_string())?;
        let at = snap.change(id).map_err(|e| e.to_string())?;
        Ok(at.digest.to_string())
    };
    let up_digest = digest_of(UPGRADE)?;
    let ok =
        |r: Result<serde_json::Value, crate::client::ClientError>| r.map_err(|e| e.to_string());

    ok(api(&carol).approve(UPGRADE, &up_digest, "I wrote it and I trust it"))?;
    let status = ok(api(&alice).change(UPGRADE))?;
    let carol_counts = status["approvals"]["reviews"][0]["counts"] == true;
    t.say(format!(
        "carol, the author, approves her own change → recorded, not counted ({})",
        status["approvals"]["reviews"][0]["reason"]
            .as_str()
            .unwrap_or("?")
    ));
    for (who, secret) in [("alice", &alice), ("bob", &bob)] {
        ok(api(secret).approve(UPGRADE, &up_digest, "read the plan"))?;
        t.say(format!("{who} approves {UPGRADE} at {}", &up_digest[..19]));
    }
    let status = ok(api(&alice).change(UPGRADE))?;
    let tally = status["approvals"]["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "postgres-upgrades"))
        .cloned()
        .unwrap_or_default();
    t.say(format!(
        "approvals: {} of {} (policy postgres-upgrades) → the change is {}",
        tally["counted"],
        tally["required"],
        status["state"].as_str().unwrap_or("?")
    ));

    for step in [
        "backup",
        "create-instance",
        "restore",
        "point-state-machine",
        "release",
    ] {
        ok(api(&alice).proceed(UPGRADE, step, "watching the rollout"))?;
    }
    t.say("alice records a go-ahead for each step (the policy asks for one per step)");
    t.say(format!("CI runs `changegate exec {UPGRADE} --continue`:"));
    let code = exec_with(&api(&ci), UPGRADE, &checkout, &demo_exec());
    let status = ok(api(&alice).change(UPGRADE))?;
    let upgrade_failed = code == exit::INVALID && status["state"] == "failed";
    t.say(format!(
        "exec exited {code}: {UPGRADE} is {}; its targets stay locked ({})",
        status["state"].as_str().unwrap_or("?"),
        status["locks"]
            .as_array()
            .map(|l| l
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    ));

    let alerted = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        received.lock().expect("receiver").first().cloned()
    });
    let alert_arrived = alerted
        .as_ref()
        .is_some_and(|(verified, body)| *verified && body["event"] == "firing");
    match &alerted {
        Some((verified, body)) => t.say(format!(
            "the fleet monitor receives a firing alert: {} ({}) — it fires until a person acts",
            body["alert"]["annotations"]["summary"]
                .as_str()
                .unwrap_or("?"),
            if *verified {
                "signature verified"
            } else {
                "BAD SIGNATURE"
            }
        )),
        None => t.say("NO ALERT reached the fleet monitor"),
    }

    // The second ending: the failure is undone at once, as it was approved.
    let mut rolled_back = true;
    if rollback {
        ok(api(&alice).rollback(UPGRADE, "release failed: back to 9.6 as approved"))?;
        t.say(format!(
            "alice runs `changegate rollback {UPGRADE}`; CI runs `changegate exec {UPGRADE} --continue`:"
        ));
        let code = exec_with(&api(&ci), UPGRADE, &checkout, &demo_exec());
        let status = ok(api(&alice).change(UPGRADE))?;
        let read = |p: &str| std::fs::read_to_string(fleet.join(p)).unwrap_or_default();
        let attached = read("state-machine/primary");
        let back = attached.trim() == "sm-pg96"
            && read("sm-pg96/role").trim() == "primary"
            && !fleet.join("sm-pg10").exists();
        rolled_back = code == exit::OK && status["state"] == "rolled-back" && back;
        t.say(format!(
            "exec exited {code}: {UPGRADE} is {}; the state machine uses {}, sm-pg10 is {}; locks: {}",
            status["state"].as_str().unwrap_or("?"),
            attached.trim(),
            if fleet.join("sm-pg10").exists() { "still there" } else { "dropped" },
            status["locks"].as_array().map_or(0, Vec::len)
        ));
    }

    t.say("Two days later: the decommission of sm-pg96 is approved and given its go-ahead");
    let down_digest = digest_of(DECOMMISSION)?;
    for secret in [&alice, &bob] {
        ok(api(secret).approve(DECOMMISSION, &down_digest, "the upgrade is done, isn't it?"))?;
    }
    ok(api(&alice).proceed(DECOMMISSION, "final-snapshot", "clean-up"))?;
    let refused = api(&ci).claim(DECOMMISSION, &down_digest, Some("demo"));
    let dependency_refused = refused.as_ref().err().and_then(|e| e.reason()) == Some("dependency");
    match &refused {
        Err(e) => t.say(format!("CI's claim for {DECOMMISSION} is refused: {e}")),
        Ok(g) => t.say(format!(
            "CI's claim for {DECOMMISSION} was GRANTED ({}): the gate failed",
            g.step
        )),
    }
    // Someone "fixes" the failed release on main instead of rolling back or
    // abandoning: that edit is a new revision, and it must wait. (After a
    // rollback, the revision is over and an edit would be a fresh one.)
    let in_flight_refused = rollback
        || {
            let release = checkout.join("changes/scripts/release.sh");
            let fixed = std::fs::read_to_string(&release)
                .map(|s| s + "# retried with a longer promote timeout\n")
                .map_err(|e| e.to_string())?;
            std::fs::write(&release, fixed).map_err(|e| e.to_string())?;
            commit_on_main(&checkout, "release: a longer promote timeout")?;
            let edited = digest_of(UPGRADE)?;
            let seen = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                api(&alice)
                    .change(UPGRADE)
                    .is_ok_and(|s| s["main_digest"] == edited.as_str())
            });
            for secret in [&alice, &bob] {
                ok(api(secret).approve(UPGRADE, &edited, "the fix looks right"))?;
            }
            let in_flight = api(&ci).claim(UPGRADE, &edited, Some("demo"));
            let refused = seen
                && in_flight.as_ref().err().and_then(|e| e.reason()) == Some("revision-in-flight");
            match &in_flight {
        Err(e) => t.say(format!(
            "An edit of the failed upgrade is pushed on main and approved; CI's claim of it is refused: {e}"
        )),
        Ok(g) => t.say(format!(
            "the edited upgrade was GRANTED ({}) while the failed one is in flight: the gate failed",
            g.step
        )),
    }
            refused
        };

    let role = std::fs::read_to_string(fleet.join("sm-pg96/role")).unwrap_or_default();
    let survived = role.trim() == "primary";
    t.say(format!(
        "sm-pg96 still exists and is still the {}: nothing removed it, nothing rebooted the fleet",
        role.trim()
    ));
    if rollback {
        t.say("the upgrade was undone exactly as reviewed; the decommission waits for an upgrade that completes");
    }
    let halted = sweep(
        &mut t,
        &api,
        (&bob, &ci, &monitor),
        &checkout,
        &digest_of(SWEEP)?,
        &fleet,
    )?;

    let _ = stop.send(());
    let _ = runtime.block_on(server);
    let db_url = format!("sqlite://{}", work.path().join("changegate.db").display());
    let verified = runtime.block_on(async {
        let store = crate::store::Store::connect(&db_url).await.ok()?;
        store.verify_audit().await.ok()?.ok()
    });
    t.say(format!(
        "audit chain: {}",
        verified.map_or("BROKEN".to_string(), |n| format!("{n} events, intact"))
    ));

    println!("\nTimeline");
    for (at, what) in &t.events {
        println!("  {at:>5.1}s  {what}");
    }
    let as_expected = !carol_counts
        && upgrade_failed
        && alert_arrived
        && rolled_back
        && dependency_refused
        && in_flight_refused
        && survived
        && halted
        && verified.is_some();
    println!(
        "\n{}",
        if as_expected {
            "The failure blocked everything that should stop."
        } else {
            "UNEXPECTED: the replay did not go as designed."
        }
    );
    Ok(as_expected)
}

/// How the demo runs `exec`: `--continue --label demo`.
fn demo_exec() -> ExecOptions {
    ExecOptions {
        keep_going: true,
        label: Some("demo".into()),
        ..ExecOptions::default()
    }
}

/// The other half of 14 December: the pgbouncer restart sweeps 40 clusters
/// per target, in waves. One cluster of wave 2 does not come back: the
/// sweep halts there. `true` when it went as designed: failed, the later
/// clusters untouched, the failed one locked (423), an untouched one free.
fn sweep(
    t: &mut Timeline,
    api: &dyn Fn(&str) -> Client,
    (approver, ci, monitor): (&str, &str, &str),
    checkout: &Path,
    digest: &str,
    fleet: &Path,
) -> Result<bool, String> {
    let ok =
        |r: Result<serde_json::Value, crate::client::ClientError>| r.map_err(|e| e.to_string());
    std::fs::write(
        fleet.join(format!("faults/pgbouncer-{UNLUCKY}")),
        "pgbouncer did not come back after the restart",
    )
    .map_err(|e| e.to_string())?;
    t.say(format!(
        "The same day: the pgbouncer restart, scripted and reviewed, sweeps 40 clusters per target — a canary, then 25%, then the rest, 4 at a time, baking between waves (10m; {} in this demo). {UNLUCKY} will not come back.",
        DEMO_BAKE.1.trim_start_matches("bake: ")
    ));
    ok(api(approver).approve(SWEEP, digest, "restart script reviewed"))?;
    t.say(format!(
        "bob approves {SWEEP}; CI runs `changegate exec {SWEEP} --continue --wait`:"
    ));
    let options = ExecOptions {
        keep_going: true,
        wait: true,
        label: Some("demo".into()),
        ..ExecOptions::default()
    };
    let code = exec_with(&api(ci), SWEEP, checkout, &options);
    let status = ok(api(approver).change(SWEEP))?;
    let targets = status["rollout"]["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let count = |state: &str| targets.iter().filter(|x| x["state"] == state).count();
    t.say(format!(
        "exec exited {code}: {SWEEP} is {}; {} clusters restarted, {} failed, {} untouched",
        status["state"].as_str().unwrap_or("?"),
        count("succeeded"),
        count("failed"),
        count("pending")
    ));
    let ask = |target: &str| match api(monitor).action("fleet-sm", "reboot", target) {
        Ok(_) => 200,
        Err(crate::client::ClientError::Refused { status, .. }) => status,
        Err(_) => 0,
    };
    let (failed_answer, free_answer) = (ask(UNLUCKY), ask("pg-cluster-40"));
    t.say(format!(
        "the fleet monitor asks to reboot {UNLUCKY} → {failed_answer} (quarantined); pg-cluster-40, untouched → {free_answer}"
    ));
    let wave_three_untouched = targets
        .iter()
        .filter(|x| x["wave"] == 3)
        .all(|x| x["state"] == "pending");
    Ok(code == exit::INVALID
        && status["state"] == "failed"
        && wave_three_untouched
        && failed_answer == 423
        && free_answer == 200)
}
