//! Verification without a network: tokens minted here with fixed keys, checked against key sets
//! built from the same JWK documents an issuer would serve. Each rejection is asserted by its kind,
//! so a token refused for the wrong reason fails the test.

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

use super::{
    claims,
    error::VerifyError,
    jwks::{KeySet, RawKeySet},
    test_keys,
    token::{self, Expectations, MAX_TOKEN_BYTES},
};

const ISSUER: &str = "https://issuer.test";

fn der(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn issuer_key() -> EncodingKey {
    EncodingKey::from_rsa_der(&der(test_keys::ISSUER_RSA))
}

fn other_key() -> EncodingKey {
    EncodingKey::from_rsa_der(&der(test_keys::OTHER_RSA))
}

/// Ed25519 from a fixed seed: PKCS#8 is a constant prefix and the 32-byte seed.
fn ed_key() -> EncodingKey {
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&[7u8; 32]);
    EncodingKey::from_ed_der(&pkcs8)
}

/// The public JWK of `key`, as an issuer publishes it.
fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

fn keyset(keys: Vec<Value>) -> KeySet {
    let raw: RawKeySet = serde_json::from_value(json!({ "keys": keys })).unwrap();
    KeySet::from_raw(raw)
}

fn issuer_keys() -> KeySet {
    keyset(vec![
        public_jwk(&issuer_key(), Algorithm::RS256, "k1"),
        public_jwk(&ed_key(), Algorithm::EdDSA, "ed"),
    ])
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims_ok() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "aud": "gateway",
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 300,
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "realm_access": { "roles": ["deployers"] },
    })
}

fn mint(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn audiences() -> Vec<String> {
    vec!["gateway".to_string()]
}

fn check(token: &str) -> Result<serde_json::Map<String, Value>, VerifyError> {
    check_with(token, &issuer_keys(), Duration::from_secs(60))
}

fn check_with(
    token: &str,
    keys: &KeySet,
    skew: Duration,
) -> Result<serde_json::Map<String, Value>, VerifyError> {
    let unverified = token::inspect(token)?;
    let candidates = keys.candidates(unverified.kid.as_deref(), unverified.alg);
    let aud = audiences();
    token::verify(
        token,
        &unverified,
        &candidates,
        &Expectations {
            issuer: ISSUER,
            audiences: &aud,
            skew,
        },
    )
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_valid_token_yields_its_claims() {
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &claims_ok());
    let c = check(&t).unwrap();
    assert_eq!(c["repository"], "acme/app");
    assert_eq!(c["sub"], "repo:acme/app:ref:refs/heads/main");
    // EdDSA keys work as well.
    let t = mint(Algorithm::EdDSA, Some("ed"), &ed_key(), &claims_ok());
    assert_eq!(check(&t).unwrap()["ref"], "refs/heads/main");
}

#[test]
fn a_token_without_kid_is_tried_against_keys_of_its_algorithm() {
    let t = mint(Algorithm::RS256, None, &issuer_key(), &claims_ok());
    assert!(check(&t).is_ok());
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_skew() {
    let mut c = claims_ok();
    c["exp"] = json!(now() - 3600);
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    let e = check(&t).unwrap_err();
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired at"), "{e}");

    // Within the allowance it is still good.
    c["exp"] = json!(now() - 20);
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(check(&t).is_ok());
    assert!(matches!(
        check_with(&t, &issuer_keys(), Duration::ZERO),
        Err(VerifyError::Expired { .. })
    ));

    let mut c = claims_ok();
    c["nbf"] = json!(now() + 3600);
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    let e = check(&t).unwrap_err();
    assert!(matches!(e, VerifyError::NotYetValid { .. }), "{e}");
}

#[test]
fn audience_and_issuer_must_match() {
    let mut c = claims_ok();
    c["aud"] = json!("someone-else");
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    let e = check(&t).unwrap_err();
    assert!(matches!(e, VerifyError::WrongAudience { .. }), "{e}");
    assert!(e.to_string().contains("someone-else"), "{e}");

    // One accepted audience among several is enough.
    c["aud"] = json!(["someone-else", "gateway"]);
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(check(&t).is_ok());

    let mut c = claims_ok();
    c["iss"] = json!("https://evil.test");
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(matches!(check(&t), Err(VerifyError::WrongIssuer { .. })));
}

#[test]
fn registered_claims_are_required() {
    for missing in ["sub", "aud", "exp"] {
        let mut c = claims_ok();
        c.as_object_mut().unwrap().remove(missing);
        let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
        match check(&t) {
            Err(VerifyError::MissingClaim(name)) => assert_eq!(name, missing),
            other => panic!("without {missing}: {other:?}"),
        }
    }
    let mut c = claims_ok();
    c.as_object_mut().unwrap().remove("iss");
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(matches!(check(&t), Err(VerifyError::MissingClaim(n)) if n == "iss"));
    let mut c = claims_ok();
    c["sub"] = json!(42);
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(check(&t).is_err());
}

#[test]
fn alg_none_is_refused_with_or_without_a_signature() {
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let payload = b64(&claims_ok());
    for t in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        let e = check(&t).unwrap_err();
        assert!(matches!(e, VerifyError::AlgNone), "{e}");
    }
    let header = b64(&json!({"alg": "None"}));
    assert!(matches!(
        check(&format!("{header}.{payload}.c2ln")),
        Err(VerifyError::AlgNone)
    ));
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    // The classic key-confusion forgery: HS256 keyed with the issuer's public key material.
    let public = serde_json::to_vec(&public_jwk(&issuer_key(), Algorithm::RS256, "k1")).unwrap();
    let t = mint(
        Algorithm::HS256,
        Some("k1"),
        &EncodingKey::from_secret(&public),
        &claims_ok(),
    );
    let e = check(&t).unwrap_err();
    assert!(
        matches!(e, VerifyError::Symmetric(ref a) if a == "HS256"),
        "{e}"
    );
}

#[test]
fn a_forged_or_tampered_token_does_not_verify() {
    // Right kid, wrong key.
    let t = mint(Algorithm::RS256, Some("k1"), &other_key(), &claims_ok());
    let e = check(&t).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");

    // A genuine token whose payload was changed.
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &claims_ok());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims_ok();
    c["repository"] = json!("acme/secrets");
    let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    let e = check(&tampered).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");

    // A truncated signature.
    let truncated = &t[..t.len() - 10];
    let e = check(truncated).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
}

