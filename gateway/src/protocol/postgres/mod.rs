//! PostgreSQL at Layer 7: the gateway terminates the client's protocol (pgwire codecs), opens its
//! own session upstream with the target's credentials, and relays message by message, putting
//! every statement to policy, recording it write-ahead and masking results as they stream.
//!
//! One file per concern: `frame` (lengths and limits), `wire` (pgwire messages), `startup` (the
//! client's first packets and the settings policy lets through), `upstream` + `auth` (the
//! gateway's own session), `catalog` (which columns masking covers, the search path), `session`
//! (what is pinned for the session), `frontend` / `backend` (the two directions), `state` (what
//! they share: the server's prepared statements and portals), `journal` (statement recording),
//! `copy` (COPY output masking), `cancel` (cancel keys), `client_tls` (TLS toward the job's client,
//! and the stream type the session is generic over).

mod auth;
mod backend;
pub mod cancel;
mod catalog;
pub mod client_tls;
mod copy;
pub mod frame;
mod frontend;
mod journal;
mod session;
mod startup;
mod state;
mod upstream;
pub mod wire;

use crate::record::EventKind;
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use serde_json::json;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use tokio_util::sync::CancellationToken;

use crate::{
    approval::Approvals,
    config::{ClientTls as ClientTlsMode, HostSpec, MaskingRule, Target},
    identity::Identity,
    mask::{Coverage, Masker},
    policy::Policy,
    record::{ProcessInfo, SessionEnd, Store},
    sql::Classifier,
};
use client_tls::ClientStream;
use startup::Hello;
use wire::GatewayError;

pub use frame::{Frame, FrameError, split as split_frame};

/// How long a client may take to send its startup packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the PostgreSQL handler uses, shared by every session of the daemon.
pub struct Services {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub approvals: Approvals,
    /// `[[masking]]` rules of every target.
    pub masking: Arc<[MaskingRule]>,
    pub cancels: cancel::Registry,
    pub classifier: Classifier,
    /// Certificates for TLS toward clients; `None` when no target offers it.
    pub client_tls: Option<Arc<crate::tls_ca::job_tls::JobTls>>,
    pub upstream_connect_timeout: Duration,
    pub shutdown: CancellationToken,
}

/// One intercepted connection to a postgres target.
pub struct Session<'a> {
    pub services: &'a Services,
    pub target: &'a Target,
    pub dst: SocketAddr,
    pub id: i64,
    pub identity: &'a Identity,
    pub cgroup_id: u64,
    pub process: Option<&'a ProcessInfo>,
    pub job_id: Option<&'a str>,
}

/// What both directions of a session read.
pub struct Context<'a> {
    pub policy: &'a Policy,
    pub identity: &'a Identity,
    pub target: &'a Target,
    pub session_id: i64,
    pub journal: journal::Journal<'a>,
    pub masker: Option<Arc<Masker>>,
    /// Tables and columns covered by column masking rules (from the catalog).
    pub coverage: Coverage,
    /// What is pinned for the session (encoding, limits, search path, account).
    pub session: session::SessionSettings,
    pub approvals: &'a Approvals,
    pub classifier: &'a Classifier,
    pub process: Option<&'a ProcessInfo>,
    pub job_id: Option<&'a str>,
    /// Messages the gateway sends the client on its own (a NoticeResponse while a statement waits
    /// for approval); the backend writes them between the server's messages.
    pub notices: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    /// A second descriptor of the client socket, to notice a client that leaves while it waits.
    pub client_watch: Option<std::os::fd::OwnedFd>,
}

impl Context<'_> {
    /// Text as it may be recorded or shown: the detectors run over it when masking applies
    /// (borrowed when nothing in it is masked: the statement log copies it once, into its event).
    pub fn redact<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match &self.masker {
            Some(m) => m.redact_str(text),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// A recorded value (a parameter) through the detectors (the same string when nothing in it
    /// is masked).
    pub fn redact_value(&self, v: serde_json::Value) -> serde_json::Value {
        match (&self.masker, v) {
            (Some(m), serde_json::Value::String(s)) => {
                let masked = match m.redact_str(&s) {
                    std::borrow::Cow::Owned(masked) => Some(masked),
                    std::borrow::Cow::Borrowed(_) => None,
                };
                serde_json::Value::String(masked.unwrap_or(s))
            }
            (_, v) => v,
        }
    }
}

