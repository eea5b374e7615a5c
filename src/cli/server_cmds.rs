//! Commands that run or administer the service: `serve`, `migrate`,
//! `sync`, `token new`, `audit verify`.

use std::path::Path;

use super::exit;
use crate::config::{Config, Role};
use crate::github::Github;
use crate::server::auth::{new_token, token_hash};
use crate::store::Store;

/// How `serve` logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn load_config(path: Option<&Path>) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime")
}

pub(super) fn serve(config_path: Option<&Path>, log_format: LogFormat) -> u8 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHANGEGATE_LOG")
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Without a secret, every forged delivery would verify (an HMAC with
    // the empty key is anyone's to compute): refuse to start.
    if let Some(github) = &config.github {
        if !std::env::var(&github.webhook_secret_env).is_ok_and(|s| !s.is_empty()) {
            eprintln!(
                "error: [github] is configured but the webhook secret `{}` is unset or empty; set it to the secret of the GitHub webhook or App",
                github.webhook_secret_env
            );
            return exit::USAGE;
        }
    }
    // Without a file yet, the one `token new … >> changegate.toml` creates
    // is the one to watch (README, "Two commands").
    let source =
        Config::source(config_path).or_else(|| Some(std::path::PathBuf::from("changegate.toml")));
    match runtime().block_on(crate::server::serve(config, source)) {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!(error = %e, "serve failed");
            eprintln!("error: {e}");
            exit::INVALID
        }
    }
}

pub(super) fn migrate(config: Option<&Path>) -> u8 {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = runtime().block_on(async {
        let store = Store::connect(&config.database_url()).await?;
        store.migrate().await?;
        store.close().await;
        Ok::<_, crate::store::StoreError>(store.backend())
    });
    match result {
        Ok(backend) => {
            println!("migrations applied ({backend:?})");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::INVALID
        }
    }
}

pub(super) fn sync(config: Option<&Path>) -> u8 {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.github.is_none() {
        eprintln!("error: sync needs a [github] section in the configuration");
        return exit::USAGE;
    }
    let result = runtime().block_on(async {
        let store = Store::connect(&config.database_url()).await?;
        store.migrate().await?;
        let engine = std::sync::Arc::new(crate::engine::Engine::new(
            std::sync::Arc::new(config),
            store.clone(),
        ));
        let github = Github::new(engine, Default::default())?.expect("[github] is configured");
        eprintln!("fetching the mirror…");
        github.fetch_and_refresh().await?;
        eprintln!("listing open pull requests and their reviews…");
        let summary = github.sync().await?;
        github.tick().await?;
        store.close().await;
        Ok::<_, crate::github::SyncError>(summary)
    });
    match result {
        Ok(s) => {
            println!(
                "{} open pull requests; {} updated; {} authors added; {} reviews added, {} updated",
                s.pull_requests,
                s.pull_requests_updated,
                s.authors_added,
                s.reviews_added,
                s.reviews_updated
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::INVALID
        }
    }
}

pub(super) fn token_new(name: &str, role: Role) -> u8 {
    // The token goes to stderr and the config lines to stdout, so
    // `changegate token new me --role reader >> changegate.toml` works.
    let token = new_token();
    eprintln!("token for {name} (shown once, never stored): {token}");
    println!("[[tokens]]");
    println!("name = {}", toml_string(name));
    println!("role = \"{role}\"");
    println!("sha256 = \"{}\"", token_hash(&token));
    exit::OK
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub(super) fn audit_verify(config: Option<&Path>) -> u8 {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = runtime().block_on(async {
        let store = Store::connect(&config.database_url()).await?;
        let verdict = store.verify_audit().await;
        store.close().await;
        verdict
    });
    match result {
        Ok(Ok(n)) => {
            println!("audit chain intact: {n} events");
            exit::OK
        }
        Ok(Err(broken)) => {
            println!("audit chain broken: {broken}");
            exit::INVALID
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}
