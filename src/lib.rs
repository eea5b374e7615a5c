//! changegate: change review and gated deployment.
//!
//! - [`model`]: the change repository's format (change sets, policies,
//!   digest); pure, no I/O.
//! - [`gate`]: the decisions (approval status, claims, the breaker, policy
//!   review) as pure functions of recorded facts.
//! - [`git`]: reads a commit's change sets and policies from git objects,
//!   and materialises covered files for a step.
//! - [`store`]: all SQL; SQLite or Postgres through sqlx.
//! - [`engine`]: the gate at work: gathers facts, asks [`gate`], records
//!   outcomes in one transaction each.
//! - [`wire`]: the `/api/v1` requests and answers shared by server, client
//!   and executor.
//! - [`github`]: webhook deliveries applied, the bare mirror, commit
//!   statuses, team lookups and reconciliation (octocrab).
//! - [`alerts`]: the durable outbox to Alertmanager and webhook sinks.
//! - [`metrics`]: the one Prometheus registry every part records into.
//! - [`server`]: HTTP only (axum): API, webhooks, pages, metrics.
//! - [`client`]: the HTTP client the CLI and executor use.
//! - [`executor`]: runs one claimed step's commands with a lease.
//! - [`cli`]: the `changegate` command line.
//! - [`config`], [`clock`], [`redact`]: configuration, time, and secrets
//!   kept out of outputs.
//! - [`fuzzing`]: entry points for `fuzz/`.

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
pub mod metrics;
pub mod model;
pub mod redact;
pub mod server;
pub mod store;
pub mod wire;
