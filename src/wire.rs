//! The wire: requests and answers that the server, the client and the
//! executor share. Nothing here acts; it is the shape of `/api/v1`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gate::ChangeState;
use crate::store::{Attempt, Phase};

/// A granted claim: what the executor must run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimGrant {
    /// The attempt id; heartbeats and the report name it.
    pub attempt: String,
    /// The change.
    pub change: String,
    /// The step.
    pub step: String,
    /// 1-based position of the step.
    pub step_number: usize,
    /// How many steps the change has.
    pub steps_total: usize,
    /// Precondition command, if any.
    pub check: Option<String>,
    /// The command.
    pub run: String,
    /// Postcondition command, if any.
    pub verify: Option<String>,
    /// Variables for the commands.
    pub env: BTreeMap<String, String>,
    /// Step timeout in seconds.
    pub timeout_secs: u64,
    /// Lease expiry (unix ms); heartbeat before it.
    pub lease_expires_at: i64,
    /// How long each heartbeat extends the lease, in seconds.
    pub lease_secs: u64,
    /// `step`, or `rollback`: then `run` is the step's rollback, and
    /// `step_number` of `steps_total` counts the steps to undo.
    #[serde(default = "step_phase")]
    #[schema(value_type = String)]
    pub phase: Phase,
    /// For a per-target step (SPEC §10): the target, which the commands
    /// get as `CHANGEGATE_TARGET`, and where the rollout stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<GrantRollout>,
}

/// Where a claimed (step, target) sits in its rollout.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantRollout {
    /// The target.
    pub target: String,
    /// Its wave, from 1.
    pub wave: usize,
    /// How many waves.
    pub waves: usize,
    /// Targets through the per-target steps when it was claimed.
    pub done: usize,
    /// Targets in all.
    pub targets: usize,
    /// At most this many targets at once.
    pub parallel: u32,
}

fn step_phase() -> Phase {
    Phase::Step
}

/// An executor's report of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `succeeded` or `failed`.
    pub outcome: Outcome,
    /// The exit code of the failing (or last) command.
    pub exit_code: Option<i64>,
    /// How long the commands ran.
    pub duration_ms: i64,
    /// The last 64 KiB of output; the server redacts secrets again.
    #[serde(default)]
    pub output_tail: String,
}

/// A step's outcome as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every command exited 0.
    Succeeded,
    /// A command failed or timed out.
    Failed,
}

impl Outcome {
    /// The word the API and the spec use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a report or heartbeat found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptAnswer {
    /// The attempt as now recorded.
    pub attempt: Attempt,
    /// The change's state afterwards.
    #[schema(value_type = String)]
    pub change_state: ChangeState,
    /// False when this report repeated one already recorded (or came late).
    pub recorded: bool,
}

/// The most output kept per attempt.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// The last `OUTPUT_TAIL_BYTES` of `output`, cut at a character boundary.
pub fn tail(output: &str) -> &str {
    let mut start = output.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    &output[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_64_kib_on_a_char_boundary() {
        let text = "é".repeat(40_000);
        let t = tail(&text);
        assert!(t.len() <= OUTPUT_TAIL_BYTES && t.len() > OUTPUT_TAIL_BYTES - 2);
        assert!(text.ends_with(t));
    }
}

/// A change id as the API takes it, checked once where it enters: an id
/// that cannot exist (`[a-z0-9][a-z0-9._-]{0,99}`) is never looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ChangeId(String);

impl ChangeId {
    /// `text` as a change id, if it can be one.
    pub fn parse(text: &str) -> Option<ChangeId> {
        crate::model::is_valid_change_id(text).then(|| ChangeId(text.to_string()))
    }
}

/// An attempt id as the API takes it: `<change>.<step>.<n>`, at most 220
/// characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AttemptId(String);

impl AttemptId {
    /// `text` as an attempt id, if it can be one.
    pub fn parse(text: &str) -> Option<AttemptId> {
        let ok = !text.is_empty()
            && text.len() <= 220
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        ok.then(|| AttemptId(text.to_string()))
    }
}

macro_rules! id_str {
    ($($t:ty),*) => {$(
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
    )*};
}
id_str!(ChangeId, AttemptId);
