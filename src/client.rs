//! The HTTP client of the changegate API: the CLI and the tests both use it.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::wire::{ClaimGrant, Report};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `CHANGEGATE_URL` or `CHANGEGATE_TOKEN` is missing.
    #[error("{0} is not set")]
    MissingEnv(&'static str),
    /// The server could not be reached or answered garbage.
    #[error("cannot reach {url}: {source}")]
    Http {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server refused: status, a stable reason word, and its detail.
    #[error("{status}: {reason}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// E.g. `not-approved`, `forbidden`.
        reason: String,
        /// For a person.
        detail: String,
    },
}

impl ClientError {
    /// Worth trying again: the server was unreachable, or answered 503
    /// (its database is down).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Http { .. } | ClientError::Refused { status: 503, .. }
        )
    }

    /// The refusal's reason word, when the server refused.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "error")]
    reason: Option<String>,
    detail: Option<String>,
}

/// A client bound to one server and one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with a bearer token.
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a TLS-free HTTP client always builds");
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    /// From `CHANGEGATE_URL` and `CHANGEGATE_TOKEN`.
    pub fn from_env() -> Result<Self, ClientError> {
        let url = std::env::var("CHANGEGATE_URL")
            .map_err(|_| ClientError::MissingEnv("CHANGEGATE_URL"))?;
        let token = std::env::var("CHANGEGATE_TOKEN")
            .map_err(|_| ClientError::MissingEnv("CHANGEGATE_TOKEN"))?;
        Ok(Client::new(&url, &token))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .map_err(|source| ClientError::Http { url, source });
        }
        let body: ErrorBody = resp.json().unwrap_or(ErrorBody {
            reason: None,
            detail: None,
        });
        Err(ClientError::Refused {
            status: status.as_u16(),
            reason: body
                .reason
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_lowercase()),
            detail: body.detail.unwrap_or_default(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, path, None)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, ClientError> {
        self.call(reqwest::Method::POST, path, Some(&body))
    }

    /// Every change with its status.
    pub fn changes(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/changes")
    }

    /// One change's status.
    pub fn change(&self, id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/v1/changes/{id}"))
    }

    /// Approves `id` at `digest`.
    pub fn approve(&self, id: &str, digest: &str, comment: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/approvals"),
            json!({"digest": digest, "comment": comment}),
        )
    }

    /// Claims the next step of `id`.
    pub fn claim(
        &self,
        id: &str,
        digest: &str,
        label: Option<&str>,
    ) -> Result<ClaimGrant, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/claim"),
            json!({"digest": digest, "executor": label}),
        )
    }

    /// Asks before an automated fleet action on `target` (the fleet
    /// monitor's call): `Ok` when allowed, refused 423 when the target is
    /// locked, 429 when the action's budget is spent.
    pub fn action(&self, actor: &str, action: &str, target: &str) -> Result<Value, ClientError> {
        self.post(
            "/api/v1/actions",
            json!({"actor": actor, "action": action, "target": target}),
        )
    }

    /// Renews an attempt's lease.
    pub fn heartbeat(&self, attempt: &str) -> Result<Value, ClientError> {
        self.post(&format!("/api/v1/attempts/{attempt}/heartbeat"), json!({}))
    }

    /// Reports an attempt's outcome.
    pub fn report(&self, attempt: &str, report: &Report) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/attempts/{attempt}/report"),
            serde_json::to_value(report).unwrap_or_default(),
        )
    }

    /// The go-ahead for a step.
    pub fn proceed(&self, id: &str, step: &str, reason: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/proceed"),
            json!({"step": step, "reason": reason}),
        )
    }

    /// Re-opens the failed step.
    pub fn retry(&self, id: &str, reason: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/retry"),
            json!({"reason": reason}),
        )
    }

    /// Asks for the rollback of a failed change.
    pub fn rollback(&self, id: &str, reason: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/rollback"),
            json!({"reason": reason}),
        )
    }

    /// Abandons the change.
    pub fn abandon(&self, id: &str, reason: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/v1/changes/{id}/abandon"),
            json!({"reason": reason}),
        )
    }

    /// The step breaker.
    pub fn breaker(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/breaker")
    }

    /// Closes the step breaker, or with `action`, lifts that action kind's refusal.
    pub fn reset_breaker(&self, reason: &str, action: Option<&str>) -> Result<Value, ClientError> {
        self.post(
            "/api/v1/breaker/reset",
            json!({"reason": reason, "action": action}),
        )
    }

    /// Every alert with its deliveries.
    pub fn alerts(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/alerts")
    }
}
