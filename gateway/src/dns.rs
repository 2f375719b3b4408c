//! DNS follow: host-name targets reach the addresses each job is told, nothing else.
//!
//! With `server.dns_follow`, the kernel programs send jobs' DNS queries (UDP to port 53 of an
//! allowed resolver) to the forwarder here instead, which asks the resolver the job addressed
//! itself, and before the answer goes back notes every address answered for a host-name target
//! (exact, or `*.suffix`) as told to this job, for the answer's TTL within the configured bounds,
//! and adds it to the kernel's destination set. A redirected connect to such an address is served
//! only for a job that was told it. Queries are recorded per job.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_common::{ACTION_REDIRECT, AF_INET, AF_INET6, Destination, DnsClient};
use hickory_proto::{
    op::{Message, MessageType},
    rr::{RData, RecordType},
};
use ipnet::IpNet;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::{
    address::{canonical, name_matches},
    budget::{self, Recorder},
    config::{Config, DnsFollow, HostSpec},
    ebpf::{Dataplane, DestinationEntry, DnsClients},
    identity::Identity,
    intercept::address,
    jobs::Jobs,
    record::{EventKind, NewSession, SessionKind, Store, now},
    targets::TargetSet,
};

/// Addresses one job may have been told and not yet expired; beyond it answers are passed on
/// but not followed (recorded).
pub const MAX_TOLD_PER_JOB: usize = 4096;
/// Addresses DNS follow keeps in the kernel's destination set, all jobs together (the set holds
/// 16384 entries with the configured ones).
pub const MAX_FOLLOWED: usize = 8192;
/// A connect made just before its address expired is accepted a little after.
const ACCEPT_GRACE: Duration = Duration::from_secs(10);
/// Queries being forwarded at once, all jobs together; more are dropped (and logged).
const MAX_IN_FLIGHT: usize = 256;
/// … and of one job, so that one job's queries to a resolver that does not answer leave room for
/// the others'.
const MAX_IN_FLIGHT_PER_JOB: usize = 32;
/// How long the forwarder waits for the resolver.
const RESOLVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest query accepted (a query is one question; EDNS options included).
const MAX_QUERY: usize = 1232;

/// Whether a job may connect to an address through a host-name target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// The job was told the address for this target.
    Yes(usize),
    /// The address is followed for this target, but this job was not told it.
    No(usize),
    /// Not an address DNS follow knows.
    Unknown,
}

/// An address followed for a target (one answer record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Followed {
    pub target: String,
    pub address: IpAddr,
    pub port: u16,
    pub ttl_secs: u64,
    /// Why it is not followed (`None`: followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    target: usize,
    expires: Instant,
}

#[derive(Default)]
struct Table {
    /// (job cgroup, address, port) → target and expiry.
    told: HashMap<(u64, IpAddr, u16), Entry>,
    per_job: HashMap<u64, usize>,
    /// (address, port) → target and the latest expiry of any job's: the kernel's entries.
    kernel: HashMap<(IpAddr, u16), Entry>,
}

/// The host-name targets and what each job was told for them.
pub struct Follow {
    settings: DnsFollow,
    /// (target index, name or `*.suffix`, port, name).
    targets: Vec<(usize, String, u16, String)>,
    /// Addresses never followed: the machine's own (a job could reach the gateway's services).
    local: Vec<IpAddr>,
    table: parking_lot::Mutex<Table>,
}

