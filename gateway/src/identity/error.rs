//! Why a token was not accepted. Every message is one line and names what to fix; none of them
//! repeats the token.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("token rejected: {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("token rejected: not a JWT ({0})")]
    NotJwt(String),
    #[error(
        "token rejected: algorithm \"none\" is never accepted (an unsigned token proves nothing)"
    )]
    AlgNone,
    #[error(
        "token rejected: symmetric algorithm {0} is never accepted (issuers must sign with a private key)"
    )]
    Symmetric(String),
    #[error("token rejected: unsupported algorithm {0:?}")]
    UnsupportedAlg(String),
    #[error(
        "token rejected: algorithm {alg} is not allowed for issuer {issuer} (allowed: {allowed})"
    )]
    AlgNotAllowed {
        alg: String,
        issuer: String,
        allowed: String,
    },
    #[error("token rejected: issuer {found:?} is not configured (configured: {configured})")]
    UnknownIssuer { found: String, configured: String },
    #[error("token rejected: issuer {issuer} publishes no key {kid:?} (JWKS {how})")]
    UnknownKid {
        issuer: String,
        kid: String,
        /// "refetched just now" or "fetched Ns ago; next refetch allowed in Ms".
        how: String,
    },
    #[error("token rejected: issuer {issuer} publishes no {alg} key to check it with")]
    NoKey { issuer: String, alg: String },
    #[error("token rejected: signature does not verify (issuer {issuer}, key {kid})")]
    BadSignature { issuer: String, kid: String },
    #[error("token rejected: expired at {exp} (now {now}, clock skew allowance {skew:?})")]
    Expired {
        exp: String,
        now: String,
        skew: Duration,
    },
    #[error("token rejected: not valid before {nbf} (now {now}, clock skew allowance {skew:?})")]
    NotYetValid {
        nbf: String,
        now: String,
        skew: Duration,
    },
    #[error(
        "token rejected: audience {found} is not accepted by issuer {issuer} (accepted: {accepted})"
    )]
    WrongAudience {
        found: String,
        issuer: String,
        accepted: String,
    },
    #[error("token rejected: issuer claim does not match {expected}")]
    WrongIssuer { expected: String },
    #[error("token rejected: required claim {0:?} is missing")]
    MissingClaim(String),
    #[error("token rejected: claim {0:?} has the wrong type")]
    BadClaim(String),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("issuer {issuer} unavailable: {source}")]
    IssuerUnavailable { issuer: String, source: FetchError },
    #[error("issuer {issuer} did not answer within {timeout:?}")]
    Timeout { issuer: String, timeout: Duration },
    #[error("issuer {issuer}: {message}")]
    IssuerSetup { issuer: String, message: String },
}

/// Why fetching a discovery document or JWKS failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: response larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("{url}: not a valid {what}: {message}")]
    Invalid {
        url: String,
        what: &'static str,
        message: String,
    },
}

/// An error and its sources on one line (`reqwest` keeps the useful part in the sources).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out.replace('\n', " ")
}
