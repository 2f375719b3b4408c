//! Client-side authentication toward the upstream server with the target's credentials:
//! SCRAM-SHA-256 (RFC 5802/7677, without channel binding), MD5 and cleartext passwords.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use pgwire::messages::{
    Message,
    startup::{Password, SASLInitialResponse, SASLResponse},
};
use sha2::Sha256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the server asks for a password but the target has no password_file")]
    NoPassword,
    #[error("the server offers no SASL mechanism the gateway speaks ({0})")]
    NoMechanism(String),
    #[error("SCRAM: {0}")]
    Scram(&'static str),
    #[error("the server asks for an authentication method the gateway does not support ({0})")]
    Unsupported(String),
}

/// Most PBKDF2 iterations accepted from a server (PostgreSQL's default is 4096).
const MAX_ITERATIONS: u32 = 1_000_000;

fn encode(m: &impl Message) -> Bytes {
    let mut buf = BytesMut::new();
    m.encode(&mut buf)
        .expect("encode an authentication message");
    buf.freeze()
}

pub fn cleartext(password: &str) -> Bytes {
    encode(&Password::new(password.to_string()))
}

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), PostgreSQL's MD5 scheme.
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> Bytes {
    encode(&Password::new(md5_response(user, password, salt)))
}

pub fn md5_response(user: &str, password: &str, salt: &[u8]) -> String {
    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex(&outer.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    m.update(salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// One SCRAM-SHA-256 exchange, client side.
pub struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

impl Scram {
    pub fn new(password: &str) -> Self {
        let mut raw = [0u8; 18];
        getrandom::getrandom(&mut raw).expect("the kernel's random source");
        Self::with_nonce(password, &B64.encode(raw))
    }

    fn with_nonce(password: &str, nonce: &str) -> Self {
        Scram {
            password: password.to_string(),
            nonce: nonce.to_string(),
            // PostgreSQL takes the user from the startup packet and ignores this one.
            client_first_bare: format!("n=,r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// `SASLInitialResponse` with the client-first message (no channel binding: `n,,`).
    pub fn initial(&self) -> Bytes {
        let first = format!("n,,{}", self.client_first_bare);
        encode(&SASLInitialResponse::new(
            SCRAM_SHA_256.to_string(),
            Some(Bytes::from(first)),
        ))
    }

    /// Answers the server-first message with the client-final message (a `SASLResponse`).
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Bytes, AuthError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| AuthError::Scram("server-first is not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(AuthError::Scram("no nonce in server-first"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(AuthError::Scram(
                "server nonce does not extend the client nonce",
            ));
        }
        let salt = B64
            .decode(salt.ok_or(AuthError::Scram("no salt in server-first"))?)
            .map_err(|_| AuthError::Scram("salt is not base64"))?;
        let iterations = iterations.ok_or(AuthError::Scram("no iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(AuthError::Scram("iteration count out of range"));
        }
        let salted = hi(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        let final_message = format!("{without_proof},p={}", B64.encode(proof));
        Ok(encode(&SASLResponse::new(Bytes::from(final_message))))
    }

    /// Checks the server-final message: the server proves it knew the password too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| AuthError::Scram("server-final is not UTF-8"))?;
        if text.starts_with("e=") {
            return Err(AuthError::Scram("the server reported a SCRAM error"));
        }
        let v = text
            .strip_prefix("v=")
            .ok_or(AuthError::Scram("no verifier in server-final"))?;
        let v = B64
            .decode(v.split(',').next().unwrap_or_default())
            .map_err(|_| AuthError::Scram("verifier is not base64"))?;
        match self.expected_server_signature {
            Some(expected) if v == expected => Ok(()),
            _ => Err(AuthError::Scram("the server's signature does not match")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'app') || 'salt') in PostgreSQL.
        let inner = hex(&Md5::digest(b"secretapp"));
        let mut h = Md5::new();
        h.update(inner.as_bytes());
        h.update(b"salt");
        assert_eq!(
            md5_response("app", "secret", b"salt"),
            format!("md5{}", hex(&h.finalize()))
        );
        assert_eq!(md5_response("app", "secret", b"salt").len(), 35);
    }

    /// RFC 7677's SCRAM-SHA-256 test vector (user "user", password "pencil").
    #[test]
    fn scram_rfc7677_vector() {
        let mut s = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let reply = s.respond(server_first).unwrap();
        let text = String::from_utf8_lossy(&reply[5..]).to_string();
        assert!(text.ends_with(
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ), "{text}");
        s.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(
            s.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
                .is_err()
        );
    }

    #[test]
    fn scram_refuses_a_foreign_nonce_and_huge_iterations() {
        let mut s = Scram::with_nonce("pw", "abc");
        assert!(s.respond(b"r=xyz123,s=AAAA,i=4096").is_err());
        assert!(s.respond(b"r=abc123,s=AAAA,i=999999999").is_err());
        assert!(s.respond(b"r=abc,s=AAAA,i=4096").is_err());
    }
}