impl Follow {
    /// `None` when `server.dns_follow` is off.
    pub fn new(config: &Config, local: Vec<IpAddr>) -> Option<Follow> {
        let settings = config.server.dns.clone()?;
        let targets = config
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.address.host {
                HostSpec::Name(n) => Some((i, n.clone(), t.address.port, t.name.clone())),
                HostSpec::Net(_) => None,
            })
            .collect();
        Some(Follow {
            settings,
            targets,
            local,
            table: Default::default(),
        })
    }

    fn ttl(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.settings.min_ttl, self.settings.max_ttl)
    }

    /// Notes that job `job` was told `ip` for `name` with `ttl`; returns one [`Followed`] per
    /// target the name matches, and the kernel entries to add.
    fn tell(
        &self,
        job: u64,
        name: &str,
        ip: IpAddr,
        ttl: u32,
        statics: &TargetSet,
        now: Instant,
    ) -> (Vec<Followed>, Vec<DestinationEntry>) {
        let ip = canonical(ip);
        let expires = now + self.ttl(ttl);
        let mut followed = Vec::new();
        let mut add = Vec::new();
        let mut table = self.table.lock();
        for (index, pattern, port, target) in &self.targets {
            if !name_matches(pattern, name) {
                continue;
            }
            let mut f = Followed {
                target: target.clone(),
                address: ip,
                port: *port,
                ttl_secs: self.ttl(ttl).as_secs(),
                refused: None,
            };
            let key = (job, ip, *port);
            let known = table.told.contains_key(&key);
            let jobs_count = table.per_job.get(&job).copied().unwrap_or(0);
            let kernel_known = table.kernel.contains_key(&(ip, *port));
            f.refused = if ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || self.local.contains(&ip)
            {
                Some("an address of this machine or not a host address".into())
            } else if let Some(other) = statics.lookup(SocketAddr::new(ip, *port)) {
                // The configured destination set decides this address already.
                (other != *index).then(|| format!("configured as another target ({other})"))
            } else if let Some(e) = table.kernel.get(&(ip, *port))
                && e.target != *index
            {
                Some("followed for another target already".into())
            } else if !known && jobs_count >= MAX_TOLD_PER_JOB {
                Some(format!(
                    "the job has {MAX_TOLD_PER_JOB} addresses followed already"
                ))
            } else if !kernel_known && table.kernel.len() >= MAX_FOLLOWED {
                Some(format!(
                    "{MAX_FOLLOWED} addresses are followed already (all jobs)"
                ))
            } else {
                None
            };
            if f.refused.is_none() && statics.lookup(SocketAddr::new(ip, *port)).is_none() {
                let told = table.told.entry(key).or_insert(Entry {
                    target: *index,
                    expires,
                });
                told.expires = told.expires.max(expires);
                if !known {
                    *table.per_job.entry(job).or_default() += 1;
                }
                let k = table.kernel.entry((ip, *port)).or_insert(Entry {
                    target: *index,
                    expires,
                });
                k.expires = k.expires.max(expires);
                if !kernel_known {
                    add.push(entry(ip, *port, *index));
                }
            }
            followed.push(f);
        }
        (followed, add)
    }

    /// Whether job `job` may reach `dst` through a followed address.
    pub fn check(&self, job: Option<u64>, dst: SocketAddr, now: Instant) -> Told {
        let ip = canonical(dst.ip());
        let table = self.table.lock();
        let Some(k) = table.kernel.get(&(ip, dst.port())) else {
            return Told::Unknown;
        };
        match job.and_then(|j| table.told.get(&(j, ip, dst.port()))) {
            Some(e) if now < e.expires + ACCEPT_GRACE => Told::Yes(e.target),
            _ => Told::No(k.target),
        }
    }

    /// Forgets what expired; returns the kernel entries to remove.
    fn expire(&self, now: Instant) -> Vec<DestinationEntry> {
        let mut table = self.table.lock();
        let mut gone_jobs = Vec::new();
        table.told.retain(|(job, _, _), e| {
            let keep = now < e.expires + ACCEPT_GRACE;
            if !keep {
                gone_jobs.push(*job);
            }
            keep
        });
        for job in gone_jobs {
            if let Some(n) = table.per_job.get_mut(&job) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    table.per_job.remove(&job);
                }
            }
        }
        let mut remove = Vec::new();
        table.kernel.retain(|(ip, port), e| {
            let keep = now < e.expires;
            if !keep {
                remove.push(entry(*ip, *port, e.target));
            }
            keep
        });
        remove
    }

    /// The kernel entries DNS follow keeps (for a rewrite of the whole destination set).
    pub fn kernel_entries(&self) -> Vec<DestinationEntry> {
        self.table
            .lock()
            .kernel
            .iter()
            .map(|((ip, port), e)| entry(*ip, *port, e.target))
            .collect()
    }
}

fn entry(ip: IpAddr, port: u16, target: usize) -> DestinationEntry {
    DestinationEntry {
        net: IpNet::from(ip),
        port,
        value: Destination {
            action: ACTION_REDIRECT,
            target_index: target as u32,
        },
    }
}

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
        address(&client.resolver, false),
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

