//! The client side of the startup phase: encryption requests (SSLRequest handed to the caller when
//! the target offers TLS to clients, otherwise answered `N`; GSSENCRequest always `N`), the
//! startup packet, or a cancel request.

use std::collections::BTreeMap;

use bytes::BytesMut;
use pgwire::messages::startup::Startup;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    frame::{self, FrameError},
    wire::{self, DecodeError},
};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    Startup {
        minor: u16,
        parameters: BTreeMap<String, String>,
    },
    Cancel {
        pid: i32,
        key: i32,
    },
    /// An SSLRequest the caller answers (`S`, then the TLS handshake).
    TlsRequest,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unsupported frontend protocol {major}.{minor}: the gateway speaks 3.0")]
    Version { major: u16, minor: u16 },
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("malformed cancel request")]
    BadCancel,
    #[error("too many encryption requests")]
    TooManyRequests,
    #[error("data sent before the answer to an encryption request")]
    DataAfterRequest,
    #[error("the client closed the connection during startup")]
    Closed,
    #[error("startup: {0}")]
    Io(#[from] std::io::Error),
}

impl StartupError {
    /// The error to send the client before closing, when it is still listening.
    pub fn client_error(&self) -> Option<wire::GatewayError> {
        match self {
            StartupError::Version { .. } => Some(wire::GatewayError::fatal(
                wire::FEATURE_NOT_SUPPORTED,
                self.to_string(),
            )),
            StartupError::Frame(_)
            | StartupError::Decode(_)
            | StartupError::BadCancel
            | StartupError::TooManyRequests
            | StartupError::DataAfterRequest => Some(wire::GatewayError::fatal(
                wire::PROTOCOL_VIOLATION,
                format!("gateway: invalid startup packet: {self}"),
            )),
            StartupError::Closed | StartupError::Io(_) => None,
        }
    }
}

/// Reads the client's first packets. `buf` keeps whatever followed the startup packet. With
/// `offer_tls`, an SSLRequest is returned as `Hello::TlsRequest`; without, it is answered `N`.
pub async fn read_hello<S>(
    client: &mut S,
    buf: &mut BytesMut,
    offer_tls: bool,
) -> Result<Hello, StartupError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut requests = 0;
    loop {
        let packet = loop {
            if let Some(p) = frame::split_startup(buf)? {
                break p;
            }
            if client.read_buf(buf).await? == 0 {
                return Err(if buf.is_empty() {
                    StartupError::Closed
                } else {
                    FrameError::Truncated(buf.len()).into()
                });
            }
        };
        let code = frame::startup_code(&packet);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                requests += 1;
                if requests > 2 {
                    return Err(StartupError::TooManyRequests);
                }
                if !buf.is_empty() {
                    // Bytes sent ahead of the answer would be read as if they came over TLS
                    // (CVE-2021-23214), or are garbage.
                    return Err(StartupError::DataAfterRequest);
                }
                if code == SSL_REQUEST && offer_tls {
                    return Ok(Hello::TlsRequest);
                }
                client.write_all(b"N").await?;
            }
            CANCEL_REQUEST => {
                if packet.len() != 16 {
                    return Err(StartupError::BadCancel);
                }
                let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                let key = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
                return Ok(Hello::Cancel { pid, key });
            }
            _ => {
                let major = (code >> 16) as u16;
                let minor = (code & 0xffff) as u16;
                if major != 3 {
                    return Err(StartupError::Version { major, minor });
                }
                let startup: Startup = wire::decode("StartupMessage", &packet)?;
                return Ok(Hello::Startup {
                    minor,
                    parameters: startup.parameters,
                });
            }
        }
    }
}

/// Startup parameters that select the upstream session and are passed on unchanged; anything else
/// the client sends is passed on too, except the account and replication.
pub const NOT_FORWARDED: &[&str] = &["user", "replication"];

