//! The intercept listener: accept redirected connections, find out where they were going and who
//! made them, ask policy, record the session, and hand the connection to its protocol handler.

pub mod events;
pub mod kernel_path;
pub mod netns;
pub mod process;
pub mod spool;

use crate::record::EventKind;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use gateway_common::{AF_INET, ConnInfo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    budget::{self, Recorder},
    config::{Protocol, Target},
    ebpf::{Connections, ExecStarts},
    identity::Identity,
    jobs::{ConnectionSlot, Jobs},
    policy::{Decision, Policy},
    protocol::{http, postgres, spares::Spares, ssh, tcp},
    record::{NewSession, Origin, ProcessInfo, SessionEnd, SessionKind, SessionPath, Store, now},
    targets::TargetSet,
};

/// What accepting and serving intercepted connections uses.
pub struct Services {
    /// Connect records the kernel keeps for the gateway, by client address.
    pub connections: Arc<Connections>,
    pub jobs: Arc<Jobs>,
    /// The destination set (host names resolved), shared with the refresh task.
    pub targets: Arc<parking_lot::RwLock<Arc<TargetSet>>>,
    /// The configured targets, by the index the destination set returns.
    pub target_configs: Arc<[Target]>,
    pub policy: Arc<Policy>,
    pub spares: Spares,
    pub processes: process::ProcessCache,
    pub exec_starts: ExecStarts,
    pub store: Store,
    pub recorder: Arc<Recorder>,
    pub max_connections_per_job: usize,
    /// For the wording of refusals the kernel reports.
    pub max_pending_connections_per_job: u32,
    pub upstream_connect_timeout: Duration,
    /// Every live session; drained on shutdown.
    pub sessions: TaskTracker,
    pub shutdown: CancellationToken,
    pub postgres: postgres::Services,
    pub ssh: ssh::Services,
    pub http: http::Services,
    /// The listeners in job network namespaces.
    pub netns: Arc<netns::Namespaces>,
    /// The cgroup v2 root (job cgroups are paths below it).
    pub cgroup_root: std::path::PathBuf,
    /// Which container a process runs in, for the record.
    pub containers: Arc<crate::docker_engine::containers::Containers>,
    /// DNS follow (`server.dns_follow`): the addresses each job was told for host-name targets.
    pub dns: Option<Arc<crate::dns::Follow>>,
    /// DNS follow's forwarder: jobs' DNS over TCP, and its sockets in job network namespaces.
    pub dns_forwarder: Option<Arc<crate::dns::Services>>,
    /// What masks the recorded command lines ([`BodyRules::every_detector`]).
    ///
    /// [`BodyRules::every_detector`]: crate::mask::body::BodyRules::every_detector
    pub command_line_masking: Option<Arc<crate::mask::body::BodyRules>>,
}

/// Serves a listener in the network namespace `netns_cookie` until `stop` (or shutdown).
pub async fn accept_loop(
    listener: TcpListener,
    netns_cookie: u64,
    stop: CancellationToken,
    services: Arc<Services>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let gw2 = services.clone();
                    services.sessions.spawn(async move { handle(stream, peer, netns_cookie, gw2).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = services.shutdown.cancelled() => return,
            () = stop.cancelled() => return,
        }
    }
}

/// The original destination as the process wrote it (IPv4-mapped shown as IPv4).
pub fn destination(info: &ConnInfo) -> SocketAddr {
    SocketAddr::new(
        address(&info.dst_addr, info.family == AF_INET),
        info.dst_port,
    )
}

pub use crate::address::from_kernel as address;

