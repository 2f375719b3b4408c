//! The Docker Engine API, served to jobs on the gateway's own socket and spoken to the engine on
//! their behalf. Each connection is identified by the process that made it (its pidfd, then its
//! cgroup: the job), recorded as a session; each request is classified (`dockerapi`), resolved
//! against the engine (the containers, execs, networks and volumes it names must be the job's),
//! decided by policy, recorded before it is forwarded, and forwarded as the gateway rewrote it:
//! containers get the job's cgroup as their cgroup parent (so the job's programs cover them and
//! their connections are the job's) and the job's label.
//!
//! Refusals are answered as the engine answers errors (`{"message": …}`), so `docker` prints
//! them as it prints the daemon's own.

pub mod gitlab;
pub mod paths;
mod proxy;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper::{Response, StatusCode, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::docker_engine::{self as engine, containers};
pub use crate::docker_engine::{Engine, EngineError, EngineInfo};

use crate::{
    identity::Identity,
    jobs::{Job, Jobs},
    mask::body::BodyRules,
    policy::Policy,
    procfs,
    record::{NewSession, ProcessInfo, SessionEnd, SessionKind, Store, now},
};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// What serving the Docker API uses.
pub struct Services {
    pub engine: Engine,
    /// The gateway's socket (for records).
    pub listen: PathBuf,
    pub jobs: Arc<Jobs>,
    pub cgroup_root: PathBuf,
    pub policy: Arc<Policy>,
    pub store: Store,
    /// Host paths never bound into a container (besides the engine's own, found at first use).
    pub protected_paths: Vec<PathBuf>,
    /// `[docker] runner_users`: users whose own directories the job cannot swap.
    pub runner_uids: Vec<u32>,
    /// What the engine is, learnt at the first request that needs it.
    pub state: tokio::sync::OnceCell<EngineState>,
    pub containers: Arc<containers::Containers>,
    /// `[docker.gitlab]`: the runner whose jobs get cgroups of their own.
    pub gitlab: Option<Arc<gitlab::Gitlab>>,
    pub sessions: TaskTracker,
    pub shutdown: CancellationToken,
    /// The detectors of every `[[masking]]` rule ([`BodyRules::every_detector`]): what a caller
    /// typed (its command line, its request's path, command and refusal) is recorded masked; the
    /// engine gets it as sent.
    pub masking: Option<Arc<BodyRules>>,
}

/// The engine's settings and the protected paths resolved in its root.
pub struct EngineState {
    pub info: EngineInfo,
    pub protected: paths::Protected,
}

impl Services {
    /// An open session on the gateway's Docker socket: `job`'s, or of no job (the runner's,
    /// saying why in `reason`), its process's command lines masked.
    fn socket_session(
        &self,
        job: Option<&Job>,
        process: Option<ProcessInfo>,
        reason: Option<String>,
        started_at: String,
    ) -> NewSession {
        NewSession {
            kind: SessionKind::Proxied,
            job_id: job.map(|j| j.id.clone()),
            target: Some("docker".into()),
            protocol: Some("docker".into()),
            destination: self.listen.display().to_string(),
            process: process.map(|p| p.masked(self.masking.as_deref())),
            identity: job.map_or_else(Identity::unauthenticated, |j| j.identity.clone()),
            decision: "allow".into(),
            rule: None,
            reason,
            started_at,
            ended_at: None,
            path: None,
            cookie: None,
        }
    }

    /// Text the caller sent, as it is recorded and logged.
    fn shown(&self, text: &str) -> String {
        match &self.masking {
            Some(rules) => rules.mask_str(text).into_owned(),
            None => text.to_string(),
        }
    }

    /// A request's detail as it is recorded: every string in it masked.
    fn recorded(&self, mut detail: serde_json::Value) -> serde_json::Value {
        if let Some(rules) = &self.masking {
            rules.mask_json_strings(&mut detail);
        }
        detail
    }

    /// The engine's state, asked for once (again after a failure).
    async fn engine_state(&self) -> Result<&EngineState, EngineError> {
        self.state
            .get_or_try_init(|| async {
                let info = self.engine.info().await?;
                let root = engine_root(self.engine.socket());
                let mut protected = vec![
                    self.engine.socket().to_path_buf(),
                    self.listen.clone(),
                    PathBuf::from("/proc"),
                    PathBuf::from("/sys"),
                    PathBuf::from("/dev"),
                    PathBuf::from("/sys/fs/cgroup"),
                    PathBuf::from("/sys/fs/bpf"),
                    PathBuf::from("/run/containerd"),
                    PathBuf::from("/run/docker"),
                    PathBuf::from("/var/run/docker.sock"),
                    PathBuf::from("/etc/gateway"),
                    self.cgroup_root.clone(),
                ];
                if !info.root_dir.is_empty() {
                    protected.push(PathBuf::from(&info.root_dir));
                }
                protected.extend(self.protected_paths.iter().cloned());
                let sockets = [self.engine.socket().to_path_buf(), self.listen.clone()];
                let protected = tokio::task::spawn_blocking(move || {
                    paths::Protected::new(root, &protected, &sockets)
                })
                .await
                .map_err(|e| EngineError::Answer(e.to_string()))?;
                tracing::info!(
                    version = %info.version,
                    cgroup_driver = %info.cgroup_driver,
                    "Docker engine reached"
                );
                Ok(EngineState { info, protected })
            })
            .await
    }
}

/// The root of the engine's mount namespace: `/proc/<pid>/root` of the process serving its
/// socket (bind sources are paths there), `/` if it cannot be found.
fn engine_root(socket: &Path) -> PathBuf {
    let pid = std::os::unix::net::UnixStream::connect(socket)
        .ok()
        .and_then(|s| {
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()
        })
        .map(|c| c.pid())
        .filter(|p| *p > 0);
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/root")),
        None => PathBuf::from("/"),
    }
}