/// Serves one connection; returns the byte counts for the session record.
/// `upstream` is a TCP connection to the server already open (the intercept layer opens it while it
/// records the session).
pub async fn serve(mut client: TcpStream, upstream: TcpStream, s: Session<'_>) -> SessionEnd {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mode = s.target.postgres.client_tls;
    let tls = s
        .services
        .client_tls
        .as_ref()
        .filter(|_| mode != ClientTlsMode::Off);
    let mut buf = BytesMut::with_capacity(512);
    let Some(hello) = read_hello(&mut client, &mut buf, tls.is_some(), deadline, &s).await else {
        return SessionEnd::default();
    };
    let (Hello::TlsRequest, Some(tls)) = (&hello, tls) else {
        if mode == ClientTlsMode::Require && matches!(hello, Hello::Startup { .. }) {
            // Cancel requests stay accepted in plain: libpq before 17 never encrypts them.
            let message = format!(
                "gateway: target {:?} requires TLS from clients (connect with sslmode=require or verify-full)",
                s.target.name
            );
            s.services.store.note_event(
                s.id,
                EventKind::Refused,
                json!({ "reason": message, "client_tls": false }),
            );
            refuse(
                &mut client,
                GatewayError::fatal(wire::INVALID_AUTHORIZATION, message),
            )
            .await;
            return SessionEnd::default();
        }
        return handle(client, buf, hello, upstream, &s).await;
    };
    let config = match client_tls::config(tls, s.target, s.dst.ip()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(session = s.id, error = %e, "no TLS certificate for the client");
            s.services.store.note_event(
                s.id,
                EventKind::Error,
                json!({ "phase": "client_tls", "error": e.to_string() }),
            );
            return SessionEnd::default();
        }
    };
    if client.write_all(b"S").await.is_err() {
        return SessionEnd::default();
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut stream = match tokio::time::timeout_at(deadline, acceptor.accept(client)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::info!(session = s.id, error = %e, "client TLS handshake failed");
            s.services.store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "client_tls", "error": format!("TLS handshake with the client failed: {e}") }),
            );
            return SessionEnd::default();
        }
        Err(_) => {
            s.services.store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "client_tls", "error": "no TLS handshake within 30s" }),
            );
            return SessionEnd::default();
        }
    };
    s.services
        .store
        .note_event(s.id, EventKind::ClientTls, client_tls::describe(&stream));
    let mut buf = BytesMut::with_capacity(512);
    let Some(hello) = read_hello(&mut stream, &mut buf, false, deadline, &s).await else {
        return SessionEnd::default();
    };
    handle(stream, buf, hello, upstream, &s).await
}

/// Reads the client's first packets before `deadline`; a failure is recorded (and told to the
/// client when it still listens).
async fn read_hello<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    offer_tls: bool,
    deadline: tokio::time::Instant,
    s: &Session<'_>,
) -> Option<Hello> {
    let store = &s.services.store;
    let hello =
        tokio::time::timeout_at(deadline, startup::read_hello(client, buf, offer_tls)).await;
    match hello {
        Ok(Ok(h)) => Some(h),
        Ok(Err(e)) => {
            tracing::info!(session = s.id, error = %e, "postgres startup refused");
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "startup", "error": e.to_string(), "client_tls": client.is_tls() }),
            );
            if let Some(err) = e.client_error() {
                let _ = client.write_all(&err.encode()).await;
                close(client).await;
            }
            None
        }
        Err(_) => {
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "phase": "startup", "error": "no startup packet within 30s" }),
            );
            None
        }
    }
}

async fn handle<C: ClientStream>(
    mut client: C,
    buf: BytesMut,
    hello: Hello,
    upstream: TcpStream,
    s: &Session<'_>,
) -> SessionEnd {
    match hello {
        Hello::Cancel { pid, key } => {
            cancel(s, pid, key, client.is_tls()).await;
            close(&mut client).await;
            SessionEnd::default()
        }
        Hello::Startup { minor, parameters } => {
            session(client, buf, upstream, s, minor, parameters).await
        }
        // Only answered `N` once the caller declined TLS, so it never gets here.
        Hello::TlsRequest => SessionEnd::default(),
    }
}

