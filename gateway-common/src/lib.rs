//! Types shared by the eBPF programs (`gateway-ebpf`) and the daemon (`gateway`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel copies these bytes between the two sides,
//! so field order, sizes and padding are part of the ABI. Any change to a layout bumps [`ABI_VERSION`],
//! which names the bpffs directory of the pinned maps, so a new daemon never reuses maps of an
//! incompatible layout.
#![no_std]

/// Version of the map layouts below; part of the pin path (`<pin_dir>/v<ABI_VERSION>/`).
pub const ABI_VERSION: u32 = 6;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `Config::mode`: non-target destinations pass and are reported.
pub const MODE_AUDIT: u32 = 0;
/// `Config::mode`: non-target destinations are refused with EPERM.
pub const MODE_ENFORCE: u32 = 1;

/// `Config::flags`: emit aya-log records (diagnostics; off by default, off the hot path).
pub const FLAG_DEBUG_LOG: u32 = 1;

/// Name of every map, shared so that the daemon and the programs cannot disagree.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const DESTINATIONS: &str = "DESTINATIONS";
    pub const DNS_RESOLVERS: &str = "DNS_RESOLVERS";
    /// Socket storage: the [`super::SocketRecord`] of a redirected socket, which the kernel frees
    /// with the socket (no table shared between jobs to fill).
    pub const SOCKETS: &str = "SOCKETS";
    pub const BY_CLIENT: &str = "BY_CLIENT";
    pub const EVENTS: &str = "EVENTS";
    /// tgid → CLOCK_BOOTTIME of its latest execve(at) entry, for processes that connected.
    pub const EXEC_STARTS: &str = "EXEC_STARTS";
    /// cgroup storage (shared by every attach type, keyed by the cgroup id alone): the
    /// [`super::JobLink`] of the job cgroup the programs were attached to.
    pub const JOB_LINKS: &str = "JOB_LINKS";
    /// Array of [`super::JobState`] by job slot, mmapped by the daemon.
    pub const JOB_STATES: &str = "JOB_STATES";
    /// netns cookie → 1 for every network namespace the daemon has a listener in (its own, and
    /// each job namespace it opened one in): a redirected SYN in any other namespace is held.
    pub const NETNS_LISTENERS: &str = "NETNS_LISTENERS";
    /// [`super::GrantKey`] → [`super::Grant`]: the kernel-path targets each job may reach,
    /// compiled from the rules when the job is bound.
    pub const GRANTS: &str = "GRANTS";
    /// Socket storage: the [`super::KernelSocket`] of a kernel-path connection, until it closes.
    pub const KERNEL_SOCKETS: &str = "KERNEL_SOCKETS";
    /// Single `u64` (index 0): CLOCK_BOOTTIME until which a daemon reads the events; past it the
    /// kernel path refuses connects.
    pub const LIVENESS: &str = "LIVENESS";
    /// Socket storage: the [`super::DnsSocket`] of a UDP socket whose DNS queries go to the
    /// gateway's DNS forwarder (the resolver it addressed, given back as the answers' source).
    pub const DNS_SOCKETS: &str = "DNS_SOCKETS";
    /// [`super::DnsClientKey`] → [`super::DnsClient`]: who sent the DNS queries the forwarder
    /// receives from a source port (written as each datagram leaves the job).
    pub const DNS_CLIENTS: &str = "DNS_CLIENTS";
    /// Every map, in the order the daemon pins them.
    pub const ALL: [&str; 15] = [
        CONFIG,
        DESTINATIONS,
        DNS_RESOLVERS,
        SOCKETS,
        BY_CLIENT,
        EVENTS,
        EXEC_STARTS,
        JOB_LINKS,
        JOB_STATES,
        NETNS_LISTENERS,
        GRANTS,
        KERNEL_SOCKETS,
        LIVENESS,
        DNS_SOCKETS,
        DNS_CLIENTS,
    ];
}

/// Redirected connects waiting for the daemon, all jobs together (`BY_CLIENT`): a connect that
/// would make more wait is refused.
pub const MAX_PENDING: u32 = 65536;
/// Room in `BY_CLIENT` beyond [`MAX_PENDING`], for connects checked against the limit at the same
/// moment: with it the table is never full when `sock_ops` adds a record.
pub const PENDING_SLACK: u32 = 1024;
/// Job slots (`JOB_STATES`). Slot 0 belongs to no job: it holds the gateway-wide totals of the
/// pending counters, and counts the events of cgroups that have no job link yet.
pub const MAX_JOB_SLOTS: u32 = 1024;

