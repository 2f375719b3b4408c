//! `gateway serve`: start-up in an order that leaves nothing half-done, the wiring of each task
//! to the parts it uses (and no more), and graceful shutdown. Job lifecycle is `lifecycle`;
//! control requests are answered in `control`; connections are served by `intercept`.

use parking_lot::RwLock;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use gateway_common::{Config as KernelConfig, FLAG_DEBUG_LOG, MODE_AUDIT, MODE_ENFORCE};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    budget::{self, Recorder},
    cgroup::{self, CgroupError},
    config::{Config, Mode},
    control::{self, RecordingStatus, Status, TargetStatus},
    ebpf::{Dataplane, DataplaneError},
    identity::{Verifier, VerifyError},
    intercept,
    jobs::Jobs,
    lifecycle::{self, JobControl},
    protocol::{docker, http, postgres, ssh},
    record::{Store, StoreError, now},
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
    Spool(#[from] intercept::spool::SpoolError),
    #[error(transparent)]
    Control(#[from] control::server::ControlError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Web(#[from] crate::approval::web::WebError),
    #[error(
        "cannot read the daemon's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+): {0}"
    )]
    Netns(std::io::Error),
    #[error(transparent)]
    Docker(#[from] crate::protocol::docker::DockerError),
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

/// The CA and certificates for TLS toward jobs, when a target terminates it (postgres
/// `client_tls`, http `tls = "terminate"`). Loaded (or created) before anything else changes: a
/// damaged CA stops the start.
fn job_tls(config: &Config) -> Result<Option<Arc<crate::tls_ca::job_tls::JobTls>>, DaemonError> {
    let offered = config.targets.iter().any(|t| match t.protocol {
        crate::config::Protocol::Postgres => t.postgres.client_tls != crate::config::ClientTls::Off,
        crate::config::Protocol::Http => t.http.tls == crate::config::HttpTls::Terminate,
        _ => false,
    });
    if !offered {
        return Ok(None);
    }
    let ca = crate::tls_ca::Ca::load_or_create(&config.server.state_dir)?;
    Ok(Some(Arc::new(crate::tls_ca::job_tls::JobTls::new(ca))))
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
    let job_tls = job_tls(&config)?;

    // The lock on the pinned objects comes first: a second daemon stops here, having changed nothing.
    let mut dataplane = Dataplane::open(&server.bpf_pin_dir, ebpf_object)?;
    let store = Store::open(&server.state_dir)?;
    let (spool, left_unstored) = intercept::spool::Spool::open(&server.state_dir)?;

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
    let dns_sockets = match &server.dns {
        Some(d) => Some(
            crate::dns::bind(d.port)
                .await
                .map_err(|source| DaemonError::Listen {
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, d.port)),
                    source,
                })?,
        ),
        None => None,
    };
    let docker_listener = match &config.docker {
        Some(d) => Some(docker::bind(&d.listen)?),
        None => None,
    };
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
    let resolvers = job_resolvers(&config);
    let own_netns = intercept::netns::own_cookie().map_err(DaemonError::Netns)?;
    let kernel = kernel_config(&config, own_netns);
    // Grants name targets by index: none may outlive the configuration it was compiled from.
    dataplane.clear_grants()?;
    dataplane.configure(
        kernel,
        &targets.kernel_entries(&server.allow_direct, &blocked(&config)),
        &resolvers,
    )?;
    let connections = dataplane.connections()?;
    let dns_clients = match dns_sockets {
        Some(sockets) => Some((sockets, dataplane.dns_clients()?)),
        None => None,
    };
    let follow = crate::dns::Follow::new(&config, local_addresses()).map(Arc::new);
    // Before any job is attached: connects of jobs on the host pass to the host listeners.
    let (netns, netns_requests) = intercept::netns::Namespaces::new(
        dataplane.netns_listeners()?,
        own_netns,
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect(),
        server.dns.as_ref().map(|d| d.port),
    )?;
    let job_states = dataplane.job_states();
    let exec_starts = dataplane.exec_starts()?;
    let events = dataplane.events()?;
    let liveness = dataplane.liveness()?;
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
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let started_at = now();
    let socket_family_guard = dataplane.family_guard().to_string();
    let dataplane = Arc::new(tokio::sync::Mutex::new(dataplane));
    let verifier = Arc::new(verifier);
    let policy = Arc::new(config.policy());
    let jobs = Arc::new(Jobs::default());
    let connections = Arc::new(connections);
    let netns = Arc::new(netns);
    let containers = Arc::new(crate::docker_engine::containers::Containers::new(
        config
            .docker
            .as_ref()
            .map(|d| docker::Engine::new(d.engine.clone())),
    ));
    let targets = Arc::new(RwLock::new(Arc::new(targets)));
    let recorder = Arc::new(Recorder {
        budgets: budget::Budgets::new(server.records_per_second_per_job),
        job_states,
        store: store.clone(),
        jobs: jobs.clone(),
        per_second: server.records_per_second_per_job,
    });
    let lifecycle = Arc::new(JobControl {
        cgroup_root: cgroup_root.clone(),
        own_cgroup,
        job_cgroup_parent: server.job_cgroup_parent.clone(),
        verifier: verifier.clone(),
        dataplane: dataplane.clone(),
        store: store.clone(),
        jobs: jobs.clone(),
        connections: connections.clone(),
        recorder: recorder.clone(),
        grants: lifecycle::GrantRules {
            policy: policy.clone(),
            kernel_targets: config
                .targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.path == crate::config::TargetPath::Kernel)
                .map(|(i, t)| (i as u32, t.name.clone()))
                .collect(),
        },
        containers: containers.clone(),
        gitlab_parent: config
            .docker
            .as_ref()
            .and_then(|d| d.gitlab.as_ref())
            .map(|g| cgroup_root.join(&g.cgroup_parent)),
    });
    lifecycle.adopt_jobs().await?;
    // Command lines, Docker requests and DNS names may hold what any target hides.
    let command_line_masking = crate::mask::body::BodyRules::every_detector(&config.masking);
    let dns_services = match (dns_clients, follow.clone()) {
        (Some((sockets, clients)), Some(follow)) => Some((
            sockets,
            Arc::new(crate::dns::Services {
                follow,
                clients,
                dataplane: dataplane.clone(),
                targets: targets.clone(),
                jobs: jobs.clone(),
                policy: policy.clone(),
                target_names: config.targets.iter().map(|t| t.name.clone()).collect(),
                reaches_beyond_targets: !server.allow_direct.is_empty()
                    || server.mode == crate::config::Mode::Audit,
                store: store.clone(),
                recorder: recorder.clone(),
                masking: command_line_masking.clone(),
                shutdown: shutdown.clone(),
                in_flight: Default::default(),
                limit: Arc::new(tokio::sync::Semaphore::new(crate::dns::MAX_IN_FLIGHT)),
                resolvers: resolvers.clone(),
                own_resolvers: server
                    .dns_resolvers
                    .clone()
                    .unwrap_or_else(system_resolvers),
                own_netns,
                admissions: Default::default(),
            }),
        )),
        _ => None,
    };
    let intercept = Arc::new(intercept::Services {
        connections,
        jobs: jobs.clone(),
        targets: targets.clone(),
        target_configs: config.targets.clone().into(),
        policy: policy.clone(),
        spares: Default::default(),
        processes: Default::default(),
        exec_starts,
        store: store.clone(),
        recorder: recorder.clone(),
        max_connections_per_job: server.max_connections_per_job,
        max_pending_connections_per_job: server.max_pending_connections_per_job,
        upstream_connect_timeout: server.upstream_connect_timeout,
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
        postgres: postgres::Services {
            store: store.clone(),
            policy: policy.clone(),
            approvals: approvals.clone(),
            masking: config.masking.clone().into(),
            cancels: Default::default(),
            classifier: Default::default(),
            client_tls: job_tls.clone(),
            upstream_connect_timeout: server.upstream_connect_timeout,
            shutdown: shutdown.clone(),
        },
        ssh: ssh::Services {
            store: store.clone(),
            policy: policy.clone(),
            approvals: approvals.clone(),
            state_dir: server.state_dir.clone(),
            shutdown: shutdown.clone(),
        },
        netns: netns.clone(),
        cgroup_root: cgroup_root.clone(),
        containers: containers.clone(),
        dns: follow.clone(),
        dns_forwarder: dns_services.as_ref().map(|(_, s)| s.clone()),
        command_line_masking: command_line_masking.clone(),
        http: http::Services {
            store: store.clone(),
            policy: policy.clone(),
            approvals: approvals.clone(),
            job_tls: job_tls.clone(),
            upstream_connect_timeout: server.upstream_connect_timeout,
            shutdown: shutdown.clone(),
            body_rules: crate::mask::body::BodyRules::per_target(
                &config.masking,
                config.targets.iter().map(|t| t.name.as_str()),
            ),
            upstream_tls: Default::default(),
        },
    });
    let docker_services = config.docker.as_ref().map(|d| {
        Arc::new(docker::Services {
            engine: docker::Engine::new(d.engine.clone()),
            listen: d.listen.clone(),
            jobs: jobs.clone(),
            cgroup_root: cgroup_root.clone(),
            policy: policy.clone(),
            store: store.clone(),
            protected_paths: [
                server.state_dir.clone(),
                server.control_socket.clone(),
                server.bpf_pin_dir.clone(),
            ]
            .into_iter()
            .chain(d.protected_paths.iter().cloned())
            .collect(),
            runner_uids: d.runner_uids.clone(),
            state: Default::default(),
            containers: containers.clone(),
            gitlab: d
                .gitlab
                .clone()
                .map(|g| Arc::new(docker::gitlab::Gitlab::new(g, lifecycle.clone()))),
            sessions: sessions.clone(),
            shutdown: shutdown.clone(),
            masking: command_line_masking,
        })
    });
    let status = {
        let (config, sessions, jobs, verifier, store, netns) = (
            config.clone(),
            sessions.clone(),
            jobs.clone(),
            verifier.clone(),
            store.clone(),
            netns.clone(),
        );
        move || {
            let mut s = status(
                &config,
                &socket_family_guard,
                &cgroup_root,
                &started_at,
                &sessions,
                &jobs,
                &verifier,
                &store,
            );
            s.containers = containers_status(&config, &netns.status());
            s
        }
    };
    let control = Arc::new(control::Context {
        store: store.clone(),
        approvals: approvals.clone(),
        lifecycle: lifecycle.clone(),
        status: Box::new(status),
        cli_unix_group: config.approvals.cli_unix_group.clone(),
        shutdown: shutdown.clone(),
    });
    let refresh = Arc::new(TargetRefresh {
        config: config.clone(),
        kernel,
        dataplane: dataplane.clone(),
        targets,
        shutdown: shutdown.clone(),
    });

    let mut tasks = Vec::new();
    for listener in listeners {
        tasks.push(tokio::spawn(intercept::accept_loop(
            listener,
            own_netns,
            shutdown.clone(),
            intercept.clone(),
        )));
    }
    tasks.push(tokio::spawn(intercept::netns::serve(
        netns_requests,
        intercept.clone(),
    )));
    if let (Some(listener), Some(services)) = (docker_listener, docker_services) {
        tasks.push(tokio::spawn(docker::gitlab::cleanup_loop(services.clone())));
        tasks.push(tokio::spawn(docker::serve(listener, services)));
    }
    tasks.push(tokio::spawn(control::server::serve(
        control_listener,
        control,
    )));
    // Awaited at shutdown: it closes the kernel path as it ends.
    let event_reader = tokio::spawn(intercept::events::read_loop(
        events,
        intercept::events::Reader {
            liveness,
            lease: server.kernel_path_lease,
            spool: Arc::new(spool),
            unstored: left_unstored,
        },
        intercept.clone(),
    ));
    tasks.push(tokio::spawn(lifecycle::reap_loop(
        lifecycle.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(budget::summary_loop(
        recorder.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(refresh_targets_loop(refresh)));
    if let Some((sockets, services)) = dns_services {
        tasks.push(tokio::spawn(crate::dns::serve(sockets, services)));
    }
    if let Some((listener, router)) = web {
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "approvals page");
        tasks.push(tokio::spawn(crate::approval::web::serve(
            listener,
            router,
            shutdown.clone(),
        )));
    }
    let prefetch = verifier.clone();
    tasks.push(tokio::spawn(async move { prefetch.prefetch().await }));
    if let Some(logger) = ebpf_logger {
        tasks.push(tokio::spawn(intercept::events::log_loop(
            logger,
            intercept.clone(),
        )));
    }

    tracing::info!(
        listen = ?[server.listen_v4, server.listen_v6].iter().flatten().collect::<Vec<_>>(),
        mode = %server.mode,
        control = %server.control_socket.display(),
        targets = config.targets.len(),
        jobs = jobs.list().len(),
        "gateway ready"
    );
    sd_notify(sd_notify::NotifyState::Ready);

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections; draining sessions");
    sd_notify(sd_notify::NotifyState::Stopping);
    shutdown.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(5), event_reader)
        .await
        .is_err()
    {
        tracing::error!(
            "the kernel event reader did not stop; the kernel path closes when its lease runs out"
        );
    }
    sessions.close();
    if tokio::time::timeout(server.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?server.shutdown_grace, "sessions still open after the grace period; closing them");
    }
    for t in tasks {
        t.abort();
    }
    // What went over a budget in the last (partial) second.
    budget::record_summaries(&recorder).await;
    let _ = std::fs::remove_file(&server.control_socket);
    if let Some(d) = &config.docker {
        let _ = std::fs::remove_file(&d.listen);
    }
    // Pinned programs and links stay: jobs stay intercepted (and fail closed) until a daemon returns.
    tracing::info!("stopped");
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "the status shows a little of every part"
)]
fn status(
    config: &Config,
    socket_family_guard: &str,
    cgroup_root: &std::path::Path,
    started_at: &str,
    sessions: &TaskTracker,
    jobs: &Jobs,
    verifier: &Verifier,
    store: &Store,
) -> Status {
    let s = &config.server;
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
        socket_family_guard: socket_family_guard.to_string(),
        cgroup_root: cgroup_root.display().to_string(),
        started_at: started_at.to_string(),
        active_sessions: sessions.len(),
        targets: config
            .targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name.clone(),
                protocol: t.protocol.to_string(),
                address: t.address.to_string(),
            })
            .collect(),
        jobs: jobs.list().iter().map(|j| j.record()).collect(),
        issuers: verifier.status(),
        recording: RecordingStatus {
            free_bytes: nix::sys::statvfs::statvfs(&s.state_dir)
                .ok()
                .map(|f| f.blocks_available().saturating_mul(f.fragment_size())),
            health: store.health(),
        },
        containers: Default::default(),
    }
}

