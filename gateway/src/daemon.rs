//! `gateway serve`: start-up in an order that leaves nothing half-done, the shared state every task
//! works on, job lifecycle, and graceful shutdown.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use gateway_common::{Config as KernelConfig, FLAG_DEBUG_LOG, MODE_AUDIT, MODE_ENFORCE};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    cgroup::{self, CgroupError},
    config::{Config, Mode},
    control::{self, RecordingStatus, Request, Response, Status, TargetStatus},
    ebpf::{Connections, Dataplane, DataplaneError},
    identity::{Identity, Verifier, VerifyError},
    intercept,
    jobs::{Job, Jobs},
    policy::Policy,
    record::{JobRecord, Store, StoreError, now},
    targets::TargetSet,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("gateway serve must run as root (it loads eBPF programs and manages cgroups)")]
    NotRoot,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Control(#[from] control::server::ControlError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Web(#[from] crate::approval::web::WebError),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Identity(#[from] VerifyError),
    #[error("the gateway's client TLS CA: {0}")]
    ClientCa(#[from] crate::tls_ca::CaError),
    /// Session cookies, tokens and ids need it: the daemon does not start without it.
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    #[error(
        "target {target:?} includes {address}, an address of this machine: a job could listen there and receive the gateway's login; set [targets.postgres] tls = \"verify-full\" (with ca_file) or pinned_certificate"
    )]
    LocalTarget {
        target: String,
        address: std::net::IpAddr,
    },
}

/// The addresses of this machine's interfaces.
pub fn local_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let a = a.address?;
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// State shared by every task of the daemon.
pub struct Gateway {
    pub config: Config,
    pub policy: Policy,
    /// Verifies the OIDC tokens jobs are bound with.
    pub verifier: Verifier,
    pub targets: RwLock<Arc<TargetSet>>,
    pub store: Store,
    pub jobs: Jobs,
    pub connections: Connections,
    /// The programs' per-job counters (pending connects, events over budget).
    pub job_states: Arc<crate::ebpf::JobStates>,
    /// What jobs have recorded this second, and what they went over their budget by.
    pub budgets: intercept::budget::Budgets,
    pub processes: intercept::process::ProcessCache,
    /// When processes last began an exec: attribution refuses to vouch for /proc across one.
    pub exec_starts: crate::ebpf::ExecStarts,
    pub approvals: crate::approval::Approvals,
    pub dataplane: tokio::sync::Mutex<Dataplane>,
    /// Whether jobs' packet/XDP/vsock sockets are refused (needs the BPF LSM), for `status`.
    pub socket_family_guard: String,
    pub cgroup_root: PathBuf,
    /// cgroup of the daemon itself: never attached to (its upstream connects would loop).
    pub own_cgroup: PathBuf,
    pub shutdown: CancellationToken,
    /// Every live session; drained on shutdown.
    pub sessions: TaskTracker,
    pub started_at: String,
    /// Cancel keys, the statement classification cache and the approvals seam of postgres sessions.
    pub postgres: crate::protocol::postgres::Shared,
    /// Spare upstream connections of `preconnect` targets.
    pub spares: crate::protocol::spares::Spares,
}

