//! SSH targets at Layer 7: the gateway is the SSH server the job talks to and an SSH client of the
//! real host. The job may present any key or none (who it is comes from the job binding); the
//! gateway authenticates upstream with the target's key or password, pins the host's key, and
//! relays channel by channel, asking policy about every exec, shell line, sftp operation and
//! forwarding request, and recording what happened.
//!
//! One file per concern: `keys` (host keys, secrets, known_hosts), `upstream` (client side),
//! `job` (server side: requests → typed operations), `bridge` (channel pumps, flow control),
//! `forward` (remote forwarding: the host listens for the job), `hold` (an operation waiting for
//! approval), `sftp` and `shell` (what flows through those channels), `sftp_gate` and
//! `shell_gate` (sftp requests and shell lines decided in order, held for approval), `argv` (exec
//! commands and shell lines as the commands they run), `resolve` (paths as the host resolves
//! them), `recorder` (what is kept).

mod bridge;
mod forward;
mod hold;
mod job;
pub mod keys;
mod recorder;
mod resolve;
mod sftp;
mod sftp_gate;
mod shell;
mod shell_gate;
mod upstream;

use crate::record::EventKind;
use std::{path::PathBuf, sync::Arc, sync::atomic::Ordering, time::Duration};

use russh::{MethodKind, MethodSet, server};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    approval::Approvals,
    config::Target,
    identity::Identity,
    mask::Detector,
    policy::Policy,
    record::{Origin, ProcessInfo, SessionEnd, Store},
};

/// What the SSH handler uses, shared by every session of the daemon.
pub struct Services {
    pub store: Store,
    pub policy: Arc<Policy>,
    pub approvals: Approvals,
    /// Host keys and recordings live under it.
    pub state_dir: PathBuf,
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
    #[error("upstream: {0}")]
    Upstream(russh::Error),
    #[error(
        "the host presented {presented}, which is not the key pinned in the configuration (targets.ssh.host_key)"
    )]
    HostKeyMismatch { presented: String },
    #[error("the host refused the gateway's credentials for user {user:?}")]
    UpstreamAuth { user: String },
    #[error("no upstream user: set [targets.credentials] user or let the job name one")]
    NoUser,
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("the job did not finish key exchange and authentication within {0:?}")]
    HandshakeTimeout(Duration),
}

/// Output of SSH sessions is masked with these detectors: keys, tokens, card numbers.
pub const DETECTORS: &[Detector] = &[
    Detector::PrivateKey,
    Detector::AwsAccessKey,
    Detector::Jwt,
    Detector::CreditCard,
];

/// The receive window granted to the job (russh's default, restored after throttling).
pub const JOB_WINDOW: u32 = 2 * 1024 * 1024;

/// Everything the handlers of one SSH session share.
pub struct Ctx {
    pub session_id: i64,
    pub target: Target,
    pub identity: Identity,
    pub process: Option<ProcessInfo>,
    pub job_id: Option<String>,
    pub store: Store,
    pub policy: Arc<Policy>,
    pub approvals: Approvals,
    pub recordings: PathBuf,
    pub detectors: Arc<[Detector]>,
    pub counters: bridge::Counters,
    pub forwards: forward::RemoteForwards,
    /// Paths as the host resolves them, for path rules.
    pub resolver: resolve::Resolver,
}

/// The recordings directory under the state directory.
pub fn recordings_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("recordings")
}