/// Every program, by the name of its function in `gateway-ebpf`, with what it is attached as.
pub mod programs {
    pub const CONNECT4: &str = "gw_connect4";
    pub const CONNECT6: &str = "gw_connect6";
    pub const SENDMSG4: &str = "gw_sendmsg4";
    pub const SENDMSG6: &str = "gw_sendmsg6";
    /// `recvmsg4`/`recvmsg6`: answers of the gateway's DNS forwarder come from the resolver the
    /// job addressed.
    pub const RECVMSG4: &str = "gw_recvmsg4";
    pub const RECVMSG6: &str = "gw_recvmsg6";
    pub const GETPEERNAME4: &str = "gw_getpeername4";
    pub const GETPEERNAME6: &str = "gw_getpeername6";
    pub const BIND4: &str = "gw_bind4";
    pub const BIND6: &str = "gw_bind6";
    pub const SOCK_CREATE: &str = "gw_sock_create";
    pub const SOCK_OPS: &str = "gw_sock_ops";
    /// `lsm_cgroup/socket_create`: address families other than inet, unix and netlink (packet,
    /// XDP, vsock, …) — the cgroup `sock_create` hook only sees inet sockets.
    pub const SOCKET_FAMILY: &str = "gw_socket_family";
    /// Tracepoint on `syscalls:sys_enter_execve` and `sys_enter_execveat`: when a process that
    /// connected through the gateway last began to run another program (`maps::EXEC_STARTS`).
    pub const EXEC_START: &str = "gw_exec_start";
    /// `cgroup_skb/egress`: drops the SYN of a redirected connect made in a network namespace the
    /// daemon has no listener in yet (TCP sends it again, by then to a listener).
    pub const SYN_HOLD: &str = "gw_syn_hold";
}

/// The LSM hook `programs::SOCKET_FAMILY` is loaded for.
pub const SOCKET_FAMILY_HOOK: &str = "socket_create";

/// Single entry (index 0) of the `CONFIG` array, written by the daemon at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// IPv4 listener address as the kernel stores it (`bpf_sock_addr.user_ip4`: network byte order).
    pub listen_ip4: u32,
    /// IPv6 listener address, four words in network byte order (`bpf_sock_addr.user_ip6`).
    pub listen_ip6: [u32; 4],
    /// Listener port, host byte order. 0 means "no listener configured": nothing is redirected.
    pub listen_port: u32,
    /// `MODE_AUDIT` or `MODE_ENFORCE`.
    pub mode: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Redirected connects of one job the daemon has not taken yet (`BY_CLIENT`); one more is
    /// refused (`server.max_pending_connections_per_job`).
    pub max_pending_per_job: u32,
    /// Events reported per job, kind and second; beyond it they are only counted
    /// (`JobState::suppressed`).
    pub events_per_second: u32,
    /// Kernel-path connections one job may have open at once (`server.max_connections_per_job`);
    /// one more is refused.
    pub max_open_per_job: u32,
    /// Port of the gateway's DNS forwarder on loopback (`server.dns_listen_port`); 0: jobs' DNS
    /// goes straight to the resolvers (no host name follows DNS).
    pub dns_port: u32,
    /// Network namespace of the daemon: only connects made there take the kernel path (a job in
    /// a namespace of its own goes through the gateway).
    pub own_netns_cookie: u64,
}

/// Key data of the `DESTINATIONS` LPM trie: port (network order) first so that it must match in
/// full, then the address as IPv6 (IPv4 as IPv4-mapped `::ffff:a.b.c.d`), then padding.
/// The prefix length of a key is `16 + 96 + v4_prefix` for IPv4 and `16 + v6_prefix` for IPv6.
/// Entries with port 0 match any port (looked up second).
pub type DestinationKeyData = [u8; 20];
/// Bits of the key before the address starts.
pub const DESTINATION_PORT_BITS: u32 = 16;

/// `Destination::action`: redirect to the gateway listener.
pub const ACTION_REDIRECT: u32 = 1;
/// `Destination::action`: let it through unchanged (operator-configured direct destinations).
pub const ACTION_DIRECT: u32 = 2;

