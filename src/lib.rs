//! changegate: change review and gated deployment.
//!
//! - [`model`]: the change repository's format (change sets, policies,
//!   digest); pure, no I/O.
//! - [`gate`]: the decisions (approval status, claims, the breaker) as pure
//!   functions of recorded facts.
//! - [`git`]: reads a commit's change sets and policies from git objects.
//! - [`store`]: all SQL; SQLite or Postgres through sqlx.
//! - [`github`]: webhook deliveries applied, the bare mirror, commit
//!   statuses, team lookups and reconciliation (octocrab).
//! - [`server`]: HTTP only (axum).
//! - [`cli`]: the `changegate` command line.

pub mod alerts;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod engine;
pub mod executor;
pub mod fuzzing;
pub mod gate;
pub mod git;
pub mod github;
pub mod model;
pub mod redact;
pub mod server;
pub mod store;