/// Serves one intercepted SSH connection; returns its byte counts for the session record.
pub async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    target: Target,
    session_id: i64,
    origin: Origin,
    services: &Services,
) -> SessionEnd {
    let state_dir = &services.state_dir;
    let host_key = match keys::host_key(state_dir, &target.name) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(session = session_id, error = %e, "no host key for the ssh target");
            services.store.note_event(
                session_id,
                EventKind::Error,
                json!({ "message": format!("host key: {e}") }),
            );
            crate::protocol::tcp::reset(client);
            return SessionEnd::default();
        }
    };
    // With a gateway host CA, the host key is also presented certified (for `@cert-authority`).
    let certificate = match keys::host_ca(state_dir).and_then(|ca| {
        ca.map(|ca| keys::host_certificate(&ca, &host_key, &target))
            .transpose()
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(session = session_id, error = %e, "host certificate unavailable; presenting the plain key");
            None
        }
    };
    let ctx = Arc::new(Ctx {
        session_id,
        target,
        identity: origin.identity,
        process: origin.process,
        job_id: origin.job_id,
        store: services.store.clone(),
        policy: services.policy.clone(),
        approvals: services.approvals.clone(),
        recordings: recordings_dir(state_dir),
        detectors: DETECTORS.into(),
        counters: bridge::Counters::default(),
        forwards: forward::RemoteForwards::default(),
        resolver: resolve::Resolver::default(),
    });
    let config = server_config(host_key, certificate, ctx.target.ssh.job_ciphers.clone());
    let end = run(
        client,
        upstream,
        config,
        ctx.clone(),
        services.shutdown.clone(),
    )
    .await;
    let (up, down) = (
        ctx.counters.up.load(Ordering::Relaxed),
        ctx.counters.down.load(Ordering::Relaxed),
    );
    let mut detail = json!({ "bytes_up": up, "bytes_down": down });
    match &end {
        Ok(how) => detail["end"] = json!(how),
        Err(e) => {
            detail["end"] = json!("error");
            detail["error"] = json!(e.to_string());
        }
    }
    ctx.store.note_event(session_id, EventKind::Closed, detail);
    SessionEnd {
        bytes_up: up,
        bytes_down: down,
    }
}

fn server_config(
    host_key: russh::keys::PrivateKey,
    certificate: Option<russh::keys::Certificate>,
    ciphers: Vec<russh::cipher::Name>,
) -> Arc<server::Config> {
    let mut methods = MethodSet::empty();
    // Any key, or none, is accepted: who the job is comes from its binding, not from SSH auth.
    for m in [
        MethodKind::None,
        MethodKind::PublicKey,
        MethodKind::Password,
        MethodKind::KeyboardInteractive,
    ] {
        methods.push(m);
    }
    Arc::new(server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-gateway".into()),
        keys: vec![host_key],
        certificates: certificate.into_iter().collect(),
        methods,
        window_size: JOB_WINDOW,
        auth_rejection_time: Duration::from_millis(100),
        // OpenSSH's first attempt is a `none` probe; do not make every login wait for it.
        auth_rejection_time_initial: Some(Duration::ZERO),
        // A quiet CI command must not be cut off; keepalives find dead jobs instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(ciphers),
            compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
            ..Default::default()
        },
        ..Default::default()
    })
}

async fn run(
    client: TcpStream,
    upstream: TcpStream,
    config: Arc<server::Config>,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) -> Result<&'static str, SshError> {
    let timeout = ctx.target.ssh.handshake_timeout;
    // A second handle on the job's socket: shutting it down ends russh's session task, which
    // ignores a disconnect request before key exchange is done.
    let std_client = client.into_std().map_err(russh::Error::IO)?;
    let killer = std_client.try_clone().map_err(russh::Error::IO)?;
    let client = TcpStream::from_std(std_client).map_err(russh::Error::IO)?;
    let kill = || {
        if let Err(e) = killer.shutdown(std::net::Shutdown::Both) {
            tracing::debug!(error = %e, "shutting down the job's socket");
        }
    };
    let (handler, shared) = job::JobSide::new(ctx.clone(), upstream);
    let running = tokio::time::timeout(timeout, server::run_stream(config, client, handler))
        .await
        .map_err(|_| SshError::HandshakeTimeout(timeout))??;
    let handle = running.handle();
    tokio::pin!(running);
    // The job must be authenticated within the handshake timeout: a client that never finishes
    // key exchange would hold a connection and a task otherwise.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut armed = true;
    let mut timed_out = false;
    let result = loop {
        tokio::select! {
            r = &mut running => break r.map(|()| "closed"),
            () = &mut deadline, if armed => {
                armed = false;
                if !shared.authenticated.load(Ordering::Acquire) {
                    tracing::info!(session = ctx.session_id, ?timeout, "the job did not authenticate in time; closing");
                    timed_out = true;
                    kill();
                }
            }
            () = shutdown.cancelled() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "the gateway is shutting down".into(), "en".into())
                    .await;
                kill();
                break Ok("shutdown");
            }
        }
    };
    ctx.forwards.clear();
    // The job is gone: so is its access to the host (running commands get SIGHUP as with direct
    // OpenSSH for terminals; others keep running, as they would).
    if let Some(up) = shared.upstream.lock().await.take() {
        let _ = up
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    if timed_out {
        return Err(SshError::HandshakeTimeout(timeout));
    }
    result
}