/// `Destination::action`: refused whatever the mode (the gateway's own pages: jobs never reach them).
pub const ACTION_BLOCK: u32 = 3;
/// `Destination::action`: a `path = "kernel"` target: decided in the connect program (the job's
/// [`Grant`] for `target_index`), recorded through the ring buffer, not redirected.
pub const ACTION_KERNEL: u32 = 4;

/// Key of `GRANTS`: a job (the id of its cgroup, never reused while the machine runs) and a
/// kernel-path target (its index in the configuration).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub job_cgroup_id: u64,
    pub target_index: u32,
    pub _pad: u32,
}

/// Value of `GRANTS`: the job may connect to the target until `expires_boot_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// CLOCK_BOOTTIME nanoseconds after which the job's identity binding no longer holds
    /// (`u64::MAX`: no limit).
    pub expires_boot_ns: u64,
}

/// Value of `KERNEL_SOCKETS`: a kernel-path connection the programs recorded at connect and will
/// record the end of.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSocket {
    pub cookie: u64,
    /// Destination it was recorded for (IPv4 as IPv4-mapped), port host order.
    pub dst_addr: [u8; 16],
    pub dst_port: u32,
    /// Slot of the job whose open connections it counts in.
    pub job_slot: u32,
    /// 1 while counted open (the close is recorded once).
    pub open: u32,
    /// `FIN_*` bits: which FINs the byte counters include (TCP counts them in sequence space).
    pub fins: u32,
}

/// `KernelSocket::fins`: the peer's FIN was received (`bytes_received` counts it).
pub const FIN_IN: u32 = 1;
/// `KernelSocket::fins`: our FIN was acknowledged (`bytes_acked` counts it).
pub const FIN_OUT_ACKED: u32 = 2;

/// Value of the `DESTINATIONS` trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    pub action: u32,
    /// Index of the target in the daemon's configuration (informational).
    pub target_index: u32,
}

/// Builds the key data of a `DESTINATIONS` entry.
pub fn destination_key(port: u16, addr: &[u8; 16]) -> DestinationKeyData {
    let mut data = [0u8; 20];
    let port = port.to_be_bytes();
    data[0] = port[0];
    data[1] = port[1];
    let mut i = 0;
    while i < 16 {
        data[2 + i] = addr[i];
        i += 1;
    }
    data
}

/// IPv4 address (network byte order bytes) as IPv4-mapped IPv6 bytes.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// What the connect hook captured about a redirected connection, in process context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Original destination; IPv4 as IPv4-mapped IPv6.
    pub dst_addr: [u8; 16],
    /// Original destination port, host byte order.
    pub dst_port: u16,
    /// Address family the process connected with (`AF_INET` or `AF_INET6`).
    pub family: u16,
    /// Family of the listener the connection was sent to: `AF_INET` (also for IPv4-mapped
    /// destinations) or `AF_INET6`. Tells sock_ops which client address the daemon will see.
    pub listener_family: u16,
    pub _pad: u16,
    /// Thread-group id (the userspace "pid").
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (inode number of the cgroup directory) of the connecting task.
    pub cgroup_id: u64,
    pub cookie: u64,
    /// `bpf_ktime_get_boot_ns()` at connect: lets the daemon reject a reused pid whose process
    /// started after the connect.
    pub boot_ns: u64,
    pub comm: [u8; 16],
    /// Slot of the job (`JOB_STATES`) whose counters this record is counted in.
    pub job_slot: u32,
    pub _pad2: u32,
    /// Cookie of the network namespace the socket lives in (the listener it reaches is that
    /// namespace's).
    pub netns_cookie: u64,
}

/// Value of `SOCKETS`: one redirected socket, from its connect until it closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketRecord {
    pub info: ConnInfo,
    /// Key of its `BY_CLIENT` record, once `queued`.
    pub client: ClientKey,
    /// 1 once `sock_ops` put the record in `BY_CLIENT` (the daemon may take it from there).
    pub queued: u32,
    pub _pad: u32,
}

/// Value of `JOB_LINKS` (cgroup storage of a job cgroup), written by the daemon when it attaches
/// the programs, before the connect programs: which job the cgroup (and everything below it) is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobLink {
    pub job_cgroup_id: u64,
    /// 0: not written yet.
    pub slot: u32,
    pub _pad: u32,
}

