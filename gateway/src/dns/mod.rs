//! DNS follow: host-name targets reach the addresses each job is told, nothing else.
//!
//! With `server.dns_follow`, the kernel programs send jobs' DNS queries (UDP to port 53 of an
//! allowed resolver) to the forwarder here instead, which asks the resolver the job addressed
//! itself, and before the answer goes back notes every address answered for a host-name target
//! (exact, or `*.suffix`) as told to this job, for the answer's TTL within the configured bounds,
//! and adds it to the kernel's destination set. A redirected connect to such an address is served
//! only for a job that was told it. Queries are recorded per job.

mod answer;
mod follow;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_common::{AF_INET, AF_INET6, DnsClient};
use hickory_proto::op::{Message, MessageType};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use answer::addresses;
pub use follow::{Follow, Followed, MAX_FOLLOWED, MAX_TOLD_PER_JOB, Told};

use crate::{
    budget::{self, Recorder},
    ebpf::{Dataplane, DnsClients},
    identity::Identity,
    jobs::Jobs,
    record::{EventKind, NewSession, SessionKind, Store, now},
    targets::TargetSet,
};

/// Queries being forwarded at once, all jobs together; more are dropped (and logged).
const MAX_IN_FLIGHT: usize = 256;
/// … and of one job, so that one job's queries to a resolver that does not answer leave room for
/// the others'.
const MAX_IN_FLIGHT_PER_JOB: usize = 32;
/// How long the forwarder waits for the resolver.
const RESOLVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest query accepted (a query is one question; EDNS options included).
const MAX_QUERY: usize = 1232;

/// What the forwarder uses.
pub struct Services {
    pub follow: Arc<Follow>,
    pub clients: DnsClients,
    pub dataplane: Arc<tokio::sync::Mutex<Dataplane>>,
    pub targets: Arc<parking_lot::RwLock<Arc<TargetSet>>>,
    pub jobs: Arc<Jobs>,
    pub store: Store,
    pub recorder: Arc<Recorder>,
    pub shutdown: CancellationToken,
    /// Queries being forwarded, per job cgroup.
    pub in_flight: InFlight,
}

/// Queries being forwarded per job cgroup (see [`MAX_IN_FLIGHT_PER_JOB`]).
#[derive(Default)]
pub struct InFlight(Arc<parking_lot::Mutex<HashMap<u64, usize>>>);

/// One query of a job being forwarded, counted while it lives.
struct InFlightQuery(Arc<parking_lot::Mutex<HashMap<u64, usize>>>, u64);

impl InFlight {
    fn take(&self, job: u64) -> Option<InFlightQuery> {
        let mut counts = self.0.lock();
        let n = counts.entry(job).or_default();
        if *n >= MAX_IN_FLIGHT_PER_JOB {
            return None;
        }
        *n += 1;
        Some(InFlightQuery(self.0.clone(), job))
    }
}

impl Drop for InFlightQuery {
    fn drop(&mut self) {
        let mut counts = self.0.lock();
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// Binds the forwarder's sockets (127.0.0.1 and ::1 on `port`; ::1 only where the machine has
/// IPv6).
pub async fn bind(port: u16) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets = vec![UdpSocket::bind(("127.0.0.1", port)).await?];
    match UdpSocket::bind(("::1", port)).await {
        Ok(s) => sockets.push(s),
        Err(e) => {
            tracing::warn!(error = %e, port, "DNS forwarder: no IPv6 loopback; IPv6 resolvers are not followed")
        }
    }
    Ok(sockets)
}

/// Serves the forwarder's sockets, and expires what was told, until shutdown.
pub async fn serve(sockets: Vec<UdpSocket>, services: Arc<Services>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        tasks.spawn(receive_loop(
            Arc::new(socket),
            services.clone(),
            limit.clone(),
        ));
    }
    tasks.spawn(expire_loop(services.clone()));
    services.shutdown.cancelled().await;
    tasks.abort_all();
}

async fn expire_loop(services: Arc<Services>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let remove = services.follow.expire(Instant::now());
        if remove.is_empty() {
            continue;
        }
        let mut dataplane = services.dataplane.lock().await;
        for e in &remove {
            if let Err(err) = dataplane.remove_destination(e) {
                tracing::error!(error = %err, address = %e.net, "DNS follow: cannot remove an expired address");
            }
        }
    }
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    services: Arc<Services>,
    limit: Arc<tokio::sync::Semaphore>,
) {
    let family = match socket.local_addr() {
        Ok(SocketAddr::V4(_)) => AF_INET,
        _ => AF_INET6,
    };
    let mut buf = vec![0u8; MAX_QUERY + 1];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "DNS forwarder: receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Read now: the sender's record is the one its datagram was written with.
        let Some(client) = services.clients.get(peer.port(), family) else {
            tracing::warn!(%peer, "DNS forwarder: a datagram from no job's DNS socket; dropped");
            continue;
        };
        let Some(job_permit) = services.in_flight.take(client.job_cgroup_id) else {
            tracing::warn!(%peer, "DNS forwarder: the job has {MAX_IN_FLIGHT_PER_JOB} queries in flight already; dropped");
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "DNS forwarder: {MAX_IN_FLIGHT} queries in flight already; dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, services) = (socket.clone(), services.clone());
        tokio::spawn(async move {
            let _permits = (permit, job_permit);
            forward(&socket, peer, client, query, &services).await;
        });
    }
}

/// What a query came to, for the record.
struct Outcome {
    decision: &'static str,
    reason: Option<String>,
    detail: serde_json::Value,
    target: Option<String>,
}

