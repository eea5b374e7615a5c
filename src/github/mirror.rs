//! The server's bare mirror of the change repository: fetched on events and
//! on a timer, so pull request heads can be read from git objects.
//!
//! `repo.url` is a local path or an HTTPS remote. Over HTTPS the fetch
//! authenticates as `x-access-token:<token>` (how GitHub takes installation
//! and personal tokens) through libgit2's credential callback: the token is
//! handed over in memory for that one fetch and is never written to the
//! mirror's config, a remote URL or a log line.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use git2::{
    Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks, Repository,
};
use octocrab::secrecy::{ExposeSecret, SecretString};

use crate::git::GitError;
use crate::metrics::Metrics;

/// How long to wait for a remote to accept a connection, and for each read.
const CONNECT_TIMEOUT_MS: i32 = 10_000;
const READ_TIMEOUT_MS: i32 = 60_000;

/// Why a fetch failed, as a word for logs and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The remote refused the credential (HTTP 401/403), or wanted one and
    /// none is configured.
    Auth,
    /// The TLS handshake failed: an untrusted or invalid certificate.
    Tls,
    /// No connection: refused, unresolvable, timed out.
    Unreachable,
    /// Anything else the remote answered (a 404, a broken pack…).
    Other,
}

impl FetchFailure {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchFailure::Auth => "auth",
            FetchFailure::Tls => "tls",
            FetchFailure::Unreachable => "unreachable",
            FetchFailure::Other => "other",
        }
    }

    /// Sorts a libgit2 error into a failure kind.
    fn of(e: &git2::Error) -> FetchFailure {
        let message = e.message();
        if e.code() == ErrorCode::Auth
            || message.contains("401")
            || message.contains("403")
            || message.contains("authentication")
        {
            FetchFailure::Auth
        } else if e.class() == ErrorClass::Ssl || e.code() == ErrorCode::Certificate {
            FetchFailure::Tls
        } else if matches!(e.class(), ErrorClass::Net | ErrorClass::Os)
            || message.contains("failed to connect")
            || message.contains("failed to resolve")
            || message.contains("timed out")
        {
            FetchFailure::Unreachable
        } else {
            FetchFailure::Other
        }
    }
}

