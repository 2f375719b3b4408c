//! HTTP at Layer 7: the gateway terminates the job's HTTP (TLS with a certificate of its own CA
//! when the target says `tls = "terminate"`), reads every request the way the upstream will,
//! puts it to policy, holds it for approval, records it write-ahead, and forwards it re-framed on
//! its own connection with the target's credential; responses come back masked by the target's
//! `[[masking]]` rules (refused when they cannot be masked) and with echoes of that credential
//! removed. The job's bytes are never relayed as they are: each side has its own framing, so a
//! request the gateway parsed one way cannot reach the upstream as another.
//!
//! `tls = "passthrough"` is the exception (`passthrough`): its bytes are relayed unread, after a
//! decision on the ClientHello's server name.
//!
//! One file per concern: `request` (what a request is about), `headers` (what crosses), `body`
//! (sampling, counting, masking, the end of a response), `credential` (the header the gateway
//! adds), `echo` (the credential kept out of responses), `upstream` (the gateway's own
//! connections), `exchange` (one request from decision to response), `problem` (the gateway's own
//! answers, also as gRPC statuses), `websocket` (messages relayed after an upgrade, or after an
//! HTTP/2 extended CONNECT).

mod body;
mod credential;
mod echo;
mod exchange;
mod headers;
mod passthrough;
mod problem;
pub mod request;
mod rpc;
mod upstream;
mod websocket;

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{ClientConfig, pki_types::ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    approval::Approvals,
    config::{HostSpec, HttpTls, Target},
    identity::Identity,
    mask::body::BodyRules,
    policy::Policy,
    protocol::upstream_tls,
    record::{EventKind, ProcessInfo, SessionEnd, Store},
    tls_ca::job_tls::{JobTls, Leaf},
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies in both directions.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 100;
/// How long open requests may finish when the gateway stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP handler uses, shared by every session of the daemon.
pub struct Services {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub approvals: Approvals,
    /// Certificates for TLS toward jobs; `None` when no target terminates TLS.
    pub job_tls: Option<Arc<JobTls>>,
    pub upstream_connect_timeout: Duration,
    pub shutdown: CancellationToken,
    /// The body masking of each target that has any, compiled at start.
    pub body_rules: HashMap<String, Arc<BodyRules>>,
    /// Verifying client configurations, per target and ALPN offer (the CA file is read once).
    pub upstream_tls: Mutex<HashMap<(String, UpstreamAlpn), Arc<ClientConfig>>>,
}

/// One intercepted connection to an HTTP target.
pub struct Session<'a> {
    pub services: &'a Services,
    pub target: &'a Target,
    pub dst: SocketAddr,
    pub id: i64,
    pub identity: &'a Identity,
    pub process: Option<&'a ProcessInfo>,
    pub job_id: Option<&'a str>,
}

/// Serves one job connection until it closes; returns the byte counts for the session record.
pub async fn serve(client: TcpStream, upstream: TcpStream, s: Session<'_>) -> SessionEnd {
    let services = s.services;
    let settings = &s.target.http;
    let (client, sni, tls_detail) = match settings.tls {
        HttpTls::Passthrough => return passthrough::serve(client, upstream, &s).await,
        HttpTls::None => (Client::Plain(client), None, None),
        HttpTls::Terminate => match accept_tls(client, &s).await {
            Some((stream, sni, detail)) => (Client::Tls(Box::new(stream)), sni, Some(detail)),
            None => return SessionEnd::default(),
        },
    };
    // A job that speaks HTTP/1.1 sends one request at a time: its upstream connection is
    // HTTP/1.1 too (HTTP/2 framing would only add work). HTTP/2 jobs get HTTP/2 where offered.
    let alpn = match &client {
        Client::Tls(stream) if stream.get_ref().1.alpn_protocol() != Some(b"h2") => {
            UpstreamAlpn::Http1
        }
        _ => UpstreamAlpn::H2OrHttp1,
    };
    if let Some(detail) = tls_detail {
        services
            .store
            .note_event(s.id, EventKind::ClientTls, detail);
    }
    let upstream_tls = match upstream_tls_for(&s, sni.as_deref(), alpn) {
        Ok(t) => t,
        Err(message) => {
            tracing::error!(session = s.id, error = %message, "no upstream TLS configuration");
            services.store.note_event(
                s.id,
                EventKind::Error,
                json!({ "phase": "upstream_tls", "error": message }),
            );
            return SessionEnd::default();
        }
    };
    let counters = Counters::default();
    let exchange = match exchange::Exchange::new(exchange::Setup {
        services,
        session: &s,
        sni,
        upstream: upstream::Upstream::new(
            upstream,
            s.dst,
            upstream_tls,
            services.upstream_connect_timeout,
        ),
        counters: counters.clone(),
    }) {
        Ok(e) => Arc::new(e),
        Err(message) => {
            services.store.note_event(
                s.id,
                EventKind::Error,
                json!({ "phase": "credentials", "error": message }),
            );
            return SessionEnd::default();
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_headers(settings.max_headers)
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // WebSockets over HTTP/2 (RFC 8441), relayed as HTTP/1.1 upgrades toward the upstream.
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(100));
    let relays = exchange.relays.clone();
    let service = hyper::service::service_fn(move |request| {
        let exchange = Arc::clone(&exchange);
        async move { Ok::<_, std::convert::Infallible>(exchange.handle(request).await) }
    });
    let outcome = match client {
        Client::Plain(stream) => run(&builder, TokioIo::new(stream), service, services).await,
        Client::Tls(stream) => run(&builder, TokioIo::new(*stream), service, services).await,
    };
    // Upgraded connections (WebSocket) are relayed after hyper let go of them.
    relays.close();
    relays.wait().await;
    let end = counters.end();
    services.store.note_event(
        s.id,
        EventKind::Closed,
        json!({
            "end": outcome,
            "requests": counters.requests.load(std::sync::atomic::Ordering::Relaxed),
            "bytes_up": end.bytes_up,
            "bytes_down": end.bytes_down,
        }),
    );
    end
}

/// Runs the connection until it ends, or until shutdown lets open requests finish first.
async fn run<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    services: &Services,
) -> String
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => match r {
            Ok(()) => "client_closed".into(),
            Err(e) => format!("client: {e}"),
        },
        () = services.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
            "gateway_stopped".into()
        }
    }
}

