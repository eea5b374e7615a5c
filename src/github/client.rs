//! GitHub's REST API through octocrab: commit statuses, team membership,
//! pull requests and reviews, with rate limits respected and 5xx retried.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use octocrab::models::{AppId, InstallationId};
use octocrab::secrecy::SecretString;
use octocrab::{FromResponse, Octocrab, Page};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::events::{PullRequest, Review};
use crate::config::GithubConfig;

/// Why an API call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The configuration cannot make a client.
    #[error("github: {0}")]
    Config(String),
    /// No answer (connection refused, timeout, TLS).
    #[error("github {call}: {message}")]
    Transport {
        /// Method and path.
        call: String,
        /// Why.
        message: String,
    },
    /// An answer other than success, after the retries.
    #[error("github {call}: HTTP {status}: {message}")]
    Status {
        /// Method and path.
        call: String,
        /// The status code.
        status: u16,
        /// GitHub's `message`, or the body.
        message: String,
    },
    /// The rate limit resets later than we are willing to wait.
    #[error("github {call}: rate limited for another {wait_secs} s")]
    RateLimited {
        /// Method and path.
        call: String,
        /// Seconds until the reset.
        wait_secs: u64,
    },
    /// The answer did not have the documented shape.
    #[error("github {call}: unexpected answer: {message}")]
    Shape {
        /// Method and path.
        call: String,
        /// serde's explanation.
        message: String,
    },
}

/// The longest a call waits for a rate limit to reset before giving up.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

/// A GitHub client for one repository.
pub struct GithubClient {
    crab: Octocrab,
    owner: String,
    name: String,
    attempts: u32,
    /// How the mirror authenticates its fetches.
    git: GitCredential,
    /// Set when an answer said the rate limit is used up: no call is made
    /// before this instant.
    blocked_until: Mutex<Option<Instant>>,
}

/// The credential an HTTPS mirror fetches with.
enum GitCredential {
    /// The App's installation token, minted and renewed by octocrab.
    Installation,
    /// The token from `token_env`.
    Token(SecretString),
    /// None: a public repository.
    Anonymous,
}

/// An installation token with less than this left is renewed before a
/// fetch (GitHub's last an hour), so a long fetch never outlives its token.
const TOKEN_MARGIN_SECS: i64 = 300;

/// What to do after an answer.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Done,
    /// Retry after this long (backoff or rate limit reset).
    RetryAfter(Duration),
    Fail,
}

/// The retry decision for an answer: 5xx backs off; 403 and 429 wait for
/// the reset named by `retry-after` or `x-ratelimit-reset` when they say
/// the rate limit is exhausted; other statuses fail at once.
fn next_step(status: u16, headers: &http::HeaderMap, attempt: u32, now_unix: u64) -> Next {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match status {
        200..=299 => Next::Done,
        403 | 429 => {
            if let Some(secs) = header("retry-after") {
                Next::RetryAfter(Duration::from_secs(secs))
            } else if header("x-ratelimit-remaining") == Some(0) {
                let reset = header("x-ratelimit-reset").unwrap_or(now_unix + 60);
                Next::RetryAfter(Duration::from_secs(reset.saturating_sub(now_unix) + 1))
            } else if status == 429 {
                Next::RetryAfter(backoff(attempt))
            } else {
                // A plain 403 is a permission problem: retrying will not help.
                Next::Fail
            }
        }
        500..=599 => Next::RetryAfter(backoff(attempt)),
        _ => Next::Fail,
    }
}