/// The CA and certificates for TLS toward postgres clients, when a target offers it. Loaded (or
/// created) before anything else changes: a damaged CA stops the start.
fn client_tls(
    config: &Config,
) -> Result<Option<crate::protocol::postgres::client_tls::ClientTls>, DaemonError> {
    let offered = config.targets.iter().any(|t| {
        t.protocol == crate::config::Protocol::Postgres
            && t.postgres.client_tls != crate::config::ClientTls::Off
    });
    if !offered {
        return Ok(None);
    }
    let ca = crate::tls_ca::Ca::load_or_create(&config.server.state_dir)?;
    Ok(Some(crate::protocol::postgres::client_tls::ClientTls::new(
        ca,
    )))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Config, ebpf_object: &[u8]) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    raise_open_files_limit();
    crate::random::bytes::<16>()?;
    let server = config.server.clone();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let verifier = Verifier::new(&config.issuers)?;
    let cgroup_root = cgroup::cgroup2_root()?;
    let own_cgroup = cgroup::process_cgroup(std::process::id())
        .map(|p| cgroup_root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|| cgroup_root.clone());

    if let Some((target, address)) =
        crate::config::targets_on_local_addresses(&config.targets, &local_addresses()).first()
    {
        return Err(DaemonError::LocalTarget {
            target: target.to_string(),
            address: *address,
        });
    }
    let client_tls = client_tls(&config)?;

    // The lock on the pinned objects comes first: a second daemon stops here, having changed nothing.
    let mut dataplane = Dataplane::open(&server.bpf_pin_dir, ebpf_object)?;
    let store = Store::open(&server.state_dir)?;

    let mut listeners = Vec::new();
    for addr in [server.listen_v4, server.listen_v6].into_iter().flatten() {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        // Accepted connections inherit TCP_NODELAY from the listener: every relay writes whole
        // messages, and setting it here saves a setsockopt per connection.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
            .map_err(|e| DaemonError::Listen {
                addr,
                source: e.into(),
            })?;
        listeners.push(listener);
    }
    let control_listener = control::server::bind(
        &server.control_socket,
        config.approvals.cli_unix_group.as_deref(),
    )?;

    let resolve_config = config.clone();
    let (targets, problems) =
        tokio::task::spawn_blocking(move || TargetSet::resolve(&resolve_config))
            .await
            .unwrap_or_default();
    for p in problems {
        tracing::warn!("{p}");
    }
    let resolvers = server
        .dns_resolvers
        .clone()
        .unwrap_or_else(system_resolvers);
    dataplane.configure(
        kernel_config(&config),
        &targets.kernel_entries(&server.allow_direct, &blocked(&config)),
        &resolvers,
    )?;
    let connections = dataplane.connections()?;
    let job_states = dataplane.job_states();
    let exec_starts = dataplane.exec_starts()?;
    let events = dataplane.events()?;
    let ebpf_logger = if server.ebpf_debug_log {
        Some(dataplane.logger()?)
    } else {
        None
    };

    let approvals = crate::approval::Approvals::start(
        &config.approvals,
        &config.approvers,
        &config.rules,
        store.clone(),
    )
    .await?;
    let web = match config.approvals.web.clone() {
        Some(w) => Some(crate::approval::web::bind(w, approvals.clone()).await?),
        None => None,
    };
    let gw = Arc::new(Gateway {
        policy: config.policy(),
        verifier,
        config,
        targets: RwLock::new(Arc::new(targets)),
        store,
        jobs: Jobs::default(),
        connections,
        job_states,
        budgets: intercept::budget::Budgets::new(server.records_per_second_per_job),
        exec_starts,
        processes: Default::default(),
        approvals,
        socket_family_guard: dataplane.family_guard().to_string(),
        dataplane: tokio::sync::Mutex::new(dataplane),
        cgroup_root,
        own_cgroup,
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        started_at: now(),
        postgres: crate::protocol::postgres::Shared {
            client_tls,
            ..Default::default()
        },
        spares: Default::default(),
    });
    gw.adopt_jobs().await?;

    let mut tasks = Vec::new();
    for listener in listeners {
        tasks.push(tokio::spawn(intercept::accept_loop(listener, gw.clone())));
    }
    tasks.push(tokio::spawn(control::server::serve(
        control_listener,
        gw.clone(),
    )));
    tasks.push(tokio::spawn(intercept::events::read_loop(
        events,
        gw.clone(),
    )));
    tasks.push(tokio::spawn(reap_loop(gw.clone())));
    tasks.push(tokio::spawn(intercept::budget::summary_loop(gw.clone())));
    tasks.push(tokio::spawn(refresh_targets_loop(gw.clone())));
    if let Some((listener, router)) = web {
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "approvals page");
        tasks.push(tokio::spawn(crate::approval::web::serve(
            listener,
            router,
            gw.shutdown.clone(),
        )));
    }
    let prefetch = gw.clone();
    tasks.push(tokio::spawn(
        async move { prefetch.verifier.prefetch().await },
    ));
    if let Some(logger) = ebpf_logger {
        tasks.push(tokio::spawn(intercept::events::log_loop(
            logger,
            gw.clone(),
        )));
    }

    tracing::info!(
        listen = ?[server.listen_v4, server.listen_v6].iter().flatten().collect::<Vec<_>>(),
        mode = %server.mode,
        control = %server.control_socket.display(),
        targets = gw.config.targets.len(),
        jobs = gw.jobs.list().len(),
        "gateway ready"
    );
    sd_notify(sd_notify::NotifyState::Ready);

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections; draining sessions");
    sd_notify(sd_notify::NotifyState::Stopping);
    gw.shutdown.cancel();
    gw.sessions.close();
    if tokio::time::timeout(server.shutdown_grace, gw.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?server.shutdown_grace, "sessions still open after the grace period; closing them");
    }
    for t in tasks {
        t.abort();
    }
    // What went over a budget in the last (partial) second.
    intercept::budget::record_summaries(&gw).await;
    let _ = std::fs::remove_file(&server.control_socket);
    // Pinned programs and links stay: jobs stay intercepted (and fail closed) until a daemon returns.
    tracing::info!("stopped");
    Ok(())
}

