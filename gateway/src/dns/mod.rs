//! DNS follow: host-name targets reach the addresses each job is told, nothing else.
//!
//! With `server.dns_follow`, the kernel programs send jobs' DNS queries (UDP to port 53 of an
//! allowed resolver) to the forwarder here instead, and the intercept listener hands it jobs'
//! TCP connections to port 53 of those resolvers ([`tcp`]). The forwarder asks the resolver the
//! job addressed itself, from the job's network namespace (where that address means what the
//! job meant), and before the answer goes back notes every address answered for a host-name
//! target (exact, or `*.suffix`) as told to this job, for the answer's TTL within the
//! configured bounds, and adds it to the kernel's destination set. A redirected connect to such
//! an address is served only for a job that was told it. Queries are recorded per job.
//!
//! The forwarder listens on loopback of the daemon's network namespace, and of each job network
//! namespace the daemon listens in (opened and closed with the intercept listener there). A
//! namespace owned by another user namespace than the daemon's (`unshare -Urn`, rootless
//! containers) is configured by whoever owns it, the job: an address there means what the job
//! made it mean, so its queries are asked of the daemon's own resolvers, from the daemon's
//! namespace, whatever resolver the job addressed ([`Upstream::Daemon`]).

mod answer;
mod follow;
pub mod tcp;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use gateway_common::{AF_INET, AF_INET6};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use answer::addresses;
pub use follow::{Follow, Followed, MAX_FOLLOWED, MAX_TOLD_PER_JOB, Told};

use crate::{
    budget::{self, Recorder},
    ebpf::{Dataplane, DnsClients},
    identity::Identity,
    jobs::{Job, Jobs},
    mask::body::BodyRules,
    policy::{Decision, Policy},
    record::{EventKind, NewSession, SessionKind, Store, now},
    targets::TargetSet,
};

/// Queries being forwarded at once, all jobs together; more are dropped (and logged).
pub const MAX_IN_FLIGHT: usize = 256;
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
    /// What a job's connects are decided by: its queries are answered, and answers followed
    /// for a target, only as far as it may connect.
    pub policy: Arc<Policy>,
    /// Names of all targets (a job that may connect to none has no use for DNS, unless
    /// `reaches_beyond_targets`).
    pub target_names: Vec<String>,
    /// Jobs reach destinations other than targets whatever their identity (`allow_direct`, or
    /// `audit` mode): DNS is answered for any job still bound.
    pub reaches_beyond_targets: bool,
    pub store: Store,
    pub recorder: Arc<Recorder>,
    /// The detectors of every `[[masking]]` rule: a name asked (`123-45-6789.example`) is
    /// recorded masked, as command lines are.
    pub masking: Option<Arc<BodyRules>>,
    pub shutdown: CancellationToken,
    /// Queries being forwarded, per job cgroup.
    pub in_flight: InFlight,
    /// Queries being forwarded, all jobs together (see [`MAX_IN_FLIGHT`]).
    pub limit: Arc<tokio::sync::Semaphore>,
    /// The resolvers jobs may use (the kernel's `DNS_RESOLVERS`): a job's TCP connection to port
    /// 53 of one of them is DNS for the forwarder.
    pub resolvers: Vec<IpAddr>,
    /// The daemon's own resolvers (`server.dns_resolvers`, default the host's), asked from the
    /// daemon's namespace for the namespaces a job configures itself ([`Upstream::Daemon`]).
    pub own_resolvers: Vec<IpAddr>,
    /// The daemon's own network namespace.
    pub own_netns: u64,
    /// Whether each binding may connect to any target (policy asked once per binding).
    pub admissions: Admissions,
}

impl Services {
    /// Whether a job's TCP connection to `dst` is DNS for the forwarder.
    pub fn is_resolver(&self, dst: SocketAddr) -> bool {
        dst.port() == 53
            && self
                .resolvers
                .iter()
                .any(|r| crate::address::canonical(*r) == crate::address::canonical(dst.ip()))
    }
}

/// The network namespace a query came from, and where the forwarder asks its resolver.
#[derive(Clone)]
pub struct Namespace {
    pub cookie: u64,
    pub upstream: Upstream,
}

/// Whom the forwarder asks a namespace's queries.
#[derive(Clone)]
pub enum Upstream {
    /// The resolver the job addressed, from the network namespace `file` (`None`: the daemon's
    /// own), where that address means what the job meant (a container's 127.0.0.11).
    Addressed(Option<Arc<File>>),
    /// The daemon's own resolvers, from the daemon's namespace: the namespace is owned by another
    /// user namespace, so the job configures it (addresses, routes, a server on the resolver's
    /// address) and nothing asked there can be trusted.
    Daemon,
}

