//! The `changegate` command line. Exit codes are part of the interface:
//! see README.md, "Exit codes".

mod api_cmds;
mod demo;
mod exec;
mod repo_cmds;
mod server_cmds;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Role;
use crate::model::schema::SchemaKind;
use server_cmds::LogFormat;

/// Change review and gated deployment.
#[derive(Debug, Parser)]
#[command(name = "changegate", version, about, propagate_version = true)]
pub struct Cli {
    /// The configuration file (default: $CHANGEGATE_CONFIG, else ./changegate.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lint every change set and policy at a revision.
    Validate {
        #[command(flatten)]
        repo: RepoArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat warnings (uncovered paths a step would reach for) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Show a change's steps, covered paths, digest and the approvals it needs.
    Plan {
        /// The change id (its file stem under changes/).
        id: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// The branch whose policies are in force.
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print a change's digest alone, for scripts.
    Digest {
        /// The change id (its file stem under changes/).
        id: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Run the next step of a change from this checkout (or, with --continue, steps until a gate).
    Exec {
        /// The change id.
        id: String,
        /// Claim the next step after each success, until a gate, a failure or the end.
        #[arg(long = "continue")]
        keep_going: bool,
        /// The checkout (default: the current directory).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// A label for this executor in the record, e.g. the CI run URL.
        #[arg(long)]
        label: Option<String>,
        /// A rollout: run at most N targets at once (the rollout's
        /// `parallel` is the ceiling).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        parallel: Option<u32>,
        /// A rollout: on `baking`, sleep until the bake ends and go on
        /// (without it, exec exits 3 and prints the time).
        #[arg(long)]
        wait: bool,
    },
    /// Approve a change at the digest of this checkout (or --digest).
    Approve {
        /// The change id.
        id: String,
        /// The digest approved (default: computed from --repo at HEAD).
        #[arg(long)]
        digest: Option<String>,
        /// The checkout to compute the digest from.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// A comment for the record.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Record the go-ahead for a step that needs confirmation.
    Proceed {
        /// The change id.
        id: String,
        /// The step id.
        step: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Re-open a change's failed step.
    Retry {
        /// The change id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Roll back a failed change: `exec` then runs the declared rollbacks,
    /// the failed step's first, then the succeeded steps' last first.
    Rollback {
        /// The change id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Abandon a change for good: its locks are released, its dependents stay refused.
    Abandon {
        /// The change id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Show changes (or one change) as the server sees them.
    Status {
        /// One change id; all when absent.
        id: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The step breaker and fleet action refusals.
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// Alerts and their delivery to each sink.
    Alerts {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Replay the 2017 incident end to end on a temp SQLite and a simulated fleet.
    Demo {
        /// The second ending: after the release fails, an operator rolls the
        /// upgrade back as approved; exits 0 only if the fleet is back on sm-pg96.
        #[arg(long)]
        rollback: bool,
    },
    /// Run the service: HTTP API on embedded SQLite, or Postgres via CHANGEGATE_DATABASE_URL.
    Serve {
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Reconcile with GitHub: list open pull requests and their reviews,
    /// record what webhooks missed, and post commit statuses.
    Sync,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the JSON Schema (draft 2020-12) of change sets or policies.
    Schema {
        /// Which file kind.
        #[arg(value_enum)]
        kind: SchemaKind,
    },
}

#[derive(Debug, Subcommand)]
enum BreakerCommand {
    /// Show whether the breaker is open.
    Status,
    /// Close the step breaker, or with --action, lift a fleet action kind's refusal.
    Reset {
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// The fleet action kind (e.g. `reboot`) whose budget refusal to lift.
        #[arg(long)]
        action: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token and the config lines that store its hash.
    New {
        /// The identity's name, recorded as the actor of what it does.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; name the first edited, removed or reordered event.
    Verify,
}

/// Where to read the change repository.
#[derive(Debug, Args)]
struct RepoArgs {
    /// The change repository (a work tree or bare repository).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The revision to read: a branch, tag, sha or any git rev-spec.
    #[arg(long, default_value = "HEAD")]
    rev: String,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// For programs: one JSON document on stdout.
    Json,
}

/// Exit codes shared by the commands.
pub mod exit {
    /// Everything checked out, or the step(s) succeeded.
    pub const OK: u8 = 0;
    /// Invalid input, or a step failed.
    pub const INVALID: u8 = 1;
    /// Usage or I/O error: no repository, unknown revision or change.
    pub const USAGE: u8 = 2;
    /// `exec`: the claim was refused (the reason is printed).
    pub const REFUSED: u8 = 3;
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate {
            repo,
            format,
            strict,
        } => repo_cmds::validate(&repo, format, strict),
        Command::Plan {
            id,
            repo,
            default_branch,
            format,
        } => repo_cmds::plan(&id, &repo, &default_branch, format),
        Command::Digest { id, repo } => repo_cmds::digest(&id, &repo),
        Command::Schema { kind } => repo_cmds::schema(kind),
        Command::Exec {
            id,
            keep_going,
            repo,
            label,
            parallel,
            wait,
        } => exec::exec(
            &id,
            &repo,
            &exec::ExecOptions {
                keep_going,
                parallel,
                wait,
                label,
            },
        ),
        Command::Approve {
            id,
            digest,
            repo,
            comment,
        } => api_cmds::approve(&id, digest.as_deref(), &repo, &comment),
        Command::Proceed { id, step, reason } => api_cmds::proceed(&id, &step, &reason),
        Command::Retry { id, reason } => api_cmds::retry(&id, &reason),
        Command::Rollback { id, reason } => api_cmds::rollback(&id, &reason),
        Command::Abandon { id, reason } => api_cmds::abandon(&id, &reason),
        Command::Status { id, format } => api_cmds::status(id.as_deref(), format),
        Command::Breaker(BreakerCommand::Status) => api_cmds::breaker_status(),
        Command::Breaker(BreakerCommand::Reset { reason, action }) => {
            api_cmds::breaker_reset(&reason, action.as_deref())
        }
        Command::Alerts { format } => api_cmds::alerts(format),
        Command::Demo { rollback } => demo::demo(rollback),
        Command::Serve { log_format } => server_cmds::serve(cli.config.as_deref(), log_format),
        Command::Migrate => server_cmds::migrate(cli.config.as_deref()),
        Command::Sync => server_cmds::sync(cli.config.as_deref()),
        Command::Token(TokenCommand::New { name, role }) => server_cmds::token_new(&name, role),
        Command::Audit(AuditCommand::Verify) => server_cmds::audit_verify(cli.config.as_deref()),
    };
    ExitCode::from(code)
}
