//! The programs; see main.rs for what each one does.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_EXIST, BPF_NOEXIST, BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_sock, cgroup_sock_addr, lsm_cgroup, map, sock_ops, tracepoint},
    maps::{Array, HashMap, LpmTrie, LruHashMap, RingBuf, lpm_trie::Key},
    programs::{LsmContext, SockAddrContext, SockContext, SockOpsContext, TracePointContext},
};
use aya_log_ebpf::debug;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use gateway_common::{
    ACTION_BLOCK, ACTION_DIRECT, ACTION_REDIRECT, AF_INET, AF_INET6, ClientKey, Config, ConnInfo,
    DESTINATION_PORT_BITS, Destination, DestinationKeyData, EVENT_BIND, EVENT_CONNECT,
    EVENT_SOCKET, EVENT_UDP, Event, FLAG_DEBUG_LOG, MODE_ENFORCE, OriginalPeer, destination_key,
    v4_mapped,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;

/// Return values of cgroup sock/sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const MAX_INFLIGHT: u32 = 65536;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// (port, address prefix) → action. Filled by the daemon from `[[targets]]` and `allow_direct`.
#[map]
static DESTINATIONS: LpmTrie<DestinationKeyData, Destination> = LpmTrie::with_max_entries(16384, 0);

/// Resolver addresses (IPv4 as IPv4-mapped) that may receive UDP on port 53.
#[map]
static DNS_RESOLVERS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(64, 0);

/// Redirected connects by socket cookie, until sock_ops knows the source port.
#[map]
static PENDING: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Redirected connects by client (address, port), until the daemon accepts them.
#[map]
static BY_CLIENT: LruHashMap<ClientKey, ConnInfo> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// What getpeername reports for a redirected socket, by socket cookie.
#[map]
static ORIGINAL_PEER: LruHashMap<u64, OriginalPeer> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// tgid → when it last began an exec (CLOCK_BOOTTIME, like `ConnInfo::boot_ns`; 0: none since it
/// first connected). A redirected connect adds its process; `gw_exec_start` updates only
/// processes already here, so the table holds processes that connect through the gateway, not
/// every exec of the machine. No entry (never added, or evicted) tells the daemon nothing, and it
/// then vouches for nothing.
#[map]
static EXEC_STARTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Refused (enforce) and let-through (audit) operations, for the daemon's audit log.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
fn enforcing(cfg: Option<&Config>) -> bool {
    // No configuration yet (daemon never started): fail closed.
    cfg.is_none_or(|c| c.mode == MODE_ENFORCE)
}

#[inline(always)]
fn debug_log(cfg: Option<&Config>) -> bool {
    cfg.is_some_and(|c| c.flags & FLAG_DEBUG_LOG != 0)
}

/// The caller's identity as the kernel knows it, for records and events.
struct Caller {
    pid: u32,
    tid: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    boot_ns: u64,
    comm: [u8; 16],
}

#[inline(always)]
fn caller() -> Caller {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Caller {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    }
}

#[inline(always)]
fn report(kind: u32, denied: bool, addr: [u8; 16], port: u16, family: u16, sock: (u32, u32)) {
    let c = caller();
    let event = Event {
        kind,
        denied: denied as u32,
        addr,
        port,
        family,
        sock_type: sock.0,
        protocol: sock.1,
        pid: c.pid,
        tid: c.tid,
        uid: c.uid,
        gid: c.gid,
        _pad: 0,
        cgroup_id: c.cgroup_id,
        boot_ns: c.boot_ns,
        comm: c.comm,
    };
    // A full ring buffer loses the report, never the decision.
    let _ = EVENTS.output::<Event>(&event, 0);
}

// --- bpf_sock_addr field access ------------------------------------------------------------------
// The verifier only accepts 4-byte loads and stores of user_ip4/user_ip6/user_port, so every word is
// read and written on its own through volatile accesses that the compiler cannot merge.

#[inline(always)]
fn read_u32(field: *const u32) -> u32 {
    // SAFETY: `field` points into the program's context, valid for the program's run.
    unsafe { read_volatile(field) }
}

#[inline(always)]
fn write_u32(field: *mut u32, value: u32) {
    // SAFETY: as above; the context fields written here are writable for sock_addr programs.
    unsafe { write_volatile(field, value) }
}

/// Destination (or source for bind) of a sock_addr call as IPv6 bytes (IPv4 mapped), port host order.
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, family: u16) -> ([u8; 16], u16) {
    // SAFETY: `sa` is the program context.
    let port = u16::from_be(read_u32(unsafe { addr_of!((*sa).user_port) }) as u16);
    if family == AF_INET {
        let ip = read_u32(unsafe { addr_of!((*sa).user_ip4) });
        return (v4_mapped(ip.to_ne_bytes()), port);
    }
    // SAFETY: `sa` is the program context; constant offsets, one 4-byte load each.
    let words = unsafe {
        [
            read_u32(addr_of!((*sa).user_ip6[0])),
            read_u32(addr_of!((*sa).user_ip6[1])),
            read_u32(addr_of!((*sa).user_ip6[2])),
            read_u32(addr_of!((*sa).user_ip6[3])),
        ]
    };
    let addr = words_to_bytes(words);
    (addr, port)
}

