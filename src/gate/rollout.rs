//! Fleet rollouts (SPEC §10): which (step, target) may run next, and how
//! each target and wave stands. Pure: progress and the time in, a decision
//! out.

use std::ops::Range;

use serde::Serialize;

use super::claim::{Refusal, RefusalReason, StepProgress};
use super::StepState;
use crate::clock::format_ms;

/// One target's way through the per-target block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProgress {
    /// The target.
    pub target: String,
    /// Its wave, from 0.
    pub wave: usize,
    /// Each block step on this target, in order.
    pub steps: Vec<StepProgress>,
    /// When its last block step succeeded (unix ms).
    pub done_at: Option<i64>,
}

impl TargetProgress {
    /// Where the target stands: failed at its first failure, running from
    /// its first claim until its last block step succeeded (between two of
    /// its steps too), then succeeded.
    pub fn state(&self) -> StepState {
        rollup(self.steps.iter())
    }

    /// Claimed and not finished: it holds one of the `parallel` places.
    fn active(&self) -> bool {
        self.state() == StepState::Running
    }

    /// Its next block step (offset in the block) when nothing of it runs.
    fn next_step(&self) -> Option<usize> {
        if self.steps.iter().any(|s| s.running.is_some()) {
            return None;
        }
        self.steps
            .iter()
            .position(|s| s.state == StepState::Pending)
    }
}

/// A (step, target) to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// The step's index in the change.
    pub step: usize,
    /// The target's index in the change's targets.
    pub target: usize,
    /// The target's first claim: it starts a new target.
    pub fresh: bool,
}

/// A rollout's progress: every target, in declared order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    /// The per-target steps, by index in the change.
    pub block: Range<usize>,
    /// Every target in declared order; waves are contiguous runs of it.
    pub targets: Vec<TargetProgress>,
    /// How many waves.
    pub waves: usize,
    /// At most this many targets active at once.
    pub parallel: u32,
    /// After each wave, how long before the next may start (ms).
    pub bake_ms: i64,
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveState {
    /// No target claimed yet.
    Pending,
    /// Some target claimed, not all done.
    Running,
    /// Every target done; the next wave waits for the bake to pass.
    Baking,
    /// Every target done (and baked, when a wave follows).
    Done,
    /// A target failed or was interrupted.
    Failed,
}

impl WaveState {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WaveState::Pending => "pending",
            WaveState::Running => "running",
            WaveState::Baking => "baking",
            WaveState::Done => "done",
            WaveState::Failed => "failed",
        }
    }
}

/// One wave as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveStatus {
    /// From 1.
    pub index: usize,
    /// Its targets, in order.
    pub targets: Vec<String>,
    /// Where it stands.
    pub state: WaveState,
    /// When the next wave may start, once this one is done (unix ms).
    pub bake_until: Option<i64>,
}

/// Several attempts' progress rolled into one: the first failure, else
/// running while anything runs or is part-way, succeeded when all did.
pub fn rollup<'p>(steps: impl Iterator<Item = &'p StepProgress> + Clone) -> StepState {
    let failed = |s: &&StepProgress| matches!(s.state, StepState::Failed | StepState::Interrupted);
    if let Some(f) = steps.clone().find(failed) {
        return f.state;
    }
    let mut all = steps.clone().peekable();
    if all.peek().is_none() {
        return StepState::Pending;
    }
    if steps
        .clone()
        .all(|s| matches!(s.state, StepState::Succeeded | StepState::Skipped))
    {
        return StepState::Succeeded;
    }
    if steps.clone().all(|s| s.state == StepState::Skipped) {
        return StepState::Skipped;
    }
    if steps
        .clone()
        .any(|s| !matches!(s.state, StepState::Pending | StepState::Skipped))
    {
        return StepState::Running;
    }
    StepState::Pending
}

