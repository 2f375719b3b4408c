//! The gateway's own connection to the real server: TCP, TLS as the target asks, the startup
//! packet with the injected account, and authentication with the target's secret.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::{BufMut as _, Bytes, BytesMut};
use pgwire::messages::startup::{Authentication, Startup};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    auth::{self, AuthError, Scram},
    frame::{Frame, FrameError, FrameReader, MAX_BACKEND_MESSAGE, ReadError},
    wire,
};
use crate::{
    config::{PostgresSettings, UpstreamTls},
    protocol::upstream_tls::{self as tls, TlsError},
};

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub(super) type BoxStream = Box<dyn Stream>;

#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the server does not offer TLS, and the target requires it (tls = {0:?})")]
    TlsRefused(UpstreamTls),
    #[error("TLS handshake with the server failed: {0}")]
    Handshake(io::Error),
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    #[error("cannot read the target's password file {path}: {source}")]
    PasswordFile { path: String, source: io::Error },
    #[error("authentication with the server failed: {0}")]
    Auth(#[from] AuthError),
    /// The server refused (bad password, unknown database, too many connections, …).
    #[error("the server refused: {message} ({code})")]
    Server {
        code: String,
        message: String,
        frame: Bytes,
    },
    #[error("unexpected message {0:?} from the server during startup")]
    Unexpected(char),
    #[error("{0}")]
    Decode(#[from] wire::DecodeError),
    #[error("reading from the server: {0}")]
    Read(#[from] ReadError),
    #[error("writing to the server: {0}")]
    Write(io::Error),
    #[error("the server closed the connection during startup")]
    Closed,
}

impl From<FrameError> for UpstreamError {
    fn from(e: FrameError) -> Self {
        UpstreamError::Read(ReadError::Frame(e))
    }
}

/// What the gateway needs to open an upstream session.
pub(super) struct Request<'a> {
    pub addr: SocketAddr,
    pub server_name: String,
    pub settings: &'a PostgresSettings,
    pub user: &'a str,
    pub password_file: Option<&'a Path>,
    /// Startup parameters to pass on (database, application_name, client_encoding, …).
    pub parameters: Vec<(String, String)>,
    pub timeout: Duration,
}

/// An authenticated upstream session, ready for queries.
pub(super) struct Upstream {
    pub stream: BoxStream,
    /// Bytes read past ReadyForQuery.
    pub buffer: BytesMut,
    /// ParameterStatus and NoticeResponse messages of the startup, to replay to the client.
    pub replay: Vec<Bytes>,
    /// The server's BackendKeyData (pid, secret), for cancel requests.
    pub key: Option<(i32, i32)>,
    pub tls: bool,
    /// The server's certificate was verified (CA and name, or the pinned digest).
    pub verified: bool,
    pub method: &'static str,
}

/// The TLS state of the connection being opened.
struct Secured {
    stream: BoxStream,
    tls: bool,
    verified: bool,
    /// The server's certificate (DER), for channel binding.
    server_cert: Option<Vec<u8>>,
}

/// Opens the session over `tcp`, an established connection to the server.
pub(super) async fn connect(tcp: TcpStream, req: Request<'_>) -> Result<Upstream, UpstreamError> {
    let addr = req.addr;
    let timeout = req.timeout;
    match tokio::time::timeout(timeout, open(tcp, req)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout { addr, timeout }),
    }
}

async fn open(tcp: TcpStream, req: Request<'_>) -> Result<Upstream, UpstreamError> {
    let secured = negotiate_tls(tcp, &req).await?;
    let server_cert = secured.server_cert;
    let mut up = Upstream {
        stream: secured.stream,
        buffer: BytesMut::new(),
        replay: Vec::new(),
        key: None,
        tls: secured.tls,
        verified: secured.verified,
        method: "trust",
    };
    let mut startup = Startup::new();
    startup
        .parameters
        .insert("user".to_string(), req.user.to_string());
    for (k, v) in &req.parameters {
        startup.parameters.insert(k.clone(), v.clone());
    }
    let mut buf = BytesMut::new();
    pgwire::messages::Message::encode(&startup, &mut buf).map_err(|e| {
        UpstreamError::Decode(wire::DecodeError {
            what: "StartupMessage",
            reason: e.to_string(),
        })
    })?;
    up.write(&buf).await?;
    up.authenticate(&req, server_cert.as_deref()).await?;
    up.finish_startup().await?;
    Ok(up)
}