/// Event kinds counted apart (index `Event::kind`; 0 unused).
pub const EVENT_KINDS: usize = 11;

/// Counters of one job (`JOB_STATES[slot]`), shared by the programs and the daemon (mmapped):
/// every count is only ever changed by atomic adds (the windows are approximate) and is a running
/// total since the slot was handed to the job. Pending connects: `queued - unqueued - taken`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobState {
    /// `BY_CLIENT` records created.
    pub queued: u64,
    /// `BY_CLIENT` records the kernel removed (the socket closed before the daemon took it).
    pub unqueued: u64,
    /// `BY_CLIENT` records the daemon took (the daemon's only write).
    pub taken: u64,
    /// Events within the budget that the ring buffer had no room for.
    pub lost: u64,
    /// Per event kind: start (CLOCK_BOOTTIME ns) of the current one-second window, and events
    /// reported in it.
    pub window_start: [u64; EVENT_KINDS],
    pub window_count: [u64; EVENT_KINDS],
    /// Per event kind and outcome (`kind * 2 + denied`): events over the budget, not reported.
    pub suppressed: [u64; EVENT_KINDS * 2],
    /// Kernel-path connections counted open, and closed: open = `opened - closed`.
    pub kernel_opened: u64,
    pub kernel_closed: u64,
    /// Kernel-path events written to the ring buffer, and read by the daemon (its other write):
    /// unread = `kernel_written - kernel_read`.
    pub kernel_written: u64,
    pub kernel_read: u64,
}

/// Key of `BY_CLIENT`: the client end of a redirected connection, i.e. the peer address the
/// daemon sees on accept, in the network namespace of the listener that accepted it (two
/// containers may use the same address and port at once). IPv4 as IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub netns_cookie: u64,
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u32,
    pub _pad: u32,
}

/// `Event::kind`: a TCP connect to a destination outside the target set.
pub const EVENT_CONNECT: u32 = 1;
/// `Event::kind`: a UDP datagram or UDP connect to something other than a DNS resolver.
pub const EVENT_UDP: u32 = 2;
/// `Event::kind`: creation of a socket type jobs may not use (raw, ICMP, SCTP, MPTCP …).
pub const EVENT_SOCKET: u32 = 3;
/// `Event::kind`: a bind to the gateway listener port (an attempt to impersonate the gateway).
pub const EVENT_BIND: u32 = 4;
/// `Event::kind`: a TCP connect straight at the gateway listener (no redirect: no record).
pub const EVENT_LISTENER: u32 = 5;
/// `Event::kind`: a connect to a target refused for lack of room; `Event::detail` says which
/// limit (`LIMIT_*`).
pub const EVENT_LIMIT: u32 = 6;

/// `Event::detail` of `EVENT_LIMIT`: the job has `Config::max_pending_per_job` connects waiting.
pub const LIMIT_PENDING: u32 = 1;
/// ... all jobs together have [`MAX_PENDING`] connects waiting.
pub const LIMIT_TOTAL: u32 = 2;
/// ... the cgroup has no job link (`JOB_LINKS`), or the socket no storage for its record.
pub const LIMIT_NO_RECORD: u32 = 3;
/// ... (kernel path) no daemon reads the events (`LIVENESS` ran out).
pub const LIMIT_NO_DAEMON: u32 = 4;
/// ... (kernel path) the job has `Config::max_pending_per_job` events the daemon has not read.
pub const LIMIT_UNREAD: u32 = 5;
/// ... (kernel path) the job has `Config::max_open_per_job` connections open.
pub const LIMIT_OPEN: u32 = 6;
/// ... (kernel path) the ring buffer had no room for the connect's record.
pub const LIMIT_RING_FULL: u32 = 7;

/// `Event::kind`: a redirected connect in a network namespace the daemon has no listener in yet
/// (`Event::netns_cookie`); its SYN is held until the daemon opens one there. Not a refusal.
pub const EVENT_NETNS: u32 = 7;

