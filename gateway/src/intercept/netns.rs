//! Listeners in the network namespaces of jobs. A connect redirected to 127.0.0.1 inside a
//! container's network namespace reaches that namespace's loopback, where nothing of the host
//! listens: the daemon opens the intercept listener there too (a thread enters the namespace,
//! binds, and leaves; the sockets stay in it) and serves it like the host listener.
//!
//! The connect program reports a redirected connect in a namespace the daemon has no listener in
//! (`EVENT_NETNS`, with the namespace's cookie and the process); until the daemon has one there,
//! the kernel holds the connect's SYN (`gw_syn_hold`) and TCP sends it again. Connect records
//! are keyed by the namespace's cookie, so two containers using the same address and port do
//! not meet. A listener closes once no process of any job is left in its namespace.
//!
//! With DNS follow the DNS forwarder listens there too (on the same loopback addresses, its own
//! port), and asks resolvers from there: an address a job's resolver configuration names (a
//! container's 127.0.0.11) means what it means in the job's namespace. Not from a namespace
//! owned by another user namespace than the daemon's (`unshare -Urn`, rootless containers):
//! whoever owns that one configures its network, and a job could answer its own queries there;
//! the forwarder there asks the daemon's own resolvers from the daemon's namespace instead.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::SocketAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::Services;
use crate::{cgroup, ebpf::NetnsListeners};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("process {pid} is gone (its network namespace cannot be opened): {source}")]
    Gone { pid: u32, source: io::Error },
    #[error(
        "cannot enter the network namespace of process {pid}: {0} (the daemon needs CAP_SYS_ADMIN for setns)",
        .source
    )]
    Enter { pid: u32, source: nix::Error },
    #[error("process {pid} is in another network namespace now than the connect that reported it")]
    Moved { pid: u32 },
    #[error("cannot listen on {addr} in the network namespace of process {pid}: {source}")]
    Bind {
        pid: u32,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("the thread that enters the namespace failed")]
    Thread,
    #[error("cannot make the listener asynchronous: {0}")]
    Async(io::Error),
    #[error(
        "cannot listen for DNS on port {port} in the network namespace of process {pid}: {source}"
    )]
    Dns {
        pid: u32,
        port: u16,
        source: io::Error,
    },
}

/// What the daemon knows of a namespace it was asked to listen in.
enum State {
    Open(Opened),
    /// Opening failed: not tried again before `until` (the next connect asks again).
    Failed {
        until: Instant,
    },
}

struct Opened {
    /// Device and inode of the namespace (as `/proc/PID/ns/net` shows them).
    ns: (u64, u64),
    /// Whom the DNS forwarder there asks (`None`: DNS is not forwarded there).
    dns: Option<crate::dns::Upstream>,
    since: Instant,
    /// Ends its accept loops (and so closes its listeners).
    stop: CancellationToken,
}

/// A namespace to listen in: where the process was when it connected.
struct Request {
    pid: u32,
    netns_cookie: u64,
}

/// Keeps a namespace's listener at least this long, and this long after it was seen without
/// job processes only closes it at the next sweep.
const GRACE: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// A namespace the daemon could not listen in is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The daemon's listeners in job network namespaces.
pub struct Namespaces {
    kernel: NetnsListeners,
    /// The daemon's own network namespace (its host listeners).
    own_cookie: u64,
    /// Addresses of the host listeners; the same are bound in every namespace.
    listen: Vec<SocketAddr>,
    /// The DNS forwarder's port (DNS follow on), bound on loopback in every namespace too.
    dns_port: Option<u16>,
    states: Mutex<HashMap<u64, State>>,
    /// Namespaces being opened (requests for them meanwhile are dropped).
    opening: Mutex<HashSet<u64>>,
    requests: mpsc::Sender<Request>,
    last_error: Mutex<Option<String>>,
}

/// For `gateway status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NetnsStatus {
    /// Job network namespaces the daemon listens in now.
    pub listening: usize,
    /// Why the last namespace could not be listened in, if one could not.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Connect reports queued for the opener; beyond it they are dropped (the next connect in the