async fn cancel(s: &Session<'_>, pid: i32, key: i32, tls: bool) {
    let store = &s.services.store;
    let registry = &s.services.cancels;
    let Some(entry) = registry.lookup(pid, key) else {
        store.note_event(s.id, EventKind::Cancel, json!({ "outcome": "unknown key" }));
        return;
    };
    if entry.cgroup_id != s.cgroup_id {
        tracing::warn!(
            session = s.id,
            target_session = entry.session_id,
            "cancel request from another job refused"
        );
        store.note_event(s.id, EventKind::Cancel, json!({ "outcome": "refused: the session belongs to another job", "session": entry.session_id }));
        return;
    }
    let outcome = match cancel::forward(&entry, s.services.upstream_connect_timeout).await {
        Ok(()) => "forwarded".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    store.note_event(
        s.id,
        EventKind::Cancel,
        json!({ "outcome": outcome, "session": entry.session_id, "client_tls": tls }),
    );
    store.note_event(
        entry.session_id,
        EventKind::CancelRequested,
        json!({ "by_session": s.id, "outcome": outcome }),
    );
}

/// The name the server's certificate must carry: configured, the target's host name, or its
/// address.
fn server_name(target: &Target, dst: SocketAddr) -> String {
    if let Some(n) = &target.postgres.server_name {
        return n.clone();
    }
    match &target.address.host {
        HostSpec::Name(n) => n.clone(),
        HostSpec::Net(_) => dst.ip().to_string(),
    }
}

/// Ends the connection cleanly: over TLS that is a close_notify, without which clients report an
/// unexpected EOF (libpq's cancel waits for the close and treats that as a failure). Bounded: a
/// client that stopped reading does not hold the session open.
async fn close<C: AsyncWrite + Unpin>(client: &mut C) {
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
}

async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, err: GatewayError) {
    let _ = client.write_all(&err.encode()).await;
    let _ = client.shutdown().await;
}