fn containers_status(
    config: &Config,
    netns: &intercept::netns::NetnsStatus,
) -> control::ContainersStatus {
    control::ContainersStatus {
        netns_listeners: netns.listening,
        netns_error: netns.last_error.clone(),
        docker: config.docker.as_ref().map(|d| control::DockerStatus {
            engine: d.engine.display().to_string(),
            listen: d.listen.display().to_string(),
            interception: vec![
                format!(
                    "gateway run jobs: the gateway's socket is mounted over {} in the job's mount namespace",
                    d.engine.display()
                ),
                format!(
                    "attached jobs (runner hooks, job containers): DOCKER_HOST=unix://{} or the socket mounted at the engine's path; the job's user must not be able to open {}",
                    d.listen.display(),
                    d.engine.display()
                ),
                "cgroup connect_unix programs: not used (a path rewritten before the kernel resolves it is bypassed through any symbolic link to the engine's socket)".into(),
            ],
        }),
    }
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

fn kernel_config(config: &Config, own_netns_cookie: u64) -> KernelConfig {
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
        max_open_per_job: u32::try_from(s.max_connections_per_job).unwrap_or(u32::MAX),
        dns_port: s.dns.as_ref().map_or(0, |d| u32::from(d.port)),
        own_netns_cookie,
    }
}