/// Every proxied connection holds two descriptors: take the hard limit, not the soft 1024.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
    }
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Tells systemd (Type=notify) about readiness and shutdown, when started by it.
fn sd_notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn kernel_config(config: &Config) -> KernelConfig {
    let s = &config.server;
    let v4 = s.listen_v4.map(|a| a.ip()).and_then(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    });
    let v6 = s.listen_v6.map(|a| a.ip()).and_then(|ip| match ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    });
    let v6_words = v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets();
    KernelConfig {
        listen_ip4: u32::from_ne_bytes(v4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets()),
        listen_ip6: [0, 1, 2, 3].map(|i| {
            u32::from_ne_bytes([
                v6_words[i * 4],
                v6_words[i * 4 + 1],
                v6_words[i * 4 + 2],
                v6_words[i * 4 + 3],
            ])
        }),
        listen_port: u32::from(s.listen_port()),
        mode: match s.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        },
        flags: if s.ebpf_debug_log { FLAG_DEBUG_LOG } else { 0 },
        max_pending_per_job: s.max_pending_connections_per_job,
        events_per_second: s.records_per_second_per_job,
    }
}

/// The gateway's own listeners jobs must never reach, in any mode (the approvals page).
fn blocked(config: &Config) -> Vec<SocketAddr> {
    config.approvals.web.iter().map(|w| w.listen).collect()
}

/// The `nameserver` lines of /etc/resolv.conf.
fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().split('%').next()?.parse().ok())
        .collect()
}

/// What a job is bound to.
struct Binding {
    identity: Identity,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn new_job_id() -> Result<String, String> {
    crate::random::id::<6>("job").map_err(|e| format!("cannot make a job id: {e}"))
}

impl Gateway {
    pub async fn control(&self, request: Request, uid: u32) -> Response {
        let result = match request {
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::CreateJob { token } => self.create_job(token).await.map(Response::Job),
            Request::Attach { cgroup, token } => {
                self.attach(&cgroup, token).await.map(Response::Job)
            }
            Request::EndJob { job_id, cgroup } => self.end_job_request(job_id, cgroup).await,
            Request::ListSessions { limit } => self
                .store
                .list_sessions(limit)
                .await
                .map(|sessions| Response::Sessions { sessions })
                .map_err(|e| e.to_string()),
            Request::ListApprovals { recent } => self
                .approvals
                .list(recent)
                .await
                .map(|approvals| Response::Approvals { approvals })
                .map_err(|e| e.to_string()),
            Request::ShowApproval { id } => self
                .approvals
                .show(&id)
                .await
                .map(|v| Response::Approval(Box::new(v)))
                .map_err(|e| e.to_string()),
            Request::DecideApproval {
                id,
                approve,
                for_seconds,
                reason,
            } => {
                let approver = self.approvals.unix_approver(uid);
                let verdict = if approve {
                    crate::approval::model::Verdict::Approve { for_seconds }
                } else {
                    crate::approval::model::Verdict::Deny { reason }
                };
                self.approvals
                    .decide(&id, &approver, verdict)
                    .await
                    .map(|v| Response::Approval(Box::new(v)))
                    .map_err(|e| e.to_string())
            }
            Request::ShowSession { id, after, limit } => self
                .store
                .session_page(
                    id,
                    after,
                    limit
                        .unwrap_or(control::MAX_EVENTS_PER_PAGE)
                        .min(control::MAX_EVENTS_PER_PAGE),
                )
                .await
                .map(|s| Response::Session(Box::new(s)))
                .map_err(|e| e.to_string()),
        };
        result.unwrap_or_else(|message| Response::Error { message })
    }