/// namespace reports it again).
const QUEUE: usize = 256;

impl Namespaces {
    /// `kernel`: the (emptied) set the programs check; the daemon's own namespace goes in first.
    pub fn new(
        kernel: NetnsListeners,
        own_cookie: u64,
        listen: Vec<SocketAddr>,
        dns_port: Option<u16>,
    ) -> Result<(Namespaces, Receiver), crate::ebpf::DataplaneError> {
        kernel.insert(own_cookie)?;
        let (requests, rx) = mpsc::channel(QUEUE);
        Ok((
            Namespaces {
                kernel,
                own_cookie,
                listen,
                dns_port,
                states: Mutex::default(),
                opening: Mutex::default(),
                requests,
                last_error: Mutex::default(),
            },
            Receiver(rx),
        ))
    }

    /// A redirected connect in a namespace without a listener (reported by the kernel).
    pub fn request(&self, pid: u32, netns_cookie: u64) {
        if netns_cookie == self.own_cookie || netns_cookie == 0 {
            return;
        }
        let wanted = match lock(&self.states).get(&netns_cookie) {
            Some(State::Open(_)) => false,
            Some(State::Failed { until }) => Instant::now() >= *until,
            None => true,
        };
        if wanted && lock(&self.opening).insert(netns_cookie) {
            let sent = self.requests.try_send(Request { pid, netns_cookie });
            if sent.is_err() {
                lock(&self.opening).remove(&netns_cookie);
            }
        }
    }

    /// Whom the DNS forwarder asks for the job network namespace `netns_cookie`, while it
    /// serves it.
    pub fn dns_upstream(&self, netns_cookie: u64) -> Option<crate::dns::Upstream> {
        match lock(&self.states).get(&netns_cookie) {
            Some(State::Open(o)) => o.dns.clone(),
            _ => None,
        }
    }