/// 0.5 s, 1 s, 2 s … capped at 32 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(crate::clock::backoff_ms(500, i64::from(attempt), 32_000) as u64)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl GithubClient {
    /// A client from `[github]`: a GitHub App's installation when `app_id`
    /// is set, else the token in `token_env` (none is allowed, for public
    /// repositories and tests).
    pub fn new(config: &GithubConfig) -> Result<GithubClient, ApiError> {
        let (owner, name) = config
            .owner_and_name()
            .ok_or_else(|| ApiError::Config("github.repository must be owner/name".into()))?;
        let builder = Octocrab::builder()
            .base_uri(config.api_url.as_str())
            .map_err(|e| ApiError::Config(format!("api_url `{}`: {e}", config.api_url)))?;
        let mut git = GitCredential::Anonymous;
        let crab = match (
            config.app_id,
            &config.private_key_path,
            config.installation_id,
        ) {
            (Some(app), Some(key_path), Some(installation)) => {
                git = GitCredential::Installation;
                let pem = std::fs::read(key_path).map_err(|e| {
                    ApiError::Config(format!("private key {}: {e}", key_path.display()))
                })?;
                let key = octocrab::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    ApiError::Config(format!("private key {}: {e}", key_path.display()))
                })?;
                builder
                    .app(AppId(app), key)
                    .build()
                    .map_err(|e| ApiError::Config(e.to_string()))?
                    .installation(InstallationId(installation))
                    .map_err(|e| ApiError::Config(e.to_string()))?
            }
            _ => match std::env::var(&config.token_env) {
                Ok(token) if !token.is_empty() => {
                    git = GitCredential::Token(SecretString::from(token.clone()));
                    builder.personal_token(token).build()
                }
                _ => builder.build(),
            }
            .map_err(|e| ApiError::Config(e.to_string()))?,
        };
        Ok(GithubClient {
            crab,
            owner: owner.to_string(),
            name: name.to_string(),
            attempts: config.api_attempts.max(1),
            git,
            blocked_until: Mutex::new(None),
        })
    }

    /// Sends one request, retrying per [`next_step`], and returns the
    /// successful answer.
    async fn send(
        &self,
        method: http::Method,
        uri: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<http::Response<octocrab::OctoBody>, ApiError> {
        let call = format!("{method} {}", uri.split('?').next().unwrap_or(uri));
        let mut attempt = 0;
        loop {
            let blocked = *self.blocked_until.lock().expect("rate limit lock");
            if let Some(until) = blocked {
                let wait = until.saturating_duration_since(Instant::now());
                if wait > MAX_RATE_LIMIT_WAIT {
                    return Err(ApiError::RateLimited {
                        call,
                        wait_secs: wait.as_secs(),
                    });
                }
                tokio::time::sleep(wait).await;
            }
            let sent = match method {
                http::Method::POST => self.crab._post(uri, body).await,
                http::Method::PATCH => self.crab._patch(uri, body).await,
                _ => self.crab._get(uri).await,
            };
            let response = sent.map_err(|e| ApiError::Transport {
                call: call.clone(),
                message: e.to_string(),
            });
            let response = match response {
                Ok(r) => r,
                Err(e) if attempt + 1 < self.attempts => {
                    tracing::warn!(error = %e, attempt, "github call failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let remaining = headers
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            *self.blocked_until.lock().expect("rate limit lock") = None;
            match next_step(status, &headers, attempt, unix_now()) {
                Next::Done => {
                    if remaining == Some(0) {
                        // Used up by this call: the next one waits for the reset.
                        if let Next::RetryAfter(wait) = next_step(403, &headers, 0, unix_now()) {
                            *self.blocked_until.lock().expect("rate limit lock") =
                                Some(Instant::now() + wait);
                        }
                    }
                    // Read whole, so the caller parses a complete body.
                    let (parts, body) = response.into_parts();
                    let bytes = body.collect().await.map_err(|e| ApiError::Transport {
                        call: call.clone(),
                        message: e.to_string(),
                    })?;
                    return Ok(http::Response::from_parts(
                        parts,
                        octocrab::OctoBody::from(bytes.to_bytes()),
                    ));
                }
                Next::RetryAfter(wait) if attempt + 1 < self.attempts => {
                    if wait > MAX_RATE_LIMIT_WAIT {
                        return Err(ApiError::RateLimited {
                            call,
                            wait_secs: wait.as_secs(),
                        });
                    }
                    tracing::warn!(status, wait_ms = wait.as_millis() as u64, attempt, %call, "github asked us to wait; retrying");
                    *self.blocked_until.lock().expect("rate limit lock") =
                        Some(Instant::now() + wait);
                    attempt += 1;
                }
                _ => {
                    let text = self.crab.body_to_string(response).await.unwrap_or_default();
                    let message = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    return Err(ApiError::Status {
                        call,
                        status,
                        message,
                    });
                }
            }
        }
    }

    async fn get_json<T: FromResponse>(&self, uri: &str) -> Result<T, ApiError> {
        let response = self.send(http::Method::GET, uri, None).await?;
        T::from_response(response)
            .await
            .map_err(|e| ApiError::Shape {
                call: format!("GET {uri}"),
                message: e.to_string(),
            })
    }

    /// Every item of a paginated list, following the `Link: rel="next"` header.
    async fn all_pages<T: DeserializeOwned>(&self, first: &str) -> Result<Vec<T>, ApiError> {
        let mut items = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(uri) = next {
            let page: Page<T> = self.get_json(&uri).await?;
            items.extend(page.items);
            next = page.next.map(|u| u.to_string());
        }
        Ok(items)
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", self.owner, self.name)
    }

    /// The configured repository, with the numeric id deliveries are
    /// matched by (GitHub answers a renamed repository's old name with a
    /// redirect, which the client follows).
    pub async fn repository(&self) -> Result<super::events::Repository, ApiError> {
        self.get_json(&self.repo_path()).await
    }

    /// Sets commit status `context` on `sha`.
    pub async fn post_status(&self, sha: &str, status: &StatusUpdate) -> Result<(), ApiError> {
        let body = serde_json::to_value(status).expect("a status serialises");
        self.send(
            http::Method::POST,
            &format!("{}/statuses/{sha}", self.repo_path()),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Whether `login` is an active member of team `org/slug`.
    pub async fn is_team_member(
        &self,
        org: &str,
        slug: &str,
        login: &str,
    ) -> Result<bool, ApiError> {
        #[derive(serde::Deserialize)]
        struct Membership {
            state: String,
        }
        let uri = format!("/orgs/{org}/teams/{slug}/memberships/{login}");
        match self.get_json::<Membership>(&uri).await {
            Ok(m) => Ok(m.state == "active"),
            Err(ApiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `login` has write, maintain or admin permission on the
    /// repository. Not a collaborator (404) is no.
    pub async fn can_write(&self, login: &str) -> Result<bool, ApiError> {
        #[derive(serde::Deserialize)]
        struct Permission {
            permission: String,
            #[serde(default)]
            role_name: Option<String>,
        }
        let uri = format!("{}/collaborators/{login}/permission", self.repo_path());
        match self.get_json::<Permission>(&uri).await {
            // `permission` folds maintain into write; `role_name` says it.
            Ok(p) => Ok(matches!(p.permission.as_str(), "admin" | "write")
                || matches!(p.role_name.as_deref(), Some("admin" | "maintain" | "write"))),
            Err(ApiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every open pull request.
    pub async fn open_pulls(&self) -> Result<Vec<PullRequest>, ApiError> {
        self.all_pages(&format!(
            "{}/pulls?state=open&per_page=100",
            self.repo_path()
        ))
        .await
    }

    /// One pull request.
    pub async fn pull(&self, number: u64) -> Result<PullRequest, ApiError> {
        self.get_json(&format!("{}/pulls/{number}", self.repo_path()))
            .await
    }

    /// GitHub logins of the authors and committers of a pull request's
    /// commits: the people who pushed to it, as far as the REST API can
    /// tell (it does not name pushers).
    pub async fn commit_logins(
        &self,
        number: u64,
    ) -> Result<std::collections::BTreeSet<String>, ApiError> {
        #[derive(serde::Deserialize)]
        struct Commit {
            author: Option<super::events::Account>,
            committer: Option<super::events::Account>,
        }
        let commits: Vec<Commit> = self
            .all_pages(&format!(
                "{}/pulls/{number}/commits?per_page=100",
                self.repo_path()
            ))
            .await?;
        Ok(commits
            .into_iter()
            .flat_map(|c| [c.author, c.committer])
            .flatten()
            .map(|a| a.login)
            .collect())
    }

    /// Every comment on a pull request (its issue), oldest first.
    pub async fn comments(&self, number: u64) -> Result<Vec<IssueComment>, ApiError> {
        self.all_pages(&format!(
            "{}/issues/{number}/comments?per_page=100",
            self.repo_path()
        ))
        .await
    }

    /// Creates a comment on a pull request; returns its id.
    pub async fn create_comment(&self, number: u64, body: &str) -> Result<u64, ApiError> {
        let uri = format!("{}/issues/{number}/comments", self.repo_path());
        let response = self
            .send(
                http::Method::POST,
                &uri,
                Some(&serde_json::json!({ "body": body })),
            )
            .await?;
        let created = IssueComment::from_response(response)
            .await
            .map_err(|e| ApiError::Shape {
                call: format!("POST {uri}"),
                message: e.to_string(),
            })?;
        Ok(created.id)
    }

    /// Replaces a comment's body.
    pub async fn update_comment(&self, id: u64, body: &str) -> Result<(), ApiError> {
        self.send(
            http::Method::PATCH,
            &format!("{}/issues/comments/{id}", self.repo_path()),
            Some(&serde_json::json!({ "body": body })),
        )
        .await
        .map(|_| ())
    }

    /// The credential for fetching the repository over HTTPS: the App's
    /// installation token (renewed when less than five minutes are left),
    /// the configured token, or none.
    pub async fn git_credential(&self) -> Result<Option<SecretString>, ApiError> {
        match &self.git {
            GitCredential::Installation => self
                .crab
                .installation_token_with_buffer(chrono::Duration::seconds(TOKEN_MARGIN_SECS))
                .await
                .map(Some)
                .map_err(|e| ApiError::Transport {
                    call: "POST /app/installations/{id}/access_tokens".into(),
                    message: e.to_string(),
                }),
            GitCredential::Token(token) => Ok(Some(token.clone())),
            GitCredential::Anonymous => Ok(None),
        }
    }

    /// The login this client acts as (`GET /user`); `None` for a GitHub
    /// App's installation, which has no user (its comments name the App).
    pub async fn login(&self) -> Result<Option<String>, ApiError> {
        #[derive(serde::Deserialize)]
        struct User {
            login: String,
        }
        match self.get_json::<User>("/user").await {
            Ok(u) => Ok(Some(u.login)),
            Err(ApiError::Status {
                status: 401 | 403 | 404,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every review of a pull request, oldest first.
    pub async fn reviews(&self, number: u64) -> Result<Vec<Review>, ApiError> {
        self.all_pages(&format!(
            "{}/pulls/{number}/reviews?per_page=100",
            self.repo_path()
        ))
        .await
    }
}

/// A comment on a pull request (`/repos/{o}/{r}/issues/{n}/comments`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IssueComment {
    /// Its id.
    pub id: u64,
    /// Its Markdown.
    #[serde(default)]
    pub body: Option<String>,
    /// Who wrote it.
    #[serde(default)]
    pub user: Option<super::events::Account>,
    /// The App that wrote it, when one did.
    #[serde(default)]
    pub performed_via_github_app: Option<AppRef>,
}

/// A GitHub App, as a comment names it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AppRef {
    /// The App's id.
    pub id: u64,
}

/// A commit status (`POST /repos/{o}/{r}/statuses/{sha}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusUpdate {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// Shown next to the check; GitHub keeps 140 characters.
    pub description: String,
    /// `changegate/<change-id>`.
    pub context: String,
    /// The change's page.
    pub target_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn an_exhausted_rate_limit_waits_for_its_reset() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1010"),
        ]);
        assert_eq!(
            next_step(403, &h, 0, 1000),
            Next::RetryAfter(Duration::from_secs(11))
        );
        assert_eq!(
            next_step(429, &h, 0, 1000),
            Next::RetryAfter(Duration::from_secs(11))
        );
    }

    #[test]
    fn retry_after_wins_and_a_plain_403_fails() {
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(
            next_step(429, &h, 0, 0),
            Next::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(next_step(403, &headers(&[]), 0, 0), Next::Fail);
        assert_eq!(next_step(404, &headers(&[]), 0, 0), Next::Fail);
    }

    #[test]
    fn server_errors_back_off_exponentially() {
        assert_eq!(
            next_step(502, &headers(&[]), 0, 0),
            Next::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            next_step(502, &headers(&[]), 2, 0),
            Next::RetryAfter(Duration::from_millis(2000))
        );
        assert_eq!(next_step(201, &headers(&[]), 0, 0), Next::Done);
    }
}
