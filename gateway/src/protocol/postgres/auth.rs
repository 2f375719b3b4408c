//! Client-side authentication toward the upstream server with the target's credentials, through
//! the `postgres-protocol` crate: SCRAM-SHA-256 (with SCRAM-SHA-256-PLUS channel binding to the
//! server's TLS certificate when the connection is TLS), MD5 and cleartext passwords.
//!
//! Which of them the gateway may answer is decided by the caller: a password (cleartext or MD5)
//! only goes to a server whose certificate the gateway verified.

use bytes::{Bytes, BytesMut};
use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256},
    },
    message::frontend,
};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum AuthError {
    #[error("the server asks for a password but the target has no password_file")]
    NoPassword,
    #[error("the server offers no SASL mechanism the gateway speaks ({0})")]
    NoMechanism(String),
    #[error("SCRAM: {0}")]
    Scram(String),
    #[error("the server asks for an authentication method the gateway does not support ({0})")]
    Unsupported(String),
    #[error(
        "the server asks for a {0} password over a connection whose certificate the gateway did not verify; passwords only go to an authenticated server (set tls = \"verify-full\" with the server's CA, or pin its certificate)"
    )]
    UnverifiedPassword(&'static str),
}

fn encode(f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Bytes {
    let mut buf = BytesMut::new();
    f(&mut buf).expect("encode an authentication message");
    buf.freeze()
}

pub(super) fn cleartext(password: &str) -> Bytes {
    encode(|b| frontend::password_message(password.as_bytes(), b))
}

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), PostgreSQL's MD5 scheme.
pub(super) fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> Bytes {
    let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
    encode(|b| frontend::password_message(hash.as_bytes(), b))
}

/// The `tls-server-end-point` channel binding data of a certificate (RFC 5929): its hash with the
/// hash function of its signature algorithm, SHA-256 for MD5 and SHA-1.
pub(super) fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let algorithm = X509Certificate::from_der(cert_der)
        .map(|(_, c)| c.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    // sha384WithRSAEncryption, ecdsa-with-SHA384; sha512WithRSAEncryption, ecdsa-with-SHA512.
    match algorithm.as_str() {
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(cert_der).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(cert_der).to_vec(),
        _ => Sha256::digest(cert_der).to_vec(),
    }
}

/// One SCRAM exchange, client side.
pub(super) struct Scram {
    inner: ScramSha256,
    mechanism: &'static str,
}

impl Scram {
    /// Starts an exchange for the mechanisms the server offers. `server_cert`: the server's TLS
    /// certificate when the connection is TLS: the exchange is then bound to it
    /// (SCRAM-SHA-256-PLUS), so that a server relaying the exchange to another cannot use it.
    pub(super) fn start(
        password: &str,
        offered: &[String],
        server_cert: Option<&[u8]>,
    ) -> Result<Scram, AuthError> {
        let has = |m: &str| offered.iter().any(|o| o == m);
        let (binding, mechanism) = match server_cert {
            Some(cert) if has(SCRAM_SHA_256_PLUS) => (
                ChannelBinding::tls_server_end_point(tls_server_end_point(cert)),
                SCRAM_SHA_256_PLUS,
            ),
            // TLS, yet no PLUS offered (a pooler that cannot bind, or a relay stripping it): saying
            // that we could bind ("y") makes a server that does support it fail the exchange.
            Some(_) if has(SCRAM_SHA_256) => (ChannelBinding::unrequested(), SCRAM_SHA_256),
            None if has(SCRAM_SHA_256) => (ChannelBinding::unsupported(), SCRAM_SHA_256),
            _ => return Err(AuthError::NoMechanism(offered.join(", "))),
        };
        Ok(Scram {
            inner: ScramSha256::new(password.as_bytes(), binding),
            mechanism,
        })
    }

    pub(super) fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    /// SASLInitialResponse.
    pub(super) fn initial(&self) -> Bytes {
        encode(|b| frontend::sasl_initial_response(self.mechanism, self.inner.message(), b))
    }

    /// Answers the server-first message (SASLContinue).
    pub(super) fn respond(&mut self, server_first: &[u8]) -> Result<Bytes, AuthError> {
        self.inner
            .update(server_first)
            .map_err(|e| AuthError::Scram(e.to_string()))?;
        Ok(encode(|b| frontend::sasl_response(self.inner.message(), b)))
    }

    /// Checks the server-final message: the server proves it knew the password too.
    pub(super) fn verify(&mut self, server_final: &[u8]) -> Result<(), AuthError> {
        self.inner
            .finish(server_final)
            .map_err(|e| AuthError::Scram(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'app') || 'salt') in PostgreSQL:
        // md5('secretapp') = 8e3e1c8f3f1b9f6c…; checked by the e2e test against a real server.
        let m = md5_password("app", "secret", *b"salt");
        let text = std::str::from_utf8(&m[5..m.len() - 1]).unwrap();
        assert!(text.starts_with("md5") && text.len() == 35, "{text}");
    }

    #[test]
    fn channel_binding_is_used_over_tls() {
        let offered = vec![SCRAM_SHA_256.to_string(), SCRAM_SHA_256_PLUS.to_string()];
        let s = Scram::start("pw", &offered, Some(b"cert")).unwrap();
        assert_eq!(s.mechanism(), SCRAM_SHA_256_PLUS);
        let s = Scram::start("pw", &offered, None).unwrap();
        assert_eq!(s.mechanism(), SCRAM_SHA_256);
        assert!(Scram::start("pw", &["GSSAPI".to_string()], None).is_err());
    }

    #[test]
    fn a_server_first_with_a_foreign_nonce_is_refused() {
        let mut s = Scram::start("pw", &[SCRAM_SHA_256.to_string()], None).unwrap();
        assert!(s.respond(b"r=someone-elses-nonce,s=AAAA,i=4096").is_err());
    }
}
