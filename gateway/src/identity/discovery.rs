//! The OpenID Provider configuration document (`/.well-known/openid-configuration`), reduced to what
//! token verification needs. CI issuers publish lean documents (GitHub Actions has no
//! `authorization_endpoint`), so only `issuer` and `jwks_uri` are required.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
}

/// Where the configuration document of `issuer` lives (OpenID Connect Discovery 1.0, section 4).
pub(super) fn url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

impl Discovery {
    /// The document must name the issuer it was fetched for, exactly (Discovery section 4.3), and
    /// point to its keys over HTTPS.
    pub(super) fn check(&self, expected_issuer: &str) -> Result<(), String> {
        if self.issuer != expected_issuer {
            return Err(format!(
                "discovery document names issuer {:?}, expected {expected_issuer:?}",
                self.issuer
            ));
        }
        if !self.jwks_uri.starts_with("https://") {
            return Err(format!(
                "discovery document's jwks_uri {:?} is not an https:// URL",
                self.jwks_uri
            ));
        }
        Ok(())
    }
}
