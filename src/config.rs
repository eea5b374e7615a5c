//! `changegate.toml`: the server's configuration (SPEC §7, "Configuration").
//!
//! Every key is optional. The file is `--config`, else `CHANGEGATE_CONFIG`,
//! else `./changegate.toml` when it exists. `CHANGEGATE_DATABASE_URL` and
//! `CHANGEGATE_LISTEN` override the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    #[serde(default)]
    pub server: ServerConfig,
    /// `[repo]`
    #[serde(default)]
    pub repo: RepoConfig,
    /// `[[tokens]]`: named identities with roles.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// `[breaker]`
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// `[alerts]`
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// `[rollouts]`
    #[serde(default)]
    pub rollouts: RolloutSettings,
    /// `[github]`: absent, approvals come through the API only.
    #[serde(default)]
    pub github: Option<GithubConfig>,
}

/// `[github]`: pull request reviews as approvals, commit statuses, and
/// reconciliation (SPEC §4).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The REST API base: GitHub Enterprise's `https://HOST/api/v3`, or a
    /// test server.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// `owner/name` of the change repository on GitHub.
    #[serde(default)]
    pub repository: String,
    /// The environment variable holding a token (used unless `app_id` is set).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// A GitHub App's id: with `private_key_path` and `installation_id`,
    /// installation tokens are minted instead of using a token.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// The App's PEM private key.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The App's installation on the repository's owner.
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// The environment variable holding the webhook secret.
    #[serde(default = "default_webhook_secret_env")]
    pub webhook_secret_env: String,
    /// How often `serve` reconciles open pull requests with the REST API.
    #[serde(default = "five_minutes")]
    pub sync_interval: Duration,
    /// How long a team membership lookup is trusted.
    #[serde(default = "five_minutes")]
    pub team_ttl: Duration,
    /// Attempts per API call on 5xx and rate limits before giving up.
    #[serde(default = "default_api_attempts")]
    pub api_attempts: u32,
    /// Whether this server applies the inbox, posts statuses and
    /// reconciles. Set false on replicas that should only accept webhooks
    /// (every replica stores deliveries; any one may apply them).
    #[serde(default = "yes")]
    pub worker: bool,
}

fn yes() -> bool {
    true
}

impl GithubConfig {
    /// `(owner, name)` of `repository`.
    pub fn owner_and_name(&self) -> Option<(&str, &str)> {
        self.repository
            .split_once('/')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
    }
}

fn default_api_url() -> String {
    "https://api.github.com".into()
}

fn default_token_env() -> String {
    "GITHUB_TOKEN".into()
}

fn default_webhook_secret_env() -> String {
    "CHANGEGATE_WEBHOOK_SECRET".into()
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn default_api_attempts() -> u32 {
    6
}

/// `[alerts]`: where alerts go.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `[[alerts.sinks]]`, named in policies' `alerts:`.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// What kind of receiver a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Prometheus Alertmanager, API v2.
    Alertmanager,
    /// A signed JSON POST.
    Webhook,
    /// PagerDuty Events API v2.
    Pagerduty,
}

/// `[[alerts.sinks]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The name policies use.
    pub name: String,
    /// The receiver's kind.
    pub kind: SinkKind,
    /// Alertmanager's base URL, the webhook URL, or the Events API URL.
    pub url: String,
    /// Alertmanager: how often a firing alert is re-sent.
    #[serde(default = "one_minute")]
    pub resend: Duration,
    /// Webhook: the environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// PagerDuty: the environment variable holding the routing key.
    #[serde(default)]
    pub routing_key_env: Option<String>,
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

/// `[breaker]`: the step breaker (SPEC §6).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Failed or interrupted steps that open it.
    pub max_failures: u32,
    /// Within this window.
    pub window: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            max_failures: 3,
            window: Duration::from_secs(3600),
        }
    }
}

/// `[rollouts]`: how a rollout watches the fleet (SPEC §10).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// The Alertmanager label that names a target.
    pub target_label: String,
    /// How often a rollout in flight asks its Alertmanager sinks for
    /// alerts on the targets it touched (during bakes and between claims).
    pub watch_every: Duration,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            target_label: "target".into(),
            watch_every: Duration::from_secs(15),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Where the SQLite file and the git mirror (`mirror.git`) live.
    pub data_dir: PathBuf,
    /// `sqlite://FILE` (relative to `data_dir`) or `postgres://…`.
    pub database_url: String,
    /// Base of links in alerts and statuses.
    pub public_url: String,
    /// How often the default branch is re-read, in seconds.
    pub refresh_secs: u64,
    /// How long a claim's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Serve the status page, change pages and feed without a token.
    pub public_pages: bool,
    /// Memory, in MiB, that webhook bodies being received may hold at once
    /// (at least 25, one largest delivery). Past it, deliveries get 503 and
    /// GitHub redelivers them later.
    pub webhook_memory_mib: u64,
    /// How payloads over 4 KiB are compressed in the webhook inbox.
    pub inbox_compression: crate::store::InboxCompression,
    /// A client must send a request's headers within this, from the moment
    /// the server waits for them: on a new connection and between requests
    /// on a kept-alive one (so it bounds idle connections too).
    pub header_timeout: Duration,
    /// A client must finish sending a request body within this.
    pub body_timeout: Duration,
    /// Re-read `[[tokens]]` when the configuration file changes (SIGHUP
    /// always does); off where a tool writes the file in pieces.
    pub reload_on_change: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("."),
            database_url: "sqlite://changegate.db".into(),
            public_url: "http://127.0.0.1:8080".into(),
            refresh_secs: 30,
            lease: Duration::from_secs(300),
            public_pages: false,
            webhook_memory_mib: 64,
            inbox_compression: crate::store::InboxCompression::Lz4,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            reload_on_change: true,
        }
    }
}

