//! Randomness for secrets and identifiers (session cookies, CSRF tokens, PKCE verifiers, OIDC state
//! and nonce, request and job ids), from the kernel through getrandom(2). It fails closed: when the
//! kernel cannot give randomness the caller gets an error, never a predictable value.

use base64::Engine as _;

#[derive(Debug, thiserror::Error)]
#[error("the kernel's random source failed: {0}")]
pub struct RandomError(String);

type Source = fn(&mut [u8]) -> Result<(), getrandom::Error>;

fn bytes_from<const N: usize>(source: Source) -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    source(&mut buf).map_err(|e| RandomError(e.to_string()))?;
    Ok(buf)
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    bytes_from(getrandom::getrandom)
}

fn token_from(source: Source) -> Result<String, RandomError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes_from::<32>(source)?))
}

/// A 256-bit secret, base64url without padding (cookies, CSRF tokens, PKCE, state, nonce).
pub fn token() -> Result<String, RandomError> {
    token_from(getrandom::getrandom)
}

fn id_from<const N: usize>(prefix: &str, source: Source) -> Result<String, RandomError> {
    let hex = crate::hex::lower(&bytes_from::<N>(source)?);
    Ok(format!("{prefix}-{hex}"))
}

/// `PREFIX-` and `N` random bytes in hex (ids people type: `apr-…`, `job-…`).
pub fn id<const N: usize>(prefix: &str) -> Result<String, RandomError> {
    id_from::<N>(prefix, getrandom::getrandom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(_: &mut [u8]) -> Result<(), getrandom::Error> {
        Err(getrandom::Error::UNSUPPORTED)
    }

    #[test]
    fn a_failing_source_gives_an_error_not_a_value() {
        assert!(bytes_from::<16>(broken).is_err());
        let e = token_from(broken).unwrap_err();
        assert!(e.to_string().contains("random source failed"), "{e}");
        assert!(id_from::<5>("apr", broken).is_err());
    }

    #[test]
    fn values_have_their_shape_and_differ() {
        let (a, b) = (token().unwrap(), token().unwrap());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        let id = id::<5>("apr").unwrap();
        assert!(id.starts_with("apr-") && id.len() == 14, "{id}");
    }
}