async fn handle(client: TcpStream, peer: SocketAddr, netns_cookie: u64, services: Arc<Services>) {
    let started_at = now();
    let Some(info) = services.connections.take(peer, netns_cookie) else {
        return anomaly(client, peer, &services, started_at).await;
    };
    let dst = destination(&info);
    let job = services.jobs.for_cgroup(info.cgroup_id);
    if let Some(forwarder) = &services.dns_forwarder
        && forwarder.is_resolver(dst)
        && services.targets.read().lookup(dst).is_none()
    {
        return dns_over_tcp(client, dst, info, job, netns_cookie, forwarder, &services).await;
    }
    let identity = job
        .as_ref()
        .map_or_else(Identity::unauthenticated, |j| j.identity.clone());
    let configured = services.targets.read().lookup(dst);
    // An address in the set only through DNS follow is served to the jobs that were told it.
    let (index, not_told) = match (configured, &services.dns) {
        (Some(i), _) => (Some(i), false),
        (None, Some(follow)) => match follow.check(
            job.as_ref().map(|j| j.cgroup_id),
            dst,
            std::time::Instant::now(),
        ) {
            crate::dns::Told::Yes(i) => (Some(i), false),
            crate::dns::Told::No(i) => (Some(i), true),
            crate::dns::Told::Unknown => (None, false),
        },
        (None, None) => (None, false),
    };
    let target = index.and_then(|i| services.target_configs.get(i)).cloned();
    let expired = job.as_ref().and_then(|j| j.binding_expired());
    // Held until the connection is over (the end of this function).
    let max = services.max_connections_per_job;
    let slot = job.as_ref().map(|j| ConnectionSlot::take(j, max));
    let decision = match (&target, expired) {
        // Fail closed: an expired binding neither keeps its rights nor falls back to the rules
        // for unauthenticated jobs.
        (_, Some(reason)) => Decision::Deny { rule: None, reason },
        (Some(t), None) if not_told => Decision::Deny {
            rule: None,
            reason: format!(
                "{} was not resolved by this job for {:?} (the target follows DNS)",
                dst.ip(),
                t.name
            ),
        },
        (_, None) if matches!(slot, Some(Err(_))) => Decision::Deny {
            rule: None,
            reason: format!(
                "the job already has {max} connections open (server.max_connections_per_job)"
            ),
        },
        (Some(t), None) => services.policy.decide_connection(&identity, &t.name),
        // The destination set changed between connect and accept.
        (None, None) => Decision::Deny {
            rule: None,
            reason: format!("{dst} is no longer a target"),
        },
    };
    let decision = match decision {
        Decision::RequireApproval { rule } => Decision::Deny {
            rule: Some(rule),
            reason: "approval of whole connections is not supported; approve statements or commands instead".into(),
        },
        d => d,
    };
    let allowed = matches!(decision, Decision::Allow { .. }) && target.is_some();
    // A job causes as many refusals as it likes; beyond its budget they are only counted (and
    // cost neither a record nor a look at /proc).
    if !allowed
        && !services
            .recorder
            .budgets
            .admit(job.as_deref(), budget::Source::DeniedConnections)
    {
        return tcp::reset(client);
    }
    let origin = Origin {
        process: None,
        job_id: None,
        identity: identity.clone(),
        cgroup_id: info.cgroup_id,
        dst,
    };

    let timeout = services.upstream_connect_timeout;
    // Taken before the refill starts (which leaves an occupied slot alone).
    let spare = if allowed && target.as_ref().is_some_and(|t| t.preconnect) {
        let spare = services.spares.take(dst);
        let refill = services.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = refill.spares.refill(dst, timeout) => {}
                () = refill.shutdown.cancelled() => {}
            }
        });
        spare
    } else {
        None
    };
    let preconnected = spare.is_some();

    // Write-ahead: no byte is relayed before the session is durably recorded, and a gateway that
    // cannot record does not serve. Opening the upstream connection overlaps with the recording.
    let record = async {
        let process = describe_process(&info, job.as_deref(), &services).await;
        let session = NewSession {
            kind: SessionKind::Proxied,
            job_id: job.as_ref().map(|j| j.id.clone()),
            target: target.as_ref().map(|t| t.name.clone()),
            protocol: target.as_ref().map(|t| t.protocol.to_string()),
            destination: dst.to_string(),
            process: Some(process.clone()),
            identity,
            decision: decision.label().to_string(),
            rule: decision.rule().map(str::to_string),
            reason: decision.reason().map(str::to_string),
            started_at,
            ended_at: None,
            path: Some(SessionPath::Proxy),
            cookie: None,
        };
        // A spare upstream is known before the session is written: one write for both.
        let connected = if preconnected {
            vec![upstream_connected(dst, true)]
        } else {
            Vec::new()
        };
        (
            services.store.insert_session_with(session, connected).await,
            process,
        )
    };
    let upstream = async {
        if !allowed {
            return None;
        }
        match spare {
            Some(s) => Some(Ok(s)),
            None => Some(tcp::connect(dst, timeout).await),
        }
    };
    // The upstream future is polled first: its SYN is on the wire before the (synchronous) commit.
    let (upstream, (recorded, process)) = tokio::join!(upstream, record);
    let session_id = match recorded {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, %dst, "cannot record session; refusing the connection");
            return tcp::reset(client);
        }
    };
    log_session(session_id, &process, dst, &decision, target.as_ref());
    let origin = Origin {
        process: Some(process),
        job_id: job.as_ref().map(|j| j.id.clone()),
        ..origin
    };
    match (target, upstream) {
        (Some(target), Some(Ok(upstream))) => {
            if !preconnected {
                let (kind, detail) = upstream_connected(dst, false);
                services.store.note_event(session_id, kind, detail);
            }
            serve(client, upstream, target, session_id, origin, &services).await;
        }
        (_, Some(Err(e))) => {
            services.store.note_event(
                session_id,
                EventKind::UpstreamError,
                json!({ "upstream": dst.to_string(), "error": e.to_string() }),
            );
            services
                .store
                .end_session(session_id, SessionEnd::default());
            // The client's handshake is done already: a reset is the closest thing to a refusal.
            tcp::reset(client);
        }
        _ => {
            services
                .store
                .end_session(session_id, SessionEnd::default());
            tcp::reset(client);
        }
    }
}

