//! All configured issuers: picks the one a token names, verifies the token with its keys, and turns
//! the claims into an `Identity`.

use std::time::Duration;

use serde_json::Value;

use super::Issuer as IssuerConfig;
use super::{
    Identity, claims,
    error::VerifyError,
    issuer::{IssuerClient, IssuerStatus},
    jwks::algorithm_name,
    token::{self, Expectations},
};

pub struct Verifier {
    issuers: Vec<IssuerClient>,
}

/// A verified token: who, and how long a job may stay bound to it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Identity,
    pub max_binding: Duration,
}

impl Verifier {
    pub fn new(configs: &[IssuerConfig]) -> Result<Self, VerifyError> {
        let issuers = configs
            .iter()
            .cloned()
            .map(IssuerClient::new)
            .collect::<Result<_, _>>()?;
        Ok(Verifier { issuers })
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let token = token.trim();
        let unverified = token::inspect(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.url == unverified.iss)
            .ok_or_else(|| VerifyError::UnknownIssuer {
                found: unverified.iss.clone(),
                configured: if self.issuers.is_empty() {
                    "none".into()
                } else {
                    self.issuers
                        .iter()
                        .map(|i| i.config.url.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        let cfg = &issuer.config;
        if !cfg.algorithms.contains(&unverified.alg) {
            return Err(VerifyError::AlgNotAllowed {
                alg: algorithm_name(unverified.alg),
                issuer: cfg.url.clone(),
                allowed: cfg
                    .algorithms
                    .iter()
                    .map(|a| algorithm_name(*a))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Bounded even if the issuer's lock is held by a fetch of another request.
        let deadline = issuer.worst_case() * 2;
        let keys = tokio::time::timeout(deadline, issuer.keys(unverified.kid.as_deref()))
            .await
            .map_err(|_| VerifyError::Timeout {
                issuer: cfg.url.clone(),
                timeout: deadline,
            })??;
        let candidates = keys.candidates(unverified.kid.as_deref(), unverified.alg);
        if candidates.is_empty() {
            return Err(VerifyError::NoKey {
                issuer: cfg.url.clone(),
                alg: algorithm_name(unverified.alg),
            });
        }
        let mut verified = token::verify(
            token,
            &unverified,
            &candidates,
            &Expectations {
                issuer: &cfg.url,
                audiences: &cfg.audiences,
                skew: cfg.clock_skew,
            },
        )?;
        claims::apply_mappings(&mut verified, &cfg.claim_mappings);
        let subject = match verified.get("sub") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(VerifyError::MissingClaim("sub".into())),
        };
        Ok(Verified {
            identity: Identity {
                issuer: Some(cfg.url.clone()),
                subject,
                claims: verified.into_iter().collect(),
            },
            max_binding: cfg.max_binding_lifetime,
        })
    }

    /// Fetches every issuer's keys once, so the first job does not wait and an unreachable issuer
    /// shows up in the log at start.
    pub async fn prefetch(&self) {
        for issuer in &self.issuers {
            if let Err(e) = issuer.keys(None).await {
                tracing::warn!(issuer = %issuer.config.url, error = %e, "issuer keys not available yet");
            }
        }
    }

    pub fn status(&self) -> Vec<IssuerStatus> {
        self.issuers.iter().map(IssuerClient::status).collect()
    }
}
