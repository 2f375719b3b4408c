//! TLS the gateway terminates toward jobs: server configurations with leaf certificates issued
//! by the gateway's CA, made on first use and cached per target, destination and protocol.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::ServerConfig;

use super::{Ca, CaError};

/// Server configurations kept; a CIDR target gets one per address dialled, so the cache is
/// bounded (cleared when full: entries are cheap to make again).
const MAX_CONFIGS: usize = 4096;

/// How long an issued certificate is served before a fresh one replaces it: far inside its year
/// of validity, so a daemon that runs for years never presents an expired one.
const REISSUE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum JobTlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What a certificate is for: the target, the address the job dialled, the names it carries and
/// the ALPN protocols the server offers.
pub struct Leaf<'a> {
    pub target: &'a str,
    pub dst: IpAddr,
    pub names: &'a [String],
    pub ips: &'a [IpAddr],
    pub alpn: &'a [&'a [u8]],
}

type Key = (String, IpAddr, Vec<Vec<u8>>);
type Configs = HashMap<Key, (Arc<ServerConfig>, Instant)>;

/// The CA and the server configurations issued from it, shared by every protocol.
pub struct JobTls {
    ca: Ca,
    configs: Mutex<Configs>,
    reissue_after: Duration,
}

impl std::fmt::Debug for JobTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTls").finish_non_exhaustive()
    }
}

impl JobTls {
    pub fn new(ca: Ca) -> JobTls {
        JobTls {
            ca,
            configs: Mutex::new(HashMap::new()),
            reissue_after: REISSUE_AFTER,
        }
    }

    /// The server configuration for `leaf` (issued on first use, reissued when old).
    pub fn config(&self, leaf: &Leaf<'_>) -> Result<Arc<ServerConfig>, JobTlsError> {
        let alpn: Vec<Vec<u8>> = leaf.alpn.iter().map(|a| a.to_vec()).collect();
        let key = (leaf.target.to_string(), leaf.dst, alpn.clone());
        if let Some((c, issued)) = self.lock().get(&key)
            && issued.elapsed() < self.reissue_after
        {
            return Ok(Arc::clone(c));
        }
        let issued = self.ca.issue(leaf.target, leaf.names, leaf.ips)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(issued.chain, issued.key)?;
        config.alpn_protocols = alpn;
        let config = Arc::new(config);
        let mut map = self.lock();
        if map.len() >= MAX_CONFIGS {
            map.clear();
        }
        map.insert(key, (Arc::clone(&config), Instant::now()));
        Ok(config)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Configs> {
        self.configs.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_reused_and_replaced_well_before_they_expire() {
        let dir = std::env::temp_dir().join(format!("gw-job-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::load_or_create(&dir).unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let leaf = Leaf {
            target: "db",
            dst: ip,
            names: &[],
            ips: &[ip],
            alpn: &[b"postgresql"],
        };
        let tls = JobTls::new(ca);
        let first = tls.config(&leaf).unwrap();
        assert!(Arc::ptr_eq(&first, &tls.config(&leaf).unwrap()));
        // Another protocol on the same destination gets its own configuration.
        let h2 = tls
            .config(&Leaf {
                alpn: &[b"h2"],
                ..leaf
            })
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &h2));
        // Past the reissue age, the next connection gets a newly issued certificate.
        let tls = JobTls {
            reissue_after: Duration::ZERO,
            ..tls
        };
        let again = tls.config(&leaf).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