async fn session<C: ClientStream>(
    mut client: C,
    leftover: BytesMut,
    tcp: TcpStream,
    s: &Session<'_>,
    minor: u16,
    parameters: std::collections::BTreeMap<String, String>,
) -> SessionEnd {
    let services = s.services;
    let store = &services.store;
    let settings = &s.target.postgres;
    let upstream_startup =
        match startup::upstream_parameters(&parameters, &settings.allowed_settings) {
            Ok(p) => p,
            Err(e) => {
                store.note_event(
                    s.id,
                    EventKind::Refused,
                    json!({ "reason": e.message, "code": e.code }),
                );
                refuse(&mut client, e).await;
                return SessionEnd::default();
            }
        };
    let upstream_params = upstream_startup.parameters;
    let client_user = parameters.get("user").cloned().unwrap_or_default();
    let account = Policy::upstream_account(&s.target.credentials, s.identity);
    let password_file = account.password_file;
    let user = account.user.map_or(client_user.clone(), str::to_string);
    let database = upstream_params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let request = upstream::Request {
        addr: s.dst,
        server_name: server_name(s.target, s.dst),
        settings,
        user: &user,
        password_file: password_file.map(|p| p.as_path()),
        parameters: upstream_params.clone(),
        timeout: services.upstream_connect_timeout,
    };
    let mut up = match upstream::connect(tcp, request).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(session = s.id, error = %e, "upstream session failed");
            store.note_event(
                s.id,
                EventKind::UpstreamError,
                json!({ "upstream": s.dst.to_string(), "user": user, "error": e.to_string() }),
            );
            // The server's own refusals (unknown database, too many clients) are the client's
            // business; anything about the gateway's credentials is not.
            let err = match &e {
                upstream::UpstreamError::Server { code, message, .. }
                    if !code.starts_with("28") =>
                {
                    GatewayError::fatal(wire::CONNECTION_FAILURE, format!("gateway: target {:?}: {message}", s.target.name))
                }
                _ => GatewayError::fatal(
                    wire::CONNECTION_FAILURE,
                    format!("gateway: cannot open a session on target {:?}", s.target.name),
                )
                .with_detail("the gateway's connection or authentication to the server failed; the details are in the gateway's session log"),
            };
            refuse(&mut client, err).await;
            return SessionEnd::default();
        }
    };

    // The server must run with what the gateway pinned before anything is served.
    let mut pinned = session::SessionSettings {
        encoding: upstream_startup.encoding,
        limits: settings.limits,
        search_path: Vec::new(),
        user: user.clone(),
    };
    for m in &up.replay {
        let Ok(p) =
            wire::decode::<pgwire::messages::startup::ParameterStatus>("ParameterStatus", m)
        else {
            continue;
        };
        if let Err(why) = pinned.check_report(&p.name, &p.value) {
            store.note_event(s.id, EventKind::Refused, json!({ "reason": why }));
            refuse(
                &mut client,
                GatewayError::fatal(wire::FEATURE_NOT_SUPPORTED, format!("gateway: {why}")),
            )
            .await;
            return SessionEnd::default();
        }
    }
    let masker = Masker::for_target(&services.masking, &s.target.name);
    let mut coverage = Coverage::default();
    let catalog = async {
        if let Some(q) = masker.as_ref().and_then(|m| catalog::query(&m.columns)) {
            coverage = catalog::coverage(&up.internal_query(&q).await?);
        }
        pinned.search_path = catalog::search_path(&up.internal_query(catalog::SEARCH_PATH).await?);
        Ok::<(), upstream::UpstreamError>(())
    };
    if let Err(e) = catalog.await {
        // Without the catalog, column rules could miss aliased columns and names could resolve
        // unseen: fail closed.
        store.note_event(
            s.id,
            EventKind::UpstreamError,
            json!({ "error": format!("catalog lookup: {e}") }),
        );
        refuse(
            &mut client,
            GatewayError::fatal(
                wire::CONNECTION_FAILURE,
                format!(
                    "gateway: target {:?}: cannot read the catalog (masked columns, search path)",
                    s.target.name
                ),
            ),
        )
        .await;
        return SessionEnd::default();
    }

    let registration = match up.key.map(|(pid, key)| {
        services.cancels.register(cancel::Entry {
            upstream: s.dst,
            pid,
            key,
            cgroup_id: s.cgroup_id,
            session_id: s.id,
        })
    }) {
        Some(Err(e)) => {
            store.note_event(
                s.id,
                EventKind::Error,
                json!({ "phase": "cancel_key", "error": e.to_string() }),
            );
            refuse(
                &mut client,
                GatewayError::fatal(wire::CONNECTION_FAILURE, format!("gateway: {e}")),
            )
            .await;
            return SessionEnd::default();
        }
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let mut hello = BytesMut::new();
    if minor > 0 {
        let unsupported = parameters
            .keys()
            .filter(|k| k.starts_with("_pq_."))
            .cloned()
            .collect();
        hello.extend_from_slice(&wire::negotiate_protocol_version(unsupported));
    }
    hello.extend_from_slice(&wire::auth_ok());
    for m in &up.replay {
        hello.extend_from_slice(m);
    }
    if let Some(r) = &registration {
        hello.extend_from_slice(&wire::backend_key_data(r.pid, r.key));
    }
    hello.extend_from_slice(&wire::ready_for_query(b'I'));
    if client.write_all(&hello).await.is_err() {
        return SessionEnd::default();
    }
    store.note_event(
        s.id,
        EventKind::UpstreamSession,
        json!({
            "upstream": s.dst.to_string(),
            "client_user": client_user,
            "user": user,
            "database": database,
            "tls": up.tls,
            "server_verified": up.verified,
            "client_tls": client.is_tls(),
            "auth": up.method,
            "settings": upstream_params.iter().filter(|(k, _)| k != "database").cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "search_path": pinned.search_path,
            "masking": masker.as_ref().map(|m| m.rules.clone()),
            "masked_columns": coverage.len(),
        }),
    );
    tracing::info!(session = s.id, user = %user, database = %database, tls = up.tls, client_tls = client.is_tls(), "postgres session open");

    let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
    // The TCP socket under any TLS: whether the client left is a socket-level question.
    let client_watch = {
        use std::os::fd::AsFd as _;
        client.tcp().as_fd().try_clone_to_owned().ok()
    };
    let ctx = Context {
        notices,
        client_watch,
        policy: &services.policy,
        identity: s.identity,
        target: s.target,
        session_id: s.id,
        journal: journal::Journal::new(
            store,
            s.id,
            settings.sample_rows,
            settings.sample_bytes_per_session,
        ),
        masker,
        coverage,
        session: pinned,
        approvals: &services.approvals,
        classifier: &services.classifier,
        process: s.process,
        job_id: s.job_id,
    };
    let shared = state::Shared::default();
    let (up_read, up_write) = tokio::io::split(up.stream);
    let up_buffer = std::mem::take(&mut up.buffer);
    let mut fe = frontend::Frontend::new(&ctx, &shared);
    let mut be = backend::Backend::new(&ctx, &shared, notices_rx);
    let outcome = {
        let (client_read, client_write) = client.halves();
        let fe_run = fe.run(
            frame::FrameReader::with_buffer(client_read, leftover, settings.max_message_size),
            up_write,
        );
        let be_run = be.run(
            frame::FrameReader::with_buffer(up_read, up_buffer, frame::MAX_BACKEND_MESSAGE),
            client_write,
        );
        tokio::select! {
            end = fe_run => Outcome::Client(end),
            end = be_run => Outcome::Server(end),
            () = services.shutdown.cancelled() => Outcome::Shutdown,
        }
    };
    drop(registration);
    let (end, error) = match outcome {
        Outcome::Client(frontend::End::Terminated) => ("client_terminated".to_string(), None),
        Outcome::Client(frontend::End::Closed) => ("client_closed".to_string(), None),
        Outcome::Client(frontend::End::ClientIo(e)) => (format!("client_error: {e}"), None),
        Outcome::Client(frontend::End::UpstreamIo(e)) => (format!("upstream_error: {e}"), None),
        Outcome::Client(frontend::End::Violation(err)) => {
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "side": "client", "error": err.message }),
            );
            (
                format!("client protocol violation: {}", err.message),
                Some(err),
            )
        }
        Outcome::Client(frontend::End::RecordFailed(e)) => {
            tracing::error!(session = s.id, error = %e, "cannot record a statement; closing the session");
            (
                format!("record_failed: {e}"),
                Some(GatewayError::fatal(
                    wire::CANNOT_CONNECT_NOW,
                    "gateway: the statement could not be recorded, so it was not run; closing the session",
                )),
            )
        }
        Outcome::Server(backend::End::Closed) => ("upstream_closed".to_string(), None),
        Outcome::Server(backend::End::UpstreamIo(e)) => (format!("upstream_error: {e}"), None),
        Outcome::Server(backend::End::ClientIo(e)) => (format!("client_error: {e}"), None),
        Outcome::Server(backend::End::Violation(err)) => {
            store.note_event(
                s.id,
                EventKind::ProtocolError,
                json!({ "side": "server", "error": err.message }),
            );
            (
                format!("server protocol violation: {}", err.message),
                Some(err),
            )
        }
        Outcome::Shutdown => (
            "gateway_shutdown".to_string(),
            Some(GatewayError::fatal(
                wire::ADMIN_SHUTDOWN,
                "gateway: shutting down",
            )),
        ),
    };
    match error {
        Some(err) => refuse(&mut client, err).await,
        None => close(&mut client).await,
    }
    let (bytes_up, bytes_down) = (fe.bytes_up, be.bytes_down);
    ctx.journal.flush();
    store.note_event(
        s.id,
        EventKind::Closed,
        json!({ "end": end, "bytes_up": bytes_up, "bytes_down": bytes_down }),
    );
    SessionEnd {
        bytes_up,
        bytes_down,
    }
}

enum Outcome {
    Client(frontend::End),
    Server(backend::End),
    Shutdown,
}

#[cfg(test)]
mod tests;
