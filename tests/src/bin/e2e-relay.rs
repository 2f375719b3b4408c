//! The bench's floor for the HTTP target: the stack the gateway is built on (tokio, rustls,
//! hyper's HTTP/1.1 and HTTP/2 server and client) relaying requests to one upstream with nothing
//! on top: no policy, credentials, masking or recording. It terminates TLS with ALPN h2 and
//! http/1.1 and, per client connection, opens one verified TLS connection upstream, HTTP/1.1 for
//! an HTTP/1.1 client and HTTP/2 when the server offers it for an HTTP/2 client, as the gateway
//! does. What the gateway costs above this is the gateway's own; what this costs above haproxy is
//! the stack's.
//!
//! `e2e-relay LISTEN CERT_PEM KEY_PEM UPSTREAM CA_PEM SERVER_NAME`; prints `listening PORT`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    client::conn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

type Body = BoxBody<Bytes, hyper::Error>;

enum Sender {
    H1(conn::http1::SendRequest<Body>),
    H2(conn::http2::SendRequest<Body>),
}

struct Upstream {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Upstream {
    async fn connect(&self, h2: bool) -> Result<Sender> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut config = (*self.tls).clone();
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(self.name.clone(), tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) =
                conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            return Ok(Sender::H2(sender));
        }
        let (sender, connection) = conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(Sender::H1(sender))
    }
}

async fn forward(
    sender: &Mutex<Sender>,
    request: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    let body = body.boxed();
    let mut slot = sender.lock().await;
    let response = match &mut *slot {
        Sender::H1(s) => {
            s.ready().await?;
            if let Some(pq) = parts.uri.path_and_query().cloned() {
                parts.uri = hyper::http::Uri::from(pq);
            }
            parts.version = hyper::http::Version::HTTP_11;
            let pending = s.send_request(Request::from_parts(parts, body));
            drop(slot);
            pending.await?
        }
        // Only HTTP/2 clients get an HTTP/2 upstream: their URIs carry the authority.
        Sender::H2(s) => {
            let mut stream = s.clone();
            drop(slot);
            parts.headers.remove(hyper::http::header::HOST);
            parts.version = hyper::http::Version::HTTP_2;
            stream
                .send_request(Request::from_parts(parts, body))
                .await?
        }
    };
    Ok(response.map(BodyExt::boxed))
}

async fn serve(
    client: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<Upstream>,
) -> Result<()> {
    client.set_nodelay(true)?;
    let tls = acceptor.accept(client).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let sender = Arc::new(Mutex::new(upstream.connect(h2).await?));
    let service = hyper::service::service_fn(move |request| {
        let sender = Arc::clone(&sender);
        async move { forward(&sender, request).await }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key, upstream, ca, name] = &args[..] else {
        anyhow::bail!("usage: e2e-relay LISTEN CERT_PEM KEY_PEM UPSTREAM CA_PEM SERVER_NAME");
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)
        .context("certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("key")?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).context("CA")? {
        roots.add(c?)?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let upstream = Arc::new(Upstream {
        addr: upstream.parse().context("UPSTREAM: ip:port")?,
        tls: Arc::new(client),
        name: ServerName::try_from(name.clone())?,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?.port());
    loop {
        let (client, _) = listener.accept().await?;
        let (acceptor, upstream) = (acceptor.clone(), Arc::clone(&upstream));
        tokio::spawn(async move {
            if let Err(e) = serve(client, acceptor, upstream).await {
                eprintln!("connection: {e:#}");
            }
        });
    }
}