#[test]
fn garbage_is_not_a_jwt() {
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &claims_ok());
    let cases = [
        "".to_string(),
        "hello".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        "a b.c.d".to_string(),
        t[..t.len() / 3].to_string(),
        "e30.e30.c2ln".to_string(), // `{}` header: no alg
        format!("{}.bm90IGpzb24.c2ln", b64(&json!({"alg": "RS256"}))),
        "a.b.c.d.e".to_string(),
    ];
    for case in cases {
        let e = token::inspect(&case).unwrap_err();
        assert!(matches!(e, VerifyError::NotJwt(_)), "{case:?}: {e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let big = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(
        token::inspect(&big),
        Err(VerifyError::TooLarge { .. })
    ));
    // A genuine token padded with a huge claim: refused on size alone.
    let mut c = claims_ok();
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let t = mint(Algorithm::RS256, Some("k1"), &issuer_key(), &c);
    assert!(matches!(check(&t), Err(VerifyError::TooLarge { .. })));
}

#[test]
fn keys_are_matched_by_kid_family_and_declared_algorithm() {
    let keys = issuer_keys();
    assert_eq!(keys.candidates(Some("k1"), Algorithm::RS256).len(), 1);
    assert_eq!(keys.candidates(Some("nope"), Algorithm::RS256).len(), 0);
    // An RSA key declared for RS256 does not verify PS256, and no RSA key verifies EdDSA.
    assert_eq!(keys.candidates(Some("k1"), Algorithm::PS256).len(), 0);
    assert_eq!(keys.candidates(Some("k1"), Algorithm::EdDSA).len(), 0);
    assert_eq!(keys.candidates(None, Algorithm::EdDSA).len(), 1);
}

#[test]
fn unusable_keys_are_skipped_not_fatal() {
    let set = keyset(vec![
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}),
        json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"}),
        json!({"kty": "weird", "kid": "x"}),
        public_jwk(&issuer_key(), Algorithm::RS256, "k1"),
    ]);
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.skipped, 3);
    assert!(!set.has_kid("shared"));
}

#[test]
fn claim_mappings_copy_plain_and_nested_claims() {
    let mut c = claims_ok().as_object().unwrap().clone();
    c.insert("https://example.test/groups".into(), json!(["ops"]));
    let mappings = BTreeMap::from([
        ("groups".to_string(), "realm_access.roles".to_string()),
        (
            "teams".to_string(),
            "https://example.test/groups".to_string(),
        ),
        ("absent".to_string(), "no.such.claim".to_string()),
    ]);
    claims::apply_mappings(&mut c, &mappings);
    assert_eq!(c["groups"], json!(["deployers"]));
    assert_eq!(c["teams"], json!(["ops"]));
    assert!(!c.contains_key("absent"));
}