#[inline(always)]
fn set_user_ip6(sa: *mut bpf_sock_addr, words: [u32; 4]) {
    // SAFETY: `sa` is the program context; one 4-byte store per word.
    unsafe {
        write_u32(addr_of_mut!((*sa).user_ip6[0]), words[0]);
        write_u32(addr_of_mut!((*sa).user_ip6[1]), words[1]);
        write_u32(addr_of_mut!((*sa).user_ip6[2]), words[2]);
        write_u32(addr_of_mut!((*sa).user_ip6[3]), words[3]);
    }
}

#[inline(always)]
fn set_user_port(sa: *mut bpf_sock_addr, port: u16) {
    // SAFETY: `sa` is the program context; `user_port` holds the network-order port in its low half.
    write_u32(
        unsafe { addr_of_mut!((*sa).user_port) },
        u32::from(port.to_be()),
    );
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

#[inline(always)]
fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// Longest-prefix match of (port, address), then of (any port, address).
#[inline(always)]
fn lookup_destination(addr: &[u8; 16], port: u16) -> Option<Destination> {
    let full = DESTINATION_PORT_BITS + 128;
    if let Some(d) = DESTINATIONS.get(Key::new(full, destination_key(port, addr))) {
        return Some(*d);
    }
    DESTINATIONS
        .get(Key::new(full, destination_key(0, addr)))
        .copied()
}

// --- connect ---------------------------------------------------------------------------------------

#[cgroup_sock_addr(connect4)]
pub fn gw_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn gw_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET6) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u16) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let cfg = config();
    let refuse = if enforcing(cfg) { REFUSE } else { ALLOW };
    // SAFETY: `sa` is the program context.
    let sock_type = read_u32(unsafe { addr_of!((*sa).type_) });
    let protocol = read_u32(unsafe { addr_of!((*sa).protocol) });
    let (dst, port) = user_addr(sa, family);
    // SAFETY: the context is a socket-bearing program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket may connect again after a failed attempt: forget what an earlier attempt stored.
    let _ = ORIGINAL_PEER.remove(&cookie);

    if sock_type == SOCK_DGRAM {
        return Ok(udp_verdict(cfg, &dst, port, family, protocol));
    }
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        // sock_create refuses everything else; this is a second line.
        report(
            EVENT_SOCKET,
            enforcing(cfg),
            dst,
            port,
            family,
            (sock_type, protocol),
        );
        return Ok(refuse);
    }
    let Some(cfg) = cfg else {
        report(
            EVENT_CONNECT,
            true,
            dst,
            port,
            family,
            (sock_type, protocol),
        );
        return Ok(REFUSE);
    };
    let listener_v4 = v4_mapped(cfg.listen_ip4.to_ne_bytes());
    let listener_v6 = words_to_bytes(cfg.listen_ip6);
    if port as u32 == cfg.listen_port && (dst == listener_v4 || dst == listener_v6) {
        // Straight at the listener: the daemon finds no record, closes it and records an anomaly.
        // (Also where a second attached copy of these programs sees an already rewritten connect.)
        return Ok(ALLOW);
    }
    let action = lookup_destination(&dst, port).map(|d| d.action);
    if action == Some(ACTION_DIRECT) {
        return Ok(ALLOW);
    }
    if action == Some(ACTION_BLOCK) {
        report(
            EVENT_CONNECT,
            true,
            dst,
            port,
            family,
            (sock_type, protocol),
        );
        return Ok(REFUSE);
    }
    if action != Some(ACTION_REDIRECT) || cfg.listen_port == 0 {
        report(
            EVENT_CONNECT,
            cfg.mode == MODE_ENFORCE,
            dst,
            port,
            family,
            (sock_type, protocol),
        );
        return Ok(refuse);
    }

    // Redirect. IPv4 and IPv4-mapped destinations go to the IPv4 listener, IPv6 to the IPv6 one.
    let to_v4 = family == AF_INET || is_v4_mapped(&dst);
    let c = caller();
    let info = ConnInfo {
        dst_addr: dst,
        dst_port: port,
        family,
        listener_family: if to_v4 { AF_INET } else { AF_INET6 },
        _pad: 0,
        pid: c.pid,
        tid: c.tid,
        uid: c.uid,
        gid: c.gid,
        cgroup_id: c.cgroup_id,
        cookie,
        boot_ns: c.boot_ns,
        comm: c.comm,
    };
    // Without the records the daemon could not serve the connection: refuse instead of sending
    // an unattributed connection (the daemon would close it anyway).
    PENDING.insert(&cookie, &info, 0).map_err(|_| REFUSE)?;
    // From now on the process's execs are noted (an exec noted earlier is kept). Failing this only
    // costs the daemon its proof: the connection goes on.
    let _ = EXEC_STARTS.insert(&c.pid, &0, u64::from(BPF_NOEXIST));
    let peer = OriginalPeer {
        addr: dst,
        port: u32::from(port),
        family: u32::from(family),
    };
    ORIGINAL_PEER
        .insert(&cookie, &peer, 0)
        .map_err(|_| REFUSE)?;

    if family == AF_INET {
        // SAFETY: `sa` is the program context; 4-byte store.
        write_u32(unsafe { addr_of_mut!((*sa).user_ip4) }, cfg.listen_ip4);
    } else if to_v4 {
        let ip = cfg.listen_ip4.to_ne_bytes();
        set_user_ip6(
            sa,
            [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes(ip),
            ],
        );
    } else {
        set_user_ip6(sa, cfg.listen_ip6);
    }
    set_user_port(sa, cfg.listen_port as u16);

    if debug_log(Some(cfg)) {
        debug!(
            ctx,
            "redirect pid={} cookie={} port={}", c.pid, cookie, port
        );
    }
    Ok(ALLOW)
}

