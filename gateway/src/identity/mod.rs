//! Who a job is: the verified claims of the OIDC token it was bound with, or `unauthenticated`.
//!
//! `Verifier` checks a token against the configured issuers (discovery document and JWKS fetched
//! over HTTPS and cached, signature, algorithm allow-list, `iss`, `aud`, `exp`, `nbf`) and turns
//! its claims into an `Identity`. Rules select on `Identity::claim_values`.
//!
//! Why `jsonwebtoken` and not `openidconnect`: openidconnect's
//! `ProviderMetadata` requires `authorization_endpoint`, which GitHub Actions' discovery document
//! does not have (openidconnect-rs issue #201), and its only public verifier is for ID tokens (one
//! client-id audience, no `nbf`, no clock skew, `typ` other than JWT refused), so it can verify
//! neither GitHub's CI tokens' discovery nor generic JWT access tokens. Discovery here reads only
//! `issuer` and `jwks_uri`; `jsonwebtoken` (pure-Rust crypto) checks signatures and claims.

pub mod claims;
mod discovery;
mod error;
pub(crate) mod fetch;
mod issuer;
mod jwks;
mod token;
mod verifier;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use error::{FetchError, VerifyError};
pub use issuer::IssuerStatus;
pub use token::MAX_TOKEN_BYTES;
pub use verifier::{Verified, Verifier};

pub const UNAUTHENTICATED: &str = "unauthenticated";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Issuer URL of the verified token; `None` for `unauthenticated`.
    pub issuer: Option<String>,
    /// `sub` of the token, or `unauthenticated`.
    pub subject: String,
    /// All claims of the token (empty for `unauthenticated`).
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Identity {
    pub fn unauthenticated() -> Self {
        Identity {
            issuer: None,
            subject: UNAUTHENTICATED.to_string(),
            claims: BTreeMap::new(),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.issuer.is_some()
    }

    /// The string values of a claim: a string, a number or bool as text, or each string of an array.
    pub fn claim_values(&self, name: &str) -> Vec<String> {
        if name == "sub" && !self.claims.contains_key("sub") {
            return vec![self.subject.clone()];
        }
        match self.claims.get(name) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect(),
            Some(serde_json::Value::Number(n)) => vec![n.to_string()],
            Some(serde_json::Value::Bool(b)) => vec![b.to_string()],
            Some(serde_json::Value::Object(_)) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod test_keys;
#[cfg(test)]
mod tests;

/// An OIDC issuer whose tokens bind jobs to identities .
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The issuer identifier, exactly as tokens carry it in `iss`.
    pub url: String,
    /// A token must name at least one of these in `aud`.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (never `none` or HS*).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Name rules use → claim (or dotted path) of the token it is copied from.
    pub claim_mappings: std::collections::BTreeMap<String, String>,
    /// Claim names this issuer sets beyond the well-known ones (silences check-config warnings).
    pub known_claims: Vec<String>,
    pub clock_skew: std::time::Duration,
    /// How long a job stays bound after its token was verified, whatever the token's `exp`.
    pub max_binding_lifetime: std::time::Duration,
    /// PEM bundle trusted for this issuer's HTTPS instead of the system store.
    pub ca_file: Option<std::path::PathBuf>,
    /// Bound on each HTTPS exchange with the issuer.
    pub fetch_timeout: std::time::Duration,
    /// Keys older than this are refetched on next use.
    pub jwks_max_age: std::time::Duration,
    /// Minimum time between two fetches (unknown `kid`s included).
    pub jwks_refetch_cooldown: std::time::Duration,
}