    fn status(&self) -> Status {
        let s = &self.config.server;
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            mode: s.mode.to_string(),
            listen: [s.listen_v4, s.listen_v6]
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect(),
            control_socket: s.control_socket.display().to_string(),
            state_dir: s.state_dir.display().to_string(),
            bpf_pin_dir: s.bpf_pin_dir.display().to_string(),
            socket_family_guard: self.socket_family_guard.clone(),
            cgroup_root: self.cgroup_root.display().to_string(),
            started_at: self.started_at.clone(),
            active_sessions: self.sessions.len(),
            targets: self
                .config
                .targets
                .iter()
                .map(|t| TargetStatus {
                    name: t.name.clone(),
                    protocol: t.protocol.to_string(),
                    address: t.address.to_string(),
                })
                .collect(),
            jobs: self.jobs.list().iter().map(|j| j.record()).collect(),
            issuers: self.verifier.status(),
            recording: RecordingStatus {
                free_bytes: nix::sys::statvfs::statvfs(&s.state_dir)
                    .ok()
                    .map(|f| f.blocks_available().saturating_mul(f.fragment_size())),
                health: self.store.health(),
            },
        }
    }

    /// No token: `unauthenticated`, unbounded. A token: verified, bound until the issuer's
    /// `max_binding_lifetime` from now (the token's own short `exp` only matters at this moment).
    async fn binding(&self, token: Option<String>) -> Result<Binding, String> {
        let Some(token) = token else {
            return Ok(Binding {
                identity: Identity::unauthenticated(),
                expires_at: None,
            });
        };
        match self.verifier.verify(&token).await {
            Ok(v) => Ok(Binding {
                identity: v.identity,
                expires_at: Some(
                    chrono::Utc::now()
                        + chrono::Duration::from_std(v.max_binding)
                            .unwrap_or(chrono::Duration::MAX),
                ),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "job not bound");
                Err(e.to_string())
            }
        }
    }