async fn forward(
    socket: &UdpSocket,
    peer: SocketAddr,
    client: DnsClient,
    query: Vec<u8>,
    services: &Services,
) {
    let resolver = SocketAddr::new(
        crate::address::from_kernel(&client.resolver, false),
        client.resolver_port as u16,
    );
    let outcome = match exchange(socket, peer, &client, &query, resolver, services).await {
        Ok(o) | Err(o) => o,
    };
    record(&client, resolver, outcome, services).await;
}

async fn exchange(
    socket: &UdpSocket,
    peer: SocketAddr,
    client: &DnsClient,
    query: &[u8],
    resolver: SocketAddr,
    services: &Services,
) -> Result<Outcome, Outcome> {
    let refused = |reason: String, detail: serde_json::Value| Outcome {
        decision: "deny",
        reason: Some(reason),
        detail,
        target: None,
    };
    if query.len() > MAX_QUERY {
        return Err(refused(
            format!("DNS query of more than {MAX_QUERY} bytes; dropped"),
            json!({ "bytes": query.len() }),
        ));
    }
    let parsed = match Message::from_vec(query) {
        Ok(m) if m.message_type() == MessageType::Query && m.queries().len() == 1 => m,
        Ok(_) => {
            return Err(refused(
                "not a DNS query of one question; dropped".into(),
                json!({ "bytes": query.len() }),
            ));
        }
        Err(e) => {
            return Err(refused(
                format!("malformed DNS query ({e}); dropped"),
                json!({ "bytes": query.len() }),
            ));
        }
    };
    let question = &parsed.queries()[0];
    let name = question
        .name()
        .to_lowercase()
        .to_ascii()
        .trim_end_matches('.')
        .to_string();
    let qtype = question.query_type();
    let mut detail =
        json!({ "name": name, "type": qtype.to_string(), "resolver": resolver.to_string() });
    let upstream = match ask(query, parsed.id(), resolver).await {
        Ok(a) => a,
        Err(e) => {
            detail["error"] = json!(e);
            return Err(Outcome {
                decision: "allow",
                reason: Some(format!("no answer from the resolver: {e}")),
                detail,
                target: None,
            });
        }
    };
    let (answer, bytes) = upstream;
    detail["rcode"] = json!(answer.response_code().to_string());
    let max_ttl = u32::try_from(services.follow.settings.max_ttl.as_secs()).unwrap_or(u32::MAX);
    let addresses = addresses(&answer, question.name());
    detail["answers"] = json!(
        addresses
            .iter()
            .map(|(ip, ttl)| json!({ "address": ip.to_string(), "ttl": ttl }))
            .collect::<Vec<_>>()
    );
    // Followed before the job hears of them: its connect must find them in the kernel.
    let statics = services.targets.read().clone();
    let now = Instant::now();
    let mut followed = Vec::new();
    let mut add = Vec::new();
    for (ip, ttl) in &addresses {
        let (f, a) = services
            .follow
            .tell(client.job_cgroup_id, &name, *ip, *ttl, &statics, now);
        followed.extend(f);
        add.extend(a);
    }
    if !add.is_empty() {
        let mut dataplane = services.dataplane.lock().await;
        for e in &add {
            if let Err(err) = dataplane.insert_destination(e) {
                tracing::error!(error = %err, address = %e.net, "DNS follow: cannot add an address to the destination set");
            }
        }
    }
    let target = followed.first().map(|f| f.target.clone());
    if !followed.is_empty() {
        detail["followed"] = json!(followed);
    }
    // The job keeps an answer no longer than the gateway follows it.
    let bytes = if answer.answers().iter().any(|r| r.ttl() > max_ttl) && target.is_some() {
        let mut capped = answer.clone();
        for r in capped.answers_mut() {
            r.set_ttl(r.ttl().min(max_ttl));
        }
        capped.to_vec().unwrap_or(bytes)
    } else {
        bytes
    };
    if let Err(e) = socket.send_to(&bytes, peer).await {
        detail["error"] = json!(e.to_string());
    }
    Ok(Outcome {
        decision: "allow",
        reason: None,
        detail,
        target,
    })
}

/// Asks the resolver; the first answer with the query's id that parses.
async fn ask(query: &[u8], id: u16, resolver: SocketAddr) -> Result<(Message, Vec<u8>), String> {
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(resolver).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + RESOLVER_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer within {RESOLVER_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.id() == id && m.message_type() == MessageType::Response => {
                return Ok((m, buf[..n].to_vec()));
            }
            _ => continue,
        }
    }
}

async fn record(client: &DnsClient, resolver: SocketAddr, outcome: Outcome, services: &Services) {
    let job = services
        .jobs
        .of_kernel_record(client.job_slot, client.job_cgroup_id);
    if !services
        .recorder
        .budgets
        .admit(job.as_deref(), budget::Source::DnsQueries)
    {
        return;
    }
    let at = now();
    tracing::info!(
        resolver = %resolver,
        decision = outcome.decision,
        detail = %outcome.detail,
        "{}",
        outcome.reason.as_deref().unwrap_or("DNS query")
    );
    let session = NewSession {
        kind: SessionKind::Kernel,
        job_id: job.as_ref().map(|j| j.id.clone()),
        target: outcome.target,
        protocol: Some("dns".into()),
        destination: resolver.to_string(),
        process: None,
        identity: job
            .as_ref()
            .map_or_else(Identity::unauthenticated, |j| j.identity.clone()),
        decision: outcome.decision.to_string(),
        rule: None,
        reason: outcome.reason,
        started_at: at.clone(),
        ended_at: Some(at),
        path: None,
        cookie: None,
    };
    if let Err(e) = services
        .store
        .insert_session_with(session, vec![(EventKind::Dns, outcome.detail)])
        .await
    {
        tracing::error!(error = %e, "DNS forwarder: cannot record a query");
    }
}