/// The resolver asked for a query, and the namespace it is asked from.
#[derive(Debug)]
struct Asking {
    resolver: SocketAddr,
    /// `None`: the daemon's own namespace.
    from: Option<Arc<File>>,
}

impl Namespace {
    /// Whom to ask for a query the job addressed to `resolver`. In a namespace the job configures,
    /// that resolver if the daemon uses it too (`own_resolvers`), else the daemon's first; `Err`
    /// when the daemon has none.
    fn asking(&self, resolver: SocketAddr, own_resolvers: &[IpAddr]) -> Result<Asking, String> {
        match &self.upstream {
            Upstream::Addressed(file) => Ok(Asking {
                resolver,
                from: file.clone(),
            }),
            Upstream::Daemon => {
                let canonical = crate::address::canonical;
                let own = own_resolvers;
                let ip = own
                    .iter()
                    .find(|r| canonical(**r) == canonical(resolver.ip()))
                    .or_else(|| own.first())
                    .ok_or_else(|| {
                        "the job's network namespace is its own to configure and the daemon has no resolver of its own to ask instead (server.dns_resolvers); DNS query refused".to_string()
                    })?;
                Ok(Asking {
                    resolver: SocketAddr::new(*ip, 53),
                    from: None,
                })
            }
        }
    }

    /// Notes in a query's record whom it was asked of, where that is not what the job addressed.
    fn note(&self, asking: &Asking, detail: &mut serde_json::Value) {
        if matches!(self.upstream, Upstream::Daemon) {
            detail["asked"] = json!(asking.resolver.to_string());
            detail["asked_from"] = json!("daemon");
        }
    }
}

/// Whether a binding may connect to any target, per job cgroup: asked of policy once per
/// binding, not per query. The entry holds the binding's `Job` weakly, so that the allocation,
/// and with it the address an entry is matched by, is never another binding's while the entry
/// lives: a job bound again is a new `Job`, and its first query asks policy again.
#[derive(Default)]
pub struct Admissions(parking_lot::Mutex<HashMap<u64, (Weak<Job>, bool)>>);

/// Entries beyond which those of bindings no longer in use are dropped.
const ADMISSIONS_PRUNE_AT: usize = 1024;

impl Admissions {
    /// Whether `job`'s binding reaches any target; `decide` is asked when this binding was not.
    fn reaches_any(&self, job: &Arc<Job>, decide: impl FnOnce(&Identity) -> bool) -> bool {
        if let Some((bound, reaches)) = self.0.lock().get(&job.cgroup_id)
            && std::ptr::eq(bound.as_ptr(), Arc::as_ptr(job))
        {
            return *reaches;
        }
        let reaches = decide(&job.identity);
        let mut cache = self.0.lock();
        if cache.len() >= ADMISSIONS_PRUNE_AT {
            cache.retain(|_, (bound, _)| bound.strong_count() > 0);
        }
        cache.insert(job.cgroup_id, (Arc::downgrade(job), reaches));
        reaches
    }
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

/// Binds the forwarder's sockets in the current thread's network namespace (a job's): 127.0.0.1
/// and ::1 on `port`, skipping a family the namespace lacks; at least one.
pub fn bind_here(port: u16) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::new();
    let mut first_error = None;
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                sockets.push(s);
            }
            // The namespace lacks the family (IPv6 off, or not in the kernel).
            Err(e)
                if e.kind() == io::ErrorKind::AddrNotAvailable
                    || e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // A socket another process holds on the port would receive the job's queries: none of
    // them is served rather than some.
    match (first_error, sockets.is_empty()) {
        (Some(e), _) => Err(e),
        (None, true) => Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no loopback address in the namespace",
        )),
        (None, false) => Ok(sockets),
    }
}

/// Serves the forwarder's sockets in the daemon's namespace, and expires what was told, until
/// shutdown.
pub async fn serve(sockets: Vec<UdpSocket>, services: Arc<Services>) {
    let mut tasks = tokio::task::JoinSet::new();
    let own = Namespace {
        cookie: services.own_netns,
        upstream: Upstream::Addressed(None),
    };
    for socket in sockets {
        tasks.spawn(receive_loop(
            Arc::new(socket),
            own.clone(),
            services.clone(),
        ));
    }
    tasks.spawn(expire_loop(services.clone()));
    services.shutdown.cancelled().await;
    tasks.abort_all();
}

