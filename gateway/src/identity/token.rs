//! One token, checked in two steps: `inspect` (size, shape, header algorithm, and the unverified
//! `iss` that picks the issuer) before any key or network is involved, then `verify` against keys
//! (signature, algorithm, `iss`, `aud`, `exp`, `nbf`, with a clock skew allowance).

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{error::VerifyError, jwks::Key};

/// Tokens larger than this are refused before parsing (real CI tokens are 1-3 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What can be read from a token before its signature is checked. Nothing here is trusted: it
/// only selects the issuer and key, and lets errors name what the token claimed.
#[derive(Debug, Clone)]
pub(super) struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
    claims: Map<String, Value>,
}

pub(super) fn inspect(token: &str) -> Result<Unverified, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(VerifyError::NotJwt(format!(
            "character {c:?} is not base64url"
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => {
            return Err(VerifyError::NotJwt(
                "encrypted tokens (JWE) are not supported".into(),
            ));
        }
        n => {
            return Err(VerifyError::NotJwt(format!(
                "expected 3 dot-separated parts, found {n}"
            )));
        }
    }
    if parts[2].is_empty() {
        // `alg: none` tokens end with an empty signature; say so when that is what it is.
        let header = json_part(parts[0], "header").ok();
        if header
            .as_ref()
            .and_then(|h| h.get("alg"))
            .and_then(Value::as_str)
            .is_some_and(|a| a.eq_ignore_ascii_case("none"))
        {
            return Err(VerifyError::AlgNone);
        }
        return Err(VerifyError::NotJwt("the signature part is empty".into()));
    }
    let header = json_part(parts[0], "header")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::NotJwt("the header has no \"alg\"".into()))?;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(VerifyError::AlgNone);
    }
    if alg_name.to_ascii_uppercase().starts_with("HS") {
        return Err(VerifyError::Symmetric(alg_name.to_string()));
    }
    let alg: Algorithm = alg_name
        .parse()
        .map_err(|_| VerifyError::UnsupportedAlg(alg_name.to_string()))?;
    if header.contains_key("crit") {
        return Err(VerifyError::Invalid(
            "critical header parameters (\"crit\") are not supported".into(),
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => {
            return Err(VerifyError::NotJwt(
                "the header's \"kid\" is not a string".into(),
            ));
        }
    };
    let claims = json_part(parts[1], "payload")?;
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(VerifyError::BadClaim("iss".into())),
        None => return Err(VerifyError::MissingClaim("iss".into())),
    };
    Ok(Unverified {
        alg,
        kid,
        iss,
        claims,
    })
}

fn json_part(part: &str, what: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::NotJwt(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VerifyError::NotJwt(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// What a verified token must satisfy, from the issuer's configuration.
pub(super) struct Expectations<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub skew: Duration,
}

/// Checks the signature with each candidate key (normally one: the token's `kid`) and then the
/// registered claims. Returns all claims of the token.
pub(super) fn verify(
    token: &str,
    unverified: &Unverified,
    keys: &[&Key],
    expect: &Expectations<'_>,
) -> Result<Map<String, Value>, VerifyError> {
    let mut validation = Validation::new(unverified.alg);
    validation.leeway = expect.skew.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(expect.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

    let kid = unverified.kid.as_deref().unwrap_or("(none)");
    let mut last = VerifyError::BadSignature {
        issuer: expect.issuer.to_string(),
        kid: kid.to_string(),
    };
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
            Ok(data) => {
                if !matches!(data.claims.get("sub"), Some(Value::String(_))) {
                    return Err(VerifyError::BadClaim("sub".into()));
                }
                return Ok(data.claims);
            }
            Err(e) => {
                last = map_error(e.kind(), unverified, expect, kid);
                // Only a signature mismatch is worth trying the next key for.
                if !matches!(last, VerifyError::BadSignature { .. }) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn map_error(
    kind: &ErrorKind,
    unverified: &Unverified,
    expect: &Expectations<'_>,
    kid: &str,
) -> VerifyError {
    let now = super::claims::timestamp(chrono::Utc::now().timestamp());
    let time_claim = |name: &str| {
        unverified
            .claims
            .get(name)
            .and_then(Value::as_i64)
            .map_or_else(|| "?".to_string(), super::claims::timestamp)
    };
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature {
            issuer: expect.issuer.to_string(),
            kid: kid.to_string(),
        },
        ErrorKind::ExpiredSignature => VerifyError::Expired {
            exp: time_claim("exp"),
            now,
            skew: expect.skew,
        },
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid {
            nbf: time_claim("nbf"),
            now,
            skew: expect.skew,
        },
        ErrorKind::InvalidAudience => VerifyError::WrongAudience {
            found: unverified
                .claims
                .get("aud")
                .map_or_else(|| "(none)".to_string(), Value::to_string),
            issuer: expect.issuer.to_string(),
            accepted: expect.audiences.join(", "),
        },
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer {
            expected: expect.issuer.to_string(),
        },
        ErrorKind::MissingRequiredClaim(c) => VerifyError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => VerifyError::BadClaim(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => VerifyError::Invalid(format!(
            "key {kid} of issuer {} cannot verify {}",
            expect.issuer,
            super::jwks::algorithm_name(unverified.alg)
        )),
        other => VerifyError::Invalid(format!("{other:?}")),
    }
}
