//! Keys: the gateway's host key per SSH target (generated once, kept under the state directory),
//! the upstream credentials of a target, and the known_hosts lines runner images trust.
//!
//! The one trust step: the job's `ssh` verifies the host it reaches against `known_hosts`, and what
//! it reaches is the gateway. `gateway targets known-hosts` prints a line per SSH target with the
//! gateway's key for it; a runner image adds those lines to `/etc/ssh/ssh_known_hosts` and keeps
//! `StrictHostKeyChecking` on. Or, with `--ca`, one `@cert-authority` line for a gateway host CA
//! (created then, under the state directory): from then on the gateway also presents its host key
//! certified by that CA, so new targets need no new line. The real host's key is pinned in the
//! configuration instead (`[targets.ssh] host_key`), and the gateway refuses another.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use russh::keys::{
    Certificate, PrivateKey,
    ssh_key::{LineEnding, certificate, private::Ed25519Keypair},
};

use crate::config::{AddressSpec, HostSpec, Target};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a usable private key: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: the password file is empty")]
    EmptyPassword { path: String },
    #[error("cannot certify the host key of target {target}: {message}")]
    Certificate { target: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `<state_dir>/ssh/host_keys`: 0700, root's.
pub fn host_key_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ssh").join("host_keys")
}

/// The gateway's host key for `target`, created on first use (Ed25519).
pub fn host_key(state_dir: &Path, target: &str) -> Result<PrivateKey, KeyError> {
    load_or_create(
        &host_key_dir(state_dir),
        &format!("{target}_ed25519"),
        &format!("gateway host key for target {target}"),
    )
}

fn ca_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ssh").join("host_ca_ed25519")
}

/// The gateway's host CA, if one was created (`gateway targets known-hosts --ca`).
pub fn host_ca(state_dir: &Path) -> Result<Option<PrivateKey>, KeyError> {
    if !ca_path(state_dir).exists() {
        return Ok(None);
    }
    create_host_ca(state_dir).map(Some)
}

/// The gateway's host CA, created if missing.
pub fn create_host_ca(state_dir: &Path) -> Result<PrivateKey, KeyError> {
    let path = ca_path(state_dir);
    let dir = path.parent().unwrap_or(state_dir).to_path_buf();
    load_or_create(&dir, "host_ca_ed25519", "gateway host CA")
}

/// `host_key` certified by `ca` as a host key for the target's address (wildcard principals, as
/// OpenSSH ≥ 8.5 matches them), valid from five minutes ago, forever.
pub fn host_certificate(
    ca: &PrivateKey,
    host_key: &PrivateKey,
    target: &Target,
) -> Result<Certificate, KeyError> {
    let err = |e: russh::keys::ssh_key::Error| KeyError::Certificate {
        target: target.name.clone(),
        message: e.to_string(),
    };
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(io_error(Path::new("/dev/urandom")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut b = certificate::Builder::new(
        nonce.to_vec(),
        host_key.public_key().key_data().clone(),
        now.saturating_sub(300),
        u64::MAX,
    )
    .map_err(err)?;
    b.cert_type(certificate::CertType::Host).map_err(err)?;
    b.key_id(format!("gateway:{}", target.name)).map_err(err)?;
    match principal(&target.address) {
        Some(p) => b.valid_principal(p).map_err(err)?,
        None => b.all_principals_valid().map_err(err)?,
    };
    b.sign(ca).map_err(err)
}

/// The host part of the target's known_hosts pattern (principals carry no port).
fn principal(address: &AddressSpec) -> Option<String> {
    let patterns = host_patterns(&AddressSpec {
        host: address.host.clone(),
        port: 22,
    })?;
    Some(patterns)
}

/// `@cert-authority` line trusting the gateway's host CA for every SSH target.
pub fn cert_authority_line(ca: &PrivateKey, targets: &[&Target]) -> String {
    let openssh = ca.public_key().to_openssh().unwrap_or_default();
    let mut words = openssh.split_whitespace();
    let (alg, blob) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let hosts: Vec<String> = targets
        .iter()
        .filter_map(|t| host_patterns(&t.address))
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else {
        hosts.join(",")
    };
    format!("@cert-authority {hosts} {alg} {blob} gateway-host-ca")
}

fn load_or_create(dir: &Path, name: &str, comment: &str) -> Result<PrivateKey, KeyError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return PrivateKey::from_openssh(&text).map_err(|e| KeyError::Invalid {
                path: path.display().to_string(),
                message: e.to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&path)(e)),
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for d in [dir.parent().unwrap_or(dir), dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io_error(d))?;
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io_error(Path::new("/dev/urandom")))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    // Written aside and linked into place: two processes creating the key at once agree on one.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_error(&tmp))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load_or_create(dir, name, comment)
        }
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// How the gateway authenticates to the real host.
#[derive(Clone)]
pub enum UpstreamSecret {
    Key(std::sync::Arc<PrivateKey>),
    Password(String),
}

