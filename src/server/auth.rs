//! Bearer tokens as named identities with roles (SPEC §7).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{Role, TokenConfig};

/// The caller, authenticated by its bearer token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The identity's configured name; recorded as the actor.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Identity {
    /// Refuses with 403 unless the identity has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role.allows(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(role))
        }
    }
}

/// The identity whose hash matches `token`. Every configured hash is
/// compared, in constant time, so timing reveals neither which nor whether.
pub fn authenticate(tokens: &[TokenConfig], token: &str) -> Option<Identity> {
    let presented = hex::encode(Sha256::digest(token.as_bytes()));
    let mut found = None;
    for t in tokens {
        if bool::from(
            t.sha256
                .to_ascii_lowercase()
                .as_bytes()
                .ct_eq(presented.as_bytes()),
        ) {
            found = Some(Identity {
                name: t.name.clone(),
                role: t.role,
            });
        }
    }
    found
}

impl FromRequestParts<AppState> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        authenticate(&state.engine.config().tokens, token.trim()).ok_or(ApiError::Unauthorized)
    }
}

/// A new random token: `cg_` and 64 hex characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator is available");
    format!("cg_{}", hex::encode(bytes))
}

/// The hex sha256 that the configuration stores for `token`.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<TokenConfig> {
        vec![TokenConfig {
            name: "alice".into(),
            role: Role::Operator,
            sha256: token_hash("secret-a"),
            github: None,
            emails: vec![],
        }]
    }

    #[test]
    fn a_known_token_authenticates_as_its_identity() {
        let id = authenticate(&tokens(), "secret-a").unwrap();
        assert_eq!((id.name.as_str(), id.role), ("alice", Role::Operator));
    }

    #[test]
    fn an_unknown_token_does_not() {
        assert!(authenticate(&tokens(), "secret-b").is_none());
        assert!(authenticate(&tokens(), "").is_none());
    }

    #[test]
    fn new_tokens_are_random_and_hash_to_64_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
    }
}