#[inline(always)]
fn udp_verdict(cfg: Option<&Config>, dst: &[u8; 16], port: u16, family: u16, protocol: u32) -> i32 {
    // SAFETY: map lookup by value.
    if port == DNS_PORT && unsafe { DNS_RESOLVERS.get(dst) }.is_some() {
        return ALLOW;
    }
    let enforce = enforcing(cfg);
    report(
        EVENT_UDP,
        enforce,
        *dst,
        port,
        family,
        (SOCK_DGRAM, protocol),
    );
    if enforce { REFUSE } else { ALLOW }
}

// --- sock_ops: re-key by client address ------------------------------------------------------------

// Not named `sock_ops`/`sockops`: the section name would clash with the symbol at link time.
#[sock_ops]
pub fn gw_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        rekey(&ctx);
    }
    1
}

#[inline(always)]
fn rekey(ctx: &SockOpsContext) {
    // SAFETY: the context is a socket-bearing program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: map lookup by value; copied out at once.
    let Some(info) = (unsafe { PENDING.get(&cookie) }).copied() else {
        return;
    };
    // For an IPv4-mapped connect on an IPv6 socket the kernel runs tcp_v4_connect: the IPv4 source
    // is set, the mapped IPv6 one is not yet. The listener family tells which one to read.
    let addr = if info.listener_family == AF_INET {
        v4_mapped(ctx.local_ip4().to_ne_bytes())
    } else {
        // SAFETY: `ops` is the program context; constant offsets, one 4-byte load each (the
        // verifier refuses loads through a pointer computed from the context).
        let ops = ctx.ops;
        words_to_bytes(unsafe {
            [
                read_u32(addr_of!((*ops).local_ip6[0])),
                read_u32(addr_of!((*ops).local_ip6[1])),
                read_u32(addr_of!((*ops).local_ip6[2])),
                read_u32(addr_of!((*ops).local_ip6[3])),
            ]
        })
    };
    let key = ClientKey {
        addr,
        port: ctx.local_port(),
    };
    let _ = BY_CLIENT.insert(&key, &info, 0);
    let _ = PENDING.remove(&cookie);
}

// --- getpeername -------------------------------------------------------------------------------------