/// Reads the secret of a target (`key_file` first, else `password_file`). Read per connection, so
/// a rotated secret is used without a restart.
pub fn upstream_secret(target: &Target) -> Result<UpstreamSecret, KeyError> {
    if let Some(path) = &target.credentials.key_file {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| KeyError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        return Ok(UpstreamSecret::Key(std::sync::Arc::new(key)));
    }
    if let Some(path) = &target.credentials.password_file {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let password = text.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            return Err(KeyError::EmptyPassword {
                path: path.display().to_string(),
            });
        }
        return Ok(UpstreamSecret::Password(password));
    }
    Err(KeyError::Invalid {
        path: "<config>".into(),
        message: format!("target {:?} has no key_file or password_file", target.name),
    })
}

/// known_hosts host patterns for a target address; `None` when the address cannot be written as
/// patterns (a network that does not end on an octet boundary).
pub fn host_patterns(address: &AddressSpec) -> Option<String> {
    let host = match &address.host {
        HostSpec::Name(name) => name.clone(),
        HostSpec::Net(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
        HostSpec::Net(IpNet::V4(net)) if net.prefix_len() % 8 == 0 => {
            let octets = net.network().octets();
            let keep = usize::from(net.prefix_len() / 8);
            (0..4)
                .map(|i| {
                    if i < keep {
                        octets[i].to_string()
                    } else {
                        "*".to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        }
        HostSpec::Net(_) => return None,
    };
    Some(if address.port == 22 {
        host
    } else {
        format!("[{host}]:{}", address.port)
    })
}

/// The known_hosts line for one target, or a comment saying why there is none.
pub fn known_hosts_line(target: &Target, key: &PrivateKey) -> String {
    let public = key.public_key();
    let openssh = public.to_openssh().unwrap_or_default();
    let mut words = openssh.split_whitespace();
    let (alg, blob) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match host_patterns(&target.address) {
        Some(hosts) => format!("{hosts} {alg} {blob} gateway:{}", target.name),
        None => format!(
            "# target {}: {} cannot be written as known_hosts patterns; key {alg} {blob}",
            target.name, target.address
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_openssh_conventions() {
        let p = |s| host_patterns(&AddressSpec::parse(s, false).unwrap());
        assert_eq!(p("10.0.0.7:22").as_deref(), Some("10.0.0.7"));
        assert_eq!(p("10.0.0.7:2222").as_deref(), Some("[10.0.0.7]:2222"));
        assert_eq!(p("10.1.2.0/24:22").as_deref(), Some("10.1.2.*"));
        assert_eq!(p("10.1.0.0/16:22").as_deref(), Some("10.1.*.*"));
        assert_eq!(p("10.1.0.0/20:22"), None);
        assert_eq!(p("[fd00::5]:22").as_deref(), Some("fd00::5"));
        assert_eq!(p("web.example:22").as_deref(), Some("web.example"));
    }

    #[test]
    fn a_host_key_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("gw-ssh-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = host_key(&dir, "web").unwrap();
        let b = host_key(&dir, "web").unwrap();
        assert_eq!(a.public_key().key_data(), b.public_key().key_data());
        let c = host_key(&dir, "db").unwrap();
        assert_ne!(a.public_key().key_data(), c.public_key().key_data());
        let mode = std::fs::metadata(host_key_dir(&dir).join("web_ed25519"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
