//! `POST /webhooks/github`: verified, deduplicated and stored durably
//! before the reply (SPEC §4).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use serde_json::{json, Value};
use sha2::Sha256;

use super::AppState;

/// GitHub's own limit on a delivery's size.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Labels of a webhook delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `accepted`, `duplicate`, `ignored` or `rejected`.
    pub outcome: &'static str,
    /// Why, from a fixed set: `bad-signature`, `missing-headers`,
    /// `foreign-repository`, `foreign-installation`; empty otherwise.
    pub reason: &'static str,
}

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

/// Verifies the signature over the raw body, then stores the delivery in
/// the inbox in one transaction with its audit event, before replying.
pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let count = |outcome: &'static str, reason: &'static str| {
        state
            .metrics
            .webhooks
            .get_or_create(&WebhookLabels { outcome, reason })
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
    // Another repository's delivery is stored like any other (the worker
    // records it as ignored); saying so here lets an operator see it.
    let foreign = state.home.as_ref().and_then(|home| {
        crate::github::events::envelope(&event, &body)
            .ok()
            .and_then(|e| home.foreign(&e))
    });
    let prepared = crate::store::PreparedDelivery::new(&delivery, &event, &body);
    match state.ingest.store(prepared).await {
        Ok(true) => {
            state.inbox_wake.notify_one();
            match &foreign {
                Some(f) => {
                    count("ignored", f.label());
                    tracing::info!(%delivery, %event, outcome = "ignored", reason = f.label(), "webhook stored; {}", f.reason());
                }
                None => {
                    count("accepted", "");
                    tracing::info!(%delivery, %event, outcome = "accepted", "webhook stored");
                }
            }
            let ignored = foreign.map(|f| f.reason());
            reply(
                StatusCode::ACCEPTED,
                json!({"delivery": delivery, "stored": true, "ignored": ignored}),
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