    pub fn status(&self) -> NetnsStatus {
        NetnsStatus {
            listening: lock(&self.states)
                .values()
                .filter(|s| matches!(s, State::Open(_)))
                .count(),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// The opener's end of the request queue.
pub struct Receiver(mpsc::Receiver<Request>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens listeners where connects ask for them and closes those no job uses any more.
pub async fn serve(rx: Receiver, services: Arc<Services>) {
    let mut rx = rx.0;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = rx.recv() => match request {
                Some(r) => open(r, &services).await,
                None => return,
            },
            _ = sweep.tick() => close_unused(&services).await,
            () = services.shutdown.cancelled() => return,
        }
    }
}

async fn open(request: Request, services: &Arc<Services>) {
    let namespaces = &services.netns;
    let Request { pid, netns_cookie } = request;
    let listen = namespaces.listen.clone();
    let dns_port = namespaces.dns_port;
    let opened =
        tokio::task::spawn_blocking(move || listen_in(pid, netns_cookie, &listen, dns_port))
            .await
            .unwrap_or(Err(NetnsError::Thread));
    let state = match opened {
        Ok(Bound {
            ns,
            file,
            owned_by_daemon,
            listeners,
            dns,
        }) => {
            let stop = services.shutdown.child_token();
            let mut addresses = Vec::new();
            for l in listeners {
                addresses.extend(l.local_addr().ok());
                tokio::spawn(super::accept_loop(
                    l,
                    netns_cookie,
                    stop.clone(),
                    services.clone(),
                ));
            }
            let dns_upstream = match (&services.dns_forwarder, dns) {
                (Some(forwarder), Some(sockets)) => {
                    addresses.extend(sockets.iter().filter_map(|s| s.local_addr().ok()));
                    let upstream = if owned_by_daemon {
                        crate::dns::Upstream::Addressed(Some(Arc::new(file)))
                    } else {
                        tracing::info!(
                            pid,
                            netns_cookie,
                            "the network namespace belongs to another user namespace: its DNS is asked of the daemon's own resolvers"
                        );
                        crate::dns::Upstream::Daemon
                    };
                    let namespace = crate::dns::Namespace {
                        cookie: netns_cookie,
                        upstream: upstream.clone(),
                    };
                    tokio::spawn(crate::dns::serve_namespace(
                        sockets,
                        namespace,
                        forwarder.clone(),
                        stop.clone(),
                    ));
                    Some(upstream)
                }
                _ => None,
            };
            // Only now do held SYNs pass: the listeners are there.
            match namespaces.kernel.insert(netns_cookie) {
                Ok(()) => {
                    tracing::info!(
                        pid,
                        netns_cookie,
                        ?addresses,
                        "listening in a job network namespace"
                    );
                    State::Open(Opened {
                        ns,
                        dns: dns_upstream,
                        since: Instant::now(),
                        stop,
                    })
                }
                Err(e) => {
                    stop.cancel();
                    failed(namespaces, netns_cookie, e.to_string())
                }
            }
        }
        Err(e) => failed(namespaces, netns_cookie, e.to_string()),
    };
    lock(&namespaces.states).insert(netns_cookie, state);
    lock(&namespaces.opening).remove(&netns_cookie);
}

fn failed(namespaces: &Namespaces, netns_cookie: u64, why: String) -> State {
    tracing::warn!(
        netns_cookie,
        "cannot listen in a job network namespace: {why}; its connects to targets fail"
    );
    *lock(&namespaces.last_error) = Some(why);
    State::Failed {
        until: Instant::now() + RETRY_AFTER,
    }
}

/// Closes the listeners of namespaces no job process is in any more.
async fn close_unused(services: &Arc<Services>) {
    let namespaces = &services.netns;
    let candidates: Vec<(u64, (u64, u64))> = lock(&namespaces.states)
        .iter()
        .filter_map(|(cookie, s)| match s {
            State::Open(o) if o.since.elapsed() >= GRACE => Some((*cookie, o.ns)),
            _ => None,
        })
        .collect();
    let mut forget: Vec<u64> = lock(&namespaces.states)
        .iter()
        .filter_map(|(cookie, s)| match s {
            State::Failed { until } if Instant::now() >= *until + GRACE => Some(*cookie),
            _ => None,
        })
        .collect();
    if !candidates.is_empty() {
        let jobs: Vec<_> = services
            .jobs
            .list()
            .iter()
            .map(|j| j.cgroup_path.clone())
            .collect();
        let in_use = tokio::task::spawn_blocking(move || namespaces_of(&jobs))
            .await
            .unwrap_or_default();
        forget.extend(
            candidates
                .into_iter()
                .filter(|(_, ns)| !in_use.contains(ns))
                .map(|(cookie, _)| cookie),
        );
    }
    for cookie in forget {
        // Out of the kernel's set first: a connect from now on is held and reported again.
        namespaces.kernel.remove(cookie);
        if let Some(State::Open(o)) = lock(&namespaces.states).remove(&cookie) {
            o.stop.cancel();
            tracing::info!(
                netns_cookie = cookie,
                "job network namespace unused; listener closed"
            );
        }
    }
}

/// The network namespaces (device, inode) the processes of these cgroups are in.
fn namespaces_of(cgroups: &[std::path::PathBuf]) -> HashSet<(u64, u64)> {
    cgroups
        .iter()
        .flat_map(|c| cgroup::processes(c))
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// What was bound in a job network namespace.
struct Bound {
    /// Device and inode of the namespace.
    ns: (u64, u64),
    file: File,
    /// Whether the namespace is owned by the daemon's user namespace (else the job may
    /// configure it).
    owned_by_daemon: bool,
    listeners: Vec<TcpListener>,
    /// The DNS forwarder's sockets (`None`: DNS follow is off).
    dns: Option<Vec<std::net::UdpSocket>>,
}

/// Binds `listen` (and the DNS forwarder's port) in the network namespace of `pid`, if that is
/// still the namespace of `netns_cookie`. A thread of its own enters the namespace and returns
/// to the daemon's before it ends (no thread of the runtime ever changes namespace).
fn listen_in(
    pid: u32,
    netns_cookie: u64,
    listen: &[SocketAddr],
    dns_port: Option<u16>,
) -> Result<Bound, NetnsError> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| NetnsError::Gone { pid, source })?;
    let meta = ns
        .metadata()
        .map_err(|source| NetnsError::Gone { pid, source })?;
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(|source| NetnsError::Gone { pid, source })?;
    let owned_by_daemon = owned_by_own_user_namespace(&ns);
    let bound = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { pid, source })?;
                let result =
                    bind_here(pid, netns_cookie, listen).and_then(|listeners| {
                        let dns =
                            match dns_port {
                                Some(port) => Some(
                                    crate::dns::bind_here(port)
                                        .map_err(|source| NetnsError::Dns { pid, port, source })?,
                                ),
                                None => None,
                            };
                        Ok((listeners, dns))
                    });
                // Back to the daemon's namespace (the thread ends anyway).
                let _ = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                result
            })
            .join()
            .unwrap_or(Err(NetnsError::Thread))
    })?;
    let (bound, dns) = bound;
    let listeners = bound
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(NetnsError::Async)?;
    Ok(Bound {
        ns: (meta.dev(), meta.ino()),
        file: ns,
        owned_by_daemon,
        listeners,
        dns,
    })
}