/// The gateway's own listeners jobs must never reach, in any mode (the approvals page).
fn blocked(config: &Config) -> Vec<SocketAddr> {
    config.approvals.web.iter().map(|w| w.listen).collect()
}

/// The resolvers jobs may send DNS to: `server.dns_resolvers` (default: the host's), and with a
/// `[docker]` table also those of containers (whatever list is configured: a container on a
/// user-defined network only ever asks the engine's embedded resolver).
fn job_resolvers(config: &Config) -> Vec<IpAddr> {
    let mut resolvers = config
        .server
        .dns_resolvers
        .clone()
        .unwrap_or_else(system_resolvers);
    if config.docker.is_some() {
        resolvers.extend(container_resolvers(&resolvers));
    }
    resolvers
}

/// Resolvers containers use that the host does not: Docker's embedded resolver (127.0.0.11, in
/// every container on a user-defined network; only reachable inside containers' namespaces), and
/// the upstream servers Docker puts in containers on the default bridge when the host's own
/// resolver is local (systemd-resolved's list).
fn container_resolvers(host: &[IpAddr]) -> Vec<IpAddr> {
    let mut extra = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))];
    if host.iter().any(IpAddr::is_loopback) {
        extra.extend(nameservers(
            &std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or_default(),
        ));
    }
    extra.retain(|ip| !host.contains(ip));
    extra
}