async fn negotiate_tls(mut tcp: TcpStream, req: &Request<'_>) -> Result<Secured, UpstreamError> {
    let plain = |tcp: TcpStream| Secured {
        stream: Box::new(tcp),
        tls: false,
        verified: false,
        server_cert: None,
    };
    let mode = req.settings.tls;
    if mode == UpstreamTls::Disable {
        return Ok(plain(tcp));
    }
    // SSLRequest: length 8, code 80877103.
    let mut ssl_request = BytesMut::with_capacity(8);
    ssl_request.put_i32(8);
    ssl_request.put_i32(80_877_103);
    tcp.write_all(&ssl_request)
        .await
        .map_err(UpstreamError::Write)?;
    let answer = tcp.read_u8().await.map_err(|_| UpstreamError::Closed)?;
    match answer {
        b'S' => {}
        b'N' if mode == UpstreamTls::Prefer && req.settings.pinned_certificate.is_none() => {
            return Ok(plain(tcp));
        }
        b'N' => return Err(UpstreamError::TlsRefused(mode)),
        other => return Err(UpstreamError::Unexpected(char::from(other))),
    }
    let (config, verified) = match (mode, req.settings.pinned_certificate) {
        (_, Some(pin)) => (tls::pinned(pin)?, true),
        (UpstreamTls::VerifyFull, None) => (tls::verifying(req.settings.ca_file.as_deref())?, true),
        _ => (tls::encrypting_only()?, false),
    };
    let name = ServerName::try_from(req.server_name.clone()).map_err(|e| {
        UpstreamError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(UpstreamError::Handshake)?;
    let server_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    Ok(Secured {
        stream: Box::new(stream),
        tls: true,
        verified,
        server_cert,
    })
}

impl Upstream {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(UpstreamError::Write)?;
        self.stream.flush().await.map_err(UpstreamError::Write)
    }

    /// Next message during startup (buffer kept in `self.buffer`).
    async fn next(&mut self) -> Result<Frame, UpstreamError> {
        let buf = std::mem::take(&mut self.buffer);
        let mut reader = FrameReader::with_buffer(&mut self.stream, buf, MAX_BACKEND_MESSAGE);
        let frame = reader.next().await;
        self.buffer = reader.into_buffer();
        frame?.ok_or(UpstreamError::Closed)
    }

    fn refused(frame: &Frame) -> UpstreamError {
        let (code, message) = wire::error_fields(frame);
        UpstreamError::Server {
            code,
            message,
            frame: frame.bytes.clone(),
        }
    }

    /// Authenticates with the target's secret. A password (cleartext or MD5) is only sent to a
    /// server whose certificate was verified; SCRAM is bound to the TLS certificate when there is
    /// one, so a server relaying it elsewhere gets nothing usable.
    async fn authenticate(
        &mut self,
        req: &Request<'_>,
        server_cert: Option<&[u8]>,
    ) -> Result<(), UpstreamError> {
        let password = || -> Result<String, UpstreamError> {
            let path = req.password_file.ok_or(AuthError::NoPassword)?;
            let text =
                std::fs::read_to_string(path).map_err(|source| UpstreamError::PasswordFile {
                    path: path.display().to_string(),
                    source,
                })?;
            // One trailing newline is the file's, not the password's.
            Ok(text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_string())
        };
        let mut scram: Option<Scram> = None;
        loop {
            let frame = self.next().await?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(Self::refused(&frame)),
                // NegotiateProtocolVersion: we asked for 3.0, nothing to negotiate; ignore.
                b'v' | b'N' => continue,
                other => return Err(UpstreamError::Unexpected(char::from(other))),
            }
            let auth: Authentication = wire::decode_frame("Authentication", &frame)?;
            match auth {
                Authentication::Ok => return Ok(()),
                Authentication::CleartextPassword => {
                    if !self.verified {
                        return Err(AuthError::UnverifiedPassword("cleartext").into());
                    }
                    self.method = "cleartext";
                    let msg = auth::cleartext(&password()?);
                    self.write(&msg).await?;
                }
                Authentication::MD5Password(salt) => {
                    if !self.verified {
                        return Err(AuthError::UnverifiedPassword("MD5").into());
                    }
                    self.method = "md5";
                    let salt: [u8; 4] = salt.as_slice().try_into().map_err(|_| {
                        AuthError::Unsupported("an MD5 salt that is not 4 bytes".into())
                    })?;
                    let msg = auth::md5_password(req.user, &password()?, salt);
                    self.write(&msg).await?;
                }
                Authentication::SASL(mechanisms) => {
                    let s = Scram::start(&password()?, &mechanisms, server_cert)?;
                    self.method = if s.mechanism() == "SCRAM-SHA-256-PLUS" {
                        "scram-sha-256-plus"
                    } else {
                        "scram-sha-256"
                    };
                    let msg = s.initial();
                    scram = Some(s);
                    self.write(&msg).await?;
                }
                Authentication::SASLContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or(AuthError::Scram("SASLContinue before SASL".into()))?;
                    let msg = s.respond(&data)?;
                    self.write(&msg).await?;
                }
                Authentication::SASLFinal(data) => {
                    scram
                        .as_mut()
                        .ok_or(AuthError::Scram("SASLFinal before SASL".into()))?
                        .verify(&data)?;
                }
                other => {
                    return Err(AuthError::Unsupported(format!("{other:?}")).into());
                }
            }
        }
    }

    async fn finish_startup(&mut self) -> Result<(), UpstreamError> {
        loop {
            let frame = self.next().await?;
            match frame.tag {
                b'S' | b'N' => self.replay.push(frame.bytes),
                b'K' => {
                    let body = frame.body();
                    if body.len() == 8 {
                        let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                        let key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                        self.key = Some((pid, key));
                    }
                }
                b'Z' => return Ok(()),
                b'E' => return Err(Self::refused(&frame)),
                other => return Err(UpstreamError::Unexpected(char::from(other))),
            }
        }
    }

    /// Runs one gateway-internal simple query (before the client is served) and returns its rows.
    pub(super) async fn internal_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<Bytes>>>, UpstreamError> {
        self.write(&wire::query(sql)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.next().await?;
            match frame.tag {
                b'D' => {
                    let values = crate::mask::row_values(frame.body()).map_err(|e| {
                        UpstreamError::Decode(wire::DecodeError {
                            what: "DataRow",
                            reason: e.to_string(),
                        })
                    })?;
                    rows.push(
                        values
                            .into_iter()
                            .map(|v| v.map(Bytes::copy_from_slice))
                            .collect(),
                    );
                }
                b'E' => error = Some(Self::refused(&frame)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}