#[cgroup_sock_addr(getpeername4)]
pub fn gw_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn gw_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, family: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the context is a socket-bearing program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: map lookup by value; copied out at once.
    let Some(peer) = (unsafe { ORIGINAL_PEER.get(&cookie) }).copied() else {
        return;
    };
    let a = peer.addr;
    if family == AF_INET {
        write_u32(
            // SAFETY: `sa` is the program context; 4-byte store.
            unsafe { addr_of_mut!((*sa).user_ip4) },
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        );
    } else {
        set_user_ip6(
            sa,
            [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ],
        );
    }
    set_user_port(sa, peer.port as u16);
}

// --- UDP sendmsg ---------------------------------------------------------------------------------------

#[cgroup_sock_addr(sendmsg4)]
pub fn gw_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn gw_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, AF_INET6)
}

#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, family: u16) -> i32 {
    let sa = ctx.sock_addr;
    let (dst, port) = user_addr(sa, family);
    // SAFETY: `sa` is the program context.
    let protocol = read_u32(unsafe { addr_of!((*sa).protocol) });
    udp_verdict(config(), &dst, port, family, protocol)
}

// --- bind: the listener port is the gateway's ----------------------------------------------------------

#[cgroup_sock_addr(bind4)]
pub fn gw_bind4(ctx: SockAddrContext) -> i32 {
    bind(&ctx, AF_INET)
}

#[cgroup_sock_addr(bind6)]
pub fn gw_bind6(ctx: SockAddrContext) -> i32 {
    bind(&ctx, AF_INET6)
}

#[inline(always)]
fn bind(ctx: &SockAddrContext, family: u16) -> i32 {
    let (addr, port) = user_addr(ctx.sock_addr, family);
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if port != 0 && u32::from(port) == cfg.listen_port {
        // Whatever the mode: a job listening here while the gateway restarts would receive other
        // jobs' redirected connections.
        report(EVENT_BIND, true, addr, port, family, (0, 0));
        return REFUSE;
    }
    ALLOW
}

// --- socket creation -------------------------------------------------------------------------------------

#[cgroup_sock(sock_create)]
pub fn gw_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the program context.
    let (family, sock_type, protocol) = unsafe {
        (
            read_u32(addr_of!((*sk).family)),
            read_u32(addr_of!((*sk).type_)),
            read_u32(addr_of!((*sk).protocol)),
        )
    };
    // sock_create runs for AF_INET and AF_INET6 only. TCP and UDP are what the other hooks police;
    // everything else (raw, ICMP "ping" sockets, SCTP, MPTCP, UDP-Lite) would bypass them.
    let policed = (sock_type == SOCK_STREAM && protocol == IPPROTO_TCP)
        || (sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP);
    if policed {
        return ALLOW;
    }
    let cfg = config();
    let enforce = enforcing(cfg);
    report(
        EVENT_SOCKET,
        enforce,
        [0u8; 16],
        0,
        family as u16,
        (sock_type, protocol),
    );
    if enforce { REFUSE } else { ALLOW }
}

/// Families a job may open sockets in besides inet (which `sock_create` polices): local IPC and
/// netlink (needed by glibc's getaddrinfo and by `ip`; it moves no traffic off the host).
const AF_UNIX: i32 = 1;
const AF_NETLINK: i32 = 16;

#[lsm_cgroup(hook = "socket_create")]
pub fn gw_socket_family(ctx: LsmContext) -> i32 {
    // security_socket_create(int family, int type, int protocol, int kern); `type` is already
    // stripped of SOCK_NONBLOCK/SOCK_CLOEXEC.
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    // Sockets the kernel opens for itself while running in the job's context are not the job's.
    if kern != 0
        || family == AF_UNIX
        || family == AF_NETLINK
        || family == AF_INET as i32
        || family == AF_INET6 as i32
    {
        return ALLOW;
    }
    // Packet (AF_PACKET), XDP, vsock, … sockets carry traffic that no connect or sendmsg hook sees.
    let enforce = enforcing(config());
    report(
        EVENT_SOCKET,
        enforce,
        [0u8; 16],
        0,
        family as u16,
        (sock_type as u32, protocol as u32),
    );
    if enforce { REFUSE } else { ALLOW }
}

/// On entry to execve/execveat, before anything of the process changes: the daemon, having read
/// /proc/PID/exe for a connection, knows from this whether the program it read may have replaced
/// the one that connected (an exec begun after the connect). A failed exec counts too: the
/// daemon then only claims less than it could.
#[tracepoint]
pub fn gw_exec_start(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // Only processes that connected through the gateway (see EXEC_STARTS).
    let _ = EXEC_STARTS.insert(&tgid, &now, u64::from(BPF_EXIST));
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
