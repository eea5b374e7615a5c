//! The `changegate` command line. Exit codes are part of the interface:
//! see README.md, "Exit codes".

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
    /// Run the service: HTTP API on embedded SQLite, or Postgres via CHANGEGATE_DATABASE_URL.
    Serve {
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Apply database migrations and exit.
    Migrate,
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
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate { repo, format } => repo_cmds::validate(&repo, format),
        Command::Plan {
            id,
            repo,
            default_branch,
            format,
        } => repo_cmds::plan(&id, &repo, &default_branch, format),
        Command::Digest { id, repo } => repo_cmds::digest(&id, &repo),
        Command::Schema { kind } => repo_cmds::schema(kind),
        Command::Serve { log_format } => server_cmds::serve(cli.config.as_deref(), log_format),
        Command::Migrate => server_cmds::migrate(cli.config.as_deref()),
        Command::Token(TokenCommand::New { name, role }) => server_cmds::token_new(&name, role),
        Command::Audit(AuditCommand::Verify) => server_cmds::audit_verify(cli.config.as_deref()),
    };
    ExitCode::from(code)
}