/// A job's DNS over TCP to a resolver it may use (the kernel redirects it only with DNS follow
/// on): served by the DNS forwarder (see [`crate::dns::Upstream`]), within the job's
/// connection limit.
async fn dns_over_tcp(
    client: TcpStream,
    resolver: SocketAddr,
    info: ConnInfo,
    job: Option<Arc<crate::jobs::Job>>,
    netns_cookie: u64,
    forwarder: &Arc<crate::dns::Services>,
    services: &Services,
) {
    let asker = crate::dns::Asker {
        // The cgroup of the job (as the kernel's record of a datagram names it); a process of
        // no job has no told addresses either way.
        job_cgroup_id: job.as_ref().map_or(info.cgroup_id, |j| j.cgroup_id),
        job,
    };
    let upstream = if netns_cookie == forwarder.own_netns {
        crate::dns::Upstream::Addressed(None)
    } else {
        match services.netns.dns_upstream(netns_cookie) {
            Some(u) => u,
            // Closed since it accepted.
            None => {
                let reason =
                    "DNS over TCP from a network namespace the gateway no longer serves; refused";
                crate::dns::tcp::record_refusal(&asker, resolver, reason.into(), forwarder).await;
                return tcp::reset(client);
            }
        }
    };
    let slot = asker
        .job
        .as_ref()
        .map(|j| ConnectionSlot::take(j, services.max_connections_per_job));
    if matches!(slot, Some(Err(_))) {
        let reason = format!(
            "DNS over TCP: the job has its {} connections open already; refused",
            services.max_connections_per_job
        );
        crate::dns::tcp::record_refusal(&asker, resolver, reason, forwarder).await;
        return tcp::reset(client);
    }
    let namespace = crate::dns::Namespace {
        cookie: netns_cookie,
        upstream,
    };
    crate::dns::tcp::serve(client, resolver, asker, namespace, forwarder).await;
}

/// The process behind a connection as it is recorded (and shown to approvers): what /proc says
/// of it and of the processes above it in its job, its command lines masked with the detectors
/// of every `[[masking]]` rule (a URL or a statement typed on a command line holds what the
/// traffic's masking hides, and the shell above it is recorded with each connection it makes,
/// to whichever target, or none).
pub(crate) async fn describe_process(
    info: &ConnInfo,
    job: Option<&crate::jobs::Job>,
    services: &Services,
) -> ProcessInfo {
    let mut process = services
        .processes
        .describe(info, |pid| services.exec_starts.last(pid));
    if let Some(job) = job.filter(|_| process.verified) {
        who_ran_it(&mut process, job, services).await;
    }
    process.masked(services.command_line_masking.as_deref())
}

/// The container the process runs in and the processes above it in its job, for a process that
/// is provably the one that connected.
async fn who_ran_it(process: &mut ProcessInfo, job: &crate::jobs::Job, services: &Services) {
    let Ok(scope) = job.cgroup_path.strip_prefix(&services.cgroup_root) else {
        return;
    };
    let scope = format!("/{}", scope.display());
    let pid = process.pid;
    let Some(cgroup) = crate::cgroup::process_cgroup(pid) else {
        return;
    };
    process.ancestry = process::ancestry(pid, &scope);
    process.container = services.containers.describe(&cgroup, &scope).await;
}

/// The `upstream_connected` event (`preconnected` only said when a spare was used).
fn upstream_connected(dst: SocketAddr, preconnected: bool) -> (EventKind, serde_json::Value) {
    let mut detail = json!({ "upstream": dst.to_string() });
    if preconnected {
        detail["preconnected"] = json!(true);
    }
    (EventKind::UpstreamConnected, detail)
}

