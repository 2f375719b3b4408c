//! TLS toward the job's client (`[targets.postgres] client_tls`). The gateway answers SSLRequest
//! with `S` and presents a certificate for the address the client dialled, issued by the gateway's
//! own CA (`gateway targets ca`), so `sslmode=verify-full` verifies against that CA. The session
//! then runs over the TLS stream exactly as over TCP: `ClientStream` is what it is generic over.

use std::net::IpAddr;

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
    tls_ca::job_tls::{JobTls, JobTlsError, Leaf},
};

/// ALPN protocol name of PostgreSQL (libpq ≥ 17 offers it, and a server offering it must agree).
const ALPN: &[u8] = b"postgresql";

/// The server configuration for a connection to `target` at `dst` (issued on first use).
pub fn config(
    tls: &JobTls,
    target: &Target,
    dst: IpAddr,
) -> Result<std::sync::Arc<rustls::ServerConfig>, JobTlsError> {
    let (names, ips) = subject_names(target, dst);
    tls.config(&Leaf {
        target: &target.name,
        dst,
        names: &names,
        ips: &ips,
        alpn: &[ALPN],
    })
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
