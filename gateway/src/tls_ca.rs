//! The gateway's X.509 certificate authority, for TLS it terminates toward jobs (PostgreSQL
//! clients with `sslmode=verify-full`). Created on first need under `<state_dir>/tls/` (`ca.pem`,
//! `ca.key` 0600, directory 0700) and kept: runner images trust `ca.pem` once (`gateway targets
//! ca`), so it is never regenerated while present, and a damaged file is an error, not a reason
//! to make a new one. Leaf certificates are issued in memory per destination.

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use chrono::{Datelike as _, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};

/// CA validity: long, because every runner image pins it.
const CA_DAYS: i64 = 3650;
/// Leaf validity: leaves live in memory only and are reissued at each start.
const LEAF_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: {message} (the gateway CA is never replaced on its own; restore the file, or remove both ca.pem and ca.key to create a new CA that runner images must trust again)"
    )]
    Corrupt { path: String, message: String },
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `<state_dir>/tls`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

/// A certificate and its key, ready for a TLS server.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA of `state_dir`, creating it if neither file exists.
    pub fn load_or_create(state_dir: &Path) -> Result<Ca, CaError> {
        let dir = dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(&dir))?;
        // The CLI and the daemon may both get here first: one creates, the other loads.
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        lock.lock().map_err(io_error(&lock_path))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cert = read_if_present(&cert_path)?;
        let key = read_if_present(&key_path)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ca::from_pem(&cert, &cert_path, &key, &key_path),
            (None, None) => Ca::create(&cert_path, &key_path),
            (Some(_), None) => Err(CaError::Corrupt {
                path: key_path.display().to_string(),
                message: "missing while ca.pem is present".into(),
            }),
            (None, Some(_)) => Err(CaError::Corrupt {
                path: cert_path.display().to_string(),
                message: "missing while ca.key is present".into(),
            }),
        }
    }

    fn from_pem(cert: &str, cert_path: &Path, key: &str, key_path: &Path) -> Result<Ca, CaError> {
        let corrupt = |path: &Path, message: String| CaError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        let key_pair = KeyPair::from_pem(key)
            .map_err(|e| corrupt(key_path, format!("not a usable private key: {e}")))?;
        let der = CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|e| corrupt(cert_path, format!("not a PEM certificate: {e}")))?;
        // The certificate must carry this key, or every leaf would fail verification.
        let spki = key_pair.subject_public_key_info();
        if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(corrupt(
                cert_path,
                "does not certify the key in ca.key".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key_pair)
            .map_err(|e| corrupt(cert_path, format!("not a usable CA certificate: {e}")))?;
        Ok(Ca {
            issuer,
            pem: cert.to_string(),
            der,
        })
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway client TLS CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gateway");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        // Key first: a cert without its key is reported as damaged, never silently replaced.
        write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(cert_path, pem.as_bytes(), 0o644)?;
        tracing::info!(path = %cert_path.display(), "created the gateway's client TLS CA");
        Ok(Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate, PEM (what `gateway targets ca` prints).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues a server certificate for `names` (host names) and `ips`, signed by the CA.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<Leaf, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for n in names {
            params
                .subject_alt_names
                .push(SanType::DnsName(n.parse::<rcgen::string::Ia5String>()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        validity(&mut params, LEAF_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// From yesterday (clock skew between hosts) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let ymd =
        |d: chrono::DateTime<Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let now = Utc::now();
    params.not_before = ymd(now - chrono::Duration::days(1));
    params.not_after = ymd(now + chrono::Duration::days(days));
}

fn serial() -> Result<SerialNumber, CaError> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw).map_err(|e| CaError::Io {
        path: "getrandom".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    raw[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&raw))
}

fn read_if_present(path: &Path) -> Result<Option<String>, CaError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CaError::Corrupt {
                path: path.display().to_string(),
                message: "not a PEM file".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Writes `bytes` to a new file at `path`, durably, via a temporary name.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

pub mod job_tls;

#[cfg(test)]
mod tests;