/// Creates the gateway's Docker socket: any local user may connect (what it may do is decided by
/// the job it is in; a process in no job is refused).
pub fn bind(path: &Path) -> Result<UnixListener, DockerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| DockerError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, services: Arc<Services>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let s = services.clone();
                    services.sessions.spawn(async move { connection(stream, s).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Docker socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = services.shutdown.cancelled() => return,
        }
    }
}

/// A connection of a job's process.
pub(crate) struct Conn {
    pub services: Arc<Services>,
    pub job: Arc<Job>,
    /// The job's cgroup, relative to the hierarchy's root (`/gateway-jobs/job-…`): the cgroup
    /// parent of its containers.
    pub job_cgroup: String,
    pub asker: paths::Asker,
    pub session: i64,
}

async fn connection(stream: UnixStream, services: Arc<Services>) {
    let started_at = now();
    let peer = procfs::peer(&stream);
    let who = peer.as_ref().map_err(Clone::clone).and_then(|p| {
        let path = services.cgroup_root.join(p.cgroup.trim_start_matches('/'));
        let job = crate::cgroup::cgroup_id(&path)
            .ok()
            .and_then(|id| services.jobs.for_cgroup(id))
            .ok_or_else(|| {
                format!(
                    "process {} ({}) is not in a job of the gateway",
                    p.pid, p.comm
                )
            })?;
        if let Some(why) = job.binding_expired() {
            return Err(why);
        }
        Ok(job)
    });
    let process = peer.as_ref().ok().map(|p| ProcessInfo {
        pid: p.pid,
        tid: p.pid,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        cmdline: p.cmdline.as_ref().map(|c| c.0.clone()),
        cmdline_cut: p.cmdline.as_ref().is_some_and(|c| c.1),
        verified: true,
        cgroup_id: 0,
        container: None,
        ancestry: Vec::new(),
    });
    let job = match who {
        Ok(job) => job,
        Err(_)
            if peer.as_ref().is_ok_and(|p| {
                gitlab::is_runner(&services, p.uid)
                    && !services
                        .jobs
                        .contains_cgroup(&services.cgroup_root, &p.cgroup)
            }) =>
        {
            return gitlab::serve_runner(stream, services, process, started_at).await;
        }
        Err(why) => {
            tracing::warn!(reason = %why, "Docker socket: connection refused");
            services.store.record_session(NewSession {
                kind: SessionKind::Anomaly,
                decision: "deny".into(),
                reason: Some(why.clone()),
                ended_at: Some(started_at.clone()),
                ..services.socket_session(None, process, None, started_at)
            });
            return refuse_all(stream, why).await;
        }
    };
    let Ok(peer) = peer else { return };
    let job_cgroup = job
        .cgroup_path
        .strip_prefix(&services.cgroup_root)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_default();
    let mut process = process.unwrap_or_default();
    process.cgroup_id = crate::cgroup::cgroup_id(
        &services
            .cgroup_root
            .join(peer.cgroup.trim_start_matches('/')),
    )
    .unwrap_or_default();
    process.ancestry = procfs::ancestry(peer.pid, &job_cgroup);
    process.container = services
        .containers
        .describe(&peer.cgroup, &job_cgroup)
        .await;
    let session = services.socket_session(Some(&job), Some(process), None, started_at);
    let session = match services.store.insert_session(session).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot record a Docker session; refusing it");
            return refuse_all(stream, "the gateway cannot record sessions".into()).await;
        }
    };
    let conn = Arc::new(Conn {
        services: services.clone(),
        job,
        job_cgroup,
        asker: paths::Asker {
            uid: peer.uid,
            gids: peer.groups.clone(),
            runner: services.runner_uids.contains(&peer.uid),
        },
        session,
    });
    let shutdown = services.shutdown.clone();
    let service = service_fn(move |req| proxy::handle(req, conn.clone()));
    let serving = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        r = serving => if let Err(e) = r {
            tracing::debug!(error = %e, session, "Docker connection ended");
        },
        () = shutdown.cancelled() => {}
    }
    services.store.end_session(session, SessionEnd::default());
}

/// Answers every request of a connection that may not use the socket with the reason.
pub(super) async fn refuse_all(stream: UnixStream, why: String) {
    let service = service_fn(move |_req| {
        let why = why.clone();
        async move { Ok::<_, std::convert::Infallible>(error(StatusCode::FORBIDDEN, &why)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// An error as the engine writes them, which `docker` prints as "Error response from daemon".
/// A request's method and target (path and query) as the job sent them.
fn method_and_target<B>(req: &hyper::Request<B>) -> (String, String) {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    (req.method().as_str().to_string(), target)
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<engine::Body> {
    let body = json!({ "message": format!("gateway: {message}") }).to_string();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(engine::full(body))
        .unwrap_or_else(|_| Response::new(engine::full("gateway error")))
}