/// What the gateway offers the upstream in ALPN.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamAlpn {
    H2OrHttp1,
    Http1,
}

enum Client {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Byte and request counts of one session.
#[derive(Clone, Default)]
pub(crate) struct Counters {
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
}

impl Counters {
    fn end(&self) -> SessionEnd {
        use std::sync::atomic::Ordering::Relaxed;
        SessionEnd {
            bytes_up: self.up.load(Relaxed),
            bytes_down: self.down.load(Relaxed),
        }
    }
}

/// The names the gateway's certificate carries for this target: its hosts, its host name, and
/// the address the job dialled.
fn certificate_names(target: &Target) -> Vec<String> {
    let mut names = target.http.hosts.clone();
    if let HostSpec::Name(n) = &target.address.host
        && !names.contains(n)
    {
        names.push(n.clone());
    }
    names
}

/// TLS toward the job; the server name it sent must be one of the target's hosts.
async fn accept_tls(
    client: TcpStream,
    s: &Session<'_>,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<String>,
    serde_json::Value,
)> {
    let store = &s.services.store;
    let Some(job_tls) = &s.services.job_tls else {
        store.note_event(
            s.id,
            EventKind::Error,
            json!({ "phase": "client_tls", "error": "no gateway CA loaded" }),
        );
        return None;
    };
    let names = certificate_names(s.target);
    let config = match job_tls.config(&Leaf {
        target: &s.target.name,
        dst: s.dst.ip(),
        names: &names,
        ips: &[s.dst.ip()],
        alpn: &[b"h2", b"http/1.1"],
    }) {
        Ok(c) => c,
        Err(e) => {
            store.note_event(
                s.id,
                EventKind::Error,
                json!({ "phase": "client_tls", "error": e.to_string() }),
            );
            return None;
        }
    };
    let accepted = tokio::time::timeout(
        s.target.http.header_timeout,
        tokio_rustls::TlsAcceptor::from(config).accept(client),
    )
    .await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "client_tls", "error": format!("TLS handshake with the client failed: {e}") }),
            );
            return None;
        }
        Err(_) => {
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "client_tls", "error": "no TLS handshake in time" }),
            );
            return None;
        }
    };
    let conn = stream.get_ref().1;
    let sni = conn.server_name().map(str::to_ascii_lowercase);
    let detail = json!({
        "version": conn.protocol_version().and_then(|v| v.as_str()),
        "cipher": conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()),
        "server_name": sni,
        "alpn": conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).to_string()),
    });
    let hosts = &s.target.http.hosts;
    if let Some(name) = &sni
        && !hosts.is_empty()
        && !hosts.iter().any(|h| request::host_matches(h, name))
    {
        store.note_event(
            s.id,
            EventKind::Refused,
            json!({ "reason": format!("TLS server name {name:?} is not a host of target {:?}", s.target.name) }),
        );
        return None;
    }
    Some((stream, sni, detail))
}

/// TLS toward the upstream, verified against: the name the job's TLS named (checked against the
/// target's hosts), else `server_name`, the target's host name, its first host, or its address.
fn upstream_tls_for(
    s: &Session<'_>,
    sni: Option<&str>,
    alpn: UpstreamAlpn,
) -> Result<Option<upstream::UpstreamTls>, String> {
    let settings = &s.target.http;
    if !settings.upstream_tls {
        return Ok(None);
    }
    let name = sni
        .map(str::to_string)
        .or_else(|| settings.server_name.clone())
        .or_else(|| match &s.target.address.host {
            HostSpec::Name(n) => Some(n.clone()),
            HostSpec::Net(_) => None,
        })
        .or_else(|| {
            settings
                .hosts
                .iter()
                .find(|h| !h.starts_with("*."))
                .cloned()
        });
    let name = match name {
        Some(n) => ServerName::try_from(n).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(s.dst.ip().into()),
    };
    let mut cache = s.services.upstream_tls.lock();
    let key = (s.target.name.clone(), alpn);
    let config = match cache.get(&key) {
        Some(c) => Arc::clone(c),
        None => {
            let verifying =
                upstream_tls::verifying(settings.ca_file.as_deref()).map_err(|e| e.to_string())?;
            let mut config = (*verifying).clone();
            config.alpn_protocols = match alpn {
                UpstreamAlpn::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                UpstreamAlpn::Http1 => vec![b"http/1.1".to_vec()],
            };
            let config = Arc::new(config);
            cache.insert(key, Arc::clone(&config));
            config
        }
    };
    Ok(Some(upstream::UpstreamTls { config, name }))
}