/// `[repo]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoConfig {
    /// Path or URL of the change repository. With `[github]`, the server
    /// fetches it into a bare mirror under `data_dir`.
    pub url: PathBuf,
    /// The branch whose changes may run and whose policies are in force.
    pub default_branch: String,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            url: PathBuf::from("."),
            default_branch: "main".into(),
        }
    }
}

/// A role, from least to most specific; see [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access.
    Reader,
    /// The fleet monitor: asks before automated actions.
    Monitor,
    /// CI executors: claim, heartbeat, report.
    Executor,
    /// People: approve, proceed, retry, abandon, reset breakers.
    Operator,
}

impl Role {
    /// Every identity may read; each other endpoint needs its exact role.
    pub fn allows(self, needed: Role) -> bool {
        needed == Role::Reader || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Monitor => "monitor",
            Role::Executor => "executor",
            Role::Operator => "operator",
        })
    }
}

/// `[[tokens]]`: a named identity. The token itself is never stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The identity's name, recorded as the actor.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex sha256 of the token.
    pub sha256: String,
    /// The identity's GitHub login, if any.
    #[serde(default)]
    pub github: Option<String>,
    /// The identity's git author/committer emails.
    #[serde(default)]
    pub emails: Vec<String>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its position.
        message: String,
    },
}

impl Config {
    /// Loads the file named by `explicit`, else `CHANGEGATE_CONFIG`, else
    /// `./changegate.toml` if present, else the defaults; then applies env overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = Config::source(explicit);
        let mut config = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Invalid {
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => Config::default(),
        };
        if let Ok(url) = std::env::var("CHANGEGATE_DATABASE_URL") {
            config.server.database_url = url;
        }
        if let Ok(listen) = std::env::var("CHANGEGATE_LISTEN") {
            config.server.listen = listen;
        }
        Ok(config)
    }

    /// The file [`Config::load`] reads: `explicit`, else
    /// `CHANGEGATE_CONFIG`, else `./changegate.toml` if it exists.
    pub fn source(explicit: Option<&Path>) -> Option<PathBuf> {
        let from_env = std::env::var_os("CHANGEGATE_CONFIG").map(PathBuf::from);
        let path = explicit.map(Path::to_path_buf).or(from_env);
        path.or_else(|| Some(PathBuf::from("changegate.toml")).filter(|p| p.exists()))
    }

    /// Parses TOML text and checks what serde cannot.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for t in &config.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "token `{}`: sha256 must be 64 hex characters",
                    t.name
                ));
            }
        }
        for sink in &config.alerts.sinks {
            match sink.kind {
                SinkKind::Webhook if sink.secret_env.is_none() => {
                    return Err(format!("sink `{}`: a webhook sink needs `secret_env`, the variable holding its signing secret", sink.name))
                }
                SinkKind::Pagerduty if sink.routing_key_env.is_none() => {
                    return Err(format!("sink `{}`: a pagerduty sink needs `routing_key_env`", sink.name))
                }
                _ => {}
            }
        }
        let url = config.repo.url.to_string_lossy();
        if crate::github::parse_repo_url(&url)?.is_some() && config.github.is_none() {
            return Err("repo.url is a remote: it needs a [github] section, whose token or App the mirror fetches with".into());
        }
        if let Some(github) = &config.github {
            if github.owner_and_name().is_none() {
                return Err(format!(
                    "github.repository must be `owner/name`, not `{}`",
                    github.repository
                ));
            }
            let app = [
                github.app_id.is_some(),
                github.private_key_path.is_some(),
                github.installation_id.is_some(),
            ];
            if app.contains(&true) && app.contains(&false) {
                return Err("github: a GitHub App needs all of app_id, private_key_path and installation_id".into());
            }
        }
        let mut names: Vec<&str> = config.tokens.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("token name `{}` is used twice", w[0]));
        }
        Ok(config)
    }

    /// The database URL with a relative SQLite path placed under `data_dir`.
    pub fn database_url(&self) -> String {
        let url = &self.server.database_url;
        match url.strip_prefix("sqlite://") {
            Some(file) if !file.starts_with('/') && !file.starts_with(':') => {
                format!("sqlite://{}", self.server.data_dir.join(file).display())
            }
            _ => url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://./changegate.db");
    }

    #[test]
    fn a_remote_repo_url_is_https_without_credentials_and_with_github() {
        let github = "[github]\nrepository = \"o/r\"\n";
        let with = |url: &str| Config::parse(&format!("[repo]\nurl = {url:?}\n{github}"));
        assert!(with("https://github.com/o/r.git").is_ok());
        assert!(with("HTTP://github.com/o/r.git")
            .unwrap_err()
            .contains("must use https"));
        let err = with("https://x-access-token:ghs_1@github.com/o/r.git").unwrap_err();
        assert!(
            err.contains("must not carry") && !err.contains("ghs_1"),
            "{err}"
        );
        let alone = Config::parse("[repo]\nurl = \"https://github.com/o/r.git\"\n");
        assert!(alone.unwrap_err().contains("needs a [github] section"));
    }

    #[test]
    fn unknown_keys_and_bad_hashes_are_rejected() {
        assert!(Config::parse("[server]\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .contains("listen_addr"));
        let bad = "[[tokens]]\nname = \"a\"\nrole = \"operator\"\nsha256 = \"abc\"\n";
        assert!(Config::parse(bad).unwrap_err().contains("64 hex"));
    }

    #[test]
    fn readers_are_everyone_other_roles_are_exact() {
        assert!(Role::Executor.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Executor));
        assert!(Role::Operator.allows(Role::Operator));
    }
}
