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
use crate::{
    policy::{StartupSettingError, check_startup_setting},
    sql::ClientEncoding,
};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hello {
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
pub(super) enum StartupError {
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
    pub(super) fn client_error(&self) -> Option<wire::GatewayError> {
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
pub(super) async fn read_hello<S>(
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

/// Settings of the upstream startup packet, as policy allowed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpstreamStartup {
    /// `database` and every setting, explicit `client_encoding` and `standard_conforming_strings`
    /// included (role or database defaults cannot change them underneath).
    pub parameters: Vec<(String, String)>,
    pub encoding: ClientEncoding,
}

/// Splits a startup `options` value as the server does (`pg_split_opts`): on whitespace, a
/// backslash taking the next character literally.
fn split_options(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_ascii_whitespace() => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                c => word.push(c),
            }
        }
        out.push(word);
    }
}

/// `name=value` of a `-c` or `--` switch, named as the server names settings (lower case, dashes
/// as underscores).
fn setting_of(arg: &str) -> Option<(String, String)> {
    let (name, value) = arg.split_once('=')?;
    Some((
        name.replace('-', "_").to_ascii_lowercase(),
        value.to_string(),
    ))
}

/// The settings in a startup `options` value; only `-c name=value` and `--name=value` switches.
fn option_settings(options: &str) -> Result<Vec<(String, String)>, wire::GatewayError> {
    let refuse = |what: &str| {
        wire::GatewayError::fatal(
            wire::INSUFFICIENT_PRIVILEGE,
            format!(
                "gateway: the startup option {what:?} is not allowed through the gateway (only -c name=value settings are)"
            ),
        )
    };
    let words = split_options(options);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let setting = if w == "-c" {
            i += 1;
            words.get(i).and_then(|v| setting_of(v))
        } else if let Some(rest) = w.strip_prefix("-c") {
            setting_of(rest)
        } else if let Some(rest) = w.strip_prefix("--") {
            setting_of(rest)
        } else {
            None
        };
        out.push(setting.ok_or_else(|| refuse(w))?);
        i += 1;
    }
    Ok(out)
}

/// Parameters for the upstream startup packet: `database`, and the client's settings (its
/// `options` and its other startup parameters) that policy allows. Refuses replication
/// connections: they speak a different protocol that statement policy cannot see into.
pub(super) fn upstream_parameters(
    client: &BTreeMap<String, String>,
    allowed: &[String],
) -> Result<UpstreamStartup, wire::GatewayError> {
    if let Some(r) = client.get("replication")
        && !matches!(r.as_str(), "false" | "off" | "no" | "0")
    {
        return Err(wire::GatewayError::fatal(
            wire::FEATURE_NOT_SUPPORTED,
            "gateway: replication connections are not allowed through the gateway",
        ));
    }
    // `options` first: the server applies explicit parameters after it.
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    if let Some(options) = client.get("options") {
        settings.extend(option_settings(options)?);
    }
    for (k, v) in client {
        if matches!(k.as_str(), "user" | "database" | "replication" | "options")
            || k.starts_with("_pq_.")
        {
            continue;
        }
        settings.insert(k.to_ascii_lowercase(), v.clone());
    }
    let mut encoding = ClientEncoding::Utf8;
    for (name, value) in &settings {
        match check_startup_setting(name, value, allowed) {
            Ok(Some(e)) => encoding = e,
            Ok(None) => {}
            Err(e) => {
                let code = match e {
                    StartupSettingError::Encoding(_) => wire::FEATURE_NOT_SUPPORTED,
                    _ => wire::INSUFFICIENT_PRIVILEGE,
                };
                return Err(wire::GatewayError::fatal(code, format!("gateway: {e}")));
            }
        }
    }
    settings.insert("client_encoding".into(), encoding.name().into());
    settings.insert("standard_conforming_strings".into(), "on".into());
    // PostgreSQL's default database is the user name: the name the client asked for, not the
    // upstream account.
    let database = client
        .get("database")
        .or_else(|| client.get("user"))
        .cloned()
        .unwrap_or_default();
    let mut parameters = vec![("database".to_string(), database)];
    parameters.extend(settings);
    Ok(UpstreamStartup {
        parameters,
        encoding,
    })
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

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_passed_on_with_the_lexing_settings_pinned() {
        let p = params(&[("user", "whoever"), ("application_name", "psql")]);
        let out = upstream_parameters(&p, &[]).unwrap().parameters;
        assert!(out.contains(&("database".into(), "whoever".into())));
        assert!(out.contains(&("client_encoding".into(), "UTF8".into())));
        assert!(out.contains(&("standard_conforming_strings".into(), "on".into())));
        assert!(!out.iter().any(|(k, _)| k == "user"));
        let p = params(&[("user", "x"), ("replication", "database")]);
        assert!(upstream_parameters(&p, &[]).is_err());
    }

    #[test]
    fn options_are_split_like_the_server_and_checked() {
        assert_eq!(
            split_options(r"-c a=b\ c  --x-y=1"),
            ["-c", "a=b c", "--x-y=1"]
        );
        let p = params(&[
            ("user", "x"),
            ("options", "-c statement_timeout=5s --application-name=a"),
        ]);
        let out = upstream_parameters(&p, &[]).unwrap().parameters;
        assert!(out.contains(&("statement_timeout".into(), "5s".into())));
        assert!(out.contains(&("application_name".into(), "a".into())));
        for bad in [
            "-c role=admin",
            "-crole=admin",
            "--role=admin",
            "-c search_path=evil",
            "-c standard_conforming_strings=off",
            "-c client_encoding=GBK",
            "-c session_authorization=postgres",
            "-d 5",
            "-c",
        ] {
            let p = params(&[("user", "x"), ("options", bad)]);
            assert!(upstream_parameters(&p, &[]).is_err(), "{bad}");
        }
        let p = params(&[("user", "x"), ("client_encoding", "GBK")]);
        let e = upstream_parameters(&p, &[]).unwrap_err();
        assert_eq!(e.code, wire::FEATURE_NOT_SUPPORTED);
        let p = params(&[("user", "x"), ("Role", "admin")]);
        assert_eq!(
            upstream_parameters(&p, &[]).unwrap_err().code,
            wire::INSUFFICIENT_PRIVILEGE
        );
    }
}
