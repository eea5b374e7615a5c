//! `POST /webhooks/github`: verified, deduplicated and stored durably
//! before the reply (SPEC §4).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::AppState;

/// GitHub's own limit on a delivery's size.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Does `signature` (`sha256=<hex>`) match the HMAC-SHA256 of `body`?
/// The comparison is constant-time (`Mac::verify_slice`).
pub fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(Ok(claimed)) = signature.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&claimed).is_ok()
}

/// A header value as logged: at most 64 characters, so a client cannot
/// fill the log with one request.
fn loggable(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_string(),
    }
}

fn reply(status: StatusCode, body: Value) -> (StatusCode, Json<Value>) {
    (status, Json(body))
}

/// Memory that webhook bodies being received may hold at once, counted in
/// KiB permits. A body holds its permits from its first byte until it is
/// stored (or refused), so concurrent large bodies cannot exhaust memory.
///
/// A body must also arrive whole within a deadline (10 s plus one second per
/// MiB declared, at most `server.body_timeout`), counted from its first
/// byte, so a client that reserves budget and then dribbles cannot hold it
/// for longer than that.
#[derive(Clone)]
pub struct BodyBudget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    longest: std::time::Duration,
}

impl BodyBudget {
    /// A budget of `mib` MiB (never less than one largest delivery); no
    /// body takes longer than `longest` to arrive.
    pub fn new(mib: u64, longest: std::time::Duration) -> BodyBudget {
        let kib = (mib * 1024).max((MAX_BODY_BYTES / 1024 + 1) as u64);
        BodyBudget {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(kib as usize)),
            longest,
        }
    }

    fn deadline(&self, declared: Option<usize>) -> std::time::Duration {
        let mib = declared.unwrap_or(MAX_BODY_BYTES) as u64 / (1024 * 1024);
        std::time::Duration::from_secs(10 + mib).min(self.longest)
    }
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    OverBudget,
    TooSlow,
    Broken(String),
}

/// Discards the rest of a body that is somewhat too large, so the client
/// reads a clean 413 rather than a reset connection; one that claims to be
/// far larger is not read at all. Nothing is kept, and the body timeout
/// bounds the wait.
async fn too_large(mut body: axum::body::Body, declared: Option<usize>) -> BodyError {
    use http_body_util::BodyExt;
    if declared.is_none_or(|n| n <= 2 * MAX_BODY_BYTES) {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > 2 * MAX_BODY_BYTES {
                break;
            }
        }
    }
    BodyError::TooLarge
}

/// Reads the body within the budget: the declared length is reserved up
/// front, a body without one reserves as it arrives.
async fn read_body(
    body: axum::body::Body,
    declared: Option<usize>,
    budget: &BodyBudget,
) -> Result<(Bytes, tokio::sync::SemaphorePermit<'_>), BodyError> {
    use http_body_util::BodyExt;
    let kib = |bytes: usize| (bytes / 1024 + 1) as u32;
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large(body, declared).await);
    }
    let mut permit = budget
        .permits
        .try_acquire_many(kib(declared.unwrap_or(0)))
        .map_err(|_| BodyError::OverBudget)?;
    let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    let deadline = tokio::time::Instant::now() + budget.deadline(declared);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(BodyError::TooSlow),
        };
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY_BYTES {
            drop(buf);
            return Err(too_large(body, None).await);
        }
        let wanted = kib(buf.len() + data.len());
        if wanted > permit.num_permits() as u32 {
            let more = budget
                .permits
                .try_acquire_many(wanted - permit.num_permits() as u32)
                .map_err(|_| BodyError::OverBudget)?;
            permit.merge(more);
        }
        buf.extend_from_slice(&data);
    }
    Ok((Bytes::from(buf), permit))
}

/// Verifies the signature over the raw body, then stores the delivery in
/// the inbox in one transaction with its audit event, before replying.
/// Nothing is read from a server without `[github]`, and bodies are read
/// only within the memory budget.
pub async fn github(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> (StatusCode, Json<Value>) {
    let (parts, body) = request.into_parts();
    let headers: HeaderMap = parts.headers;
    let count = |outcome: &'static str, reason: &'static str| {
        state
            .metrics
            .webhooks
            .get_or_create(&crate::metrics::WebhookLabels { outcome, reason })
            .inc()
    };
    let Some(github) = &state.config.github else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not-configured", "detail": "this server has no [github] section"}),
        );
    };
    let Some(secret) = std::env::var(&github.webhook_secret_env)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        tracing::error!(variable = %github.webhook_secret_env, "webhook secret is not set");
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "not-configured", "detail": "the webhook secret is not set on the server"}),
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let declared = header("content-length").and_then(|n| n.parse::<usize>().ok());
    let (body, _reserved) = match read_body(body, declared, &state.webhook_budget).await {
        Ok(read) => read,
        Err(BodyError::TooLarge) => {
            count("rejected", "too-large");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too-large", "detail": "deliveries are at most 25 MB"}),
            );
        }
        Err(BodyError::OverBudget) => {
            count("rejected", "busy");
            tracing::warn!("webhook refused: bodies being received fill the memory budget");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "busy", "detail": "too many large deliveries at once; redeliver"}),
            );
        }
        Err(BodyError::TooSlow) => {
            count("rejected", "too-slow");
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "too-slow", "detail": "the body did not arrive in time"}),
            );
        }
        Err(BodyError::Broken(e)) => {
            count("rejected", "broken-body");
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "broken-body", "detail": format!("the body could not be read: {}", loggable(&e))}),
            );
        }
    };
    let signature = header("x-hub-signature-256").unwrap_or_default();
    if !signature_matches(secret.as_bytes(), &body, &signature) {
        count("rejected", "bad-signature");
        tracing::warn!(
            delivery = %loggable(&header("x-github-delivery").unwrap_or_default()),
            "webhook signature does not verify"
        );
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "bad-signature", "detail": "X-Hub-Signature-256 does not match the body"}),
        );
    }
    let (Some(delivery), Some(event)) = (header("x-github-delivery"), header("x-github-event"))
    else {
        count("rejected", "missing-headers");
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "missing-headers", "detail": "X-GitHub-Delivery and X-GitHub-Event are required"}),
        );
    };
    // Whose delivery it is, the worker decides: another repository's is
    // stored like any other and recorded as ignored there. Reading the
    // JSON here too cost a tenth of ingest's CPU (README, "Webhook ingest").
    let prepared = crate::store::PreparedDelivery::new(
        &delivery,
        &event,
        &body,
        state.config.server.inbox_compression,
    );
    match state.ingest.store(prepared).await {
        Ok(true) => {
            state.inbox_wake.notify_one();
            count("accepted", "");
            tracing::info!(%delivery, %event, outcome = "accepted", "webhook stored");
            reply(
                StatusCode::ACCEPTED,
                json!({"delivery": delivery, "stored": true}),
            )
        }
        Ok(false) => {
            count("duplicate", "");
            reply(
                StatusCode::OK,
                json!({"delivery": delivery, "stored": false, "detail": "already received; not applied twice"}),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, %delivery, "cannot store the delivery");
            // No 2xx: GitHub redelivers, and nothing is lost.
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "detail": "the delivery could not be stored; redeliver"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_published_vector_verifies() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!signature_matches(b"another secret", b"Hello, World!", sig));
        assert!(!signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=abc"
        ));
        assert!(!signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=zz"
        ));
    }
}