#[test]
fn misspelt_claims_get_a_suggestion() {
    assert_eq!(
        claims::suggest("repositry", []).as_deref(),
        Some("repository")
    );
    assert_eq!(
        claims::suggest("job_workflow_rf", []).as_deref(),
        Some("job_workflow_ref")
    );
    assert_eq!(claims::suggest("team", ["teams"]).as_deref(), Some("teams"));
    assert_eq!(claims::suggest("completely_different", []), None);
    assert!(claims::is_known("job_workflow_ref"));
    assert!(claims::is_known("project_path"));
    assert!(!claims::is_known("repo"));
}

mod verifier {
    //! The parts of `Verifier` that decide before any key is fetched, and issuers that fail.

    use super::*;
    use crate::{config::Config, identity::Verifier};

    fn config(issuers: &str) -> Config {
        Config::parse(issuers, "test.toml").unwrap()
    }

    fn verifier_for(url: &str, extra: &str) -> Verifier {
        let cfg = config(&format!(
            "[[issuers]]\nurl = \"{url}\"\naudiences = [\"gateway\"]\n{extra}\n"
        ));
        Verifier::new(&cfg.issuers).unwrap()
    }

    fn token_from(iss: &str, alg: Algorithm) -> String {
        let mut c = claims_ok();
        c["iss"] = json!(iss);
        match alg {
            Algorithm::EdDSA => mint(alg, Some("ed"), &ed_key(), &c),
            _ => mint(alg, Some("k1"), &issuer_key(), &c),
        }
    }

    #[tokio::test]
    async fn tokens_of_unconfigured_issuers_are_refused() {
        let v = verifier_for("https://127.0.0.1:9", "");
        let e = v
            .verify(&token_from("https://evil.test", Algorithm::RS256))
            .await
            .unwrap_err();
        assert!(matches!(e, VerifyError::UnknownIssuer { .. }), "{e}");
        assert!(e.to_string().contains("https://evil.test"), "{e}");
    }

    #[tokio::test]
    async fn algorithms_outside_the_issuers_list_are_refused() {
        let url = "https://127.0.0.1:9";
        let v = verifier_for(url, "algorithms = [\"ES256\"]");
        let e = v
            .verify(&token_from(url, Algorithm::RS256))
            .await
            .unwrap_err();
        assert!(matches!(e, VerifyError::AlgNotAllowed { .. }), "{e}");
    }

    /// A port nothing listens on: the issuer is down.
    #[tokio::test]
    async fn an_issuer_that_is_down_is_reported_not_waited_for() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("https://127.0.0.1:{port}");
        let v = verifier_for(&url, "fetch_timeout = \"2s\"");
        let e = v
            .verify(&token_from(&url, Algorithm::RS256))
            .await
            .unwrap_err();
        assert!(matches!(e, VerifyError::IssuerUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("openid-configuration"), "{e}");
    }

    /// Accepts connections and never answers: the fetch timeout ends it.
    #[tokio::test]
    async fn an_issuer_that_hangs_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let v = verifier_for(&url, "fetch_timeout = \"1s\"");
        let e = v
            .verify(&token_from(&url, Algorithm::RS256))
            .await
            .unwrap_err();
        hold.abort();
        match &e {
            VerifyError::IssuerUnavailable { source, .. } => {
                assert!(
                    matches!(source, crate::identity::FetchError::Timeout { .. }),
                    "{e}"
                )
            }
            other => panic!("{other}"),
        }
    }

    /// Answers the TLS handshake with bytes that are not TLS.
    #[tokio::test]
    async fn an_issuer_that_speaks_junk_is_reported() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let junk = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{not json").await;
            }
        });
        let v = verifier_for(&url, "fetch_timeout = \"2s\"");
        let e = v
            .verify(&token_from(&url, Algorithm::RS256))
            .await
            .unwrap_err();
        junk.abort();
        assert!(matches!(e, VerifyError::IssuerUnavailable { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn status_lists_issuers_without_waiting() {
        let v = verifier_for("https://127.0.0.1:9", "");
        let s = v.status();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].keys, 0);
        assert_eq!(s[0].audiences, vec!["gateway".to_string()]);
    }
}
