//! An issuer's published signing keys (JWKS), parsed leniently: a key this build cannot use (an
//! encryption key, an unknown key type, a symmetric `oct` key) is skipped, not fatal, so one odd
//! key never takes the whole issuer down.

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, PublicKeyUse},
};
use serde::Deserialize;

/// A JWKS as served: the keys stay raw JSON so each can fail on its own.
#[derive(Deserialize)]
pub(super) struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

pub(super) struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one: then it may only verify that algorithm.
    pub alg: Option<String>,
    pub family: AlgorithmFamily,
    pub decoding: DecodingKey,
}

#[derive(Default)]
pub(super) struct KeySet {
    pub keys: Vec<Key>,
    /// Keys in the document that were not usable for verification.
    pub skipped: usize,
}

impl KeySet {
    pub(super) fn from_raw(raw: RawKeySet) -> KeySet {
        let mut set = KeySet::default();
        for value in raw.keys {
            match parse_key(value) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        set
    }

    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token signed with `alg`, narrowed to `kid` when the token names one.
    pub(super) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&Key> {
        let alg_name = algorithm_name(alg);
        self.keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.family == alg.family())
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg_name.as_str()))
            .collect()
    }
}

fn parse_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        // A shared secret in a public document would let anyone sign: never a verification key.
        _ => return None,
    };
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id,
        alg,
        family,
        decoding,
    })
}

/// The JOSE name of an algorithm (`RS256`); jsonwebtoken's `Debug` spells variants that way.
pub(super) fn algorithm_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}
