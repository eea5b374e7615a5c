//! Running a step's commands: `sh -c` in their own process group, output
//! streamed live and kept, the whole group killed on timeout, on a lost
//! lease, or when the executor itself is told to stop.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wire::ClaimGrant;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEnd {
    /// Every command exited 0.
    Succeeded,
    /// `role` (check, run or verify) exited non-zero (or by signal: 128 + n).
    Failed {
        /// Which command.
        role: &'static str,
        /// Its exit code.
        code: i64,
    },
    /// The step's timeout ran out; the process group was killed.
    TimedOut {
        /// Which command was running.
        role: &'static str,
    },
    /// The executor was told to stop (SIGTERM/SIGINT) or lost its lease.
    Stopped {
        /// Which command was running.
        role: &'static str,
        /// Why.
        why: String,
    },
}

impl StepEnd {
    /// The exit code to report: the command's, 124 for a timeout (as
    /// `timeout(1)`), 143 when stopped (SIGTERM).
    pub fn exit_code(&self) -> i64 {
        match self {
            StepEnd::Succeeded => 0,
            StepEnd::Failed { code, .. } => *code,
            StepEnd::TimedOut { .. } => 124,
            StepEnd::Stopped { .. } => 143,
        }
    }
}

/// What ran and what it printed.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// How it ended.
    pub end: StepEnd,
    /// Everything the commands printed, interleaved as it arrived.
    pub output: String,
    /// Wall time.
    pub duration: Duration,
}

/// Signals from outside the step: stop now, with a reason.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    why: Arc<Mutex<String>>,
    /// A signal that stops every child too (SIGTERM stops every target).
    parent: Option<Arc<AtomicBool>>,
}

impl StopSignal {
    /// Asks the step to stop.
    pub fn stop(&self, why: &str) {
        *self.why.lock().expect("stop reason") = why.to_string();
        self.flag.store(true, Ordering::SeqCst);
    }

    /// The flag, for signal handlers.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// A signal of its own (a lost lease stops one step) that the parent
    /// also raises (a termination signal stops them all).
    pub fn child(&self) -> StopSignal {
        StopSignal {
            parent: Some(self.flag.clone()),
            ..StopSignal::default()
        }
    }

    /// Whether a stop was asked for, here or by the parent.
    pub fn is_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.load(Ordering::SeqCst))
    }

    fn requested(&self) -> Option<String> {
        self.is_requested().then(|| {
            let why = self.why.lock().expect("stop reason").clone();
            if why.is_empty() {
                "the executor received a termination signal".to_string()
            } else {
                why
            }
        })
    }
}

fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group; it has
    // no memory-safety preconditions.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

fn pump(
    reader: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    echo: bool,
    prefix: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            if echo {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{prefix}{line}");
                let _ = out.flush();
            }
            let mut all = sink.lock().expect("output buffer");
            all.push_str(&line);
            all.push('\n');
        }
    })
}

/// Runs the step's check, run and verify in `dir`, stopping at the first
/// failure, within the step's timeout. `echo` prints output live.
pub fn run_step(grant: &ClaimGrant, dir: &Path, stop: &StopSignal, echo: bool) -> StepRun {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(grant.timeout_secs);
    let output = Arc::new(Mutex::new(String::new()));
    let commands = [
        ("check", grant.check.as_deref()),
        (
            if grant.phase == crate::store::Phase::Rollback {
                "rollback"
            } else {
                "run"
            },
            Some(grant.run.as_str()),
        ),
        ("verify", grant.verify.as_deref()),
    ];
    let mut end = StepEnd::Succeeded;
    // Targets of a rollout run side by side: each echoed line names its own.
    let tag = grant
        .rollout
        .as_ref()
        .map(|r| format!("[{}] ", r.target))
        .unwrap_or_default();
    for (role, cmd) in commands.into_iter().filter_map(|(r, c)| c.map(|c| (r, c))) {
        if echo {
            println!("  {tag}$ {cmd}");
        }
        output
            .lock()
            .expect("output buffer")
            .push_str(&format!("$ {cmd}\n"));
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .envs(&grant.env)
            .env("CHANGEGATE_CHANGE", &grant.change)
            .env("CHANGEGATE_STEP", &grant.step)
            .env("CHANGEGATE_ATTEMPT", &grant.attempt)
            .envs(
                grant
                    .rollout
                    .iter()
                    .map(|r| ("CHANGEGATE_TARGET", r.target.as_str())),
            )
            .env_remove("CHANGEGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                output
                    .lock()
                    .expect("output buffer")
                    .push_str(&format!("cannot start sh: {e}\n"));
                end = StepEnd::Failed { role, code: 127 };
                break;
            }
        };
        let pgid = child.id();
        let pumps = [
            pump(
                child.stdout.take().expect("piped"),
                output.clone(),
                echo,
                format!("  {tag}│ "),
            ),
            pump(
                child.stderr.take().expect("piped"),
                output.clone(),
                echo,
                format!("  {tag}│ "),
            ),
        ];
        // Poll quickly at first (most commands are short), then every 20 ms.
        let mut pause = Duration::from_millis(1);
        let status = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                break Ok(status);
            }
            if Instant::now() >= deadline {
                kill_group(pgid);
                let _ = child.wait();
                break Err(StepEnd::TimedOut { role });
            }
            if let Some(why) = stop.requested() {
                kill_group(pgid);
                let _ = child.wait();
                break Err(StepEnd::Stopped { role, why });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        // A command's leftover children hold the pipes open; the group goes with it.
        kill_group(pgid);
        for p in pumps {
            let _ = p.join();
        }
        match status {
            Ok(s) if s.success() => continue,
            Ok(s) => {
                let code = s
                    .code()
                    .map(i64::from)
                    .unwrap_or_else(|| 128 + i64::from(s.signal().unwrap_or(0)));
                end = StepEnd::Failed { role, code };
                break;
            }
            Err(e) => {
                end = e;
                break;
            }
        }
    }
    let output = output.lock().expect("output buffer").clone();
    StepRun {
        end,
        output,
        duration: started.elapsed(),
    }
}