/// Serves the forwarder's sockets in a job network namespace until `stop` (or shutdown).
pub async fn serve_namespace(
    sockets: Vec<std::net::UdpSocket>,
    namespace: Namespace,
    services: Arc<Services>,
    stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        match UdpSocket::from_std(socket) {
            Ok(s) => {
                tasks.spawn(receive_loop(
                    Arc::new(s),
                    namespace.clone(),
                    services.clone(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "DNS forwarder: cannot serve a socket in a job namespace")
            }
        }
    }
    tokio::select! {
        () = stop.cancelled() => {}
        () = services.shutdown.cancelled() => {}
    }
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

async fn receive_loop(socket: Arc<UdpSocket>, namespace: Namespace, services: Arc<Services>) {
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
        let Some(client) = services.clients.get(namespace.cookie, peer.port(), family) else {
            tracing::warn!(%peer, netns_cookie = namespace.cookie, "DNS forwarder: a datagram from no job's DNS socket; dropped");
            continue;
        };
        let Some(job_permit) = services.in_flight.take(client.job_cgroup_id) else {
            tracing::warn!(%peer, "DNS forwarder: the job has {MAX_IN_FLIGHT_PER_JOB} queries in flight already; dropped");
            continue;
        };
        let Ok(permit) = services.limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "DNS forwarder: {MAX_IN_FLIGHT} queries in flight already; dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, services, namespace) = (socket.clone(), services.clone(), namespace.clone());
        tokio::spawn(async move {
            let _permits = (permit, job_permit);
            let resolver = SocketAddr::new(
                crate::address::from_kernel(&client.resolver, false),
                client.resolver_port as u16,
            );
            let asker = Asker {
                job_cgroup_id: client.job_cgroup_id,
                job: services
                    .jobs
                    .of_kernel_record(client.job_slot, client.job_cgroup_id),
            };
            let outcome = match exchange(
                &socket, peer, &asker, &query, resolver, &namespace, &services,
            )
            .await
            {
                Ok(o) | Err(o) => o,
            };
            record(&asker, resolver, outcome, &services).await;
        });
    }
}

/// The job a query is attributed to.
pub struct Asker {
    /// The job cgroup (what DNS follow notes the answers for).
    pub job_cgroup_id: u64,
    pub job: Option<Arc<Job>>,
}

impl Asker {
    /// The identity the job's queries are answered for, as its connects would be decided: not
    /// for a job that has ended (a socket it left behind) or was bound again since this asker
    /// was made (a DNS connection opened before), nor past its binding, nor for an identity no
    /// rule lets connect to any target (when nothing but targets is reachable).
    /// `Err`: why its queries are refused.
    fn admitted(&self, services: &Services) -> Result<Identity, String> {
        let current = services.jobs.for_cgroup_exact(self.job_cgroup_id);
        self.admit(
            current,
            &services.admissions,
            services.reaches_beyond_targets,
            |identity| {
                services.target_names.iter().any(|t| {
                    matches!(
                        services.policy.decide_connection(identity, t),
                        Decision::Allow { .. }
                    )
                })
            },
        )
    }

    /// [`Asker::admitted`] with the job's binding now (`current`) and policy (`reaches_any`)
    /// given.
    fn admit(
        &self,
        current: Option<Arc<Job>>,
        admissions: &Admissions,
        reaches_beyond_targets: bool,
        reaches_any: impl FnOnce(&Identity) -> bool,
    ) -> Result<Identity, String> {
        // A slot an ended job left may be another job's now: the job must be the socket's, and
        // its binding the one it has now.
        let Some(job) = self
            .job
            .as_ref()
            .filter(|j| j.cgroup_id == self.job_cgroup_id)
        else {
            return Err(
                "the job this DNS query came from has ended (or it is of no job); refused".into(),
            );
        };
        if !current.is_some_and(|c| Arc::ptr_eq(&c, job)) {
            return Err(format!(
                "job {} has ended or was bound again since this DNS query's connection opened; refused",
                job.id
            ));
        }
        if let Some(expired) = job.binding_expired() {
            return Err(format!("{expired}; DNS query refused"));
        }
        if !reaches_beyond_targets && !admissions.reaches_any(job, reaches_any) {
            return Err(format!(
                "no rule allows job {} ({}) to connect to any target; DNS query refused",
                job.id, job.identity.subject
            ));
        }
        Ok(job.identity.clone())
    }
}

/// What a query came to, for the record.
struct Outcome {
    decision: &'static str,
    reason: Option<String>,
    detail: serde_json::Value,
    target: Option<String>,
}

impl Outcome {
    fn refused(reason: String, detail: serde_json::Value) -> Outcome {
        Outcome {
            decision: "deny",
            reason: Some(reason),
            detail,
            target: None,
        }
    }
}

/// A job's query the forwarder accepted: one question.
struct Query {
    id: u16,
    name: hickory_proto::rr::Name,
    /// What the job asked, echoed in a refusal.
    question: hickory_proto::op::Query,
    op_code: hickory_proto::op::OpCode,
    detail: serde_json::Value,
}

impl Query {
    /// A REFUSED answer to the query (RFC 1035 4.1.1: policy), and the record of the refusal.
    fn refuse(mut self, reason: String) -> (Vec<u8>, Outcome) {
        let mut answer = Message::error_msg(self.id, self.op_code, ResponseCode::Refused);
        answer.add_query(self.question);
        self.detail["rcode"] = json!(ResponseCode::Refused.to_string());
        // Built from a question that parsed: it serializes.
        let bytes = answer.to_vec().unwrap_or_default();
        (bytes, Outcome::refused(reason, self.detail))
    }
}

/// Reads a job's query; a refusal (never forwarded) for anything but one question.
fn read_query(query: &[u8], resolver: SocketAddr, transport: &str) -> Result<Query, Outcome> {
    if query.len() > MAX_QUERY {
        return Err(Outcome::refused(
            format!("DNS query of more than {MAX_QUERY} bytes; dropped"),
            json!({ "bytes": query.len(), "transport": transport, "resolver": resolver.to_string() }),
        ));
    }
    let parsed = match Message::from_vec(query) {
        Ok(m) if m.message_type() == MessageType::Query && m.queries().len() == 1 => m,
        Ok(_) => {
            return Err(Outcome::refused(
                "not a DNS query of one question; dropped".into(),
                json!({ "bytes": query.len(), "transport": transport, "resolver": resolver.to_string() }),
            ));
        }
        Err(e) => {
            return Err(Outcome::refused(
                format!("malformed DNS query ({e}); dropped"),
                json!({ "bytes": query.len(), "transport": transport, "resolver": resolver.to_string() }),
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
    let detail = json!({
        "name": name,
        "type": question.query_type().to_string(),
        "resolver": resolver.to_string(),
        "transport": transport,
    });
    Ok(Query {
        id: parsed.id(),
        name: question.name().clone(),
        question: question.clone(),
        op_code: parsed.op_code(),
        detail,
    })
}

/// Follows the resolver's answer to `query` for the job (in the kernel before the job hears of
/// it), for the targets `identity` may connect to; the bytes to give the job, and the record.
async fn follow_answer(
    mut query: Query,
    answer: Message,
    bytes: Vec<u8>,
    (asker, identity): (&Asker, &Identity),
    services: &Services,
) -> (Vec<u8>, Outcome) {
    let detail = &mut query.detail;
    detail["rcode"] = json!(answer.response_code().to_string());
    let max_ttl = u32::try_from(services.follow.settings.max_ttl.as_secs()).unwrap_or(u32::MAX);
    let addresses = addresses(&answer, &query.name);
    detail["answers"] = json!(
        addresses
            .iter()
            .map(|(ip, ttl)| json!({ "address": ip.to_string(), "ttl": ttl }))
            .collect::<Vec<_>>()
    );
    let name = detail["name"].as_str().unwrap_or_default().to_string();
    // Followed before the job hears of them: its connect must find them in the kernel.
    let statics = services.targets.read().clone();
    let now = Instant::now();
    let refuse = |target: &str| match services.policy.decide_connection(identity, target) {
        Decision::Allow { .. } => None,
        Decision::Deny { reason, .. } => Some(reason),
        Decision::RequireApproval { rule } => Some(format!(
            "rule {rule:?} wants approval of the connection, which is not supported"
        )),
    };
    let mut followed = Vec::new();
    let mut add = Vec::new();
    for answered in &addresses {
        let (f, a) = services.follow.tell(
            asker.job_cgroup_id,
            &name,
            *answered,
            &statics,
            now,
            &refuse,
        );
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
    (
        bytes,
        Outcome {
            decision: "allow",
            reason: None,
            detail: query.detail,
            target,
        },
    )
}

/// The record of a query the resolver did not answer.
fn unanswered(mut query: Query, error: String) -> Outcome {
    query.detail["error"] = json!(error);
    Outcome {
        decision: "allow",
        reason: Some(format!("no answer from the resolver: {error}")),
        detail: query.detail,
        target: None,
    }
}

async fn exchange(
    socket: &UdpSocket,
    peer: SocketAddr,
    asker: &Asker,
    query: &[u8],
    resolver: SocketAddr,
    namespace: &Namespace,
    services: &Services,
) -> Result<Outcome, Outcome> {
    let parsed = read_query(query, resolver, "udp")?;
    let identity = match asker.admitted(services) {
        Ok(i) => i,
        Err(reason) => {
            let (bytes, mut outcome) = parsed.refuse(reason);
            if let Err(e) = socket.send_to(&bytes, peer).await {
                outcome.detail["error"] = json!(e.to_string());
            }
            return Err(outcome);
        }
    };
    let asking = match namespace.asking(resolver, &services.own_resolvers) {
        Ok(a) => a,
        Err(reason) => {
            let (bytes, mut outcome) = parsed.refuse(reason);
            if let Err(e) = socket.send_to(&bytes, peer).await {
                outcome.detail["error"] = json!(e.to_string());
            }
            return Err(outcome);
        }
    };
    let mut parsed = parsed;
    namespace.note(&asking, &mut parsed.detail);
    let (answer, bytes) = match ask(query, parsed.id, &asking).await {
        Ok(a) => a,
        Err(e) => return Err(unanswered(parsed, e)),
    };
    let (bytes, mut outcome) =
        follow_answer(parsed, answer, bytes, (asker, &identity), services).await;
    if let Err(e) = socket.send_to(&bytes, peer).await {
        outcome.detail["error"] = json!(e.to_string());
    }
    Ok(outcome)
}

/// Runs `make` on a thread of its own in the network namespace `file` (or here, for the
/// daemon's own): sockets it creates live there.
async fn in_namespace<T: Send + 'static>(
    file: Option<&Arc<File>>,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let Some(file) = file.cloned() else {
        return make();
    };
    tokio::task::spawn_blocking(move || run_in(&file, make))
        .await
        .map_err(io::Error::other)?
}

/// Runs `make` on a thread of its own in the network namespace `ns` (sockets it creates live
/// there); the thread returns to the daemon's namespace before it ends.
pub fn run_in<T: Send>(ns: &File, make: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let own = File::open("/proc/thread-self/ns/net")?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                let result = make();
                let _ = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                result
            })
            .join()
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the thread that entered the namespace panicked",
                ))
            })
    })
}

