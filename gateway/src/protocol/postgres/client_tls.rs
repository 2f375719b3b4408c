//! TLS toward the job's client (`[targets.postgres] client_tls`). The gateway answers SSLRequest
//! with `S` and presents a certificate for the address the client dialled, issued by the gateway's
//! own CA (`gateway targets ca`), so `sslmode=verify-full` verifies against that CA. The session
//! then runs over the TLS stream exactly as over TCP: `ClientStream` is what it is generic over.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    net::{
        TcpStream,
        tcp::{ReadHalf as TcpReadHalf, WriteHalf as TcpWriteHalf},
    },
};
use tokio_rustls::server::TlsStream;

use crate::{
    config::{HostSpec, Target},
    tls_ca::{Ca, CaError},
};

/// Server configurations kept; a CIDR target gets one per address dialled, so the cache is
/// bounded (cleared when full: entries are cheap to make again).
const MAX_CONFIGS: usize = 4096;

/// ALPN protocol name of PostgreSQL (libpq ≥ 17 offers it, and a server offering it must agree).
const ALPN: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// How long an issued certificate is served before a fresh one replaces it: far inside its year
/// of validity, so a daemon that runs for years never presents an expired one.
const REISSUE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

type Configs = HashMap<(String, IpAddr), (Arc<ServerConfig>, Instant)>;

/// The CA and the server configurations issued from it, shared by every postgres session.
pub struct ClientTls {
    ca: Ca,
    configs: Mutex<Configs>,
    reissue_after: Duration,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn new(ca: Ca) -> ClientTls {
        ClientTls {
            ca,
            configs: Mutex::new(HashMap::new()),
            reissue_after: REISSUE_AFTER,
        }
    }

    /// The server configuration for a connection to `target` at `dst` (issued on first use).
    pub fn config(
        &self,
        target: &Target,
        dst: IpAddr,
    ) -> Result<Arc<ServerConfig>, ClientTlsError> {
        let key = (target.name.clone(), dst);
        if let Some((c, issued)) = self.lock().get(&key)
            && issued.elapsed() < self.reissue_after
        {
            return Ok(Arc::clone(c));
        }
        let (names, ips) = subject_names(target, dst);
        let leaf = self.ca.issue(&target.name, &names, &ips)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let config = Arc::new(config);
        let mut map = self.lock();
        if map.len() >= MAX_CONFIGS {
            map.clear();
        }
        map.insert(key, (Arc::clone(&config), Instant::now()));
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Configs> {
        self.configs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the certificate names: the address the client dialled (a network target's addresses
/// cannot all be listed), and the target's host name when it has one (`host=` names it).
pub fn subject_names(target: &Target, dst: IpAddr) -> (Vec<String>, Vec<IpAddr>) {
    let mut ips = vec![dst];
    let mut names = Vec::new();
    match &target.address.host {
        HostSpec::Name(n) => names.push(n.clone()),
        HostSpec::Net(net) if net.prefix_len() == net.max_prefix_len() && net.addr() != dst => {
            ips.push(net.addr());
        }
        HostSpec::Net(_) => {}
    }
    (names, ips)
}

/// A client connection the postgres session runs over: TCP, or TLS over TCP.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Read and write halves that run concurrently (both directions of the relay).
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
    /// The TCP socket underneath (socket-level checks such as a client leaving).
    fn tcp(&self) -> &TcpStream;
    fn is_tls(&self) -> bool;
}

impl ClientStream for TcpStream {
    type Reader<'a> = TcpReadHalf<'a>;
    type Writer<'a> = TcpWriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        // Borrowed halves: no lock between the directions on the plain path.
        self.split()
    }

    fn tcp(&self) -> &TcpStream {
        self
    }

    fn is_tls(&self) -> bool {
        false
    }
}

impl ClientStream for TlsStream<TcpStream> {
    type Reader<'a> = ReadHalf<&'a mut Self>;
    type Writer<'a> = WriteHalf<&'a mut Self>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        // One TLS state machine serves both directions, so the halves share it under a lock.
        tokio::io::split(self)
    }

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// What the session records about the client's TLS connection.
pub fn describe(stream: &TlsStream<TcpStream>) -> serde_json::Value {
    let conn = stream.get_ref().1;
    serde_json::json!({
        "version": conn.protocol_version().and_then(|v| v.as_str()),
        "cipher": conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()),
        "server_name": conn.server_name(),
        "alpn": conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddressSpec;

    fn target(address: &str) -> Target {
        let cfg = crate::config::Config::parse(
            &format!(
                "[[targets]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"{address}\"\n[targets.postgres]\ntls = \"verify-full\"\n"
            ),
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = cfg.targets[0].clone();
        assert_eq!(t.address, AddressSpec::parse(address, false).unwrap());
        t
    }

    #[test]
    fn certificates_are_reused_and_replaced_well_before_they_expire() {
        let dir = std::env::temp_dir().join(format!("gw-client-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::load_or_create(&dir).unwrap();
        let db = target("10.0.0.5:5432");
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let tls = ClientTls::new(ca);
        let first = tls.config(&db, ip).unwrap();
        assert!(Arc::ptr_eq(&first, &tls.config(&db, ip).unwrap()));
        // Past the reissue age, the next connection gets a newly issued certificate.
        let tls = ClientTls {
            reissue_after: Duration::ZERO,
            ..tls
        };
        let again = tls.config(&db, ip).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificates_name_the_address_dialled_and_the_host_name() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (names, ips) = subject_names(&target("10.0.0.5:5432"), ip("10.0.0.5"));
        assert!(names.is_empty());
        assert_eq!(ips, [ip("10.0.0.5")]);
        let (names, ips) = subject_names(&target("10.1.0.0/16:5432"), ip("10.1.2.3"));
        assert!(names.is_empty());
        assert_eq!(ips, [ip("10.1.2.3")]);
        let (names, ips) = subject_names(&target("db.example:5432"), ip("192.0.2.7"));
        assert_eq!(names, ["db.example"]);
        assert_eq!(ips, [ip("192.0.2.7")]);
    }
}
