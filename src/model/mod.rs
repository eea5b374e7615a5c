//! The change repository's format: change sets, policies and the digest.
//!
//! Everything here is pure: it reads bytes and a [`TreeView`] of one commit
//! and knows nothing of git, HTTP or storage.

mod affected;
mod decode;
pub mod digest;
mod duration;
mod packed;
pub mod policy;
pub mod references;
pub mod repo;
pub mod rollout;
pub mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod window;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use affected::RootIndex;
pub use decode::{decode_change_set, decode_policy, ChangeIds, RepoContext};
pub use digest::{
    covered_paths, covered_roots, deletion_of, has_parent_component, is_policy_path, is_too_deep,
    too_deep, unreadable_path, CoveredPath, Digest, ABSENT, MAX_FOLDER_ENTRIES,
    MAX_FOLDER_PATH_BYTES, MAX_PATH_DEPTH,
};
pub use duration::Duration;
pub use packed::{EmailSets, EmailsById, OnBranch, Shared, Stored};
pub use policy::{policies_in_force, PoliciesInForce};
pub use repo::{
    load_change, load_policies, load_repo, load_repo_with_progress, ChangeChecker, RepoModel,
    SourceFile, MAX_FILE_BYTES,
};
pub use window::Window;
pub use yaml::Pos;

/// The pattern every change id (a file stem under `changes/`) must match.
pub const CHANGE_ID_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,99}$";

/// The one id a change set may not have: `changegate/policies` is the
/// commit status of policy edits, and a change's status is
/// `changegate/<id>`, so a change named so would overwrite it or be
/// overwritten by it.
pub const RESERVED_CHANGE_ID: &str = "policies";

/// Is `id` a valid change id: `[a-z0-9][a-z0-9._-]{0,99}`?
pub fn is_valid_change_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.len() <= 100
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Is `id` a valid step id: `[a-z0-9-]+`?
pub fn is_valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// One declared change: `changes/<id>.yaml` (schema v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "changegate change set (schema v1)")]
#[schemars(extend("anyOf" = [{"required": ["targets"]}, {"required": ["targets_from"]}]))]
pub struct ChangeSet {
    /// The file stem; not written in the file.
    #[serde(skip)]
    pub id: String,
    /// One line saying what the change does.
    #[schemars(length(min = 1))]
    pub title: String,
    /// Longer explanation, markdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What kind of change this is; policies match on it.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// What the change touches; these are locked while it runs. With
    /// `targets_from`, the file's targets follow these, in order.
    #[serde(default)]
    pub targets: Vec<String>,
    /// A file in the repository with one target per line (`#` comments),
    /// covered by the digest (SPEC §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_from: Option<String>,
    /// How the per-target steps sweep the targets in waves (SPEC §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Rollout>,
    /// Ids of changes that must be completed before this one may start.
    #[serde(default)]
    #[schemars(inner(pattern(r"^[a-z0-9][a-z0-9._-]{0,99}$")))]
    pub depends_on: Vec<String>,
    /// Non-secret variables passed to every step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra paths (a folder covers everything below it) bound into the digest.
    #[serde(default)]
    pub include: Vec<String>,
    /// Default step timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// The steps, run one at a time in this order.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// One step of a change set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the change.
    #[schemars(pattern(r"^[a-z0-9-]+$"))]
    pub id: String,
    /// The command, run with `sh -c` at the root of the approved checkout.
    pub run: String,
    /// Precondition: a non-zero exit fails the step and `run` is not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Postcondition: a non-zero exit fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// Overrides the change's default timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// An operator must record a go-ahead before this step can be claimed.
    #[serde(default)]
    pub confirm: bool,
    /// The subset of the change's targets this step touches (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// Runs once for each target, in waves, with `CHANGEGATE_TARGET` set
    /// (SPEC §10). Per-target steps form one contiguous block.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_target: bool,
    /// Undoes the step (SPEC §11): run by `rollback`, covered by the digest
    /// like `run`, approved with the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// Overrides the step's timeout for its rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_timeout: Option<Duration>,
}