/// Asks the resolver over UDP; the first answer to the query that parses, with the job's `id`.
/// The query goes out under an id of the forwarder's choosing (RFC 5452): the job chose and
/// knows its own, and one who can guess the rest of an answer could otherwise have it followed.
async fn ask(query: &[u8], id: u16, asking: &Asking) -> Result<(Message, Vec<u8>), String> {
    let resolver = asking.resolver;
    let mut wire_id = [0u8; 2];
    getrandom::getrandom(&mut wire_id).map_err(|e| e.to_string())?;
    let wire_id = u16::from_be_bytes(wire_id);
    let mut query = query.to_vec();
    set_id(&mut query, wire_id);
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = in_namespace(asking.from.as_ref(), move || {
        let s = std::net::UdpSocket::bind(bind)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await
    .and_then(UdpSocket::from_std)
    .map_err(|e| e.to_string())?;
    socket.connect(resolver).await.map_err(|e| e.to_string())?;
    socket.send(&query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + RESOLVER_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer within {RESOLVER_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        match Message::from_vec(&buf[..n]) {
            Ok(mut m) if m.id() == wire_id && m.message_type() == MessageType::Response => {
                m.set_id(id);
                let mut bytes = buf[..n].to_vec();
                set_id(&mut bytes, id);
                return Ok((m, bytes));
            }
            _ => continue,
        }
    }
}

/// Sets the id of a DNS message (its first two bytes, RFC 1035 4.1.1) in place: the message is
/// passed on as the resolver wrote it but for that.
fn set_id(message: &mut [u8], id: u16) {
    if let Some(header) = message.get_mut(..2) {
        header.copy_from_slice(&id.to_be_bytes());
    }
}

async fn record(asker: &Asker, resolver: SocketAddr, outcome: Outcome, services: &Services) {
    let job = asker.job.as_ref();
    if !services
        .recorder
        .budgets
        .admit(job.map(|j| &**j), budget::Source::DnsQueries)
    {
        return;
    }
    let mut outcome = outcome;
    if let Some(rules) = &services.masking {
        if let Some(name) = outcome.detail["name"].as_str() {
            outcome.detail["name"] = json!(rules.mask_str(name));
        }
        outcome.reason = outcome.reason.map(|r| rules.mask_str(&r).into_owned());
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
        job_id: job.map(|j| j.id.clone()),
        target: outcome.target,
        protocol: Some("dns".into()),
        destination: resolver.to_string(),
        process: None,
        identity: job.map_or_else(Identity::unauthenticated, |j| j.identity.clone()),
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