/// The A and AAAA records of an answer that belong to `name`: its own, and those of the names
/// its CNAME chain within the answer leads to. With their TTLs.
fn addresses(answer: &Message, name: &hickory_proto::rr::Name) -> Vec<(IpAddr, u32)> {
    let mut names = vec![name.to_lowercase()];
    // Each pass adds at least one name or stops: bounded by the number of records.
    for _ in 0..answer.answers().len() {
        let mut grew = false;
        for r in answer.answers() {
            if let RData::CNAME(target) = r.data()
                && names.contains(&r.name().to_lowercase())
                && !names.contains(&target.0.to_lowercase())
            {
                names.push(target.0.to_lowercase());
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    answer
        .answers()
        .iter()
        .filter(|r| names.contains(&r.name().to_lowercase()))
        .filter_map(|r| match (r.record_type(), r.data()) {
            (RecordType::A, RData::A(a)) => Some((IpAddr::V4(a.0), r.ttl())),
            (RecordType::AAAA, RData::AAAA(a)) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect()
}

async fn record(client: &DnsClient, resolver: SocketAddr, outcome: Outcome, services: &Services) {
    let job = services
        .jobs
        .by_slot(client.job_slot)
        .or_else(|| services.jobs.for_cgroup(client.job_cgroup_id));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(targets: &str) -> (Follow, Config) {
        let text = format!("[server]\ndns_follow = true\n{targets}");
        let config = Config::parse(&text, "t.toml").unwrap();
        (Follow::new(&config, vec![]).unwrap(), config)
    }

    const TARGETS: &str = r#"
        [[targets]]
        name = "api"
        protocol = "tcp"
        address = "api.test:443"
        [[targets]]
        name = "content"
        protocol = "tcp"
        address = "*.content.test:443"
    "#;

    #[test]
    fn a_job_reaches_what_it_was_told_for_as_long_as_the_ttl_and_no_other_job_does() {
        let (f, _) = follow(TARGETS);
        let statics = TargetSet::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.9.0.1".parse().unwrap();
        let (followed, add) = f.tell(1, "api.test", a, 30, &statics, t0);
        assert_eq!(followed.len(), 1);
        assert_eq!(followed[0].refused, None);
        assert_eq!(add.len(), 1);
        let dst = SocketAddr::new(a, 443);
        assert_eq!(f.check(Some(1), dst, t0), Told::Yes(0));
        assert_eq!(f.check(Some(2), dst, t0), Told::No(0));
        assert_eq!(f.check(None, dst, t0), Told::No(0));
        assert_eq!(f.check(Some(1), SocketAddr::new(a, 80), t0), Told::Unknown);
        // A second job told the same address adds no kernel entry.
        assert!(f.tell(2, "api.test", a, 30, &statics, t0).1.is_empty());
        assert!(f.expire(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(f.expire(t0 + Duration::from_secs(31)).len(), 1);
        assert_eq!(
            f.check(Some(1), dst, t0 + Duration::from_secs(31)),
            Told::Unknown
        );
    }

    #[test]
    fn one_job_has_a_bounded_share_of_the_queries_in_flight() {
        let in_flight = InFlight::default();
        let held: Vec<_> = (0..MAX_IN_FLIGHT_PER_JOB)
            .map(|_| in_flight.take(1).expect("room"))
            .collect();
        assert!(in_flight.take(1).is_none());
        assert!(in_flight.take(2).is_some(), "another job has its own share");
        drop(held);
        assert!(in_flight.take(1).is_some());
    }

    #[test]
    fn ttls_are_bounded_and_names_match_exactly_or_below_a_wildcard() {
        let (f, _) = follow(TARGETS);
        let statics = TargetSet::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.9.0.2".parse().unwrap();
        assert_eq!(f.tell(1, "api.test", ip, 0, &statics, t0).0[0].ttl_secs, 5);
        assert_eq!(
            f.tell(1, "api.test", ip, u32::MAX, &statics, t0).0[0].ttl_secs,
            3600
        );
        for (name, hits) in [
            ("a.content.test", 1),
            ("a.b.content.test", 1),
            ("content.test", 0),
            ("evilcontent.test", 0),
            ("api.test.evil", 0),
            ("xapi.test", 0),
        ] {
            let ip: IpAddr = "10.9.0.3".parse().unwrap();
            assert_eq!(
                f.tell(1, name, ip, 30, &statics, t0).0.len(),
                hits,
                "{name}"
            );
        }
    }

    #[test]
    fn local_and_loopback_answers_are_not_followed_and_the_table_is_bounded() {
        let text = format!("[server]\ndns_follow = true\n{TARGETS}");
        let config = Config::parse(&text, "t.toml").unwrap();
        let f = Follow::new(&config, vec!["192.0.2.7".parse().unwrap()]).unwrap();
        let statics = TargetSet::default();
        let t0 = Instant::now();
        for ip in ["127.0.0.1", "192.0.2.7", "::", "224.0.0.1"] {
            let (followed, add) = f.tell(1, "api.test", ip.parse().unwrap(), 30, &statics, t0);
            assert!(followed[0].refused.is_some(), "{ip}");
            assert!(add.is_empty(), "{ip}");
        }
        for i in 0..MAX_TOLD_PER_JOB as u32 + 1 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a0a_0000 + i));
            let (followed, _) = f.tell(1, "api.test", ip, 30, &statics, t0);
            assert_eq!(
                followed[0].refused.is_some(),
                i as usize == MAX_TOLD_PER_JOB,
                "{i}"
            );
        }
    }

    #[test]
    fn dns_follow_settings_are_checked() {
        let problems = |text: &str| match Config::parse(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        };
        let wildcard = r#"
            [[targets]]
            name = "content"
            protocol = "tcp"
            address = "*.content.test:443"
        "#;
        let p = problems(wildcard);
        assert!(
            p.iter().any(|p| p.contains("set server.dns_follow = true")),
            "{p:?}"
        );
        assert!(problems(&format!("[server]\ndns_follow = true\n{wildcard}")).is_empty());
        for bad in [
            "*.test:443",
            "*.*.content.test:443",
            "a.*.test:443",
            "*content.test:443",
        ] {
            let text = format!(
                "[server]\ndns_follow = true\n[[targets]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"{bad}\"\n"
            );
            assert!(!problems(&text).is_empty(), "{bad}");
        }
        let kernel = r#"
            [server]
            dns_follow = true
            [[targets]]
            name = "api"
            protocol = "tcp"
            path = "kernel"
            address = "api.test:443"
        "#;
        assert!(
            problems(kernel)
                .iter()
                .any(|p| p.contains("path \"kernel\" needs an address")),
            "{:?}",
            problems(kernel)
        );
        for (settings, key) in [
            ("dns_listen_port = 53", "server.dns_listen_port"),
            ("dns_listen_port = 0", "server.dns_listen_port"),
            ("dns_listen_port = 70000", "server.dns_listen_port"),
            (
                "dns_min_ttl = \"1m\"\ndns_max_ttl = \"10s\"",
                "server.dns_max_ttl",
            ),
        ] {
            let p = problems(&format!("[server]\ndns_follow = true\n{settings}\n"));
            assert!(p.iter().any(|p| p.contains(key)), "{settings}: {p:?}");
        }
    }

    #[test]
    fn cname_chains_within_the_answer_are_followed_and_nothing_else() {
        use hickory_proto::rr::{Name, Record, rdata};
        let mut m = Message::new();
        let name = Name::from_ascii("api.test.").unwrap();
        let edge = Name::from_ascii("edge.cdn.test.").unwrap();
        let other = Name::from_ascii("other.test.").unwrap();
        m.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::CNAME(rdata::CNAME(edge.clone())),
        ));
        m.add_answer(Record::from_rdata(
            edge,
            20,
            RData::A(rdata::A("10.9.1.1".parse().unwrap())),
        ));
        m.add_answer(Record::from_rdata(
            other,
            20,
            RData::A(rdata::A("10.9.1.2".parse().unwrap())),
        ));
        assert_eq!(
            addresses(&m, &name),
            vec![("10.9.1.1".parse::<IpAddr>().unwrap(), 20)]
        );
    }
}
