//! The credential the gateway adds to a target's requests, read from the files policy picked for
//! the identity, and the forms of it a response must not carry back to the job.

use base64::Engine as _;
use http::{HeaderName, HeaderValue};

use crate::{config::Credentials, policy::Account};

#[derive(Debug, thiserror::Error)]
pub(super) enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the credential is empty")]
    Empty { path: String },
    #[error("{path}: the credential has characters a header cannot carry")]
    NotAHeader { path: String },
    #[error("credentials.header {0:?} is not a header name")]
    HeaderName(String),
    #[error("a password_file without user: Basic credentials need both")]
    NoUser,
}

/// A header the gateway sets on every request to the target (the job's own is removed).
pub(super) struct Injected {
    pub(super) name: HeaderName,
    pub(super) value: HeaderValue,
    /// The secret in the forms a server could echo: as sent, and its parts.
    pub(super) secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injected")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, CredentialError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = text.trim_end_matches(['\r', '\n']).to_string();
    if text.is_empty() {
        return Err(CredentialError::Empty { path: shown });
    }
    if text.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(CredentialError::NotAHeader { path: shown });
    }
    Ok(text)
}

/// What to add for `account` (a token, else a user and password as Basic); `None` when the
/// target holds no HTTP credential for it.
pub(super) fn load(
    credentials: &Credentials,
    account: &Account<'_>,
) -> Result<Option<Injected>, CredentialError> {
    let name = HeaderName::from_bytes(credentials.header.as_bytes())
        .map_err(|_| CredentialError::HeaderName(credentials.header.clone()))?;
    let scheme = credentials.scheme.as_str();
    let with_scheme = |secret: &str| {
        if scheme.is_empty() {
            secret.to_string()
        } else {
            format!("{scheme} {secret}")
        }
    };
    let (value, mut secrets) = if let Some(path) = account.token_file {
        let token = read_secret(path)?;
        (with_scheme(&token), vec![token.into_bytes()])
    } else if let Some(path) = account.password_file {
        let user = account.user.ok_or(CredentialError::NoUser)?;
        let password = read_secret(path)?;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        (
            with_scheme(&basic),
            vec![basic.into_bytes(), password.into_bytes()],
        )
    } else {
        return Ok(None);
    };
    secrets.push(value.clone().into_bytes());
    let mut value = HeaderValue::from_str(&value).map_err(|_| CredentialError::NotAHeader {
        path: String::from("credential"),
    })?;
    value.set_sensitive(true);
    // Short secrets would match ordinary text; they are still never logged or recorded.
    secrets.retain(|s| s.len() >= 8);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(Some(Injected {
        name,
        value,
        secrets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("gw-cred-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn creds(header: &str, scheme: &str) -> Credentials {
        Credentials {
            header: header.into(),
            scheme: scheme.into(),
            ..Credentials::default()
        }
    }

    #[test]
    fn a_token_becomes_a_bearer_header_and_its_echo_forms_are_known() {
        let token = write("token", "s3cr3t-token-value\n");
        let account = Account {
            token_file: Some(&token),
            ..Account::default()
        };
        let i = load(&creds("authorization", "Bearer"), &account)
            .unwrap()
            .unwrap();
        assert_eq!(i.name, "authorization");
        assert_eq!(i.value, "Bearer s3cr3t-token-value");
        assert!(i.value.is_sensitive());
        assert!(i.secrets.contains(&b"s3cr3t-token-value".to_vec()));
        let i = load(&creds("x-api-key", ""), &account).unwrap().unwrap();
        assert_eq!(i.value, "s3cr3t-token-value");
        std::fs::remove_file(token).unwrap();
    }

    #[test]
    fn a_password_becomes_basic_and_bad_files_are_errors() {
        let password = write("password", "hunter2-but-longer");
        let account = Account {
            user: Some("ci"),
            password_file: Some(&password),
            ..Account::default()
        };
        let i = load(&creds("authorization", "Basic"), &account)
            .unwrap()
            .unwrap();
        assert_eq!(i.value, "Basic Y2k6aHVudGVyMi1idXQtbG9uZ2Vy");
        let bad = write("bad", "a\u{1}b");
        let account = Account {
            token_file: Some(&bad),
            ..Account::default()
        };
        assert!(matches!(
            load(&creds("authorization", "Bearer"), &account),
            Err(CredentialError::NotAHeader { .. })
        ));
        assert!(
            load(&creds("authorization", "Bearer"), &Account::default())
                .unwrap()
                .is_none()
        );
        std::fs::remove_file(password).unwrap();
        std::fs::remove_file(bad).unwrap();
    }
}