/// A bare repository under `data_dir` mirroring `repo.url`.
#[derive(Clone)]
pub struct Mirror {
    path: PathBuf,
    url: String,
    /// Set only on the copy a fetch runs with ([`Mirror::with_credential`]).
    credential: Option<SecretString>,
    /// Failed fetches in a row, shared by every copy.
    streak: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("path", &self.path)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `https://host[:port]` of a URL: where a credential may go.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// Whether `url` names a remote reached over HTTP(S) rather than a path.
pub fn is_remote(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

impl Mirror {
    /// Creates the bare repository at `path` if it does not exist. A local
    /// `url` is made absolute, so the server's working directory never matters.
    pub fn open(path: &Path, url: &Path, metrics: Arc<Metrics>) -> Result<Mirror, GitError> {
        if !path.join("HEAD").exists() {
            Repository::init_bare(path)?;
        }
        let url = url.display().to_string();
        let url = if is_remote(&url) {
            init_git_transport();
            url
        } else {
            match std::fs::canonicalize(&url) {
                Ok(local) => local.display().to_string(),
                Err(_) => url,
            }
        };
        Ok(Mirror {
            path: path.to_path_buf(),
            url,
            credential: None,
            streak: Arc::new(AtomicU64::new(0)),
            metrics,
        })
    }

    /// The bare repository's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether fetching needs a credential (an HTTPS remote).
    pub fn is_remote(&self) -> bool {
        is_remote(&self.url)
    }

    /// A copy that fetches with `credential`.
    pub fn with_credential(mut self, credential: Option<SecretString>) -> Mirror {
        self.credential = credential;
        self
    }

    /// How long to wait before fetching again after the current streak of
    /// failures: nothing while healthy, then 1 s, 2 s, 4 s … up to `cap`.
    pub fn backoff(&self, cap: Duration) -> Option<Duration> {
        let streak = self.streak.load(Ordering::SeqCst);
        (streak > 0).then(|| {
            let ms = crate::clock::backoff_ms(1_000, streak as i64 - 1, cap.as_millis() as i64);
            Duration::from_millis(ms as u64)
        })
    }

    /// Fetches `refspecs` (forced, pruning nothing). Blocking: call it from
    /// a blocking task. A failure is logged once per streak, with the
    /// remote's answer, and counted in `/metrics`.
    pub fn fetch(&self, refspecs: &[String]) -> Result<(), GitError> {
        let repo = Repository::open_bare(&self.path)?;
        // Anonymous: nothing about the remote, let alone a credential, is
        // written to the mirror's config.
        let mut remote = repo.remote_anonymous(&self.url)?;
        let mut options = FetchOptions::new();
        if let Some(token) = &self.credential {
            let mut offered = false;
            let home = origin(&self.url).to_string();
            let mut callbacks = RemoteCallbacks::new();
            callbacks.credentials(move |url, _user, allowed| {
                // Only to the configured host: a redirect elsewhere gets no token.
                if origin(url) != home {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        ErrorClass::Http,
                        format!(
                            "{} asked for credentials; the token goes only to {home}",
                            origin(url)
                        ),
                    ));
                }
                // libgit2 asks again after a refusal: answer once, so a bad
                // token is one 401, not a loop.
                if offered || !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        ErrorClass::Http,
                        "the remote refused the token (HTTP 401)",
                    ));
                }
                offered = true;
                Cred::userpass_plaintext("x-access-token", token.expose_secret())
            });
            options.remote_callbacks(callbacks);
        }
        match remote.fetch(refspecs, Some(&mut options), None) {
            Ok(()) => {
                let failures = self.streak.swap(0, Ordering::SeqCst);
                self.metrics.mirror_fetch_failing.set(0);
                if failures > 0 {
                    tracing::info!(remote = %self.url, failures, "mirror fetch recovered");
                }
                Ok(())
            }
            Err(e) => {
                let reason = FetchFailure::of(&e);
                let streak = self.streak.fetch_add(1, Ordering::SeqCst) + 1;
                self.metrics.mirror_fetch_failed(reason.as_str());
                if streak == 1 {
                    tracing::warn!(remote = %self.url, reason = reason.as_str(), error = %e.message(), "mirror fetch failed; retrying with backoff");
                } else {
                    tracing::debug!(remote = %self.url, reason = reason.as_str(), streak, error = %e.message(), "mirror fetch failed again");
                }
                Err(GitError::Fetch {
                    remote: self.url.clone(),
                    reason: reason.as_str(),
                    message: e.message().to_string(),
                })
            }
        }
    }

    /// The default branch and every pull request head.
    pub fn fetch_all(&self, default_branch: &str) -> Result<(), GitError> {
        self.fetch(&[
            format!("+refs/heads/{default_branch}:refs/heads/{default_branch}"),
            "+refs/pull/*/head:refs/pull/*/head".to_string(),
        ])
    }

    /// The default branch and one pull request's head.
    pub fn fetch_pull(&self, default_branch: &str, number: i64) -> Result<(), GitError> {
        self.fetch(&[
            format!("+refs/heads/{default_branch}:refs/heads/{default_branch}"),
            format!("+refs/pull/{number}/head:refs/pull/{number}/head"),
        ])
    }
}

/// Process-wide libgit2 settings for HTTPS, set once: timeouts, so a remote
/// that stops answering fails the fetch instead of holding the mirror, and
/// `SSL_CERT_FILE` as roots trusted besides the system's (libgit2 loads
/// OpenSSL's default paths first; this adds to them). `main` calls it
/// before any thread starts: libgit2's initialisation writes OpenSSL's
/// certificate variables into the environment.
pub fn init_git_transport() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2's global options, set once, before any fetch runs.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(READ_TIMEOUT_MS);
            if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
                if let Err(e) = git2::opts::set_ssl_cert_file(Path::new(&file)) {
                    // Before logging is set up: straight to stderr.
                    eprintln!(
                        "warning: SSL_CERT_FILE {} not loaded: {}",
                        Path::new(&file).display(),
                        e.message()
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn a_credential_goes_only_to_the_configured_scheme_host_and_port() {
        let home = origin("https://github.com/acme/infra.git");
        assert_eq!(home, "https://github.com");
        assert_eq!(
            origin("https://github.com/acme/infra.git/info/refs?service=x"),
            home
        );
        assert_ne!(origin("https://github.com.evil.test/acme/infra.git"), home);
        assert_ne!(origin("https://github.com:8443/acme/infra.git"), home);
        assert_ne!(origin("http://github.com/acme/infra.git"), home);
        assert_eq!(origin("https://ghe.example.com"), "https://ghe.example.com");
    }
}