impl RolloutProgress {
    fn wave(&self, w: usize) -> impl Iterator<Item = (usize, &TargetProgress)> + Clone {
        self.targets
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.wave == w)
    }

    /// When wave `w` finished: its last target's `done_at`, once all are done.
    fn done_at(&self, w: usize) -> Option<i64> {
        let mut wave = self.wave(w).peekable();
        wave.peek()?;
        wave.map(|(_, t)| {
            (t.state() == StepState::Succeeded)
                .then_some(t.done_at)
                .flatten()
        })
        .try_fold(i64::MIN, |latest, at| at.map(|at| latest.max(at)))
    }

    /// Each wave's state at `now`.
    pub fn wave_statuses(&self, now: i64) -> Vec<WaveStatus> {
        (0..self.waves)
            .map(|w| {
                let states: Vec<StepState> = self.wave(w).map(|(_, t)| t.state()).collect();
                let done_at = self.done_at(w);
                let bake_until = done_at
                    .filter(|_| w + 1 < self.waves)
                    .map(|at| at + self.bake_ms);
                let next_started = self
                    .wave(w + 1)
                    .any(|(_, t)| t.state() != StepState::Pending);
                let state = if states
                    .iter()
                    .any(|s| matches!(s, StepState::Failed | StepState::Interrupted))
                {
                    WaveState::Failed
                } else if done_at.is_some() {
                    match bake_until {
                        Some(until) if now < until && !next_started => WaveState::Baking,
                        _ => WaveState::Done,
                    }
                } else if states.iter().any(|s| *s != StepState::Pending) {
                    WaveState::Running
                } else {
                    WaveState::Pending
                };
                WaveStatus {
                    index: w + 1,
                    targets: self.wave(w).map(|(_, t)| t.target.clone()).collect(),
                    state,
                    bake_until,
                }
            })
            .collect()
    }

    /// Targets whose block is done.
    pub fn targets_done(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.state() == StepState::Succeeded)
            .count()
    }

    /// The unit to claim next at `now`: a target part-way through the
    /// block goes on first; a new one starts only with a free place among
    /// `parallel`, in the first wave not done, once the wave before it has
    /// baked. `None`: the block is done.
    pub fn next(&self, now: i64) -> Result<Option<Unit>, Refusal> {
        let Some(w) = (0..self.waves).find(|&w| self.done_at(w).is_none()) else {
            return Ok(None);
        };
        let unit = |fresh: bool| {
            move |(i, t): (usize, &TargetProgress)| {
                t.next_step().map(|s| Unit {
                    step: self.block.start + s,
                    target: i,
                    fresh,
                })
            }
        };
        if let Some(next) = self
            .wave(w)
            .filter(|(_, t)| t.active())
            .find_map(unit(false))
        {
            return Ok(Some(next));
        }
        let active: Vec<&str> = self
            .targets
            .iter()
            .filter(|t| t.active())
            .map(|t| t.target.as_str())
            .collect();
        let pending = self.wave(w).find(|(_, t)| t.state() == StepState::Pending);
        let Some(fresh) = pending else {
            return refuse(
                RefusalReason::NotNext,
                format!(
                    "every remaining target of wave {} of {} is running ({})",
                    w + 1,
                    self.waves,
                    list(&active)
                ),
            );
        };
        if active.len() >= self.parallel as usize {
            return refuse(
                RefusalReason::NotNext,
                format!(
                    "{} of at most {} targets are running ({}); the next starts when one finishes",
                    active.len(),
                    self.parallel,
                    list(&active)
                ),
            );
        }
        if w > 0 {
            let finished = self.done_at(w - 1).expect("the wave before is done");
            let until = finished + self.bake_ms;
            if now < until {
                return refuse(
                    RefusalReason::Baking,
                    format!(
                        "wave {} of {} finished at {} and bakes until {}; wave {} starts then",
                        w,
                        self.waves,
                        format_ms(finished),
                        format_ms(until),
                        w + 1
                    ),
                );
            }
        }
        Ok(unit(true)(fresh))
    }
}

/// The first few of `items`, and how many more.
fn list(items: &[&str]) -> String {
    let shown: Vec<&str> = items.iter().take(5).copied().collect();
    match items.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn refuse<T>(reason: RefusalReason, detail: String) -> Result<T, Refusal> {
    Err(Refusal { reason, detail })
}