    async fn create_job(&self, token: Option<String>) -> Result<JobRecord, String> {
        let binding = self.binding(token).await?;
        let id = new_job_id()?;
        let parent = self.config.server.job_cgroup_parent.clone();
        let path = cgroup::create(&self.cgroup_root, &parent, &id).map_err(|e| e.to_string())?;
        match self.register(id, path.clone(), true, binding).await {
            Ok(job) => Ok(job),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    async fn attach(&self, given: &str, token: Option<String>) -> Result<JobRecord, String> {
        let binding = self.binding(token).await?;
        let path = cgroup::resolve(&self.cgroup_root, given).map_err(|e| e.to_string())?;
        if self.own_cgroup.starts_with(&path) {
            return Err(format!(
                "refusing to attach to {}: the gateway itself runs in that cgroup or below it",
                path.display()
            ));
        }
        if let Some(job) = self.jobs.by_path(&path) {
            return Err(format!(
                "cgroup {} is already attached as {}",
                path.display(),
                job.id
            ));
        }
        if let Some(job) = self
            .jobs
            .list()
            .into_iter()
            .find(|j| path.starts_with(&j.cgroup_path))
        {
            return Err(format!(
                "cgroup {} is inside job {} already",
                path.display(),
                job.id
            ));
        }
        self.register(new_job_id()?, path, false, binding).await
    }

    /// Attaches the programs, records the job, and only then makes it known.
    async fn register(
        &self,
        id: String,
        path: PathBuf,
        owned: bool,
        binding: Binding,
    ) -> Result<JobRecord, String> {
        let cgroup_id = cgroup::cgroup_id(&path).map_err(|e| e.to_string())?;
        let mut dataplane = self.dataplane.lock().await;
        let slot = dataplane
            .attach(&path, cgroup_id)
            .map_err(|e| e.to_string())?;
        let job = Job {
            id,
            cgroup_path: path,
            cgroup_id,
            slot,
            owned,
            identity: binding.identity,
            binding_expires_at: binding.expires_at,
            created_at: now(),
            open_connections: Default::default(),
        };
        let record = job.record();
        if let Err(e) = self.store.insert_job(record.clone()).await {
            let _ = dataplane.detach(cgroup_id);
            self.connections.purge(|s| s != slot);
            dataplane.release_slot(slot);
            return Err(e.to_string());
        }
        // Known before the slot is free for another job.
        self.jobs.insert(job);
        drop(dataplane);
        tracing::info!(
            job = %record.id,
            cgroup = %record.cgroup_path,
            owned,
            issuer = record.identity.issuer.as_deref().unwrap_or("-"),
            identity = %record.identity.subject,
            bound_until = record.binding_expires_at.as_deref().unwrap_or("-"),
            "job attached"
        );
        Ok(record)
    }

    async fn end_job_request(
        &self,
        job_id: Option<String>,
        given: Option<String>,
    ) -> Result<Response, String> {
        let job = match (job_id, given) {
            (Some(id), _) => match self.jobs.by_id(&id) {
                Some(job) => job,
                // Ending is idempotent: the reaper may have ended an owned job whose processes
                // are all gone before `gateway run` asked.
                None if self.store.job_ended(id.clone()).await.unwrap_or(false) => {
                    return Ok(Response::Ended { job_id: id });
                }
                None => return Err(format!("no active job {id}")),
            },
            (None, Some(given)) => {
                let path = cgroup::resolve(&self.cgroup_root, &given).map_err(|e| e.to_string())?;
                self.jobs
                    .by_path(&path)
                    .ok_or_else(|| format!("cgroup {} is not attached", path.display()))?
            }
            (None, None) => return Err("name a job id or a cgroup".into()),
        };
        self.end_job(&job).await?;
        Ok(Response::Ended {
            job_id: job.id.clone(),
        })
    }

    /// Detaches the programs; for owned jobs kills what is left and removes the cgroup. Sessions stay.
    async fn end_job(&self, job: &Job) -> Result<(), String> {
        {
            let dataplane = self.dataplane.lock().await;
            dataplane.detach(job.cgroup_id).map_err(|e| e.to_string())?;
            // Nothing removes the job's waiting records any more; what it went over its budgets
            // by is recorded before its slot can go to another job.
            self.connections.purge(|s| s != job.slot);
            intercept::budget::record_job_summary(self, job).await;
        }
        if job.owned {
            let path = job.cgroup_path.clone();
            tokio::task::spawn_blocking(move || {
                cgroup::kill_and_remove(&path, Duration::from_secs(5))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        self.store
            .end_job(job.id.clone())
            .await
            .map_err(|e| e.to_string())?;
        // Only whoever ended it frees its slot (the reaper and a request may race).
        if self.jobs.remove(job.cgroup_id).is_some() {
            self.dataplane.lock().await.release_slot(job.slot);
        }
        tracing::info!(job = %job.id, "job ended");
        Ok(())
    }

    /// After a restart: take back the jobs of the store whose cgroups still exist, make sure their
    /// programs are attached, and drop pinned links that belong to no job.
    async fn adopt_jobs(&self) -> Result<(), DaemonError> {
        let interrupted = self.store.close_interrupted_sessions().await?;
        if interrupted > 0 {
            tracing::warn!(interrupted, "closed sessions a previous gateway left open");
        }
        let records = self.store.active_jobs().await?;
        self.budgets
            .baseline(0, None, self.job_states.suppressed(0));
        let mut dataplane = self.dataplane.lock().await;
        for r in records {
            let path = PathBuf::from(&r.cgroup_path);
            let alive = cgroup::cgroup_id(&path).is_ok_and(|id| id == r.cgroup_id);
            if !alive {
                let _ = dataplane.detach(r.cgroup_id);
                self.store.end_job(r.id.clone()).await?;
                tracing::info!(job = %r.id, "job's cgroup is gone; ended");
                continue;
            }
            let slot = match dataplane.attach(&path, r.cgroup_id) {
                Ok(slot) => slot,
                Err(e) => {
                    tracing::error!(job = %r.id, error = %e, "cannot re-attach adopted job");
                    0
                }
            };
            // What its counters hold was summarised by the daemon before (or is zero).
            if slot != 0 {
                self.budgets
                    .baseline(slot, Some(&r.id), self.job_states.suppressed(slot));
            }
            self.jobs.insert(Job {
                id: r.id.clone(),
                cgroup_path: path,
                cgroup_id: r.cgroup_id,
                slot,
                owned: r.owned,
                identity: r.identity,
                binding_expires_at: r
                    .binding_expires_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc)),
                created_at: r.created_at,
                open_connections: Default::default(),
            });
            tracing::info!(job = %r.id, "adopted job");
        }
        for cgroup_id in dataplane.attached() {
            if self.jobs.for_cgroup_exact(cgroup_id).is_none() {
                tracing::info!(cgroup_id, "removing pinned links of no known job");
                let _ = dataplane.detach(cgroup_id);
            }
        }
        // Records of jobs that ended while no daemon ran.
        let live: Vec<u32> = self.jobs.list().iter().map(|j| j.slot).collect();
        let purged = self.connections.purge(|s| live.contains(&s));
        if purged > 0 {
            tracing::info!(
                purged,
                "removed waiting connect records of jobs that are gone"
            );
        }
        Ok(())
    }
}

/// Ends jobs whose cgroup disappeared, and owned jobs whose processes are all gone.
async fn reap_loop(gw: Arc<Gateway>) {
    // An owned job is only reaped empty after this long (its first process may not have moved in yet).
    const EMPTY_GRACE: Duration = Duration::from_secs(30);
    let mut seen_populated: std::collections::HashSet<String> = Default::default();
    let started = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = gw.shutdown.cancelled() => return,
        }
        for job in gw.jobs.list() {
            let populated = match cgroup::populated(&job.cgroup_path) {
                Ok(p) => p,
                Err(CgroupError::Missing { .. }) => {
                    if let Err(e) = gw.end_job(&job).await {
                        tracing::warn!(job = %job.id, error = %e, "ending vanished job");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read job cgroup");
                    continue;
                }
            };
            if populated {
                seen_populated.insert(job.id.clone());
                continue;
            }
            let old_enough = job_age(&job) > EMPTY_GRACE && started.elapsed() > EMPTY_GRACE;
            if job.owned && (seen_populated.contains(&job.id) || old_enough) {
                seen_populated.remove(&job.id);
                if let Err(e) = gw.end_job(&job).await {
                    tracing::warn!(job = %job.id, error = %e, "reaping finished job");
                }
            }
        }
    }
}

fn job_age(job: &Job) -> Duration {
    chrono::DateTime::parse_from_rfc3339(&job.created_at)
        .ok()
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or_default()
}

/// Re-resolves host-name targets and updates the kernel's destination set when they change.
async fn refresh_targets_loop(gw: Arc<Gateway>) {
    let has_names = gw
        .config
        .targets
        .iter()
        .any(|t| matches!(t.address.host, crate::config::HostSpec::Name(_)));
    if !has_names {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(gw.config.server.resolve_interval) => {}
            () = gw.shutdown.cancelled() => return,
        }
        let config = gw.config.clone();
        let Ok((fresh, problems)) =
            tokio::task::spawn_blocking(move || TargetSet::resolve(&config)).await
        else {
            continue;
        };
        for p in problems {
            tracing::warn!("{p}");
        }
        let current = gw.targets.read().unwrap_or_else(|p| p.into_inner()).clone();
        if *current == fresh {
            continue;
        }
        let entries = fresh.kernel_entries(&gw.config.server.allow_direct, &blocked(&gw.config));
        let resolvers = gw
            .config
            .server
            .dns_resolvers
            .clone()
            .unwrap_or_else(system_resolvers);
        let configured =
            gw.dataplane
                .lock()
                .await
                .configure(kernel_config(&gw.config), &entries, &resolvers);
        match configured {
            Ok(()) => {
                *gw.targets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                tracing::info!("target addresses changed; destination set updated");
            }
            Err(e) => tracing::error!(error = %e, "cannot update the destination set"),
        }
    }
}