/// `Event::kind`: a connect to a kernel-path target the job has no grant for (no rule allows
/// it, or its binding expired); `Event::detail` is the target index. Budgeted like the others.
pub const EVENT_KERNEL_DENIED: u32 = 8;
/// `Event::kind`: a kernel-path connection let through; `Event::detail` is the target index.
/// Never budgeted: written, or the connect is refused.
pub const EVENT_KERNEL_CONNECT: u32 = 9;
/// `Event::kind`: a kernel-path connection closed; `Event::cookie` says which, with its bytes.
pub const EVENT_KERNEL_CLOSE: u32 = 10;

/// Value of `DNS_SOCKETS`: the resolver a job's UDP socket addressed before its queries were
/// sent to the forwarder instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSocket {
    /// IPv4 as IPv4-mapped.
    pub resolver: [u8; 16],
    /// Host byte order.
    pub port: u32,
    /// 1 once written.
    pub set: u32,
    /// The network namespace the socket sent from (the forwarder there receives its queries).
    pub netns_cookie: u64,
}

/// Key of `DNS_CLIENTS`: a job socket's network namespace and source port as the forwarder sees
/// them, and the family of the datagram (the forwarder's socket it reaches).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsClientKey {
    /// The network namespace of the socket (and of the forwarder's socket it reaches).
    pub netns_cookie: u64,
    /// Host byte order.
    pub port: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
}

/// Value of `DNS_CLIENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsClient {
    /// The job cgroup (`JobLink::job_cgroup_id`) the socket belongs to.
    pub job_cgroup_id: u64,
    /// The cgroup the socket was created in.
    pub cgroup_id: u64,
    /// The resolver the socket addressed (IPv4 as IPv4-mapped), port host order.
    pub resolver: [u8; 16],
    pub resolver_port: u32,
    pub job_slot: u32,
}

/// Ring-buffer record of something the programs refused (enforce) or let through (audit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    /// 1 when the operation was refused, 0 when it was let through (audit mode).
    pub denied: u32,
    /// For connect/udp/bind: destination (IPv4 as IPv4-mapped), port host order.
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    /// For socket events: the requested socket type and protocol.
    pub sock_type: u32,
    pub protocol: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Kind-specific: the `LIMIT_*` of an `EVENT_LIMIT`.
    pub detail: u32,
    pub cgroup_id: u64,
    pub boot_ns: u64,
    pub comm: [u8; 16],
    /// Slot of the job the event is counted for (0: none known).
    pub job_slot: u32,
    pub _pad: u32,
    /// Network namespace of the socket, where the program knows it (0 otherwise).
    pub netns_cookie: u64,
    /// Kernel path: the socket cookie that ties a connection's close to its connect.
    pub cookie: u64,
    /// Kernel path, at close: bytes the job sent that the peer acknowledged, and bytes received.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

// The layouts must have no implicit padding (the verifier refuses to pass uninitialised stack bytes
// to map helpers): each size below is the plain sum of the field sizes.
const _: () = assert!(core::mem::size_of::<Config>() == 56);
const _: () = assert!(core::mem::size_of::<DnsSocket>() == 32);
const _: () = assert!(core::mem::size_of::<DnsClientKey>() == 16);
const _: () = assert!(core::mem::size_of::<DnsClient>() == 40);
const _: () = assert!(core::mem::size_of::<Destination>() == 8);
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 96);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 32);
const _: () = assert!(core::mem::size_of::<SocketRecord>() == 136);
const _: () = assert!(core::mem::size_of::<JobLink>() == 16);
const _: () = assert!(core::mem::size_of::<JobState>() == 8 * 8 + 4 * EVENT_KINDS * 8);
const _: () = assert!(core::mem::size_of::<GrantKey>() == 16);
const _: () = assert!(core::mem::size_of::<Grant>() == 8);
const _: () = assert!(core::mem::size_of::<KernelSocket>() == 40);
const _: () = assert!(core::mem::size_of::<Event>() == 128);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]` structs of integers and byte arrays: every bit
    // pattern is a valid value, which is what `Pod` requires.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Destination {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::SocketRecord {}
    unsafe impl aya::Pod for super::JobLink {}
    unsafe impl aya::Pod for super::JobState {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::Grant {}
    unsafe impl aya::Pod for super::KernelSocket {}
    unsafe impl aya::Pod for super::DnsSocket {}
    unsafe impl aya::Pod for super::DnsClientKey {}
    unsafe impl aya::Pod for super::DnsClient {}
}