/// Parameters for the upstream startup packet. Refuses replication connections: they speak a
/// different protocol that statement policy cannot see into.
pub fn upstream_parameters(
    client: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, wire::GatewayError> {
    if let Some(r) = client.get("replication")
        && !matches!(r.as_str(), "false" | "off" | "no" | "0")
    {
        return Err(wire::GatewayError::fatal(
            wire::FEATURE_NOT_SUPPORTED,
            "gateway: replication connections are not allowed through the gateway",
        ));
    }
    let mut out: Vec<(String, String)> = client
        .iter()
        .filter(|(k, _)| !NOT_FORWARDED.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // PostgreSQL's default database is the user name: the name the client asked for, not the
    // upstream account.
    if !client.contains_key("database") {
        let db = client.get("user").cloned().unwrap_or_default();
        out.push(("database".to_string(), db));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut p = ((8 + body.len()) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    async fn hello(bytes: Vec<u8>) -> (Result<Hello, StartupError>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(65536);
        b.write_all(&bytes).await.unwrap();
        drop(b.shutdown().await);
        let mut buf = BytesMut::new();
        let r = read_hello(&mut a, &mut buf, false).await;
        let mut answered = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            b.read_to_end(&mut answered),
        )
        .await;
        (r, answered)
    }

    #[tokio::test]
    async fn ssl_is_refused_then_startup_read() {
        let mut bytes = packet(SSL_REQUEST, &[]);
        let (r, _) = hello(bytes.clone()).await;
        assert!(matches!(r, Err(StartupError::Closed)));
        bytes = packet(SSL_REQUEST, &[]);
        let (r, answered) = hello(bytes).await;
        assert!(r.is_err());
        assert_eq!(answered, b"N");
    }

    #[tokio::test]
    async fn ssl_is_handed_over_when_offered_and_gss_still_refused() {
        let (mut a, mut b) = tokio::io::duplex(65536);
        b.write_all(&packet(GSSENC_REQUEST, &[])).await.unwrap();
        let mut buf = BytesMut::new();
        let task = tokio::spawn(async move {
            let r = read_hello(&mut a, &mut buf, true).await;
            (r, buf)
        });
        let mut answer = [0u8; 1];
        b.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        b.write_all(&packet(SSL_REQUEST, &[])).await.unwrap();
        let (r, buf) = task.await.unwrap();
        assert_eq!(r.unwrap(), Hello::TlsRequest);
        assert!(buf.is_empty());
        // A ClientHello sent ahead of the answer is refused, not read as plain data.
        let mut bytes = packet(SSL_REQUEST, &[]);
        bytes.extend_from_slice(&[0x16, 3, 1, 0, 5]);
        let (mut a, mut b) = tokio::io::duplex(65536);
        b.write_all(&bytes).await.unwrap();
        let mut buf = BytesMut::new();
        let r = read_hello(&mut a, &mut buf, true).await;
        assert!(matches!(r, Err(StartupError::DataAfterRequest)), "{r:?}");
    }

    #[tokio::test]
    async fn startup_and_cancel_packets() {
        let body = b"user\0bob\0database\0app\0\0";
        let (r, _) = hello(packet(196_608, body)).await;
        let Hello::Startup { minor, parameters } = r.unwrap() else {
            panic!()
        };
        assert_eq!(minor, 0);
        assert_eq!(parameters["user"], "bob");
        let mut cancel = 7i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&9i32.to_be_bytes());
        let (r, _) = hello(packet(CANCEL_REQUEST, &cancel)).await;
        assert_eq!(r.unwrap(), Hello::Cancel { pid: 7, key: 9 });
    }

    #[tokio::test]
    async fn bogus_versions_and_lengths_are_errors() {
        let (r, _) = hello(packet(0x0002_0000, b"user\0x\0\0")).await;
        let e = r.unwrap_err();
        assert!(matches!(e, StartupError::Version { major: 2, .. }));
        assert!(e.client_error().is_some());
        let (r, _) = hello(vec![0x7f, 0, 0, 0, 1, 2, 3, 4]).await;
        assert!(matches!(
            r,
            Err(StartupError::Frame(FrameError::BadStartupLength { .. }))
        ));
        let (r, _) = hello(vec![0, 0, 0, 4]).await;
        assert!(r.is_err());
        // Truncated mid-packet.
        let (r, _) = hello(vec![0, 0, 0, 40, 0, 3, 0, 0]).await;
        assert!(matches!(
            r,
            Err(StartupError::Frame(FrameError::Truncated(_)))
        ));
    }

    #[test]
    fn parameters_passed_on() {
        let mut p = BTreeMap::new();
        p.insert("user".to_string(), "whoever".to_string());
        p.insert("application_name".to_string(), "psql".to_string());
        let out = upstream_parameters(&p).unwrap();
        assert!(out.contains(&("database".into(), "whoever".into())));
        assert!(!out.iter().any(|(k, _)| k == "user"));
        p.insert("replication".into(), "database".into());
        assert!(upstream_parameters(&p).is_err());
    }
}
