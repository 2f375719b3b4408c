//! The gateway's own connection to the target: the TCP connection the intercept layer opened,
//! then new ones when the server closes it; TLS verified against the name the target pins; HTTP/2
//! when the server offers it in ALPN, else HTTP/1.1 (one request at a time per connection).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{net::TcpStream, sync::Mutex};

use super::Body;
use crate::protocol::tcp;

#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("cannot connect to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {name} failed: {source}")]
    Tls {
        name: String,
        source: std::io::Error,
    },
    #[error("HTTP handshake with the upstream failed: {0}")]
    Handshake(hyper::Error),
    #[error("the upstream failed the request: {0}")]
    Request(hyper::Error),
}

/// TLS toward the upstream: the verifying configuration and the name the certificate must carry.
#[derive(Clone)]
pub(super) struct UpstreamTls {
    pub(super) config: Arc<ClientConfig>,
    pub(super) name: ServerName<'static>,
}

enum Sender {
    H1(conn::http1::SendRequest<Body>),
    H2(conn::http2::SendRequest<Body>),
}

pub(super) struct Upstream {
    dst: SocketAddr,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    /// The connection the intercept layer opened, used for the first request.
    first: parking_lot::Mutex<Option<TcpStream>>,
    sender: Mutex<Option<Sender>>,
}

impl Upstream {
    pub(super) fn new(
        first: TcpStream,
        dst: SocketAddr,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
    ) -> Upstream {
        Upstream {
            dst,
            tls,
            connect_timeout,
            first: parking_lot::Mutex::new(Some(first)),
            sender: Mutex::new(None),
        }
    }

    /// Whether requests go over TLS (the URI scheme for HTTP/2).
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends one request; HTTP/1.1 requests wait for the connection to be free.
    pub(super) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut slot = self.sender.lock().await;
        let usable = match slot.as_mut() {
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        let sender = match slot.take() {
            Some(s) if usable => s,
            _ => self.connect().await?,
        };
        let response = match sender {
            Sender::H1(mut s) => {
                let mut request = request;
                // Origin form on HTTP/1.1; the host is in the Host header.
                if let Some(pq) = request.uri().path_and_query().cloned() {
                    *request.uri_mut() = http::Uri::from(pq);
                }
                let pending = s.send_request(request);
                *slot = Some(Sender::H1(s));
                drop(slot);
                pending.await
            }
            Sender::H2(s) => {
                let mut request = request;
                // HTTP/2 names the host in :authority, from the URI.
                request.headers_mut().remove(http::header::HOST);
                *request.version_mut() = http::Version::HTTP_2;
                let mut stream = s.clone();
                *slot = Some(Sender::H2(s));
                drop(slot);
                stream.send_request(request).await
            }
        };
        response.map_err(UpstreamError::Request)
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, HTTP/1.1 whatever the
    /// server offers (upgrades are HTTP/1.1's): after a 101 the connection is the new protocol's.
    pub(super) async fn send_upgrade(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let tcp = self.tcp().await?;
        let mut sender = match &self.tls {
            None => handshake_h1(tcp).await?,
            Some(tls) => {
                let mut config = (*tls.config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let stream = self.tls_connect(&Arc::new(config), &tls.name, tcp).await?;
                handshake_h1(stream).await?
            }
        };
        if let Some(pq) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(pq);
        }
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)
    }

    /// The connection the intercept layer opened, while unused, else a new one.
    async fn tcp(&self) -> Result<TcpStream, UpstreamError> {
        let first = self.first.lock().take();
        match first {
            Some(s) => Ok(s),
            None => tcp::connect(self.dst, self.connect_timeout)
                .await
                .map_err(|source| UpstreamError::Connect {
                    dst: self.dst,
                    source,
                }),
        }
    }

    async fn tls_connect(
        &self,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| UpstreamError::Tls {
                name: name.to_str().into_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS handshake in time",
                ),
            })?
            .map_err(|source| UpstreamError::Tls {
                name: name.to_str().into_owned(),
                source,
            })
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let tcp = self.tcp().await?;
        let Some(tls) = &self.tls else {
            return handshake_h1(tcp).await.map(Sender::H1);
        };
        let stream = self.tls_connect(&tls.config, &tls.name, tcp).await?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) =
                conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(UpstreamError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Sender::H2(sender));
        }
        handshake_h1(stream).await.map(Sender::H1)
    }
}

/// An HTTP/1.1 connection; after a 101 it hands its stream over to the upgrade (a connection
/// that sees none runs as a plain one).
async fn handshake_h1<S>(stream: S) -> Result<conn::http1::SendRequest<Body>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(sender)
}