impl ChangeSet {
    /// The per-target steps (SPEC §10): one contiguous block, by index.
    pub fn per_target_block(&self) -> Option<std::ops::Range<usize>> {
        let first = self.steps.iter().position(|s| s.per_target)?;
        let len = self.steps[first..]
            .iter()
            .take_while(|s| s.per_target)
            .count();
        Some(first..first + len)
    }

    /// How the per-target block sweeps the targets: the declared rollout,
    /// or the default one (a canary of one, then the rest), if the change
    /// has per-target steps at all.
    pub fn sweep(&self) -> Option<rollout::Rollout> {
        self.per_target_block()
            .map(|_| self.rollout.clone().unwrap_or_default())
    }

    /// The targets step `n` touches when it runs once. In a rollout, a
    /// step outside the block touches only the targets it names itself,
    /// so that targets the sweep has not reached stay free (SPEC §10).
    pub fn once_targets(&self, n: usize) -> &[String] {
        let step = &self.steps[n];
        match (self.per_target_block(), &step.targets) {
            (None, _) => step.effective_targets(self),
            (Some(_), Some(own)) => own,
            (Some(_), None) => &[],
        }
    }
}

impl Step {
    /// The commands of this step in the order they run, with their role;
    /// the rollback, which runs only when asked for, last.
    pub fn commands(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("check", self.check.as_deref()),
            ("run", Some(self.run.as_str())),
            ("verify", self.verify.as_deref()),
            ("rollback", self.rollback.as_deref()),
        ]
        .into_iter()
        .filter_map(|(role, cmd)| cmd.map(|c| (role, c)))
    }

    /// The targets this step touches: its own list, or all of the change's.
    pub fn effective_targets<'a>(&'a self, change: &'a ChangeSet) -> &'a [String] {
        self.targets.as_deref().unwrap_or(&change.targets)
    }
}

/// An approval and execution policy: `policies/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "changegate policy (schema v1)")]
pub struct Policy {
    /// The file stem; not written in the file.
    #[serde(skip)]
    pub name: String,
    /// False for a file holding only `actions:`, which governs no changes.
    #[serde(skip)]
    pub governs_changes: bool,
    /// What the policy is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which changes the policy applies to.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Who must approve.
    #[serde(default)]
    pub approvals: Approvals,
    /// How the change may run.
    #[serde(default)]
    pub execution: Execution,
    /// Alert sinks by name; absent means every configured sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<String>>,
    /// Budgets for the fleet monitor's automated actions.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionBudget>,
}

/// A policy's `match:` section.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Change kinds (globs); default `["*"]`.
    #[serde(default = "star")]
    pub kinds: Vec<String>,
    /// Target globs; the policy matches when any change target matches.
    #[serde(default = "star")]
    pub targets: Vec<String>,
    /// Path globs (`changes/scripts/db/**`): the policy also matches a
    /// change when any covered path matches one (path ownership). Given
    /// without `kinds` or `targets`, only the paths decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

fn star() -> Vec<String> {
    vec!["*".to_string()]
}

impl Default for Match {
    fn default() -> Self {
        Match {
            kinds: star(),
            targets: star(),
            paths: Vec::new(),
        }
    }
}

/// A policy's `approvals:` section.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// How many eligible approvals are needed; default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub required: u32,
    /// GitHub logins or `team:org/slug`; empty means any reviewer.
    #[serde(default)]
    #[schemars(inner(pattern(r"^(team:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|[A-Za-z0-9_.-]+)$")))]
    pub from: Vec<Approver>,
    /// Whether an author's own approval counts; default false.
    #[serde(default)]
    pub author_may_approve: bool,
    /// An approval older than this at the change's first claim (or now,
    /// before one) does not count: `expired`. Default: approvals keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<Duration>,
}

fn one() -> u32 {
    1
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            required: 1,
            from: Vec::new(),
            author_may_approve: false,
            expire_after: None,
        }
    }
}

