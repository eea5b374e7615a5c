//! The server's bare mirror of the change repository: fetched on events and
//! on a timer, so pull request heads can be read from git objects.
//!
//! `repo.url` is a local path or an HTTPS remote. Over HTTPS the fetch
//! authenticates as `x-access-token:<token>` (how GitHub takes installation
//! and personal tokens) through libgit2's credential callback: the token is
//! handed over in memory for that one fetch and is never written to the
//! mirror's config, a remote URL or a log line. Redirects are not followed
//! and the user's git configuration is not read, so nothing but `repo.url`
//! decides where the token goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use git2::{
    ConfigLevel, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks,
    RemoteRedirect, Repository,
};
use octocrab::secrecy::{ExposeSecret, SecretString};

use crate::git::{ChangeRepo, GitError};
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
            || message.contains("status code: 401")
            || message.contains("status code: 403")
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
    /// What libgit2 fetches: an absolute path, or the HTTPS URL.
    url: String,
    /// The HTTPS remote, when `url` is one.
    remote: Option<url::Url>,
    /// Set only on the copy a fetch runs with ([`Mirror::with_credential`]).
    credential: Option<SecretString>,
    /// Failed fetches in a row, shared by every copy.
    streak: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// The mirror opened for reading, kept between operations (see
    /// [`Mirror::read`]); shared by every copy.
    kept: Arc<std::sync::Mutex<Option<ChangeRepo>>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("path", &self.path)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Reads `repo.url`: `Ok(None)` for a local path (or `file://`), the URL