/// The `nameserver` lines of /etc/resolv.conf.
fn system_resolvers() -> Vec<IpAddr> {
    nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// The `nameserver` lines of a resolv.conf.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().split('%').next()?.parse().ok())
        .collect()
}

/// What re-resolving host-name targets uses.
struct TargetRefresh {
    config: Config,
    /// The programs' settings, as written at start (the refresh changes only destinations).
    kernel: KernelConfig,
    dataplane: Arc<tokio::sync::Mutex<Dataplane>>,
    targets: Arc<RwLock<Arc<TargetSet>>>,
    shutdown: CancellationToken,
}

/// Re-resolves host-name targets and updates the kernel's destination set when they change.
async fn refresh_targets_loop(r: Arc<TargetRefresh>) {
    let has_names = r
        .config
        .targets
        .iter()
        .any(|t| matches!(t.address.host, crate::config::HostSpec::Name(_)));
    // With DNS follow the gateway resolves no host names itself.
    if !has_names || r.config.server.dns.is_some() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(r.config.server.resolve_interval) => {}
            () = r.shutdown.cancelled() => return,
        }
        let config = r.config.clone();
        let Ok((fresh, problems)) =
            tokio::task::spawn_blocking(move || TargetSet::resolve(&config)).await
        else {
            continue;
        };
        for p in problems {
            tracing::warn!("{p}");
        }
        let current = r.targets.read().clone();
        if *current == fresh {
            continue;
        }
        let entries = fresh.kernel_entries(&r.config.server.allow_direct, &blocked(&r.config));
        let resolvers = job_resolvers(&r.config);
        let configured = r
            .dataplane
            .lock()
            .await
            .configure(r.kernel, &entries, &resolvers);
        match configured {
            Ok(()) => {
                *r.targets.write() = Arc::new(fresh);
                tracing::info!("target addresses changed; destination set updated");
            }
            Err(e) => tracing::error!(error = %e, "cannot update the destination set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_s_embedded_resolver_is_allowed_with_a_docker_table_whatever_the_list_says() {
        let with = |text: &str| job_resolvers(&Config::parse(text, "test.toml").unwrap());
        let embedded = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
        let listed = "[server]\ndns_resolvers = [\"10.0.0.2\"]\n";
        assert_eq!(with(listed), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        let docker = with(&format!("{listed}[docker]\n"));
        assert!(docker.contains(&"10.0.0.2".parse().unwrap()), "{docker:?}");
        assert!(docker.contains(&embedded), "{docker:?}");
        assert!(with("[docker]\n").contains(&embedded));
    }
}