/// Someone whose approval a policy accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "String")]
pub enum Approver {
    /// A GitHub login (or a token identity's name).
    User(String),
    /// Every member of a GitHub team: `team:org/slug`.
    Team {
        /// The organisation.
        org: String,
        /// The team's slug.
        slug: String,
    },
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approver::User(login) => f.write_str(login),
            Approver::Team { org, slug } => write!(f, "team:{org}/{slug}"),
        }
    }
}

impl Serialize for Approver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A policy's `execution:` section.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Execution {
    /// Every step needs an operator's go-ahead; default false.
    #[serde(default)]
    pub confirm_each_step: bool,
    /// When steps may be claimed, e.g. `mon-thu 09:00-17:00 UTC`; empty means always.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// The most targets one step may touch; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_targets_per_step: Option<u32>,
    /// A retry after a failure needs a fresh approval; default true.
    #[serde(default = "yes")]
    pub retry_requires_approval: bool,
    /// A rollback needs a fresh approval first; default false, because the
    /// rollback commands were approved with the change.
    #[serde(default)]
    pub rollback_requires_approval: bool,
    /// No wave of a rollout, canary included, may hold more targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wave: Option<u32>,
    /// A rollout's `bake` may not be shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bake: Option<Duration>,
}

fn yes() -> bool {
    true
}

impl Default for Execution {
    fn default() -> Self {
        Execution {
            confirm_each_step: false,
            windows: Vec::new(),
            max_targets_per_step: None,
            retry_requires_approval: true,
            rollback_requires_approval: false,
            max_wave: None,
            min_bake: None,
        }
    }
}

/// How often the fleet monitor may take one kind of automated action.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBudget {
    /// At most this many actions...
    #[schemars(range(min = 1))]
    pub max: u32,
    /// ...within this sliding period.
    pub per: Duration,
}

/// A validation problem, printed as `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// Repository path of the file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `pos` in `path`.
    pub fn new(path: &str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_string(),
            line: pos.line,
            column: pos.col,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.column, self.message
        )
    }
}

/// What a path names in the commit being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file, with its git blob id in hex.
    Blob(String),
    /// An executable file (git's mode 100755), with its git blob id in hex.
    Executable(String),
    /// A folder.
    Tree,
    /// A symbolic link, with the blob id of its target text. Never covered:
    /// a digest over the link text says nothing about what it runs.
    Link(String),
    /// A blob under a mode git does not write for a file (`120755`,
    /// `010755`): libgit2 reads it as executable, while git checks it out,
    /// and GitHub shows it, as a link or a submodule. Never covered.
    OddMode(i32),
}

impl Entry {
    /// The blob id of a file, executable or not.
    pub fn file_blob(&self) -> Option<&str> {
        match self {
            Entry::Blob(id) | Entry::Executable(id) => Some(id),
            Entry::Tree | Entry::Link(_) | Entry::OddMode(_) => None,
        }
    }
}

/// A read-only view of one commit's tree. The git layer implements it over
/// git objects; tests may implement it over a map.
pub trait TreeView {
    /// What `path` (slash-separated, relative to the root) names, if anything.
    fn entry(&self, path: &str) -> Option<Entry>;
    /// Every file below the folder `dir`: (path, [`Entry::Blob`] or
    /// [`Entry::Link`]). Each entry walked (file or folder) is taken from
    /// `budget`, shared by every folder one change covers. An error says
    /// why they are not all listed: the budget ran out, more than
    /// [`MAX_FOLDER_PATH_BYTES`] of paths, or folders nested past
    /// [`MAX_PATH_DEPTH`].
    fn blobs_under(&self, dir: &str, budget: &mut usize) -> Result<Vec<(String, Entry)>, String>;
    /// The text of the file at `path`, if it is UTF-8 and under 1 MiB
    /// (a rollout's `targets_from`); a tree without contents has none.
    fn file_text(&self, _path: &str) -> Option<String> {
        None
    }
}