/// for an HTTPS remote. Anything else that names a scheme is refused, as
/// is a user or password in the URL: the fetch sends a token, and a URL is
/// logged. Errors never repeat the URL, which may hold a secret.
pub fn parse_repo_url(raw: &str) -> Result<Option<url::Url>, String> {
    if !raw.contains("://") {
        return Ok(None);
    }
    let url = url::Url::parse(raw).map_err(|e| format!("repo.url is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("repo.url must not carry a user or token; the mirror authenticates with [github]'s token or App".into());
    }
    match url.scheme() {
        "file" => Ok(None),
        "https" if url.host_str().is_some() => Ok(Some(url)),
        "https" => Err("repo.url names no host".into()),
        other => Err(format!(
            "repo.url uses `{other}`; a remote must use https (the fetch sends a token)"
        )),
    }
}

/// Scheme, host (lowercase) and port, defaulted: where a credential may go.
fn origin(url: &url::Url) -> (String, Option<String>, Option<u16>) {
    (
        url.scheme().to_string(),
        url.host_str().map(str::to_ascii_lowercase),
        url.port_or_known_default(),
    )
}

impl Mirror {
    /// Creates the bare repository at `path` if it does not exist. A local
    /// `url` is made absolute, so the server's working directory never matters.
    pub fn open(path: &Path, url: &Path, metrics: Arc<Metrics>) -> Result<Mirror, GitError> {
        if !path.join("HEAD").exists() {
            Repository::init_bare(path)?;
        }
        let raw = url.display().to_string();
        let remote = parse_repo_url(&raw).map_err(|e| GitError::Git(git2::Error::from_str(&e)))?;
        let url = match &remote {
            Some(remote) => remote.to_string(),
            None => match std::fs::canonicalize(&raw) {
                Ok(local) => local.display().to_string(),
                Err(_) => raw,
            },
        };
        Ok(Mirror {
            path: path.to_path_buf(),
            url,
            remote,
            credential: None,
            streak: Arc::new(AtomicU64::new(0)),
            metrics,
            kept: Arc::default(),
        })
    }

    /// The bare repository's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether fetching needs a credential (an HTTPS remote).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// A copy that fetches with `credential`.
    pub fn with_credential(mut self, credential: Option<SecretString>) -> Mirror {
        self.credential = credential;
        self
    }

    /// Runs `work` on the mirror opened once and kept open. libgit2 keeps
    /// parsed trees in each open repository's object cache
    /// ([`crate::git::init_object_reads`]), so the default branch's
    /// `changes/` folder is parsed once, not again for every pull request
    /// event; only what the event's head changed is new. Objects a later
    /// fetch adds are found (libgit2 rescans packs on a miss) and refs are
    /// read from disk each time.
    pub fn read<T>(
        &self,
        work: impl FnOnce(&ChangeRepo) -> Result<T, GitError>,
    ) -> Result<T, GitError> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let repo = match kept.take() {
            Some(repo) => repo,
            None => ChangeRepo::open(&self.path)?,
        };
        let result = work(&repo);
        *kept = Some(repo);
        result
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
        // A redirect could name another host: it fails the fetch instead
        // (after a rename on GitHub, update `repo.url`).
        options.follow_redirects(RemoteRedirect::None);
        if let (Some(token), Some(remote)) = (&self.credential, &self.remote) {
            let mut offered = false;
            let home = origin(remote);
            let mut callbacks = RemoteCallbacks::new();
            callbacks.credentials(move |url, user, allowed| {
                // Only to the configured origin, with no user of the URL's own.
                let asker = url::Url::parse(url).ok();
                if user.is_some() || asker.as_ref().map(origin) != Some(home.clone()) {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        ErrorClass::Http,
                        format!(
                            "credentials asked for by another origin; the token goes only to {}",
                            home.1.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                // libgit2 asks again after a refusal: answer once, so a bad
                // token is one 401, not a loop.
                if offered || !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        ErrorClass::Http,
                        "the remote refused the token",
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
            Err(e) => Err(self.failed(FetchFailure::of(&e), e.message())),
        }
    }

    /// Counts a failed fetch (or a credential that could not be had), logs
    /// it when it starts a streak, and says what failed.
    pub fn failed(&self, reason: FetchFailure, message: &str) -> GitError {
        let streak = self.streak.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.mirror_fetch_failed(reason.as_str());
        if streak == 1 {
            tracing::warn!(remote = %self.url, reason = reason.as_str(), error = %message, "mirror fetch failed; retrying with backoff");
        } else {
            tracing::debug!(remote = %self.url, reason = reason.as_str(), streak, error = %message, "mirror fetch failed again");
        }
        GitError::Fetch {
            remote: self.url.clone(),
            reason: reason.as_str(),
            message: message.to_string(),
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

/// Process-wide libgit2 settings, set once by `main` before any thread
/// starts (libgit2's initialisation writes OpenSSL's certificate variables
/// into the environment, and so does this):
/// - no system, XDG or global git configuration: an `insteadOf` or a
///   credential in `~/.gitconfig` must not steer where the token goes;
/// - timeouts, so a remote that stops answering fails the fetch instead of
///   holding the mirror;
/// - the system's roots, plus the certificates in `SSL_CERT_FILE` besides
///   them (OpenSSL would read that file *instead of* the system bundle).
pub fn init_git_transport() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let extra = std::env::var_os("SSL_CERT_FILE");
        if extra.is_some() {
            std::env::remove_var("SSL_CERT_FILE");
        }
        // SAFETY: libgit2's global options, set once, before any git work
        // and (from `main`) before any other thread exists.
        unsafe {
            for level in [
                ConfigLevel::System,
                ConfigLevel::XDG,
                ConfigLevel::Global,
                ConfigLevel::ProgramData,
            ] {
                let _ = git2::opts::set_search_path(level, "");
            }
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(READ_TIMEOUT_MS);
            if let Some(file) = &extra {
                // Initialises OpenSSL with the system's default paths, then adds.
                if let Err(e) = git2::opts::set_ssl_cert_file(Path::new(file)) {
                    // Before logging is set up: straight to stderr.
                    eprintln!(
                        "warning: SSL_CERT_FILE {} not loaded: {}",
                        Path::new(file).display(),
                        e.message()
                    );
                }
            }
        }
        // The API client (rustls) reads it too: there it is the only roots.
        if let Some(file) = extra {
            std::env::set_var("SSL_CERT_FILE", file);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{origin, parse_repo_url};

    #[test]
    fn repo_urls_are_https_without_credentials_and_never_echoed() {
        assert!(parse_repo_url("/srv/infra").unwrap().is_none());
        assert!(parse_repo_url("file:///srv/infra").unwrap().is_none());
        let url = parse_repo_url("HTTPS://GitHub.com/acme/infra.git")
            .unwrap()
            .unwrap();
        assert_eq!(
            origin(&url),
            ("https".into(), Some("github.com".into()), Some(443))
        );
        for bad in [
            "http://github.com/acme/infra.git",
            "HTTP://x-access-token:ghp_secret@github.com/o/r.git",
            "https://x-access-token:ghp_secret@github.com/o/r.git",
            "https://ghp_secret@github.com/o/r.git",
            "https://github.com%2F@evil.test/o/r.git",
            "ssh://git@github.com/o/r.git",
        ] {
            let err = parse_repo_url(bad).unwrap_err();
            assert!(
                !err.contains("secret") && !err.contains("evil"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_origin_is_scheme_host_and_port_with_defaults() {
        let at = |u: &str| origin(&url::Url::parse(u).unwrap());
        let home = at("https://github.com/acme/infra.git");
        assert_eq!(at("https://GITHUB.com:443/acme/infra.git/info/refs"), home);
        assert_ne!(at("https://github.com.evil.test/acme/infra.git"), home);
        assert_ne!(at("https://github.com:8443/acme/infra.git"), home);
        assert_ne!(at("http://github.com/acme/infra.git"), home);
        assert_ne!(at("https://github.com%2F@evil.test/o/r.git"), home);
    }
}
