//! changegate: change review and gated deployment.
//!
//! - [`model`]: the change repository's format (change sets, policies,
//!   digest); pure, no I/O.
//! - [`git`]: reads a commit's change sets and policies from git objects.
//! - [`cli`]: the `changegate` command line.

pub mod cli;
pub mod config;
pub mod git;
pub mod model;
pub mod server;
pub mod store;