/// Whether the network namespace `ns` is owned by the daemon's user namespace (only processes
/// with capabilities there configure it). Unknown counts as not.
fn owned_by_own_user_namespace(ns: &File) -> bool {
    /// `NS_GET_USERNS` (linux/nsfs.h): `_IO(0xb7, 0x1)`.
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: ioctl(2) on a descriptor `ns` owns, with no argument; it returns a new descriptor
    // (owned by the File below) or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned open by the kernel and is owned by nothing else.
    let owner = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    match (owner.metadata(), std::fs::metadata("/proc/self/ns/user")) {
        (Ok(o), Ok(own)) => (o.dev(), o.ino()) == (own.dev(), own.ino()),
        _ => false,
    }
}

/// Binds the listener addresses in the current thread's namespace, which must be the one the
/// connect came from. An address family the namespace lacks (IPv6 is off in most containers) is
/// skipped; the namespace needs at least one.
fn bind_here(
    pid: u32,
    netns_cookie: u64,
    listen: &[SocketAddr],
) -> Result<Vec<std::net::TcpListener>, NetnsError> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .map_err(|source| NetnsError::Bind {
            pid,
            addr: listen
                .first()
                .copied()
                .unwrap_or(([127, 0, 0, 1], 0).into()),
            source,
        })?;
    if cookie_of(probe.as_fd()).ok() != Some(netns_cookie) {
        return Err(NetnsError::Moved { pid });
    }
    let mut listeners = Vec::new();
    let mut first_error = None;
    for addr in listen {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                // Accepted connections inherit it (as on the host listeners).
                let _ =
                    nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::TcpNoDelay, &true);
                listeners.push(l);
            }
            Err(source) => {
                tracing::debug!(pid, %addr, error = %source, "not listening on this address in the namespace");
                first_error.get_or_insert(NetnsError::Bind {
                    pid,
                    addr: *addr,
                    source,
                });
            }
        }
    }
    match (listeners.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(listeners),
    }
}

/// The cookie of the daemon's own network namespace.
pub fn own_cookie() -> io::Result<u64> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    cookie_of(probe.as_fd())
}

/// `SO_NETNS_COOKIE`: the cookie of the network namespace a socket lives in (Linux 5.14+), the
/// value `bpf_get_netns_cookie` gives the programs.
fn cookie_of(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (8) into `cookie`, which lives across the
    // call; the descriptor is borrowed, so it is open.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_one_namespace_share_its_cookie() {
        let a = own_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(own_cookie().unwrap(), a);
    }
}