fn log_session(
    id: i64,
    p: &ProcessInfo,
    dst: SocketAddr,
    decision: &Decision,
    target: Option<&Target>,
) {
    // Debug level: every session is in the store already; the log is for following along.
    tracing::debug!(
        session = id,
        pid = p.pid,
        comm = %p.comm,
        %dst,
        target = target.map_or("-", |t| t.name.as_str()),
        decision = decision.label(),
        rule = decision.rule().unwrap_or("-"),
        "connection"
    );
}

/// Hands an allowed, recorded connection and its upstream to the target's protocol handler.
async fn serve(
    client: TcpStream,
    upstream: TcpStream,
    target: Target,
    session_id: i64,
    origin: Origin,
    services: &Services,
) {
    match target.protocol {
        Protocol::Tcp => serve_tcp(client, upstream, session_id, services).await,
        Protocol::Postgres => {
            let session = postgres::Session {
                services: &services.postgres,
                target: &target,
                dst: origin.dst,
                id: session_id,
                identity: &origin.identity,
                cgroup_id: origin.cgroup_id,
                process: origin.process.as_ref(),
                job_id: origin.job_id.as_deref(),
            };
            let end = postgres::serve(client, upstream, session).await;
            services.store.end_session(session_id, end);
        }
        Protocol::Ssh => {
            let end = ssh::serve(client, upstream, target, session_id, origin, &services.ssh).await;
            services.store.end_session(session_id, end);
        }
        Protocol::Http => {
            let session = http::Session {
                services: &services.http,
                target: &target,
                dst: origin.dst,
                id: session_id,
                identity: &origin.identity,
                process: origin.process.as_ref(),
                job_id: origin.job_id.as_deref(),
            };
            let end = http::serve(client, upstream, session).await;
            services.store.end_session(session_id, end);
        }
        other => {
            // Validation refuses unimplemented protocols; this is the second line.
            services.store.note_event(
                session_id,
                EventKind::Error,
                json!({ "message": format!("protocol {other} not implemented") }),
            );
            services
                .store
                .end_session(session_id, SessionEnd::default());
            tcp::reset(client);
        }
    }
}

async fn serve_tcp(client: TcpStream, upstream: TcpStream, session_id: i64, services: &Services) {
    let counters = Arc::new(tcp::Counters::default());
    let end = tcp::relay(
        client,
        upstream,
        counters.clone(),
        services.shutdown.cancelled(),
    )
    .await;
    let (up, down) = (
        counters.up.load(Ordering::Relaxed),
        counters.down.load(Ordering::Relaxed),
    );
    services.store.close_session(
        session_id,
        vec![(
            EventKind::Closed,
            json!({ "end": end, "bytes_up": up, "bytes_down": down }),
        )],
        SessionEnd {
            bytes_up: up,
            bytes_down: down,
        },
    );
}

/// A connection to the listener that no redirect produced: someone outside any job connected to
/// it directly (inside jobs the kernel refuses that), or its record was removed (it closed before
/// the gateway took it).
async fn anomaly(client: TcpStream, peer: SocketAddr, services: &Services, started_at: String) {
    if !services
        .recorder
        .budgets
        .admit(None, budget::Source::DirectConnections)
    {
        return tcp::reset(client);
    }
    let listener = client
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::warn!(%peer, %listener, "connection to the listener without an intercept record; closed");
    let session = NewSession {
        kind: SessionKind::Anomaly,
        job_id: None,
        target: None,
        protocol: None,
        destination: listener,
        process: None,
        identity: Identity::unauthenticated(),
        decision: "deny".into(),
        rule: None,
        reason: Some(format!(
            "direct connection to the gateway listener from {peer} (no intercept record)"
        )),
        ended_at: Some(started_at.clone()),
        started_at,
        path: None,
        cookie: None,
    };
    if let Err(e) = services.store.insert_session(session).await {
        tracing::error!(error = %e, "cannot record anomaly");
    }
    tcp::reset(client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_come_back_as_the_process_wrote_them() {
        let mapped = gateway_common::v4_mapped([10, 0, 0, 5]);
        assert_eq!(
            address(&mapped, true),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
        );
        // An IPv4-mapped destination on an IPv6 socket is still an IPv4 host.
        assert_eq!(
            address(&mapped, false),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
        );
        let v6: Ipv6Addr = "fd00::5".parse().unwrap();
        assert_eq!(address(&v6.octets(), false), IpAddr::V6(v6));
    }
}
