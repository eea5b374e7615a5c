//! A signed JSON POST: `X-Changegate-Signature-256` is the HMAC-SHA256 of
//! the body under the secret in `secret_env`.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::AlertSink;
use crate::config::SinkConfig;
use crate::store::{Alert, AlertState, Delivery};

/// `POST {url}` with the event and the whole alert.
pub struct Webhook<'c>(pub &'c SinkConfig);

/// `sha256=<hex hmac>` of `body` under `secret`, as `X-Changegate-Signature-256` carries it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook body: the event and the whole alert.
pub fn webhook_body(alert: &Alert, event: AlertState) -> Value {
    json!({"id": alert.id, "event": event, "alert": alert})
}

impl AlertSink for Webhook<'_> {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Delivery,
        alert: &Alert,
        _now: i64,
        _link: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let var = self.0.secret_env.as_deref().unwrap_or_default();
        let secret = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
        let body = serde_json::to_vec(&webhook_body(alert, d.event)).map_err(|e| e.to_string())?;
        Ok(http
            .post(&self.0.url)
            .header("content-type", "application/json")
            .header(
                "x-changegate-signature-256",
                signature(secret.as_bytes(), &body),
            )
            .body(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // GitHub's published vector for the same construction.
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
